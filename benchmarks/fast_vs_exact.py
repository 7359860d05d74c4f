"""The fast default path against ``--exact``: same results? Golden files, short trainings, evaluation.

Three parts (``--parts``, default all), everything written under ``--out``:

* **golden**: every golden file of ``<shared>/golden`` (official outputs and input gradients) on three paths:
  ``exact`` (eager, true fp32; the golden tolerance 1e-5 / 1e-4), ``infer`` (what ``mair evaluate`` runs:
  Triton scan, TF32, eager; output only) and ``train`` (what ``mair train`` runs: also compiled with CUDA graphs;
  output and input gradient), the last two against the TF32 tolerance :data:`TF32_TOLERANCE`.
  -> ``golden.json``.
* **train**: for each of ``--experiments`` (default one lightweight SR and one U-Net experiment) and each of
  ``--seeds`` (default the experiment's own training seed) a short training through ``mair train`` twice, fast
  default and ``--exact``, same seed and same samples, on real images: ``--train-images`` (a folder; SR: the LR
  made by MATLAB bicubic, U-Net: noise or motion blur added as the demo data is made), validated at the end on the
  held-out ``--val-images`` (the prepared folders under ``--out/data`` carry the experiment's dataset ids, e.g.
  div2k and urban100, but hold these images). Paper networks (``--tiny``: the demo ones), ``--iters`` iterations
  at batch ``--batch`` and small patches, the learning-rate schedule shortened to ``--iters``, stochastic depth
  off (compiled and eager code draw its random masks differently; ``--keep-drop-path`` keeps it). Runs live in
  ``train/<exp>/seed<N>/{fast,exact}``. The same command again keeps the finished runs, finishes the others
  from their newest checkpoint and starts over those of another experiment file (other ``--iters``, ``--batch``
  ...). A SIGTERM or SIGINT (``timeout``, ``kill``) stops every run at a checkpoint; the script waits for that
  and exits with status 75, so a time limit a little inside the call's own loses nothing.
  -> ``train/losses/<exp>_seed<N>.csv`` (per-iteration losses of both runs), ``train/losses.png`` (the curves
  overlaid, one panel per experiment and seed), ``train.json``: per seed the final validation PSNR of each run and
  their difference, step times, the path each run recorded in its config; per experiment each path's mean over the
  seeds, the difference of the means (the verdict) and each path's standard deviation over the seeds (how far
  trainings that differ only in their seed land apart: the scale against which a difference between the paths means
  something).
* **eval**: the trained SR network (fast run; ``--eval-weights`` for others of the same network) evaluated on
  Set5 and Set14 through ``mair evaluate``, default and ``--exact``. -> ``eval.json`` (PSNR per set and path,
  differences; the largest per-image difference).

``summary.json`` holds all three and the verdicts (golden within tolerance; mean validation PSNR of the two
paths within 0.05 dB; evaluation PSNR within 0.01 dB). No network access is needed. On an H100 (one part per
call fits the 10-minute limit; the compile cache in ``$MAIR_COMPILE_CACHE`` or ``~/.cache/mair/compile`` is
reused by later calls)::

    MAIR_SHARED_DIR=shared python benchmarks/fast_vs_exact.py --out fve --parts golden
    MAIR_SHARED_DIR=shared python benchmarks/fast_vs_exact.py --out fve --parts train --experiments sr_light_t_x4
    MAIR_SHARED_DIR=shared python benchmarks/fast_vs_exact.py --out fve --parts train --experiments dn_real \
        --paths fast                                 # and then --paths exact: one run per call, read back later
    MAIR_SHARED_DIR=shared python benchmarks/fast_vs_exact.py --out fve --parts train --experiments sr_light_t_x4 \
        --seeds 11,12,13 --jobs 6                    # three seeds, six runs at once: each path's mean and spread
    MAIR_SHARED_DIR=shared python benchmarks/fast_vs_exact.py --out fve --parts eval --experiments sr_light_t_x4

On a CPU, as a check of the script itself: ``--device cpu --tiny --iters 3 --max-images 3 --max-side 64
--sr-patch 8 --unet-patch 16``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Relative L2 error of outputs and input gradients allowed on the TF32 paths: TF32 keeps 10 mantissa bits (unit
# roundoff 2^-11 = 4.9e-4); outputs within 4x and input gradients within 10x of it. The exact path keeps the golden
# tests' 1e-5 / 1e-4. docs/training.md states both.
TF32_TOLERANCE = {"output": 2e-3, "input_grad": 5e-3}
EXACT_TOLERANCE = {"output": 1e-5, "input_grad": 1e-4}
VAL_PSNR_TOLERANCE_DB = 0.05
EVAL_PSNR_TOLERANCE_DB = 0.01
SR_TASKS = ("sr_light", "sr_classic")
UNET_DEGRADATIONS = {"dn_real": "noise", "deblur": "blur"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# The training runs ``--paths`` can make: ``mair train`` flags and environment of each. ``fast`` (the default
# path) and ``exact`` make the verdict; the others each change one part of the default path, to find which part
# moves a result when the two disagree. Listed in the order they start (longest first).
TRAIN_PATHS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "exact": (("--exact",), {}),
    "exact_triton": (("--exact",), {"MAIR_SCAN_BACKEND": "triton"}),  # the exact path with the Triton scan
    "fast_eager": (("--no-compile",), {}),  # the default path without torch.compile and CUDA graphs
    "fast_fp32": (("--precision", "fp32"), {}),  # the default path with full-fp32 matrix products
    "fast": ((), {}),
}
REPORT_ORDER = ("fast", "exact", "fast_fp32", "fast_eager", "exact_triton")


def shared_dir() -> Path:
    """``$MAIR_SHARED_DIR``, else ``shared/`` in the checkout, else ``../shared`` beside it."""
    if os.environ.get("MAIR_SHARED_DIR"):
        return Path(os.environ["MAIR_SHARED_DIR"])
    inside = REPO / "shared"
    return inside if inside.is_dir() else REPO.parent / "shared"


# ------------------------------------------------------------------------------------------------ data


def read_images(folder: Path, max_images: int | None, max_side: int | None) -> list[tuple[str, np.ndarray]]:
    """``(stem, BGR uint8)`` of the images of ``folder`` (sorted; grey read as 3 channels), optionally the first
    ``max_images`` and centre-cropped to at most ``max_side`` pixels per side."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise SystemExit(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    out = []
    for path in files[:max_images]:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"{path}: not a readable image")
        if max_side:
            h, w = img.shape[:2]
            top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
            img = img[top : top + max_side, left : left + max_side]
        out.append((path.stem, np.ascontiguousarray(img)))
    return out


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise SystemExit(f"cannot write {path}")


