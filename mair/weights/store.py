"""Published checkpoints on disk: where they live, what is there, fetching, registering and forgetting them.

* Files live under the data root: ``<data>/weights/published/<file>`` (paper networks) and
  ``<data>/demo/weights/published/<file>`` (demo scope: demo-size networks under the official names, for tests
  and teams that mirror their own).
* Their checksums live in ``<data>/data.lock.json`` beside the datasets', keyed by that folder
  (``weights/published/MaIR_SR_x2.pth``). No checksum is published: the first complete download whose file also
  loads into its experiment's network records it, every later download or ``add`` must match it.
* Downloads go through :func:`mair.data.download.download_file` (resume, lock, verification before the atomic
  rename): from ``$MAIR_WEIGHTS_MIRROR`` (``<URL>/<file name>``) when set, else from the authors' Google Drive
  folder through gdown (:mod:`mair.data.gdrive`).
* :func:`check_fits` is the strict test (every key and shape, ``torch.load(weights_only=True)``) run before
  anything is recorded; a checkpoint of another experiment is refused naming both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mair.data.catalog import FileSpec
from mair.data.download import DownloadError, DownloadOptions, _place_verified, download_file, verify_file
from mair.data.lockfile import LockBusyError, LockFile, file_lock, is_reference, new_entry, provenance
from mair.data.paths import PathLike, data_dir, lock_path
from mair.runtime import switches
from mair.weights.catalog import PublishedWeights, WeightsCatalog

SCOPES = ("paper", "demo")
MIRROR_ENV = "MAIR_WEIGHTS_MIRROR"

Log = Callable[[str], None]


class WeightsError(ValueError):
    """A published checkpoint that cannot be used (missing, of another experiment, unreadable)."""


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise WeightsError(f"invalid scope {scope!r}: expected one of {', '.join(SCOPES)}")
    return scope


def lock_id(scope: str) -> str:
    """The folder of the published weights relative to the data root: their key prefix in data.lock.json."""
    return "weights/published" if _check_scope(scope) == "paper" else "demo/weights/published"


def weights_dir(scope: str = "paper", root: PathLike | None = None) -> Path:
    """``<data>/weights/published`` (paper) or ``<data>/demo/weights/published`` (demo)."""
    return data_dir(root) / lock_id(scope)


def weights_path(entry: PublishedWeights, scope: str = "paper", root: PathLike | None = None) -> Path:
    """Where the published file of ``entry`` lives."""
    return weights_dir(scope, root) / entry.file


def mirror_base() -> str | None:
    """``$MAIR_WEIGHTS_MIRROR`` without a trailing slash, or None."""
    mirror: str | None = switches.get(MIRROR_ENV)
    return mirror


def manual_hint(catalog: WeightsCatalog, entry: PublishedWeights, scope: str) -> str:
    """What to do when the download cannot be automatic."""
    demo = " --scope demo" if scope == "demo" else ""
    return (
        f"download {entry.file} by hand from {catalog.folder_url} and register it with "
        f"`mair weights add {entry.experiment}{demo} --from PATH`"
    )


# ------------------------------------------------------------------------------------------------ fitting


@functools.cache
def _shapes(experiment: str, scope: str) -> dict[str, tuple[int, ...]]:
    """``{state_dict key: shape}`` of an experiment's network at ``scope`` (built once on the CPU, cached)."""
    import torch

    from mair.experiments import load
    from mair.models import from_official

    net = load(experiment, scope).network
    with torch.no_grad():
        model = from_official(net.arch, **net.constructor_kwargs())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _differences(state: dict[str, Any], want: dict[str, tuple[int, ...]]) -> str | None:
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [(k, tuple(state[k].shape), want[k]) for k in want if k in state and tuple(state[k].shape) != want[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k, a, b = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k}: file {a}, network {b})")
    return "; ".join(parts) or None


def check_fits(
    path: Path, experiment: str, scope: str, candidates: Sequence[str] = (), shown: str | None = None
) -> None:
    """Raise :class:`WeightsError` unless ``path`` loads strictly into ``experiment``'s network at ``scope``.

    The file is read with ``weights_only=True``. When it does not fit, ``candidates`` (other experiment ids) are
    tried, and the one it fits is named in the message.
    """
    from mair.models.checkpoint import CheckpointError, read_state_dict

    name = shown or str(path)
    try:
        state, _key = read_state_dict(path)
    except CheckpointError as error:
        raise WeightsError(str(error).replace(str(path), name, 1)) from None
    problem = _differences(state, _shapes(experiment, scope))
    if problem is None:
        return
    fits = [c for c in candidates if c != experiment and _differences(state, _shapes(c, scope)) is None]
    scope_text = " (demo scope)" if scope == "demo" else ""
    if fits:
        raise WeightsError(
            f"{name} is a checkpoint of {' or '.join(fits)}, not of {experiment}{scope_text}: it does not load "
            f"into the {experiment} network ({problem})"
        )
    raise WeightsError(f"{name} does not load into the {experiment} network{scope_text}: {problem}")


