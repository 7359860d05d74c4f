"""``mair bench``: time the performance issue's workloads (and any experiment) per scan backend and precision.

Workloads (one GPU): a training step (forward, L1 loss, backward, Adam step) at an experiment's per-GPU batch
and patch size, inference on one image, and the selective scan alone including the scan-order gather and
scatter. Prints ms per step and peak memory; ``--out`` writes JSON. Times use CUDA events on GPUs (median of
``--repeat`` after ``--warmup``), wall clock on the CPU. ``--default`` times what a user gets without flags
(:func:`mair.runtime.resolve_runtime`; training workloads as ``mair train``, inference as ``mair evaluate``) and
records the resolved settings in every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mair.common.atomic import atomic_write_json
from mair.experiments.spec import Network


@dataclass(frozen=True)
class Workload:
    """One timed job: ``kind`` is train, infer or scan."""

    name: str
    kind: str
    experiment: str | None
    batch: int
    size: int  # input side (LR patch for SR)


# The performance issue's table (official times measured on one H100 80GB, fp32).
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("sr_classic_x2_train", "train", "sr_classic_x2", 4, 64),
        Workload("sr_light_t_x4_train", "train", "sr_light_t_x4", 16, 64),
        Workload("sr_light_s_x4_train", "train", "sr_light_s_x4", 16, 64),
        Workload("dn_color_train", "train", "dn_color_s15", 1, 128),
        Workload("sr_classic_x2_infer", "infer", "sr_classic_x2", 1, 256),
        Workload("scan_fwd", "scan", None, 4, 64),
    ]
}
#: The official code on one H100 (benchmarks/official_baseline.py, 2026-11-27), shown beside each measurement.
OFFICIAL_MS = {
    "sr_classic_x2_train": 491.0,
    "sr_light_t_x4_train": 222.0,
    "sr_light_s_x4_train": 369.0,
    "dn_color_train": 261.0,
    "sr_classic_x2_infer": 551.0,
    "scan_fwd": 0.88,
}
#: The speed goals of the table at the top of docs/benchmarks.md.
TARGET_MS = {
    "sr_classic_x2_train": 120.0,
    "sr_light_t_x4_train": 50.0,
    "sr_light_s_x4_train": 90.0,
    "dn_color_train": 70.0,
    "sr_classic_x2_infer": 60.0,
    "scan_fwd": 0.9,
}


def experiment_workload(experiment_id: str) -> Workload:
    """A training-step workload at the experiment's paper per-GPU batch and patch size."""
    from mair.experiments import load

    train = load(experiment_id).train
    size = train.patch.lq_size or train.patch.gt_size
    if train.progressive:  # the first progressive stage
        size = train.progressive.gt_sizes[0]
    return Workload(f"{experiment_id}_train", "train", experiment_id, train.batch_per_gpu, size)


def set_scan_backend(model: torch.nn.Module, backend: str | None) -> None:
    """Use ``backend`` for every VMM of ``model`` (None: automatic)."""
    for module in model.modules():
        if hasattr(module, "scan_backend"):
            module.scan_backend = backend


def _timer(device: torch.device, warmup: int, repeat: int) -> Callable[[Callable[[], None]], list[float]]:
    def run(fn: Callable[[], None]) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return times

    return run


def network_spec(workload: Workload) -> Network:
    """The experiment's network (official architecture name and arguments) of a model workload."""
    from mair.experiments import load

    return load(workload.experiment).network


def _build(workload: Workload, device: torch.device) -> tuple[torch.nn.Module, int]:
    from mair.models import from_official

    net = network_spec(workload)
    return from_official(net.arch, **net.constructor_kwargs()).to(device), net.output_scale


