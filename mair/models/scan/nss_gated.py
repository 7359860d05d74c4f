"""The Triton NSS scan fused with MaIR's SSA gate and the sum over the four scans (docs/networks.md
"The VMM block", step 7).

The VMM computes ``out = Σ_k gate_k ⊙ y_k`` with ``gate = σ(W · mean_l(y) + b)`` (per batch, scan and channel)
from the four scan outputs ``y_k`` (B, K, L, D). Done as separate autograd steps, the gate's gradient
``Σ_l y_k ⊙ dout`` makes autograd keep all four outputs until the backward: 90 MiB per block of the classic SR
x2 step, 3.2 GiB in all. :func:`nss_scan_gated` keeps only what the scan keeps anyway (its inputs and the chunk
states) plus the (B, K, D) means, and in the backward recomputes ``Σ_l y_k ⊙ dout`` from the chunk states in
one parallel pass (``_output_dots``, every chunk at once, nothing of size (B, K, L, D) written). The same pass
returns the chunks' adjoint summaries for dy = dout and dy = 1; those of the scan's output gradient
``dy = gate ⊙ dout + dmean / L`` follow by linearity, so the scan's backward skips its own summary pass; the
pass also stores the states entering the backward kernel's sub-chunks, so that kernel skips its first walk, and
the backward kernel forms dy itself from dout, the gate and the constant (no (B, K, L, D) dy is written). In the
forward the gated sum itself is one Triton pass over the four outputs (:func:`gated_sum_triton`; its reference is
:func:`gated_sum`).

The gate is computed in float32 with autocast off (as is the sum of the means), whatever the input precision.
:func:`ssa_gate` is the one formula, shared with :class:`mair.models.blocks.ShuffleAttn`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .triton_backend import (
    _chain,
    _nss_problem,
    _output_dots,
    check_nss_shapes,
    forward_tiles,
    nss_scan_backward,
    nss_scan_forward,
    project_delta,
)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for ``device_type`` (nothing to do where autocast does not exist, e.g. the meta device)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def ssa_gate(pooled: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """SSA gate (B, K, D) ``σ(Σ_j W[d, k, j] m[b, j, d] + b[d, k])`` from pooled means ``m`` (B, K, D), the
    grouped 1x1 convolution's weight viewed as (D, K, K) and its bias as (D, K); in float32 (float64 for
    float64 means) with autocast off."""
    dtype = torch.promote_types(pooled.dtype, torch.float32)
    with _autocast_off(pooled.device.type):
        logits = torch.einsum("dkj,bjd->bkd", weight.to(dtype), pooled.to(dtype)) + bias.to(dtype).t()
        return torch.sigmoid(logits)


def ssa_gate_backward(d_gate: Tensor, gate: Tensor, pooled: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`ssa_gate` (pooled, weight, bias) from the gate's gradient and the gate itself."""
    with _autocast_off(pooled.device.type):
        d_logits = d_gate.to(gate.dtype) * gate * (1 - gate)  # (B, K, D)
        d_pooled = torch.einsum("dkj,bkd->bjd", weight.to(gate.dtype), d_logits)
        d_weight = torch.einsum("bkd,bjd->dkj", d_logits, pooled.to(gate.dtype))
        return d_pooled, d_weight, d_logits.sum(0).t()


def gated_sum(ys: Tensor, gate: Tensor) -> Tensor:
    """``Σ_k gate_k ⊙ y_k``: ys (B, K, L, D), gate (B, K, D) -> (B, L, D), as a chain of multiply-adds (an
    einsum would make D a batch dimension and copy ys into (B, D, L, K) first)."""
    gate = gate.to(ys.dtype)
    out = ys[:, 0] * gate[:, 0, None]
    for k in range(1, ys.shape[1]):
        out = out.addcmul_(ys[:, k], gate[:, k, None])
    return out


GATED_SUM_BLOCK = 1024  # elements of (L·D) per program of gated_sum_kernel


