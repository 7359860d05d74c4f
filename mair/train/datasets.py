"""Torch datasets over the prepared layouts (docs/contracts.md) for training and validation.

Training datasets (one class per official pipeline):

* :class:`SRTrainDataset` (classic and lightweight SR; ``PairedImageDataset``): ``paired_random_crop`` of an
  LR patch and the matching HR patch, then hflip / vflip / transpose, each with probability 1/2.
* :class:`ColorDenoiseTrainDataset` (``task: denoising_color``): Gaussian noise ``N(0, sigma/255)`` is added to
  the *whole* BGR float image (float64, unclipped, unquantised) before the crop, as the official code does.
* :class:`UNetTrainDataset` (real denoising, deblurring, dehazing; ``Dataset_PairedImage`` and
  ``Dehaze_Dataset``): reflect padding of images smaller than the patch, ``paired_random_crop``, then one of
  the 8 dihedral transforms.

Each item is addressed by a key ``(epoch, k)`` from :class:`mair.train.sampler.EnlargedSampler` (``k`` is the
enlarged index; the image is ``k % len``) or by a plain index. The sample's randomness (crop offsets, flips,
noise) comes from ``numpy.random.Generator(PCG64([seed, epoch, k]))``, not from worker state: results do
not depend on the number of loader workers and a resumed run sees the same samples. This deliberately differs
from the official loaders, whose per-worker RNG streams are re-seeded identically every epoch, so
that crops, flips and noise repeat each epoch there.

File lists are sorted (the official order is ``os.scandir`` order). Problems are
:class:`DatasetError` messages naming the dataset, the folder or file, and the command that fixes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mair.data import paths
from mair.data.image_io import IMAGE_EXTENSIONS, png_size, read_color
from mair.experiments import DatasetRef, Experiment
from mair.experiments.spec import Noise
from mair.tasks import TASKS

__all__ = [
    "ColorDenoiseTrainDataset",
    "DatasetError",
    "ImagePair",
    "PatchSizeError",
    "SRTrainDataset",
    "UNetTrainDataset",
    "ValidationDataset",
    "augment_flip_rot",
    "build_train_dataset",
    "build_val_dataset",
    "check_patch_sizes",
    "dataset_folder",
    "dihedral",
    "list_pairs",
    "paired_random_crop",
    "reflect_pad",
    "sample_rng",
]

PathLike = str | os.PathLike[str]
Key = int | tuple[int, int] | Sequence[int]


class DatasetError(Exception):
    """A training or validation dataset is missing, unprepared, inconsistent or unusable."""


class PatchSizeError(DatasetError):
    """An image is smaller than the training patch (or LR and HR sizes do not match the scale)."""


@dataclass(frozen=True)
class ImagePair:
    """One training or validation sample: a name, the input file (None: synthesised) and the target file."""

    name: str
    lq: Path | None
    gt: Path


# ------------------------------------------------------------------------------------------------ folders


def prepare_command(dataset_id: str, scope: str) -> str:
    """The command that creates the prepared folder of ``dataset_id`` in ``scope``."""
    return "mair data demo" if scope == "demo" else f"mair data prepare {dataset_id}"


def dataset_folder(dataset_id: str, scope: str, data_root: PathLike | None = None) -> Path:
    """The complete prepared folder of ``dataset_id``; :class:`DatasetError` when absent or unfinished."""
    folder = paths.prepared_dir(dataset_id, scope, data_root)
    command = prepare_command(dataset_id, scope)
    if not folder.is_dir():
        raise DatasetError(
            f"dataset {dataset_id!r} ({scope} scope) is missing: {folder} does not exist. "
            f"Create it with `{command}`" + (" (after downloading it)." if scope == "paper" else ".")
        )
    if not (folder / paths.PREPARED_MARKER).is_file():
        raise DatasetError(
            f"dataset {dataset_id!r} ({scope} scope) is not prepared: {folder} has no "
            f"{paths.PREPARED_MARKER} (preparation unfinished or interrupted). Run `{command}`."
        )
    return folder


def _images(folder: Path, dataset_id: str, scope: str) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(
            f"dataset {dataset_id!r} ({scope} scope): expected folder {folder} is missing; the prepared layout "
            f"is incomplete. Re-run `{prepare_command(dataset_id, scope)}`."
        )
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DatasetError(
            f"dataset {dataset_id!r} ({scope} scope): no images in {folder}. "
            f"Re-run `{prepare_command(dataset_id, scope)}`."
        )
    return files


def hazy_gt_name(hazy_name: str) -> str:
    """The clear image of a RESIDE hazy file: basename up to the first ``_``, extension ``.png``."""
    return hazy_name.split("_")[0].split(".")[0] + ".png"


def list_pairs(ref: DatasetRef, root: Path, scope: str, scale: int = 1) -> list[ImagePair]:
    """Sorted pairs of a dataset reference (``id, gt, lq, pairing``) inside prepared folder ``root``."""
    dataset_id, pairing = ref.id, ref.pairing
    gt_dir = root / (ref.gt or "HR")
    if pairing == "synthetic_noise":
        return [ImagePair(p.name, None, p) for p in _images(gt_dir, dataset_id, scope)]
    lq_dir = root / (ref.lq or f"LR_bicubic/X{scale}")
    if pairing == "same_name":
        gts = _images(gt_dir, dataset_id, scope)
        lqs = {p.name: p for p in _images(lq_dir, dataset_id, scope)}
        pairs = []
        for gt in gts:
            lq = lqs.get(gt.name) or lqs.get(f"{gt.stem}x{scale}{gt.suffix}")  # tolerate EDSR <name>x<s>
            if lq is None:
                raise DatasetError(
                    f"dataset {dataset_id!r}: {lq_dir} has no input for {gt.name} (LR names must equal HR names)"
                )
            pairs.append(ImagePair(gt.name, lq, gt))
        if len(pairs) != len(lqs):
            raise DatasetError(
                f"dataset {dataset_id!r}: {gt_dir} and {lq_dir} hold different numbers of images "
                f"({len(pairs)} vs {len(lqs)})"
            )
        return pairs
    if pairing == "hazy_prefix":
        pairs = []
        if not gt_dir.is_dir():
            _images(gt_dir, dataset_id, scope)  # raises the missing-folder error
        for hazy in _images(lq_dir, dataset_id, scope):
            gt = gt_dir / hazy_gt_name(hazy.name)
            if not gt.is_file():
                raise DatasetError(f"dataset {dataset_id!r}: no clear image {gt} for hazy image {hazy}")
            pairs.append(ImagePair(hazy.name, hazy, gt))
        return pairs
    raise DatasetError(f"dataset {dataset_id!r}: pairing {pairing!r} cannot be used for training or validation")


# ------------------------------------------------------------------------------------------------ transforms


def sample_rng(seed: int, key: Key) -> np.random.Generator:
    """The generator of one sample: ``PCG64([seed, epoch, k])`` for a key ``(epoch, k)``, ``[seed, 0, i]`` for i."""
    if isinstance(key, int | np.integer):
        epoch, k = 0, int(key)
    else:
        epoch, k = (int(v) for v in key)
    return np.random.Generator(np.random.PCG64([int(seed), epoch, k]))


def _index(key: Key, length: int) -> int:
    k = int(key) if isinstance(key, int | np.integer) else int(key[1])
    return k % length


def read_bgr(path: Path) -> np.ndarray:
    """An image as the official loaders read it: ``IMREAD_COLOR`` BGR, float32 in [0, 1]."""
    try:
        return read_color(path).astype(np.float32) / np.float32(255.0)
    except (FileNotFoundError, ValueError) as error:
        raise DatasetError(str(error)) from None


def paired_random_crop(
    gt: np.ndarray, lq: np.ndarray, lq_patch: int, scale: int, rng: np.random.Generator, name: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``lq_patch`` crop of ``lq`` (top-left uniform over every valid position) and the HR crop at
    ``x scale``; :class:`PatchSizeError` if the sizes do not match the scale or the image is too small."""
    h_lq, w_lq = lq.shape[:2]
    h_gt, w_gt = gt.shape[:2]
    if (h_gt, w_gt) != (h_lq * scale, w_lq * scale):
        raise PatchSizeError(f"{name}: target {h_gt}x{w_gt} is not x{scale} of input {h_lq}x{w_lq}")
    if h_lq < lq_patch or w_lq < lq_patch:
        raise PatchSizeError(
            f"{name}: input {h_lq}x{w_lq} is smaller than the training patch "
            f"{lq_patch}x{lq_patch} (target patch {lq_patch * scale}x{lq_patch * scale})"
        )
    top = int(rng.integers(0, h_lq - lq_patch + 1))
    left = int(rng.integers(0, w_lq - lq_patch + 1))
    lq = lq[top : top + lq_patch, left : left + lq_patch, ...]
    gt = gt[top * scale : (top + lq_patch) * scale, left * scale : (left + lq_patch) * scale, ...]
    return gt, lq