def run_workload(
    workload: Workload,
    backend: str | None,
    precision: str,
    device: torch.device,
    warmup: int = 3,
    repeat: int = 10,
    compile_model: bool = False,
    compile_mode: str | None = None,
    adam: str = "default",
    network: torch.nn.Module | None = None,
    runtime: Any = None,
) -> dict[str, Any]:
    """Time one workload; returns a result row (``compile_mode``: a ``torch.compile`` mode, implies
    ``compile_model``; ``adam``: Adam's implementation in training steps, ``default`` as ``mair train`` chooses
    (:func:`mair.train.optimizers.adam_implementation`), ``foreach`` or ``fused``; ``network``: a ready
    network on ``device`` to time instead of mair's, e.g. the official code's for the baseline). ``runtime``: a
    :class:`mair.runtime.resolve.RuntimeSettings` that decides backend, precision, compile and Adam instead
    (``--default``), recorded in the row.
    """
    from mair.runtime.precision import autocast, check_precision, matmul_precision
    from mair.train.optimizers import adam_implementation

    if runtime is not None:
        runtime.apply()
        backend, precision, adam = runtime.scan_backend, runtime.precision, "runtime"
        compile_model, compile_mode = runtime.compile_backend is not None, runtime.compile_mode
    check_precision(precision)
    compile_model = compile_model or compile_mode is not None
    timer = _timer(device, warmup, repeat)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    if workload.kind == "scan":
        fn = _scan_job(workload, backend, device, gen)
    else:
        if network is None:
            model, scale = _build(workload, device)
        else:
            model, scale = network, network_spec(workload).output_scale
        set_scan_backend(model, backend)
        if runtime is not None:  # exactly as the commands compile it
            step_model = runtime.compile(model)
        elif compile_model:  # the scan as custom ops, whole network in one graph (mair.models.scan.custom_ops)
            from mair.models.scan.custom_ops import compile_model as compile_network

            step_model = compile_network(model, **({"mode": compile_mode} if compile_mode else {}))
        else:
            step_model = model
        x = torch.rand(workload.batch, 3, workload.size, workload.size, generator=gen).to(device)
        if workload.kind == "train":
            model.train()
            target = torch.rand(workload.batch, 3, workload.size * scale, workload.size * scale, generator=gen)
            target = target.to(device)
            impl = (
                runtime.adam_kwargs()
                if runtime is not None
                else {
                    "default": adam_implementation(device.type),
                    "foreach": {"foreach": True},
                    "fused": {"fused": True},
                }[adam]
            )
            optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.99), **impl)

            def fn() -> None:
                optimizer.zero_grad(set_to_none=True)
                with autocast(precision, device.type):
                    loss = torch.nn.functional.l1_loss(step_model(x).float(), target)
                loss.backward()
                optimizer.step()
        else:
            model.eval()

            def fn() -> None:
                with torch.no_grad(), autocast(precision, device.type):
                    step_model(x)

    with matmul_precision(precision):
        times = timer(fn)
    row = {
        "workload": workload.name,
        "kind": workload.kind,
        "experiment": workload.experiment,
        "batch": workload.batch,
        "size": workload.size,
        "backend": backend or "auto",
        "precision": precision,
        "compiled": compile_mode or compile_model,
        "adam": adam if workload.kind == "train" else None,
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "official_ms": OFFICIAL_MS.get(workload.name),
        "target_ms": TARGET_MS.get(workload.name),
    }
    if runtime is not None:
        compiled = (runtime.compile_mode or runtime.compile_backend or False) if workload.kind != "scan" else False
        adam_name = ("fused" if runtime.fused_adam else "torch default") if workload.kind == "train" else None
        row.update(backend=runtime.scan_backend_resolved, compiled=compiled, adam=adam_name, runtime=runtime.as_dict())
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def _scan_job(
    workload: Workload, backend: str | None, device: torch.device, gen: torch.Generator
) -> Callable[[], None]:
    """The scan of one classic-SR VMM (K·D = 4·360 channels, N 16) on a 64x64 map, forward only, with the
    scan-order gather and the inverse scatter included."""
    from mair.models.nss import scan_orders
    from mair.models.scan import resolve_backend, selective_scan

    batch, channels, groups, state = workload.batch, 360, 4, 16
    side = workload.size
    length = side * side
    scan_ids, inverse_ids = scan_orders(side, side, 8, 0, device)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    A = -torch.rand(groups * channels, state, generator=gen).to(device)
    D, bias = rnd(groups * channels), rnd(groups * channels, scale=0.5)
    if resolve_backend(backend, device) == "triton":
        from mair.models.scan.triton_backend import nss_scan

        x, dts = rnd(batch, length, channels), rnd(batch, groups, length, channels, scale=0.5)
        bs, cs = rnd(batch, groups, length, state), rnd(batch, groups, length, state)

        def fused() -> None:
            with torch.no_grad():
                nss_scan(x, dts, A, bs, cs, D, bias, scan_ids, True)

        return fused
    x = rnd(batch, channels, length)
    dts = rnd(batch, groups * channels, length, scale=0.5)
    bs, cs = rnd(batch, groups, state, length), rnd(batch, groups, state, length)

    def gathered() -> None:
        with torch.no_grad():
            xs = x.index_select(2, scan_ids.reshape(-1)).view(batch, channels, groups, length).transpose(1, 2)
            y = selective_scan(
                xs.reshape(batch, groups * channels, length), dts, A, bs, cs, D, bias, True, backend=backend
            ).view(batch, groups, channels, length)
            torch.stack([y[:, k].index_select(2, inverse_ids[k]) for k in range(groups)], 1)

    return gathered


