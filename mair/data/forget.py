"""``mair data forget``: remove a set's raw files, their recorded checksums and what was extracted from them.

The way out after a bad file (an archive refused as unsafe or corrupt, a wrong first download pinned in
``data.lock.json``): the next ``download``/``add`` starts from nothing. The prepared folder, which may hold weeks of
work made from good data, is only removed when asked (``prepared=True``). Nothing is removed while another process
downloads one of the files or extracts the set.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mair.data.catalog import Dataset
from mair.data.lockfile import LockBusyError, LockFile, file_lock
from mair.data.paths import PREPARED_MARKER, PathLike, extracted_dir, lock_path, prepared_dir, raw_dir


class ForgetError(RuntimeError):
    """Nothing was forgotten: a file name is unknown, or another process is using the set."""


@dataclass
class Forgotten:
    """What :func:`forget_dataset` removed."""

    raw_files: list[str] = field(default_factory=list)
    lock_entries: list[str] = field(default_factory=list)
    extracted: bool = False
    prepared: bool = False

    def summary(self, dataset_id: str) -> str:
        parts = []
        if self.raw_files:
            parts.append(f"{len(self.raw_files)} raw file(s) from raw/{dataset_id}")
        if self.lock_entries:
            parts.append(f"{len(self.lock_entries)} recorded checksum(s) from data.lock.json")
        if self.extracted:
            parts.append(f"extracted/{dataset_id}")
        if self.prepared:
            parts.append(f"prepared/{dataset_id}")
        return f"{dataset_id}: removed " + ", ".join(parts) if parts else f"{dataset_id}: nothing to forget"


@contextlib.contextmanager
def _not_busy(path: Path, what: str) -> Iterator[None]:
    try:
        with file_lock(path, blocking=False):
            yield
    except LockBusyError:
        raise ForgetError(f"{what} is in use by another process; try again when it is done") from None


def _remove_tree(path: Path) -> bool:
    """Remove a folder (never following links in it) or a file/link; True when something was there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False


def _raw_names(base: Path) -> list[str]:
    if not base.is_dir():
        return []
    out = []
    for folder, _dirs, files in os.walk(base):
        out.extend(Path(folder, name).relative_to(base).as_posix() for name in files)
    return sorted(out)


def forget_dataset(
    dataset: Dataset, root: PathLike | None = None, names: list[str] | None = None, prepared: bool = False
) -> Forgotten:
    """Forget ``dataset``'s raw files (only ``names`` when given), their lock entries and its extracted folder.

    ``prepared=True`` also removes ``prepared/<id>/`` (its marker first, so a half-removed folder never looks
    complete). Derived sets have no raw files: only ``prepared=True`` applies to them.
    """
    if dataset.is_derived and not prepared:
        raise ForgetError(
            f"{dataset.id} is built from {', '.join(dataset.derived_from)}: forget those, or use --prepared to "
            "remove its prepared folder"
        )
    lock = LockFile(lock_path(root))
    base = raw_dir(dataset.id, root)
    recorded = [k.split("/", 1)[1] for k in lock.entries() if k.startswith(f"{dataset.id}/")]
    if names is not None:
        known = {s.name for s in dataset.all_files()} | set(recorded) | set(_raw_names(base))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ForgetError(
                f"{dataset.id} has no file {', '.join(map(repr, unknown))}; its files: "
                f"{', '.join(sorted(known)[:8]) or 'none'}"
            )
    done = Forgotten()
    target = extracted_dir(dataset.id, root)
    with contextlib.ExitStack() as stack:
        if not dataset.is_derived:
            stack.enter_context(_not_busy(target.parent / f".{target.name}.lock", f"extracted/{dataset.id}"))
            for name in names if names is not None else sorted(set(recorded) | set(_raw_names(base))):
                final = base / name
                stack.enter_context(_not_busy(final.with_name(f".{final.name}.lock"), f"raw/{dataset.id}/{name}"))
            done.raw_files = _forget_raw(base, names)
            done.lock_entries = lock.forget(dataset.id, names)
            for name in names or []:
                (base / name).with_name(f".{Path(name).name}.lock").unlink(missing_ok=True)
            done.extracted = _remove_tree(target)
            for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
                _remove_tree(stale)
        if prepared:
            out = prepared_dir(dataset.id, "paper", root)
            (out / PREPARED_MARKER).unlink(missing_ok=True)
            done.prepared = _remove_tree(out)
    return done


def _forget_raw(base: Path, names: list[str] | None) -> list[str]:
    """Remove raw files (and their partial downloads and temp copies); return the names removed."""
    if names is None:
        present = [n for n in _raw_names(base) if not Path(n).name.startswith(".") and not n.endswith(".part")]
        _remove_tree(base)
        return present
    removed = []
    for name in names:
        final = base / name
        if final.is_file() or final.is_symlink():
            final.unlink()
            removed.append(name)
        final.with_name(final.name + ".part").unlink(missing_ok=True)
        final.with_name(f".{final.name}.part.json").unlink(missing_ok=True)
        for stale in final.parent.glob(f".{glob.escape(final.name)}.*.add"):
            stale.unlink(missing_ok=True)
    return removed
