"""Gather what the tables need: our evaluation summaries, the published numbers and the training logs.

* Our numbers come from the summary JSONs ``results/<weights>/<scope>/eval/<experiment>/<dataset>[+].json``
  (docs/contracts.md). They are the source of truth; MLflow runs (through ``mair.common.tracking``) only fill gaps.
* The published numbers come from ``params/paper_results.csv`` (tidy form of the team's reference file).

Everything is returned as long pandas frames, one number a row, so that tables.py can pivot them freely.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mair.tasks import TASKS, task_names

# The six paper tables, in the order they are printed: one per task, named as the task.
TABLE_IDS: tuple[str, ...] = task_names()

# Dataset ids (docs/contracts.md, plus the spellings evaluation code may use) -> column names in the tables.
DATASET_NAMES: dict[str, str] = {
    "set5": "Set5",
    "set14": "Set14",
    "b100": "B100",
    "bsd100": "B100",
    "urban100": "Urban100",
    "manga109": "Manga109",
    "mcmaster": "McMaster",
    "kodak24": "Kodak24",
    "cbsd68": "CBSD68",
    "sidd": "SIDD",
    "sidd_val": "SIDD",
    "sidd_benchmark": "SIDD",
    "dnd": "DND",
    "gopro": "GoPro",
    "gopro_test": "GoPro",
    "hide": "HIDE",
    "sots_indoor": "SOTS-indoor",
    "sots_outdoor": "SOTS-outdoor",
    "reside_6k": "RESIDE-6K",
    "reside6k": "RESIDE-6K",
    "r6k": "RESIDE-6K",
}

PAPER_COLUMNS: tuple[str, ...] = (
    "table",
    "method",
    "variant",
    "setting",
    "dataset",
    "metric",
    "value",
    "source",
    "confidence",
    "note",
)
OURS_COLUMNS: tuple[str, ...] = (
    "table",
    "setting",
    "method",
    "variant",
    "dataset",
    "metric",
    "value",
    "text",
    "experiment",
    "file",
    "created",
    "origin",
)

# Summary keys that may hold the model size and cost (``mair info`` data copied into the summary).
_PARAM_KEYS = ("params", "n_params", "num_params", "parameters")
_FLOP_KEYS_G = ("flops_g", "gflops", "macs_g", "gmacs")
_FLOP_KEYS_RAW = ("flops", "macs")


@dataclass(frozen=True)
class ExperimentInfo:
    """Where an experiment's numbers go: which table, which row group (scale/sigma) and which method row."""

    table: str
    setting: str
    method: str


@dataclass
class Collected:
    """Our numbers as a long frame (columns ``OURS_COLUMNS``) and notes on what was skipped and why."""

    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def dataset_name(dataset_id: str) -> str:
    """The column name of a dataset id (``'sots_indoor'`` -> ``'SOTS-indoor'``); unknown ids unchanged."""
    key = dataset_id.strip().lower().replace("-", "_")
    return DATASET_NAMES.get(key, dataset_id)


# --------------------------------------------------------------------------------------------- experiments

# Every spelling of a table id (the task's name and its aliases) -> the table id.
_TABLE_ALIASES: dict[str, str] = {
    spelling: task.name for task in TASKS.values() for spelling in (task.name, *task.aliases)
}


