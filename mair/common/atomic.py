"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

Every writer in mair goes through these helpers so that a crash or a signal never leaves a half-written file at
a final path (partial output must never look complete).

Modes: a temp file is created with ``open(..., 0o666)`` and a temp folder with ``mkdir(..., 0o777)``, so the kernel
applies the umask (and a folder's default ACL) exactly as for a plain ``open()``/``mkdir``; ``tempfile.mkstemp``
and ``mkdtemp`` would give 0600/0700 whatever the umask, which a team sharing data and results cannot read.
Rewriting an existing file keeps that file's permission bits, as ``open(path, "w")`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse to open folders; the rename still happened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_name(folder: Path, prefix: str, suffix: str) -> Path:
    return folder / f"{prefix}{secrets.token_hex(4)}{suffix}"


def make_temp_file(folder: str | os.PathLike[str], prefix: str, suffix: str) -> tuple[int, Path]:
    """Create a new empty file ``<folder>/<prefix><random><suffix>`` with the modes of a plain ``open()``.

    Returns an open write-only descriptor and the path (the caller closes and removes it).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        path = _temp_name(Path(folder), prefix, suffix)
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


def make_temp_dir(folder: str | os.PathLike[str], prefix: str, suffix: str) -> Path:
    """Create a new empty folder ``<folder>/<prefix><random><suffix>`` with the modes of a plain ``mkdir``."""
    while True:
        path = _temp_name(Path(folder), prefix, suffix)
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def temp_name(folder: str | os.PathLike[str], prefix: str, suffix: str) -> Path:
    """A fresh, unused name ``<folder>/<prefix><random><suffix>`` (for a link made under a temp name)."""
    while True:
        path = _temp_name(Path(folder), prefix, suffix)
        if not os.path.lexists(path):
            return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync it and rename it to ``path``; on error remove it."""
    if not any(c in mode for c in "wa") or "a" in mode:
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(target.parent, f".{target.name}.", ".part")
    try:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode) & 0o777)  # keep its mode, as open("w") does
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def remove_stale_parts(folder: str | os.PathLike[str], target_glob: str = "*") -> list[Path]:
    """Remove the temp files that :func:`atomic_open` leaves in ``folder`` when its process is killed mid-write,
    for targets whose names match ``target_glob``; return what was removed.

    Only call this while no other process can be writing those targets (e.g. under the lock of a run folder).
    """
    removed = []
    base = Path(folder)
    if not base.is_dir():
        return removed
    for path in base.glob(f".{target_glob}.*.part"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
