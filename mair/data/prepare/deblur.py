"""Motion deblurring sets: GoPro (training crops + full test frames) and HIDE (test).

* GoPro from ``GOPRO_Large/{train,test}/<sequence>/{blur,sharp}/<frame>.png``: the ``blur`` frames (not
  ``blur_gamma``, as in the processed copies MaIR/NAFNet/Restormer use) pair with ``sharp`` by frame name; a frame
  is named ``<sequence>-<frame>.png``. Processed copies (``train/input`` + ``train/target``) are taken as they are.
* Training crops follow NAFNet ``scripts/data_preparation/gopro.py`` (BasicSR ``extract_subimages``): 512x512,
  step 256, ``thresh_size`` 0 (an extra crop flush to the border when anything is left over), numbered 1.. row by
  row and named ``<frame>_s<kkk>.png`` in both ``train/input_crops`` and ``train/target_crops``.
  MaIR reads the same crops from LMDB; we keep PNG folders (same pixels).
* HIDE: ``HIDE_dataset/test/{test-close-ups,test-long-shot}/*.png`` paired by name with ``HIDE_dataset/GT/``, or a
  processed ``test/{input,target}``; written to ``test/input`` and ``test/target``.
"""

from __future__ import annotations

from pathlib import Path

from mair.data.image_io import image_size, list_images
from mair.data.prepare.common import (
    Context,
    PrepareError,
    count_images,
    dirs_named,
    prefer,
    require_dir,
    run_parallel,
    sample,
    show,
    unique_stems,
    write_pair_crops,
)
from mair.data.prepare.realnoise import link_pairs, paired_names

GOPRO_CROP = 512
GOPRO_STEP = 256


def basicsr_grid(length: int, crop: int, step: int, thresh: int = 0) -> list[int]:
    """Crop starts along one axis as BasicSR ``extract_subimages`` cuts: ``0, step, ...`` up to
    ``length - crop``, plus ``length - crop`` when more than ``thresh`` pixels would be left over."""
    if length < crop:
        raise ValueError(f"image side {length} is smaller than the crop {crop}")
    starts = list(range(0, length - crop + 1, step))
    if length - (starts[-1] + crop) > thresh:
        starts.append(length - crop)
    return starts


def subimage_name(stem: str, index: int) -> str:
    """Name of sub-image ``index`` (1-based) of ``stem``: ``<stem>_s<index:03d>.png`` (BasicSR)."""
    return f"{stem}_s{index:03d}.png"


def gopro_frame_name(sequence: str, frame_stem: str) -> str:
    """File stem of a GOPRO_Large frame in the prepared layout: ``<sequence>-<frame>``."""
    return f"{sequence}-{frame_stem}"


def crop_subimages(
    blur: Path, sharp: Path, out_in: Path, out_gt: Path, stem: str, crop: int, step: int
) -> tuple[int, int]:
    """Cut one blur/sharp pair into BasicSR sub-images; returns (written, reused) file counts."""
    h, w = image_size(blur)
    boxes = [(t, s) for t in basicsr_grid(h, crop, step) for s in basicsr_grid(w, crop, step)]
    names = [subimage_name(stem, k) for k in range(1, len(boxes) + 1)]
    return write_pair_crops(blur, sharp, boxes, names, crop, out_in, out_gt)


def gopro_frames(split: Path, where: str) -> dict[str, tuple[Path, Path]]:
    """``{frame name: (blurred, sharp)}`` of one GoPro split folder (raw GOPRO_Large or processed layout)."""
    inputs = prefer(dirs_named(split, ["input"]), split, "gopro")
    targets = prefer(dirs_named(split, ["target"]), split, "gopro")
    if inputs and targets:
        ia, ib = paired_names(inputs[0], targets[0], where)
        return {s: (ia[s], ib[s]) for s in sorted(ia)}
    frames: dict[str, tuple[Path, Path]] = {}
    for sharp_dir in dirs_named(split, ["sharp"]):
        blur_dir = sharp_dir.parent / "blur"
        if not blur_dir.is_dir():
            raise PrepareError(f"{where}: {sharp_dir} has no sibling blur/ folder")
        ia, ib = paired_names(blur_dir, sharp_dir, where)
        for s in sorted(ia):
            name = gopro_frame_name(sharp_dir.parent.name, s)
            if name in frames:
                raise PrepareError(f"{where}: frame {name} appears twice under {split}")
            frames[name] = (ia[s], ib[s])
    if not frames:
        raise PrepareError(
            f"{where}: no frames under {split} (expected <sequence>/blur/*.png + <sequence>/sharp/*.png as in "
            f"GOPRO_Large, or input/ + target/)"
        )
    return frames


