"""Safe archive extraction: zip, tar (plain, gz, bz2, xz) and rar.

Every member is checked before it is written: absolute paths, drive letters and ``..`` components are
refused, as are symlinks or hard links whose target lies outside the destination, and device files or FIFOs.
The first bad member aborts the whole archive (:class:`UnsafeArchiveError`). Files are written with exclusive
creation (an existing link at the destination is removed first), so a write never follows a link out of the
folder.

Links are checked as the filesystem resolves them, not on paper: with ``y -> .`` in the archive,
``y/y/../../etc`` climbs two real levels. A link target is resolved with ``realpath`` when the link is made, and
since a later member can change what an earlier link means, every link's real path is checked again once all
members are written, before the marker.

Bounds (:class:`ExtractLimits`): the bytes written (by default at most 20 times the archives' size, at least
256 MiB per archive) and the number of members (by default one million); the declared sizes are checked before
writing (zip, rar) or before each member (tar), and the bytes actually written are counted, so an archive bomb is
refused with one line long before the disk fills (:class:`ExtractLimitError`).

:func:`extract_dataset` extracts every file of a dataset into a temp folder beside the target and renames it
into place when complete, with a completion marker ``.extracted.json`` written last inside it; an interrupted
extraction never leaves a complete-looking folder, and its temp folder is removed by the next extraction.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mair.common.atomic import atomic_write_json, make_temp_dir
from mair.data.lockfile import file_lock, now_iso
from mair.data.paths import EXTRACTED_MARKER

RAR_TOOLS_HINT = (
    "install one of: unrar (Debian/Ubuntu: apt install unrar, from non-free), 7-Zip with RAR support "
    "(apt install 7zip, or p7zip-full p7zip-rar), bsdtar (apt install libarchive-tools) "
    "or unar (apt install unar)"
)
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_COPY_BUFFER = 1 << 20


class ExtractError(RuntimeError):
    """An archive could not be extracted."""


class UnsafeArchiveError(ExtractError):
    """An archive member would land outside the destination (or is a device file): nothing is extracted."""


class MissingToolError(ExtractError):
    """A RAR archive needs an external tool (or the ``rarfile`` module) that is not installed."""


class ExtractLimitError(ExtractError):
    """An archive would expand beyond the size or member-count limit: nothing is kept."""


DEFAULT_SIZE_RATIO = 20
DEFAULT_MIN_ALLOWANCE = 256 << 20
DEFAULT_MAX_MEMBERS = 1_000_000


@dataclass(frozen=True)
class ExtractLimits:
    """How far a set may expand.

    ``max_bytes``: the total bytes written for a set; None means ``ratio`` times each archive's size (the size the
    download verified, from the catalog where it gives one), at least ``min_allowance`` per archive.
    ``max_members``: files, folders and links together.
    """

    max_bytes: int | None = None
    max_members: int = DEFAULT_MAX_MEMBERS
    ratio: int = DEFAULT_SIZE_RATIO
    min_allowance: int = DEFAULT_MIN_ALLOWANCE

    def allowance(self, archive_sizes: Iterable[int]) -> int:
        """The byte limit for a set whose archives have ``archive_sizes``."""
        if self.max_bytes is not None:
            return self.max_bytes
        return sum(max(self.ratio * size, self.min_allowance) for size in archive_sizes)

    def explain(self) -> str:
        if self.max_bytes is not None:
            return "set with --max-extract-size"
        return f"{self.ratio}x the archives' size, at least {binary_size(self.min_allowance)} each"


def binary_size(n: int) -> str:
    """``1048576`` -> ``1.0 MiB`` (powers of 1024, as ``--max-extract-size`` reads them)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


