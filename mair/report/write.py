"""``mair tables``: collect the results, build every table, write them as LaTeX, Markdown and CSV with the figures.

Kept apart from :mod:`mair.report.tables` (the tables as data) so that the renderers
(:mod:`mair.report.latex`, :mod:`mair.report.markdown`) depend on the data model and this module on all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mair.common.atomic import atomic_write_text
from mair.report import latex, markdown
from mair.report.collect import (
    Collected,
    default_experiments_dir,
    load_paper_results,
    merge_sources,
    read_mlflow,
    read_summaries,
)
from mair.report.tables import SPECS, ReportTable, build_tables, to_csv


@dataclass
class ReportResult:
    """What ``write_report`` wrote and the notes for the user."""

    out_dir: Path
    files: list[Path]
    notes: list[str]
    tables: list[ReportTable]


def default_paper_results() -> Path | None:
    """``params/paper_results.csv`` in the working directory, else beside the package source, else None."""
    for candidate in (
        Path("params/paper_results.csv"),
        Path(__file__).resolve().parents[2] / "params" / "paper_results.csv",
    ):
        if candidate.is_file():
            return candidate
    return None


def write_report(
    scope: str,
    results_dir: Path,
    out_dir: Path | None = None,
    runs_dir: Path = Path("runs"),
    paper_results: Path | None = None,
    mlflow_uri: str | None = None,
    experiments_dir: Path | None = None,
    figures: bool = True,
    weights: str = "trained",
) -> ReportResult:
    """Collect, build every table, write ``.tex``/``.md``/``.csv`` per table, ``tables.tex``, ``tables.md``
    and the figures into ``out_dir`` (default ``<results_dir>/<scope>/tables``).

    ``experiments_dir`` (default: :func:`mair.experiments.experiments_dir`) supplies each experiment's
    ``paper_results`` key; ``paper_results`` defaults to ``params/paper_results.csv``.
    """
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / scope / "tables"
    experiments_dir = experiments_dir if experiments_dir is not None else default_experiments_dir()
    collected = read_summaries(Path(results_dir), scope, experiments_dir)
    secondary: Collected | None = read_mlflow(mlflow_uri, scope, experiments_dir, weights) if mlflow_uri else None
    merged = merge_sources(collected, secondary)
    notes = list(merged.notes)
    numbers = merged.frame[merged.frame["metric"].isin(["PSNR", "SSIM"])]
    for (table_id, dataset), part in numbers.groupby(["table", "dataset"], sort=True):
        if dataset not in SPECS[str(table_id)].datasets:
            files = ", ".join(sorted(set(part["file"])))
            notes.append(f"not shown: {dataset} is not a column of the {table_id} table ({files})")
    paper_path = paper_results if paper_results is not None else default_paper_results()
    if paper_path is None:
        notes.append("no params/paper_results.csv found: published numbers left out")
    paper = load_paper_results(paper_path)
    tables = build_tables(merged.frame, paper, scope, weights)

    files: list[Path] = []
    for table in tables:
        for suffix, text in (
            (".tex", latex.render_table(table)),
            (".md", markdown.render_table(table)),
            (".csv", to_csv(table)),
        ):
            path = out / f"{table.id}{suffix}"
            atomic_write_text(path, text)
            files.append(path)
    figure_files: list[Path] = []
    if figures:
        from mair.report import figures as figs

        made, fig_notes = figs.write_figures(merged.frame, paper, Path(runs_dir), scope, out)
        figure_files += made
        notes += fig_notes
    files += figure_files
    doc = out / "tables.tex"
    atomic_write_text(doc, latex.render_document(tables, scope, [p.name for p in figure_files]))
    index = out / "tables.md"
    atomic_write_text(index, markdown.render_document(tables, scope, [p.name for p in figure_files], notes))
    files += [doc, index]
    return ReportResult(out, files, notes, tables)
