"""``mair evaluate`` and ``mair restore``. Registration imports nothing heavy; handlers import the rest."""

from __future__ import annotations

import argparse
import sys

from mair.cli import CommandError

EVALUATE_HELP = "evaluate an experiment's weights on its test sets with the paper protocol"
RESTORE_HELP = "restore your own images with a trained network"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` and ``restore`` commands."""
    ev = subparsers.add_parser(
        "evaluate",
        help=EVALUATE_HELP,
        description=EVALUATE_HELP + ". Writes "
        "results/trained/<scope>/eval/<experiment>/<dataset>[+].csv (per image; resumable) and .json (summary).",
    )
    ev.add_argument("experiment", help="experiment id (params/experiments/<id>.yaml)")
    ev.add_argument(
        "--weights",
        metavar="PATH",
        help="weights file, official or ours (default: results/trained/<scope>/weights/<experiment>.pth)",
    )
    ev.add_argument(
        "--weights-source",
        choices=("trained", "published"),
        default=None,
        help="record in the summaries (and MLflow tags) where the weights come from: trained here or "
        "the authors' published checkpoints",
    )
    ev.add_argument("--datasets", nargs="+", metavar="ID", help="only these test datasets")
    ev.add_argument("--self-ensemble", action="store_true", help="MaIR+: 8x geometric self-ensemble")
    ev.add_argument(
        "--scope",
        choices=("paper", "demo"),
        default="paper",
        help="paper (full data and network) or demo (the embedded demo set, demo-size network)",
    )
    ev.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    ev.add_argument(
        "--exact",
        action="store_true",
        help="true fp32 (no TF32) with the automatic scan backend; default on CUDA: Triton scan, "
        "TF32 matmuls and convolutions (docs/evaluation.md)",
    )
    ev.add_argument(
        "--results-dir",
        default="results/trained",
        metavar="DIR",
        help="results root (default: results/trained, where the pipeline puts trained weights)",
    )
    ev.add_argument("--data-dir", default=None, metavar="DIR", help="data root (default: $MAIR_DATA_DIR or ./data)")
    ev.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(handler=_evaluate)

    rs = subparsers.add_parser(
        "restore",
        help=RESTORE_HELP,
        description=RESTORE_HELP + ". Name the network with --experiment ID (weights from "
        "results/trained/<scope>/weights/<ID>.pth unless --weights is given) or with --weights PATH (the "
        "experiment is found from the tensor shapes, or named with --arch-from ID).",
    )
    rs.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (PNG, JPEG, TIFF, BMP)")
    rs.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    rs.add_argument("--experiment", metavar="ID", help="experiment whose network (and weights) to use")
    rs.add_argument("--weights", metavar="PATH", help="weights file (official 'params'/'params_ema' or ours)")
    rs.add_argument("--arch-from", metavar="ID", help="take the network architecture from this experiment")
    rs.add_argument("--scope", choices=("paper", "demo"), default="paper", help="network size (default paper)")
    rs.add_argument(
        "--results-dir",
        default="results/trained",
        metavar="DIR",
        help="results root (default: results/trained, where the pipeline puts trained weights)",
    )
    rs.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="SIZE",
        help="process in SIZE x SIZE tiles, one at a time (bounds memory for large images)",
    )
    rs.add_argument("--tile-overlap", type=int, default=32, metavar="PX", help="tile overlap (default 32)")
    rs.add_argument(
        "--tile-mode",
        choices=("blend", "crop"),
        default="blend",
        help="overlaps: blended with linear ramps (default) or cut at their middle",
    )
    rs.add_argument("--self-ensemble", action="store_true", help="MaIR+: 8x geometric self-ensemble (slow)")
    rs.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    rs.add_argument(
        "--exact",
        action="store_true",
        help="true fp32 (no TF32) with the automatic scan backend; default on CUDA: Triton scan, "
        "TF32 matmuls and convolutions",
    )
    rs.add_argument(
        "--compile",
        action="store_true",
        help="with --tile: torch.compile the network once for the tile shape (CUDA graphs on CUDA); "
        "pays off for many tiles (the first compile takes about a minute, docs/evaluation.md)",
    )
    rs.add_argument(
        "--alpha",
        choices=("keep", "drop"),
        default="keep",
        help="RGBA inputs: keep the alpha channel (bicubic-upscaled for SR) or drop it",
    )
    rs.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse images of more than N pixels, read from the file header before decoding "
        "(default 250000000; see docs/evaluation.md)",
    )
    rs.add_argument("--quiet", action="store_true", help="no progress bar")
    rs.set_defaults(handler=_restore)


def _evaluate(args: argparse.Namespace) -> int:
    from mair.evaluate.runner import EvaluationError, evaluate
    from mair.models.checkpoint import CheckpointError

    try:
        evaluate(
            args.experiment,
            args.weights,
            datasets=args.datasets,
            self_ensemble=args.self_ensemble,
            scope=args.scope,
            device=args.device,
            results_dir=args.results_dir,
            data_root=args.data_dir,
            track=not args.no_mlflow,
            progress=not args.quiet,
            exact=args.exact,
            weights_source=args.weights_source,
        )
    except (EvaluationError, CheckpointError, OSError) as error:
        raise CommandError(str(error)) from None
    return 0


def _restore(args: argparse.Namespace) -> int:
    from mair.evaluate.restore import DEFAULT_MAX_PIXELS, iter_errors, load_restorer, plan_outputs, restore_files
    from mair.evaluate.runner import EvaluationError
    from mair.models.checkpoint import CheckpointError

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    if max_pixels < 1:
        raise CommandError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    if not args.experiment and not args.weights and not args.arch_from:
        raise CommandError("name the network: --experiment ID, or --weights PATH [--arch-from ID]")
    if args.tile is not None and args.tile <= 0:
        raise CommandError("--tile must be a positive number of pixels")
    if args.tile is not None and not 0 <= args.tile_overlap < args.tile:
        raise CommandError("--tile-overlap must be at least 0 and smaller than --tile")
    if args.compile and args.tile is None:
        raise CommandError("--compile needs --tile SIZE: without tiles every image size would compile again")
    if args.compile and args.exact:
        raise CommandError("--exact runs eager in true fp32; drop --compile or --exact")
    try:
        planned = plan_outputs(args.inputs, args.output)
    except EvaluationError as error:
        raise CommandError(str(error)) from None
    if not planned:
        raise CommandError(f"no images (PNG, JPEG, TIFF, BMP) found in {', '.join(map(str, args.inputs))}")
    try:
        restorer = load_restorer(
            args.experiment,
            args.weights,
            args.arch_from,
            scope=args.scope,
            results_dir=args.results_dir,
            device=args.device,
            tile=args.tile,
            tile_overlap=args.tile_overlap,
            self_ensemble=args.self_ensemble,
            tile_blend=args.tile_mode == "blend",
            exact=args.exact,
            compile=args.compile or None,
        )
    except (EvaluationError, CheckpointError, ValueError) as error:
        raise CommandError(str(error)) from None
    restorer.max_pixels = max_pixels
    mode = f"tiles of {args.tile} px, overlap {args.tile_overlap}" if args.tile else "paper protocol"
    print(
        f"restoring x{restorer.scale} on {restorer.device} ({mode}"
        f"{', MaIR+ self-ensemble' if args.self_ensemble else ''}); RGBA inputs: alpha channel "
        f"{'KEPT' if args.alpha == 'keep' else 'DROPPED'}",
        file=sys.stderr,
    )
    if restorer.runtime is not None:
        print(restorer.runtime.describe(), file=sys.stderr)
    written, failures = restore_files(
        restorer, args.inputs, args.output, keep_alpha=args.alpha == "keep", progress=not args.quiet
    )
    print(f"wrote {written} image(s) to {args.output}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} file(s) failed:", file=sys.stderr)
        for line in iter_errors(failures):
            print(line, file=sys.stderr)
        return 1
    return 0
