"""``python -m mair.pipeline ACTION``: the helper commands the pipeline's rules run (run-with-gpus, dvc-yaml,
data-manifest, link-weights, eval-metrics)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from mair.pipeline.artifacts import link_weights, write_eval_metrics, write_manifest
from mair.pipeline.dvc import dvc_files
from mair.pipeline.gpus import run_with_gpus
from mair.pipeline.settings import PipelineError, load_pipeline_config


def _cmd_run_with_gpus(args: argparse.Namespace) -> int:
    try:
        return run_with_gpus(args.n, args.command, Path(args.lock_dir) if args.lock_dir else None, args.timeout)
    except (PipelineError, TimeoutError) as error:
        print(f"run-with-gpus: error: {error}", file=sys.stderr)
        return 2


def _cmd_dvc_yaml(args: argparse.Namespace) -> int:
    config = load_pipeline_config(args.config)
    config = {**config, "experiments": "all"}  # the DVC files hold every experiment; the params choose
    root = Path(args.root)
    files = {root / name: text for name, text in dvc_files(config).items()}
    if args.check:
        stale = [str(p) for p, text in files.items() if (p.read_text(encoding="utf-8") if p.is_file() else "") != text]
        if stale:
            print(f"{', '.join(stale)} out of date: run `python -m mair.pipeline dvc-yaml`", file=sys.stderr)
            return 1
        return 0
    from mair.common.atomic import atomic_write_text

    for path, text in files.items():
        atomic_write_text(path, text)
        print(f"wrote {path}")
    return 0


def _cmd_link_weights(args: argparse.Namespace) -> int:
    try:
        link_weights(Path(args.source), Path(args.target))
    except (PipelineError, OSError) as error:
        print(f"python -m mair.pipeline link-weights: error: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_eval_metrics(args: argparse.Namespace) -> int:
    doc = write_eval_metrics(Path(args.out), args.summaries)
    print(f"wrote {args.out} ({len(doc)} test sets)")
    return 0


def _cmd_data_manifest(args: argparse.Namespace) -> int:
    doc = write_manifest(Path(args.out), args.markers)
    print(f"wrote {args.out} ({len(doc['datasets'])} datasets)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mair.pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)

    p = sub.add_parser(
        "run-with-gpus",
        help="run a command on N cards of its own (CUDA_VISIBLE_DEVICES)",
        usage="python -m mair.pipeline run-with-gpus [--lock-dir DIR] [--timeout S] N -- COMMAND ...",
    )
    p.add_argument("n", type=int, metavar="N", help="number of cards (0: none, CPU only)")
    p.add_argument("--lock-dir", help="card lock folder (default: $MAIR_GPU_LOCK_DIR or <tmp>/mair-gpu-slots-<uid>)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds of waiting")
    p.set_defaults(handler=_cmd_run_with_gpus)

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml and workflow/dvc.yaml from the experiments (or --check them)")
    p.add_argument("--config", default="params/pipeline.yaml", help="pipeline config (default: %(default)s)")
    p.add_argument("--root", default=".", help="repository root to write them in (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="exit 1 when the file differs from what would be written")
    p.set_defaults(handler=_cmd_dvc_yaml)

    p = sub.add_parser("data-manifest", help="gather prepared markers into one JSON file")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("markers", nargs="+", help="prepared markers (.../<id>/.prepared.json)")
    p.set_defaults(handler=_cmd_data_manifest)

    p = sub.add_parser("link-weights", help="hard-link (else copy) a weights file into place, atomically")
    p.add_argument("source", help="the fetched file")
    p.add_argument("target", help="where the pipeline expects it")
    p.set_defaults(handler=_cmd_link_weights)

    p = sub.add_parser("eval-metrics", help="gather evaluation summaries into one metrics JSON file (DVC metrics)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("summaries", nargs="+", help="evaluation summaries (.../<dataset>[+].json)")
    p.set_defaults(handler=_cmd_eval_metrics)

    argv = list(sys.argv[1:] if argv is None else argv)
    # `run-with-gpus [options] N -- COMMAND ...`: everything after the first `--` is the command, untouched.
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.command = command
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
