"""``selective_scan``: argument checks, dtype handling and dispatch to a backend."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .registry import load_backend, resolve_backend


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _check_groups(name: str, t: Tensor, batch: int, dch: int, n_state: int, length: int) -> None:
    expected = (
        f"(batch, N, L) = ({batch}, {n_state}, {length}) or (batch, G, N, L) = "
        f"({batch}, G, {n_state}, {length}) with G dividing Dch={dch}"
    )
    ok = t.dim() == 3 and tuple(t.shape) == (batch, n_state, length)
    ok = ok or (
        t.dim() == 4
        and tuple(t.shape[::2]) == (batch, n_state)
        and t.shape[3] == length
        and t.shape[1] >= 1
        and dch % t.shape[1] == 0
    )
    if not ok:
        raise ValueError(f"selective_scan: {name} must have shape {expected}; got {_shape(t)}")


def _validate(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is None and name in ("D", "delta_bias"):
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise ValueError(f"selective_scan: {name} must be real; complex inputs are not supported")
        if not t.is_floating_point():
            raise TypeError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must have shape (batch, Dch, L); got {_shape(u)}")
    batch, dch, length = u.shape
    if length < 1 or dch < 1:
        raise ValueError(f"selective_scan: u must have Dch >= 1 and L >= 1; got {_shape(u)}")
    if delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: delta must have the shape of u (batch, Dch, L) = {_shape(u)}; got {_shape(delta)}"
        )
    if A.dim() != 2 or A.shape[0] != dch or A.shape[1] < 1:
        raise ValueError(f"selective_scan: A must have shape (Dch, N) = ({dch}, N); got {_shape(A)}")
    n_state = A.shape[1]
    _check_groups("B", B, batch, dch, n_state, length)
    _check_groups("C", C, batch, dch, n_state, length)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dch,):
            raise ValueError(f"selective_scan: {name} must have shape (Dch,) = ({dch},); got {_shape(t)}")


def _grouped(B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """B and C as (batch, G, N, L) with one common G (the lcm of theirs, which also divides Dch)."""
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    groups = math.lcm(B4.shape[1], C4.shape[1])
    if B4.shape[1] != groups:
        B4 = B4.repeat_interleave(groups // B4.shape[1], dim=1)
    if C4.shape[1] != groups:
        C4 = C4.repeat_interleave(groups // C4.shape[1], dim=1)
    return B4, C4


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str | None = None,
) -> Tensor:
    """The selective scan with mamba_ssm's ``selective_scan_fn`` semantics (without ``z`` and last state).

    ``Δ = softplus(delta + delta_bias)`` (or without softplus), ``h_l = exp(Δ_l A) h_{l-1} + Δ_l B_l u_l``
    from ``h_{-1} = 0``, ``y_l = Σ_n C_l h_l + D u_l``.

    Shapes: u, delta (batch, Dch, L); A (Dch, N), real; B, C (batch, N, L), or grouped (batch, G, N, L) where
    channel d uses group d // (Dch // G); D, delta_bias (Dch,). Computes in float32 (float64 when an input is
    float64) and returns the dtype of ``u``. ``backend``: a registered name, else ``$MAIR_SCAN_BACKEND``, else
    the automatic choice (see :mod:`mair.models.scan.registry`).
    """
    _validate(u, delta, A, B, C, D, delta_bias)
    fn = load_backend(resolve_backend(backend, u.device))
    present = [t for t in (u, delta, A, B, C, D, delta_bias) if t is not None]
    compute = torch.float64 if any(t.dtype == torch.float64 for t in present) else torch.float32
    # Cast before repeating: the backward of the repeat sums the groups' gradients, in float32, not in bf16.
    B4, C4 = _grouped(B.to(compute), C.to(compute))

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(compute)

    y = fn(
        u.to(compute),
        delta.to(compute),
        A.to(compute),
        B4,
        C4,
        cast(D),
        cast(delta_bias),
        bool(delta_softplus),
    )
    return y.to(u.dtype)
