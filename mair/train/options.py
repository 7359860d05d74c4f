"""What ``mair train`` is asked to do: :class:`TrainOptions`, and :data:`FLAGS`, the one table of its flags.

Each flag is written once, in :data:`FLAGS`: ``mair train``'s argparse options, the options of a parsed command
line and the command that repeats it in every torchrun worker are all generated from it. A flag that replaces a
value of the experiment names that field (``overrides``); :func:`overridden` applies those to an experiment.
Imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mair.experiments import Experiment
from mair.runtime.compile_modes import COMPILE_MODES

__all__ = ["FLAGS", "Flag", "TrainOptions", "add_flags", "child_argv", "options_from_args", "overridden"]


@dataclass
class TrainOptions:
    """What ``mair train`` was asked to do (the Python form of its flags; see :data:`FLAGS`)."""

    experiment: str
    scope: str = "paper"
    gpus: int | None = None
    max_iters: int | None = None
    precision: str | None = None  # None: the runtime default (mair.runtime.resolve: tf32 on CUDA, fp32 on CPU)
    run_dir: Path | None = None
    resume: bool = True
    init_fix_t_x3: bool = False
    init_weights: Path | None = None
    checkpoint_every: int | None = None
    keep: int = 3
    device: str | None = None
    num_workers: int | None = None
    allow_batch_mismatch: bool = False
    data_dir: Path | None = None
    results_dir: Path = Path("results/trained")
    validate: bool = True
    mlflow: bool = True
    tracking_uri: str | None = None
    log_every: int | None = None
    compile: str | None = None  # torch.compile backend for the training forward/backward (None: eager)
    compile_mode: str | None = None  # torch.compile mode (implies the inductor backend); see compile_settings
    exact: bool = False  # --exact: eager, true fp32, PyTorch's Adam (mair.runtime.resolve)
    no_compile: bool = False  # --no-compile: eager, the other defaults kept

    def resolved_run_dir(self) -> Path:
        """``--run-dir``, else ``runs/<scope>/<experiment>`` (an experiment file is named by its stem)."""
        if self.run_dir:
            return Path(self.run_dir)
        name = Path(self.experiment).stem if self.experiment.endswith((".yaml", ".yml")) else self.experiment
        return Path("runs") / self.scope / name


@dataclass(frozen=True)
class Flag:
    """One ``mair train`` flag.

    ``kind``: ``value`` (takes an argument), ``switch`` (``store_true``) or ``toggle`` (``--x`` / ``--no-x``).
    ``field``: the :class:`TrainOptions` field it sets. ``overrides``: the experiment field (dotted path) it
    replaces when given, or None. ``always``: a value flag the worker command always repeats (it has a default).
    """

    name: str
    field: str
    help: str
    kind: str = "value"
    type: Callable[[str], Any] | None = None
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    const: Any = None  # a value flag with an optional argument: the value when the flag is given bare
    overrides: str | None = None
    always: bool = False


FLAGS: tuple[Flag, ...] = (
    Flag(
        "--scope",
        "scope",
        "paper: the real experiment; demo: its small CPU-friendly version on the demo data",
        choices=("paper", "demo"),
        default="paper",
        always=True,
    ),
    Flag(
        "--gpus",
        "gpus",
        "processes (GPUs) to start with torchrun when not already under torchrun/SLURM",
        type=int,
        metavar="N",
    ),
    Flag("--device", "device", "default: cuda when available, else cpu (gloo)", choices=("cpu", "cuda")),
    Flag(
        "--max-iters",
        "max_iters",
        "stop after iteration K (the schedule stays the experiment's)",
        type=int,
        metavar="K",
    ),
    Flag(
        "--exact",
        "exact",
        "eager, true fp32 (no TF32 anywhere), PyTorch's Adam: for bit-faithful comparisons. "
        "Default on CUDA: Triton scan, TF32, torch.compile with CUDA graphs, fused Adam; on CPU: "
        "eager fp32",
        kind="switch",
    ),
    Flag(
        "--precision",
        "precision",
        "override the default precision (CUDA tf32, CPU fp32): fp32 (PyTorch's defaults, TF32 "
        "convolutions only), tf32 matmuls too, or bf16 autocast",
        choices=("fp32", "tf32", "bf16"),
    ),
    Flag(
        "--compile",
        "compile",
        "torch.compile the network in one graph, the scan as custom ops (compiler backend, "
        "default inductor); validation stays eager",
        const="inductor",
        metavar="BACKEND",
    ),
    Flag(
        "--compile-mode",
        "compile_mode",
        "torch.compile mode (implies --compile inductor; default on CUDA: reduce-overhead, which "
        "replays the compiled steps as CUDA graphs, also under DDP)",
        choices=COMPILE_MODES,
    ),
    Flag(
        "--no-compile",
        "no_compile",
        "run eager, keeping the other defaults (backend, precision, Adam)",
        kind="switch",
    ),
    Flag(
        "--run-dir",
        "run_dir",
        "run folder (default runs/<scope>/<experiment>)",
        type=Path,
        metavar="DIR",
    ),
    Flag(
        "--resume",
        "resume",
        "resume from the newest checkpoint of the run folder (default); --no-resume archives "
        "the previous run's files and starts over",
        kind="toggle",
        default=True,
    ),
    Flag(
        "--init-fix-t-x3",
        "init_fix_t_x3",
        "initialise sr_light_t_x3 from T x2 instead of the official S x2 (docs/training.md)",
        kind="switch",
    ),
    Flag(
        "--init-weights",
        "init_weights",
        "initial weights instead of results/trained/<scope>/weights/<init experiment>.pth",
        type=Path,
        metavar="PATH",
    ),
    Flag(
        "--checkpoint-every",
        "checkpoint_every",
        "checkpoint every N iterations (default: the experiment's checkpoint_freq)",
        type=int,
        metavar="N",
        overrides="train.checkpoint_freq",
    ),
    Flag("--keep", "keep", "checkpoints to keep (default 3)", type=int, default=3, metavar="K", always=True),
    Flag(
        "--num-workers",
        "num_workers",
        "data loader workers per process (default: up to 8 on GPU, 0 on CPU)",
        type=int,
        metavar="N",
    ),
    Flag(
        "--allow-batch-mismatch",
        "allow_batch_mismatch",
        "train even when the paper's effective batch cannot be kept on this process count",
        kind="switch",
    ),
    Flag("--data-dir", "data_dir", "data root (default $MAIR_DATA_DIR or ./data)", type=Path, metavar="DIR"),
    Flag(
        "--results-dir",
        "results_dir",
        "results root for initial and final weights (default ./results/trained, as the pipeline)",
        type=Path,
        default=Path("results/trained"),
        metavar="DIR",
        always=True,
    ),
    Flag("--val", "validate", "validate during and after training (default on)", kind="toggle", default=True),
    Flag(
        "--mlflow",
        "mlflow",
        "log to MLflow (default on; store $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
        kind="toggle",
        default=True,
    ),
    Flag("--tracking-uri", "tracking_uri", "MLflow tracking URI", metavar="URI"),
    Flag(
        "--log-every",
        "log_every",
        "log the loss every N iterations (default: the experiment's print_freq)",
        type=int,
        metavar="N",
        overrides="train.print_freq",
    ),
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add every flag of :data:`FLAGS` to ``parser``."""
    for flag in FLAGS:
        if flag.kind == "switch":
            parser.add_argument(flag.name, dest=flag.field, action="store_true", help=flag.help)
        elif flag.kind == "toggle":
            parser.add_argument(
                flag.name, dest=flag.field, action=argparse.BooleanOptionalAction, default=flag.default, help=flag.help
            )
        else:
            extra: dict[str, Any] = {"nargs": "?", "const": flag.const} if flag.const is not None else {}
            if flag.type is not None:
                extra["type"] = flag.type
            if flag.choices is not None:
                extra["choices"] = flag.choices
            if flag.metavar is not None:
                extra["metavar"] = flag.metavar
            parser.add_argument(flag.name, dest=flag.field, default=flag.default, help=flag.help, **extra)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """:class:`TrainOptions` from parsed arguments."""
    return TrainOptions(experiment=args.experiment, **{flag.field: getattr(args, flag.field) for flag in FLAGS})


def child_argv(args: argparse.Namespace) -> list[str]:
    """The ``mair`` arguments that repeat this command in each torchrun worker: the flags with a default first,
    then the values given, then the toggles and the switches given."""
    argv = ["train", args.experiment]
    values = [f for f in FLAGS if f.kind == "value"]
    for flag in sorted(values, key=lambda f: not f.always):
        value = getattr(args, flag.field)
        if flag.always or value is not None:
            argv += [flag.name, str(value)]
    for flag in FLAGS:
        if flag.kind == "toggle":
            argv.append(flag.name if getattr(args, flag.field) else "--no-" + flag.name[2:])
    argv += [flag.name for flag in FLAGS if flag.kind == "switch" and getattr(args, flag.field)]
    return argv


def overridden(exp: Experiment, opts: TrainOptions) -> Experiment:
    """``exp`` with the fields that the given flags override replaced (e.g. ``--log-every`` -> train.print_freq);
    a flag left out, or given as 0, keeps the experiment's value."""
    for flag in FLAGS:
        value = getattr(opts, flag.field)
        if flag.overrides is not None and value:
            exp = _replace_path(exp, flag.overrides.split("."), value)
    return exp


def _replace_path(obj: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    new = _replace_path(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: new})
