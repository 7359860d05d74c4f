"""``mair tables``: evaluation summaries -> LaTeX, Markdown and CSV tables and figures, beside the paper.

Registration imports nothing heavy; the handler imports pandas and matplotlib when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tables`` command."""
    parser = subparsers.add_parser(
        "tables",
        help="build the paper's tables (LaTeX, Markdown, CSV) and figures from the evaluation results",
        description="Read results/trained/<scope>/eval/<experiment>/<dataset>[+].json and write one table per paper "
        "table, beside the published numbers, into <out>/ (default results/trained/<scope>/tables/).",
    )
    parser.add_argument(
        "--scope", choices=("paper", "demo"), default="paper", help="which results to report (default: paper)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("results/trained"),
        metavar="DIR",
        help="results root holding <scope>/eval/ (default: results/trained; published weights: results/published)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: <results-dir>/<scope>/tables)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        metavar="DIR",
        help="training runs root holding <scope>/<experiment>/*_log.csv (default: runs)",
    )
    parser.add_argument(
        "--paper-results",
        type=Path,
        default=None,
        metavar="CSV",
        help="published numbers (default: params/paper_results.csv)",
    )
    parser.add_argument(
        "--mlflow",
        default=None,
        metavar="URI",
        help="also read evaluation runs from this MLflow tracking URI (JSON files win)",
    )
    parser.add_argument(
        "--weights",
        choices=("trained", "published"),
        default="trained",
        help="label our rows as weights trained here (default) or as the authors' published checkpoints",
    )
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    parser.add_argument(
        "--log-mlflow",
        action="store_true",
        help="also log the tables and figures as the run 'tables' of the MLflow experiment mair/<scope>/tables "
        "(store: $MLFLOW_TRACKING_URI, default sqlite:///mlflow.db); the pipeline does",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``mair tables``."""
    from mair.cli import CommandError

    if args.paper_results is not None and not args.paper_results.is_file():
        raise CommandError(f"--paper-results {args.paper_results}: no such file")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out}: exists and is not a folder")

    eval_dir = args.results_dir / args.scope / "eval"
    if args.mlflow is None and not any(eval_dir.glob("*/*.json")):
        raise CommandError(
            f"no evaluation results in {eval_dir} (expected <experiment>/<dataset>.json): run `mair evaluate` first"
        )

    from mair.report.write import write_report

    try:
        result = write_report(
            scope=args.scope,
            results_dir=args.results_dir,
            out_dir=args.out,
            runs_dir=args.runs_dir,
            paper_results=args.paper_results,
            mlflow_uri=args.mlflow,
            figures=not args.no_figures,
            weights=args.weights,
        )
    except (OSError, ValueError) as error:
        raise CommandError(str(error)) from error
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.log_mlflow:
        from mair.common.tracking import log_tables

        log_tables(args.scope, result.files, result.out_dir)  # never raises: warns once when MLflow is off
    ours = sum(
        1
        for t in result.tables
        for r in t.rows
        for c in r.cells.values()
        if r.kind == "ours" and (c.value is not None or c.text)
    )
    if not ours:
        raise CommandError(
            f"no results of ours in {eval_dir} or {args.mlflow or 'MLflow'}: the tables in "
            f"{result.out_dir} hold the published numbers only; run `mair evaluate` first"
        )
    print(f"wrote {len(result.files)} files to {result.out_dir} ({len(result.tables)} tables, {ours} cells of ours)")
    return 0
