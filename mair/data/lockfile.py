"""The lock file ``<data root>/data.lock.json``: checksums of verified files, and a small inter-process lock.

Every file that passed verification gets an entry ``"<dataset>/<file>": {"sha256", "size", "origin", ...}``.
Where the catalog publishes no sha256, the first verified download (or ``mair data add``) records it here
(``origin: "first-download"`` / ``"first-add"``) and every later download of that file must match it. Entries for
files whose checksum the catalog gives say ``origin: "catalog"``; they only record that the file on disk was
verified.

A first-seen value is only pinned when the transfer is known to be complete (:func:`new_entry`): the server
announced a length and every byte of it arrived, or the catalog's size matched. A transfer that may have been cut
(no ``Content-Length``) is recorded as ``origin: "unconfirmed-download"``: never a reference, fetched again by the
next download, and pinned once a second such transfer gives the same bytes. :func:`provenance` says where a
recorded value came from, for messages. Every download that records checksums (data, published weights) uses
:func:`new_entry`, :func:`is_reference` and :func:`provenance`, so the rules live here only.

Updates are read-modify-write under an exclusive ``flock`` on ``data.lock.json.lock`` and written atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mair.common.atomic import atomic_write_json
from mair.data.paths import LOCK_FILE

try:  # POSIX only; elsewhere concurrent writers are not guarded
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_VERSION = 1


class LockBusyError(RuntimeError):
    """Another process holds a non-blocking lock."""


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies: a team can share the lock
    try:
        if fcntl is not None:
            flags = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError as error:
                raise LockBusyError(f"{path} is held by another process") from error
        yield
    finally:
        os.close(fd)  # closing releases the flock


def now_iso() -> str:
    """The current UTC time, ISO 8601, seconds precision."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


CATALOG = "catalog"
_UNCONFIRMED = "unconfirmed-"


def new_entry(digests: dict[str, Any], source: str, via: str, catalog_checksum: bool, complete: bool) -> dict[str, Any]:
    """The lock entry of a file that passed verification (``digests``: ``size``, ``sha256``, ...).

    ``via`` is how it came (``download``, ``add``); ``catalog_checksum`` whether the catalog gave a checksum it
    was verified against; ``complete`` whether the bytes are known to be all of the file (a length announced by
    the server and matched, the catalog's size matched, or a file the user handed over). Without a catalog
    checksum, only a complete file becomes the reference (``first-<via>``); otherwise ``unconfirmed-<via>``.
    """
    if catalog_checksum:
        origin = CATALOG
    elif complete:
        origin = f"first-{via}"
    else:
        origin = f"{_UNCONFIRMED}{via}"
    return {**digests, "origin": origin, "source": source}


def is_reference(entry: dict[str, Any] | None) -> bool:
    """Whether ``entry``'s sha256/size pin the file (not a possibly incomplete, unconfirmed transfer)."""
    return bool(entry) and not str(entry.get("origin", "")).startswith(_UNCONFIRMED)


def provenance(entry: dict[str, Any]) -> str:
    """Where a recorded value came from: ``catalog`` or ``recorded at first download on DATE from URL``."""
    origin = str(entry.get("origin", ""))
    if origin == CATALOG:
        return CATALOG
    how = origin.split("-", 1)[-1] if "-" in origin else "download"
    day = str(entry.get("recorded", "?"))[:10]
    where = entry.get("source") or "?"
    if origin.startswith(_UNCONFIRMED):
        return f"seen at an unconfirmed {how} on {day} from {where}"
    return f"recorded at first {how} on {day} from {where}, in {LOCK_FILE}"


class LockFile:
    """Read and update ``data.lock.json`` (keys ``"<dataset>/<file>"``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @staticmethod
    def key(dataset_id: str, name: str) -> str:
        """The entry key of file ``name`` of dataset ``dataset_id``."""
        return f"{dataset_id}/{name}"

    def _read_unlocked(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"version": LOCK_VERSION, "files": {}}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.path}: not valid JSON ({error}); fix or remove it") from error
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError(f"{self.path}: expected an object with a 'files' mapping")
        return data

    def entries(self) -> dict[str, dict[str, Any]]:
        """All entries (a copy)."""
        return dict(self._read_unlocked()["files"])

    def get(self, dataset_id: str, name: str) -> dict[str, Any] | None:
        """The entry of one file, or None."""
        return self._read_unlocked()["files"].get(self.key(dataset_id, name))

    def record(self, dataset_id: str, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Store ``entry`` for one verified file; see :meth:`record_many`."""
        return self.record_many(dataset_id, {name: entry})[name]

    def record_many(self, dataset_id: str, entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Store entries ``{file name: entry}`` for verified files of one dataset in one locked update.

        The first recording of a file stays the reference: its ``origin``, ``recorded`` and ``source`` are
        kept, and a different sha256 raises ``ValueError`` (callers verify first; this guards against a race).
        An unconfirmed entry (:func:`is_reference` false) is replaced by the new one, or, when an unconfirmed
        transfer gives the same sha256 again, pinned as ``first-<via>`` (two transfers agree).
        """
        out: dict[str, dict[str, Any]] = {}
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            self._remove_stale_temp_files()
            data = self._read_unlocked()
            stamp = now_iso()
            for name, entry in entries.items():
                key = self.key(dataset_id, name)
                old = data["files"].get(key) or {}
                if old and not is_reference(old):
                    same = bool(old.get("sha256")) and old.get("sha256") == entry.get("sha256")
                    if same and not is_reference(entry):
                        entry = {**entry, "origin": str(entry["origin"]).replace(_UNCONFIRMED, "first-", 1)}
                        entry["confirmed"] = "two transfers without a length gave the same bytes"
                        old = {k: v for k, v in old.items() if k in ("recorded", "source")}
                    else:
                        old = {}
                if old.get("sha256") and entry.get("sha256") and old["sha256"] != entry["sha256"]:
                    raise ValueError(
                        f"{key}: sha256 {entry['sha256']} differs from the one recorded in {self.path} "
                        f"({old['sha256']})"
                    )
                merged = {k: v for k, v in entry.items() if v is not None}
                merged.update({k: old[k] for k in ("origin", "recorded", "source") if k in old})
                merged.setdefault("recorded", stamp)
                merged["verified"] = stamp
                data["files"][key] = merged
                out[name] = merged
            data["version"] = LOCK_VERSION
            atomic_write_json(self.path, data)
        return out

    def forget(self, dataset_id: str, names: list[str] | None = None) -> list[str]:
        """Remove the entries of ``dataset_id`` (only the files ``names`` when given); return the removed keys."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            self._remove_stale_temp_files()
            if not self.path.exists():
                return []
            data = self._read_unlocked()
            prefix = self.key(dataset_id, "")
            wanted = None if names is None else {self.key(dataset_id, n) for n in names}
            removed = [k for k in data["files"] if k.startswith(prefix) and (wanted is None or k in wanted)]
            if removed:
                for key in removed:
                    del data["files"][key]
                atomic_write_json(self.path, data)
        return removed

    def _remove_stale_temp_files(self) -> None:
        """Temp files of the lock file's atomic writes left by a killed writer (only run under the lock)."""
        for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.part"):
            stale.unlink(missing_ok=True)
