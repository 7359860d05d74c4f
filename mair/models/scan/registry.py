"""Selective-scan backends: registration, lazy loading and the choice between them.

A backend is a name plus a loader, given as ``"module:function"`` so that nothing is imported until the
backend is asked for. The loader returns the scan callable or raises :class:`ScanBackendUnavailable`. Adding a
backend is one call to :func:`register_backend`, for example::

    register_backend("triton", "mair.models.scan.triton_backend:load", devices=("cuda",),
                     install_hint=TRITON_INSTALL_HINT, auto_priority=20)

Choice, in order: the ``backend=`` argument, then the ``MAIR_SCAN_BACKEND`` switch (docs/switches.md), then the
automatic choice: the available backend with the lowest ``auto_priority`` that runs on the tensors' device
type (among this module's own: CUDA ``mamba`` when mamba_ssm imports, else ``torch``; CPU ``torch``). ``""``
and ``"auto"`` mean automatic.

Beyond the plain scan, a backend declares what it can take over from the VMM (:class:`Fusions`): reading the
four NSS orders itself, projecting Δ inside its op, the SSA gate and sum, the depthwise convolution on the token
layout. The VMM asks the chosen backend (:func:`vmm_plan`) and never compares backend names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mair.runtime import switches

ENV_VAR = "MAIR_SCAN_BACKEND"
MAMBA_INSTALL_HINT = (
    'install it with: pip install --no-build-isolation "mair[cuda]" '
    "(compiles mamba_ssm's CUDA kernel; needs a CUDA toolkit matching your torch build)"
)
TRITON_INSTALL_HINT = 'install it with: pip install "mair[triton]"'

# (u, delta, A, B, C, D, delta_bias, delta_softplus) -> y. Inputs arrive validated, in one floating dtype
# (float32 or float64), with B and C as (batch, G, N, L) sharing the same G.
ScanFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, "Tensor | None", "Tensor | None", bool], Tensor]


class ScanBackendUnavailable(RuntimeError):
    """A selective-scan backend cannot run here; the message says why and how to get it."""


@dataclass(frozen=True)
class Fusions:
    """What a backend takes over from the VMM beyond mamba_ssm's selective scan (nothing: the VMM gathers the
    four scan orders and calls :func:`mair.models.scan.selective_scan`, the reference every fused path is tested
    against).

    ``nss_scan``: ``"module:function"`` of a scan that reads the raster map (B, L, D) through the NSS orders itself
    and writes back in raster order (no gathered copies, no inverse gathers), with the arguments of
    :func:`mair.models.scan.triton_backend.nss_scan`. ``nss_scan_gated``: the same scan followed by the SSA gate and
    the sum over the four scans, in one op (:func:`mair.models.scan.nss_gated.nss_scan_gated`).
    """

    nss_scan: str | None = None
    nss_scan_gated: str | None = None
    with_autograd: bool = False  # the fused scans have a backward (else they run only without autograd)
    delta_in_op: bool = False  # they take Δ's low-rank input and its projection, and project inside the op
    token_conv: bool = False  # the depthwise convolution runs as a Triton op on the (B, H, W, D) token layout
    custom_ops: bool = False  # mair.models.scan.custom_ops has ops of the same names (torch.compile, no break)


class VmmPlan(NamedTuple):
    """How a VMM runs with a backend in one situation (with or without autograd, custom ops or not): which
    fused paths it takes, and the scans for them as ``"module:function"`` (None where the path is not taken;
    :func:`scan_function` gives the function). Plain values only, so that ``torch.compile`` can hold it as a
    constant."""

    backend: str
    nss_order: bool  # the scan reads the NSS orders itself (``nss_scan``)
    delta_in_op: bool  # the fused scan projects Δ inside its op
    gate_in_op: bool  # the SSA gate and the sum run inside the scan op (``nss_scan_gated``)
    token_conv: bool  # the depthwise convolution runs on the token layout (``mair.models.dwconv``)
    nss_scan: str | None = None
    nss_scan_gated: str | None = None

    def describe(self) -> str:
        """The fused paths in words (``gathered`` when none)."""
        parts = [
            ("NSS order read by the scan", self.nss_order),
            ("Δ projected inside the op", self.delta_in_op),
            ("SSA gate and sum inside the op", self.gate_in_op),
            ("depthwise conv on tokens (Triton)", self.token_conv),
        ]
        taken = [text for text, on in parts if on]
        return ", ".join(taken) if taken else "gathered (the four orders copied, then selective_scan)"


@dataclass(frozen=True)
class BackendSpec:
    """One backend: how to load it, where it runs, and what it fuses (:class:`Fusions`)."""

    name: str
    loader: str  # "package.module:function", imported on first use
    devices: tuple[str, ...] | None  # device types it runs on (None: any)
    install_hint: str | None = None
    auto_priority: int | None = None  # lower wins in the automatic choice; None: only when named
    summary: str = ""
    fusions: Fusions = field(default_factory=Fusions)

    def runs_on(self, device_type: str) -> bool:
        """Whether tensors of this device type are supported."""
        return self.devices is None or device_type in self.devices

    def plan(self, grad: bool, custom_ops: bool) -> VmmPlan:
        """The VMM's fused paths with this backend, with autograd recording (``grad``) or not, through the custom
        ops (``custom_ops``, as under ``torch.compile``) or the eager functions."""
        fu = self.fusions
        usable = fu.nss_scan is not None and (fu.with_autograd or not grad) and (fu.custom_ops or not custom_ops)
        if not usable:
            return VmmPlan(self.name, False, False, False, False)
        gated = fu.nss_scan_gated is not None
        return VmmPlan(self.name, True, fu.delta_in_op, gated, fu.token_conv, fu.nss_scan, fu.nss_scan_gated)


_REGISTRY: dict[str, BackendSpec] = {}
_LOADED: dict[str, ScanFn | ScanBackendUnavailable] = {}


_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def scan_function(loader: str) -> Callable[..., Any]:
    """The function ``"module:function"`` names (a fused scan of :class:`Fusions`), imported once. Its custom-op
    twin is the function of the same name in :mod:`mair.models.scan.custom_ops`."""
    if loader not in _FUNCTIONS:
        module_name, func_name = loader.split(":", 1)
        _FUNCTIONS[loader] = getattr(importlib.import_module(module_name), func_name)
    return _FUNCTIONS[loader]


def register_backend(
    name: str,
    loader: str,
    *,
    devices: tuple[str, ...] | None = None,
    install_hint: str | None = None,
    auto_priority: int | None = None,
    summary: str = "",
    fusions: Fusions | None = None,
) -> None:
    """Register (or replace) a backend; ``loader`` is ``"module:function"`` and is imported lazily."""
    if ":" not in loader:
        raise ValueError(f"loader must look like 'package.module:function', got {loader!r}")
    _REGISTRY[name] = BackendSpec(name, loader, devices, install_hint, auto_priority, summary, fusions or Fusions())
    _LOADED.pop(name, None)


register_backend(
    "mamba",
    "mair.models.scan.mamba_backend:load",
    devices=("cuda",),
    install_hint=MAMBA_INSTALL_HINT,
    auto_priority=10,
    summary="mamba_ssm's CUDA kernel",
)
register_backend(
    "torch",
    "mair.models.scan.torch_backend:load",
    auto_priority=100,
    summary="chunked pure PyTorch, any device",
    # Without autograd, the NSS order folded into its chunked layout (about 2x faster on the CPU).
    fusions=Fusions(nss_scan="mair.models.scan.torch_nss:nss_scan_torch"),
)
register_backend(
    "reference",
    "mair.models.scan.reference:load",
    summary="sequential loop, for tests and debugging",
)


def known_backends() -> list[str]:
    """Every registered backend name, available here or not."""
    return sorted(_REGISTRY)


def clear_backend_cache() -> None:
    """Forget loaded backends and load failures (for tests, or after installing a package)."""
    _LOADED.clear()


def _spec(name: str) -> BackendSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown selective-scan backend {name!r}; known backends: {', '.join(known_backends())} "
            "(or 'auto' / unset for the automatic choice)"
        ) from None


def load_backend(name: str) -> ScanFn:
    """The scan callable of a backend; raises :class:`ScanBackendUnavailable` with install advice."""
    spec = _spec(name)
    if name not in _LOADED:
        module_name, func_name = spec.loader.split(":", 1)
        try:
            loader = getattr(importlib.import_module(module_name), func_name)
            _LOADED[name] = loader()
        except ScanBackendUnavailable as exc:
            _LOADED[name] = exc
        except (ImportError, OSError) as exc:
            hint = f"; {spec.install_hint}" if spec.install_hint else ""
            _LOADED[name] = ScanBackendUnavailable(
                f"selective-scan backend {name!r} is not available: {type(exc).__name__}: {exc}{hint}"
            )
    result = _LOADED[name]
    if isinstance(result, ScanBackendUnavailable):
        raise ScanBackendUnavailable(str(result)) from result
    return result


def available_backends() -> list[str]:
    """Names of the backends that load on this machine (whatever device they need)."""
    names = []
    for name in known_backends():
        try:
            load_backend(name)
        except ScanBackendUnavailable:
            continue
        names.append(name)
    return names


def _device_type(device: torch.device | str | None) -> str:
    return torch.device(device if device is not None else "cpu").type


def _requested(name: str | None) -> tuple[str | None, str]:
    """The requested name (None: automatic) and where the request came from."""
    if name is not None and name.strip().lower() not in ("", "auto"):
        return name.strip().lower(), "argument backend="
    if name is None:
        chosen = switches.get(ENV_VAR)
        if chosen is not None:
            where = " (set from Python)" if switches.source(ENV_VAR) == "python" else ""
            return chosen, f"{ENV_VAR}={chosen}{where}"
    return None, "automatic"


def _check_device(spec: BackendSpec, device_type: str) -> None:
    if not spec.runs_on(device_type):
        where = ", ".join(spec.devices or ())
        raise ScanBackendUnavailable(
            f"selective-scan backend {spec.name!r} runs on {where} tensors only, got {device_type} tensors; "
            f"use backend='torch' (or unset {ENV_VAR}) for {device_type}"
        )


def _auto(device_type: str) -> tuple[str, list[str]]:
    """The automatic choice for a device type and the reasons the better-ranked candidates were skipped."""
    skipped = []
    ranked = sorted((s for s in _REGISTRY.values() if s.auto_priority is not None), key=lambda s: s.auto_priority or 0)
    for spec in ranked:
        if not spec.runs_on(device_type):
            skipped.append(f"{spec.name!r} runs on {', '.join(spec.devices or ())} only")
            continue
        try:
            load_backend(spec.name)
        except ScanBackendUnavailable as exc:
            skipped.append(f"{spec.name!r} unavailable ({exc})")
            continue
        return spec.name, skipped
    raise ScanBackendUnavailable(f"no selective-scan backend runs on {device_type}: {'; '.join(skipped)}")


def resolve_backend(name: str | None = None, device: torch.device | str | None = None) -> str:
    """The backend to use for tensors on ``device``: ``name`` > ``$MAIR_SCAN_BACKEND`` > automatic.

    A named backend that cannot run raises :class:`ScanBackendUnavailable` (with install advice); an unknown
    name raises ``ValueError`` listing the known ones.
    """
    return chosen_backend(name, device).name


def chosen_backend(name: str | None = None, device: torch.device | str | None = None) -> BackendSpec:
    """The backend object :func:`resolve_backend` chooses (its name, where it runs, what it fuses)."""
    device_type = _device_type(device)
    requested, _ = _requested(name)
    if requested is None:
        return _REGISTRY[_auto(device_type)[0]]
    spec = _spec(requested)
    load_backend(requested)
    _check_device(spec, device_type)
    return spec


def vmm_plan(name: str | None, device: torch.device | str | None, grad: bool, custom_ops: bool) -> VmmPlan:
    """How a VMM with ``scan_backend`` ``name`` runs on ``device``: the chosen backend's :meth:`BackendSpec.plan`."""
    return chosen_backend(name, device).plan(grad, custom_ops)