def environment() -> dict[str, Any]:
    """Card, versions and date for the benchmark record."""
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info["mamba_ssm"] = version("mamba_ssm")
    except Exception:
        pass
    return info


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of result rows."""
    lines = [
        "| workload | backend | precision | compiled | ms (median) | peak GiB | official ms | target ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        lines.append(
            f"| {r['workload']} | {r['backend']} | {r['precision']} | {r['compiled']} | "
            f"{r['ms_median']:.2f} | {peak} | {r['official_ms'] or '-'} | {r['target_ms'] or '-'} |"
        )
    return "\n".join(lines)


def _requested_workload(name: str) -> Workload:
    from mair.common.errors import CommandError
    from mair.experiments import ExperimentError

    if name in WORKLOADS:
        return WORKLOADS[name]
    try:
        return experiment_workload(name)
    except ExperimentError:
        raise CommandError(
            f"unknown workload {name!r}: expected one of {', '.join(WORKLOADS)} or an experiment id"
        ) from None


def _check_out(out: str | None) -> None:
    """Refuse an ``--out`` that cannot be written before any time is spent measuring."""
    from pathlib import Path

    from mair.common.errors import CommandError

    if not out:
        return
    path = Path(out)
    if path.is_dir():
        raise CommandError(f"--out {path}: is a folder; expected a JSON file name")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CommandError(f"--out {path}: cannot be written: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CommandError(f"--out {path}: cannot be written: no write permission in {ancestor}")


def _default_rows(
    args: argparse.Namespace, workloads: list[Workload], device: torch.device, failed: list[str]
) -> list[dict[str, Any]]:
    """``--default``: each workload once, with the settings the commands resolve for this device; the names of
    the workloads that failed are appended to ``failed``."""
    from mair.common.errors import CommandError
    from mair.runtime.resolve import RuntimeSettingsError, resolve_runtime

    rows = []
    for workload in workloads:
        try:  # a scan backend asked for that cannot run here: one line, raised at the first workload
            runtime = resolve_runtime(device, args.exact, workload="infer" if workload.kind == "infer" else "train")
        except RuntimeSettingsError as error:
            raise CommandError(str(error)) from None
        try:
            row = run_workload(workload, None, runtime.precision, device, args.warmup, args.repeat, runtime=runtime)
        except Exception as error:
            print(f"{workload.name} ({runtime.describe()}): {type(error).__name__}: {error}", flush=True)
            failed.append(f"{workload.name} ({runtime.describe()})")
            continue
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def check_default_args(args: argparse.Namespace) -> None:
    """``--default`` takes no setting of its own; ``--exact`` only comes with it. One clear error otherwise."""
    from mair.common.errors import CommandError

    if args.default:
        given = [
            flag
            for flag, value in (
                ("--backends", args.backends),
                ("--precision", args.precision),
                ("--compile", args.compile),
                ("--compile-mode", args.compile_mode),
                ("--adam", args.adam != "default"),
            )
            if value
        ]
        if given:
            raise CommandError(f"--default times the resolved defaults; drop {', '.join(given)}")
    elif args.exact:
        raise CommandError("--exact goes with --default (or time --precision exact)")


def _report_failures(failed: list[str], rows: list[dict[str, Any]]) -> int:
    """Exit status 1, with a summary line, when any requested run failed; else 0."""
    if not failed:
        return 0
    print(
        f"mair bench: {len(failed)} of {len(failed) + len(rows)} runs failed ({'; '.join(failed)}); see "
        f"the errors above",
        file=sys.stderr,
    )
    return 1


def main(args: argparse.Namespace) -> int:
    from mair.common.errors import CommandError
    from mair.runtime.precision import PRECISIONS

    check_default_args(args)
    for precision in (args.precision or "fp32").split(","):
        if precision not in PRECISIONS:
            raise CommandError(
                f"--precision: unknown precision {precision!r}; expected a comma-separated list "
                f"of {', '.join(PRECISIONS)}"
            )
    _check_out(args.out)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = args.workloads or list(WORKLOADS)
    workloads = [_requested_workload(n) for n in names]
    failed: list[str] = []
    if args.default:
        rows = _default_rows(args, workloads, device, failed)
        print(format_rows(rows))
        if args.out:
            from mair.runtime import compile_cache

            caches = {var: os.environ.get(var) for var in (compile_cache.INDUCTOR_VAR, compile_cache.TRITON_VAR)}
            atomic_write_json(
                args.out,
                {
                    "environment": environment(),
                    "default": True,
                    "exact": args.exact,
                    "compile_cache": caches,
                    "rows": rows,
                },
            )
        return _report_failures(failed, rows)
    rows = []
    for workload in workloads:
        for backend in (args.backends or "auto").split(","):
            for precision in (args.precision or "fp32").split(","):
                if workload.kind == "scan" and precision != "fp32":  # the scan has no matmuls
                    continue
                try:
                    row = run_workload(
                        workload,
                        None if backend == "auto" else backend,
                        precision,
                        device,
                        args.warmup,
                        args.repeat,
                        args.compile,
                        args.compile_mode,
                        args.adam,
                    )
                except Exception as error:
                    row = {
                        "workload": workload.name,
                        "backend": backend,
                        "precision": precision,
                        "error": f"{type(error).__name__}: {error}",
                    }
                    print(f"{workload.name} {backend} {precision}: {row['error']}", flush=True)
                    failed.append(f"{workload.name} {backend} {precision}")
                    continue
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(format_rows(rows))
    if args.out:
        atomic_write_json(args.out, {"environment": environment(), "rows": rows})
    return _report_failures(failed, rows)
