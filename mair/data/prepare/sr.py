"""Super-resolution sets (HR + LR_bicubic/X2..X4), clean-image sets (HR only) and the merged training sets.

Official quirks handled here (see docs/data_layout.md):

* LR names equal HR names. Shipped LR files named ``babyx2.png`` (EDSR/ART bundles, DIV2K's ``0001x2.png``) or
  ``<title>_LRBI_x2.png`` (Manga109 bundles) are renamed to the HR name; the official test ymls use
  ``filename_tmpl: '{}'``.
* Where a set ships no LR for a scale, LR is made as MATLAB makes it: HR mod-cropped to a multiple of the scale,
  then bicubic ``imresize`` on uint8 (rounded after each 1-D pass). ``HR/`` itself stays as shipped; the loaders
  crop GT to ``LR size x scale``, which is the same mod-crop.
* DF2K = DIV2K (800) + Flickr2K (2650) in one folder, names kept (4 vs 6 digits never collide).
* DFWB = DIV2K + Flickr2K + BSD400 + WED HR in one flat ``HR/`` folder, names prefixed by their source set
  (``div2k-0001.png``, ``wed-00001.png``) so that provenance is visible and collisions impossible.
"""

from __future__ import annotations

import re
from pathlib import Path

from mair.data.image_io import image_size, list_images, read_image, write_png
from mair.data.imresize import bicubic_lr_uint8
from mair.data.prepare.common import (
    Context,
    PrepareError,
    count_images,
    dirs_named,
    image_dirs,
    place_as_png,
    place_file,
    rel,
    require_dir,
    run_parallel,
    sample,
    show,
    unique_stems,
)

SCALES: tuple[int, ...] = (2, 3, 4)

ALIASES: dict[str, tuple[str, ...]] = {
    "div2k": ("div2k",),
    "flickr2k": ("flickr2k",),
    "df2k": ("df2k",),
    "set5": ("set5",),
    "set14": ("set14",),
    "b100": ("b100", "bsd100", "bsds100"),
    "urban100": ("urban100",),
    "manga109": ("manga109",),
    "cbsd68": ("cbsd68",),
    "kodak24": ("kodak24", "kodak"),
    "mcmaster": ("mcmaster",),
    "bsd400": ("bsd400", "bsds500", "bsr"),
    "wed": ("wed", "waterloo", "exploration", "pristine"),
    "dfwb": ("dfwb",),
}

# folders that hold other degradations or other splits; never HR and never bicubic LR
_NOT_CLEAN = re.compile(r"unknown|mild|difficult|wild|noisy|noise|sigma|jpeg|blur")
_EXCLUDE_SPLIT: dict[str, tuple[str, ...]] = {"div2k": ("valid",), "flickr2k": (), "bsd400": ("/val",)}
_HR_NAMES = {"hr", "gt", "gtmod12", "hq", "original", "original_png", "clean", "pristine_images"}


def _is_hr_name(name: str) -> bool:
    n = name.lower()
    return n in _HR_NAMES or re.search(r"(^|[_\-\s])(hr|gt|hq)$", n) is not None


def lr_scale_of(folder: Path, root: Path) -> int | None:
    """The bicubic scale of an LR folder (``X2``, ``LR_bicubic/X3``, ``Set5_LR_x4``, ``LRbicx2``), else None."""
    path = rel(folder, root)
    name = folder.name.lower()
    m = re.search(r"x(\d+)$", name)
    if m is None or _NOT_CLEAN.search(path):
        return None
    if name == f"x{m.group(1)}" or "lr" in path or "bic" in name:
        return int(m.group(1))
    return None


def _alias_filter(dirs: list[Path], root: Path, aliases: tuple[str, ...]) -> list[Path]:
    hits = [d for d in dirs if any(a in rel(d, root) for a in aliases)]
    return hits or dirs


def _excluded(folder: Path, root: Path, dataset_id: str) -> bool:
    path = "/" + rel(folder, root)
    return any(word in path for word in _EXCLUDE_SPLIT.get(dataset_id, ())) or bool(_NOT_CLEAN.search(path))


