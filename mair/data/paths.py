"""Where data lives: the data root and its ``raw/``, ``extracted/``, ``prepared/`` and ``demo/`` folders.

The root is ``--data-dir`` (the ``root`` argument here), else ``$MAIR_DATA_DIR``, else ``./data`` relative to
the working directory (docs/contracts.md, "Paths and scopes"). Nothing here creates folders or writes;
:func:`is_prepared` and :func:`disk_usage` only look.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mair.runtime import switches

SCOPES: tuple[str, ...] = ("paper", "demo")
PREPARED_MARKER = ".prepared.json"
EXTRACTED_MARKER = ".extracted.json"
LOCK_FILE = "data.lock.json"

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")

PathLike = str | os.PathLike[str]


def check_dataset_id(dataset_id: str) -> str:
    """Return ``dataset_id`` if it is a safe folder name (lower-case letters, digits, ``_``), else raise."""
    if not isinstance(dataset_id, str) or not _ID_RE.match(dataset_id):
        raise ValueError(f"invalid dataset id {dataset_id!r}: use lower-case letters, digits and '_'")
    return dataset_id


def data_dir(root: PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$MAIR_DATA_DIR``, else ``./data`` (absolute)."""
    if root is None:
        root = switches.get("MAIR_DATA_DIR") or "data"
    return Path(root).expanduser().absolute()


def raw_dir(dataset_id: str, root: PathLike | None = None) -> Path:
    """``<root>/raw/<id>``: downloaded files exactly as the catalog names them."""
    return data_dir(root) / "raw" / check_dataset_id(dataset_id)


def extracted_dir(dataset_id: str, root: PathLike | None = None) -> Path:
    """``<root>/extracted/<id>``: archive contents after safe extraction."""
    return data_dir(root) / "extracted" / check_dataset_id(dataset_id)


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"invalid scope {scope!r}: expected one of {', '.join(SCOPES)}")
    return scope


def prepared_dir(dataset_id: str, scope: str = "paper", root: PathLike | None = None) -> Path:
    """``<root>/prepared/<id>`` (scope ``paper``) or ``<root>/demo/prepared/<id>`` (scope ``demo``)."""
    base = data_dir(root) if _check_scope(scope) == "paper" else data_dir(root) / "demo"
    return base / "prepared" / check_dataset_id(dataset_id)


def prepared_marker(dataset_id: str, scope: str = "paper", root: PathLike | None = None) -> Path:
    """The completion marker ``.prepared.json`` of a prepared folder."""
    return prepared_dir(dataset_id, scope, root) / PREPARED_MARKER


def is_prepared(dataset_id: str, scope: str = "paper", root: PathLike | None = None) -> bool:
    """True when the prepared folder of ``dataset_id`` in ``scope`` is complete (its marker exists)."""
    return prepared_marker(dataset_id, scope, root).is_file()


def lock_path(root: PathLike | None = None) -> Path:
    """``<root>/data.lock.json``: checksums recorded by first verified downloads."""
    return data_dir(root) / LOCK_FILE


def disk_usage(path: Path) -> int:
    """Bytes used by the files under ``path`` (hard links counted once, links not followed), 0 if absent."""
    total = 0
    seen: set[tuple[int, int]] = set()
    if not path.exists():
        return 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_size
    return total
