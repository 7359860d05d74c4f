"""``mair train``: train one paper experiment (docs/training.md). Registration imports no torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mair.runtime.compile_modes import COMPILE_MODES

__all__ = ["child_argv", "options_from_args", "register"]

DESCRIPTION = """Train one of the paper's experiments with the official recipe.

--gpus N (N > 1) starts torchrun with N local processes, re-running this command in each; under an existing
torchrun (RANK/WORLD_SIZE) or an `srun` step of SLURM the launcher's processes are used as they are. The paper's
effective batch is kept on any process count by gradient accumulation. Checkpoints go to
runs/<scope>/<experiment>/ and a rerun resumes from the newest one. SIGTERM or SIGUSR1 makes the run write a
checkpoint and exit with status 75 (EX_TEMPFAIL) so that a scheduler can requeue it. Final weights:
results/trained/<scope>/weights/<experiment>.pth."""


def register(subparsers: Any) -> None:
    """Add the ``train`` command."""
    p = subparsers.add_parser(
        "train",
        help="train a paper experiment (one or many GPUs, resumable)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", help="experiment id (params/experiments/<id>.yaml), e.g. sr_classic_x2")
    p.add_argument(
        "--scope",
        choices=("paper", "demo"),
        default="paper",
        help="paper: the real experiment; demo: its small CPU-friendly version on the demo data",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="processes (GPUs) to start with torchrun when not already under torchrun/SLURM",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu (gloo)"
    )
    p.add_argument(
        "--max-iters",
        type=int,
        default=None,
        metavar="K",
        help="stop after iteration K (the schedule stays the experiment's)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="eager, true fp32 (no TF32 anywhere), PyTorch's Adam: for bit-faithful comparisons. "
        "Default on CUDA: Triton scan, TF32, torch.compile with CUDA graphs, fused Adam; on CPU: "
        "eager fp32",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "tf32", "bf16"),
        default=None,
        help="override the default precision (CUDA tf32, CPU fp32): fp32 (PyTorch's defaults, TF32 "
        "convolutions only), tf32 matmuls too, or bf16 autocast",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile the network in one graph, the scan as custom ops (compiler backend, "
        "default inductor); validation stays eager",
    )
    p.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile mode (implies --compile inductor; default on CUDA: reduce-overhead, which "
        "replays the compiled steps as CUDA graphs, also under DDP)",
    )
    p.add_argument(
        "--no-compile", action="store_true", help="run eager, keeping the other defaults (backend, precision, Adam)"
    )
    p.add_argument(
        "--run-dir", type=Path, default=None, metavar="DIR", help="run folder (default runs/<scope>/<experiment>)"
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resume from the newest checkpoint of the run folder (default); --no-resume archives "
        "the previous run's files and starts over",
    )
    p.add_argument(
        "--init-fix-t-x3",
        action="store_true",
        help="initialise sr_light_t_x3 from T x2 instead of the official S x2 (docs/training.md)",
    )
    p.add_argument(
        "--init-weights",
        type=Path,
        default=None,
        metavar="PATH",
        help="initial weights instead of results/trained/<scope>/weights/<init experiment>.pth",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="checkpoint every N iterations (default: the experiment's checkpoint_freq)",
    )
    p.add_argument("--keep", type=int, default=3, metavar="K", help="checkpoints to keep (default 3)")
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        metavar="N",
        help="data loader workers per process (default: up to 8 on GPU, 0 on CPU)",
    )
    p.add_argument(
        "--allow-batch-mismatch",
        action="store_true",
        help="train even when the paper's effective batch cannot be kept on this process count",
    )
    p.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR", help="data root (default $MAIR_DATA_DIR or ./data)"
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=Path("results/trained"),
        metavar="DIR",
        help="results root for initial and final weights (default ./results/trained, as the pipeline)",
    )
    p.add_argument(
        "--val",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="validate during and after training (default on)",
    )
    p.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log to MLflow (default on; store $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    p.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow tracking URI")
    p.add_argument(
        "--log-every",
        type=int,
        default=None,
        metavar="N",
        help="log the loss every N iterations (default: the experiment's print_freq)",
    )
    p.set_defaults(handler=_handle)


def options_from_args(args: argparse.Namespace) -> Any:
    """:class:`mair.train.trainer.TrainOptions` from parsed arguments."""
    from mair.train.trainer import TrainOptions

    return TrainOptions(
        experiment=args.experiment,
        scope=args.scope,
        gpus=args.gpus,
        max_iters=args.max_iters,
        precision=args.precision,
        run_dir=args.run_dir,
        resume=args.resume,
        init_fix_t_x3=args.init_fix_t_x3,
        init_weights=args.init_weights,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        device=args.device,
        num_workers=args.num_workers,
        allow_batch_mismatch=args.allow_batch_mismatch,
        data_dir=args.data_dir,
        results_dir=args.results_dir,
        validate=args.val,
        mlflow=args.mlflow,
        tracking_uri=args.tracking_uri,
        log_every=args.log_every,
        compile=args.compile,
        compile_mode=args.compile_mode,
        exact=args.exact,
        no_compile=args.no_compile,
    )


def child_argv(args: argparse.Namespace) -> list[str]:
    """The ``mair`` arguments that repeat this command in each torchrun worker."""
    argv = [
        "train",
        args.experiment,
        "--scope",
        args.scope,
        "--keep",
        str(args.keep),
        "--results-dir",
        str(args.results_dir),
    ]
    optional = {
        "--precision": args.precision,
        "--gpus": args.gpus,
        "--device": args.device,
        "--max-iters": args.max_iters,
        "--run-dir": args.run_dir,
        "--init-weights": args.init_weights,
        "--checkpoint-every": args.checkpoint_every,
        "--num-workers": args.num_workers,
        "--data-dir": args.data_dir,
        "--tracking-uri": args.tracking_uri,
        "--log-every": args.log_every,
        "--compile": args.compile,
        "--compile-mode": args.compile_mode,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    argv.append("--resume" if args.resume else "--no-resume")
    argv.append("--val" if args.val else "--no-val")
    argv.append("--mlflow" if args.mlflow else "--no-mlflow")
    if args.init_fix_t_x3:
        argv.append("--init-fix-t-x3")
    if args.allow_batch_mismatch:
        argv.append("--allow-batch-mismatch")
    if args.exact:
        argv.append("--exact")
    if args.no_compile:
        argv.append("--no-compile")
    return argv


def _handle(args: argparse.Namespace) -> int:
    from mair.cli import CommandError
    from mair.experiments import ExperimentError
    from mair.models.checkpoint import CheckpointError
    from mair.train.datasets import DatasetError
    from mair.train.launch import detect_env, run_torchrun
    from mair.train.trainer import RunLock, TrainError, preflight, train

    opts = options_from_args(args)
    try:
        env = detect_env()
        gpus = 1 if args.gpus is None else args.gpus
        if gpus < 1:
            raise TrainError(f"--gpus must be >= 1, got {gpus}")
        if gpus > 1 and not env.distributed:
            import torch

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if device == "cuda" and torch.cuda.device_count() < gpus:
                raise TrainError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
            preflight(opts, gpus)  # every problem is reported before torchrun starts
            argv = child_argv(args)
            run_dir = opts.resolved_run_dir()
            RunLock(run_dir).acquire().release()  # a folder in use: one line now (rank 0 takes the lock itself)
            return run_torchrun(gpus, argv, run_dir)
        return train(opts, env).exit_code
    except (TrainError, ExperimentError, DatasetError, CheckpointError) as error:
        raise CommandError(str(error)) from None
