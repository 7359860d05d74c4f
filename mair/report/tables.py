"""One table per paper table: our numbers beside the published ones, with the difference.

A table is a list of :class:`Row` objects grouped by setting (scale or noise level). Each group holds the
published baseline rows the paper compares against (where ``params/paper_results.csv`` has them), then for
each of our methods three rows: the published value (``paper``), ours, and ``ours - paper``. Best and second
best among the value rows of a group (not the differences) are ranked per column, as papers bold and
underline them. Missing numbers stay missing (None), never zero; the renderers print a dash.

:func:`mair.report.write.write_report` runs the whole ``mair tables`` step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mair.report import DEMO_BANNER
from mair.report.collect import (
    TABLE_IDS,
)
from mair.tasks import TASKS

#: How our rows are labelled: numbers of weights trained here, or of the authors' published checkpoints.
OURS_LABELS = {"trained": "ours", "published": "published weights"}
PUBLISHED_WEIGHTS_NOTE = (
    "the authors' published checkpoints evaluated by this pipeline (rows 'published weights') vs the numbers "
    "printed in the paper."
)
ROW_KINDS = ("baseline", "paper", "ours", "diff")
RANKED_KINDS = ("baseline", "paper", "ours")

# Footnote marks on published cells, with what they mean.
MARKS: dict[str, str] = {
    "*": "as printed in the source table; a probable typo (see params/paper_results.csv)",
    "†": "derived from the official code and configuration, not the paper's printed value",
    "‡": "low confidence: a secondary source that prints it under another label",
    "§": "row from the MambaIRv2 paper's tables (concurrent work); whether MaIR's table has it is unknown",
}


@dataclass(frozen=True)
class ColumnSpec:
    """A number column: ``group`` is the spanning header (dataset) or empty, ``header`` the column's own."""

    key: str
    group: str
    header: str
    decimals: int
    ranked: bool


@dataclass(frozen=True)
class TableSpec:
    """What a paper table holds."""

    id: str
    title: str
    group_label: str
    settings: tuple[str, ...]
    datasets: tuple[str, ...]
    metrics: tuple[str, ...]
    methods: tuple[str, ...]
    plus_always: bool = False
    params_unit: str = ""  # "K" or "M" adds a parameter column
    flops_decimals: int | None = None  # adds a FLOPs/MACs column
    caption: str = ""

    def columns(self) -> list[ColumnSpec]:
        """The number columns in print order: complexity first, then dataset x metric."""
        cols: list[ColumnSpec] = []
        if self.params_unit:
            cols.append(
                ColumnSpec("params", "", f"Params ({self.params_unit})", 0 if self.params_unit == "K" else 2, False)
            )
        if self.flops_decimals is not None:
            cols.append(ColumnSpec("flops", "", "FLOPs (G)", self.flops_decimals, False))
        for dataset in self.datasets:
            for metric in self.metrics:
                cols.append(ColumnSpec(f"{dataset}/{metric}", dataset, metric, METRIC_DECIMALS[metric], True))
        return cols


METRIC_DECIMALS = {"PSNR": 2, "SSIM": 4}
SR_SETS = ("Set5", "Set14", "B100", "Urban100", "Manga109")


def _spec(task: str, group_label: str, settings: tuple[str, ...], datasets: tuple[str, ...], **more: Any) -> TableSpec:
    """The table of ``task``: its id, heading and method rows from the task table, the layout given here."""
    facts = TASKS[task]
    return TableSpec(task, facts.title, group_label, settings, datasets, methods=facts.methods, **more)


