"""The Gaussian test noise of colour denoising, bit-for-bit as the official test.

The official ``PairedImageDataset`` (``task: denoising_color``, phase != train) reads the clean image with
cv2 (BGR uint8), converts it to float32 / 255, calls ``np.random.seed(0)`` and adds ``np.random.normal(0,
sigma / 255, img.shape)`` (float64), without clipping or quantising. The noise is therefore the first H*W*3
normals of seed 0 in C order over (H, W, BGR channel). We draw from a private
``np.random.RandomState(seed)`` (the same stream as the global RNG after ``np.random.seed``) so the global
state is left alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["add_test_noise", "check_official_noise"]


def check_official_noise(noise: Any) -> None:
    """Raise ValueError unless ``noise`` (an experiment's ``val.noise`` or ``test.noise``) asks for the official
    test noise, the only one implemented: reseeded per image, drawn in BGR order, unclipped."""
    if noise.channel_order.lower() != "bgr" or noise.clip or not noise.reseed_per_image:
        raise ValueError(
            "only the official test noise is implemented (seed per image, BGR order, unclipped); "
            f"got {dataclasses.asdict(noise)}"
        )


def add_test_noise(clean_rgb: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Noisy version of an HWC RGB image (uint8, or float in [0, 1]) as the official test; float64 RGB,
    unclipped.

    Grey (H, W) or (H, W, 1) images are broadcast to 3 identical channels first, as ``cv2.IMREAD_COLOR`` does.
    """
    img = np.asarray(clean_rgb)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"expected an HxWx3 (or grey) image, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.dtype == np.uint8:
        bgr = img[..., ::-1].astype(np.float32) / 255.0
    elif np.issubdtype(img.dtype, np.floating):
        bgr = img[..., ::-1].astype(np.float32)
    else:
        raise TypeError(f"expected uint8 or float pixels, got {img.dtype}")
    noise = np.random.RandomState(seed).normal(0.0, sigma / 255.0, bgr.shape)
    noisy_bgr = bgr + noise
    return np.ascontiguousarray(noisy_bgr[..., ::-1])
