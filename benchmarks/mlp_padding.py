"""Time the MLP's forward + backward on the GPU with its hidden width padded to several multiples
(``mair.models.blocks.Mlp.hidden_multiple``), at a model's training shape.

    python benchmarks/mlp_padding.py                       # classic SR: width 180, hidden 450, 4 x 64² tokens
    python benchmarks/mlp_padding.py --width 60 --hidden 96 --tokens 65536 --multiples 1,8
"""

from __future__ import annotations

import argparse

import torch

from mair.models.blocks import Mlp
from mair.precision import apply_matmul_precision


def time_mlp(mlp: Mlp, x: torch.Tensor, repeat: int) -> float:
    """Median ms of forward + backward (CUDA events)."""
    grad = torch.randn_like(x)
    times = []
    for i in range(repeat + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        mlp(x).backward(grad)
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=180)
    parser.add_argument("--hidden", type=int, default=450)
    parser.add_argument("--tokens", type=int, default=4 * 64 * 64)
    parser.add_argument("--multiples", default="1,4,8,16,32")
    parser.add_argument("--precision", default="tf32", help="fp32 or tf32 (mair.precision)")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    apply_matmul_precision(args.precision)
    mlp = Mlp(args.width, args.hidden).cuda()
    x = torch.randn(args.tokens, args.width, device="cuda", requires_grad=True)
    default = Mlp.hidden_multiple
    try:
        for multiple in (int(m) for m in args.multiples.split(",")):
            Mlp.hidden_multiple = multiple
            padded = args.hidden + (-args.hidden % multiple)
            print(f"hidden {args.hidden} -> {padded} (multiple {multiple}): "
                  f"{time_mlp(mlp, x, args.repeat):.3f} ms forward + backward")
    finally:
        Mlp.hidden_multiple = default


if __name__ == "__main__":
    main()
