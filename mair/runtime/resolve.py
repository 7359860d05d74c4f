"""What runs: device, scan backend, precision, ``torch.compile`` and Adam, decided in one place.

Every command (``mair train``, ``mair evaluate``, ``mair restore``, ``mair bench --default``) calls
:func:`resolve_runtime` and uses the :class:`RuntimeSettings` it returns, so the defaults live here only
(docs/training.md, docs/evaluation.md):

========================  =========================================  ==========================================
                          CUDA, default (fast path)                  ``--exact`` (any device), and the CPU
========================  =========================================  ==========================================
scan backend              ``triton`` when it loads, else automatic   automatic (``mair.models.scan``)
precision                 ``tf32``: TF32 matmuls and convolutions    ``exact``: true fp32 (CPU default: ``fp32``)
compile, training         Inductor, ``reduce-overhead`` (CUDA        eager
                          graphs; patches have static shapes)
compile, inference        eager unless asked (``--compile``)         eager
Adam                      fused                                      PyTorch's default
========================  =========================================  ==========================================

Inference compiles only when asked: the test images differ in size, so every image would compile again
(about 50 s each, cold, on an H100), and padding a tile to a common shape changes MaIR's output, because
the scan runs through the padding. ``$MAIR_SCAN_BACKEND`` (docs/switches.md) and explicit options (``--precision``,
``--compile``, ``--compile-mode``, ``--no-compile``) override single choices; the record then says ``custom``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

from mair.runtime import switches
from mair.runtime.compile_modes import COMPILE_MODES, CUDA_GRAPH_MODES

__all__ = ["WORKLOADS", "RuntimeSettings", "RuntimeSettingsError", "resolve_runtime"]

WORKLOADS = ("train", "infer")
ENV_SCAN = "MAIR_SCAN_BACKEND"
FAST_COMPILE_MODE = "reduce-overhead"  # CUDA graphs: the fastest mode on one GPU and under DDP (docs/benchmarks.md)


class RuntimeSettingsError(ValueError):
    """Options that contradict each other (``--exact`` with ``--compile``, ...); the message names them."""


@dataclass(frozen=True)
class RuntimeSettings:
    """The resolved way a command runs. ``path`` is ``default``, ``exact`` or ``custom`` (options changed it)."""

    device: str  # device type: cuda or cpu
    path: str
    precision: str  # a mair.runtime.precision mode: exact, fp32, tf32, bf16
    scan_backend: str | None  # pinned on the network's VMMs; None: the registry's automatic choice
    scan_backend_resolved: str  # the backend that runs (or "unavailable: ...")
    compile_backend: str | None  # torch.compile backend; None: eager
    compile_mode: str | None
    fused_adam: bool
    # cuDNN's autotuning stays off on every path: on an H100 it picked, in the compiled TF32 backward, a
    # convolution algorithm that moved a golden file's input gradient by 3.5e-2 (4.3e-3 on the next case) where
    # the same path without it stays at 3.6e-3, as eager TF32 does (docs/benchmarks.md, "Default path against
    # --exact"). Kept as a field so that the record says so.
    cudnn_benchmark: bool
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exact(self) -> bool:
        return self.path == "exact"

    @property
    def cuda_graphs(self) -> bool:
        """Whether compiled calls are replayed as CUDA graphs (mark each step with cudagraph_mark_step_begin)."""
        return self.compile_backend is not None and self.compile_mode in CUDA_GRAPH_MODES

    def describe(self) -> str:
        """One line for logs, e.g. ``fast path on cuda: scan triton, TF32 matmuls and convolutions, ...``."""
        name = {"default": "default path", "exact": "exact path", "custom": "custom settings"}[self.path]
        precision = {
            "exact": "true fp32 (no TF32)",
            "fp32": "fp32 (TF32 convolutions only)",
            "tf32": "TF32 matmuls and convolutions",
            "bf16": "bf16 autocast",
        }[self.precision]
        if self.device == "cpu" and self.precision in ("exact", "fp32"):
            precision = "fp32"  # TF32 is a GPU format: both are plain fp32 here
        if self.compile_backend is None:
            compiled = "eager"
        else:
            compiled = f"torch.compile {self.compile_backend}" + (f" {self.compile_mode}" if self.compile_mode else "")
            compiled += " (CUDA graphs)" if self.cuda_graphs else ""
        parts = [f"scan {self.scan_backend_resolved}", precision, compiled]
        if self.fused_adam:
            parts.append("fused Adam")
        text = f"{name} on {self.device}: " + ", ".join(parts)
        return text + "".join(f"; {note}" for note in self.notes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (run config, summaries, benchmark JSON)."""
        record = asdict(self)
        record["notes"] = list(self.notes)
        record["cuda_graphs"] = self.cuda_graphs
        record["describe"] = self.describe()
        return record

    def apply(self) -> Any:
        """Set the process-wide switches: TF32, cuDNN autotuning (CUDA), the persistent compile cache (when
        anything compiles: torch.compile, or our Triton kernels on CUDA). Returns the
        :class:`mair.runtime.compile_cache.CompileCache` set up, or None."""
        import torch

        from mair.runtime import compile_cache
        from mair.runtime.precision import apply_matmul_precision

        apply_matmul_precision(self.precision)
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.compile_backend is not None or self.device == "cuda":
            return compile_cache.setup()
        return None

    def prepare_model(self, model: Any) -> Any:
        """Pin the scan backend on every VMM of ``model`` (when one is pinned); returns ``model``."""
        if self.scan_backend is not None:
            from mair.models import set_scan_backend

            set_scan_backend(model, self.scan_backend)
        return model

    def compile(self, model: Any, fullgraph: bool = True) -> Any:
        """``model`` compiled as the settings say (the scan as custom ops), or ``model`` itself when eager."""
        if self.compile_backend is None:
            return model
        from mair.models.scan.custom_ops import compile_model

        return compile_model(
            model,
            fullgraph=fullgraph,
            backend=self.compile_backend,
            **({"mode": self.compile_mode} if self.compile_mode else {}),
        )

    def adam_kwargs(self) -> dict[str, bool]:
        """Keyword arguments of ``torch.optim.Adam``/``AdamW``."""
        return {"fused": True} if self.fused_adam else {}


