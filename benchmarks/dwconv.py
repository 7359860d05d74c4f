"""Time the VMM's depthwise convolution on the GPU, forward + backward (and forward alone), cuDNN as the model
ran it (``nn.Conv2d`` on the (B, D, H, W) view of in_proj's strided half) against the Triton op
(``mair.models.dwconv``), at the models' shapes. GPU kernel time per call, summed from the profiler.

    python benchmarks/dwconv.py                      # the workloads' shapes
    python benchmarks/dwconv.py --shapes 4x64x64x360 --repeat 50
    python benchmarks/dwconv.py --tiles 64,32,4 128,32,4 32,64,4 64,16,2   # Triton only, per tile choice
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from mair.models.dwconv import depthwise_conv2d, depthwise_conv2d_reference
from mair.runtime import switches

# (name, batch, height, width, channels): classic SR x2 train, MaIR-T x4 and MaIR-S x4 train, colour DN train,
# classic SR x2 inference
SHAPES = {
    "sr_classic_x2_train": (4, 64, 64, 360),
    "sr_light_t_x4_train": (16, 64, 64, 66),
    "sr_light_s_x4_train": (16, 64, 64, 84),
    "dn_color_train": (1, 128, 128, 234),
    "sr_classic_x2_infer": (1, 256, 256, 360),
}


def gpu_ms(fn: Callable[[], None], repeat: int) -> float:
    """GPU kernel time (ms) per call of ``fn``, summed from the profiler's kernel records."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / repeat


def cudnn_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The model's former path: nn.Conv2d on the permuted view."""
    return F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])


def operands(batch: int, height: int, width: int, channels: int) -> tuple[torch.Tensor, ...]:
    """x (in_proj's strided half, as the model passes it), weight, bias and an output gradient on the GPU."""
    x = torch.randn(batch, height, width, 2 * channels, device="cuda")[..., :channels].requires_grad_()
    weight = (torch.randn(channels, 1, 3, 3, device="cuda") / 3).requires_grad_()
    bias = torch.randn(channels, device="cuda", requires_grad=True)
    grad = torch.randn(batch, height, width, channels, device="cuda")
    return x, weight, bias, grad


def time_conv(
    conv: Callable[..., torch.Tensor],
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    dy: torch.Tensor,
    repeat: int,
) -> str:
    """``conv``'s forward and forward + backward GPU times."""

    def forward() -> None:
        with torch.no_grad():
            conv(x, weight, bias)

    def train() -> None:
        conv(x, weight, bias).backward(dy)

    return f"fwd {gpu_ms(forward, repeat):.3f} fwd+bwd {gpu_ms(train, repeat):.3f} ms"


def time_shape(batch: int, height: int, width: int, channels: int, repeat: int) -> str:
    """One table row: the two paths' forward and forward + backward GPU times at one shape."""
    x, weight, bias, grad = operands(batch, height, width, channels)
    ref = depthwise_conv2d_reference(x, weight, bias)
    err = float((depthwise_conv2d(x, weight, bias) - ref).detach().norm() / ref.detach().norm())
    row = [f"rel. difference {err:.1e}"]
    for name, conv, dy in (("cudnn", cudnn_conv, grad.permute(0, 3, 1, 2)), ("triton", depthwise_conv2d, grad)):
        row.append(f"{name} {time_conv(conv, x, weight, bias, dy, repeat)}")
    return " | ".join(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="workload names or BxHxWxC, comma-separated")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--tiles",
        nargs="*",
        default=None,
        metavar="BP,BC,WARPS",
        help="time the Triton op only, once per tile choice (MAIR_DWCONV_TILES)",
    )
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = False
    for spec in args.shapes.split(","):
        batch, height, width, channels = SHAPES[spec] if spec in SHAPES else (int(v) for v in spec.split("x"))
        if args.tiles is None:
            print(f"{spec}: {time_shape(batch, height, width, channels, args.repeat)}", flush=True)
            continue
        for tiles in args.tiles:
            x, weight, bias, grad = operands(batch, height, width, channels)
            with switches.override(dwconv_tiles=tiles):
                timing = time_conv(depthwise_conv2d, x, weight, bias, grad, args.repeat)
            print(f"{spec} tiles {tiles}: {timing}", flush=True)


if __name__ == "__main__":
    main()