class _Budget:
    """What one extraction may still write, and the links it made (checked again at the end)."""

    def __init__(self, limits: ExtractLimits, archive_sizes: Iterable[int]) -> None:
        self.limits = limits
        self.max_bytes = limits.allowance(archive_sizes)
        self.written = 0
        self.members = 0
        self.links = 0

    def _too_big(self, archive: str) -> ExtractLimitError:
        return ExtractLimitError(
            f"{archive}: extracting it would write more than {binary_size(self.max_bytes)} "
            f"({self.limits.explain()}); refused, nothing was kept. If the set really is that large, raise the "
            "limit with --max-extract-size SIZE"
        )

    def add_members(self, archive: str, count: int = 1) -> None:
        self.members += count
        if self.members > self.limits.max_members:
            raise ExtractLimitError(
                f"{archive}: more than {self.limits.max_members} members (files, folders, links); refused, "
                "nothing was kept. If the set really has that many, raise the limit with --max-members N"
            )

    def expect(self, archive: str, declared: int) -> None:
        """Refuse before writing when the sizes an archive declares already exceed the limit."""
        if self.written + declared > self.max_bytes:
            raise self._too_big(archive)

    def wrote(self, archive: str, n: int) -> None:
        self.written += n
        if self.written > self.max_bytes:
            raise self._too_big(archive)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def safe_member_path(root: Path, name: str, archive: str = "archive") -> Path:
    """The destination of member ``name`` under ``root``; raise :class:`UnsafeArchiveError` if it escapes.

    The check is lexical (absolute paths, drive letters, ``..``) and then physical: the real path of the
    destination's folder must lie inside the real path of ``root`` (this catches members that pass through a
    symlink extracted earlier).
    """
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member with an empty or NUL name")
    if name.startswith(("/", "\\")) or _DRIVE_RE.match(name):
        raise UnsafeArchiveError(f"{archive}: absolute member path {name!r} refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} has a '..' component (path traversal) - refused"
        )
    if not parts:
        return root
    dest = root.joinpath(*parts)
    real_root = os.path.realpath(root)
    if not _within(os.path.realpath(dest.parent), real_root):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} would be written outside {root} (through a link)"
        )
    return dest


def _check_link_target(root: Path, member: str, target: str, archive: str) -> None:
    """Refuse a symlink ``member -> target`` whose target resolves outside ``root``."""
    if not target or "\x00" in target or target.startswith(("/", "\\")) or _DRIVE_RE.match(target):
        raise UnsafeArchiveError(
            f"{archive}: symlink {member!r} -> {target!r} points outside the folder - refused"
        )
    folder = posixpath.dirname(member.strip("/"))
    resolved = posixpath.normpath(posixpath.join(folder, target))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise UnsafeArchiveError(
            f"{archive}: symlink {member!r} -> {target!r} points outside the folder - refused"
        )
    # as the filesystem resolves it: links already made count (with y -> ., y/y/../.. climbs two real levels)
    real = os.path.realpath(os.path.join(root, folder, target))
    if not _within(real, os.path.realpath(root)):
        raise UnsafeArchiveError(
            f"{archive}: symlink {member!r} -> {target!r} resolves outside the folder - refused"
        )


def _clear(dest: Path) -> None:
    """Remove a file or link at ``dest`` so that the next write creates a new file (never follows a link)."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        raise ExtractError(f"{dest}: a member file collides with a folder")


def _write_stream(src: IO[bytes], dest: Path, budget: _Budget, archive: str) -> None:
    """Copy ``src`` to a new file ``dest``, counting every byte against ``budget``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clear(dest)
    with open(dest, "xb") as out:
        while block := src.read(_COPY_BUFFER):
            budget.wrote(archive, len(block))
            out.write(block)


def _make_symlink(root: Path, name: str, target: str, archive: str, budget: _Budget) -> None:
    _check_link_target(root, name, target, archive)
    dest = safe_member_path(root, name, archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clear(dest)
    os.symlink(target, dest)
    budget.links += 1


def verify_links(root: Path, archive: str = "archive") -> None:
    """Refuse when any symlink under ``root`` resolves, on disk, outside ``root`` (run after all members)."""
    real_root = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):  # links to folders are listed in dirs, never followed
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                continue
            real = os.path.realpath(path)
            if not _within(real, real_root):
                member = os.path.relpath(path, root)
                raise UnsafeArchiveError(
                    f"{archive}: symlink {member!r} -> {os.readlink(path)!r} resolves outside the folder "
                    f"(to {real}) through other links - refused"
                )


