"""benchmarks/fast_vs_exact.py runs end to end on the CPU at tiny settings (so a GPU call does not find its bugs):
golden check, both trainings of one SR and one U-Net experiment, losses CSV, figure, evaluation on Set5/Set14."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch

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
        assert result["runtime_fast"].startswith("default path on cpu")
        assert result["runtime_exact"].startswith("exact path on cpu")
        with open(result["loss_csv"], newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["iter"] for r in rows] == ["1", "2"] and set(rows[0]) == {"iter", "loss_fast", "loss_exact"}
        assert Path(result["weights_fast"]).is_file(), exp_id
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
    fast_log = out / "train" / "sr_light_t_x4" / "fast" / "run" / "train_log.csv"
    before = fast_log.stat().st_mtime_ns
    rerun = ["--parts", "train", "--paths", "exact", "--experiments", "sr_light_t_x4"]
    summary = fve.main(argv[: argv.index("--parts")] + rerun)  # the later --experiments wins
    assert fast_log.stat().st_mtime_ns == before
    assert summary["train"]["experiments"]["sr_light_t_x4"]["ok"] and set(summary["train"]["experiments"]) == set(train)
