"""The embedded demo data: every dataset id, the real layouts, markers, determinism, speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from mair.data.demo import build_demo, demo_ids
from mair.data.prepare import hazy_to_gt_name, prepare

CONTRACT_IDS = {
    "div2k", "flickr2k", "df2k", "bsd400", "wed", "dfwb", "set5", "set14", "b100", "urban100", "manga109",
    "cbsd68", "kodak24", "mcmaster", "sidd_medium", "sidd_val", "dnd", "gopro", "hide", "reside_its",
    "reside_ots", "sots_indoor", "sots_outdoor", "reside_6k",
}  # fmt: skip
SR_IDS = ("div2k", "flickr2k", "df2k", "set5", "set14", "b100", "urban100", "manga109")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    root = tmp_path_factory.mktemp("demo_a")
    start = time.perf_counter()
    report = build_demo(root)
    return root / "demo" / "prepared", report, time.perf_counter() - start


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_every_dataset_id_with_its_marker(demo: tuple[Path, dict, float]) -> None:
    base, report, seconds = demo
    assert set(demo_ids()) == CONTRACT_IDS
    assert set(report["datasets"]) == CONTRACT_IDS
    assert seconds < 30
    for set_id in CONTRACT_IDS:
        marker = json.loads((base / set_id / ".prepared.json").read_text())
        assert marker["dataset"] == set_id and marker["scope"] == "demo"
        for sub, n in marker["counts"].items():
            folder = base / set_id / sub
            if sub.endswith(".mat"):
                assert folder.is_file()
            else:
                assert n > 0 and len(_names(folder)) == n, f"{set_id}/{sub}"
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # no leftover build folders


def test_sr_layouts(demo: tuple[Path, dict, float]) -> None:
    base = demo[0]
    for set_id in SR_IDS:
        hr = base / set_id / "HR"
        for s in (2, 3, 4):
            lr = base / set_id / "LR_bicubic" / f"X{s}"
            assert _names(lr) == _names(hr), f"{set_id} x{s}: LR names equal HR names"
            for name in _names(hr):
                h, w = _read(hr / name).shape[:2]
                assert _read(lr / name).shape[:2] == (h // s, w // s)
    for set_id in ("div2k", "df2k"):  # training sets: at least 4 images of at least 128 px
        shapes = [_read(base / set_id / "HR" / n).shape for n in _names(base / set_id / "HR")]
        assert len(shapes) >= 4 and min(min(s[:2]) for s in shapes) >= 128
    n_df2k = len(_names(base / "div2k" / "HR")) + len(_names(base / "flickr2k" / "HR"))
    assert len(_names(base / "df2k" / "HR")) == n_df2k
    assert {n.split("-")[0] for n in _names(base / "dfwb" / "HR")} == {"div2k", "flickr2k", "bsd400", "wed"}
    assert any(_read(base / "set14" / "HR" / n).ndim == 2 for n in _names(base / "set14" / "HR"))  # a grey member


def test_restoration_layouts(demo: tuple[Path, dict, float]) -> None:
    base = demo[0]
    for set_id, pairs in {
        "sidd_medium": [("train/input_crops", "train/target_crops")],
        "sidd_val": [("val/input", "val/target")],
        "gopro": [("train/input_crops", "train/target_crops"), ("test/input", "test/target")],
        "hide": [("test/input", "test/target")],
        "reside_6k": [("train/hazy", "train/gt"), ("test/hazy", "test/gt")],
    }.items():
        for a, b in pairs:
            assert _names(base / set_id / a) == _names(base / set_id / b), f"{set_id}: {a} vs {b}"
            for n in _names(base / set_id / a):
                assert _read(base / set_id / a / n).shape == _read(base / set_id / b / n).shape
    crops = base / "sidd_medium" / "train" / "input_crops"
    assert all(_read(crops / n).shape == (128, 128, 3) for n in _names(crops))
    assert "0001_NOISY_SRGB_010-6.png" in _names(crops)  # 2 x 3 Restormer crops of a 208 x 272 scene
    assert "GOPR0001_00_00-000001_s006.png" in _names(base / "gopro" / "train" / "input_crops")
    for set_id, sub in (("reside_its", "train"), ("reside_ots", "train"), ("sots_indoor", ""), ("sots_outdoor", "")):
        folder = base / set_id / sub
        gts = set(_names(folder / "gt"))
        assert all(hazy_to_gt_name(n) in gts for n in _names(folder / "hazy")), set_id
    assert all(n.endswith(".jpg") and n.count("_") == 2 for n in _names(base / "reside_ots" / "train" / "hazy"))
    assert all(n.count("_") == 2 for n in _names(base / "reside_its" / "train" / "hazy"))


def test_degradations_change_the_images(demo: tuple[Path, dict, float]) -> None:
    base = demo[0]
    for a, b in (
        ("sidd_val/val/input/00_00.png", "sidd_val/val/target/00_00.png"),
        ("gopro/test/input/GOPR0003_00_00-000001.png", "gopro/test/target/GOPR0003_00_00-000001.png"),
        ("reside_6k/test/hazy/0001.png", "reside_6k/test/gt/0001.png"),
    ):
        x, y = _read(base / a).astype(float), _read(base / b).astype(float)
        assert 1.0 < np.abs(x - y).mean() < 128.0, a


def test_dnd_format(demo: tuple[Path, dict, float]) -> None:
    h5py = pytest.importorskip("h5py")
    folder = demo[0] / "dnd"
    assert _names(folder / "images_srgb") == ["0001.mat", "0002.mat"]
    with h5py.File(folder / "images_srgb" / "0001.mat", "r") as f:
        img = np.asarray(f["InoisySRGB"]).T  # read as the official DND scripts do
    assert img.shape == (128, 160, 3) and img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    with h5py.File(folder / "info.mat", "r") as f:
        info = f["info"]
        boxes = np.asarray(info[info["boundingboxes"][0][1]]).T
    assert boxes.shape == (20, 4)
    r0, c0, r1, c1 = boxes[-1].astype(int)
    assert img[r0 - 1 : r1, c0 - 1 : c1].shape == (32, 32, 3)


def test_deterministic_and_rerun_skips(demo: tuple[Path, dict, float], tmp_path: Path) -> None:
    base = demo[0]
    build_demo(tmp_path)
    other = tmp_path / "demo" / "prepared"
    files = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for rel in files:
        assert (base / rel).read_bytes() == (other / rel).read_bytes(), str(rel)
    again = build_demo(tmp_path)
    assert all(entry["skipped"] for entry in again["datasets"].values())
    via_prepare = prepare("set5", tmp_path, scope="demo")
    assert via_prepare["skipped"] and via_prepare["counts"]["HR"] == 3