# ------------------------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class WeightsStatus:
    """What is known and present of one published checkpoint."""

    experiment: str
    file: str
    path: Path
    source: str
    size: int | None
    sha256: str | None
    checksum_origin: str | None  # "catalog", "first-download", "first-add" or None (not known yet)
    present: bool
    recorded: bool  # present and its size matches the lock file's entry

    def as_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "file": self.file,
            "path": str(self.path),
            "source": self.source,
            "size": self.size,
            "sha256": self.sha256,
            "checksum_origin": self.checksum_origin,
            "present": self.present,
            "recorded": self.recorded,
        }


def source_of(catalog: WeightsCatalog, entry: PublishedWeights) -> str:
    """Where a download of ``entry`` would come from."""
    mirror = mirror_base()
    if mirror:
        return f"{mirror}/{entry.file}"
    if entry.gdrive_id:
        return f"gdrive:{entry.gdrive_id}"
    return f"{catalog.folder_url} ({entry.file})"


def status(
    catalog: WeightsCatalog, scope: str = "paper", root: PathLike | None = None, ids: Sequence[str] | None = None
) -> list[WeightsStatus]:
    """One :class:`WeightsStatus` per experiment (all, or ``ids``) in catalog order."""
    entries = LockFile(lock_path(root)).entries()
    out = []
    for exp in ids or catalog.ids():
        entry = catalog.get(exp)
        path = weights_path(entry, scope, root)
        locked = entries.get(LockFile.key(lock_id(scope), entry.file)) or {}
        pinned = is_reference(locked) and bool(locked.get("sha256"))
        present = path.is_file()
        if entry.sha256:
            sha, origin = entry.sha256, "catalog"
        else:
            sha, origin = (locked.get("sha256"), locked.get("origin")) if pinned else (None, None)
        size = entry.size if entry.size is not None else (locked.get("size") if pinned else None)
        recorded = present and pinned and locked.get("size") == path.stat().st_size
        out.append(
            WeightsStatus(exp, entry.file, path, source_of(catalog, entry), size, sha, origin, present, recorded)
        )
    return out


# ------------------------------------------------------------------------------------------------ download


def _spec(entry: PublishedWeights, url: str) -> FileSpec:
    return FileSpec(entry.file, (url,), size=entry.size, sha256=entry.sha256)


def download(
    catalog: WeightsCatalog,
    ids: Sequence[str],
    scope: str = "paper",
    root: PathLike | None = None,
    opts: DownloadOptions | None = None,
    log: Log | None = None,
) -> tuple[list[Path], list[str]]:
    """Fetch the published files of ``ids``; return ``(paths fetched or already there, one error line each)``.

    Each file is verified (catalog or recorded checksum) and must load into its network before it is recorded
    and renamed into place; a failure leaves nothing at the final path and the other files still come.
    """
    from mair.data.download import _stderr

    log = log or _stderr
    opts = opts or DownloadOptions()
    mirror = mirror_base()
    folder: dict[str, str] | None = None
    paths: list[Path] = []
    errors: list[str] = []
    for exp in ids:
        entry = catalog.get(exp)
        target = weights_path(entry, scope, root)
        hint = manual_hint(catalog, entry, scope)
        label = f"{lock_id(scope)}/{entry.file}"

        def fits(part: Path, exp: str = exp, label: str = label) -> None:
            try:
                check_fits(part, exp, scope, catalog.ids(), shown=label)
            except WeightsError as error:
                raise DownloadError(f"{error}; the file was not kept") from None

        try:
            if mirror:
                url = f"{mirror}/{entry.file}"
            elif entry.gdrive_id:
                url = f"gdrive:{entry.gdrive_id}"
            else:
                recorded = LockFile(lock_path(root)).get(lock_id(scope), entry.file)
                if (
                    target.is_file()
                    and is_reference(recorded)
                    and recorded.get("sha256")
                    and recorded.get("size") == target.stat().st_size
                ):
                    paths.append(target)  # already there: no need to list the folder
                    continue
                if folder is None:
                    from mair.data.gdrive import list_drive_folder

                    folder = list_drive_folder(catalog.gdrive_folder, "published weights", hint, timeout=opts.timeout)
                if entry.file not in folder:
                    raise DownloadError(
                        f"{label}: not found in Google Drive folder {catalog.gdrive_folder} "
                        f"({len(folder)} files listed); {hint}"
                    )
                url = f"gdrive:{folder[entry.file]}"
            paths.append(
                download_file(
                    lock_id(scope), _spec(entry, url), root, opts, log, target=target, manual_hint=hint, check=fits
                )
            )
        except DownloadError as error:
            errors.append(" ".join(str(error).split()))
    return paths, errors


