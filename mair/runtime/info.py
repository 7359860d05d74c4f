"""``mair info --runtime``: what runs on this machine and why.

Every switch (docs/switches.md) with its value and where it comes from, then, for training and for inference,
the settings :func:`mair.runtime.resolve.resolve_runtime` gives (scan backend, precision, compile mode, Adam),
the scan backend's choice as the registry explains it, and the fused paths the VMM takes with that backend
(:meth:`mair.models.scan.registry.BackendSpec.plan`).
"""

from __future__ import annotations

from typing import Any

from mair.runtime import switches

__all__ = ["format_runtime_info", "runtime_info"]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _vmm_paths(settings: Any, grad: bool) -> dict[str, Any]:
    """The fused paths of the VMM with the backend ``settings`` resolve to (with autograd: training)."""
    from mair.models.blocks import VMM, paths_taken
    from mair.models.scan import ScanBackendUnavailable
    from mair.models.scan.registry import chosen_backend

    try:
        backend = chosen_backend(settings.scan_backend, settings.device)
    except (ScanBackendUnavailable, ValueError) as error:
        return {"backend": None, "describe": f"no backend: {error}"}
    plan = backend.plan(grad, custom_ops=settings.compile_backend is not None or bool(switches.get("scan_custom_op")))
    taken = paths_taken(plan, VMM.fold_scan_order, VMM.fuse_gate, VMM.triton_conv)
    return {
        "backend": backend.name,
        "nss_order": taken.nss_order,
        "delta_in_op": taken.delta_in_op,
        "gate_in_op": taken.gate_in_op,
        "token_conv": taken.token_conv,
        "describe": taken.describe(),
    }


def _why_backend(settings: Any) -> str:
    """The registry's account of the scan backend, and whether the default path pinned it."""
    from mair.models.scan import describe_backend_choice

    line = describe_backend_choice(settings.device, settings.scan_backend)
    requested = switches.get("scan_backend")
    if settings.scan_backend is not None and requested is None and not settings.exact:
        line += f" (the default path on {settings.device} pins it: docs/training.md)"
    return line


def runtime_info(device: str | None = None, exact: bool = False) -> dict[str, Any]:
    """What runs on ``device`` (default: CUDA when there is a GPU, else the CPU), for training and inference."""
    from mair.runtime.resolve import resolve_runtime

    kind = device or _default_device()
    workloads = {}
    for workload in ("train", "infer"):
        settings = resolve_runtime(kind, exact, workload=workload, require_scan_backend=False)
        workloads[workload] = {
            "settings": settings.describe(),
            "path": settings.path,
            "scan_backend": settings.scan_backend_resolved,
            "scan_backend_why": _why_backend(settings),
            "precision": settings.precision,
            "compile_backend": settings.compile_backend,
            "compile_mode": settings.compile_mode,
            "fused_adam": settings.fused_adam if workload == "train" else None,
            "vmm": _vmm_paths(settings, grad=workload == "train"),
            "notes": list(settings.notes),
        }
    return {"device": kind, "exact": exact, "switches": switches.report(), "workloads": workloads}


def format_runtime_info(info: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [f"mair runtime on {info['device']}" + (" (--exact)" if info["exact"] else ""), "", "Switches:"]
    width = max(len(row["name"]) for row in info["switches"])
    for row in info["switches"]:
        lines.append(f"  {row['name']:<{width}}  {row['shown']}  [{row['source']}]")
    for workload, title in (("train", "Training"), ("infer", "Inference")):
        w = info["workloads"][workload]
        compiled = "eager" if w["compile_backend"] is None else f"{w['compile_backend']} {w['compile_mode'] or ''}"
        lines += [
            "",
            f"{title}: {w['settings']}",
            f"  scan backend:  {w['scan_backend']}",
            f"  why:           {w['scan_backend_why']}",
            f"  precision:     {w['precision']}",
            f"  compile:       {compiled.strip()}",
        ]
        if w["fused_adam"] is not None:
            lines.append(f"  Adam:          {'fused' if w['fused_adam'] else 'PyTorch default'}")
        lines.append(f"  VMM paths:     {w['vmm']['describe']}")
        lines += [f"  note:          {note}" for note in w["notes"]]
    lines += ["", f"Switches are described in {switches.DOCS}."]
    return "\n".join(lines)
