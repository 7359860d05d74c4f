"""Real-noise sets: SIDD-Medium training crops, the SIDD validation blocks, DND (kept as shipped).

* SIDD-Medium (Restormer ``generate_patches_sidd.py``, what MaIR trains on): each NOISY/GT pair is cut into
  512x512 crops at stride 384 (overlap 128) along both axes, plus a last crop flush to the bottom/right border;
  crops are numbered 1.. row by row and named ``<noisy file stem>-<k>.png`` in both ``input_crops`` and
  ``target_crops`` (same names).
* SIDD validation: ``ValidationNoisyBlocksSrgb.mat`` / ``ValidationGtBlocksSrgb.mat`` hold (40, 32, 256, 256, 3)
  uint8 RGB blocks; block ``[i, j]`` becomes ``val/input/<ii>_<jj>.png`` and ``val/target/<ii>_<jj>.png``.
* DND: ``info.mat`` + ``images_srgb/0001.mat..0050.mat`` linked as they are (no ground truth; the evaluator
  reads the .mat files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mair.data.image_io import image_size, list_images, write_png
from mair.data.prepare.common import (
    Context,
    PrepareError,
    count_files,
    count_images,
    dirs_named,
    find_files,
    place_as_png,
    place_file,
    prefer,
    require_dir,
    run_parallel,
    sample,
    show,
    unique_stems,
    write_pair_crops,
)

SIDD_CROP = 512
SIDD_STRIDE = 384
SIDD_VAL_KEYS = ("ValidationNoisyBlocksSrgb", "ValidationGtBlocksSrgb")
DND_IMAGES = 50


def restormer_grid(length: int, patch: int, stride: int) -> list[int]:
    """Crop starts along one axis as Restormer cuts SIDD: ``0, stride, ...`` below ``length - patch``, then
    ``length - patch`` (the crop flush to the border)."""
    if length < patch:
        raise ValueError(f"image side {length} is smaller than the crop {patch}")
    return [*range(0, length - patch, stride), length - patch]


def grid_crops(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int]]:
    """``(top, left)`` of every crop in Restormer's order (rows outer, columns inner)."""
    return [
        (t, s) for t in restormer_grid(height, patch, stride) for s in restormer_grid(width, patch, stride)
    ]


def sidd_crop_name(stem: str, k: int) -> str:
    """Name of crop ``k`` (1-based) of the image with file stem ``stem``: ``<stem>-<k>.png``."""
    return f"{stem}-{k}.png"


def crop_pair(
    noisy: Path, clean: Path, out_in: Path, out_gt: Path, patch: int, stride: int, name_stem: str
) -> tuple[int, int]:
    """Cut one NOISY/GT pair into Restormer-style crops; returns (written, reused) file counts."""
    h, w = image_size(noisy)
    boxes = grid_crops(h, w, patch, stride)
    names = [sidd_crop_name(name_stem, k) for k in range(1, len(boxes) + 1)]
    return write_pair_crops(noisy, clean, boxes, names, patch, out_in, out_gt)


def _sidd_pairs(root: Path) -> list[tuple[Path, Path]]:
    noisy = find_files(root, r".*NOISY.*\.png")
    if not noisy:
        raise PrepareError(
            f"sidd_medium: no *NOISY*.PNG files under {root} (expected SIDD_Medium_Srgb/Data/<scene>/"
            f"<NNNN>_NOISY_SRGB_010.PNG with its <NNNN>_GT_SRGB_010.PNG beside it)"
        )
    pairs, missing = [], []
    for f in noisy:
        gt = f.with_name(f.name.replace("NOISY", "GT"))
        if gt.is_file():
            pairs.append((f, gt))
        else:
            missing.append(str(gt.relative_to(root)))
    if missing:
        raise PrepareError(
            f"sidd_medium: ground truth missing for {len(missing)} noisy image(s): {sample(missing)}"
        )
    return pairs


