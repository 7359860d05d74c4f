"""The semantic reference of the selective scan: a plain sequential loop over L, differentiable by autograd.

Slow (one Python step per position) and memory-hungry under autograd; it is what the tests compare the fast
backends against, and it can be chosen by name (``backend="reference"``) for debugging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import ScanFn


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """``h_l = exp(Δ_l A) h_{l-1} + Δ_l B_l u_l``, ``y_l = Σ_n C_l h_l + D u_l``, step by step.

    Shapes: u, delta (batch, Dch, L); A (Dch, N); B, C (batch, G, N, L), channel d uses group d // (Dch // G);
    D, delta_bias (Dch,). Computes in the dtype of the inputs (float32 or float64).
    """
    batch, dch, _ = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    # Per-channel copies of the group's B and C: (batch, Dch, N, L).
    Bx = B.repeat_interleave(dch // groups, dim=1)
    Cx = C.repeat_interleave(dch // groups, dim=1)
    decay = torch.exp(dt[:, :, None, :] * A[None, :, :, None])
    drive = (dt * u)[:, :, None, :] * Bx
    h = u.new_zeros(batch, dch, n_state)
    ys = []
    # unbind (not indexing) so that autograd's backward does not build a full-size zero tensor per step.
    for a_l, x_l, c_l in zip(decay.unbind(-1), drive.unbind(-1), Cx.unbind(-1), strict=True):
        h = a_l * h + x_l
        ys.append((h * c_l).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    return y


def load() -> ScanFn:
    """Registry loader: always available."""
    return selective_scan_reference
