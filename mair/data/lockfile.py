"""The lock file ``<data root>/data.lock.json``: checksums of verified files, and a small inter-process lock.

Every file that passed verification gets an entry ``"<dataset>/<file>": {"sha256", "size", "origin", ...}``.
Where the catalog publishes no sha256, the first verified download (or ``mair data add``) records it here
(``origin: "first-download"``) and every later download of that file must match it. Entries for files whose
checksum the catalog gives say ``origin: "catalog"``; they only record that the file on disk was verified.

Updates are read-modify-write under an exclusive ``flock`` on ``data.lock.json.lock`` and written atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mair.atomic import atomic_write_json

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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
        """
        out: dict[str, dict[str, Any]] = {}
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            data = self._read_unlocked()
            stamp = now_iso()
            for name, entry in entries.items():
                key = self.key(dataset_id, name)
                old = data["files"].get(key) or {}
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
