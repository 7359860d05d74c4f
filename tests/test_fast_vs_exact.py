"""benchmarks/fast_vs_exact.py runs end to end on the CPU at tiny settings (so a GPU call does not find its bugs):
golden check, both trainings of one SR and one U-Net experiment, losses CSV, figure, evaluation on Set5/Set14."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fast_vs_exact", REPO / "benchmarks" / "fast_vs_exact.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(folder: Path, n: int, seed: int, grey: bool = False) -> Path:
    """Smooth random photographs-to-be (48 x 56), one of them grey when asked (as in Set14)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8), (7, 7), 2.0)
        if grey and i == 0:
            cv2.imwrite(str(folder / f"img{i}.bmp"), img[..., 0])
        else:
            cv2.imwrite(str(folder / f"img{i}.png"), img)
    return folder


@pytest.mark.slow
def test_fast_vs_exact_runs_on_the_cpu(tmp_path: Path) -> None:
    fve = _script()
    golden = tmp_path / "golden"
    golden.mkdir()
    source = SHARED / "golden" / "sr_light_tiny.pt"
    if source.is_file():
        shutil.copy(source, golden)
    out = tmp_path / "out"
    argv = [
        "--out",
        str(out),
        "--device",
        "cpu",
        "--tiny",
        "--iters",
        "2",
        "--batch",
        "2",
        "--sr-patch",
        "8",
        "--unet-patch",
        "16",
        "--in-process",
        "--experiments",
        "sr_light_t_x4,dn_real",
        "--train-images",
        str(_images(tmp_path / "train", 3, 0)),
        "--val-images",
        str(_images(tmp_path / "val", 2, 1)),
        "--set5",
        str(_images(tmp_path / "set5", 2, 2)),
        "--set14",
        str(_images(tmp_path / "set14", 2, 3, True)),
        "--golden",
        str(golden),
        "--parts",
        "golden,train,eval" if source.is_file() else "train,eval",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = fve.main(argv)
    finally:
        torch.set_num_threads(threads)
    if source.is_file():  # the three paths on the CPU are plain fp32: within the golden tolerance
        assert {r["path"] for r in summary["golden"]["rows"]} == {"exact", "infer", "train"}
        assert summary["golden"]["ok"]
    train = summary["train"]["experiments"]
    assert set(train) == {"sr_light_t_x4", "dn_real"}
    for exp_id, result in train.items():
        assert result["iterations"] == 2 and result["ok"]
        (seed,) = result["seeds"]  # the experiment's own training seed
        assert seed == str(fve.read_experiment_seed(exp_id))
        run = result["seeds"][seed]
        assert run["val_psnr_fast"] == result["val_psnr_fast_mean"] and result["val_psnr_fast_seed_std"] is None
        assert result["val_psnr_diff_db"] == pytest.approx(run["val_psnr_fast"] - run["val_psnr_exact"])
        assert run["runtime_fast"].startswith("default path on cpu")
        assert run["runtime_exact"].startswith("exact path on cpu")
        with open(run["loss_csv"], newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["iter"] for r in rows] == ["1", "2"] and set(rows[0]) == {"iter", "loss_fast", "loss_exact"}
        assert Path(run["weights_fast"]).is_file(), exp_id
    assert Path(summary["train"]["figure"]).stat().st_size > 1000
    evaluation = summary["eval"]
    assert set(evaluation["datasets"]) == {"set5", "set14"} and evaluation["ok"]
    assert all(d["psnr_diff_db"] == pytest.approx(0.0, abs=1e-6) for d in evaluation["datasets"].values())
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["eval"]["ok"] and set(on_disk["train"]["experiments"]) == set(train)
    for name in ("div2k", "urban100", "sidd_medium", "sidd_val", "set5", "set14"):
        assert (out / "data" / "prepared" / name / ".prepared.json").is_file(), name
    assert (out / "data" / "prepared" / "set14" / "LR_bicubic" / "X4" / "img0.png").is_file()  # grey BMP read in

    # One path per call (GPU calls are time-limited): the other path's earlier run is read back.
    fast_log = out / "train" / "sr_light_t_x4" / "seed10" / "fast" / "run" / "train_log.csv"
    before = fast_log.stat().st_mtime_ns
    rerun = ["--parts", "train", "--paths", "exact", "--experiments", "sr_light_t_x4"]
    summary = fve.main(argv[: argv.index("--parts")] + rerun)  # the later --experiments wins
    assert fast_log.stat().st_mtime_ns == before
    assert summary["train"]["experiments"]["sr_light_t_x4"]["ok"] and set(summary["train"]["experiments"]) == set(train)


def _train_argv(tmp_path: Path, out: Path, iters: int, *extra: str) -> list[str]:
    images = tmp_path / "images"
    if not images.is_dir():
        _images(images / "train", 3, 0)
        _images(images / "val", 2, 1)
        _images(images / "set5", 2, 2)
        _images(images / "set14", 2, 3)
    return [
        *("--out", str(out), "--device", "cpu", "--tiny", "--iters", str(iters), "--batch", "2"),
        *("--sr-patch", "8", "--parts", "train", "--experiments", "sr_light_t_x4", "--num-workers", "0"),
        *("--train-images", str(images / "train"), "--val-images", str(images / "val")),
        *("--set5", str(images / "set5"), "--set14", str(images / "set14")),
        *extra,
    ]


@pytest.mark.slow
def test_several_seeds_give_each_paths_mean_and_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fve = _script()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = fve.main(_train_argv(tmp_path, tmp_path / "out", 2, "--seeds", "1,2", "--in-process"))
    finally:
        torch.set_num_threads(threads)
    result = summary["train"]["experiments"]["sr_light_t_x4"]
    assert set(result["seeds"]) == {"1", "2"}
    fast = [result["seeds"][s]["val_psnr_fast"] for s in ("1", "2")]
    exact = [result["seeds"][s]["val_psnr_exact"] for s in ("1", "2")]
    exact_1 = exact[0]
    assert fast == pytest.approx(exact, abs=1e-6)  # the CPU's default path is the exact one
    assert fast[0] != fast[1]  # another seed: another initialisation and other patches
    assert result["val_psnr_fast_mean"] == pytest.approx(sum(fast) / 2)
    assert result["val_psnr_fast_seed_std"] == pytest.approx(abs(fast[0] - fast[1]) / 2**0.5)
    assert result["ok"]
    for seed in ("1", "2"):
        config = yaml.safe_load(
            (tmp_path / "out" / "train" / "sr_light_t_x4" / f"seed{seed}" / "exact" / "run" / "config.yaml").read_text()
        )
        assert config["experiment"]["train"]["seed"] == int(seed)
    assert Path(summary["train"]["figure"]).stat().st_size > 1000
    written = {p.suffix for p in (tmp_path / "images").rglob("*") if p.is_file()}
    assert written == {".png"}, "the script wrote into an image folder it only reads"

    # The same command again: finished runs are read back, not made again.
    runs = tmp_path / "out" / "train" / "sr_light_t_x4"
    logs = sorted(runs.glob("seed*/*/run/train_log.csv"))
    assert len(logs) == 4
    before = [p.stat().st_mtime_ns for p in logs]
    again = fve.main(_train_argv(tmp_path, tmp_path / "out", 2, "--seeds", "1,2", "--in-process"))
    assert [p.stat().st_mtime_ns for p in logs] == before
    assert again["train"]["experiments"]["sr_light_t_x4"]["seeds"] == result["seeds"]

    # A run killed while it validated (as when a time limit ends the whole machine) has its checkpoint at the
    # last iteration but no validation row and no final weights: it is not reported as finished...
    exact = runs / "seed1" / "exact"
    Path(result["seeds"]["1"]["weights_exact"]).unlink()
    (exact / "run" / "best.json").unlink()
    val_log = exact / "run" / "val_log.csv"
    val_log.write_text(val_log.read_text().splitlines()[0] + "\n")
    partial = fve.main(_train_argv(tmp_path, tmp_path / "out", 2, "--seeds", "1,2", "--paths", "none", "--in-process"))
    assert partial["train"]["experiments"] == {} and not partial["train"]["ok"]
    # ... and the same command finishes it from its checkpoint: same weights, same validation.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    capsys.readouterr()
    try:
        done = fve.main(_train_argv(tmp_path, tmp_path / "out", 2, "--seeds", "1,2", "--in-process"))
    finally:
        torch.set_num_threads(threads)
    assert "resuming fve_sr_light_t_x4" in "".join(capsys.readouterr())
    others = [(p, t) for p, t in zip(logs, before, strict=True) if p.parent.parent != exact]
    assert len(others) == 3 and all(p.stat().st_mtime_ns == t for p, t in others)
    assert done["train"]["experiments"]["sr_light_t_x4"]["seeds"]["1"]["val_psnr_exact"] == exact_1


def _stop_mid_run(argv: list[str], train_log: Path, group: bool) -> None:
    """Start the script in its own process group and, once the training has logged three iterations, send
    SIGTERM to the whole group (as `timeout` does) or to the script alone (``kill PID``). The script must wait
    for mair train to write its checkpoint and stop marker and then exit with status 75: whatever ends the call
    after it (the end of a time-limited GPU call) would kill the training before its checkpoint was written."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "fast_vs_exact.py"), *argv],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started, deadline = time.time(), time.monotonic() + 240
    while not (
        train_log.is_file()
        and train_log.stat().st_mtime >= started  # not the log of a run made before
        and len(train_log.read_text().splitlines()) > 3
    ):
        assert proc.poll() is None and time.monotonic() < deadline, "the training never got going"
        time.sleep(0.05)
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "stopped by SIGTERM" in err
    assert (train_log.parent / "STOPPED.json").is_file()
    with pytest.raises(ProcessLookupError):  # nothing of the group is left running
        os.killpg(proc.pid, 0)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fast_vs_exact.py"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_run_its_time_limit_stopped_goes_on_when_the_command_is_repeated(tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = out / "train" / "sr_light_t_x4" / "seed10" / "exact"
    log = work / "run" / "train_log.csv"
    argv = _train_argv(tmp_path, out, 200, "--paths", "exact,fast", "--jobs", "2")  # both paths at once
    _stop_mid_run(argv, log, group=False)
    stopped = json.loads((work / "run" / "STOPPED.json").read_text())["iteration"]
    assert stopped < 200

    again = _run(argv)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"iteration {stopped}" in (work / "train_resumed.log").read_text()  # went on from the checkpoint
    assert not (work / "run" / "archive").exists() and not (work / "run" / "STOPPED.json").exists()
    with log.open(newline="") as handle:
        assert [int(r["iter"]) for r in csv.DictReader(handle)] == list(range(1, 201))
    result = json.loads((out / "train.json").read_text())["experiments"]["sr_light_t_x4"]
    assert result["iterations"] == 200 and result["ok"]  # the CPU's two paths are the same fp32 path
    argv = _train_argv(tmp_path, out, 200, "--paths", "exact")

    # A stopped run of another experiment file (here another --iters) is not resumed but started over.
    _stop_mid_run(_train_argv(tmp_path, out, 300, "--paths", "exact"), log, group=True)
    fresh = _run(argv)
    assert fresh.returncode == 0, fresh.stdout[-2000:] + fresh.stderr[-2000:]
    assert "moved the previous run's files" in (work / "train.log").read_text()
    assert "resuming" not in (work / "train.log").read_text()
    with log.open(newline="") as handle:
        assert [int(r["iter"]) for r in csv.DictReader(handle)] == list(range(1, 201))


@pytest.mark.slow
def test_other_paths_each_change_one_part_of_the_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The diagnosis paths run with their own flags and environment, are reported against the exact path and
    plotted; an unknown path is one line."""
    fve = _script()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = _train_argv(tmp_path, tmp_path / "out", 2, "--paths", "fast,exact,fast_fp32,fast_eager")
        summary = fve.main([*argv, "--in-process"])
    finally:
        torch.set_num_threads(threads)
    result = summary["train"]["experiments"]["sr_light_t_x4"]
    (run,) = result["seeds"].values()
    assert run["runtime_fast_fp32"] == "custom settings on cpu: scan torch, fp32, eager"
    assert run["runtime_fast_eager"] == "custom settings on cpu: scan torch, fp32, eager"
    assert set(result["other_paths"]) == {"fast_fp32", "fast_eager"}
    for name, other in result["other_paths"].items():  # on the CPU every path is plain fp32
        assert other["minus_exact_db"] == pytest.approx(0.0, abs=1e-3), name
        assert other["val_psnr_mean"] == run[f"val_psnr_{name}"]
    with open(run["loss_csv"], newline="") as handle:
        assert next(csv.reader(handle)) == ["iter", "loss_fast", "loss_exact", "loss_fast_fp32", "loss_fast_eager"]
    assert Path(summary["train"]["figure"]).stat().st_size > 1000

    # exact_triton sets MAIR_SCAN_BACKEND=triton for its run only: without a GPU or Triton's interpreter that run
    # is refused in one line, and the script reports it.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit, match="MAIR_SCAN_BACKEND=triton cannot run on cpu"):
        fve.main(_train_argv(tmp_path, tmp_path / "out", 2, "--paths", "exact_triton"))
    assert os.environ.get("MAIR_SCAN_BACKEND") is None

    with pytest.raises(SystemExit):
        fve.parse_args(["--out", str(tmp_path / "x"), "--paths", "fast,fastest"])
