"""MaIR networks: :class:`MaIR` (SR, colour denoising) and :class:`MaIRUNet` (real denoising, deblurring,
dehazing), built from the official constructor arguments by :func:`from_official`.

Importing this package is cheap: torch and the networks load on first use of a name below (so the ``mair``
command's help and data subcommands start instantly). It needs neither mamba_ssm nor a GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from mair.models.mair_net import MaIR
    from mair.models.mair_unet import MaIRUNet

__all__ = ["ARCHITECTURES", "MaIR", "MaIRUNet", "from_official", "official_defaults", "set_scan_backend"]


def __getattr__(name: str) -> Any:
    if name == "MaIR":
        from mair.models.mair_net import MaIR

        return MaIR
    if name == "MaIRUNet":
        from mair.models.mair_unet import MaIRUNet

        return MaIRUNet
    if name == "ARCHITECTURES":
        return _architectures()
    raise AttributeError(f"module 'mair.models' has no attribute {name!r}")


def _architectures() -> dict[str, type[nn.Module]]:
    from mair.models.mair_net import MaIR
    from mair.models.mair_unet import MaIRUNet

    return {"MaIR": MaIR, "MaIRUNet": MaIRUNet}


def _arch_class(arch: str) -> type[nn.Module]:
    architectures = _architectures()
    try:
        return architectures[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(architectures)}") from None


def official_defaults(arch: str) -> dict[str, Any]:
    """The official constructor's argument names and defaults for ``arch``."""
    import inspect

    signature = inspect.signature(_arch_class(arch).__init__)
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def from_official(arch: str, **kwargs: Any) -> nn.Module:
    """Build ``MaIR`` or ``MaIRUNet`` from the official constructor arguments (names as in the official ymls).

    Unknown argument names raise a ``TypeError`` that lists the accepted ones (the official MaIR silently
    absorbed unknown names; we only accept its ``batch_size``, which it ignores).
    """
    cls = _arch_class(arch)
    accepted = set(official_defaults(arch)) | ({"batch_size"} if arch == "MaIR" else set())
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"{arch} has no argument(s) {unknown}; accepted: {sorted(accepted)}")
    for key in ("depths", "num_blocks"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = [int(v) for v in kwargs[key]]
    return cls(**kwargs)


def set_scan_backend(model: nn.Module, backend: str | None) -> None:
    """Make every VMM of ``model`` use the selective-scan ``backend`` (None: automatic choice)."""
    for module in model.modules():
        if hasattr(module, "scan_backend"):
            module.scan_backend = backend
