"""Time the MLP's forward + backward on the GPU with its hidden width padded to several multiples
(``mair.models.blocks.Mlp.hidden_multiple``), at a model's training shape.

    python benchmarks/mlp_padding.py                       # classic SR: width 180, hidden 450, 4 x 64² tokens
    python benchmarks/mlp_padding.py --width 60 --hidden 96 --tokens 65536 --multiples 1,8
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from mair.models.blocks import Mlp
from mair.runtime.precision import apply_matmul_precision


def gpu_ms(mlp: Mlp, x: torch.Tensor, grad: torch.Tensor, repeat: int) -> float:
    """GPU kernel time (ms) per forward + backward, summed from the profiler's kernel records: in eager mode the
    CPU launches these small kernels slower than the GPU runs them, so wall time between events would measure
    the launches (the model's compiled step replays CUDA graphs, where only kernel time counts)."""
    for _ in range(3):
        mlp(x).backward(grad)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            mlp(x).backward(grad)
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=180)
    parser.add_argument("--hidden", type=int, default=450)
    parser.add_argument("--tokens", type=int, default=4 * 64 * 64)
    parser.add_argument("--multiples", default="1,4,8,16,32")
    parser.add_argument("--precision", default="tf32", help="fp32 or tf32 (mair.runtime.precision)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    apply_matmul_precision(args.precision)
    mlp = Mlp(args.width, args.hidden).cuda()
    x = torch.randn(args.tokens, args.width, device="cuda", requires_grad=True)
    grad = torch.randn_like(x)
    default = Mlp.hidden_multiple
    try:
        for multiple in (int(m) for m in args.multiples.split(",")):
            Mlp.hidden_multiple = multiple
            padded = args.hidden + (-args.hidden % multiple)
            print(
                f"hidden {args.hidden} -> {padded} (multiple {multiple}): "
                f"{gpu_ms(mlp, x, grad, args.repeat):.3f} ms GPU time per forward + backward"
            )
    finally:
        Mlp.hidden_multiple = default


if __name__ == "__main__":
    main()
