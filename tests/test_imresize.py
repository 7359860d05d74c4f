"""MATLAB-compatible bicubic imresize: golden values of the official code, MATLAB-made LR files, shape rules."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from mair.data.imresize import (
    bicubic_lr_uint8,
    contributions,
    imresize,
    imresize_official,
    imresize_uint8,
    modcrop,
    output_size,
    quantize_uint8,
)
from tests.conftest import shared_path


def _golden_cases() -> list[tuple[str, np.ndarray, int, np.ndarray]]:
    golden = np.load(shared_path("golden", "metrics", "imresize.npz"))
    datasets = shared_path("datasets")
    cases = []
    for key in golden.files:
        name, scale = key.split("@")
        set_name, file_name = name.split("/")
        hits = sorted((datasets / set_name).rglob(file_name))
        assert hits, f"{file_name} not found under {datasets / set_name}"
        img = cv2.imread(str(hits[0]), cv2.IMREAD_COLOR).astype(np.float64) / 255.0
        cases.append((key, img, int(scale.split("/")[1]), golden[key]))
    return cases


def test_official_mode_matches_golden_to_summation_order() -> None:
    """The golden file holds the official (float32, torch) outputs; our official mode reproduces their arithmetic.

    Each output is two float32 ``Tensor.mv`` sums of about ten products. MKL's ``sgemv`` picks its summation order
    by CPU: on the machine that made the golden values (and on earlier CI machines) the difference was 0; on an
    AMD EPYC with the same torch wheel MKL sums in another order and about half the values move by one or two
    float32 ulps. So the bound is that of a reordered float32 sum (3 ulp of 1.0), tighter than anything a wrong
    weight, tap or border would give (those move values by 1e-3 and more).
    """
    for key, img, s, want in _golden_cases():
        got = imresize_official(img, 1 / s)
        assert got.shape == want.shape, key
        assert got.dtype == np.float32
        assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() <= 3 * 2.0**-23, key


def test_float64_mode_matches_golden_to_float32_precision() -> None:
    """The float64 maths differs from the float32 official values only by float32 rounding (a few ulps)."""
    for key, img, s, want in _golden_cases():
        got = imresize(img, 1 / s)
        assert got.dtype == np.float64 and got.shape == want.shape, key
        assert np.abs(got - want.astype(np.float64)).max() < 5e-7, key


def test_bicubic_lr_equals_matlab_made_set5_lr() -> None:
    """MATLAB's uint8 imresize (rounding after each 1-D pass) reproduces SwinIR's Set5 LR_bicubic byte for byte."""
    root = shared_path("datasets", "Set5")
    for hr_path in sorted((root / "HR").glob("*.png")):
        hr = cv2.imread(str(hr_path), cv2.IMREAD_UNCHANGED)
        for s in (2, 3, 4):
            lr = cv2.imread(str(root / "LR_bicubic" / f"X{s}" / f"{hr_path.stem}x{s}.png"), cv2.IMREAD_UNCHANGED)
            mine = bicubic_lr_uint8(hr, s)
            assert mine.shape == lr.shape
            assert np.array_equal(mine, lr), f"{hr_path.name} x{s}"


def test_output_size_and_shapes() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((256, 101, 3))
    assert imresize(img, 1 / 3).shape == (86, 34, 3)  # ceil(256/3), ceil(101/3)
    assert imresize(img, 2).shape == (512, 202, 3)
    assert imresize(img[:, :, 0], 1 / 4).shape == (64, 26)  # HxW stays 2-D
    assert imresize(rng.random((10, 12, 5)), 0.5).shape == (5, 6, 5)  # any channel count
    assert output_size(288, 1 / 3) == 96
    with pytest.raises(ValueError):
        imresize(rng.random((2, 3, 4, 5)), 0.5)
    with pytest.raises(ValueError):
        imresize(img, 0)


def test_weights_sum_to_one_and_indices_mirror() -> None:
    for in_len, scale in ((10, 0.5), (7, 2.0), (33, 1 / 3), (5, 0.25)):
        w, idx = contributions(in_len, output_size(in_len, scale), scale)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
        assert idx.min() >= 0 and idx.max() < in_len
    _, idx = contributions(4, 8, 2.0)
    # out-of-range taps mirror symmetrically with the edge repeated: -2, -1 -> 1, 0 and 4, 5 -> 3, 2
    assert idx[0].tolist() == [1, 0, 0, 1]
    assert idx[-1].tolist() == [2, 3, 3, 2]


def test_upscaling_preserves_constants_and_linear_ramps() -> None:
    const = np.full((9, 7, 3), 0.37)
    np.testing.assert_allclose(imresize(const, 3), 0.37, atol=1e-12)
    np.testing.assert_allclose(imresize(const, 1 / 3), 0.37, atol=1e-12)
    ramp = np.tile(np.arange(20, dtype=np.float64)[None, :], (6, 1))
    up = imresize(ramp, 2)
    # cubic convolution reproduces linear functions exactly away from the borders
    expected = (np.arange(40) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[:, 4:-4], np.tile(expected[None, 4:-4], (12, 1)), atol=1e-12)


def test_official_and_float64_agree_on_random_images() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((37, 53, 3))
    for scale in (0.5, 1 / 3, 0.25, 2.0, 3.0):
        a = imresize(img, scale)
        b = imresize_official(img, scale)
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 2e-5  # float32 coordinates and weights
    grey = rng.random((20, 30))
    assert imresize_official(grey, 0.5).shape == (10, 15)


def test_uint8_helpers_round_and_clip() -> None:
    assert quantize_uint8(np.array([0.3 / 255, 0.7 / 255, 200.6 / 255, -0.2, 1.3])).tolist() == [0, 1, 201, 0, 255]
    img = np.zeros((12, 12, 3), np.uint8)
    img[:, 6:] = 255  # a hard edge overshoots: results must be clipped, not wrapped
    out = imresize_uint8(img, 2)
    assert out.dtype == np.uint8 and out.shape == (24, 24, 3)
    assert out[:, :10].max() == 0 and out[:, 14:].min() == 255
    assert imresize_uint8(img.astype(np.uint16) * 257, 0.5).dtype == np.uint16
    hr = np.random.default_rng(2).integers(0, 256, (25, 31, 3), dtype=np.uint8)
    lr = bicubic_lr_uint8(hr, 4)
    assert lr.shape == (6, 7, 3)  # mod-crop to 24 x 28 first
    assert np.array_equal(lr, imresize_uint8(modcrop(hr, 4), 0.25))
    with pytest.raises(ValueError):
        bicubic_lr_uint8(hr.astype(np.float32), 2)  # type: ignore[arg-type]


def test_fast_enough_for_div2k_images() -> None:
    img = np.random.default_rng(3).random((1020, 702, 3))
    start = time.perf_counter()
    out = imresize(img, 0.5)
    assert out.shape == (510, 351, 3)
    assert time.perf_counter() - start < 10.0
