"""PSNR and SSIM exactly as the official MaIR code computes them (docs/evaluation.md "Metrics").

Two families:

* :func:`calculate_psnr` / :func:`calculate_ssim`: the top-level BasicSR metrics used for SR, lightweight SR
  and colour denoising. They take uint8 HWC **RGB** arrays (our convention) and give the numbers the
  official functions give on the same images in BGR order: float64, border crop, optional Y channel (BT.601
  on the [16, 235] scale, computed in float32 as the official ``to_y_channel``), SSIM with an 11x11 Gaussian
  window (sigma 1.5) through ``cv2.filter2D`` and the valid ``[5:-5, 5:-5]`` region, averaged over channels.
* :func:`calculate_psnr_float` / :func:`calculate_ssim_float` (and :func:`calculate_ssim_3d`): the
  realDenoising metrics of the U-Net tasks (real denoising, deblurring, dehazing) on float arrays in [0, 1].
  The official code infers the peak from ``img.max()`` of the unclamped output; we clamp to [0,
  1] and use data range 1. :func:`official_float_peak` tells what peak the official code would have picked.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "calculate_psnr",
    "calculate_psnr_float",
    "calculate_ssim",
    "calculate_ssim_3d",
    "calculate_ssim_float",
    "official_float_peak",
    "official_psnr_unclamped",
    "rgb_to_y",
]

_Y_WEIGHTS_BGR = [24.966, 128.553, 65.481]  # the official order: applied to B, G, R


def _check_pair(img: np.ndarray, ref: np.ndarray) -> None:
    if img.shape != ref.shape:
        raise ValueError(f"image shapes differ: {img.shape} vs {ref.shape}")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected HW or HWC arrays, got shape {img.shape}")


def _crop(img: np.ndarray, crop_border: int) -> np.ndarray:
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border == 0:
        return img
    return img[crop_border:-crop_border, crop_border:-crop_border, ...]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y of BT.601 on the [16, 235] scale from an RGB image with values on [0, 255], as the official code.

    Returns an (H, W, 1) float32 array. The official ``to_y_channel`` works on BGR: it divides by 255 in
    float32, takes ``dot(img, [24.966, 128.553, 65.481]) + 16`` (float64 because the weights are float64),
    divides by 255 and casts to float32, then multiplies by 255 in float32. We flip RGB to BGR first so
    every rounding step is the same.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y needs an HxWx3 image, got shape {img.shape}")
    bgr = img[..., ::-1].astype(np.float32) / 255.0
    y = np.dot(bgr, _Y_WEIGHTS_BGR) + 16.0
    y = (y / 255.0).astype(np.float32)
    return (y * 255.0)[..., None]


def metric_images(out: np.ndarray, gt: np.ndarray, rgb2bgr: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 RGB output and target in the channel order an experiment's ``rgb2bgr`` gives the metrics.

    The official code converts images to BGR (``rgb2bgr: true``) before its BGR-to-Y conversion; with
    ``rgb2bgr: false`` it hands RGB to that conversion, which swaps the red and blue weights of Y. The metrics
    here take RGB, so false is the same swap: both images reversed. Only Y-channel metrics change.
    """
    if rgb2bgr or out.ndim != 3 or out.shape[2] != 3:
        return out, gt
    return out[..., ::-1], gt[..., ::-1]


def _prepare(img: np.ndarray, crop_border: int, test_y_channel: bool) -> np.ndarray:
    out = _crop(img.astype(np.float64), crop_border)
    if out.ndim == 2:
        out = out[..., None]
    if test_y_channel and out.shape[2] == 3:
        out = rgb_to_y(out)
    return out


