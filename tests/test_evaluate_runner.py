"""The evaluation runner on tiny prepared sets: result files, resume after a crash, task metrics, DND."""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from mair.evaluate import metrics as m
from mair.evaluate import runner
from mair.evaluate.noise import add_test_noise
from mair.evaluate.protocol import tensor2img
from mair.experiments import Experiment, TestDatasetRef, load
from mair.experiments.spec import Metrics, Network, Noise, TestSpec


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscription on shared CPUs (10-100x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_MAIR = {
    "img_size": 16,
    "embed_dim": 8,
    "depths": [1],
    "d_state": 2,
    "ssm_ratio": 1.0,
    "mlp_ratio": 1.0,
    "upscale": 2,
    "upsampler": "pixelshuffledirect",
    "scan_len": 4,
}
N_IMAGES = 5


def _metrics(crop: int, y: bool, extra: list[str] | None = None, use_image: bool = True) -> Metrics:
    return Metrics(
        names=("psnr", "ssim"),
        crop_border=crop,
        test_y_channel=y,
        extra_spaces=tuple(extra or ()),
        use_image=use_image,
        rgb2bgr=True,
    )


#: A real experiment of each task; the tests replace its id, network and test section.
_OF_TASK = {"sr_light": "sr_light_t_x2", "dn_color": "dn_color_s25", "dehaze": "dehaze_its", "dn_real": "dn_real"}


def _experiment(
    task: str,
    arch: str,
    kwargs: dict[str, Any],
    dataset: dict[str, Any],
    metrics: Metrics,
    protocol: str,
    scale: int = 1,
    noise: Noise | None = None,
) -> Experiment:
    real = load(_OF_TASK[task])
    assert (real.task, real.network.arch, real.scale) == (task, arch, scale)
    test = TestSpec(
        datasets=(TestDatasetRef(**dataset),),
        noise=noise,
        metrics=metrics,
        protocol=protocol,
        self_ensemble_reported=False,
    )
    return replace(real, id=f"tiny_{task}", network=Network(arch, MappingProxyType(kwargs)), test=test)


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def sr_set(tmp_path: Path) -> Path:
    root = tmp_path / "prepared" / "set5"
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        hr = cv2.GaussianBlur(rng.integers(0, 256, (44, 52, 3), dtype=np.uint8), (5, 5), 1.0)
        _write(root / "HR" / f"img{i}.png", hr)
        lr = cv2.resize(hr, (26, 22), interpolation=cv2.INTER_AREA)
        _write(root / "LR_bicubic" / "X2" / f"img{i}.png", lr)
    (root / ".prepared.json").write_text("{}")
    return root


@pytest.fixture
def sr_experiment_and_weights(tmp_path: Path) -> tuple[Experiment, Path]:
    from mair.models import from_official
    from mair.models.checkpoint import save_weights

    torch.manual_seed(0)
    model = from_official("MaIR", **TINY_MAIR)
    weights = tmp_path / "tiny_sr.pth"
    save_weights(model, weights)
    exp = _experiment(
        "sr_light",
        "MaIR",
        dict(TINY_MAIR),
        {"id": "set5", "gt": "HR", "lq": "LR_bicubic/X2", "pairing": "same_name"},
        _metrics(2, True),
        "tile",
        scale=2,
    )
    return exp, weights


class Counting(nn.Module):
    """Wraps a model; counts forwards and raises after ``fail_after`` of them (a simulated crash)."""

    def __init__(self, inner: nn.Module, fail_after: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.fail_after = fail_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self.inner(x)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _run(exp: Experiment, weights: Path | None, results: Path, root: Path, **kw: Any) -> list[dict[str, Any]]:
    return runner.evaluate(
        exp,
        weights,
        dataset_roots={exp.test.datasets[0].id: root},
        results_dir=results,
        device="cpu",
        track=False,
        progress=False,
        **kw,
    )


def test_sr_evaluation_writes_csv_and_summary(
    tmp_path: Path, sr_set: Path, sr_experiment_and_weights: tuple[Experiment, Path]
) -> None:
    exp, weights = sr_experiment_and_weights
    (summary,) = _run(exp, weights, tmp_path / "results", sr_set)
    out = tmp_path / "results" / "paper" / "eval" / "tiny_sr_light"
    rows = _read_csv(out / "set5.csv")
    assert [r["name"] for r in rows] == [f"img{i}.png" for i in range(N_IMAGES)]
    assert list(rows[0]) == ["name", "psnr", "ssim"]
    on_disk = json.loads((out / "set5.json").read_text())
    assert on_disk["complete"] and on_disk["n_images"] == N_IMAGES
    assert on_disk["variant"] == "MaIR" and on_disk["metric_space"] == "y" and on_disk["crop_border"] == 2
    assert on_disk["metrics"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))
    assert summary["weights"] == str(weights)

    # recompute image 0 by hand: the official protocol + tensor2img + Y metrics with crop = scale
    model = runner.build_model(runner.eval_spec(exp), weights)
    lq = cv2.cvtColor(cv2.imread(str(sr_set / "LR_bicubic/X2/img0.png")), cv2.COLOR_BGR2RGB)
    gt = cv2.cvtColor(cv2.imread(str(sr_set / "HR/img0.png")), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        sr = tensor2img(model(torch.from_numpy(lq.transpose(2, 0, 1).astype(np.float32) / 255)[None]))
    assert float(rows[0]["psnr"]) == pytest.approx(m.calculate_psnr(sr, gt, 2, True), abs=1e-9)
    assert float(rows[0]["ssim"]) == pytest.approx(m.calculate_ssim(sr, gt, 2, True), abs=1e-12)

    (plus,) = _run(exp, weights, tmp_path / "results", sr_set, self_ensemble=True)
    assert plus["variant"] == "MaIR+" and (out / "set5+.csv").is_file() and (out / "set5+.json").is_file()


def test_resume_after_crash_skips_finished_images(
    tmp_path: Path, sr_set: Path, sr_experiment_and_weights: tuple[Experiment, Path]
) -> None:
    exp, weights = sr_experiment_and_weights
    spec = runner.eval_spec(exp)
    results = tmp_path / "results"
    out = results / "paper" / "eval" / "tiny_sr_light"
    k = 2
    crashing = Counting(runner.build_model(spec, weights), fail_after=k)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(exp, weights, results, sr_set, model=crashing)
    assert len(_read_csv(out / "set5.csv")) == k
    assert not (out / "set5.json").exists()  # no summary until every image is done

    # a crash in the middle of writing a row leaves a cut line: it is dropped and that image redone
    with open(out / "set5.csv", "a") as handle:
        handle.write("img2.png,31.4")
    counting = Counting(runner.build_model(spec, weights))
    (summary,) = _run(exp, weights, results, sr_set, model=counting)
    assert counting.calls == N_IMAGES - k  # finished images were not recomputed
    assert summary["complete"] and summary["n_images"] == N_IMAGES
    rows = _read_csv(out / "set5.csv")
    assert sorted(r["name"] for r in rows) == [f"img{i}.png" for i in range(N_IMAGES)]

    # identical to an uninterrupted run
    fresh = tmp_path / "fresh"
    _run(exp, weights, fresh, sr_set)
    ref = {r["name"]: r for r in _read_csv(fresh / "paper/eval/tiny_sr_light/set5.csv")}
    for row in rows:
        assert row == ref[row["name"]]

    # a complete run is not recomputed; other weights start it again
    counting = Counting(runner.build_model(spec, weights))
    _run(exp, weights, results, sr_set, model=counting)
    assert counting.calls == 0
    from mair.models.checkpoint import save_weights

    other = runner.build_model(spec, weights)
    with torch.no_grad():
        other.conv_first.bias.add_(0.01)
    save_weights(other, weights)
    counting = Counting(runner.build_model(spec, weights))
    _run(exp, weights, results, sr_set, model=counting)
    assert counting.calls == N_IMAGES


def test_weights_of_another_architecture_are_refused(
    tmp_path: Path, sr_set: Path, sr_experiment_and_weights: tuple[Experiment, Path]
) -> None:
    exp, weights = sr_experiment_and_weights
    exp = replace(exp, network=Network("MaIR", MappingProxyType({**TINY_MAIR, "embed_dim": 12})))
    with pytest.raises(runner.EvaluationError, match="do not fit"):
        _run(exp, weights, tmp_path / "results", sr_set)
    with pytest.raises(runner.EvaluationError, match="not found"):
        _run(exp, tmp_path / "missing.pth", tmp_path / "results", sr_set)


def test_unprepared_dataset_is_a_clear_error(
    tmp_path: Path, sr_experiment_and_weights: tuple[Experiment, Path]
) -> None:
    exp, weights = sr_experiment_and_weights
    with pytest.raises(runner.EvaluationError, match="not prepared"):
        runner.evaluate(
            exp,
            weights,
            results_dir=tmp_path / "r",
            data_root=tmp_path / "nodata",
            device="cpu",
            track=False,
            progress=False,
        )


def test_colour_denoising_uses_official_noise_and_reports_rgb_and_y(tmp_path: Path) -> None:
    root = tmp_path / "cbsd68"
    rng = np.random.default_rng(1)
    for i in range(3):
        _write(root / "HR" / f"c{i}.png", rng.integers(0, 256, (30, 34, 3), dtype=np.uint8))
    exp = _experiment(
        "dn_color",
        "MaIR",
        {},
        {"id": "cbsd68", "gt": "HR", "lq": None, "pairing": "synthetic_noise"},
        _metrics(0, False, ["y"]),
        "tile",
        noise=Noise(sigma=25, seed=0, reseed_per_image=True, channel_order="bgr", clip=False),
    )
    (summary,) = _run(exp, None, tmp_path / "results", root, model=nn.Identity())
    rows = _read_csv(tmp_path / "results/paper/eval/tiny_dn_color/cbsd68.csv")
    assert list(rows[0]) == ["name", "psnr", "ssim", "psnr_y", "ssim_y"]
    gt = cv2.cvtColor(cv2.imread(str(root / "HR/c0.png")), cv2.COLOR_BGR2RGB)
    noisy = tensor2img(torch.from_numpy(add_test_noise(gt, 25).astype(np.float32).transpose(2, 0, 1)))
    assert float(rows[0]["psnr"]) == pytest.approx(m.calculate_psnr(noisy, gt, 0), abs=1e-9)
    assert float(rows[0]["psnr_y"]) == pytest.approx(m.calculate_psnr(noisy, gt, 0, True), abs=1e-9)
    assert summary["metric_space"] == "rgb" and set(summary["extra_metrics"]) == {"y"}
    clipped = replace(exp, test=replace(exp.test, noise=replace(exp.test.noise, clip=True)))
    with pytest.raises(runner.EvaluationError, match="only the official test noise is implemented"):
        _run(clipped, None, tmp_path / "other", root, model=nn.Identity())
    assert 19 < summary["metrics"]["psnr"] < 22  # sigma 25 noise, clipped by quantisation


def test_dehaze_float_metrics_clamp_and_report_the_official_value(tmp_path: Path) -> None:
    root = tmp_path / "sots_indoor"
    rng = np.random.default_rng(2)
    for i in range(2):
        clear = rng.integers(100, 256, (20, 27, 3), dtype=np.uint8)
        _write(root / "gt" / f"{1400 + i}.png", clear)
        _write(root / "hazy" / f"{1400 + i}_1.png", (clear * 0.9).astype(np.uint8))
    dataset = {"id": "sots_indoor", "gt": "gt", "lq": "hazy", "pairing": "hazy_prefix"}
    exp = _experiment("dehaze", "MaIRUNet", {}, dataset, _metrics(0, False, use_image=False), "pad8")
    seen: list[tuple[int, ...]] = []

    def brighten(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return x * 1.2  # goes above 1: the official peak inference would switch to 255

    (summary,) = _run(exp, None, tmp_path / "results", root, model=brighten)
    assert seen[0] == (24, 32)  # padded to a multiple of 8
    rows = _read_csv(tmp_path / "results/paper/eval/tiny_dehaze/sots_indoor.csv")
    assert [r["name"] for r in rows] == ["1400_1.png", "1401_1.png"]
    hazy = cv2.cvtColor(cv2.imread(str(root / "hazy/1400_1.png")), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    gt = cv2.cvtColor(cv2.imread(str(root / "gt/1400.png")), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    out = hazy * np.float32(1.2)
    assert float(rows[0]["psnr"]) == pytest.approx(m.calculate_psnr_float(np.clip(out, 0, 1), gt), abs=1e-9)
    assert float(rows[0]["ssim"]) == pytest.approx(m.calculate_ssim_float(out, gt), abs=1e-9)
    assert float(rows[0]["psnr_official_unclamped"]) > float(rows[0]["psnr"]) + 40
    assert summary["metric_input"] == "float_clamped"
    assert summary["clamping_check"]["images_changed"] == 2


def test_dnd_submission_bundle(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    from scipy.io import loadmat

    root = tmp_path / "dnd"
    (root / "images_srgb").mkdir(parents=True)
    rng = np.random.default_rng(3)
    images = []
    with h5py.File(root / "info.mat", "w") as f:
        info = f.create_group("info")
        refs = f.create_group("#refs#")
        bb = info.create_dataset("boundingboxes", (1, 2), dtype=h5py.ref_dtype)
        for i in range(2):
            img = rng.random((40, 48, 3)).astype(np.float64)
            images.append(img)
            with h5py.File(root / "images_srgb" / f"{i + 1:04d}.mat", "w") as g:
                g.create_dataset("InoisySRGB", data=img.T)  # MATLAB column-major: h5py sees it transposed
            boxes = np.array([[1 + k, 1 + 2 * k, 8 + k, 16 + 2 * k] for k in range(20)], dtype=np.float64)
            bb[0, i] = refs.create_dataset(f"b{i}", data=boxes.T).ref
    exp = _experiment(
        "dn_real",
        "MaIRUNet",
        {},
        {"id": "dnd", "gt": None, "lq": "images_srgb", "pairing": "dnd_bboxes", "submission_only": True},
        _metrics(0, False, use_image=False),
        "pad8",
    )
    (summary,) = _run(exp, None, tmp_path / "results", root, model=nn.Identity())
    assert summary["metrics"] == {} and summary["n_images"] == 2
    bundle = Path(summary["submission"])
    assert bundle.name == "dnd.zip"
    assert sorted(zipfile.ZipFile(bundle).namelist()) == ["0001.mat", "0002.mat"]
    mat = loadmat(bundle.parent / "dnd" / "0002.mat")
    assert mat["Idenoised"].shape == (1, 20) and mat["Idenoised"].dtype == object
    assert not bool(mat["israw"][0, 0]) and str(mat["eval_version"][0]) == "1.0"
    k = 3
    patch = mat["Idenoised"][0, k]
    expected = images[1][k : 8 + k, 2 * k : 16 + 2 * k]  # rows box[0]-1:box[2], cols box[1]-1:box[3]
    assert patch.dtype == np.float32 and patch.shape == (8, 16, 3)
    np.testing.assert_allclose(patch, np.clip(expected, 0, 1).astype(np.float32))
