"""Prepare datasets: ``extracted/<id>/`` (or other prepared sets) -> ``prepared/<id>/`` in the contract layouts.

:func:`prepare` is what ``mair data prepare`` calls. Every preparer validates its input with errors that name
the missing folder or file, writes each output atomically, skips outputs that already exist when run again, and
writes the marker ``.prepared.json`` (image counts) last. The layouts and every official quirk are described in
docs/data_layout.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mair.data import paths
from mair.data.lockfile import file_lock
from mair.data.prepare.common import (
    MARKER,
    Context,
    PrepareError,
    default_workers,
    read_marker,
    remove_stale_temp_files,
    write_marker,
)
from mair.data.prepare.deblur import prepare_gopro, prepare_hide
from mair.data.prepare.dehaze import (
    hazy_to_gt_id,
    hazy_to_gt_name,
    prepare_reside_6k,
    prepare_reside_train,
    prepare_sots,
)
from mair.data.prepare.realnoise import prepare_dnd, prepare_sidd_medium, prepare_sidd_val
from mair.data.prepare.sr import (
    prepare_bsd400,
    prepare_clean,
    prepare_df2k,
    prepare_dfwb,
    prepare_sr,
    prepare_wed,
)

__all__ = [
    "PREPARERS",
    "PrepareError",
    "hazy_to_gt_id",
    "hazy_to_gt_name",
    "prepare",
    "prepare_all",
]

Preparer = Callable[[Context], dict[str, int]]

PREPARERS: dict[str, Preparer] = {
    "div2k": prepare_sr,
    "flickr2k": prepare_sr,
    "df2k": prepare_df2k,
    "bsd400": prepare_bsd400,
    "wed": prepare_wed,
    "dfwb": prepare_dfwb,
    "set5": prepare_sr,
    "set14": prepare_sr,
    "b100": prepare_sr,
    "urban100": prepare_sr,
    "manga109": prepare_sr,
    "cbsd68": prepare_clean,
    "kodak24": prepare_clean,
    "mcmaster": prepare_clean,
    "sidd_medium": prepare_sidd_medium,
    "sidd_val": prepare_sidd_val,
    "dnd": prepare_dnd,
    "gopro": prepare_gopro,
    "hide": prepare_hide,
    "reside_its": prepare_reside_train,
    "reside_ots": prepare_reside_train,
    "sots_indoor": prepare_sots,
    "sots_outdoor": prepare_sots,
    "reside_6k": prepare_reside_6k,
}


def prepare(
    dataset_id: str,
    data_dir: str | os.PathLike[str] | None = None,
    scope: str = "paper",
    force: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Build ``prepared/<dataset_id>/`` and return ``{dataset, scope, path, counts, total, written, reused,
    skipped, ...}``.

    * ``scope="demo"`` builds the embedded demo sets (:func:`mair.data.demo.build_demo`) and reports this one.
    * An already complete folder is left alone (``skipped: True``) unless ``force``, which deletes it first.
    * An interrupted run is resumed: files already at their final path are kept (``reused``); temp files a killed
      run left are removed first. One process at a time prepares a set (a per-set lock; a second one waits).
    * Derived sets (df2k, dfwb) prepare their source sets first when those are not prepared yet.
    """
    paths.check_dataset_id(dataset_id)
    if scope == "demo":
        from mair.data.demo import build_demo

        report = build_demo(data_dir, force=force)
        if dataset_id not in report["datasets"]:
            raise PrepareError(f"the demo has no set {dataset_id!r}; it has {', '.join(report['datasets'])}")
        return dict(report["datasets"][dataset_id])
    if scope != "paper":
        raise ValueError(f"invalid scope {scope!r}: expected 'paper' or 'demo'")
    if dataset_id not in PREPARERS:
        raise PrepareError(f"no preparer for {dataset_id!r}; known: {', '.join(sorted(PREPARERS))}")
    out = paths.prepared_dir(dataset_id, scope, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):
        return _prepare_locked(dataset_id, out, data_dir, force, workers)


def _prepare_locked(
    dataset_id: str, out: Path, data_dir: str | os.PathLike[str] | None, force: bool, workers: int | None
) -> dict[str, Any]:
    scope = "paper"
    root = paths.data_dir(data_dir)
    marker = read_marker(out)
    if marker is not None and not force:
        return _report(marker, out, skipped=True)
    (out / MARKER).unlink(missing_ok=True)  # first: a stale, unreadable or half-removed folder never looks complete
    if force and out.exists():
        shutil.rmtree(out)
    remove_stale_temp_files(out)

    def dep(other: str) -> Path:
        prepare(other, data_dir, scope, force=False, workers=workers)
        return paths.prepared_dir(other, scope, data_dir)

    ctx = Context(
        dataset_id=dataset_id,
        root=root,
        src=paths.extracted_dir(dataset_id, data_dir),
        out=out,
        scope=scope,
        workers=workers or default_workers(),
        prepare_dep=dep,
    )
    counts = PREPARERS[dataset_id](ctx)
    empty = [k for k, v in counts.items() if v == 0]
    if empty:
        raise PrepareError(f"{dataset_id}: nothing was written to {', '.join(empty)} under {out}")
    marker = write_marker(ctx, counts)
    result = _report(marker, out, skipped=False)
    result.update(written=ctx.written, reused=ctx.reused)
    return result


def prepare_all(
    dataset_ids: list[str], data_dir: str | os.PathLike[str] | None = None, force: bool = False
) -> dict[str, dict[str, Any]]:
    """:func:`prepare` each id in order (paper scope); returns the reports by id."""
    return {i: prepare(i, data_dir, "paper", force) for i in dataset_ids}


def _report(marker: dict[str, Any], out: Path, skipped: bool) -> dict[str, Any]:
    return {
        "dataset": marker.get("dataset"),
        "scope": marker.get("scope"),
        "path": str(out),
        "counts": marker.get("counts", {}),
        "total": marker.get("total", 0),
        "notes": marker.get("notes", []),
        "skipped": skipped,
        "written": 0,
        "reused": 0,
    }
