"""The selective scan of MaIR's VMM, with pluggable backends.

``selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend=None)`` has
mamba_ssm's ``selective_scan_fn`` semantics. Backends: ``mamba`` (mamba_ssm's CUDA kernel, when it imports),
``torch`` (chunked pure PyTorch, any device) and ``reference`` (a sequential loop, for tests). The choice is
``backend=`` > ``$MAIR_SCAN_BACKEND`` > automatic; see :func:`describe_backend_choice`. The chosen backend
(:func:`chosen_backend`) also says what it fuses for the VMM (:class:`Fusions`). Importing this package never
imports mamba_ssm.
"""

from .api import selective_scan
from .registry import (
    ENV_VAR,
    Fusions,
    ScanBackendUnavailable,
    available_backends,
    chosen_backend,
    clear_backend_cache,
    describe_backend_choice,
    known_backends,
    load_backend,
    register_backend,
    resolve_backend,
)

__all__ = [
    "ENV_VAR",
    "Fusions",
    "ScanBackendUnavailable",
    "available_backends",
    "chosen_backend",
    "clear_backend_cache",
    "describe_backend_choice",
    "known_backends",
    "load_backend",
    "register_backend",
    "resolve_backend",
    "selective_scan",
]