def paired_names(a: Path, b: Path, where: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """Images of two folders that must hold the same names (by stem); a name in only one of them is an error."""
    ia, ib = unique_stems(list_images(a), str(a)), unique_stems(list_images(b), str(b))
    if set(ia) != set(ib):
        raise PrepareError(
            f"{where}: {a} and {b} must hold the same names; only in one: {sample(set(ia) ^ set(ib))}"
        )
    if not ia:
        raise PrepareError(f"{where}: no images in {a}")
    return ia, ib


def link_pairs(ctx: Context, ia: dict[str, Path], ib: dict[str, Path], out_a: Path, out_b: Path) -> None:
    """Place two same-named image maps as ``<stem>.png`` into ``out_a`` / ``out_b``."""
    for src, out in ((ia, out_a), (ib, out_b)):
        for ok in run_parallel(
            lambda s, src=src, out=out: place_as_png(src[s], out / f"{s}.png"), sorted(src), ctx.workers
        ):
            ctx.tally(ok)


def _precropped(ctx: Context, names: tuple[str, str], keys: tuple[str, str]) -> dict[str, int]:
    """Link an already cut/dumped pair of folders (same file names in both) into the layout."""
    word = "val" if ctx.dataset_id == "sidd_val" else "train"  # bundles may hold both the train and val crops
    a = prefer(dirs_named(ctx.src, [names[0]]), ctx.src, word)[0]
    b = prefer(dirs_named(ctx.src, [names[1]]), ctx.src, word)[0]
    ia, ib = paired_names(a, b, ctx.dataset_id)
    ctx.sources["from"] = f"{show(a, ctx.src)} + {show(b, ctx.src)} (already cut)"
    out_a, out_b = ctx.out / keys[0], ctx.out / keys[1]
    link_pairs(ctx, ia, ib, out_a, out_b)
    return {keys[0]: count_images(out_a), keys[1]: count_images(out_b)}


def prepare_sidd_medium(ctx: Context, patch: int = SIDD_CROP, stride: int = SIDD_STRIDE) -> dict[str, int]:
    """``train/input_crops`` + ``train/target_crops``: 512 crops, stride 384, last crop flush to the border."""
    root = require_dir(ctx.src, "the extracted SIDD_Medium_Srgb (Data/<scene>/*_{NOISY,GT}_SRGB_01x.PNG)")
    out_in, out_gt = ctx.out / "train" / "input_crops", ctx.out / "train" / "target_crops"
    if (
        dirs_named(root, ["input_crops"])
        and dirs_named(root, ["target_crops"])
        and not find_files(root, r".*NOISY.*")
    ):
        return _precropped(ctx, ("input_crops", "target_crops"), ("train/input_crops", "train/target_crops"))
    pairs = _sidd_pairs(root)
    ctx.sources.update(pairs=len(pairs), crop=patch, stride=stride)

    def one(pair: tuple[Path, Path]) -> tuple[int, int]:
        return crop_pair(pair[0], pair[1], out_in, out_gt, patch, stride, pair[0].stem)

    for written, reused in run_parallel(one, pairs, ctx.workers):
        ctx.written += written
        ctx.reused += reused
    n_in, n_gt = count_images(out_in), count_images(out_gt)
    if n_in != n_gt:
        raise PrepareError(f"sidd_medium: {n_in} input crops but {n_gt} target crops in {ctx.out / 'train'}")
    return {"train/input_crops": n_in, "train/target_crops": n_gt}


# ------------------------------------------------------------------------------------------- SIDD validation


def block_name(i: int, j: int) -> str:
    """File name of SIDD validation block ``[i, j]`` (image ``i``, block ``j``): ``<ii>_<jj>.png``."""
    return f"{i:02d}_{j:02d}.png"


def load_mat_array(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of a MATLAB file: v5 through scipy, v7.3 (HDF5) through h5py (axes reversed back)."""
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # pragma: no cover - scipy is in the pipeline extra
        raise PrepareError("reading .mat files needs scipy (pip install scipy)") from exc
    try:
        data: dict[str, Any] = loadmat(str(path), variable_names=[key])
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        try:
            import h5py
        except ImportError as exc:
            raise PrepareError(f"{path} is a MATLAB v7.3 (HDF5) file: reading it needs h5py") from exc
        with h5py.File(path, "r") as f:
            if key not in f:
                raise PrepareError(f"{path}: no variable {key!r}; it holds {sorted(f.keys())}") from None
            return np.asarray(f[key]).transpose()
    except (ValueError, OSError) as exc:
        raise PrepareError(f"cannot read {path} as a MATLAB file: {exc}") from exc
    if key not in data:
        raise PrepareError(
            f"{path}: no variable {key!r}; it holds {sorted(k for k in data if not k.startswith('__'))}"
        )
    return np.asarray(data[key])


def write_blocks(blocks: np.ndarray, out: Path) -> tuple[int, int]:
    """Write an (images, blocks, H, W, 3) RGB uint8 array as ``<ii>_<jj>.png`` files; returns (written, reused)."""
    if blocks.ndim != 5 or blocks.shape[-1] != 3 or blocks.dtype != np.uint8:
        raise PrepareError(
            f"expected (images, blocks, H, W, 3) uint8 blocks, got {blocks.shape} {blocks.dtype}"
        )
    written = reused = 0
    for i in range(blocks.shape[0]):
        for j in range(blocks.shape[1]):
            dst = out / block_name(i, j)
            if dst.exists():
                reused += 1
                continue
            write_png(dst, cv2.cvtColor(np.ascontiguousarray(blocks[i, j]), cv2.COLOR_RGB2BGR))
            written += 1
    return written, reused


def prepare_sidd_val(ctx: Context) -> dict[str, int]:
    """``val/input`` + ``val/target``: the 40x32 validation blocks of the two .mat files as PNG."""
    root = require_dir(ctx.src, "ValidationNoisyBlocksSrgb.mat and ValidationGtBlocksSrgb.mat")
    out_in, out_gt = ctx.out / "val" / "input", ctx.out / "val" / "target"
    mats = {key: find_files(root, rf"{key}\.mat") for key in SIDD_VAL_KEYS}
    if not all(mats.values()):
        if dirs_named(root, ["input_crops"]) and dirs_named(root, ["target_crops"]):
            return _precropped(ctx, ("input_crops", "target_crops"), ("val/input", "val/target"))
        missing = [f"{k}.mat" for k, v in mats.items() if not v]
        raise PrepareError(
            f"sidd_val: missing {', '.join(missing)} under {root} (the SIDD sRGB validation blocks)"
        )
    for key, out in zip(SIDD_VAL_KEYS, (out_in, out_gt), strict=True):
        path = mats[key][0]
        ctx.sources[key] = show(path, root)
        blocks = load_mat_array(path, key)
        written, reused = write_blocks(blocks, out)
        ctx.written += written
        ctx.reused += reused
        del blocks
    n_in, n_gt = count_images(out_in), count_images(out_gt)
    if n_in != n_gt:
        raise PrepareError(
            f"sidd_val: the two .mat files hold different numbers of blocks ({n_in} vs {n_gt})"
        )
    return {"val/input": n_in, "val/target": n_gt}


# ------------------------------------------------------------------------------------------- DND


def dnd_name(k: int) -> str:
    """``images_srgb`` file name of DND image ``k`` (1-based): ``0001.mat``."""
    return f"{k:04d}.mat"


def prepare_dnd(ctx: Context) -> dict[str, int]:
    """DND kept as shipped: ``info.mat`` and ``images_srgb/0001.mat..0050.mat`` (HDF5 MATLAB files)."""
    root = require_dir(ctx.src, "the extracted DND benchmark (info.mat, images_srgb/0001.mat..0050.mat)")
    infos = find_files(root, r"info\.mat")
    folders = dirs_named(root, ["images_srgb"])
    if not infos or not folders:
        what = [w for w, ok in (("info.mat", infos), ("images_srgb/", folders)) if not ok]
        raise PrepareError(
            f"dnd: missing {' and '.join(what)} under {root} (expected info.mat, images_srgb/*.mat)"
        )
    images = folders[0]
    missing = [dnd_name(k) for k in range(1, DND_IMAGES + 1) if not (images / dnd_name(k)).is_file()]
    if missing:
        raise PrepareError(f"dnd: {images} lacks {len(missing)} of 0001.mat..0050.mat: {sample(missing)}")
    ctx.sources.update(info=show(infos[0], root), images=show(images, root))
    ctx.tally(place_file(infos[0], ctx.out / "info.mat"))
    names = [dnd_name(k) for k in range(1, DND_IMAGES + 1)]
    for ok in run_parallel(lambda n: place_file(images / n, ctx.out / "images_srgb" / n), names, ctx.workers):
        ctx.tally(ok)
    return {"images_srgb": count_files(ctx.out / "images_srgb", ".mat"), "info.mat": 1}
