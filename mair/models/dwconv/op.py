"""The VMM's depthwise convolution in channels-last layout: a Triton op and its plain reference.

:func:`depthwise_conv2d` takes x (B, H, W, C) with any strides (such as a half of ``in_proj``'s output),
the ``nn.Conv2d`` parameters (weight (C, 1, KS, KS), bias (C,) or None; odd KS, zero padding KS // 2) and
returns y (B, H, W, C) contiguous, that is the raster (B, L, C) map the NSS scan reads, without the permutes
and cuDNN's layout transforms. It is the custom op ``mair::depthwise_conv2d`` (opaque to ``torch.compile``,
differentiable through ``mair::depthwise_conv2d_bwd``), running the kernels of
:mod:`mair.models.dwconv.triton_kernels` on CUDA tensors or under Triton's CPU interpreter. The reference it is
tested against is :func:`mair.models.dwconv.reference.depthwise_conv2d_reference` (cuDNN / ATen's grouped
convolution).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mair.models.dwconv.reference import depthwise_conv2d_reference
from mair.models.scan.triton_backend import _bkl_strides  # the four strides of a 4-D tensor, as the kernels take them
from mair.runtime import switches

__all__ = ["depthwise_conv2d", "depthwise_conv2d_reference", "dwconv_forward", "dwconv_weight_grad"]

BP, BC, WARPS = 64, 32, 4  # positions x channels per program (a 64 x 32 float32 tile per tap), warps
TARGET_PROGRAMS = 528  # weight gradient: about 4 programs per SM on an H100 (132 SMs)


def conv_tiles() -> tuple[int, int, int]:
    """Positions and channels per program and warps of both kernels; ``MAIR_DWCONV_TILES`` = "BP,BC,warps"
    (powers of two) overrides, for tuning sweeps (``benchmarks/dwconv.py --tiles``)."""
    tiles = switches.get("MAIR_DWCONV_TILES")
    if tiles is None:
        return BP, BC, WARPS
    bp, bc, warps = tiles
    return bp, bc, warps


def check_shapes(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """Raise ValueError unless x (B, H, W, C), weight (C, 1, KS, KS) with odd KS and bias (C,) or None fit."""
    channels = x.shape[-1] if x.dim() == 4 else -1
    ks = weight.shape[-1] if weight.dim() == 4 else 0
    if x.dim() != 4 or tuple(weight.shape) != (channels, 1, ks, ks) or ks % 2 == 0:
        raise ValueError(
            f"depthwise_conv2d: x must be (B, H, W, C) and weight (C, 1, KS, KS) with odd KS; got x "
            f"{tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"depthwise_conv2d: bias must be ({channels},); got {tuple(bias.shape)}")


def dwconv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, flip: bool = False) -> Tensor:
    """The convolution (``flip``: with mirrored taps, the input gradient of dy = ``x``), (B, H, W, C)
    contiguous in x's dtype."""
    from mair.models.dwconv.triton_kernels import dwconv_kernel

    batch, height, width, channels = x.shape
    ks = weight.shape[-1]
    y = torch.empty(batch, height, width, channels, device=x.device, dtype=x.dtype)
    w = weight.detach().reshape(channels, ks * ks).float().contiguous()
    b = bias.detach().float().contiguous() if bias is not None else w
    bp, bc, warps = conv_tiles()
    grid = (-(-height * width // bp), -(-channels // bc), batch)
    dwconv_kernel[grid](
        x,
        *_bkl_strides(x),
        w,
        b,
        y,
        *_bkl_strides(y),
        height,
        width,
        channels,
        KS=ks,
        FLIP=flip,
        HAS_BIAS=bias is not None,
        BP=bp,
        BC=bc,
        num_warps=warps,
    )
    return y


def dwconv_weight_grad(x: Tensor, dy: Tensor, ks: int) -> tuple[Tensor, Tensor]:
    """Gradients of the weight (C, 1, KS, KS) and of the bias (C,), float32, from partial sums over runs of
    positions summed in a fixed order (deterministic)."""
    from mair.models.dwconv.triton_kernels import dwconv_weight_grad_kernel

    batch, height, width, channels = x.shape
    positions = batch * height * width
    bp, bc, warps = conv_tiles()
    c_blocks = -(-channels // bc)
    n_runs = max(1, min(-(-positions // bp), TARGET_PROGRAMS // c_blocks))
    per_program = -(-positions // n_runs // bp) * bp
    n_runs = -(-positions // per_program)
    taps = ks * ks
    tp = 1 << taps.bit_length()  # a power of two above KS² (room for the bias row)
    parts = torch.empty(n_runs, tp, channels, device=x.device, dtype=torch.float32)
    dwconv_weight_grad_kernel[(n_runs, c_blocks)](
        x,
        *_bkl_strides(x),
        dy,
        *_bkl_strides(dy),
        parts,
        height,
        width,
        channels,
        positions,
        per_program,
        KS=ks,
        TP=tp,
        BP=bp,
        BC=bc,
        num_warps=warps,
    )
    sums = parts.sum(0)
    # copies, so that the two gradients never share memory (a custom op's outputs may not alias each other)
    return sums[:taps].t().contiguous().view(channels, 1, ks, ks), sums[taps].clone()


@torch.library.custom_op("mair::depthwise_conv2d", mutates_args=())
def _dwconv_op(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return dwconv_forward(x, weight, bias)


@_dwconv_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    check_shapes(x, weight, bias)
    return x.new_empty(x.shape)


@torch.library.custom_op("mair::depthwise_conv2d_bwd", mutates_args=())
def _dwconv_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, needs: list[bool]) -> list[Tensor]:
    dx = dwconv_forward(dy, weight, None, flip=True) if needs[0] else dy.new_empty(0)
    if needs[1] or needs[2]:
        dw, db = dwconv_weight_grad(x, dy, weight.shape[-1])
        dw, db = dw.to(weight.dtype), db.to(weight.dtype)
    else:
        dw = db = dy.new_empty(0)
    return [dx, dw, db]


@_dwconv_bwd_op.register_fake
def _(dy: Tensor, x: Tensor, weight: Tensor, needs: list[bool]) -> list[Tensor]:
    wide = needs[1] or needs[2]
    return [
        dy.new_empty(x.shape) if needs[0] else dy.new_empty(0),
        weight.new_empty(weight.shape) if wide else dy.new_empty(0),
        weight.new_empty(weight.shape[0]) if wide else dy.new_empty(0),
    ]


def _setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    needs = [
        bool(ctx.needs_input_grad[0]),
        bool(ctx.needs_input_grad[1]),
        bool(ctx.has_bias and ctx.needs_input_grad[2]),
    ]
    dx, dw, db = _dwconv_bwd_op(dy, x, weight, needs)
    return (dx if needs[0] else None, dw if needs[1] else None, db if needs[2] else None)


_dwconv_op.register_autograd(_backward, setup_context=_setup)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """y (B, H, W, C) contiguous = the depthwise convolution of x (B, H, W, C) by weight (C, 1, KS, KS) and bias,
    zero padding KS // 2 (``mair::depthwise_conv2d``; CUDA tensors, or any under ``TRITON_INTERPRET=1``)."""
    check_shapes(x, weight, bias)
    return _dwconv_op(x, weight, bias)
