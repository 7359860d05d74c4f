"""Small files the pipeline writes between steps: the data manifest (what DVC records for the data step), an
experiment's metrics (what ``dvc metrics show`` prints), and published weights linked into place."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mair.pipeline.settings import PipelineError


def link_weights(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` as a hard link (no second copy of a large file), else a copy; atomically, and
    with the modification time of now, so that the file is newer than what it was made from."""
    from mair.common.atomic import temp_name

    if not source.is_file():
        raise PipelineError(f"link-weights: {source} is no file (fetch it first: mair weights download)")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = temp_name(target.parent, f".{target.name}.", ".part")
    try:
        try:
            os.link(source, part)
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(source, part)
        os.utime(part)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def write_manifest(out: Path, markers: Sequence[str]) -> dict[str, Any]:
    """Gather prepared markers (``.../<id>/.prepared.json``) into ``out`` atomically; return the document."""
    from mair.common.atomic import atomic_write_json

    datasets: dict[str, Any] = {}
    for marker in sorted(markers):
        path = Path(marker)
        doc = json.loads(path.read_text(encoding="utf-8"))
        datasets[path.parent.name] = {k: doc[k] for k in ("scope", "counts", "total") if k in doc}
    manifest = {"datasets": datasets}
    atomic_write_json(out, manifest)
    return manifest


def write_eval_metrics(out: Path, summaries: Sequence[str]) -> dict[str, Any]:
    """Gather evaluation summaries (``.../<dataset>[+].json``) into ``{"<dataset>[+]": {"psnr", "ssim"}}`` at
    ``out``, atomically: the compact metrics DVC shows (``dvc metrics show``, ``dvc exp show``)."""
    from mair.common.atomic import atomic_write_json

    metrics: dict[str, Any] = {}
    for summary in sorted(summaries):
        doc = json.loads(Path(summary).read_text(encoding="utf-8"))
        values = {k: v for k, v in (doc.get("metrics") or {}).items() if isinstance(v, int | float)}
        if values:
            metrics[Path(summary).stem] = values
    atomic_write_json(out, metrics)
    return metrics