def build_set(
    root: Path, ref: dict[str, Any], images: Sequence[tuple[str, np.ndarray]], kind: str, scale: int = 1
) -> None:
    """The prepared folder of dataset reference ``ref`` (``id``, ``gt``, ``lq``) under ``root/prepared`` holding
    ``images``: ``sr`` (HR and its MATLAB-bicubic LR at ``scale``, of the mod-cropped HR), ``noise`` or ``blur``
    (target and input degraded as the demo data is). Kept when this script already made it."""
    from mair.data import demo
    from mair.data.imresize import bicubic_lr_uint8, modcrop

    folder = root / "prepared" / ref["id"]
    done = folder / f".fast_vs_exact-{kind}-x{scale}-{ref['lq'].replace('/', '_')}.json"
    if done.is_file():
        return
    for k, (stem, img) in enumerate(images):
        if kind == "sr":
            hr = modcrop(img, scale)
            _write_png(folder / ref["gt"] / f"{stem}.png", hr)
            _write_png(folder / ref["lq"] / f"{stem}.png", bicubic_lr_uint8(hr, scale))
            continue
        rng = np.random.default_rng([k, 22])
        degraded = demo.add_real_noise(img, rng) if kind == "noise" else demo.motion_blur(img, rng)
        _write_png(folder / ref["gt"] / f"{stem}.png", img)
        _write_png(folder / ref["lq"] / f"{stem}.png", degraded)
    (folder / ".prepared.json").write_text(json.dumps({"made_by": "benchmarks/fast_vs_exact.py"}) + "\n")
    done.write_text(json.dumps({"images": [stem for stem, _ in images]}) + "\n")


# ------------------------------------------------------------------------------------------------ experiments