def _pick_one(cands: list[Path], root: Path, what: str, dataset_id: str) -> Path:
    if len(cands) == 1:
        return cands[0]
    shown = ", ".join(show(c, root) or "." for c in cands) or "none"
    raise PrepareError(
        f"{dataset_id}: cannot tell which folder under {root} holds {what}; candidates: {shown}"
    )


def find_hr_dir(root: Path, dataset_id: str) -> tuple[Path, list[Path]]:
    """The folder of HR (clean) images of ``dataset_id`` under ``root`` and its images."""
    aliases = ALIASES.get(dataset_id, (dataset_id,))
    dirs = image_dirs(require_dir(root, f"the extracted files of {dataset_id}"))
    usable = [d for d in dirs if lr_scale_of(d, root) is None and not _excluded(d, root, dataset_id)]
    if not usable:
        raise PrepareError(
            f"{dataset_id}: found no folder of clean images under {root} (expected e.g. HR/*.png, "
            f"<Set>_HR/*.png or a flat folder of images); image folders seen: "
            f"{sample(show(d, root) or '.' for d in dirs) or 'none'}"
        )
    named = [d for d in usable if _is_hr_name(d.name)]
    cands = _alias_filter(named or usable, root, aliases)
    if len(cands) > 1 and not named:
        most = max(len(dirs[d]) for d in cands)  # a flat set: the folder with the most images
        cands = [d for d in cands if len(dirs[d]) == most]
    hr = _pick_one(cands, root, "the HR images", dataset_id)
    return hr, dirs[hr]


def find_lr_dirs(root: Path, hr_dir: Path, dataset_id: str) -> dict[int, Path]:
    """Shipped bicubic LR folders by scale (only those of ``SCALES``), nearest to ``hr_dir``."""
    aliases = ALIASES.get(dataset_id, (dataset_id,))
    by_scale: dict[int, list[Path]] = {}
    for d in image_dirs(root):
        s = lr_scale_of(d, root)
        if s in SCALES and not _excluded(d, root, dataset_id):
            by_scale.setdefault(s, []).append(d)
    hr_parts = hr_dir.relative_to(root).parts
    out: dict[int, Path] = {}
    for s, cands in sorted(by_scale.items()):
        cands = _alias_filter(cands, root, aliases)

        def shared(d: Path) -> int:
            n = 0
            for a, b in zip(d.relative_to(root).parts, hr_parts, strict=False):
                if a != b:
                    break
                n += 1
            return n

        best = max(shared(d) for d in cands)
        out[s] = _pick_one([d for d in cands if shared(d) == best], root, f"the x{s} LR images", dataset_id)
    return out


def _lr_key(stem: str, scale: int) -> str:
    """``babyx2`` -> ``baby``, ``Title_LRBI_x2`` -> ``Title``, ``0001x2`` -> ``0001``; other names unchanged."""
    return re.sub(rf"(?i)(_lrbi)?[_-]?x{scale}$", "", stem)


def match_lr(hr_stems: list[str], lr_files: list[Path], scale: int, where: str) -> dict[str, Path]:
    """Pair each HR name with its LR file (same name, or the name plus an ``x<s>``/``_LRBI_x<s>`` suffix)."""
    wanted = set(hr_stems)
    found: dict[str, Path] = {}
    for f in lr_files:
        key = f.stem if f.stem in wanted else _lr_key(f.stem, scale)
        if key in wanted:
            if key in found:
                raise PrepareError(
                    f"{where}: two LR files match the HR image {key!r}: {found[key].name}, {f.name}"
                )
            found[key] = f
    missing = wanted - set(found)
    if missing:
        raise PrepareError(
            f"{where}: no x{scale} LR file for {len(missing)} HR image(s): {sample(missing)} "
            f"(expected <name>.png, <name>x{scale}.png or <name>_LRBI_x{scale}.png)"
        )
    return found