def gated_sum_triton(ys: Tensor, gate: Tensor) -> Tensor:
    """:func:`gated_sum` as one Triton kernel (``gated_sum_kernel``): reads the four outputs once and writes the
    sum once, where the chain of multiply-adds writes and re-reads the partial sum three times (about 3 ms of the
    classic SR x2 step). Accumulates in float32 (the chain accumulates in ys's dtype). ys (B, K, L, D)
    contiguous, gate (B, K, D)."""
    from .triton_kernels import gated_sum_kernel

    batch, groups, length, channels = ys.shape
    if not ys.is_contiguous():
        raise ValueError(f"gated_sum_triton: ys must be contiguous, got strides {ys.stride()}")
    out = torch.empty(batch, length, channels, device=ys.device, dtype=ys.dtype)
    span = length * channels
    grid = ((span + GATED_SUM_BLOCK - 1) // GATED_SUM_BLOCK, batch)
    gated_sum_kernel[grid](
        ys, gate.float().contiguous(), out, span, channels, K=groups, BLOCK=GATED_SUM_BLOCK, num_warps=4
    )
    return out


def check_gate_shapes(x: Tensor, delta: Tensor, gate_weight: Tensor, gate_bias: Tensor) -> None:
    """Raise ValueError unless the gate's parameters fit (D, K, K) and (D, K)."""
    groups, channels = delta.shape[1], x.shape[2]
    if tuple(gate_weight.shape) != (channels, groups, groups) or tuple(gate_bias.shape) != (channels, groups):
        raise ValueError(
            f"nss_scan_gated: gate_weight must be (D, K, K) = ({channels}, {groups}, {groups}) and "
            f"gate_bias (D, K) = ({channels}, {groups}); got {tuple(gate_weight.shape)} and "
            f"{tuple(gate_bias.shape)}"
        )


def nss_scan_gated_forward(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    softplus: bool,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gated sum of the four scans (B, L, D) in x's dtype, the chunk states and the means (B, K, D)
    float32; the scan outputs are freed on return."""
    sums = torch.empty(x.shape[0], delta.shape[1], x.shape[2], device=x.device, dtype=torch.float32)
    ys, states = nss_scan_forward(x, delta, A, B, C, D, delta_bias, ids, softplus, delta_weight, sums)
    mean = sums / x.shape[1]  # Σ_l y from the forward kernel: no pass over ys for the means
    return gated_sum_triton(ys, ssa_gate(mean, gate_weight, gate_bias)), states, mean


def nss_scan_gated_backward(
    dout: Tensor,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    states: Tensor,
    mean: Tensor,
    softplus: bool,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
) -> tuple[Tensor | None, ...]:
    """Gradients of :func:`nss_scan_gated`: those of :func:`nss_scan_backward` (x, delta, A, B, C, D,
    delta_bias, then delta_weight when given) followed by gate_weight and gate_bias."""
    delta_full = delta if delta_weight is None else project_delta(delta, delta_weight)
    pb = _nss_problem(x, delta_full, A, B, C, D, delta_bias, ids, softplus)
    w_strides = (dout.stride(0), 0, dout.stride(1), dout.stride(2))
    found = _output_dots(pb, dout, w_strides, states, sub_states=True)  # Σ_l y_k ⊙ dout, adjoint summaries
    gate = ssa_gate(mean, gate_weight, gate_bias)
    d_mean, d_weight, d_bias = ssa_gate_backward(found.dots, gate, mean, gate_weight)
    gate, const = gate.float().contiguous(), (d_mean / x.shape[1]).float().contiguous()
    # dy_k = gate_k ⊙ dout (the sum) + d_mean_k / L at every position (the mean); its chunk summaries follow
    # from those of dout and of 1 by linearity (combined by the chain kernel as it reads them), and the scan's
    # backward kernel reads dout and forms dy itself
    adjoint = _chain(
        pb.A,
        found.summary_w,
        found.total,
        True,
        forward_tiles(pb.channels, pb.d_state).bn,
        (found.summary_1, gate, const),
    )
    sub_states = found.sub_states
    del found, pb
    grads = nss_scan_backward(
        dout,
        x,
        delta,
        A,
        B,
        C,
        D,
        delta_bias,
        ids,
        states,
        softplus,
        delta_weight,
        delta_full=delta_full,
        adjoint=adjoint,
        sub_states=sub_states,
        gated_dy=(gate, const),
    )
    return (*grads, d_weight.to(gate_weight.dtype), d_bias.to(gate_bias.dtype))


class _NSSScanGated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, ids, softplus, delta_weight, gate_weight, gate_bias):
        out, states, mean = nss_scan_gated_forward(
            x, delta, A, B, C, D, delta_bias, ids, softplus, delta_weight, gate_weight, gate_bias
        )
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, ids, states, mean, delta_weight, gate_weight, gate_bias)
        ctx.softplus = bool(softplus)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, delta, A, B, C, D, bias, ids, states, mean, weight, gate_weight, gate_bias = ctx.saved_tensors
        grads = nss_scan_gated_backward(
            dout, x, delta, A, B, C, D, bias, ids, states, mean, ctx.softplus, weight, gate_weight, gate_bias
        )
        scan_grads, (d_gate_weight, d_gate_bias) = grads[:-2], grads[-2:]
        return (*scan_grads[:7], None, None, scan_grads[7] if weight is not None else None, d_gate_weight, d_gate_bias)


def nss_scan_gated(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
) -> Tensor:
    """``Σ_k gate_k ⊙ y_k`` (B, L, D) with ``y = nss_scan(x, delta, ..., delta_weight)`` (B, K, L, D) and
    ``gate = ssa_gate(mean_l(y), gate_weight, gate_bias)``, without keeping y for the backward (see the
    module's docstring). Arguments as :func:`mair.models.scan.triton_backend.nss_scan`, plus the gate's
    weight (D, K, K) and bias (D, K)."""
    check_nss_shapes(x, delta, ids, delta_weight)
    check_gate_shapes(x, delta, gate_weight, gate_bias)
    return _NSSScanGated.apply(
        x, delta, A, B, C, D, delta_bias, ids, delta_softplus, delta_weight, gate_weight, gate_bias
    )


def nss_scan_gated_reference(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
) -> Tensor:
    """The plain composition :func:`nss_scan_gated` fuses (autograd keeps y)."""
    from .triton_backend import nss_scan

    ys = nss_scan(x, delta, A, B, C, D, delta_bias, ids, delta_softplus, delta_weight)
    return gated_sum(ys, ssa_gate(ys.float().mean(2), gate_weight, gate_bias))


__all__ = ["gated_sum", "gated_sum_triton", "nss_scan_gated", "nss_scan_gated_reference", "ssa_gate"]