def _device_type(device: Any) -> str:
    text = str(getattr(device, "type", device) or "").strip().lower()
    kind = text.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise RuntimeSettingsError(f"device must be cpu or cuda (cuda:N), got {device!r}")
    return kind


def _triton_scan_loads() -> bool:
    """Whether the Triton scan backend loads here (Triton importable and a CUDA device, or its interpreter)."""
    if importlib.util.find_spec("triton") is None:
        return False
    from mair.models.scan import ScanBackendUnavailable, load_backend

    try:
        load_backend("triton")
    except ScanBackendUnavailable:
        return False
    return True


def _resolved_name(name: str | None, device: str) -> str:
    from mair.models.scan import ScanBackendUnavailable, resolve_backend

    try:
        return resolve_backend(name, device)
    except (ScanBackendUnavailable, ValueError) as error:
        return f"unavailable ({error})"


def resolve_runtime(
    device: Any,
    exact: bool = False,
    *,
    workload: str = "train",
    precision: str | None = None,
    compile: bool | None = None,
    compile_backend: str | None = None,
    compile_mode: str | None = None,
    scan_backend: str | None = None,
    triton_available: bool | None = None,
    require_scan_backend: bool = True,
) -> RuntimeSettings:
    """The settings a command runs with on ``device`` (``cpu``, ``cuda``, ``cuda:N`` or a torch.device); see
    :func:`_resolve`. A scan backend asked for (``scan_backend`` or ``$MAIR_SCAN_BACKEND``) that cannot run here
    raises :class:`RuntimeSettingsError` naming it, unless ``require_scan_backend`` is False (``mair info``
    reports it instead)."""
    settings = _resolve(
        device,
        exact,
        workload=workload,
        precision=precision,
        compile=compile,
        compile_backend=compile_backend,
        compile_mode=compile_mode,
        scan_backend=scan_backend,
        triton_available=triton_available,
    )
    unavailable = settings.scan_backend_resolved.startswith("unavailable")
    if require_scan_backend and unavailable:
        asked = f"scan backend {scan_backend!r}" if scan_backend else f"MAIR_SCAN_BACKEND={switches.get(ENV_SCAN)}"
        why = settings.scan_backend_resolved.removeprefix("unavailable (").removesuffix(")")
        raise RuntimeSettingsError(f"{asked} cannot run on {settings.device}: {why} (docs/switches.md)")
    return settings