def _extract_zip(path: Path, root: Path, budget: _Budget) -> int:
    count = 0
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        budget.add_members(path.name, len(infos))  # the central directory lists them all: check before writing
        budget.expect(path.name, sum(info.file_size for info in infos))
        for info in infos:
            name = info.filename.replace("\\", "/")
            if info.flag_bits & 0x1:
                raise ExtractError(f"{path.name}: member {name!r} is encrypted")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                if info.file_size > 4096:
                    raise UnsafeArchiveError(f"{path.name}: symlink {name!r} has a {info.file_size}-byte target")
                target = archive.read(info).decode("utf-8", "surrogateescape")
                _make_symlink(root, name, target, path.name, budget)
                continue
            if mode and (
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
            ):
                raise UnsafeArchiveError(f"{path.name}: member {name!r} is a device file or FIFO - refused")
            dest = safe_member_path(root, name, path.name)
            if info.is_dir() or name.endswith("/"):
                dest.mkdir(parents=True, exist_ok=True)
                continue
            with archive.open(info) as src:
                _write_stream(src, dest, budget, path.name)
            count += 1
    return count


def _extract_tar(path: Path, root: Path, budget: _Budget) -> int:
    count = 0
    with tarfile.open(path, mode="r:*") as archive:
        for member in archive:
            name = member.name
            budget.add_members(path.name)
            if (
                member.isdev()
                or member.isfifo()
                or not (member.isfile() or member.isdir() or member.issym() or member.islnk())
            ):
                raise UnsafeArchiveError(f"{path.name}: member {name!r} is a device file or FIFO - refused")
            if member.issym():
                _make_symlink(root, name, member.linkname, path.name, budget)
                continue
            dest = safe_member_path(root, name, path.name)
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            if member.islnk():
                source = safe_member_path(root, member.linkname, path.name)
                real = os.path.realpath(source)
                if not _within(real, os.path.realpath(root)) or not os.path.isfile(real):
                    raise UnsafeArchiveError(
                        f"{path.name}: hard link {name!r} -> {member.linkname!r} points outside the folder"
                        " - refused"
                    )
                dest.parent.mkdir(parents=True, exist_ok=True)
                _clear(dest)
                try:
                    os.link(real, dest)
                except OSError:
                    shutil.copyfile(real, dest)
                count += 1
                continue
            budget.expect(path.name, member.size)
            src = archive.extractfile(member)
            if src is None:  # pragma: no cover - regular files always have data
                raise ExtractError(f"{path.name}: cannot read member {name!r}")
            with src:
                _write_stream(src, dest, budget, path.name)
            count += 1
    return count


def _extract_rar(path: Path, root: Path, budget: _Budget) -> int:
    try:
        import rarfile
    except ImportError as error:
        raise MissingToolError(
            f"{path.name}: RAR archives need the Python module 'rarfile' (pip install rarfile) and an "
            f"external tool; {RAR_TOOLS_HINT}"
        ) from error
    count = 0
    with rarfile.RarFile(str(path)) as archive:
        infos = archive.infolist()
        budget.add_members(path.name, len(infos))
        budget.expect(path.name, sum(info.file_size or 0 for info in infos))
        for info in infos:  # check every member before writing anything
            name = info.filename
            if info.is_symlink() or info.file_redir:
                raise UnsafeArchiveError(
                    f"{path.name}: member {name!r} is a link; links in RAR archives are refused"
                )
            if not info.is_dir() and not info.is_file():
                raise UnsafeArchiveError(
                    f"{path.name}: member {name!r} is not a regular file or folder - refused"
                )
            safe_member_path(root, name, path.name)
        needs_tool = any(
            not info.is_dir() and (info.compress_type != rarfile.RAR_M0 or info.needs_password())
            for info in infos
        )
        if needs_tool:
            try:
                rarfile.tool_setup()
            except rarfile.RarCannotExec as error:
                raise MissingToolError(
                    f"{path.name}: this RAR archive is compressed and no extraction tool was found; "
                    f"{RAR_TOOLS_HINT}"
                ) from error
        for info in infos:
            dest = safe_member_path(root, info.filename, path.name)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            try:
                with archive.open(info) as src:
                    _write_stream(src, dest, budget, path.name)
            except rarfile.Error as error:
                raise ExtractError(f"{path.name}: cannot extract {info.filename!r}: {error}") from error
            count += 1
    return count


