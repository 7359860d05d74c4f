"""Metrics: the official values on every golden row, channel order, and the U-Net (realDenoising) metrics."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mair.evaluate import metrics as m


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscription on shared CPUs (10-100x faster here)."""
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(threads)
    cv2.setNumThreads(cv_threads)


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _golden_rows(golden: Path) -> list[dict[str, str]]:
    with open(golden / "metrics" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_golden_metrics_every_row(golden_dir: Path, datasets_dir: Path) -> None:
    rows = _golden_rows(golden_dir)
    assert len(rows) >= 40
    cache: dict[str, np.ndarray] = {}
    for row in rows:
        gt = cache.setdefault(row["gt"], _read_rgb(datasets_dir / row["gt"]))
        est = _read_rgb(golden_dir / "metrics" / row["estimate"])
        gt = gt[: est.shape[0], : est.shape[1]]  # the official dataset crops gt to lq * scale
        crop, y = int(row["crop_border"]), row["test_y_channel"] == "True"
        psnr = m.calculate_psnr(est, gt, crop, test_y_channel=y)
        ssim = m.calculate_ssim(est, gt, crop, test_y_channel=y)
        assert abs(psnr - float(row["psnr"])) < 1e-4, row
        assert abs(ssim - float(row["ssim"])) < 1e-6, row


def test_y_channel_uses_rgb_order() -> None:
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert m.rgb_to_y(red)[0, 0, 0] == pytest.approx(16 + 65.481, abs=1e-3)
    blue = red[..., ::-1].copy()
    assert m.rgb_to_y(blue)[0, 0, 0] == pytest.approx(16 + 24.966, abs=1e-3)
    assert m.rgb_to_y(red).dtype == np.float32


def test_y_metric_is_not_symmetric_in_channel_order() -> None:
    """Swapping R and B changes Y metrics (so passing BGR by mistake would be caught), not RGB ones."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape) * np.array([3, 1, 0]), 0, 255).astype(np.uint8)
    y_rgb = m.calculate_psnr(a, b, 0, True)
    y_bgr = m.calculate_psnr(a[..., ::-1], b[..., ::-1], 0, True)
    assert abs(y_rgb - y_bgr) > 0.1
    assert m.calculate_psnr(a, b, 0) == pytest.approx(m.calculate_psnr(a[..., ::-1], b[..., ::-1], 0))


def test_psnr_identical_is_inf_and_crop() -> None:
    a = np.full((20, 20, 3), 7, np.uint8)
    assert m.calculate_psnr(a, a, 0) == math.inf
    b = a.copy()
    b[0, :, :] = 200  # only the border differs
    assert m.calculate_psnr(a, b, 1) == math.inf
    assert m.calculate_psnr(a, b, 0) < 30
    with pytest.raises(ValueError):
        m.calculate_psnr(a, b[:10], 0)


def test_float_psnr_clamps_and_uses_range_one() -> None:
    rng = np.random.default_rng(1)
    gt = rng.random((32, 32, 3)).astype(np.float32)
    out = gt + rng.normal(0, 0.02, gt.shape).astype(np.float32)
    out[0, 0, 0] = 1.7  # one pixel above 1: the official code would switch to peak 255
    clamped = np.clip(out, 0, 1)
    mse = np.mean((clamped.astype(np.float64) - gt) ** 2)
    assert m.calculate_psnr_float(out, gt) == pytest.approx(10 * math.log10(1 / mse))
    official = m.official_psnr_unclamped(out, gt)
    assert m.official_float_peak(out) == 255.0
    # docs/evaluation.md "How our clamping differs from the official code"
    assert official > m.calculate_psnr_float(out, gt) + 40
    # uint8 input is scaled to [0, 1]: same PSNR as the float version of the same values
    gt8 = (gt * 255).round().astype(np.uint8)
    out8 = (clamped * 255).round().astype(np.uint8)
    assert m.calculate_psnr_float(out8, gt8) == pytest.approx(m.calculate_psnr(out8, gt8, 0), abs=1e-9)


def _ssim3d_full_reference(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    """Direct transcription of the official _ssim_3d (full 11x11x11 kernel, Conv3d replicate) in float64."""
    import torch

    g = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(g, g.transpose())
    kernel = torch.tensor(np.stack([window * k for k in g[:, 0]], axis=0))
    conv = torch.nn.Conv3d(1, 1, 11, padding=5, bias=False, padding_mode="replicate").double()
    with torch.no_grad():
        conv.weight[0, 0] = kernel

        def f(x: torch.Tensor) -> torch.Tensor:
            return conv(x[None, None])[0, 0]

        x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
        mu1, mu2 = f(x), f(y)
        s1, s2, s12 = f(x * x) - mu1**2, f(y * y) - mu2**2, f(x * y) - mu1 * mu2
        smap = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
        return float(smap.mean())


def test_ssim_3d_matches_full_kernel_reference() -> None:
    rng = np.random.default_rng(2)
    a = rng.random((24, 30, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ref = _ssim3d_full_reference(a, b, 1.0)
    assert m.calculate_ssim_3d(a, b, dtype="float64") == pytest.approx(ref, abs=1e-12)
    assert m.calculate_ssim_3d(a, b) == pytest.approx(ref, abs=1e-5)  # float32 as the official
    assert m.calculate_ssim_float(b, a) == pytest.approx(ref, abs=1e-5)
    assert m.calculate_ssim_float(a, a) == pytest.approx(1.0, abs=1e-6)


def test_ssim_float_clamps_output() -> None:
    rng = np.random.default_rng(3)
    gt = rng.random((20, 20, 3))
    out = gt.copy()
    out[5, 5, 1] = 3.0
    assert m.calculate_ssim_float(out, gt) == pytest.approx(m.calculate_ssim_float(np.clip(out, 0, 1), gt))


def test_ssim_float_y_is_2d_replicate() -> None:
    rng = np.random.default_rng(4)
    gt = rng.random((24, 24, 3))
    out = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    value = m.calculate_ssim_float(out, gt, test_y_channel=True)
    assert 0 < value < 1
    assert m.calculate_ssim_float(gt, gt, test_y_channel=True) == pytest.approx(1.0)
