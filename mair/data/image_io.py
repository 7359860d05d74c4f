"""Image reading and writing (OpenCV based), with atomic PNG writes.

Conventions:

* arrays are OpenCV's: ``HxW`` (grey) or ``HxWxC`` with channels in **BGR** (or BGRA) order;
* :func:`read_image` keeps the file's depth (8 or 16 bit) and channel count unless told otherwise;
* :func:`read_color` reads as the official loaders do (``cv2.IMREAD_COLOR``): always 3-channel 8-bit BGR, grey
  replicated to three channels, alpha dropped (not composited), 16-bit scaled down to 8 bit by OpenCV;
* paths may hold any characters (``np.fromfile`` + ``cv2.imdecode`` rather than ``cv2.imread``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from mair.common.atomic import atomic_write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")


def is_image(path: str | os.PathLike[str]) -> bool:
    """True for a file name with a known image extension (case-insensitive), ignoring hidden files."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (optionally below it), sorted by their path relative to ``folder``."""
    root = Path(folder)
    it = root.rglob("*") if recursive else root.iterdir()
    files = [p for p in it if p.is_file() and is_image(p)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _decode(path: Path, flags: int) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    img = cv2.imdecode(data, flags)
    if img is None:
        raise ValueError(f"cannot decode image {path} (corrupt or unsupported format)")
    return img


def read_image(path: str | os.PathLike[str], drop_alpha: bool = True) -> np.ndarray:
    """Read an image as stored: grey stays ``HxW``, colour is BGR, 8- or 16-bit kept; alpha dropped by default.

    JPEG files are read with ``IMREAD_COLOR`` semantics for orientation (EXIF rotation applied) as the official
    loaders would see them; other formats are read unchanged.
    """
    p = Path(path)
    if p.suffix.lower() in (".jpg", ".jpeg"):
        img = _decode(p, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    else:
        img = _decode(p, cv2.IMREAD_UNCHANGED)
    if img.ndim == 3 and img.shape[2] == 4 and drop_alpha:
        img = np.ascontiguousarray(img[:, :, :3])
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img


def read_color(path: str | os.PathLike[str]) -> np.ndarray:
    """Read as ``cv2.IMREAD_COLOR`` does: uint8 ``HxWx3`` BGR (what the official data loaders use)."""
    return _decode(Path(path), cv2.IMREAD_COLOR)


def read_float(path: str | os.PathLike[str]) -> np.ndarray:
    """:func:`read_color` as float64 in [0, 1]."""
    return read_color(path).astype(np.float64) / 255.0


def encode_png(img: np.ndarray, compression: int = 3) -> bytes:
    """PNG bytes of a uint8/uint16 ``HxW``, ``HxWx3`` (BGR) or ``HxWx4`` (BGRA) array."""
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16 data, got {img.dtype}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3, 4))):
        raise ValueError(f"PNG needs HxW, HxWx3 or HxWx4 data, got shape {img.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: str | os.PathLike[str], img: np.ndarray, compression: int = 3) -> None:
    """Write ``img`` (OpenCV channel order) as PNG at ``path``, atomically."""
    atomic_write_bytes(path, encode_png(img, compression))


def write_jpeg(path: str | os.PathLike[str], img: np.ndarray, quality: int = 95) -> None:
    """Write a uint8 image as baseline JPEG at ``path``, atomically (used for demo sets that mimic JPEG sets)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def png_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG header without decoding, or None when the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of an image file; PNG headers are read directly, other formats are decoded."""
    size = png_size(path)
    if size is not None:
        return size
    img = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    return int(img.shape[0]), int(img.shape[1])
