"""Shared machinery of the preparers: the context, resumable file placement, finding folders, the marker.

Resumability: every output file is written atomically (temp file + rename, or a hard link made under a temp
name and renamed), so a file at its final path is always complete and a rerun skips it. The folder counts as
prepared only when its marker ``.prepared.json`` exists; it is written last, atomically, with the image counts.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mair.common.atomic import atomic_open, atomic_write_json, temp_name
from mair.data.image_io import is_image, list_images, read_image, write_png
from mair.runtime import switches

MARKER = ".prepared.json"
MARKER_VERSION = 1

T = TypeVar("T")


class PrepareError(RuntimeError):
    """A preparer's input is missing or not what was expected; the message says what and where."""


@dataclass
class Context:
    """What one preparer works on."""

    dataset_id: str
    root: Path  # the data root
    src: Path  # extracted/<id> (may not exist for derived sets)
    out: Path  # prepared/<id> (or demo/prepared/<id>)
    scope: str = "paper"
    workers: int = 1
    written: int = 0
    reused: int = 0
    notes: list[str] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)
    prepare_dep: Callable[[str], Path] | None = (
        None  # prepares another set (if needed) and returns its folder
    )

    def dependency(self, dataset_id: str) -> Path:
        """The prepared folder of another set this one is built from (prepared first when it is not yet)."""
        if self.prepare_dep is None:
            raise PrepareError(f"{self.dataset_id} needs the prepared set {dataset_id}")
        return self.prepare_dep(dataset_id)

    def tally(self, wrote: bool) -> None:
        """Count one output file as newly written or as already present."""
        if wrote:
            self.written += 1
        else:
            self.reused += 1


# ----------------------------------------------------------------------------------------------- files


def _link_or_copy_tmp(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to (or, across filesystems, a copy of) ``src``, atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dst.parent, f".{dst.name}.", ".part")
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
        return
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def place_file(src: Path, dst: Path) -> bool:
    """Put the bytes of ``src`` at ``dst`` (hard link when possible). Returns False when ``dst`` already exists."""
    if dst.exists():
        return False
    _link_or_copy_tmp(src, dst)
    return True


def place_as_png(src: Path, dst: Path) -> bool:
    """Put ``src`` at ``dst`` (a ``.png`` path): PNG files as they are, other formats decoded and re-encoded.

    Decoding keeps grey as grey and 16-bit as 16-bit, drops an alpha channel (the official loaders read with
    ``IMREAD_COLOR``, which drops it too) and applies a JPEG's EXIF orientation (as ``IMREAD_COLOR`` does).
    Returns False when ``dst`` already exists.
    """
    if dst.exists():
        return False
    if src.suffix.lower() == ".png":
        _link_or_copy_tmp(src, dst)
    else:
        write_png(dst, read_image(src))
    return True


