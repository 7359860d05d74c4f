"""The DND benchmark submission bundle (sRGB track), as the official ``test_real_denoising_dnd.py`` writes it.

DND has no public ground truth: results are uploaded to the benchmark server. For each of the 50 images
``images_srgb/%04d.mat`` (MATLAB v7.3, read with h5py and transposed; ``InoisySRGB`` float in [0, 1]) the 20
boxes of ``info.mat`` (``info.boundingboxes``, 1-based inclusive ``[x1, y1, x2, y2]`` as the official code
indexes them: rows ``box[0]-1 : box[2]``, columns ``box[1]-1 : box[3]``) are denoised, clamped to [0, 1], and
saved as ``%04d.mat`` holding ``Idenoised`` (a 1x20 cell array: an object array of float32 HxWx3 patches),
``israw = False`` and ``eval_version = "1.0"``. The official script uses ``np.object``, which fails on numpy
>= 1.24; we use ``object``. The .mat files are zipped for upload.

Each .mat is written atomically, so a rerun skips the images already done (unless the fingerprint of weights
and settings changed).
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mair.common.atomic import atomic_open, atomic_write_text
from mair.common.errors import EvaluationError

__all__ = ["read_dnd_boxes", "read_dnd_image", "write_dnd_submission"]


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise EvaluationError("reading DND needs h5py (MATLAB v7.3 files): pip install h5py") from None
    return h5py


def read_dnd_boxes(info_path: Path) -> list[np.ndarray]:
    """Per image, its (20, 4) box array from ``info.mat`` (``np.array(info[ref]).T`` as the official code)."""
    h5py = _h5py()
    with h5py.File(info_path, "r") as infos:
        info = infos["info"]
        bb = info["boundingboxes"]
        return [np.array(info[ref]).T for ref in np.asarray(bb[0])]


def read_dnd_image(path: Path) -> np.ndarray:
    """``InoisySRGB`` of one ``images_srgb/%04d.mat`` as float32 HWC in [0, 1]."""
    h5py = _h5py()
    with h5py.File(path, "r") as img:
        return np.float32(np.array(img["InoisySRGB"]).T)


def write_dnd_submission(
    restore: Callable[[np.ndarray], np.ndarray],
    images_dir: Path,
    info_path: Path,
    out_dir: Path,
    fingerprint: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Denoise every box of every DND image with ``restore`` and write the submission; return the zip path.

    ``restore`` maps a float32 HWC RGB patch in [0, 1] to its restored float32 HWC patch (clamped here again).
    The bundle is ``out_dir/%04d.mat`` and ``out_dir.with_suffix('.zip')``.
    """
    from scipy.io import savemat

    images = sorted(p for p in Path(images_dir).glob("*.mat") if not p.name.startswith("."))
    if not images:
        raise EvaluationError(f"no DND images (*.mat) in {images_dir}")
    boxes = read_dnd_boxes(info_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp_path = out_dir / ".fingerprint.json"
    fp = json.dumps(dict(fingerprint or {}), sort_keys=True, default=str)
    if fp_path.is_file() and fp_path.read_text() != fp:
        print(f"note: {out_dir} was made with other weights or settings; starting it again", file=sys.stderr)
        for old in out_dir.glob("*.mat"):
            old.unlink()
    atomic_write_text(fp_path, fp)
    for n, path in enumerate(images, 1):
        target = out_dir / path.name
        if target.is_file():
            continue
        index = int(path.stem) - 1 if path.stem.isdigit() else n - 1
        if not 0 <= index < len(boxes):
            raise EvaluationError(f"{path.name}: no bounding boxes for image {index + 1} in {info_path}")
        noisy = read_dnd_image(path)
        box = boxes[index]
        denoised = np.zeros((box.shape[0],), dtype=object)
        for k in range(box.shape[0]):
            r0, r1, c0, c1 = int(box[k, 0] - 1), int(box[k, 2]), int(box[k, 1] - 1), int(box[k, 3])
            patch = np.ascontiguousarray(noisy[r0:r1, c0:c1, :])
            denoised[k] = np.clip(np.asarray(restore(patch), dtype=np.float32), 0.0, 1.0)
        with atomic_open(target, "wb") as handle:
            savemat(handle, {"Idenoised": denoised, "israw": False, "eval_version": "1.0"})
        if progress:
            print(f"\rDND: {n}/{len(images)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    bundle = out_dir.with_suffix(".zip")
    with atomic_open(bundle, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in images:
            zf.write(out_dir / path.name, arcname=path.name)
    return bundle