def derived_experiment(exp_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """The paper experiment's document cut down to a short run on the prepared sets of this script (written as
    an experiment file of its own, so it stays a plain dict)."""
    from mair.experiments import read_document

    exp = read_document(exp_id)
    task, scale, iters = exp["task"], int(exp["scale"]), int(args.iters)
    sr = task in SR_TASKS
    if not sr and task not in UNET_DEGRADATIONS:
        raise SystemExit(f"{exp_id}: task {task} not supported here (SR, dn_real or deblur experiments)")
    out = dict(exp)
    out["id"] = f"fve_{exp_id}"
    net = dict(exp["demo"]["network_kwargs"] if args.tiny else exp["network"]["kwargs"])
    if not args.keep_drop_path:
        net["drop_path_rate"] = 0.0
    out["network"] = {"arch": exp["network"]["arch"], "kwargs": net}
    train = dict(exp["train"])
    train["datasets"] = [dict(exp["train"]["datasets"][0], pairing="same_name")]
    patch = args.sr_patch if sr else args.unet_patch
    train["patch"] = {"gt_size": patch * scale, "lq_size": patch} if sr else {"gt_size": patch, "lq_size": patch}
    train.update(
        batch_per_gpu=args.batch,
        gpus=1,
        effective_batch=args.batch,
        total_iter=iters,
        init_from=None,
        checkpoint_freq=iters,
        dataset_enlarge_ratio=100,
    )
    train["drop_path"] = {**train["drop_path"], "rate": net.get("drop_path_rate", 0.0)}
    if train["scheduler"]["type"] == "MultiStepLR":
        train["scheduler"] = {"type": "MultiStepLR", "milestones": [max(1, iters * 3 // 4)], "gamma": 0.5}
    else:
        train["scheduler"] = {
            "type": "CosineAnnealingRestartCyclicLR",
            "periods": [iters],
            "restart_weights": [1.0],
            "eta_mins": [1.0e-6],
        }
    if train.get("progressive"):
        train["progressive"] = {"mini_batch_sizes": [args.batch], "gt_sizes": [patch], "iters": [iters]}
    out["train"] = train
    out["paper_gpus"] = 1
    val = dict(exp["val"])
    val["dataset"] = dict(exp["val"]["dataset"], pairing="same_name")
    val.update(val_freq=iters, val_freq_final=iters, val_milestone=iters + 1)
    out["val"] = val
    if sr:
        test = dict(exp["test"])
        test["datasets"] = [
            {"id": s, "gt": "HR", "lq": f"LR_bicubic/X{scale}", "pairing": "same_name", "submission_only": False}
            for s in ("set5", "set14")
        ]
        out["test"] = test
    return out


def prepare(args: argparse.Namespace, exp: dict[str, Any]) -> Path:
    """Write the experiment file (``--out/experiments``) and the prepared sets it names; returns the file."""
    data = args.out / "data"
    task, scale = exp["task"], int(exp["scale"])
    kind = "sr" if task in SR_TASKS else UNET_DEGRADATIONS[task]
    train_ref, val_ref = exp["train"]["datasets"][0], exp["val"]["dataset"]
    build_set(data, train_ref, read_images(args.train_images, args.max_images, args.max_side), kind, scale)
    build_set(data, val_ref, read_images(args.val_images, args.max_images, args.max_side), kind, scale)
    if kind == "sr":
        for ref, folder in zip(exp["test"]["datasets"], (args.set5, args.set14), strict=True):
            build_set(data, ref, read_images(folder, args.max_images, args.max_side), "sr", scale)
    return write_experiment(exp, args.out / "experiments")


def write_experiment(exp: dict[str, Any], folder: Path) -> Path:
    """``exp`` as ``folder/<id>.yaml``; returns the file."""
    path = folder / f"{exp['id']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ running mair


class _Children:
    """The ``mair`` processes this script runs. A SIGTERM or SIGINT to the script alone (``kill PID``, a
    scheduler) is passed on to them, and the script waits for them to write their checkpoints instead of dying
    first: whatever ends the call after the script has exited (the end of a time-limited GPU call) would kill
    them before their checkpoint and stop marker are on disk."""

    def __init__(self) -> None:
        self.live: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()
        self.signal: int | None = None

    def start(self, argv: list[str], handle: Any, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.lock:
            if self.signal is not None:
                raise SystemExit(f"mair {' '.join(argv)}: not started, this script was stopped")
            proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
            self.live.add(proc)
            return proc

    def done(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.live.discard(proc)

    def forward(self, signum: int, _frame: Any) -> None:
        with self.lock:
            self.signal = signum
            for proc in self.live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # mair train: checkpoint, STOPPED.json, exit status 75

    @contextlib.contextmanager
    def forwarding(self) -> Iterator[None]:
        """Within the block, SIGTERM and SIGINT are passed on to the children (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


CHILDREN = _Children()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` within the block (in-process runs), the earlier values restored."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_mair(argv: list[str], args: argparse.Namespace, log: Path, env: dict[str, str] | None = None) -> None:
    """``mair ARGV`` in a fresh process (as a user runs it; ``--in-process`` for the CPU test), output to ``log``;
    ``env``: variables set for it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(" ".join([*(f"{k}={v}" for k, v in (env or {}).items()), "mair", *argv]), flush=True)
    if args.in_process:
        from mair.cli import main

        with _environment(env or {}):
            code = main(argv)
    else:
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, **(env or {}), PYTHONPATH=path, PYTHONUNBUFFERED="1")
        with log.open("w") as handle:
            proc = CHILDREN.start([sys.executable, "-m", "mair", *argv], handle, env)
            try:
                code = proc.wait()
            finally:
                CHILDREN.done(proc)
    if code != 0:
        tail = log.read_text()[-3000:] if log.is_file() else ""
        raise SystemExit(f"mair {' '.join(argv)} failed ({code}); log {log}:\n{tail}")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------ golden


def _rel_err(a: Any, b: Any) -> float:
    return float((a.detach().cpu().double() - b.double()).norm() / b.double().norm())


def golden_part(args: argparse.Namespace) -> dict[str, Any]:
    """Every golden case on the exact, default-inference and default-training paths."""
    import torch

    from mair.models import from_official
    from mair.runtime.resolve import resolve_runtime

    files = sorted((args.golden).glob("*.pt"))
    if not files:
        raise SystemExit(f"{args.golden}: no golden files (*.pt)")
    paths = {
        "exact": resolve_runtime(args.device, exact=True),
        "infer": resolve_runtime(args.device, workload="infer"),
        "train": resolve_runtime(args.device, workload="train"),
    }
    rows = []
    for mode, runtime in paths.items():  # compiled last: compiling switches the scan's custom ops on
        runtime.apply()
        tolerance = EXACT_TOLERANCE if runtime.precision in ("exact", "fp32") else TF32_TOLERANCE
        for path in files:
            golden = torch.load(path, weights_only=True)
            model = from_official(golden["arch"], **golden["kwargs"])
            model.load_state_dict(golden["state_dict"], strict=True)
            model = runtime.prepare_model(model.to(args.device).train(golden["arch"] == "MaIRUNet"))
            run = runtime.compile(model) if mode == "train" else model
            for i, case in enumerate(golden["cases"]):
                x = case["input"].to(args.device)
                row: dict[str, Any] = {
                    "path": mode,
                    "file": path.stem,
                    "case": i,
                    "shape": list(x.shape),
                    "runtime": runtime.describe(),
                }
                start = time.perf_counter()
                if mode == "infer":
                    with torch.no_grad():
                        out = run(x)
                    row["output_rel_err"] = _rel_err(out, case["output"])
                else:
                    x = x.clone().requires_grad_(True)
                    if runtime.cuda_graphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    out = run(x)
                    (grad,) = torch.autograd.grad(out.sum(), x)
                    row["output_rel_err"] = _rel_err(out, case["output"])
                    row["input_grad_rel_err"] = _rel_err(grad, case["input_grad"])
                row["seconds"] = round(time.perf_counter() - start, 2)  # includes the compile on first use
                row["tolerance"] = tolerance
                row["ok"] = (
                    row["output_rel_err"] <= tolerance["output"]
                    and row.get("input_grad_rel_err", 0.0) <= tolerance["input_grad"]
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {
        "rows": rows,
        "ok": all(r["ok"] for r in rows),
        "tf32_tolerance": TF32_TOLERANCE,
        "exact_tolerance": EXACT_TOLERANCE,
    }


# ------------------------------------------------------------------------------------------------ training


def _step_ms(rows: list[dict[str, str]]) -> float | None:
    """Median ms per iteration over the second half of the log (after compile and warm-up)."""
    seconds = [float(r["seconds"]) for r in rows]
    half = len(seconds) // 2
    steps = [b - a for a, b in zip(seconds[half:], seconds[half + 1 :], strict=False)]
    return 1e3 * statistics.median(steps) if steps else None


class SeedExperiment(NamedTuple):
    """A short experiment with one training seed: its document, its file and the file's SHA-256 (which a run
    records, so that a run of another file is never resumed or read back as this one's)."""

    exp: dict[str, Any]
    file: Path
    fingerprint: str


def _seed_experiment(args: argparse.Namespace, exp: dict[str, Any], seed: int) -> SeedExperiment:
    """``exp`` (already prepared) with training seed ``seed``, written under ``experiments/seed<N>/``."""
    seeded = {**exp, "train": {**exp["train"], "seed": seed}}
    path = write_experiment(seeded, args.out / "experiments" / f"seed{seed}")
    return SeedExperiment(seeded, path, hashlib.sha256(path.read_bytes()).hexdigest())


def _made_from(work: Path, fingerprint: str) -> bool:
    """Whether the run in ``work`` was made from the experiment file with SHA-256 ``fingerprint``."""
    made_from = work / "experiment.sha256"
    return made_from.is_file() and made_from.read_text().strip() == fingerprint


def _final_weights(work: Path, run: SeedExperiment) -> Path:
    return work / "results" / "paper" / "weights" / f"{run.exp['id']}.pth"


def _finished(work: Path, run: SeedExperiment) -> bool:
    """Whether the run in ``work`` ran to its end: no stop marker, its final weights written (mair train writes
    them last, after the final validation) and a validation row for its last iteration. A run killed while it
    validated has a complete training log and a checkpoint at its last iteration, but none of the last two."""
    from mair.train.launch import STOP_MARKER

    if (work / "run" / STOP_MARKER).is_file() or not _final_weights(work, run).is_file():
        return False
    val_log = work / "run" / "val_log.csv"
    rows = read_csv(val_log) if val_log.is_file() else []
    return bool(rows) and int(rows[-1]["iter"]) == int(run.exp["train"]["total_iter"])


def _run_folder(args: argparse.Namespace, exp_id: str, seed: int, path: str) -> Path:
    return args.out / "train" / exp_id / f"seed{seed}" / path


def _make_runs(args: argparse.Namespace, seeded: dict[tuple[str, int], SeedExperiment]) -> None:
    """Every run of ``--paths`` for every experiment and seed, up to ``--jobs`` at once (exact runs, the
    longest, first). A finished run of the very same experiment file is kept; an unfinished one (stopped by its
    time limit, or killed) goes on from its newest checkpoint; a run of another file starts over. A SIGTERM or
    SIGINT to this script stops every run at a checkpoint (:class:`_Children`); the script then exits with status
    75 and the same command goes on. Failures are reported together once every run has ended."""
    from mair.train import EXIT_STOPPED

    paths = args.paths.split(",")
    planned = [(name, key) for name in TRAIN_PATHS if name in paths for key in seeded]  # exact first

    def make(name: str, key: tuple[str, int]) -> str | None:
        work, run = _run_folder(args, *key, name), seeded[key]
        same_file = _made_from(work, run.fingerprint)
        if same_file and _finished(work, run):
            print(f"{work}: finished earlier, kept", flush=True)
            return None
        wall_file = work / "wall_seconds.txt"
        argv = [
            "train",
            str(run.file),
            "--device",
            args.device,
            "--data-dir",
            str(args.out / "data"),
            "--run-dir",
            str(work / "run"),
            "--results-dir",
            str(work / "results"),
            "--no-mlflow",
            "--log-every",
            "1",
            *([] if same_file else ["--no-resume"]),
            *TRAIN_PATHS[name][0],
            *(["--num-workers", str(args.num_workers)] if args.num_workers is not None else []),
        ]
        earlier = float(wall_file.read_text()) if same_file and wall_file.is_file() else 0.0
        work.mkdir(parents=True, exist_ok=True)
        (work / "experiment.sha256").write_text(run.fingerprint + "\n")
        wall_file.unlink(missing_ok=True)
        _final_weights(work, run).unlink(missing_ok=True)  # an earlier run's weights never pass for this one's
        started = time.perf_counter()
        try:
            run_mair(argv, args, work / ("train_resumed.log" if same_file else "train.log"), TRAIN_PATHS[name][1])
        except SystemExit as failure:
            return str(failure)
        finally:  # also when stopped: the call that finishes the run adds its own time
            wall_file.write_text(f"{earlier + time.perf_counter() - started:.1f}\n")
        return None

    with contextlib.nullcontext() if args.in_process else CHILDREN.forwarding():
        if args.jobs == 1:
            failures = [make(*plan) for plan in planned]
        else:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                failures = list(pool.map(lambda plan: make(*plan), planned))
    if CHILDREN.signal is not None:
        name = signal.Signals(CHILDREN.signal).name
        print(f"stopped by {name}: the runs wrote their checkpoints; the same command goes on", file=sys.stderr)
        raise SystemExit(EXIT_STOPPED)
    failed = [f for f in failures if f]
    if failed:
        raise SystemExit("\n".join(failed))


def _seeds(args: argparse.Namespace, exp_id: str) -> list[int]:
    return args.seeds or [read_experiment_seed(exp_id)]


def _read_runs(args: argparse.Namespace, exp_id: str, seed: int, seeded: SeedExperiment) -> dict[str, dict[str, Any]]:
    """The finished runs of one experiment and seed, by path (``fast`` and ``exact`` named when missing; the
    other paths only where some run of them was started)."""
    runs = {}
    for name in REPORT_ORDER:
        work = _run_folder(args, exp_id, seed, name)
        if not _finished(work, seeded):
            if name in ("fast", "exact") or work.is_dir():
                print(f"{exp_id} seed {seed}: no finished {name} run yet (the same command makes it)", flush=True)
            continue
        if not _made_from(work, seeded.fingerprint):
            raise SystemExit(f"{work}: made from another experiment file (other --iters, --batch ...); rerun it")
        wall_file = work / "wall_seconds.txt"
        wall = float(wall_file.read_text()) if wall_file.is_file() else math.nan
        log = read_csv(work / "run" / "train_log.csv")
        val = read_csv(work / "run" / "val_log.csv")
        config = yaml.safe_load((work / "run" / "config.yaml").read_text())["run"]
        runs[name] = {
            "losses": {int(r["iter"]): float(r["loss"]) for r in log},
            "val_psnr": float(val[-1]["psnr"]),
            "val_ssim": float(val[-1]["ssim"]),
            "step_ms": _step_ms(log),
            "wall_s": round(wall, 1),
            "runtime": config.get("runtime", {}).get("describe"),
            "weights": str(_final_weights(work, seeded)),
        }
    return runs


def _compare_seed(args: argparse.Namespace, exp_id: str, seed: int, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One seed's runs side by side (fast and exact, and any other path made); writes their losses to
    ``train/losses/<exp>_seed<N>.csv`` (a column per path)."""
    iters = sorted(set.intersection(*(set(r["losses"]) for r in runs.values())))
    loss_file = args.out / "train" / "losses" / f"{exp_id}_seed{seed}.csv"
    loss_file.parent.mkdir(parents=True, exist_ok=True)
    with loss_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["iter", *(f"loss_{name}" for name in runs)])
        for i in iters:
            writer.writerow([i, *(repr(r["losses"][i]) for r in runs.values())])
    fast, exact = ([runs[p]["losses"][i] for i in iters] for p in ("fast", "exact"))
    return {
        "iterations": len(iters),
        "loss_csv": str(loss_file),
        "final_loss": {k: v["losses"][iters[-1]] for k, v in runs.items()},
        "mean_abs_loss_diff": statistics.fmean(abs(a - b) for a, b in zip(fast, exact, strict=True)),
        **{
            f"{k}_{name}": v[k]
            for name, v in runs.items()
            for k in ("val_psnr", "val_ssim", "step_ms", "wall_s", "runtime", "weights")
        },
        "val_psnr_diff_db": runs["fast"]["val_psnr"] - runs["exact"]["val_psnr"],
    }


def _spread(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _other_paths(per_seed: dict[str, dict[str, Any]], exact: Sequence[float]) -> dict[str, dict[str, Any]]:
    """For each path other than fast and exact finished for every seed: its mean validation PSNR, its spread
    over seeds and its mean minus the exact path's."""
    out = {}
    for name in REPORT_ORDER[2:]:
        values = [r.get(f"val_psnr_{name}") for r in per_seed.values()]
        if all(v is not None for v in values):
            out[name] = {
                "val_psnr_mean": statistics.fmean(values),
                "val_psnr_seed_std": _spread(values),
                "minus_exact_db": statistics.fmean(values) - statistics.fmean(exact),
            }
    return out


def train_part(args: argparse.Namespace, exp_ids: Sequence[str]) -> dict[str, Any]:
    """Fast default and --exact training of each experiment, for each seed of ``--seeds`` (default the
    experiment's own). Per seed: losses, validation PSNR of both paths and their difference; per experiment the
    mean over seeds of each path, the difference of the means (the verdict: within 0.05 dB) and each path's
    spread over seeds (how far two trainings that differ in nothing but their seed land apart)."""
    seeded = {}
    for exp_id in exp_ids:
        exp = derived_experiment(exp_id, args)
        prepare(args, exp)  # the prepared sets, shared by the seeds
        for seed in _seeds(args, exp_id):
            seeded[exp_id, seed] = _seed_experiment(args, exp, seed)
    _make_runs(args, seeded)
    results = {}
    for exp_id in exp_ids:
        seeds = _seeds(args, exp_id)
        per_seed = {}
        for seed in seeds:
            runs = _read_runs(args, exp_id, seed, seeded[exp_id, seed])
            if "fast" in runs and "exact" in runs:
                per_seed[str(seed)] = _compare_seed(args, exp_id, seed, runs)
                print(json.dumps({exp_id: {f"seed {seed}": per_seed[str(seed)]}}), flush=True)
        if len(per_seed) < len(seeds):
            continue
        fast = [r["val_psnr_fast"] for r in per_seed.values()]
        exact = [r["val_psnr_exact"] for r in per_seed.values()]
        diff = statistics.fmean(fast) - statistics.fmean(exact)
        results[exp_id] = {
            "seeds": per_seed,
            "iterations": min(r["iterations"] for r in per_seed.values()),
            "val_psnr_fast_mean": statistics.fmean(fast),
            "val_psnr_exact_mean": statistics.fmean(exact),
            "val_psnr_fast_seed_std": _spread(fast),
            "val_psnr_exact_seed_std": _spread(exact),
            "val_psnr_diff_db": diff,
            "ok": abs(diff) <= VAL_PSNR_TOLERANCE_DB,
            "other_paths": _other_paths(per_seed, exact),
        }
        print(json.dumps({exp_id: {k: v for k, v in results[exp_id].items() if k != "seeds"}}), flush=True)
    curves = load_curves(args.out / "train" / "losses")
    figure = plot_losses(curves, args.out / "train" / "losses.png") if curves else None
    return {
        "experiments": results,
        "figure": str(figure) if figure else None,
        "tolerance_db": VAL_PSNR_TOLERANCE_DB,
        "ok": bool(results) and all(r["ok"] for r in results.values()),
    }


def read_experiment_seed(exp_id: str) -> int:
    """The training seed the paper experiment's document sets."""
    from mair.experiments import read_document

    return int(read_document(exp_id)["train"]["seed"])


def load_curves(folder: Path) -> dict[str, tuple[list[int], dict[str, list[float]]]]:
    """The loss curves of every experiment and seed trained so far under ``folder`` (earlier calls included),
    keyed ``<exp>_seed<N>``: the iterations and each path's losses."""
    curves = {}
    for path in sorted(folder.glob("*.csv")):
        rows = read_csv(path)
        names = [c.removeprefix("loss_") for c in rows[0] if c.startswith("loss_")] if rows else []
        curves[path.stem] = ([int(r["iter"]) for r in rows], {n: [float(r[f"loss_{n}"]) for r in rows] for n in names})
    return curves


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_losses(curves: dict[str, tuple[list[int], dict[str, list[float]]]], path: Path) -> Path:
    """One panel per experiment and seed (three to a row): each path's loss curve (raw, light; moving average,
    bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.axis("off")
    labels = {"fast": "fast default", "exact": "--exact"}
    colours = dict(zip(REPORT_ORDER, ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"), strict=True))
    for ax, (name, (iters, losses)) in zip(axes.flat, curves.items(), strict=False):
        window = max(1, len(iters) // 50)
        for path_name, values in losses.items():
            label, colour = labels.get(path_name, path_name), colours.get(path_name, "tab:grey")
            ax.plot(iters, values, color=colour, alpha=0.25, linewidth=0.6)
            ax.plot(iters, _smooth(values, window), color=colour, linewidth=1.6, label=f"{label} (mean of {window})")
        ax.set_title(name.replace("_seed", ", seed "))
        ax.set_xlabel("iteration")
        ax.set_ylabel("L1 loss")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ evaluation


def eval_part(args: argparse.Namespace, exp_ids: Sequence[str]) -> dict[str, Any]:
    """Set5 and Set14 through ``mair evaluate``, default and --exact, with the trained SR network."""
    sr = [e for e in exp_ids if derived_experiment(e, args)["task"] in SR_TASKS]
    if not sr:
        raise SystemExit("--parts eval needs an SR experiment in --experiments")
    exp = derived_experiment(sr[0], args)
    exp_file = prepare(args, exp)
    fast_run = _run_folder(args, sr[0], _seeds(args, sr[0])[0], "fast")
    weights = args.eval_weights or fast_run / "results" / "paper" / "weights" / f"{exp['id']}.pth"
    if not Path(weights).is_file():
        raise SystemExit(f"{weights}: no weights; run --parts train first or pass --eval-weights")
    out: dict[str, Any] = {"experiment": sr[0], "weights": str(weights), "datasets": {}}
    for name, extra in (("fast", []), ("exact", ["--exact"])):
        results = args.out / "eval" / name
        argv = [
            "evaluate",
            str(exp_file),
            "--weights",
            str(weights),
            "--datasets",
            "set5",
            "set14",
            "--device",
            args.device,
            "--data-dir",
            str(args.out / "data"),
            "--results-dir",
            str(results),
            "--no-mlflow",
            "--quiet",
            *extra,
        ]
        run_mair(argv, args, results / "evaluate.log")
        for dataset in ("set5", "set14"):
            folder = results / "paper" / "eval" / exp["id"]
            summary = json.loads((folder / f"{dataset}.json").read_text())
            per_image = {r["name"]: float(r["psnr"]) for r in read_csv(folder / f"{dataset}.csv")}
            entry = out["datasets"].setdefault(dataset, {})
            entry[f"psnr_{name}"] = summary["metrics"]["psnr"]
            entry[f"runtime_{name}"] = summary.get("runtime", {}).get("describe")
            entry[f"_images_{name}"] = per_image
    for entry in out["datasets"].values():
        fast, exact = entry.pop("_images_fast"), entry.pop("_images_exact")
        entry["psnr_diff_db"] = abs(entry["psnr_fast"] - entry["psnr_exact"])
        entry["max_image_psnr_diff_db"] = max(abs(fast[k] - exact[k]) for k in fast)
        entry["ok"] = entry["psnr_diff_db"] <= EVAL_PSNR_TOLERANCE_DB
    out["tolerance_db"] = EVAL_PSNR_TOLERANCE_DB
    out["ok"] = all(e["ok"] for e in out["datasets"].values())
    print(json.dumps(out), flush=True)
    return out


# ------------------------------------------------------------------------------------------------ main


def _seed_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 11,12,13") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    shared = shared_dir()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--parts", default="golden,train,eval", help="comma-separated: golden, train, eval")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--experiments",
        default="sr_light_t_x4,dn_real",
        help="comma-separated experiment ids (SR, dn_real or deblur_*)",
    )
    p.add_argument(
        "--paths",
        default="fast,exact",
        help="train part: which runs to make in this call (default fast,exact; none: only read back). A run "
        "made by an earlier call with the same --out is read back, so the paths can go to separate calls. To find "
        "which part of the default path moves a result: fast_fp32 (full-fp32 matrix products), fast_eager (no "
        "torch.compile), exact_triton (--exact with the Triton scan)",
    )
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="train part: comma-separated training seeds, one fast and one exact run each (default: the "
        "experiment's own seed); the verdict compares the paths' means, and each path's spread over seeds is given",
    )
    p.add_argument("--iters", type=int, default=2000, help="training iterations per run (default 2000)")
    p.add_argument("--batch", type=int, default=4, help="training batch (default 4)")
    p.add_argument("--sr-patch", type=int, default=32, help="SR LR patch side (default 32)")
    p.add_argument("--unet-patch", type=int, default=64, help="U-Net patch side (default 64)")
    p.add_argument("--train-images", type=Path, default=shared / "datasets" / "CBSD68", help="training images")
    p.add_argument("--val-images", type=Path, default=shared / "datasets" / "Set5" / "HR", help="held-out images")
    p.add_argument("--set5", type=Path, default=shared / "datasets" / "Set5" / "HR", help="Set5 HR images")
    p.add_argument("--set14", type=Path, default=shared / "datasets" / "Set14" / "HR", help="Set14 HR images")
    p.add_argument("--golden", type=Path, default=shared / "golden", help="golden files (*.pt)")
    p.add_argument("--eval-weights", type=Path, default=None, help="weights for --parts eval (default: the fast run)")
    p.add_argument("--tiny", action="store_true", help="the experiments' demo networks (CPU checks)")
    p.add_argument("--max-images", type=int, default=None, help="use the first N images of every folder")
    p.add_argument("--max-side", type=int, default=None, help="centre-crop every image to at most PX per side")
    p.add_argument("--keep-drop-path", action="store_true", help="keep stochastic depth where the network has it")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers (default: mair train's)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train part: mair train processes at once (default 1; on one GPU, 4 fit an H100: the exact runs "
        "are eager and leave it mostly idle)",
    )
    p.add_argument("--in-process", action="store_true", help="run the mair commands in this process (tests)")
    args = p.parse_args(argv)
    if args.jobs < 1 or (args.in_process and args.jobs > 1):
        p.error("--jobs: at least 1, and 1 with --in-process")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    unknown = set(args.parts.split(",")) - {"golden", "train", "eval"}
    if unknown:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))} (golden, train, eval)")
    unknown = set(args.paths.split(",")) - {*TRAIN_PATHS, "none"}
    if unknown:
        p.error(f"--paths: unknown {', '.join(sorted(unknown))} ({', '.join(REPORT_ORDER)} or none)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    exp_ids = [e.strip() for e in args.experiments.split(",") if e.strip()]
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    from mair.bench.workloads import environment

    summary["environment"] = environment()
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "golden": lambda: golden_part(args),
        "train": lambda: train_part(args, exp_ids),
        "eval": lambda: eval_part(args, exp_ids),
    }
    for part in args.parts.split(","):
        result = parts[part]()
        if part == "train":  # other experiments of earlier calls kept (one experiment per call on the GPU)
            earlier = summary.get("train", {}).get("experiments", {})
            kept = {k: v for k, v in earlier.items() if k not in exp_ids}  # this call's: read from the runs again
            result["experiments"] = {**kept, **result["experiments"]}
            result["ok"] = bool(result["experiments"]) and all(r["ok"] for r in result["experiments"].values())
        summary[part] = result
        (args.out / f"{part}.json").write_text(json.dumps(result, indent=2) + "\n")
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    verdicts = {part: summary[part]["ok"] for part in ("golden", "train", "eval") if part in summary}
    print("verdicts:", json.dumps(verdicts), flush=True)
    return summary


if __name__ == "__main__":
    main()