def _check_lr_size(hr: Path, lr: Path, scale: int) -> None:
    hh, hw = image_size(hr)
    lh, lw = image_size(lr)
    if (lh, lw) != (hh // scale, hw // scale):
        raise PrepareError(
            f"LR {lr} is {lw}x{lh}, but HR {hr.name} ({hw}x{hh}) at x{scale} needs {hw // scale}x{hh // scale}"
        )


def _make_lr(hr_file: Path, dst: Path, scale: int) -> bool:
    if dst.exists():
        return False
    write_png(dst, bicubic_lr_uint8(read_image(hr_file), scale))
    return True


def write_sr_set(ctx: Context, hr_files: list[Path], lr_dirs: dict[int, Path], where: str) -> dict[str, int]:
    """Write ``HR/`` and ``LR_bicubic/X<s>/`` for every scale; shipped LR is renamed, missing LR generated."""
    hr_map = unique_stems(hr_files, where)
    stems = sorted(hr_map)
    hr_out = ctx.out / "HR"
    for ok in run_parallel(lambda s: place_as_png(hr_map[s], hr_out / f"{s}.png"), stems, ctx.workers):
        ctx.tally(ok)
    counts = {"HR": count_images(hr_out)}
    for scale in SCALES:
        lr_out = ctx.out / "LR_bicubic" / f"X{scale}"
        if scale in lr_dirs:
            lr_map = match_lr(stems, list_images(lr_dirs[scale]), scale, f"{where} x{scale}")

            def put(
                stem: str, lr_map: dict[str, Path] = lr_map, scale: int = scale, lr_out: Path = lr_out
            ) -> bool:
                dst = lr_out / f"{stem}.png"
                if dst.exists():
                    return False
                _check_lr_size(hr_out / f"{stem}.png", lr_map[stem], scale)
                return place_as_png(lr_map[stem], dst)

            ctx.sources[f"X{scale}"] = "shipped"
        else:

            def put(stem: str, scale: int = scale, lr_out: Path = lr_out) -> bool:
                return _make_lr(hr_out / f"{stem}.png", lr_out / f"{stem}.png", scale)

            ctx.sources[f"X{scale}"] = "generated (MATLAB bicubic of the HR mod-cropped to the scale)"
        for ok in run_parallel(put, stems, ctx.workers):
            ctx.tally(ok)
        counts[f"LR_bicubic/X{scale}"] = count_images(lr_out)
    return counts


def prepare_sr(ctx: Context) -> dict[str, int]:
    """An SR set from its extracted files: HR + LR_bicubic/X2..X4 with LR names equal to HR names."""
    hr_dir, hr_files = find_hr_dir(ctx.src, ctx.dataset_id)
    lr_dirs = find_lr_dirs(ctx.src, hr_dir, ctx.dataset_id)
    ctx.sources["HR"] = show(hr_dir, ctx.src) or "."
    for s, d in lr_dirs.items():
        ctx.sources[f"X{s}_from"] = show(d, ctx.src)
    return write_sr_set(ctx, hr_files, lr_dirs, f"{ctx.dataset_id} ({hr_dir})")


def prepare_clean(ctx: Context) -> dict[str, int]:
    """A clean-image set (cbsd68, kodak24, mcmaster; noise is added at test time): ``HR/`` as PNG."""
    hr_dir, hr_files = find_hr_dir(ctx.src, ctx.dataset_id)
    ctx.sources["HR"] = show(hr_dir, ctx.src) or "."
    return _write_hr(ctx, hr_files, f"{ctx.dataset_id} ({hr_dir})")


def _write_hr(ctx: Context, files: list[Path], where: str, prefix: str = "") -> dict[str, int]:
    stems = unique_stems(files, where)
    out = ctx.out / "HR"
    for ok in run_parallel(
        lambda s: place_as_png(stems[s], out / f"{prefix}{s}.png"), sorted(stems), ctx.workers
    ):
        ctx.tally(ok)
    return {"HR": count_images(out)}


def prepare_bsd400(ctx: Context) -> dict[str, int]:
    """BSD400 = BSDS500 ``images/train`` (200) + ``images/test`` (200); ``images/val`` (= BSD100 ⊃ CBSD68) excluded.

    A flat folder of 400 images (Restormer's BSD400.zip) is taken as it is.
    """
    root = require_dir(
        ctx.src, "the extracted BSDS500 (BSR/BSDS500/data/images/{train,test}) or BSD400 images"
    )
    for images in dirs_named(root, ["images"]):
        train, test = images / "train", images / "test"
        if train.is_dir() and test.is_dir():
            files = sorted(
                [p for p in train.iterdir() if p.suffix.lower() == ".jpg"]
                + [p for p in test.iterdir() if p.suffix.lower() == ".jpg"],
                key=lambda p: p.name,
            )
            if not files:
                raise PrepareError(f"bsd400: no .jpg images in {train} or {test}")
            ctx.sources["HR"] = f"{show(train, root)} + {show(test, root)} (val excluded)"
            return _write_hr(ctx, files, f"bsd400 ({images})")
    return prepare_clean(ctx)


def prepare_wed(ctx: Context) -> dict[str, int]:
    """WED: ``pristine_images/*.bmp`` (4744) as PNG."""
    root = require_dir(ctx.src, "the extracted WED (exploration_database_and_code/pristine_images/*.bmp)")
    hits = dirs_named(root, ["pristine_images"])
    if hits:
        files = [p for p in sorted(hits[0].iterdir()) if p.is_file() and not p.name.startswith(".")]
        ctx.sources["HR"] = show(hits[0], root)
        return _write_hr(ctx, [p for p in files if p.suffix.lower() in (".bmp", ".png")], f"wed ({hits[0]})")
    return prepare_clean(ctx)


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and bool(image_dirs(folder))


def prepare_df2k(ctx: Context) -> dict[str, int]:
    """DF2K: an extracted bundle if there is one, else prepared DIV2K + Flickr2K merged (HR and every LR scale)."""
    if _has_images(ctx.src):
        ctx.sources["from"] = "extracted df2k bundle"
        return prepare_sr(ctx)
    parts = {dep: ctx.dependency(dep) for dep in ("div2k", "flickr2k")}
    ctx.sources["from"] = "prepared div2k + flickr2k"
    return _merge(ctx, parts, ["HR"] + [f"LR_bicubic/X{s}" for s in SCALES], prefix=False)


def prepare_dfwb(ctx: Context) -> dict[str, int]:
    """DFWB: an extracted bundle (flat folder) if there is one, else HR of DIV2K + Flickr2K + BSD400 + WED."""
    if _has_images(ctx.src):
        ctx.sources["from"] = "extracted dfwb bundle"
        return prepare_clean(ctx)
    parts = {dep: ctx.dependency(dep) for dep in ("div2k", "flickr2k", "bsd400", "wed")}
    ctx.sources["from"] = "prepared div2k + flickr2k + bsd400 + wed (names prefixed '<set>-')"
    return _merge(ctx, parts, ["HR"], prefix=True)


def _merge(ctx: Context, parts: dict[str, Path], subdirs: list[str], prefix: bool) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sub in subdirs:
        jobs: dict[str, Path] = {}
        for dep, folder in parts.items():
            src = require_dir(folder / sub, f"the prepared {dep} layout ({sub}/)")
            for f in sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")):
                name = f"{dep}-{f.name}" if prefix else f.name
                if name in jobs:
                    raise PrepareError(f"{ctx.dataset_id}: {sub}/{name} exists in two source sets")
                jobs[name] = f
        out = ctx.out / sub
        for ok in run_parallel(
            lambda n, out=out, jobs=jobs: place_file(jobs[n], out / n), sorted(jobs), ctx.workers
        ):
            ctx.tally(ok)
        counts[sub] = count_images(out)
    return counts