def calculate_psnr(img: np.ndarray, ref: np.ndarray, crop_border: int, test_y_channel: bool = False) -> float:
    """PSNR in dB (peak 255) of two uint8 HWC RGB images, as BasicSR's ``calculate_psnr``; inf if equal."""
    _check_pair(img, ref)
    a = _prepare(img, crop_border, test_y_channel)
    b = _prepare(ref, crop_border, test_y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(20.0 * np.log10(255.0 / np.sqrt(mse)))


def _gaussian_window() -> np.ndarray:
    kernel = cv2.getGaussianKernel(11, 1.5)
    return np.outer(kernel, kernel.transpose())


def _ssim_channel(
    a: np.ndarray, b: np.ndarray, border: int = cv2.BORDER_REFLECT_101, valid: bool = True, peak: float = 255.0
) -> float:
    c1 = (0.01 * peak) ** 2
    c2 = (0.03 * peak) ** 2
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    window = _gaussian_window()

    def filt(x: np.ndarray) -> np.ndarray:
        out = cv2.filter2D(x, -1, window, borderType=border)
        return out[5:-5, 5:-5] if valid else out

    mu1 = filt(a)
    mu2 = filt(b)
    mu1_sq = mu1**2
    mu2_sq = mu2**2
    mu1_mu2 = mu1 * mu2
    sigma1_sq = filt(a**2) - mu1_sq
    sigma2_sq = filt(b**2) - mu2_sq
    sigma12 = filt(a * b) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def calculate_ssim(img: np.ndarray, ref: np.ndarray, crop_border: int, test_y_channel: bool = False) -> float:
    """SSIM of two uint8 HWC RGB images, as BasicSR's ``calculate_ssim`` (per-channel mean)."""
    _check_pair(img, ref)
    a = _prepare(img, crop_border, test_y_channel)
    b = _prepare(ref, crop_border, test_y_channel)
    if min(a.shape[:2]) <= 10:
        raise ValueError(f"SSIM needs images larger than 10x10 after cropping, got {a.shape[:2]}")
    values = [_ssim_channel(a[..., i], b[..., i]) for i in range(a.shape[2])]
    return float(np.array(values).mean())


# ----------------------------------------------------------------------------------------------------
# U-Net tasks (realDenoising code), fixed to clamp and use data range 1


def _as_unit_float(img: np.ndarray, clamp: bool) -> np.ndarray:
    if img.dtype == np.uint8:
        out = img.astype(np.float64) / 255.0
    elif img.dtype == np.uint16:
        out = img.astype(np.float64) / 65535.0
    else:
        out = img.astype(np.float64)
    return np.clip(out, 0.0, 1.0) if clamp else out


def official_float_peak(img: np.ndarray) -> float:
    """The peak the official realDenoising metrics infer: 1 if ``img.max() <= 1`` else 255."""
    return 1.0 if float(np.max(img)) <= 1.0 else 255.0


def calculate_psnr_float(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """PSNR (data range 1) of float images in [0, 1] (uint8/uint16 are scaled); ``img`` is clamped first.

    HWC RGB (or HW). With ``test_y_channel`` Y is taken as the official code does, on the [16, 235] scale, and
    rescaled to [0, 1] so the peak stays 1.
    """
    _check_pair(img, ref)
    a = _crop(_as_unit_float(img, clamp=True), crop_border)
    b = _crop(_as_unit_float(ref, clamp=True), crop_border)
    if test_y_channel and a.ndim == 3 and a.shape[2] == 3:
        a = rgb_to_y(a * 255.0).astype(np.float64) / 255.0
        b = rgb_to_y(b * 255.0).astype(np.float64) / 255.0
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 20.0 * math.log10(1.0 / math.sqrt(mse))


def official_psnr_unclamped(img: np.ndarray, ref: np.ndarray, crop_border: int = 0) -> float:
    """The official realDenoising PSNR on unclamped float output (peak inferred from ``img.max()``).

    Only for reporting whether clamping changes the numbers; never use it as the score.
    """
    _check_pair(img, ref)
    a = _crop(img.astype(np.float64), crop_border)
    b = _crop(ref.astype(np.float64), crop_border)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 20.0 * math.log10(official_float_peak(img) / math.sqrt(mse))


def _gaussian_1d() -> np.ndarray:
    return cv2.getGaussianKernel(11, 1.5)[:, 0]


def calculate_ssim_3d(img: np.ndarray, ref: np.ndarray, peak: float = 1.0, dtype: str = "float32") -> float:
    """Restormer's 3-D SSIM of two HWC images, on the CPU.

    The official ``_ssim_3d`` convolves the (H, W, C) volume with an 11x11x11 Gaussian (outer product of
    three ``getGaussianKernel(11, 1.5)``) with replicate padding 5 on every axis, in float32 on CUDA, and
    averages the SSIM map over all H x W x C positions. The kernel is separable, so we apply it as three 1-D
    ``conv3d`` passes with the same replicate padding (same result up to float rounding). No border crop.
    """
    import torch
    import torch.nn.functional as F

    _check_pair(img, ref)
    if img.ndim == 2:
        img, ref = img[..., None], ref[..., None]
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    c1 = (0.01 * peak) ** 2
    c2 = (0.03 * peak) ** 2
    g = torch.tensor(_gaussian_1d(), dtype=torch_dtype)
    kernels = (g.view(1, 1, 11, 1, 1), g.view(1, 1, 1, 11, 1), g.view(1, 1, 1, 1, 11))

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x[None, None], (5, 5, 5, 5, 5, 5), mode="replicate")
        for kernel in kernels:
            x = F.conv3d(x, kernel)
        return x[0, 0]

    with torch.no_grad():
        a = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64)).to(torch_dtype)
        b = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float64)).to(torch_dtype)
        mu1 = blur(a)
        mu2 = blur(b)
        mu1_sq = mu1**2
        mu2_sq = mu2**2
        mu1_mu2 = mu1 * mu2
        sigma1_sq = blur(a * a) - mu1_sq
        sigma2_sq = blur(b * b) - mu2_sq
        sigma12 = blur(a * b) - mu1_mu2
        ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
        return float(ssim_map.double().mean())


def calculate_ssim_float(img: np.ndarray, ref: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """SSIM (data range 1) as the realDenoising code, with ``img`` clamped to [0, 1] first.

    RGB: the 3-D SSIM (:func:`calculate_ssim_3d`). Y: the 2-D Gaussian SSIM with replicate borders and no
    ``[5:-5]`` crop, as the official ``_ssim`` of that code.
    """
    _check_pair(img, ref)
    a = _crop(_as_unit_float(img, clamp=True), crop_border)
    b = _crop(_as_unit_float(ref, clamp=True), crop_border)
    if test_y_channel and a.ndim == 3 and a.shape[2] == 3:
        ya = rgb_to_y(a * 255.0)[..., 0].astype(np.float64) / 255.0
        yb = rgb_to_y(b * 255.0)[..., 0].astype(np.float64) / 255.0
        return _ssim_channel(ya, yb, border=cv2.BORDER_REPLICATE, valid=False, peak=1.0)
    return calculate_ssim_3d(a, b, peak=1.0)