def _resolve(
    device: Any,
    exact: bool,
    *,
    workload: str,
    precision: str | None,
    compile: bool | None,
    compile_backend: str | None,
    compile_mode: str | None,
    scan_backend: str | None,
    triton_available: bool | None,
) -> RuntimeSettings:
    """The settings a command runs with on ``device`` (``cpu``, ``cuda``, ``cuda:N`` or a torch.device).

    ``exact``: the ``--exact`` path (eager, true fp32, PyTorch's Adam). ``workload``: ``train`` (static patch
    shapes: compiled by default on CUDA) or ``infer`` (compiled only when asked). ``precision``, ``compile``
    (True: compile with the default backend and mode, False: eager), ``compile_backend``, ``compile_mode`` and
    ``scan_backend``: explicit choices (``None``: the default). ``triton_available``: whether the Triton scan
    loads (``None``: find out; tests pass it to resolve for a CUDA machine anywhere). Nothing here touches the
    process; :meth:`RuntimeSettings.apply` does. Contradicting options raise :class:`RuntimeSettingsError`.
    """
    from mair.runtime.precision import PRECISIONS

    kind = _device_type(device)
    if workload not in WORKLOADS:
        raise RuntimeSettingsError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    if precision is not None and precision not in PRECISIONS:
        raise RuntimeSettingsError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise RuntimeSettingsError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    if compile_mode is not None and compile_backend not in (None, "inductor"):
        raise RuntimeSettingsError(
            f"--compile-mode {compile_mode} needs the inductor compiler, not --compile {compile_backend}"
        )
    asked_compile = compile_backend is not None or compile_mode is not None
    if compile is False and asked_compile:
        raise RuntimeSettingsError("--no-compile contradicts --compile/--compile-mode; give one of them")
    if exact and (precision not in (None, "exact") or asked_compile or compile):
        raise RuntimeSettingsError(
            "--exact runs eager in true fp32; drop --precision/--compile/--compile-mode, or drop --exact"
        )
    requested_scan = scan_backend or switches.get(ENV_SCAN)
    if requested_scan in ("auto",):
        requested_scan = None
    cuda = kind == "cuda"
    notes: list[str] = []

    if exact:
        pinned = scan_backend
        return RuntimeSettings(
            kind,
            "exact",
            "exact",
            pinned,
            _resolved_name(pinned, kind),
            None,
            None,
            fused_adam=False,
            cudnn_benchmark=False,
        )

    custom = precision is not None or compile is not None or asked_compile or requested_scan is not None
    chosen_precision = precision or ("tf32" if cuda else "fp32")
    triton_ok = cuda and (_triton_scan_loads() if triton_available is None else triton_available)
    pinned = scan_backend
    if requested_scan is None and triton_ok:
        pinned = "triton"  # the fused NSS path: the fastest on CUDA (docs/benchmarks.md)
    backend, mode = compile_backend, compile_mode
    if compile_mode is not None:
        backend = "inductor"
    elif compile_backend is None:
        default_compile = compile if compile is not None else (cuda and workload == "train")
        if default_compile and cuda and importlib.util.find_spec("triton") is None and compile is None:
            notes.append('not compiled: Inductor needs Triton on CUDA (pip install "mair[triton]")')
            default_compile = False
        if default_compile:
            backend, mode = "inductor", (FAST_COMPILE_MODE if cuda else None)
    if cuda and workload == "infer" and backend is None and compile is None:
        notes.append("not compiled: image sizes vary")
    resolved = "triton" if pinned == "triton" and triton_ok else _resolved_name(pinned, kind)
    return RuntimeSettings(
        kind,
        "custom" if custom else "default",
        chosen_precision,
        pinned,
        resolved,
        backend,
        mode,
        fused_adam=cuda and workload == "train",
        cudnn_benchmark=False,
        notes=tuple(notes),
    )
