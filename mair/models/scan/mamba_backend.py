"""mamba_ssm's CUDA selective scan as a backend (CUDA tensors only).

``mamba_ssm.ops.selective_scan_interface`` imports the compiled ``selective_scan_cuda`` module at import time,
so on a machine without the built extension (any CPU-only machine) the import fails: the loader reports that
as :class:`ScanBackendUnavailable` with the install command.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import MAMBA_INSTALL_HINT, ScanBackendUnavailable, ScanFn


def load() -> ScanFn:
    """Import mamba_ssm's ``selective_scan_fn`` or raise :class:`ScanBackendUnavailable`."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as exc:
        raise ScanBackendUnavailable(
            f"selective-scan backend 'mamba' is not available: mamba_ssm does not import "
            f"({type(exc).__name__}: {exc}); {MAMBA_INSTALL_HINT}"
        ) from exc

    def selective_scan_mamba(
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None = None,
        delta_bias: Tensor | None = None,
        delta_softplus: bool = False,
    ) -> Tensor:
        """mamba_ssm's kernel on float32 copies of the inputs (it has no float64 path)."""
        if not u.is_cuda:
            raise ScanBackendUnavailable(
                f"selective-scan backend 'mamba' needs CUDA tensors, got {u.device}; use backend='torch'"
            )

        def f32(t: Tensor | None) -> Tensor | None:
            # selective_scan_fn makes its own contiguous copies where the kernel needs them (last stride 1).
            return None if t is None else t.to(torch.float32)

        y: Tensor = selective_scan_fn(
            f32(u),
            f32(delta),
            f32(A),
            f32(B),
            f32(C),
            D=f32(D),
            z=None,
            delta_bias=f32(delta_bias),
            delta_softplus=bool(delta_softplus),
            return_last_state=False,
        )
        return y

    return selective_scan_mamba
