"""Fetch, verify and register the files of the catalog under ``<data root>/raw/<id>/``.

* HTTP(S) with ``urllib``; an interrupted transfer resumes with an HTTP ``Range`` request into
  ``<file>.part``; transient failures are retried with bounded exponential backoff.
* ``gdrive:<id>`` URLs go through gdown (:mod:`mair.data.gdrive`, the one Drive path of data and weights): it
  follows Drive's confirmation pages and resumes; the file appears at the ``.part`` path only when complete.
* A mirror (``--mirror`` or ``$MAIR_DATA_MIRROR``) serves ``<base>/<dataset>/<file>`` instead of the catalog
  URLs.
* Size and sha256 (or sha1/md5 when only those are published, or the sha256 recorded in ``data.lock.json`` by
  the first download) are verified BEFORE the atomic rename to the final path; a mismatch deletes the
  ``.part``. A first-seen sha256 is only pinned when the transfer is known complete (see
  :mod:`mair.data.lockfile`); messages say where an expected value came from.
* Login-only and manual sets raise :class:`ManualDownloadRequired` with the catalog's instructions;
  :func:`add_files` registers files the user fetched by hand (verified first, hard-linked or copied).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mair import __version__
from mair.common.atomic import _fsync_dir, atomic_write_json, make_temp_file
from mair.common.errors import DownloadError
from mair.data.catalog import DEFAULT_SOURCE, Catalog, Dataset, FileSpec, Source, infer_format
from mair.data.extract import ExtractLimits, extract_dataset, read_marker
from mair.data.gdrive import download_drive_file
from mair.data.lockfile import LockBusyError, LockFile, file_lock, is_reference, new_entry, provenance
from mair.data.paths import PathLike, extracted_dir, lock_path, raw_dir
from mair.runtime import switches

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_HASH_BUFFER = 1 << 20

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ChecksumMismatch(DownloadError):
    """A file's size or checksum differs from the catalog's (or the lock file's)."""

    def __init__(self, label: str, algorithm: str, expected: Any, actual: Any, origin: str = "catalog") -> None:
        self.label, self.algorithm, self.expected, self.actual = label, algorithm, expected, actual
        super().__init__(
            f"{label}: {algorithm} mismatch: expected {expected} ({origin}), got {actual}; the file was not kept"
        )


class ManualDownloadRequired(DownloadError):
    """The dataset must be fetched by hand; the message holds the catalog's instructions."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        super().__init__(
            f"{dataset.id} ({dataset.name}) cannot be downloaded automatically (access: {dataset.access}).\n"
            f"{(dataset.manual_instructions or '').rstrip()}"
        )


class _Transient(Exception):
    """A failure worth retrying (connection reset, timeout, truncated body, 5xx)."""


@dataclass
class DownloadOptions:
    """How to download; the defaults suit real hosts, tests shorten ``backoff`` and ``timeout``."""

    retries: int = 5
    backoff: float = 2.0
    max_backoff: float = 60.0
    timeout: float = 60.0
    mirror: str | None = None
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    quiet: bool = False
    chunk_size: int = 1 << 20

    def resolved_mirror(self) -> str | None:
        """``mirror`` or ``$MAIR_DATA_MIRROR`` (None when neither is set)."""
        if self.mirror:
            return self.mirror.rstrip("/") or None
        mirror: str | None = switches.get("MAIR_DATA_MIRROR")
        return mirror

    def show_progress(self) -> bool:
        """Whether to draw a progress bar."""
        if self.quiet:
            return False
        return sys.stderr.isatty() if self.progress is None else self.progress


# ------------------------------------------------------------------------------------------------ hashing


def file_digests(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each of ``algorithms`` (one read pass)."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BUFFER):
            for hasher in hashers.values():
                hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def expected_checksums(spec: FileSpec | None, locked: dict[str, Any] | None) -> dict[str, tuple[Any, str]]:
    """``{algorithm: (value, origin)}`` a file must match: the catalog's, then the lock file's sha256/size.

    Unconfirmed lock entries (a transfer that may have been cut) are no reference and are ignored.
    """
    out: dict[str, tuple[Any, str]] = {}
    if spec is not None:
        for algorithm in ("size", "sha256", "sha1", "md5"):
            value = getattr(spec, algorithm)
            if value is not None:
                out[algorithm] = (value, "catalog")
    if locked and is_reference(locked):
        for algorithm in ("size", "sha256"):
            if algorithm not in out and locked.get(algorithm) is not None:
                out[algorithm] = (locked[algorithm], provenance(locked))
    return out


def verify_file(path: Path, label: str, spec: FileSpec | None, locked: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``path`` against the catalog and the lock file; return ``{size, sha256, ...}`` or raise."""
    expected = expected_checksums(spec, locked)
    size = path.stat().st_size
    if "size" in expected and expected["size"][0] != size:
        raise ChecksumMismatch(label, "size", expected["size"][0], size, expected["size"][1])
    algorithms = tuple(a for a in ("sha256", "sha1", "md5") if a in expected or a == "sha256")
    digests = file_digests(path, algorithms)
    for algorithm in algorithms:
        if algorithm in expected and expected[algorithm][0] != digests[algorithm]:
            value, origin = expected[algorithm]
            raise ChecksumMismatch(label, algorithm, value, digests[algorithm], origin)
    return {"size": size, **digests}


# ------------------------------------------------------------------------------------------------ progress


class _Progress:
    """A one-line percentage bar on stderr, redrawn at most five times a second."""

    def __init__(self, label: str, total: int | None, done: int, enabled: bool) -> None:
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self.start, self.start_done, self.last = time.monotonic(), done, 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = (self.done - self.start_done) / max(now - self.start, 1e-6)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 24)
            text = f"{self.label} [{bar:<24}] {100 * frac:5.1f}% {human_size(self.done)}/{human_size(self.total)}"
        else:
            text = f"{self.label} {human_size(self.done)}"
        sys.stderr.write(f"\r{text} {human_size(int(rate))}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


def human_size(n: int | None) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units); ``?`` for None."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


