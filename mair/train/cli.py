"""``mair train``: train one paper experiment (docs/training.md). Registration imports no torch."""

from __future__ import annotations

import argparse
from typing import Any

from mair.train.options import add_flags, child_argv, options_from_args

__all__ = ["child_argv", "options_from_args", "register"]

DESCRIPTION = """Train one of the paper's experiments with the official recipe.

--gpus N (N > 1) starts torchrun with N local processes, re-running this command in each; under an existing
torchrun (RANK/WORLD_SIZE) or an `srun` step of SLURM the launcher's processes are used as they are. The paper's
effective batch is kept on any process count by gradient accumulation. Checkpoints go to
runs/<scope>/<experiment>/ and a rerun resumes from the newest one. SIGTERM or SIGUSR1 makes the run write a
checkpoint and exit with status 75 (EX_TEMPFAIL) so that a scheduler can requeue it. Final weights:
results/trained/<scope>/weights/<experiment>.pth."""


def register(subparsers: Any) -> None:
    """Add the ``train`` command (its flags: :data:`mair.train.options.FLAGS`)."""
    p = subparsers.add_parser(
        "train",
        help="train a paper experiment (one or many GPUs, resumable)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", help="experiment id (params/experiments/<id>.yaml), e.g. sr_classic_x2")
    add_flags(p)
    p.set_defaults(handler=_handle)


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