def extract_archive(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    fmt: str,
    limits: ExtractLimits | None = None,
    budget: _Budget | None = None,
) -> int:
    """Extract archive ``path`` of format ``fmt`` into the existing folder ``root``; return the file count.

    ``fmt`` is one of ``zip``, ``tar``, ``tar.gz``, ``tar.bz2``, ``tar.xz``, ``rar``. Unsafe members raise
    :class:`UnsafeArchiveError`, an archive beyond ``limits`` :class:`ExtractLimitError`; the caller discards
    ``root`` (a temp folder, see :func:`extract_dataset`). ``budget`` is shared by the archives of one set.
    """
    path, root = Path(path), Path(root)
    budget = budget or _Budget(limits or ExtractLimits(), [path.stat().st_size])
    try:
        count = _extract_any(path, root, fmt, budget)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise ExtractError(f"{path.name}: corrupt or unreadable {fmt} archive: {error}") from error
    except ExtractError:
        raise
    except Exception as error:
        if type(error).__module__ == "rarfile":  # rarfile.Error and its subclasses (bad or truncated RAR)
            raise ExtractError(f"{path.name}: corrupt or unreadable rar archive: {error}") from error
        raise
    if budget.links:
        verify_links(root, path.name)
    return count


def _extract_any(path: Path, root: Path, fmt: str, budget: _Budget) -> int:
    if fmt == "zip":
        return _extract_zip(path, root, budget)
    if fmt in ("tar", "tar.gz", "tar.bz2", "tar.xz"):
        return _extract_tar(path, root, budget)
    if fmt == "rar":
        return _extract_rar(path, root, budget)
    raise ExtractError(f"{path.name}: unsupported archive format {fmt!r}")


def place_file(src: Path, root: Path, name: str) -> None:
    """Put a plain (non-archive) file at ``root/name``: a hard link where possible, else a copy."""
    dest = safe_member_path(root, name, src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clear(dest)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def read_marker(target: Path) -> dict[str, Any] | None:
    """The completion marker of an extracted folder, or None when the folder is incomplete or absent."""
    import json

    try:
        return json.loads((target / EXTRACTED_MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def extract_dataset(
    items: Iterable[tuple[Path, str, str]],
    target: str | os.PathLike[str],
    info: dict[str, Any] | None = None,
    limits: ExtractLimits | None = None,
) -> dict[str, Any]:
    """Extract ``items`` (``(path, name, format)``; format ``file``: link/copy as ``name``) into ``target``.

    Work happens in ``<parent>/.<target>.<random>.tmp`` (temp folders of killed runs are removed first); every
    link's real path is checked once all items are in, then the marker (``info`` plus counts) is written last
    and the folder is renamed over ``target`` (a previous ``target`` is moved aside and removed). A per-target
    lock serialises concurrent extractions. ``limits`` bound the set as a whole. Returns the marker.
    """
    items = list(items)
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with file_lock(parent / f".{target.name}.lock"):
        for stale in parent.glob(f".{target.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = make_temp_dir(parent, f".{target.name}.", ".tmp")
        try:
            budget = _Budget(limits or ExtractLimits(), [p.stat().st_size for p, _n, fmt in items if fmt != "file"])
            n_files = 0
            archives = []
            for path, name, fmt in items:
                if fmt == "file":
                    budget.add_members(name)
                    place_file(path, tmp, name)
                    n_files += 1
                else:
                    n_files += extract_archive(path, tmp, fmt, budget=budget)
                    archives.append(name)
            if budget.links:  # a member of one archive can change where a link of another one leads
                verify_links(tmp, ", ".join(archives))
            marker = {**(info or {}), "n_files": n_files, "archives": archives, "created": now_iso()}
            atomic_write_json(tmp / EXTRACTED_MARKER, marker)
            old = None
            if target.exists() or target.is_symlink():
                old = parent / f".{target.name}.{os.getpid()}.old.tmp"
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            raise
    return marker
