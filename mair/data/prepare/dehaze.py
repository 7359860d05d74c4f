"""Dehazing sets: RESIDE ITS / OTS (training), SOTS indoor / outdoor (test), RESIDE-6K.

Pairing rule for ITS/OTS/SOTS: the clear image of a hazy file is ``gt/<id>.png`` with
``id = hazy_basename.split('_')[0]`` (``1_1_0.90179.png`` -> ``1.png``, ``0025_0.85_0.04.jpg`` -> ``0025.png``,
``1400_3.png`` -> ``1400.png``). The official ``Dehaze_Dataset`` applies ``split('_')[0]`` to the *whole path*
(and replaces every ``hazy`` in it by ``gt``); we apply it to the base name only, so ``_`` in parent folders
(``reside_its``) is harmless.

* Hazy files are linked as shipped (OTS / SOTS-outdoor hazy stay JPEG: 313,950 files, and re-encoding would only
  freeze one decoder's output). Folders named ``hazy`` or ``haze``, subfolders (``part1..part4``) flattened.
* Clear images (``clear/``, ``gt/``) become ``gt/<id>.png``; OTS's ``.jpg`` clear images are decoded and written as
  PNG (the official loader asks for ``.png`` and never reads ``clear/``).
* RESIDE-6K pairs by identical names; DehazeFormer's ``GT/`` becomes ``gt/``. GT as PNG, hazy as shipped.
"""

from __future__ import annotations

from pathlib import Path

from mair.data.image_io import image_size, list_images
from mair.data.prepare.common import (
    Context,
    PrepareError,
    count_images,
    dirs_named,
    place_as_png,
    place_file,
    rel,
    require_dir,
    run_parallel,
    sample,
    show,
    unique_stems,
)

HAZY_NAMES = ("hazy", "haze")
CLEAR_NAMES = ("gt", "clear", "clear_images")


def hazy_to_gt_id(hazy_name: str) -> str:
    """The clear-image id of a hazy file: its base name up to the first ``_`` (extension dropped)."""
    base = Path(hazy_name).name
    return base.split("_")[0] if "_" in base else Path(base).stem


def hazy_to_gt_name(hazy_name: str) -> str:
    """The clear-image file name of a hazy file: ``<id>.png`` (see :func:`hazy_to_gt_id`)."""
    return f"{hazy_to_gt_id(hazy_name)}.png"


def _hazy_and_clear(root: Path, dataset_id: str, want: tuple[str, ...] = ()) -> tuple[Path, Path]:
    hazy_dirs = dirs_named(root, HAZY_NAMES)
    if want:
        picked = [d for d in hazy_dirs if any(w in rel(d, root) for w in want)]
        hazy_dirs = picked or (hazy_dirs if len(hazy_dirs) == 1 else [])
    if not hazy_dirs:
        raise PrepareError(
            f"{dataset_id}: no hazy/ folder under {root}"
            + (f" whose path mentions {' or '.join(want)}" if want else "")
            + " (expected <set>/hazy/*.png|jpg beside <set>/clear/ or <set>/gt/)"
        )
    top = min(len(d.relative_to(root).parts) for d in hazy_dirs)
    hazy_dirs = [d for d in hazy_dirs if len(d.relative_to(root).parts) == top]
    if len(hazy_dirs) > 1:
        raise PrepareError(
            f"{dataset_id}: several hazy folders under {root}: {sample(show(d, root) for d in hazy_dirs)}"
        )
    hazy = hazy_dirs[0]
    for name in CLEAR_NAMES:
        for sib in sorted(hazy.parent.iterdir()):
            if sib.is_dir() and sib.name.lower() == name:
                return hazy, sib
    clear = [d for d in dirs_named(root, CLEAR_NAMES) if hazy not in d.parents]
    if not clear:
        raise PrepareError(
            f"{dataset_id}: no clear/ or gt/ folder beside {hazy} (the haze-free images <id>.png|jpg)"
        )
    return hazy, clear[0]