# ------------------------------------------------------------------------------------------------ HTTP


def _request(url: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
    base = {"User-Agent": f"mair/{__version__} (+https://github.com/)", "Accept-Encoding": "identity"}
    return urllib.request.Request(url, headers={**base, **(headers or {})})


def _open(url: str, opts: DownloadOptions, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """``urlopen`` mapping transient failures to :class:`_Transient`, the rest to :class:`DownloadError`."""
    try:
        return urllib.request.urlopen(_request(url, headers), timeout=opts.timeout)
    except urllib.error.HTTPError as error:
        if error.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {error.code} {error.reason}") from error
        if error.code == 416:
            raise
        raise DownloadError(f"HTTP {error.code} {error.reason} from {url}") from error
    except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise _Transient(f"{type(error).__name__}: {reason}") from error


def _with_retries(action: Callable[[], Any], label: str, opts: DownloadOptions, log: Log) -> Any:
    attempt = 0
    while True:
        try:
            return action()
        except _Transient as error:
            attempt += 1
            if attempt > opts.retries:
                raise DownloadError(f"{label}: giving up after {attempt} attempts: {error}") from error
            wait = min(opts.backoff * 2 ** (attempt - 1), opts.max_backoff)
            if not opts.quiet:
                log(f"{label}: {error}; retry {attempt}/{opts.retries} in {wait:.1f} s")
            time.sleep(wait)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` of a ``Content-Range: bytes a-b/total`` (or ``bytes */total``) header."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _is_html(response: http.client.HTTPResponse) -> bool:
    return "text/html" in (response.headers.get("Content-Type") or "").lower()


def fetch_to_part(
    url: str,
    part: Path,
    label: str,
    opts: DownloadOptions,
    expected_size: int | None,
    log: Log = _stderr,
    size_origin: str = "catalog",
) -> bool:
    """Download ``url`` into ``part``, resuming from its current size with ``Range`` and retrying.

    Returns whether the transfer is known to be complete: the server announced the file's length and ``part``
    holds that many bytes (or ``expected_size``, from ``size_origin``, was reached). False means the server sent
    no length, so a connection cut early cannot be told from the end of the file.
    """

    def once() -> bool:
        offset = part.stat().st_size if part.exists() else 0
        if expected_size is not None and offset > expected_size:
            part.unlink()
            offset = 0
        if expected_size is not None and offset == expected_size and offset > 0:
            return True  # complete from an earlier run; verified by the caller
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = _open(url, opts, headers)
        except urllib.error.HTTPError as error:  # 416: the part already holds the whole file (or more)
            _start, total = _content_range(error.headers.get("Content-Range") if error.headers else None)
            if total is not None and total == offset:
                return True
            part.unlink(missing_ok=True)
            raise _Transient("HTTP 416 (range not satisfiable); restarting from zero") from error
        with response:
            if _is_html(response) and not part.name.lower().endswith((".html.part", ".htm.part")):
                raise DownloadError(
                    f"{label}: {url} returned an HTML page instead of the file (a login page, a quota "
                    "notice or a dead link); fetch it by hand and use `mair data add`"
                )
            start, total = _content_range(response.headers.get("Content-Range"))
            if response.status == 206 and (not offset or start != offset):
                part.unlink(missing_ok=True)  # a range we did not ask for: start again from zero
                raise _Transient(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
            if offset and response.status == 206:
                mode = "ab"
            else:  # the server sent the whole file
                offset, mode = 0, "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if expected_size is not None and total is not None and total != expected_size:
                raise ChecksumMismatch(label, "size", expected_size, f"{total} (announced by the server)", size_origin)
            if offset and not opts.quiet:
                log(f"{label}: resuming at byte {offset}")
            bar = _Progress(label, total, offset, opts.show_progress())
            try:
                with open(part, mode) as out:
                    while True:
                        try:
                            block = response.read(opts.chunk_size)
                        except (TimeoutError, http.client.HTTPException, ConnectionError) as error:
                            raise _Transient(f"transfer interrupted: {type(error).__name__}") from error
                        if not block:
                            break
                        out.write(block)
                        bar.update(len(block))
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                bar.close()
            size = part.stat().st_size
            if total is not None and size < total:
                raise _Transient(f"transfer interrupted at {size} of {total} bytes")
            return total is not None and size == total

    return bool(_with_retries(once, label, opts, log))


# ------------------------------------------------------------------------------------------------ one file


def mirror_url(base: str, dataset_id: str, name: str) -> str:
    """``<base>/<dataset>/<file>`` with the file's path segments URL-quoted."""
    return f"{base.rstrip('/')}/{dataset_id}/{urllib.parse.quote(name)}"


def _entry(
    digests: dict[str, Any], spec: FileSpec | None, source: str, via: str, complete: bool = True
) -> dict[str, Any]:
    return new_entry(digests, source, via, catalog_checksum=spec is not None and spec.checksum_known, complete=complete)


def _has_stale(final: Path) -> bool:
    part = final.with_name(final.name + ".part")
    return part.exists() or any(final.parent.glob(f".{glob.escape(final.name)}.*.add"))


def _remove_stale(final: Path, resumable: bool) -> None:
    """Leftovers of killed runs for ``final`` (call under its guard): temp copies of `mair data add` and, when
    it cannot be resumed, the ``.part`` with its origin file."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.add"):
        stale.unlink(missing_ok=True)
    if not resumable:
        final.with_name(final.name + ".part").unlink(missing_ok=True)
        final.with_name(f".{final.name}.part.json").unlink(missing_ok=True)


@contextlib.contextmanager
def _busy_guard(path: Path, label: str) -> Iterator[None]:
    try:
        with file_lock(path, blocking=False):
            yield
    except LockBusyError as error:
        raise DownloadError(f"{label}: another process is fetching this file right now") from error


def download_file(
    dataset_id: str,
    spec: FileSpec,
    root: PathLike | None = None,
    opts: DownloadOptions | None = None,
    log: Log = _stderr,
    *,
    target: Path | None = None,
    manual_hint: str = "download it by hand and use `mair data add`",
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Fetch one catalog file into ``raw/<id>/<name>`` (verified first); return its path.

    An existing, recorded file is kept as it is. Each URL is tried in turn (or only the mirror); a checksum
    mismatch deletes the ``.part`` and moves on to the next URL; the first mismatch is raised when all fail.
    ``target`` puts the file elsewhere (the published weights; ``dataset_id`` is then only the lock-file key
    and ``spec.urls`` are used as given, no data mirror); ``manual_hint`` ends a Google Drive refusal;
    ``check(part)`` may refuse a complete, checksum-verified transfer (raising DownloadError) before anything is
    recorded or renamed (the weights: it must load into its experiment's network).
    """
    opts = opts or DownloadOptions()
    lock = LockFile(lock_path(root))
    final = target if target is not None else raw_dir(dataset_id, root) / spec.name
    part = final.with_name(final.name + ".part")
    origin_file = final.with_name(f".{final.name}.part.json")
    label = f"{dataset_id}/{spec.name}"
    final.parent.mkdir(parents=True, exist_ok=True)
    locked = lock.get(dataset_id, spec.name)
    guard = final.with_name(f".{final.name}.lock")
    pinned = is_reference(locked) and bool(locked and locked.get("sha256"))
    if final.is_file() and pinned and locked and locked.get("size") == final.stat().st_size:
        if _has_stale(final):
            with contextlib.suppress(DownloadError), _busy_guard(guard, label):  # busy: another process is on it
                _remove_stale(final, resumable=False)
                guard.unlink(missing_ok=True)
        return final
    if final.is_file() and (locked is None or is_reference(locked)):
        try:  # placed there by hand: verify it now (an unconfirmed earlier transfer is fetched again below)
            digests = verify_file(final, label, spec, locked)
            if check is not None:
                check(final)
        except DownloadError as error:
            raise DownloadError(f"{error}; {final} was there before this download: remove it") from error
        lock.record(dataset_id, spec.name, _entry(digests, spec, str(final), "download"))
        return final
    mirror = opts.resolved_mirror() if target is None else None
    urls = [mirror_url(mirror, dataset_id, spec.name)] if mirror else list(spec.urls)
    if not urls:
        raise DownloadError(f"{label}: the catalog gives no URL for this file")
    expected = expected_checksums(spec, locked)
    checksum_known = bool(expected.keys() - {"size"})
    expected_size, size_origin = expected.get("size", (None, "catalog"))
    errors: list[DownloadError] = []
    with _busy_guard(guard, label):
        _remove_stale(final, resumable=True)
        for index, url in enumerate(urls):
            more = index + 1 < len(urls)
            if part.exists() and not checksum_known and _read_origin(origin_file) != url:
                part.unlink()  # without a checksum, bytes from two different hosts must never be joined
            try:
                atomic_write_json(origin_file, {"url": url})
                if not opts.quiet:
                    log(f"{label}: fetching {url}")
                if url.startswith("gdrive:"):
                    complete = download_drive_file(url[len("gdrive:") :], part, label, manual_hint,
                                                   timeout=opts.timeout, retries=opts.retries,
                                                   quiet=not opts.show_progress())
                else:
                    complete = fetch_to_part(url, part, label, opts, expected_size, log, size_origin)
                digests = verify_file(part, label, spec, locked)
                complete = complete or expected_size is not None  # a known size was matched
                if check is not None:
                    try:
                        check(part)
                    except DownloadError:
                        part.unlink(missing_ok=True)
                        raise
                    complete = True  # the caller's check reads the whole file (a cut checkpoint does not load)
                # record first, then rename: a crash in between leaves a lock entry the file will match
                recorded = lock.record(dataset_id, spec.name, _entry(digests, spec, url, "download", complete))
            except DownloadError as error:
                if isinstance(error, ChecksumMismatch):
                    part.unlink(missing_ok=True)
                errors.append(error)
                if more and not opts.quiet:
                    log(f"{label}: {error}; trying the next URL")
                continue
            except ValueError as error:  # another process recorded a different file meanwhile
                part.unlink(missing_ok=True)
                raise DownloadError(f"{label}: {error}") from error
            os.replace(part, final)
            _fsync_dir(final.parent)
            origin_file.unlink(missing_ok=True)
            guard.unlink(missing_ok=True)
            if not is_reference(recorded):
                log(
                    f"{label}: the server sent no length, so this transfer may be incomplete; its sha256 "
                    f"{digests['sha256']} is not pinned (the next download fetches it again to confirm)"
                )
            elif not opts.quiet:
                log(f"{label}: verified sha256 {digests['sha256']}")
            return final
        if not part.exists():
            origin_file.unlink(missing_ok=True)
    mismatches = [e for e in errors if isinstance(e, ChecksumMismatch)]
    if mismatches:
        raise mismatches[0]
    raise DownloadError(f"{label}: every source failed:\n" + "\n".join(f"  {e}" for e in errors))


def _read_origin(path: Path) -> str | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")).get("url")
    except (OSError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------ datasets


def present_files(dataset: Dataset, root: PathLike | None = None) -> list[str]:
    """Names of the files under ``raw/<id>/`` (relative, POSIX), without hidden and ``.part`` files."""
    base = raw_dir(dataset.id, root)
    names: list[str] = []
    if not base.is_dir():
        return names
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(".part"):
                continue
            names.append(Path(folder, name).relative_to(base).as_posix())
    return names


def complete_source(dataset: Dataset, root: PathLike | None = None) -> Source | None:
    """The first source (default first) with all files in ``raw/<id>/``; for free-form sets, all files."""
    present = set(present_files(dataset, root))
    if dataset.accept_any_files and not dataset.files:
        if not present:
            return None
        files = tuple(FileSpec(name, (), format=infer_format(name)) for name in sorted(present))
        return Source(DEFAULT_SOURCE, "files added by hand", files)
    for source in dataset.sources().values():
        if source.files and all(spec.name in present for spec in source.files):
            return source
    return None


def _signature(dataset_id: str, source: Source, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {s.name: (entries.get(LockFile.key(dataset_id, s.name)) or {}).get("sha256") for s in source.files}


def _is_current(marker: dict[str, Any] | None, source: Source | None, signature: dict[str, Any]) -> bool:
    return (
        bool(marker) and source is not None and marker.get("source") == source.name and marker.get("files") == signature
    )


def extraction_is_current(
    dataset: Dataset,
    root: PathLike | None = None,
    source: Source | None = None,
    lock_entries: dict[str, dict[str, Any]] | None = None,
) -> bool:
    """Whether ``extracted/<id>/`` is complete (its marker, written last) and made from the raw files recorded
    now. When the raw files are gone (removed to save space after extraction), the marker alone decides.

    ``source`` (the complete source) and ``lock_entries`` may be given when the caller has them already.
    """
    marker = read_marker(extracted_dir(dataset.id, root))
    if marker is None:
        return False
    source = source or complete_source(dataset, root)
    if source is None:
        return True
    entries = lock_entries if lock_entries is not None else LockFile(lock_path(root)).entries()
    return _is_current(marker, source, _signature(dataset.id, source, entries))


def extract_raw(
    dataset: Dataset,
    root: PathLike | None = None,
    force: bool = False,
    log: Log = _stderr,
    quiet: bool = False,
    limits: ExtractLimits | None = None,
) -> dict[str, Any] | None:
    """Extract (or link) the complete source of ``dataset`` into ``extracted/<id>/``; skip when up to date.

    ``limits`` bound the bytes and members written (:class:`mair.data.extract.ExtractLimits`). Returns the
    completion marker, or None when the raw files are not all there.
    """
    source = complete_source(dataset, root)
    if source is None:
        return None
    lock = LockFile(lock_path(root))
    signature = _signature(dataset.id, source, lock.entries())
    target = extracted_dir(dataset.id, root)
    marker = read_marker(target)
    if marker and not force and _is_current(marker, source, signature):
        return marker
    base = raw_dir(dataset.id, root)
    items = [(base / spec.name, spec.name, spec.format) for spec in source.files]
    if not quiet:
        log(f"{dataset.id}: extracting {len(items)} file(s) into {target}")
    info = {"dataset": dataset.id, "source": source.name, "files": signature}
    return extract_dataset(items, target, info, limits)


def download_dataset(
    catalog: Catalog,
    dataset_id: str,
    root: PathLike | None = None,
    opts: DownloadOptions | None = None,
    source: str | None = None,
    extract: bool = True,
    log: Log = _stderr,
    limits: ExtractLimits | None = None,
) -> list[Path]:
    """Fetch every file of ``dataset_id`` (its default source or ``source``), then extract unless told not to.

    Raises :class:`ManualDownloadRequired` for login/manual sets whose files are not already there, and
    :class:`DownloadError` (after trying every file) when any file failed.
    """
    opts = opts or DownloadOptions()
    dataset = catalog.get(dataset_id)
    if dataset.is_derived:
        raise DownloadError(
            f"{dataset_id} is built from {', '.join(dataset.derived_from)}; download those "
            f"(mair data prepare {dataset_id} builds it)"
        )
    chosen = dataset.source(source)
    if source is None and dataset.is_manual:
        present = complete_source(dataset, root)
        if present is None:
            raise ManualDownloadRequired(dataset)
        paths = [raw_dir(dataset_id, root) / spec.name for spec in present.files]
        if extract:
            extract_raw(dataset, root, log=log, quiet=opts.quiet, limits=limits)
        return paths
    paths, errors = [], []
    for spec in chosen.files:
        try:
            paths.append(download_file(dataset_id, spec, root, opts, log))
        except DownloadError as error:
            errors.append(error)
    if errors:
        if len(errors) == 1:
            raise errors[0]
        raise DownloadError("\n".join(str(e) for e in errors))
    if extract:
        extract_raw(dataset, root, log=log, quiet=opts.quiet, limits=limits)
    return paths


# ------------------------------------------------------------------------------------------------ add


def _place_verified(
    src: Path, final: Path, label: str, spec: FileSpec | None, locked: dict[str, Any] | None, copy: bool
) -> dict[str, Any]:
    """Hard-link (or copy) ``src`` to a temp name beside ``final``, verify it there, rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    guard = final.with_name(f".{final.name}.lock")
    with _busy_guard(guard, label):
        _remove_stale(final, resumable=True)
        fd, tmp = make_temp_file(final.parent, f".{final.name}.", ".add")
        os.close(fd)
        try:
            return _verify_in_place(src, tmp, final, label, spec, locked, copy)
        finally:
            guard.unlink(missing_ok=True)


def _verify_in_place(
    src: Path,
    tmp: Path,
    final: Path,
    label: str,
    spec: FileSpec | None,
    locked: dict[str, Any] | None,
    copy: bool,
) -> dict[str, Any]:
    try:
        linked = False
        if not copy:
            tmp.unlink()
            try:
                os.link(src, tmp)
                linked = True
            except OSError:
                pass
        if not linked:
            with open(src, "rb") as reader, open(tmp, "wb") as writer:
                shutil.copyfileobj(reader, writer, _HASH_BUFFER)
                writer.flush()
                os.fsync(writer.fileno())
        digests = verify_file(tmp, label, spec, locked)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return digests
    finally:
        tmp.unlink(missing_ok=True)


def _candidates(dataset: Dataset, src: Path) -> list[tuple[Path, str]]:
    """``(path on disk, catalog name)`` pairs found at ``src`` (a file or a folder)."""
    if dataset.accept_any_files and not dataset.files:
        if src.is_file():
            return [(src, src.name)]
        out = []
        for folder, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(folder, name)
                if name.startswith(".") or name.endswith(".part") or not path.is_file():
                    continue
                out.append((path, path.relative_to(src).as_posix()))
        return out
    specs = dataset.all_files()
    if src.is_file():
        hits = [s for s in specs if s.name == src.name] or [s for s in specs if Path(s.name).name == src.name]
        return [(src, hits[0].name)] if len(hits) == 1 else []
    by_base: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            by_base.setdefault(name, []).append(Path(folder, name))
    out = []
    for spec in specs:
        direct = src / spec.name
        if direct.is_file():
            out.append((direct, spec.name))
            continue
        matches = [p for p in by_base.get(Path(spec.name).name, []) if p.as_posix().endswith("/" + spec.name)]
        matches = matches or by_base.get(Path(spec.name).name, [])
        if len(matches) == 1:
            out.append((matches[0], spec.name))
    return out


def add_files(
    catalog: Catalog,
    dataset_id: str,
    from_path: PathLike,
    root: PathLike | None = None,
    copy: bool = False,
    extract: bool = True,
    log: Log = _stderr,
    quiet: bool = False,
    limits: ExtractLimits | None = None,
) -> list[str]:
    """Register files the user already has: verify each against the catalog/lock, then link or copy into raw/.

    ``from_path`` is a file or a folder (searched for the catalog's file names; for free-form sets every file
    in it is taken, keeping relative paths). Returns the names registered; raises ``ValueError`` when nothing
    matches and :class:`ChecksumMismatch` on a bad file (nothing of that file is kept).
    """
    dataset = catalog.get(dataset_id)
    if dataset.is_derived:
        raise ValueError(f"{dataset_id} is built from {', '.join(dataset.derived_from)}; add those instead")
    src = Path(from_path).expanduser()
    if not src.exists():
        raise ValueError(f"{src}: no such file or folder")
    pairs = _candidates(dataset, src)
    if not pairs:
        expected = ", ".join(s.name for s in dataset.all_files()[:8]) or "any files"
        raise ValueError(f"{src}: none of the files of {dataset_id} found there (expected names: {expected}...)")
    lock = LockFile(lock_path(root))
    known = lock.entries()
    base = raw_dir(dataset_id, root)
    batch: dict[str, dict[str, Any]] = {}
    added: list[str] = []
    for path, name in pairs:
        label = f"{dataset_id}/{name}"
        spec = dataset.file_spec(name)
        locked = known.get(LockFile.key(dataset_id, name))
        final = base / name
        if (
            final.exists()
            and is_reference(locked)
            and locked.get("size") == final.stat().st_size
            and _same_file(path, final)
        ):
            added.append(name)
            continue
        digests = _place_verified(path, final, label, spec, locked, copy)
        batch[name] = _entry(digests, spec, str(path), "add")
        added.append(name)
        if len(batch) >= 1000:
            lock.record_many(dataset_id, batch)
            batch = {}
    if batch:
        lock.record_many(dataset_id, batch)
    if not quiet:
        log(f"{dataset_id}: registered {len(added)} file(s) in {base}")
    if extract:
        extract_raw(dataset, root, log=log, quiet=quiet, limits=limits)
    return added


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


__all__ = [
    "ChecksumMismatch",
    "DownloadError",
    "DownloadOptions",
    "ManualDownloadRequired",
    "add_files",
    "download_dataset",
    "download_file",
    "extract_raw",
    "extraction_is_current",
    "fetch_to_part",
    "file_digests",
    "verify_file",
]