SPECS: dict[str, TableSpec] = {
    spec.id: spec
    for spec in (
        _spec(
            "sr_classic",
            "Scale",
            ("x2", "x3", "x4"),
            SR_SETS,
            metrics=("PSNR", "SSIM"),
            plus_always=True,
            caption="PSNR (dB) / SSIM on the Y channel, border of the scale cropped; DF2K training. "
            "MaIR+ is the 8x self-ensemble.",
        ),
        _spec(
            "sr_light",
            "Scale",
            ("x2", "x3", "x4"),
            SR_SETS,
            metrics=("PSNR", "SSIM"),
            params_unit="K",
            flops_decimals=1,
            caption="PSNR (dB) / SSIM on the Y channel; DIV2K training. FLOPs/MACs for a 1280x720 "
            "output, one multiply-add counted once.",
        ),
        _spec(
            "dn_color",
            "Noise",
            ("sigma15", "sigma25", "sigma50"),
            ("McMaster", "Kodak24", "CBSD68", "Urban100"),
            metrics=("PSNR",),
            caption="PSNR (dB).",
        ),
        _spec(
            "dn_real",
            "",
            ("",),
            ("SIDD", "DND"),
            metrics=("PSNR", "SSIM"),
            caption="PSNR (dB) / SSIM in RGB. DND is scored only by its online benchmark.",
        ),
        _spec(
            "deblur",
            "",
            ("",),
            ("GoPro", "HIDE"),
            metrics=("PSNR", "SSIM"),
            caption="PSNR (dB) / SSIM in RGB; GoPro training.",
        ),
        _spec(
            "dehaze",
            "",
            ("",),
            ("SOTS-indoor", "SOTS-outdoor", "RESIDE-6K"),
            metrics=("PSNR", "SSIM"),
            params_unit="M",
            flops_decimals=2,
            caption="PSNR (dB) / SSIM in RGB; one model per training set (ITS, OTS, RESIDE-6K). FLOPs/MACs at 256x256.",
        ),
    )
}
assert tuple(SPECS) == TABLE_IDS


@dataclass
class Cell:
    """One printed cell: a number, or a text instead of it (``online benchmark``), or missing (both None)."""

    value: float | None = None
    text: str | None = None
    mark: str = ""
    rank: int | None = None  # 1 best, 2 second best


@dataclass
class Row:
    """A table row; ``kind`` is one of ``ROW_KINDS``; ``cells`` is keyed by column key."""

    group: str
    method: str
    kind: str
    label: str
    cells: dict[str, Cell] = field(default_factory=dict)
    first_of_method: bool = False  # the first of our rows for a method (renderers may add space before it)
    mark: str = ""  # footnote mark on the row label (see MARKS)
    setting: str = ""  # the raw setting (``x2``, ``sigma15``); ``group`` is its printed label


@dataclass
class ReportTable:
    """A built table, ready for the LaTeX, Markdown and CSV writers."""

    spec: TableSpec
    scope: str
    columns: list[ColumnSpec]
    rows: list[Row]
    footnotes: list[tuple[str, str]] = field(default_factory=list)  # (mark or "", text)
    weights: str = "trained"  # "published": our rows evaluate the authors' checkpoints (labelled so)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def demo(self) -> bool:
        return self.scope == "demo"

    def caption(self) -> str:
        """The caption text (plain Unicode; renderers escape it)."""
        text = f"{self.spec.title}: ours vs published. {self.spec.caption}".strip()
        if self.weights == "published":
            text = f"{self.spec.title}: {PUBLISHED_WEIGHTS_NOTE} {self.spec.caption}".strip()
        return f"{DEMO_BANNER}. {text}" if self.demo else text

    def groups(self) -> list[str]:
        """Row groups in order."""
        seen: list[str] = []
        for row in self.rows:
            if row.group not in seen:
                seen.append(row.group)
        return seen


def setting_label(setting: str) -> str:
    """``x2`` -> ``×2``, ``sigma15`` -> ``σ=15``; anything else unchanged."""
    if m := re.fullmatch(r"x(\d+)", setting):
        return f"×{m.group(1)}"
    if m := re.fullmatch(r"sigma(\d+)", setting):
        return f"σ={m.group(1)}"
    return setting


