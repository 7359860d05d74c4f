"""Training benchmarks on GPUs (docs/training.md, "Benchmarks"); writes one JSON file.

(a) ``ddp_vs_accum``: the same small experiment trained with 2 processes (DDP, NCCL on GPUs) and with 1 process
    and gradient accumulation 2 (same effective batch, same samples: data randomness is keyed by sample, not by
    process), through ``mair train``; prints the max abs difference of the two loss curves.
(b) ``throughput``: iterations per second of each of the 17 paper configurations on one device, for a few
    dozen iterations of synthetic data of the right patch and batch sizes (optimiser, loss, clipping and
    progressive stages as in training; one entry per progressive stage for the U-Net tasks).

Usage (the lead's GPU run)::

    python benchmarks/train_gpu.py --out results/bench/train_gpu.json             # (a) needs 2 GPUs, (b) GPU 0
    python benchmarks/train_gpu.py --device cpu --tiny --out /tmp/t.json          # CPU dry run (tests)

``--tiny`` uses the demo-scale networks and patches and a couple of iterations; on CPU, (a) runs with gloo
only when ``--ddp`` is given.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mair.experiments import Experiment, experiment_ids, load  # noqa: E402
from mair.models import from_official  # noqa: E402
from mair.train.losses import build_loss  # noqa: E402
from mair.train.schedules import progressive_stage  # noqa: E402

DDP_EXPERIMENT = "sr_light_t_x2"


# ------------------------------------------------------------------------------------------------ (b)


def _stages(exp: Experiment) -> list[tuple[int, int, int]]:
    """``(first iteration, mini batch, lq patch)`` of every distinct progressive stage (one when none)."""
    train = exp.train
    prog = train.progressive
    bpg, gt_size, lq_size = train.batch_per_gpu, train.patch.gt_size, train.patch.lq_size
    if not prog:
        return [(1, bpg, lq_size)]
    out, start = [], 1
    for n in prog.iters:
        mini, patch = progressive_stage(prog, start, bpg, gt_size)
        if not out or out[-1][1:] != (mini, patch):
            out.append((start, mini, patch))
        start += int(n)
    return out


def time_experiment(
    exp: Experiment, device: torch.device, iters: int, warmup: int, precision: str
) -> list[dict[str, Any]]:
    """Iterations per second of one experiment's training step on synthetic data, per progressive stage."""
    torch.manual_seed(0)
    net = from_official(exp.network.arch, **exp.network.constructor_kwargs()).to(device).train()
    train = exp.train
    optim = train.optimizer
    cls = torch.optim.Adam if optim.type == "Adam" else torch.optim.AdamW
    opt = cls(net.parameters(), lr=float(optim.lr), betas=tuple(optim.betas), weight_decay=float(optim.weight_decay))
    loss_fn = build_loss(train.loss)
    scale = exp.scale
    clip = train.grad_clip
    results = []
    for first_iter, batch, patch in _stages(exp):
        lq = torch.rand(batch, 3, patch, patch, device=device)
        gt = torch.rand(batch, 3, patch * scale, patch * scale, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step(lq: torch.Tensor = lq, gt: torch.Tensor = gt) -> float:
            opt.zero_grad(set_to_none=True)
            ctx = (
                torch.autocast(device.type, dtype=torch.bfloat16)
                if precision == "bf16"
                else torch.autocast(device.type, enabled=False)
            )
            with ctx:
                out = net(lq)
            loss = loss_fn(out.float(), gt)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), float(clip))
            opt.step()
            return float(loss.detach())

        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        entry = {
            "experiment": exp.id,
            "scope": exp.scope,
            "stage_from_iter": first_iter,
            "batch": batch,
            "lq_patch": patch,
            "iters": iters,
            "seconds": seconds,
            "it_per_s": iters / seconds,
            "samples_per_s": iters * batch / seconds,
            "precision": precision,
        }
        if device.type == "cuda":
            entry["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        # Whole paper run at this speed on one device (per-GPU batch; a multi-GPU run divides by the GPUs).
        entry["paper_iters"] = train.total_iter
        results.append(entry)
        print(
            f"  {exp.id:<15} stage@{first_iter:<7} batch {batch:>2} patch {patch:>3}: {entry['it_per_s']:.2f} it/s",
            flush=True,
        )
    return results


# ------------------------------------------------------------------------------------------------ (a)


def _read_losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "train_log.csv").open(newline="") as handle:
        return {int(r["iter"]): float(r["loss"]) for r in csv.DictReader(handle)}