def augment_flip_rot(
    images: Sequence[np.ndarray], hflip: bool, rot: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    """BasicSR's ``augment``: hflip, vflip, then an (H, W) transpose, each with probability 1/2, the same for all
    images (hflip only when ``hflip``; vflip and transpose only when ``rot``)."""
    draws = rng.random(3)
    do_h, do_v, do_t = hflip and draws[0] < 0.5, rot and draws[1] < 0.5, rot and draws[2] < 0.5
    out = []
    for img in images:
        if do_h:
            img = img[:, ::-1, ...]
        if do_v:
            img = img[::-1, :, ...]
        if do_t:
            img = img.transpose(1, 0, 2) if img.ndim == 3 else img.T
        out.append(np.ascontiguousarray(img))
    return out


def dihedral(img: np.ndarray, mode: int) -> np.ndarray:
    """Restormer's ``data_augmentation``: mode 0..7 = identity, flipud, rot90, rot90+flipud, rot180,
    rot180+flipud, rot270, rot270+flipud (``np.rot90``, counter-clockwise; the flip after the rotation)."""
    if not 0 <= mode <= 7:
        raise ValueError(f"dihedral mode must be in 0..7, got {mode}")
    out = np.rot90(img, k=mode // 2) if mode >= 2 else img
    if mode % 2 == 1:
        out = np.flipud(out)
    return np.ascontiguousarray(out)


def reflect_pad(gt: np.ndarray, lq: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """The official ``padding``: reflect-pad bottom and right (``cv2.BORDER_REFLECT``) up to ``patch``."""
    h, w = lq.shape[:2]
    ph, pw = max(0, patch - h), max(0, patch - w)
    if ph == 0 and pw == 0:
        return gt, lq
    lq = cv2.copyMakeBorder(lq, 0, ph, 0, pw, cv2.BORDER_REFLECT)
    gt = cv2.copyMakeBorder(gt, 0, ph, 0, pw, cv2.BORDER_REFLECT)
    return gt, lq


def to_tensor(img_bgr: np.ndarray) -> torch.Tensor:
    """HWC BGR (any float) -> CHW RGB float32 (``img2tensor``: float32 first, then the channel swap)."""
    rgb = img_bgr.astype(np.float32)[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


# ------------------------------------------------------------------------------------------------ training


class _PairDataset(Dataset):
    """Common parts: the pair list, the seed and the key handling."""

    def __init__(self, pairs: Sequence[ImagePair], seed: int) -> None:
        if not pairs:
            raise DatasetError("the training dataset holds no images")
        self.pairs = list(pairs)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def _pair_rng(self, key: Key) -> tuple[ImagePair, np.random.Generator]:
        return self.pairs[_index(key, len(self.pairs))], sample_rng(self.seed, key)


class SRTrainDataset(_PairDataset):
    """Classic / lightweight SR training pairs (``PairedImageDataset``, phase train)."""

    def __init__(
        self, pairs: Sequence[ImagePair], lq_patch: int, scale: int, seed: int, hflip: bool = True, rot: bool = True
    ) -> None:
        super().__init__(pairs, seed)
        self.lq_patch, self.scale, self.hflip, self.rot = int(lq_patch), int(scale), hflip, rot

    def __getitem__(self, key: Key) -> dict[str, Any]:
        pair, rng = self._pair_rng(key)
        assert pair.lq is not None
        gt, lq = read_bgr(pair.gt), read_bgr(pair.lq)
        gt, lq = paired_random_crop(gt, lq, self.lq_patch, self.scale, rng, str(pair.lq))
        gt, lq = augment_flip_rot([gt, lq], self.hflip, self.rot, rng)
        return {"lq": to_tensor(lq), "gt": to_tensor(gt)}


class ColorDenoiseTrainDataset(_PairDataset):
    """Gaussian colour denoising (``task: denoising_color``): noise on the whole BGR image, then crop."""

    def __init__(
        self, pairs: Sequence[ImagePair], patch: int, sigma: float, seed: int, hflip: bool = True, rot: bool = True
    ) -> None:
        super().__init__(pairs, seed)
        self.patch, self.sigma, self.hflip, self.rot = int(patch), float(sigma), hflip, rot

    def __getitem__(self, key: Key) -> dict[str, Any]:
        pair, rng = self._pair_rng(key)
        gt = read_bgr(pair.gt)
        lq = gt + rng.normal(0.0, self.sigma / 255.0, gt.shape)  # float64, unclipped, before the crop
        gt, lq = paired_random_crop(gt, lq, self.patch, 1, rng, str(pair.gt))
        gt, lq = augment_flip_rot([gt, lq], self.hflip, self.rot, rng)
        return {"lq": to_tensor(lq), "gt": to_tensor(gt)}


class UNetTrainDataset(_PairDataset):
    """U-Net tasks (``Dataset_PairedImage`` / ``Dehaze_Dataset``, phase train): pad, crop, dihedral."""

    def __init__(self, pairs: Sequence[ImagePair], patch: int, seed: int, geometric_augs: bool = True) -> None:
        super().__init__(pairs, seed)
        self.patch, self.geometric_augs = int(patch), geometric_augs

    def __getitem__(self, key: Key) -> dict[str, Any]:
        pair, rng = self._pair_rng(key)
        assert pair.lq is not None
        gt, lq = read_bgr(pair.gt), read_bgr(pair.lq)
        if gt.shape != lq.shape:
            raise PatchSizeError(
                f"{pair.lq}: input {lq.shape[0]}x{lq.shape[1]} and target {pair.gt} "
                f"{gt.shape[0]}x{gt.shape[1]} differ in size"
            )
        gt, lq = reflect_pad(gt, lq, self.patch)
        gt, lq = paired_random_crop(gt, lq, self.patch, 1, rng, str(pair.lq))
        if self.geometric_augs:
            mode = int(rng.integers(0, 8))
            gt, lq = dihedral(gt, mode), dihedral(lq, mode)
        return {"lq": to_tensor(lq), "gt": to_tensor(gt)}


# ------------------------------------------------------------------------------------------------ validation


class ValidationDataset(Dataset):
    """Whole validation images: ``lq`` as a (C, H, W) float32 RGB tensor, ``gt`` as uint8 HWC RGB.

    SR targets are cropped to ``lq x scale`` (the official implicit mod-crop); colour denoising gets the
    official test noise (seed per image, BGR draw order, unclipped; :mod:`mair.evaluate.noise`).
    """

    def __init__(
        self, pairs: Sequence[ImagePair], scale: int = 1, noise: Noise | None = None, dataset_id: str = ""
    ) -> None:
        if not pairs:
            raise DatasetError(f"validation dataset {dataset_id!r} holds no images")
        if noise is not None:
            from mair.evaluate.noise import check_official_noise

            try:
                check_official_noise(noise)
            except ValueError as error:
                raise DatasetError(f"validation dataset {dataset_id!r}: {error}") from None
        self.pairs, self.scale, self.noise, self.dataset_id = list(pairs), int(scale), noise, dataset_id

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        gt_rgb = np.ascontiguousarray(read_color(pair.gt)[..., ::-1])
        if pair.lq is None:
            from mair.evaluate.noise import add_test_noise

            if not self.noise:
                raise DatasetError(f"validation dataset {self.dataset_id!r}: synthetic noise without val.noise")
            lq_rgb = add_test_noise(gt_rgb, float(self.noise.sigma), seed=self.noise.seed)
            lq = torch.from_numpy(np.ascontiguousarray(lq_rgb.astype(np.float32).transpose(2, 0, 1)))
            return {"lq": lq, "gt": gt_rgb, "name": pair.name}
        lq = to_tensor(read_bgr(pair.lq))
        h, w = lq.shape[-2:]
        s = self.scale
        if gt_rgb.shape[0] < h * s or gt_rgb.shape[1] < w * s:
            raise PatchSizeError(
                f"{pair.gt}: target {gt_rgb.shape[0]}x{gt_rgb.shape[1]} is smaller than input {h}x{w} x{s}"
            )
        return {"lq": lq, "gt": np.ascontiguousarray(gt_rgb[: h * s, : w * s]), "name": pair.name}


# ------------------------------------------------------------------------------------------------ builders


def _train_pairs(exp: Experiment, scope: str, data_root: PathLike | None) -> list[ImagePair]:
    pairs: list[ImagePair] = []
    for ref in exp.train.datasets:
        root = dataset_folder(ref.id, scope, data_root)
        pairs.extend(list_pairs(ref, root, scope, exp.scale))
    return pairs


def build_train_dataset(
    exp: Experiment, scope: str, data_root: PathLike | None = None, seed: int | None = None
) -> Dataset:
    """The training dataset of experiment ``exp`` (its ``task`` decides the pipeline)."""
    train = exp.train
    seed = int(train.seed if seed is None else seed)
    pairs = _train_pairs(exp, scope, data_root)
    aug, patch = train.augmentation, train.patch
    task = TASKS.get(exp.task)
    kind = task.training_pair if task else None
    if kind == "lr_hr":
        return SRTrainDataset(pairs, patch.lq_size, exp.scale, seed, aug.hflip, aug.rot)
    if kind == "synthetic_noise":
        return ColorDenoiseTrainDataset(pairs, patch.gt_size, float(train.noise_sigma), seed, aug.hflip, aug.rot)
    if kind == "paired":
        return UNetTrainDataset(pairs, patch.gt_size, seed, aug.geometric_augs)
    raise DatasetError(f"experiment {exp.id!r}: no training pipeline for task {exp.task!r}")


def build_val_dataset(exp: Experiment, scope: str, data_root: PathLike | None = None) -> ValidationDataset:
    """The validation set of ``exp`` (``val.dataset``)."""
    ref = exp.val.dataset
    root = dataset_folder(ref.id, scope, data_root)
    pairs = list_pairs(ref, root, scope, exp.scale)
    return ValidationDataset(pairs, exp.scale, exp.val.noise, ref.id)


def _size(path: Path, decode: bool) -> tuple[int, int] | None:
    size = png_size(path)
    if size is None and decode:
        img = read_color(path)
        size = (int(img.shape[0]), int(img.shape[1]))
    return size


def check_patch_sizes(dataset: Dataset, max_decode: int = 16) -> int:
    """Check before training that every image is large enough for the patch (and LR/HR sizes fit the scale).

    PNG sizes come from the file header, so every PNG is checked; images in other formats are decoded, at most
    ``max_decode`` of them (the rest are checked when loaded). Returns the number of images checked; raises
    :class:`PatchSizeError` naming the file and both sizes.
    """
    checked, decoded = 0, 0
    for pair in getattr(dataset, "pairs", []):
        decode = decoded < max_decode
        gt_size = _size(pair.gt, decode)
        decoded += int(gt_size is not None and pair.gt.suffix.lower() != ".png")
        lq_size = _size(pair.lq, decode) if pair.lq is not None else gt_size
        if gt_size is None or lq_size is None:
            continue
        checked += 1
        if isinstance(dataset, SRTrainDataset):
            s, p = dataset.scale, dataset.lq_patch
            if gt_size != (lq_size[0] * s, lq_size[1] * s):
                raise PatchSizeError(
                    f"{pair.gt}: target {gt_size[0]}x{gt_size[1]} is not x{s} of input "
                    f"{pair.lq} {lq_size[0]}x{lq_size[1]}"
                )
            if min(lq_size) < p:
                raise PatchSizeError(
                    f"{pair.lq}: input {lq_size[0]}x{lq_size[1]} is smaller than the training "
                    f"patch {p}x{p} (target patch {p * s}x{p * s})"
                )
        elif isinstance(dataset, ColorDenoiseTrainDataset):
            if min(gt_size) < dataset.patch:
                raise PatchSizeError(
                    f"{pair.gt}: image {gt_size[0]}x{gt_size[1]} is smaller than the training "
                    f"patch {dataset.patch}x{dataset.patch}"
                )
        elif isinstance(dataset, UNetTrainDataset) and gt_size != lq_size:  # small images are padded
            raise PatchSizeError(
                f"{pair.lq}: input {lq_size[0]}x{lq_size[1]} and target {pair.gt} "
                f"{gt_size[0]}x{gt_size[1]} differ in size"
            )
    return checked