def format_number(value: float | None, decimals: int, signed: bool = False) -> str | None:
    """Fixed decimals (``signed`` adds ``+`` to non-negative differences); None for a missing number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    rounded = round(value, decimals)
    if rounded == 0:
        rounded = 0.0  # no "-0.00"
    return f"{rounded:+.{decimals}f}" if signed else f"{rounded:.{decimals}f}"


# --------------------------------------------------------------------------------------------- building


Record = dict[str, Any]


def _paper_cell(rows: list[Record]) -> Cell:
    """The first published number among ``rows`` (file order), with its footnote mark."""
    rows = [r for r in rows if not pd.isna(r["number"])]
    if not rows:
        return Cell()
    first = rows[0]
    note, confidence = str(first["note"]), str(first["confidence"]).lower()
    mark = ""
    if "TYPO" in note.upper():
        mark = "*"
    elif confidence.startswith("derived"):
        mark = "†"
    elif confidence.startswith("low:"):
        mark = "‡"
    value = float(first["number"])
    if str(first["metric"]).startswith("Params("):
        value *= _params_scale(str(first["metric"]), "M")  # callers rescale to the column's unit
    return Cell(value=value, mark=mark)


def _params_scale(metric: str, unit: str) -> float:
    """Factor turning a published ``Params(K)``/``Params(M)`` value into ``unit``."""
    given = "K" if metric.startswith("Params(K)") else "M"
    return {("K", "K"): 1.0, ("M", "M"): 1.0, ("K", "M"): 1e-3, ("M", "K"): 1e3}[(given, unit)]


def _published_cells(spec: TableSpec, pub: list[Record]) -> dict[str, Cell]:
    """Cells of one published row (``pub``: paper_results records of one method/variant/setting)."""
    cells: dict[str, Cell] = {}
    for col in spec.columns():
        if col.key == "params":
            cell = _paper_cell([r for r in pub if r["metric"].startswith("Params(") and not r["dataset"]])
            if cell.value is not None:
                cell.value *= _params_scale("Params(M)", spec.params_unit)
        elif col.key == "flops":
            cell = _paper_cell([r for r in pub if re.match(r"(MACs|FLOPs)", r["metric"]) and not r["dataset"]])
        else:
            cell = _paper_cell([r for r in pub if r["dataset"] == col.group and r["metric"] == col.header])
        cells[col.key] = cell
    return cells


def _our_cells(spec: TableSpec, ours: list[Record]) -> dict[str, Cell]:
    """Cells of one of our rows (``ours``: our long-frame records of one method/variant/setting)."""
    cells: dict[str, Cell] = {}
    for col in spec.columns():
        if col.key in ("params", "flops"):
            metric = "params" if col.key == "params" else "flops_g"
            found = [r for r in ours if r["metric"] == metric]
            scale = {"params": 1e-3 if spec.params_unit == "K" else 1e-6, "flops": 1.0}[col.key]
            cells[col.key] = Cell(float(found[0]["value"]) * scale) if found else Cell()
            continue
        found = [r for r in ours if r["dataset"] == col.group and r["metric"] == col.header]
        if not found:
            cells[col.key] = Cell()
            continue
        value, text = found[0]["value"], found[0]["text"]
        text = None if pd.isna(text) or not str(text) else str(text)
        cells[col.key] = Cell(None if pd.isna(value) else float(value), text)
    return cells


def _diff_cells(columns: Sequence[ColumnSpec], ours: Row, paper: Row) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for col in columns:
        a, b = ours.cells[col.key].value, paper.cells[col.key].value
        cells[col.key] = Cell(a - b if a is not None and b is not None else None)
    return cells


def _rank(table: ReportTable) -> None:
    """Bold (rank 1) and underline (rank 2) per group and ranked column, on the printed (rounded) values."""
    for group in table.groups():
        rows = [r for r in table.rows if r.group == group and r.kind in RANKED_KINDS]
        for col in table.columns:
            if not col.ranked:
                continue
            shown = [
                (r.cells[col.key], round(r.cells[col.key].value, col.decimals))
                for r in rows
                if r.cells[col.key].value is not None
            ]
            if len(shown) < 2:
                continue  # one number is no comparison
            distinct = sorted({v for _, v in shown}, reverse=True)
            for cell, v in shown:
                if v == distinct[0]:
                    cell.rank = 1
                elif len(distinct) > 1 and v == distinct[1]:
                    cell.rank = 2


def _empty(cells: dict[str, Cell]) -> bool:
    return all(c.value is None and c.text is None for c in cells.values())


def build_table(
    spec: TableSpec, ours: pd.DataFrame, paper: pd.DataFrame, scope: str, weights: str = "trained"
) -> ReportTable:
    """Build one table from our long frame and the published numbers (both may be empty).

    ``weights="published"``: our numbers come from the authors' checkpoints; their rows say so.
    """
    ours_name = OURS_LABELS[weights]
    columns = spec.columns()
    mine = ours[ours["table"] == spec.id] if not ours.empty else ours
    pub = paper[paper["table"] == spec.id] if not paper.empty else paper
    ours_methods = set(spec.methods)
    baseline_order = (
        [m for m in dict.fromkeys(zip(pub["method"], pub["variant"], strict=True)) if m[0] not in ours_methods]
        if not pub.empty
        else []
    )

    def has_plus(method: str) -> bool:
        if spec.plus_always:
            return True
        in_ours = not mine.empty and ((mine["method"] == method) & (mine["variant"] == "+")).any()
        in_pub = not pub.empty and ((pub["method"] == method) & (pub["variant"] == "+")).any()
        return bool(in_ours or in_pub)

    variants = [(m, v) for m in spec.methods for v in (("", "+") if has_plus(m) else ("",))]
    key = ["method", "variant", "setting"]
    pub_rows = {k: g.to_dict("records") for k, g in pub.groupby(key, sort=False)} if not pub.empty else {}
    our_rows = {k: g.to_dict("records") for k, g in mine.groupby(key, sort=False)} if not mine.empty else {}
    rows: list[Row] = []
    for setting in spec.settings:
        group = setting_label(setting)
        for method, variant in baseline_order:
            records = pub_rows.get((method, variant, setting), [])
            cells = _published_cells(spec, records)
            if not _empty(cells):
                mark = "§" if all("MambaIRv2" in r["source"] for r in records) else ""
                row = Row(group, method + variant, "baseline", method + variant, cells, mark=mark, setting=setting)
                rows.append(row)
        for method, variant in variants:
            label = method + variant
            paper_cells = _published_cells(spec, pub_rows.get((method, variant, setting), []))
            our_cells = _our_cells(spec, our_rows.get((method, variant, setting), []))
            paper_row = Row(
                group, label, "paper", f"{label} (paper)", paper_cells, first_of_method=True, setting=setting
            )
            ours_row = Row(group, label, "ours", f"{label} ({ours_name})", our_cells, setting=setting)
            diff = _diff_cells(columns, ours_row, paper_row)
            diff_row = Row(group, label, "diff", f"Δ {ours_name} − paper", diff, setting=setting)
            rows += [paper_row, ours_row, diff_row]
    table = ReportTable(spec, scope, columns, rows, weights=weights)
    _rank(table)
    marks = {c.mark for r in rows for c in r.cells.values() if c.mark and c.value is not None}
    marks |= {r.mark for r in rows if r.mark}
    table.footnotes = [(m, MARKS[m]) for m in MARKS if m in marks]
    if not pub.empty and (pub["method"].isin(ours_methods) & pub["confidence"].str.contains("secondary")).any():
        table.footnotes.append(("", "Published MaIR numbers come from secondary sources (params/paper_results.md)."))
    if baseline_order:
        table.footnotes.append(
            (
                "",
                "Baseline rows as published in the baselines' own tables; whether the "
                "MaIR paper prints exactly these rows is not verified.",
            )
        )
    return table


def build_tables(ours: pd.DataFrame, paper: pd.DataFrame, scope: str, weights: str = "trained") -> list[ReportTable]:
    """All six tables."""
    return [build_table(SPECS[t], ours, paper, scope, weights) for t in TABLE_IDS]


# --------------------------------------------------------------------------------------------- CSV

CSV_ROW_NAMES = {"baseline": "baseline", "paper": "published", "ours": "ours", "diff": "difference"}
PUBLISHED_CSV_ROW_NAMES = {**CSV_ROW_NAMES, "ours": "published weights"}


def csv_column(col: ColumnSpec) -> str:
    """The CSV header of a number column (``Set5 PSNR``, ``Params (K)``)."""
    return f"{col.group} {col.header}".strip()


def to_frame(table: ReportTable) -> pd.DataFrame:
    """The table as a pandas frame: full-precision numbers, NaN where missing, texts and marks in ``note``."""
    records: list[dict[str, object]] = []
    for row in table.rows:
        rec: dict[str, object] = {
            "scope": table.scope,
            "table": table.id,
            "setting": row.setting,
            "method": row.method,
            "row": CSV_ROW_NAMES[row.kind] if table.weights == "trained" else PUBLISHED_CSV_ROW_NAMES[row.kind],
        }
        notes: list[str] = []
        for col in table.columns:
            cell = row.cells[col.key]
            rec[csv_column(col)] = math.nan if cell.value is None else round(cell.value, 6)
            if cell.text:
                notes.append(f"{csv_column(col)}: {cell.text}")
            if cell.mark and cell.value is not None:
                notes.append(f"{csv_column(col)}: {cell.mark} {MARKS[cell.mark]}")
        if row.mark:
            notes.insert(0, f"{row.mark} {MARKS[row.mark]}")
        rec["note"] = "; ".join(notes)
        records.append(rec)
    names = ["scope", "table", "setting", "method", "row", *[csv_column(c) for c in table.columns], "note"]
    frame = pd.DataFrame.from_records(records, columns=names)
    for col in table.columns:
        frame[csv_column(col)] = frame[csv_column(col)].astype("float64")
    return frame


def to_csv(table: ReportTable) -> str:
    """CSV text: missing numbers are empty fields."""
    return to_frame(table).to_csv(index=False, na_rep="", lineterminator="\n")