def pair_hazy(hazy_dir: Path, clear_dir: Path, dataset_id: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({hazy file name: hazy file}, {gt id: clear file})`` by the ``split('_')[0]`` rule; errors name misses."""
    hazy: dict[str, Path] = {}
    for f in list_images(hazy_dir, recursive=True):
        if f.name in hazy:
            raise PrepareError(f"{dataset_id}: hazy image {f.name} appears twice under {hazy_dir}")
        hazy[f.name] = f
    if not hazy:
        raise PrepareError(f"{dataset_id}: no images under {hazy_dir}")
    clear = unique_stems(list_images(clear_dir, recursive=True), str(clear_dir))
    needed = sorted({hazy_to_gt_id(n) for n in hazy})
    missing = [i for i in needed if i not in clear]
    if missing:
        raise PrepareError(
            f"{dataset_id}: {len(missing)} clear image(s) missing in {clear_dir} for the hazy images "
            f"(rule: gt id = hazy name up to the first '_'): {sample(f'{m}.png' for m in missing)}"
        )
    return hazy, {i: clear[i] for i in needed}


def write_hazy_pairs(ctx: Context, hazy: dict[str, Path], gt: dict[str, Path], sub: str) -> dict[str, int]:
    """Link hazy files as shipped into ``<sub>/hazy`` and write ``<sub>/gt/<id>.png``."""
    base = ctx.out / sub if sub else ctx.out
    for ok in run_parallel(lambda n: place_file(hazy[n], base / "hazy" / n), sorted(hazy), ctx.workers):
        ctx.tally(ok)
    for ok in run_parallel(lambda i: place_as_png(gt[i], base / "gt" / f"{i}.png"), sorted(gt), ctx.workers):
        ctx.tally(ok)
    prefix = f"{sub}/" if sub else ""
    return {f"{prefix}hazy": count_images(base / "hazy"), f"{prefix}gt": count_images(base / "gt")}


def prepare_reside_train(ctx: Context) -> dict[str, int]:
    """ITS / OTS: ``train/hazy`` (as shipped, flattened) + ``train/gt/<id>.png``."""
    root = require_dir(ctx.src, f"the extracted {ctx.dataset_id.upper()} (hazy/ and clear/ folders)")
    hazy_dir, clear_dir = _hazy_and_clear(root, ctx.dataset_id)
    hazy, gt = pair_hazy(hazy_dir, clear_dir, ctx.dataset_id)
    ctx.sources.update(
        hazy=show(hazy_dir, root), clear=show(clear_dir, root), rule="gt/<hazy name up to '_'>.png"
    )
    return write_hazy_pairs(ctx, hazy, gt, "train")


def _sots_root(ctx: Context) -> Path:
    for name in (ctx.dataset_id, "reside_sots", "sots"):
        cand = ctx.root / "extracted" / name
        if cand.is_dir():
            return cand
    raise PrepareError(
        f"{ctx.dataset_id}: missing folder {ctx.src} (or extracted/reside_sots): expected the SOTS test set "
        f"(indoor/nyuhaze500/{{gt,hazy}} or outdoor/{{gt,hazy}})"
    )


def prepare_sots(ctx: Context) -> dict[str, int]:
    """SOTS indoor / outdoor: ``hazy/`` + ``gt/<id>.png``; GT/hazy size differences are counted, not changed."""
    root = _sots_root(ctx)
    want = ("indoor", "nyuhaze") if ctx.dataset_id == "sots_indoor" else ("outdoor",)
    hazy_dir, clear_dir = _hazy_and_clear(root, ctx.dataset_id, want)
    hazy, gt = pair_hazy(hazy_dir, clear_dir, ctx.dataset_id)
    ctx.sources.update(
        hazy=show(hazy_dir, root), clear=show(clear_dir, root), rule="gt/<hazy name up to '_'>.png"
    )
    counts = write_hazy_pairs(ctx, hazy, gt, "")
    sizes = {i: image_size(ctx.out / "gt" / f"{i}.png") for i in gt}
    odd = [n for n in hazy if image_size(ctx.out / "hazy" / n) != sizes[hazy_to_gt_id(n)]]
    if odd:
        ctx.notes.append(
            f"{len(odd)} hazy image(s) differ in size from their gt (kept as shipped; MaIR does not crop): "
            + sample(odd)
        )
    return counts


def prepare_reside_6k(ctx: Context) -> dict[str, int]:
    """RESIDE-6K: ``{train,test}/{hazy,gt}`` with identical names; ``GT/`` renamed ``gt/``."""
    root = require_dir(ctx.src, "the extracted RESIDE-6K ({train,test}/{GT,hazy})")
    counts: dict[str, int] = {}
    for split in ("train", "test"):
        splits = [d for d in dirs_named(root, [split]) if _child(d, HAZY_NAMES) and _child(d, ("gt",))]
        if not splits:
            raise PrepareError(
                f"reside_6k: no {split}/ folder with GT/ (or gt/) and hazy/ inside under {root}"
            )
        folder = splits[0]
        hazy_dir, gt_dir = _child(folder, HAZY_NAMES), _child(folder, ("gt",))
        assert hazy_dir is not None and gt_dir is not None
        hz = unique_stems(list_images(hazy_dir), str(hazy_dir))
        gt = unique_stems(list_images(gt_dir), str(gt_dir))
        if set(hz) != set(gt):
            raise PrepareError(
                f"reside_6k: {hazy_dir} and {gt_dir} must hold the same names; only in one: {sample(set(hz) ^ set(gt))}"
            )
        ctx.sources[split] = f"{show(hazy_dir, root)} + {show(gt_dir, root)}"
        out = ctx.out / split
        for ok in run_parallel(
            lambda s, hz=hz, out=out: place_file(hz[s], out / "hazy" / hz[s].name), sorted(hz), ctx.workers
        ):
            ctx.tally(ok)
        for ok in run_parallel(
            lambda s, gt=gt, out=out: place_as_png(gt[s], out / "gt" / f"{s}.png"), sorted(gt), ctx.workers
        ):
            ctx.tally(ok)
        counts[f"{split}/hazy"] = count_images(out / "hazy")
        counts[f"{split}/gt"] = count_images(out / "gt")
    return counts


def _child(folder: Path, names: tuple[str, ...]) -> Path | None:
    for d in sorted(folder.iterdir()):
        if d.is_dir() and d.name.lower() in names:
            return d
    return None
