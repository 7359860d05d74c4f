"""``mair train`` eager against its ``torch.compile`` modes: the same demo-scale run (same seed, same samples)
per mode, its loss curve against eager's and its iterations per second once compiled.

It checks the trainer's compiled paths end to end (CUDA-graph replay included: ``--compile-mode
reduce-overhead``) on the machine it runs on; the paper-scale step times are ``mair bench``'s job.

    python benchmarks/train_compile_modes.py --modes eager,default,reduce-overhead --out /tmp/modes.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_mode(mode: str, args: argparse.Namespace, data: Path, work: Path) -> dict:
    """Train ``args.iters`` iterations in ``mode`` ('eager' or a compile mode); losses and timings."""
    cmd = [
        sys.executable,
        "-m",
        "mair",
        "train",
        args.experiment,
        "--scope",
        "demo",
        "--device",
        args.device,
        "--data-dir",
        str(data),
        "--run-dir",
        str(work / mode),
        "--results-dir",
        str(work / f"res_{mode}"),
        "--max-iters",
        str(args.iters),
        "--no-mlflow",
        "--no-val",
        "--log-every",
        "1",
        "--precision",
        args.precision,
        "--num-workers",
        "0",
    ]
    cmd += ["--no-compile"] if mode == "eager" else ["--compile-mode", mode]
    start = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"mode": mode, "ok": False, "error": proc.stderr.strip().splitlines()[-5:]}
    with open(work / mode / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    elapsed = [float(r["seconds"]) for r in rows]
    half = len(rows) // 2  # steady state: the second half (compilation and warm-up are in the first)
    steady = (len(rows) - 1 - half) / (elapsed[-1] - elapsed[half]) if elapsed[-1] > elapsed[half] else None
    return {"mode": mode, "ok": True, "losses": losses, "it_per_s": steady, "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="sr_light_t_x2")
    parser.add_argument("--modes", default="eager,default,reduce-overhead")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from mair.data.demo import build_demo

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_demo(work / "data")
        results = [run_mode(mode, args, work / "data", work) for mode in args.modes.split(",")]
    eager = next((r for r in results if r["mode"] == "eager" and r["ok"]), None)
    for r in results:
        if r["ok"] and eager is not None:
            r["max_rel_loss_diff"] = max(
                abs(a - b) / max(abs(b), 1e-12) for a, b in zip(r["losses"], eager["losses"], strict=True)
            )
        print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