def remove_stale_temp_files(out: Path) -> int:
    """Remove the ``.<name>.<random>.part`` temp files that killed runs left under ``out`` (hidden folders
    aside); call it only while holding the set's lock. Returns how many were removed."""
    removed = 0
    for folder, dirs, files in os.walk(out):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") and name.endswith(".part"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def run_parallel(func: Callable[[T], Any], items: Sequence[T], workers: int) -> list[Any]:
    """``[func(x) for x in items]``, on a thread pool when ``workers > 1`` (OpenCV releases the GIL)."""
    if workers <= 1 or len(items) <= 1:
        return [func(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(func, items))


def default_workers() -> int:
    """Threads for image work: ``$MAIR_PREPARE_WORKERS`` or the CPU count, at most 8."""
    workers: int | None = switches.get("MAIR_PREPARE_WORKERS")
    if workers is not None:
        return workers
    return max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------------------------- finding


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`PrepareError` saying what was expected there."""
    if not path.is_dir():
        raise PrepareError(f"missing folder {path}: expected {what}")
    return path


def walk_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (itself included), sorted, skipping hidden folders and the marker's peers."""
    out: list[Path] = []
    for folder, dirs, _files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.append(Path(folder))
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def image_dirs(root: Path) -> dict[Path, list[Path]]:
    """Folders under ``root`` that directly hold image files, with their sorted images."""
    found: dict[Path, list[Path]] = {}
    for folder in walk_dirs(root):
        files = list_images(folder)
        if files:
            found[folder] = files
    return found


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form, lower case (for pattern tests)."""
    text = path.relative_to(root).as_posix()
    return "" if text == "." else text.lower()


def show(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form, as spelled on disk (for messages and the marker)."""
    return path.relative_to(root).as_posix()


def find_files(root: Path, pattern: str) -> list[Path]:
    """Files below ``root`` whose name matches the regular expression ``pattern`` (case-insensitive), sorted."""
    rx = re.compile(pattern, re.IGNORECASE)
    hits: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        hits.extend(Path(folder) / name for name in files if rx.fullmatch(name) and not name.startswith("."))
    return sorted(hits, key=lambda p: p.relative_to(root).as_posix())


def dirs_named(root: Path, names: Iterable[str]) -> list[Path]:
    """Folders below ``root`` whose name (case-insensitive) is one of ``names``, sorted shallowest first."""
    wanted = {n.lower() for n in names}
    hits = [d for d in walk_dirs(root) if d != root and d.name.lower() in wanted]
    return sorted(hits, key=lambda p: (len(p.relative_to(root).parts), p.as_posix()))


def prefer(dirs: list[Path], root: Path, word: str) -> list[Path]:
    """``dirs`` whose path below ``root`` mentions ``word`` (bundles that hold several sets), else all of them."""
    hits = [d for d in dirs if word in rel(d, root)]
    return hits or dirs


def unique_stems(files: Sequence[Path], where: str) -> dict[str, Path]:
    """Map file stems to files; two files with one stem (``a.png``, ``a.bmp``) are an error."""
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise PrepareError(
                f"{where}: two files share the name {f.stem!r}: {out[f.stem].name} and {f.name}"
            )
        out[f.stem] = f
    return out


def sample(names: Iterable[str], n: int = 5) -> str:
    """A short, sorted list of names for an error message."""
    items = sorted(names)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# ----------------------------------------------------------------------------------------------- marker


def count_images(folder: Path) -> int:
    """Number of image files directly in ``folder`` (0 if absent)."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and is_image(p))


def count_files(folder: Path, suffix: str) -> int:
    """Number of files ending with ``suffix`` directly in ``folder`` (0 if absent)."""
    if not folder.is_dir():
        return 0
    return sum(
        1 for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix) and not p.name.startswith(".")
    )


def read_marker(out: Path) -> dict[str, Any] | None:
    """The marker of a prepared folder, or None when the folder is not complete."""
    path = out / MARKER
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def write_marker(ctx: Context, counts: dict[str, int], deterministic: bool = False) -> dict[str, Any]:
    """Write ``.prepared.json`` (last, atomically) and return its content."""
    from mair import __version__

    marker: dict[str, Any] = {
        "dataset": ctx.dataset_id,
        "scope": ctx.scope,
        "counts": dict(sorted(counts.items())),
        "total": int(sum(counts.values())),
        "sources": ctx.sources,
        "notes": ctx.notes,
        "marker_version": MARKER_VERSION,
        "mair_version": __version__,
    }
    if not deterministic:
        marker["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(ctx.out / MARKER, marker)
    return marker


def write_pair_crops(src_in: Path, src_gt: Path, boxes: Sequence[tuple[int, int]], names: Sequence[str],
                     size: int, out_in: Path, out_gt: Path) -> tuple[int, int]:
    """Cut the same ``size`` x ``size`` boxes (top, left) out of an input/target pair into ``out_in`` and
    ``out_gt`` under ``names``; crops that already exist are kept. Returns (written, reused) file counts."""
    todo = [i for i, n in enumerate(names) if not ((out_in / n).exists() and (out_gt / n).exists())]
    if not todo:
        return 0, 2 * len(names)
    a, b = read_image(src_in), read_image(src_gt)
    if a.shape != b.shape:
        raise PrepareError(f"{src_in} {a.shape} and {src_gt} {b.shape} differ in size")
    written = 0
    for i in todo:
        t, s = boxes[i]
        for img, folder in ((a, out_in), (b, out_gt)):
            dst = folder / names[i]
            if not dst.exists():
                write_png(dst, img[t : t + size, s : s + size])
                written += 1
    return written, 2 * len(names) - written