# ------------------------------------------------------------------------------------------------ add, forget


def add(
    catalog: WeightsCatalog,
    experiment: str,
    source: PathLike,
    scope: str = "paper",
    root: PathLike | None = None,
    copy: bool = False,
) -> Path:
    """Register a checkpoint the user downloaded by hand as ``experiment``'s published weights.

    Before anything is written: the file must load strictly into the experiment's network (another
    experiment's checkpoint is refused naming both) and match the catalog's or the recorded checksum. Then it is
    hard-linked (or copied) into place atomically and its sha256 recorded.
    """
    entry = catalog.get(experiment)
    src = Path(source).expanduser()
    if not src.is_file():
        raise WeightsError(f"{src}: no such file")
    other = catalog.by_file(src.name)
    if other is not None and other.experiment != experiment:
        raise WeightsError(
            f"{src} is the published file of {other.experiment} ({other.file}), not of {experiment} "
            f"({entry.file}): add it with `mair weights add {other.experiment} --from {src}`"
        )
    check_fits(src, experiment, scope, catalog.ids())
    lock = LockFile(lock_path(root))
    final = weights_path(entry, scope, root)
    label = f"{lock_id(scope)}/{entry.file}"
    locked = lock.get(lock_id(scope), entry.file)
    spec = FileSpec(entry.file, (), size=entry.size, sha256=entry.sha256)
    if is_reference(locked) and locked.get("sha256") and not entry.sha256:
        actual = verify_file(src, label, None, None)["sha256"]
        if actual != locked["sha256"]:
            raise WeightsError(
                f"{src}: sha256 {actual} differs from the one {provenance(locked)} for {label} "
                f"({locked['sha256']}); if the authors replaced the file, run `mair weights forget {experiment}` first"
            )
    digests = _place_verified(src, final, label, spec, locked, copy)
    record = new_entry(digests, str(src), "add", catalog_checksum=bool(entry.sha256), complete=True)
    lock.record(lock_id(scope), entry.file, record)
    return final


def forget(catalog: WeightsCatalog, experiment: str, scope: str = "paper", root: PathLike | None = None) -> list[str]:
    """Delete ``experiment``'s published file (and partial downloads) and its data.lock.json entry.

    Returns what was removed. The next download records the checksum afresh. Refused (``WeightsError``) while
    another process downloads or adds that file.
    """
    entry = catalog.get(experiment)
    final = weights_path(entry, scope, root)
    guard = final.with_name(f".{final.name}.lock")
    removed: list[str] = []
    try:
        with file_lock(guard, blocking=False):
            for path in sorted(final.parent.iterdir()) if final.parent.is_dir() else []:
                name = path.name
                if path != guard and (name == entry.file or name.startswith((entry.file + ".part", f".{entry.file}."))):
                    path.unlink(missing_ok=True)
                    removed.append(str(path))
            keys = LockFile(lock_path(root)).forget(lock_id(scope), [entry.file])
            removed += [f"{lock_path(root)}: {k}" for k in keys]
            guard.unlink(missing_ok=True)
    except LockBusyError:
        raise WeightsError(
            f"{final} is being downloaded or added by another process; try again when it is done"
        ) from None
    return removed


def write_manifest(out: Path, rows: Sequence[WeightsStatus], scope: str) -> dict[str, Any]:
    """The pipeline's record of the fetched weights (written last, atomically): file, path, size, sha256."""
    from mair.common.atomic import atomic_write_json

    doc = {
        "scope": scope,
        "weights": {
            r.experiment: {
                "file": r.file,
                "path": str(r.path),
                "size": r.size,
                "sha256": r.sha256,
                "checksum_origin": r.checksum_origin,
            }
            for r in rows
        },
    }
    atomic_write_json(out, doc)
    return doc