def _split_dir(root: Path, name: str, dataset_id: str) -> Path:
    hits = dirs_named(root, [name])
    if not hits:
        raise PrepareError(f"{dataset_id}: no {name}/ folder under {root} (expected GOPRO_Large/{name}/...)")
    return hits[0]


def prepare_gopro(ctx: Context, crop: int = GOPRO_CROP, step: int = GOPRO_STEP) -> dict[str, int]:
    """``train/{input,target}_crops`` (512 crops, step 256) and ``test/{input,target}`` (full frames)."""
    root = require_dir(ctx.src, "the extracted GOPRO_Large ({train,test}/<sequence>/{blur,sharp}/*.png)")
    train = gopro_frames(_split_dir(root, "train", "gopro"), "gopro train")
    test = gopro_frames(_split_dir(root, "test", "gopro"), "gopro test")
    ctx.sources.update(train_frames=len(train), test_frames=len(test), crop=crop, step=step, blur="blur")
    out_in, out_gt = ctx.out / "train" / "input_crops", ctx.out / "train" / "target_crops"

    def one(name: str) -> tuple[int, int]:
        blur, sharp = train[name]
        return crop_subimages(blur, sharp, out_in, out_gt, name, crop, step)

    for written, reused in run_parallel(one, sorted(train), ctx.workers):
        ctx.written += written
        ctx.reused += reused
    link_pairs(
        ctx,
        {k: v[0] for k, v in test.items()},
        {k: v[1] for k, v in test.items()},
        ctx.out / "test" / "input",
        ctx.out / "test" / "target",
    )
    return {
        "train/input_crops": count_images(out_in),
        "train/target_crops": count_images(out_gt),
        "test/input": count_images(ctx.out / "test" / "input"),
        "test/target": count_images(ctx.out / "test" / "target"),
    }


def prepare_hide(ctx: Context) -> dict[str, int]:
    """``test/input`` + ``test/target``: the 2025 HIDE test pairs."""
    root = require_dir(
        ctx.src, "the extracted HIDE_dataset (test/test-*/*.png + GT/*.png) or test/{input,target}"
    )
    inputs, targets = (
        prefer(dirs_named(root, ["input"]), root, "hide"),
        prefer(dirs_named(root, ["target"]), root, "hide"),
    )
    if inputs and targets:
        ia, ib = paired_names(inputs[0], targets[0], "hide")
        ctx.sources["from"] = f"{show(inputs[0], root)} + {show(targets[0], root)}"
    else:
        gts, tests = dirs_named(root, ["GT"]), dirs_named(root, ["test"])
        if not gts or not tests:
            what = " and ".join(w for w, ok in (("GT/", gts), ("test/", tests)) if not ok)
            raise PrepareError(
                f"hide: no {what} folder under {root} (expected HIDE_dataset/GT and HIDE_dataset/test)"
            )
        blurred = list_images(tests[0], recursive=True)
        if not blurred:
            raise PrepareError(
                f"hide: no images under {tests[0]} (expected test-close-ups/, test-long-shot/)"
            )
        ia = unique_stems(blurred, str(tests[0]))
        sharp = unique_stems(list_images(gts[0]), str(gts[0]))
        missing = set(ia) - set(sharp)
        if missing:
            raise PrepareError(
                f"hide: {len(missing)} test image(s) have no sharp image in {gts[0]}: {sample(missing)}"
            )
        ib = {s: sharp[s] for s in ia}
        ctx.sources["from"] = f"{show(tests[0], root)} (all subfolders) + {show(gts[0], root)}"
    link_pairs(ctx, ia, ib, ctx.out / "test" / "input", ctx.out / "test" / "target")
    return {
        "test/input": count_images(ctx.out / "test" / "input"),
        "test/target": count_images(ctx.out / "test" / "target"),
    }