def _norm_table(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return _TABLE_ALIASES.get(value.strip().lower().replace("-", "_"))


def _infer_table(exp: str) -> str | None:
    e = exp.lower()
    for task in reversed(TASKS.values()):  # the later tasks' patterns are the more specific ones
        if re.search(task.id_pattern, e):
            return task.name
    return None


def _infer_setting(table: str, exp: str) -> str:
    e = exp.lower()
    setting = TASKS[table].setting
    if setting == "scale":
        m = re.search(r"x([234])(?![0-9])", e)
        return f"x{m.group(1)}" if m else ""
    if setting == "sigma":
        m = re.search(r"(?:sigma|noise|s|σ)[_-]?(15|25|50)(?![0-9])", e)
        return f"sigma{m.group(1)}" if m else ""
    return ""


def _infer_light_size(exp: str) -> str | None:
    e = exp.lower()
    m = re.search(r"(?:^|[_-])(s|small|t|tiny)(?:[_-]|$)", e) or re.search(r"mair[_-]?(s|t)(?:[_-]|$)", e)
    if not m:
        return None
    return "MaIR-S" if m.group(1).startswith("s") else "MaIR-T"


def default_experiments_dir() -> Path | None:
    """``params/experiments`` as :mod:`mair.experiments` finds it, or None when there is none."""
    from mair.experiments import ExperimentError, experiments_dir

    try:
        return experiments_dir()
    except ExperimentError:  # no params folder anywhere: tables without the experiment files' hints
        return None


@functools.lru_cache(maxsize=256)
def _yaml_hints(experiment: str, experiments_dir: Path | None) -> dict[str, Any]:
    """Where ``params/experiments/<id>.yaml`` says its numbers go: its ``paper_results`` key
    (``{task, variants, setting}``), else its ``task``."""
    if experiments_dir is None:
        return {}
    path = experiments_dir / f"{experiment}.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(data, dict):
        return {}
    hints: dict[str, Any] = {}
    key = data.get("paper_results")
    if isinstance(key, dict):
        if key.get("task"):
            hints["table"] = key["task"]
        if key.get("setting"):
            hints["setting"] = str(key["setting"])
        variants = key.get("variants")
        if isinstance(variants, list) and variants:
            hints["method"] = str(variants[0]).rstrip("+")
    if "table" not in hints and "task" in data:
        hints["table"] = data["task"]
    return hints


def infer_experiment(
    experiment: str, summary: Mapping[str, Any] | None = None, experiments_dir: Path | None = None
) -> ExperimentInfo | None:
    """Which table, setting and method row an experiment belongs to.

    Explicit keys win (``table``/``task``, ``setting``/``scale``/``sigma``, ``method`` in the summary,
    then the ``paper_results`` key or ``task`` of ``params/experiments/<id>.yaml``); otherwise the
    experiment id is read (``sr_classic_x2``, ``sr_light_s_x4``, ``dn_color_s25``, ``deblur_motion``...).
    Returns None when the table, the scale/sigma of a table that needs one, or MaIR-S/T cannot be told.
    """
    summary = summary or {}
    hints = dict(_yaml_hints(experiment, experiments_dir))
    table = _norm_table(summary.get("table")) or _norm_table(summary.get("task"))
    table = table or _norm_table(hints.get("table")) or _infer_table(experiment)
    if table is None:
        return None
    setting = str(summary.get("setting") or hints.get("setting") or "")
    if not setting and summary.get("scale") not in (None, ""):
        setting = f"x{int(summary['scale'])}"
    if not setting and summary.get("sigma") not in (None, ""):
        setting = f"sigma{int(summary['sigma'])}"
    setting = setting or _infer_setting(table, experiment)
    if not setting and TASKS[table].setting is not None:
        return None  # a scale or noise level is needed to place the row
    method = str(summary.get("method") or hints.get("method") or "")
    if not method:
        methods = TASKS[table].methods
        method = methods[0] if len(methods) == 1 else (_infer_light_size(experiment) or "")
    if not method:
        return None  # MaIR-S or MaIR-T cannot be told
    return ExperimentInfo(table=table, setting=setting, method=method)


# --------------------------------------------------------------------------------------------- our results


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def complexity_of(summary: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(parameter count, GFLOPs) from a summary, looked for at the top level and under ``info``/``model``."""
    params = flops_g = None
    for holder in (summary, summary.get("info"), summary.get("model")):
        if not isinstance(holder, Mapping):
            continue
        for key in _PARAM_KEYS:
            if params is None and _number(holder.get(key)) is not None:
                params = _number(holder.get(key))
        for key in _FLOP_KEYS_G:
            if flops_g is None and _number(holder.get(key)) is not None:
                flops_g = _number(holder.get(key))
        for key in _FLOP_KEYS_RAW:
            raw = _number(holder.get(key))
            if flops_g is None and raw is not None:
                flops_g = raw / 1e9 if raw > 1e6 else raw  # raw counts, or already in G
    return params, flops_g


def _summary_rows(summary: Mapping[str, Any], info: ExperimentInfo, file: str, origin: str) -> list[dict]:
    variant = str(summary.get("variant") or "MaIR")
    plus = variant.endswith("+")
    dataset = dataset_name(str(summary.get("dataset", "")))
    base = {
        "table": info.table,
        "setting": info.setting,
        "method": info.method,
        "variant": "+" if plus else "",
        "experiment": str(summary.get("experiment", "")),
        "file": file,
        "created": str(summary.get("created", "")),
        "origin": origin,
    }
    rows: list[dict] = []
    metrics = summary.get("metrics") or {}
    if isinstance(metrics, Mapping):
        for name, value in metrics.items():
            number = _number(value)
            if number is not None:
                rows.append({**base, "dataset": dataset, "metric": str(name).upper(), "value": number, "text": ""})
    if not rows and summary.get("submission"):
        for metric in ("PSNR", "SSIM"):
            rows.append({**base, "dataset": dataset, "metric": metric, "value": math.nan, "text": "online benchmark"})
    params, flops_g = complexity_of(summary)
    if params is not None:
        rows.append({**base, "dataset": "", "metric": "params", "value": params, "text": ""})
    if flops_g is not None:
        rows.append({**base, "dataset": "", "metric": "flops_g", "value": flops_g, "text": ""})
    return rows


def _empty_ours() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else "object") for c in OURS_COLUMNS})


def _frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return _empty_ours()
    frame = pd.DataFrame(rows, columns=list(OURS_COLUMNS))
    frame["value"] = frame["value"].astype("float64")
    return frame


def summaries_to_frame(
    summaries: Iterable[tuple[Mapping[str, Any], str]], origin: str, experiments_dir: Path | None = None
) -> Collected:
    """(summary, where-from) pairs -> the long frame; incomplete or unplaceable summaries become notes."""
    rows: list[dict] = []
    notes: list[str] = []
    for summary, where in summaries:
        experiment = str(summary.get("experiment", ""))
        if str(summary.get("complete", True)).strip().lower() in ("false", "0", "no"):  # MLflow tags are text
            notes.append(f"skipped {where}: summary is marked incomplete")
            continue
        info = infer_experiment(experiment, summary, experiments_dir)
        if info is None:
            notes.append(
                f"skipped {where}: cannot tell where experiment {experiment!r} goes (table, scale/sigma"
                " or MaIR-S/T); add 'table', 'setting' and 'method' to its summary"
            )
            continue
        got = _summary_rows(summary, info, where, origin)
        if not got:
            notes.append(f"skipped {where}: no metrics, submission or model size in it")
        rows.extend(got)
    return Collected(_frame(rows), notes)


def read_summaries(results_dir: Path, scope: str, experiments_dir: Path | None = None) -> Collected:
    """Read every ``<results_dir>/<scope>/eval/<experiment>/<dataset>[+].json`` summary."""
    eval_dir = Path(results_dir) / scope / "eval"
    if not eval_dir.is_dir():
        return Collected(_empty_ours(), [f"no evaluation results in {eval_dir}"])
    pairs: list[tuple[Mapping[str, Any], str]] = []
    notes: list[str] = []
    for path in sorted(eval_dir.glob("*/*.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            notes.append(f"skipped {path}: unreadable ({error})")
            continue
        if not isinstance(summary, dict):
            notes.append(f"skipped {path}: not a JSON object")
            continue
        summary.setdefault("experiment", path.parent.name)
        stem = path.stem
        summary.setdefault("variant", "MaIR+" if stem.endswith("+") else "MaIR")
        summary.setdefault("dataset", stem.rstrip("+"))
        pairs.append((summary, str(path)))
    collected = summaries_to_frame(pairs, "json", experiments_dir)
    collected.notes[:0] = notes
    return collected


def read_mlflow(uri: str, scope: str, experiments_dir: Path | None = None, weights: str | None = None) -> Collected:
    """Evaluation summaries logged to MLflow (:func:`mair.common.tracking.eval_summaries`).

    Optional: a store that cannot be read becomes a note, never an error. ``weights`` (``trained`` or
    ``published``) keeps only the runs of those weights (``weights_source``; runs without it are of trained
    weights), so the two never mix.
    """
    from mair.common import tracking

    try:
        summaries = list(tracking.eval_summaries(uri, scope))
    except Exception as error:  # an unreachable or locked store: the JSON summaries still make the tables
        return Collected(_empty_ours(), [f"MLflow source skipped: {error}"])
    if weights is not None:
        summaries = [
            s for s in summaries if not isinstance(s, Mapping) or s.get("weights_source", "trained") == weights
        ]
    pairs = [(s, f"mlflow:{s.get('run_id', '?')}") for s in summaries if isinstance(s, Mapping)]
    return summaries_to_frame(pairs, "mlflow", experiments_dir)


_KEY = ["table", "setting", "method", "variant", "dataset", "metric"]


def merge_sources(primary: Collected, secondary: Collected | None = None) -> Collected:
    """Primary numbers (JSON) plus secondary ones (MLflow) only where the primary has none.

    Where one source holds the same cell twice (two experiments mapping to one row), the newest ``created``
    wins and a note says so.
    """
    notes = list(primary.notes)
    frames = [primary.frame]
    if secondary is not None:
        notes += secondary.notes
        if not secondary.frame.empty:
            have = set(map(tuple, primary.frame[_KEY].astype(str).to_numpy().tolist()))
            keep = [tuple(k) not in have for k in secondary.frame[_KEY].astype(str).to_numpy().tolist()]
            frames.append(secondary.frame[keep])
    frames = [f for f in frames if not f.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else _empty_ours()
    if frame.empty:
        return Collected(frame, notes)
    frame = frame.sort_values("created", kind="stable")
    dup = frame.duplicated(_KEY, keep="last")
    for _, row in frame[dup].iterrows():
        notes.append(
            f"{row['file']}: {row['dataset'] or 'model size'} {row['metric']} superseded by a newer "
            f"summary for the same table cell"
        )
    return Collected(frame[~dup].reset_index(drop=True), notes)


# --------------------------------------------------------------------------------------------- published


def load_paper_results(path: Path | None) -> pd.DataFrame:
    """``params/paper_results.csv`` as strings plus a float ``number`` column (NaN where not numeric)."""
    if path is None or not Path(path).is_file():
        return pd.DataFrame({c: pd.Series(dtype="object") for c in (*PAPER_COLUMNS, "number")})
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}")
    frame["number"] = pd.to_numeric(frame["value"].str.replace(",", ""), errors="coerce")
    return frame


_SETTING_IS_INPUT = re.compile(r"^\d+x\d+$")


def normalise_reference(source: Path) -> pd.DataFrame:
    """The team's reference ``paper_results.csv`` in our tidy form (``PAPER_COLUMNS``), nothing dropped.

    * ``task`` -> ``table``; the printed row label -> ``method`` plus ``variant`` (``+`` marks an 8x
      self-ensemble row such as MaIR+, empty otherwise);
    * ``scale_or_sigma`` -> ``setting`` (``-`` becomes empty; an input size such as ``256x256`` that only
      qualifies a FLOPs count moves to ``note``); ``dataset`` ``-`` becomes empty;
    * ``metric``, ``value`` (as printed), ``source`` and ``confidence`` are kept verbatim;
    * ``note`` flags what a reader must know: a printed probable typo, a mislabelled source, a derived value.
    """
    src = pd.read_csv(source, dtype=str, keep_default_na=False)
    rows: list[dict[str, str]] = []
    for rec in src.to_dict("records"):
        label = rec["variant"].strip()
        plus = label.endswith("+")
        setting = "" if rec["scale_or_sigma"] == "-" else rec["scale_or_sigma"]
        notes: list[str] = []
        if _SETTING_IS_INPUT.match(setting):
            notes.append(f"counted at input {setting}")
            setting = ""
        confidence = rec["confidence"]
        if "typo" in confidence.lower():
            notes.append("PROBABLE TYPO in the printed source table, kept as printed (likely 33.13); not verified")
        if "under 'Urban100" in confidence:
            notes.append("source prints it under a wrong label (Urban100 sigma=15); companion rows show it is SIDD")
        if confidence.lower().startswith("derived"):
            notes.append("derived from the official code, not the paper's printed value")
        if confidence.startswith("low-medium: secondary"):
            notes.append("secondary: quoted by a paper-notes repository, not read from the paper")
        if confidence.startswith("medium: secondary"):
            notes.append("secondary survey value; our count from the official config agrees")
        if label == "MambaIR-light(v2-table)":
            notes.append("the MambaIR-light row printed in MambaIRv2's table, which differs from MambaIR's own")
        rows.append(
            {
                "table": rec["task"],
                "method": label[:-1] if plus else label,
                "variant": "+" if plus else "",
                "setting": setting,
                "dataset": "" if rec["dataset"] == "-" else rec["dataset"],
                "metric": rec["metric"],
                "value": rec["value"],
                "source": rec["source"],
                "confidence": confidence,
                "note": "; ".join(notes),
            }
        )
    return pd.DataFrame(rows, columns=list(PAPER_COLUMNS))


# --------------------------------------------------------------------------------------------- training logs


def run_dirs(runs_dir: Path, scope: str) -> list[Path]:
    """Experiment folders under ``<runs_dir>/<scope>/``, sorted."""
    base = Path(runs_dir) / scope
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def read_log(path: Path, required: tuple[str, ...]) -> pd.DataFrame | None:
    """A training/validation log CSV with its numeric columns, or None when absent, empty or malformed."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    if frame.empty or any(c not in frame.columns for c in required):
        return None
    for column in required:
        if column != "dataset":
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.dropna(subset=[c for c in required if c != "dataset"])
