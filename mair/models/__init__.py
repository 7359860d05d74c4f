"""MaIR networks: :class:`MaIR` (SR, colour denoising) and :class:`MaIRUNet` (real denoising, deblurring,
dehazing), built from the official constructor arguments by :func:`from_official`.

Importing this package needs neither mamba_ssm nor a GPU.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from mair.models.mair import MaIR
from mair.models.mair_unet import MaIRUNet

ARCHITECTURES: dict[str, type[nn.Module]] = {"MaIR": MaIR, "MaIRUNet": MaIRUNet}

__all__ = ["ARCHITECTURES", "MaIR", "MaIRUNet", "from_official", "official_defaults"]


def _arch_class(arch: str) -> type[nn.Module]:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}") from None


def official_defaults(arch: str) -> dict[str, Any]:
    """The official constructor's argument names and defaults for ``arch``."""
    signature = inspect.signature(_arch_class(arch).__init__)
    return {name: p.default for name, p in signature.parameters.items()
            if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}


def from_official(arch: str, **kwargs: Any) -> nn.Module:
    """Build ``MaIR`` or ``MaIRUNet`` from the official constructor arguments (names as in the official ymls).

    Unknown argument names raise a ``TypeError`` that lists the accepted ones (the official MaIR silently
    absorbed unknown names; we only accept its ``batch_size``, which it ignores).
    """
    cls = _arch_class(arch)
    accepted = set(official_defaults(arch)) | ({"batch_size"} if cls is MaIR else set())
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"{arch} has no argument(s) {unknown}; accepted: {sorted(accepted)}")
    for key in ("depths", "num_blocks"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = [int(v) for v in kwargs[key]]
    return cls(**kwargs)