def describe_backend_choice(device: torch.device | str | None = None, name: str | None = None) -> str:
    """One line saying which backend the scan uses on ``device`` and why (never raises for a bad choice)."""
    device_type = _device_type(device)
    requested, source = _requested(name)
    try:
        if requested is None:
            chosen, skipped = _auto(device_type)
            why = "automatic choice"
            if skipped:
                why += "; skipped " + "; ".join(skipped)
        else:
            chosen, why = resolve_backend(requested, device_type), f"set by {source}"
    except (ScanBackendUnavailable, ValueError) as exc:
        return f"selective scan on {device_type}: no backend ({source}): {exc}"
    summary = _REGISTRY[chosen].summary
    return f"selective scan on {device_type}: backend {chosen!r} ({summary}); {why}"


_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
register_backend(
    "triton",
    "mair.models.scan.triton_backend:load",
    # Under Triton's CPU interpreter (tests) it runs anywhere but is never chosen automatically.
    devices=None if _TRITON_INTERPRET else ("cuda",),
    install_hint=TRITON_INSTALL_HINT,
    # After mamba (10): measured slower than mamba_ssm in training (docs/benchmarks.md), far faster than torch.
    auto_priority=None if _TRITON_INTERPRET else 20,
    summary="our Triton kernels, NSS order fused in",
    # The gate and sum in the op keep the chunk states instead of the four scan outputs for the backward (3.2 GiB
    # less per SR x2 step); the token-layout convolution saves cuDNN's permutes and layout transforms
    # (docs/benchmarks.md, "What makes the path fast").
    fusions=Fusions(
        nss_scan="mair.models.scan.triton_backend:nss_scan",
        nss_scan_gated="mair.models.scan.nss_gated:nss_scan_gated",
        with_autograd=True,
        delta_in_op=True,
        token_conv=True,
        custom_ops=True,
    ),
)