def ddp_vs_accum(
    device: str, work: Path, iters: int | None, compile_modes: tuple[str, ...] = ("eager",)
) -> dict[str, Any]:
    """Train the small experiment with 2 processes and with 1 process x accumulation 2 (eager); compare the
    losses. ``compile_modes``: the 2-process run once per mode (``eager`` or a ``--compile-mode``)."""
    from mair.data.demo import build_demo

    data = work / "data"
    build_demo(data)
    exp_file = work / f"{DDP_EXPERIMENT}_ddp.yaml"
    doc = yaml.safe_load((REPO / "params" / "experiments" / f"{DDP_EXPERIMENT}.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["demo"]["network_kwargs"]["drop_path_rate"] = 0.0  # no per-rank randomness in the network
    doc["demo"]["train"].update({"batch_per_gpu": 2, "gpus": 2, "effective_batch": 4})
    exp_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    common = [
        sys.executable,
        "-m",
        "mair.cli",
        "train",
        str(exp_file),
        "--scope",
        "demo",
        "--device",
        device,
        "--data-dir",
        str(data),
        "--no-val",
        "--no-mlflow",
        "--log-every",
        "1",
        "--num-workers",
        "0",
        "--results-dir",
        str(work / "results"),
    ]
    if iters:
        common += ["--max-iters", str(iters)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    plan = [("accum2", ["--gpus", "1", "--no-compile"])]
    for mode in compile_modes:
        plan.append(
            (
                "ddp2" if mode == "eager" else f"ddp2-{mode}",
                ["--gpus", "2"] + (["--no-compile"] if mode == "eager" else ["--compile-mode", mode]),
            )
        )
    for name, extra in plan:
        run_dir = work / name
        start = time.perf_counter()
        subprocess.run([*common, "--run-dir", str(run_dir), *extra], check=True, env=env, cwd=work)
        runs[name] = {"seconds": time.perf_counter() - start, "losses": _read_losses(run_dir)}
    b = runs["accum2"]["losses"]
    result: dict[str, Any] = {
        "experiment": DDP_EXPERIMENT,
        "device": device,
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "final_loss_accum2": b[max(b)],
    }
    for name, run in runs.items():
        if name == "accum2":
            continue
        a = run["losses"]
        common_iters = sorted(set(a) & set(b))
        diff = max(abs(a[i] - b[i]) for i in common_iters)
        key = "" if name == "ddp2" else name[len("ddp2") :].replace("-", "_")
        result.update(
            {
                f"iterations{key}": len(common_iters),
                f"max_abs_loss_diff{key}": diff,
                f"final_loss_ddp2{key}": a[common_iters[-1]],
            }
        )
        print(
            f"(a) DDP 2 processes ({name}) vs 1 process x accumulation 2 (eager): max |loss difference| over "
            f"{len(common_iters)} iterations = {diff:.3e}",
            flush=True,
        )
    return result


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="demo-scale networks, a couple of iterations")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 30; tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 5; tiny: 1)")
    parser.add_argument("--experiments", nargs="*", default=None, help="subset of experiment ids for (b)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--ddp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run (a) (default: on for cuda with >= 2 GPUs, off otherwise)",
    )
    parser.add_argument("--ddp-iters", type=int, default=None, help="iterations of (a) (default: all 30)")
    parser.add_argument(
        "--ddp-compile-modes",
        default="eager",
        help="comma-separated: the 2-process run of (a) once per mode (eager or a --compile-mode)",
    )
    parser.add_argument("--no-throughput", action="store_true", help="skip (b)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device (use --device cpu for a dry run)")
    device = torch.device(args.device)
    iters = args.iters or (2 if args.tiny else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    ids = args.experiments or experiment_ids()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "precision": args.precision,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "throughput": [],
    }
    from mair.models.scan import describe_backend_choice

    report["scan_backend"] = describe_backend_choice(device)
    run_ddp = args.ddp if args.ddp is not None else (device.type == "cuda" and torch.cuda.device_count() >= 2)
    if run_ddp:
        with tempfile.TemporaryDirectory(prefix="mair-ddp-") as tmp:
            try:
                modes = tuple(m.strip() for m in args.ddp_compile_modes.split(",") if m.strip())
                report["ddp_vs_accum"] = ddp_vs_accum(args.device, Path(tmp), args.ddp_iters, modes)
            except (subprocess.CalledProcessError, ImportError, OSError) as error:  # (b) still runs
                report["ddp_vs_accum"] = {"error": f"{type(error).__name__}: {error}"}
                print(f"(a) failed: {error}", file=sys.stderr, flush=True)
    if not args.no_throughput:
        print("(b) iterations per second, one device:", flush=True)
    for exp_id in [] if args.no_throughput else ids:
        exp = load(exp_id, "demo" if args.tiny else "paper")
        report["throughput"].extend(time_experiment(exp, device, iters, warmup, args.precision))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
