"""Data-parallel scaling of a paper experiment's real network on 1, 2, 4 (or 8) GPUs through ``mair train``.

Each run keeps the paper's effective batch (per-GPU batch x GPUs x accumulation), so every run computes the same
optimisation: the loss curves must agree (data randomness is keyed by sample, not by process) and the
iterations per second show the scaling. The real network is trained on the embedded demo images, re-used as the
experiment's training set (``prepared/<id>`` linked to the demo set), since the GPU machines have no datasets.

    python benchmarks/ddp_scaling.py sr_classic_x2 --gpus 1,2,4 --iters 40 --out scaling.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _read_log(path: Path) -> list[dict[str, float]]:
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--gpus", default="1,2,4")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="iterations left out of the timing (warm-up)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from mair.data.demo import build_demo
    from mair.experiments import load

    exp = load(args.experiment)
    work = Path(tempfile.mkdtemp(prefix="mair-scaling-"))
    build_demo(work)
    for entry in exp.train.datasets:
        target = work / "prepared" / entry.id
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(work / "demo" / "prepared" / entry.id, target_is_directory=True)
    effective = exp.train.effective_batch
    rows, curves = [], {}
    for gpus in [int(g) for g in args.gpus.split(",")]:
        run_dir = work / f"run_{gpus}"
        cmd = [
            sys.executable,
            "-m",
            "mair",
            "train",
            args.experiment,
            "--gpus",
            str(gpus),
            "--device",
            args.device,
            "--max-iters",
            str(args.iters),
            "--run-dir",
            str(run_dir),
            "--data-dir",
            str(work),
            "--results-dir",
            str(work / "results"),
            "--no-val",
            "--no-mlflow",
            "--no-resume",
            "--precision",
            args.precision,
            "--checkpoint-every",
            str(args.iters),
            "--log-every",
            "1",
            "--no-compile",
        ]  # eager, as measured in docs/benchmarks.md
        start = time.time()
        print(f"{gpus} GPU(s): {' '.join(cmd)}", flush=True)
        log_path = args.out.parent / f"train_{gpus}gpu.log"
        with log_path.open("w") as log_file:  # streamed, so a run that hangs still leaves its output
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                text=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        tail = log_path.read_text()[-2000:]
        wall = time.time() - start
        if proc.returncode != 0:
            rows.append({"gpus": gpus, "error": tail})
            print(f"{gpus} GPU(s): failed\n{tail}", flush=True)
            continue
        log = _read_log(run_dir / "train_log.csv")
        # The log's "seconds" column is the run's elapsed time: per-iteration times are its differences.
        elapsed = [r["seconds"] for r in log]
        secs = [b - a for a, b in zip(elapsed[args.skip :], elapsed[args.skip + 1 :], strict=False)]
        per_iter = statistics.median(secs)
        curves[gpus] = [r["loss"] for r in log]
        models = run_dir / "models"
        checkpoints = sorted(p.name for p in models.glob("*.pth")) if models.is_dir() else []
        rows.append(
            {
                "gpus": gpus,
                "accumulation": effective // (exp.train.batch_per_gpu * gpus),
                "iterations": len(log),
                "s_per_iter": per_iter,
                "iters_per_s": 1 / per_iter,
                "images_per_s": effective / per_iter,
                "wall_s": wall,
                "checkpoints": checkpoints,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        _write(args.out, args.experiment, effective, rows, curves)  # after every run: a timed-out job keeps these
    result = _write(args.out, args.experiment, effective, rows, curves)
    for row in rows:
        print(row)
    print("max |loss - loss(fewest GPUs)|:", result["max_abs_loss_diff_vs_fewest_gpus"])


def _write(out: Path, experiment: str, effective: int, rows: list[dict], curves: dict[int, list[float]]) -> dict:
    """Speed-ups against the run with the fewest GPUs, loss differences, all written to ``out``."""
    timed = [r for r in rows if "iters_per_s" in r]
    base = min(timed, key=lambda r: r["gpus"])["iters_per_s"] if timed else None
    for row in timed:
        row["speedup"] = row["iters_per_s"] / base
    ref = curves.get(min(curves)) if curves else None
    diffs = {g: max(abs(a - b) for a, b in zip(c, ref, strict=False)) for g, c in curves.items()} if ref else {}
    result = {
        "experiment": experiment,
        "effective_batch": effective,
        "rows": rows,
        "max_abs_loss_diff_vs_fewest_gpus": diffs,
        "loss_curves": curves,
    }
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
