"""Training of the paper's experiments on one process or many (DDP), resumable and tracked (docs/training.md).

:func:`train` runs one experiment from :class:`TrainOptions`. The order of work:

1. **pre-flight**, in every process and before any communication (:func:`preflight`): the experiment, the
   batch plan (effective batch kept by gradient accumulation), the datasets (prepared, large enough for the
   patch), the initial weights; every problem is a clear error before a single training step;
2. process group (NCCL on GPUs, gloo on CPU), seeding with ``seed + rank``, model, optimiser, scheduler;
3. resume from the newest complete checkpoint of the run folder (rank 0 decides, all ranks load the same one),
   or initialise from x2 weights when the experiment says so;
4. the loop of the official ``trainF.py``: ``iter += 1``; scheduler step for ``iter > 1``; ``accum``
   micro-batches (``no_sync`` on all but the last under DDP; progressive crop and mixup for the U-Net tasks);
   gradient clipping; optimiser step; logging; checkpoint; validation on rank 0 on the two-speed schedule;
5. SIGTERM / SIGUSR1 set a flag; at the next iteration boundary all ranks agree (a tiny all-reduce), write a
   checkpoint and exit with :data:`mair.train.launch.EXIT_STOPPED` (75).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import fcntl
import io
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mair.common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, remove_stale_parts
from mair.experiments import Experiment, load
from mair.runtime.compile_modes import COMPILE_MODES
from mair.runtime.precision import autocast
from mair.tasks import get_task
from mair.train import datasets as train_data
from mair.train.launch import EXIT_STOPPED, STOP_MARKER, DistEnv, detect_env
from mair.train.losses import build_loss
from mair.train.options import TrainOptions, overridden
from mair.train.progressive import mixup, progressive_crop, step_rng
from mair.train.sampler import EnlargedSampler
from mair.train.schedules import build_scheduler, progressive_stage

__all__ = [
    "BatchPlan",
    "RunLock",
    "TrainError",
    "TrainOptions",
    "TrainResult",
    "default_workers",
    "init_weights_source",
    "latest_checkpoint",
    "plan_batch",
    "preflight",
    "remove_stale_run_parts",
    "save_checkpoint_file",
    "train",
    "val_due",
]

TRAIN_LOG_COLUMNS = ("iter", "epoch", "loss", "lr", "seconds")
VAL_LOG_COLUMNS = ("iter", "dataset", "psnr", "ssim")
STATE_FORMAT = 1


class TrainError(Exception):
    """A user-facing training problem (bad options, batch plan, run folder, weights)."""


@dataclass
class TrainResult:
    """How a training call ended."""

    exit_code: int
    iteration: int
    run_dir: Path
    weights: Path | None = None
    best: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchPlan:
    """Per-GPU batch x world size x accumulation = effective batch (the paper's, unless allowed otherwise)."""

    batch_per_gpu: int
    world_size: int
    accum: int
    effective_batch: int
    paper_effective_batch: int

    @property
    def exact(self) -> bool:
        return self.effective_batch == self.paper_effective_batch


# ------------------------------------------------------------------------------------------------ helpers


def _log(message: str, env: DistEnv | None = None) -> None:
    if env is None or env.is_main:
        print(f"[mair train] {message}", file=sys.stderr, flush=True)


def plan_batch(exp: Experiment, world_size: int, allow_mismatch: bool = False) -> BatchPlan:
    """Gradient accumulation that keeps the paper's effective batch on ``world_size`` processes.

    ``accum = effective / (batch_per_gpu x world)`` must be a whole number; otherwise :class:`TrainError`
    (or, with ``allow_mismatch``, the nearest accumulation >= 1 and a different effective batch).
    """
    train = exp.train
    bpg, effective = train.batch_per_gpu, train.effective_batch
    per_step = bpg * world_size
    if effective % per_step == 0:
        return BatchPlan(bpg, world_size, effective // per_step, effective, effective)
    if not allow_mismatch:
        divisors = [n for n in range(1, effective // bpg + 1) if effective % (bpg * n) == 0]
        raise TrainError(
            f"experiment {exp.id!r}: the paper's effective batch {effective} (batch {bpg} per GPU x "
            f"{train.gpus} GPUs) cannot be kept on {world_size} processes: {effective} is not a multiple of "
            f"{bpg} x {world_size}. Use a process count in {divisors}, or pass --allow-batch-mismatch to train "
            f"with a different effective batch."
        )
    accum = max(1, round(effective / per_step))
    return BatchPlan(bpg, world_size, accum, bpg * world_size * accum, effective)


def val_due(exp: Experiment, iteration: int) -> bool:
    """The official two-speed rule: every ``val_freq`` before ``val_milestone``, ``val_freq_final`` after."""
    val = exp.val
    freq = val.val_freq if iteration < val.val_milestone else val.val_freq_final
    return freq > 0 and iteration % freq == 0


def init_weights_source(exp: Experiment, opts: TrainOptions) -> tuple[Path | None, bool, str]:
    """``(path, strict, note)`` of the weights the experiment starts from (``train.init_from``).

    ``--init-weights`` wins; otherwise ``results/trained/<scope>/weights/<init experiment>.pth``. For the T x3 quirk
    (docs/training.md) the official choice (S x2) is the default and ``--init-fix-t-x3`` takes the fixed one (T x2).
    """
    init = exp.train.init_from
    if opts.init_weights is not None:
        strict = init.strict if init else True
        return Path(opts.init_weights), strict, f"--init-weights {opts.init_weights}"
    if not init:
        return None, True, "from scratch"
    source = init.experiment
    note = f"initialised from {source}"
    quirk = init.quirk
    if quirk:
        if opts.init_fix_t_x3:
            source = quirk.fixed
            note = f"initialised from {source} (--init-fix-t-x3; the official yml uses {quirk.official})"
        else:
            note = (
                f"initialised from {source} as the official yml does (quirk: {quirk.fixed} would be "
                f"the consistent choice; pass --init-fix-t-x3)"
            )
    elif opts.init_fix_t_x3:
        warnings.warn(f"--init-fix-t-x3 has no effect on {exp.id}", stacklevel=2)
    path = Path(opts.results_dir) / opts.scope / "weights" / f"{source}.pth"
    return path, init.strict, note


def latest_checkpoint(run_dir: Path) -> int | None:
    """The newest iteration with both ``training_states/<i>.state`` and ``models/net_g_<i>.pth``."""
    states = run_dir / "training_states"
    if not states.is_dir():
        return None
    iters = []
    for path in states.glob("*.state"):
        if path.stem.isdigit() and (run_dir / "models" / f"net_g_{path.stem}.pth").is_file():
            iters.append(int(path.stem))
    return max(iters) if iters else None


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_workers(exp: Experiment, device_type: str, local_world: int, cpus: int | None = None) -> int:
    """Data loader workers per process when ``--num-workers`` is not given: the experiment's
    ``num_workers_per_gpu`` on GPUs, at most the CPUs per process less one (at least 1); 0 on the CPU."""
    if device_type != "cuda":
        return 0
    wanted = exp.train.num_workers_per_gpu
    available = max(1, (cpus or os.cpu_count() or 2) // max(1, local_world) - 1)
    return min(wanted, available)


# ------------------------------------------------------------------------------------------------ pre-flight


@dataclass
class Preflight:
    """Everything checked before training: experiment, batch plan, datasets, initial weights."""

    exp: Experiment
    plan: BatchPlan
    train_set: Dataset
    val_set: train_data.ValidationDataset | None
    init_path: Path | None
    init_strict: bool
    init_note: str
    resumable: int | None


def compile_settings(opts: TrainOptions, world_size: int) -> tuple[str | None, str | None]:
    """The ``torch.compile`` backend and mode of a run (``None, None``: eager). A mode implies the inductor
    backend. CUDA-graph modes work under DDP too: on 2 GPUs their losses match 1 process x accumulation 2
    as closely as eager DDP's (docs/benchmarks.md)."""
    mode = opts.compile_mode
    if mode is None:
        return opts.compile, None
    if mode not in COMPILE_MODES:
        raise TrainError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if opts.compile not in (None, "inductor"):
        raise TrainError(f"--compile-mode {mode} needs the inductor compiler, not --compile {opts.compile}")
    return "inductor", mode


def runtime_settings(opts: TrainOptions, device: str) -> Any:
    """The :class:`mair.runtime.resolve.RuntimeSettings` of a run on ``device`` (cpu or cuda) from its options."""
    from mair.runtime.resolve import RuntimeSettingsError, resolve_runtime

    backend, mode = compile_settings(opts, 1)
    try:
        return resolve_runtime(
            device,
            opts.exact,
            workload="train",
            precision=opts.precision,
            compile=False if opts.no_compile else None,
            compile_backend=backend,
            compile_mode=mode,
        )
    except RuntimeSettingsError as error:
        raise TrainError(str(error)) from None


def preflight(opts: TrainOptions, world_size: int) -> Preflight:
    """Check the options, the experiment and the data for ``world_size`` processes; raise clear errors."""
    compile_settings(opts, world_size)
    if opts.precision not in (None, "fp32", "tf32", "bf16"):
        raise TrainError(f"--precision must be one of fp32, tf32, bf16, got {opts.precision!r}")
    runtime_settings(
        opts, opts.device if opts.device in ("cpu", "cuda") else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if opts.keep < 1:
        raise TrainError(f"--keep must be >= 1, got {opts.keep}")
    if opts.max_iters is not None and opts.max_iters < 1:
        raise TrainError(f"--max-iters must be >= 1, got {opts.max_iters}")
    if opts.checkpoint_every is not None and opts.checkpoint_every < 1:
        raise TrainError(f"--checkpoint-every must be >= 1, got {opts.checkpoint_every}")
    if opts.num_workers is not None and opts.num_workers < 0:
        raise TrainError(f"--num-workers must be >= 0 (0: load in the training process), got {opts.num_workers}")
    run_dir = opts.resolved_run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"run folder {run_dir} exists and is not a folder; choose another --run-dir")
    blocking = next((p for p in run_dir.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise TrainError(f"run folder {run_dir} cannot be made: {blocking} is not a folder; choose another --run-dir")
    exp = load(opts.experiment, opts.scope)
    plan = plan_batch(exp, world_size, opts.allow_batch_mismatch)
    train_set = train_data.build_train_dataset(exp, opts.scope, opts.data_dir)
    train_data.check_patch_sizes(train_set)
    sampler = EnlargedSampler(len(train_set), world_size, 0, exp.train.dataset_enlarge_ratio)
    if sampler.num_samples < plan.batch_per_gpu:
        raise TrainError(
            f"experiment {exp.id!r}: {len(train_set)} training images x enlargement "
            f"{sampler.ratio} give {sampler.num_samples} samples per process, fewer than one batch "
            f"of {plan.batch_per_gpu}"
        )
    val_set = train_data.build_val_dataset(exp, opts.scope, opts.data_dir) if opts.validate else None
    resumable = latest_checkpoint(run_dir) if opts.resume else None
    if resumable is not None:
        _check_run_config(run_dir, exp, opts)
    init_path, strict, note = init_weights_source(exp, opts)
    if init_path is not None and resumable is None and not init_path.is_file():
        init = exp.train.init_from
        hint = (
            f"train it first (`mair train {init.experiment} --scope {opts.scope}`) or pass --init-weights PATH"
            if opts.init_weights is None and init
            else "check the path"
        )
        raise TrainError(f"experiment {exp.id!r} starts from weights {init_path}, which do not exist: {hint}")
    return Preflight(exp, plan, train_set, val_set, init_path, strict, note, resumable)


def _check_run_config(run_dir: Path, exp: Experiment, opts: TrainOptions) -> None:
    config = run_dir / "config.yaml"
    if not config.is_file():
        return
    try:
        saved = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return
    run = saved.get("run") or {}
    if run.get("experiment") not in (None, exp.id) or run.get("scope") not in (None, opts.scope):
        raise TrainError(
            f"{run_dir} holds a run of {run.get('experiment')!r} ({run.get('scope')} scope), not {exp.id!r} "
            f"({opts.scope}); choose another --run-dir or pass --no-resume"
        )


# ------------------------------------------------------------------------------------------------ run folder

RUN_LOCK = ".mair-train.lock"
#: Files of a run folder written atomically, as ``(sub-folder, name pattern)``: temp files of these targets
#: left by a killed process are removed at the next start (under the run folder's lock).
RUN_TARGETS = (("", "*.csv"), ("", "*.yaml"), ("", "*.json"), ("models", "net_g_*.pth"), ("training_states", "*.state"))
_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class RunLock:
    """An exclusive ``flock`` on ``<run folder>/.mair-train.lock``, held while a ``mair train`` uses the folder.

    The lock ends with the process (also when it is killed), so a stale lock file never blocks a new run.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / RUN_LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise TrainError(f"cannot use the run folder {self.path.parent}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise TrainError(f"cannot lock the run folder {self.path.parent}: {error.strerror}") from None
            raise TrainError(
                f"run folder {self.path.parent} is in use by another `mair train` (pid {holder}); "
                f"wait for it to end or choose another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def remove_stale_run_parts(run_dir: Path) -> list[Path]:
    """Temp files of the run's checkpoints, logs and records left by a killed process (call under the lock)."""
    removed = []
    for sub, pattern in RUN_TARGETS:
        removed += remove_stale_parts(run_dir / sub if sub else run_dir, pattern)
    return removed


def save_checkpoint_file(path: Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically; a full disk (or quota, or file size limit) is a
    :class:`TrainError` naming the file and the bytes it needs, and leaves no partial file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        if error.errno not in _SPACE_ERRORS:
            raise
        try:
            free = f"{shutil.disk_usage(path.parent).free:,} bytes free there"
        except OSError:
            free = "free space unknown"
        raise TrainError(
            f"cannot write checkpoint {path}: {error.strerror} (it needs {len(data):,} bytes; "
            f"{free}); free some space and rerun the same command to resume from the last "
            f"complete checkpoint"
        ) from None


# ------------------------------------------------------------------------------------------------ data stream


def _worker_init(_worker_id: int) -> None:
    # Workers ignore the stop signals: the main process checkpoints and then shuts them down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(0)


class BatchStream:
    """Micro-batches from an :class:`EnlargedSampler`, across epochs, with a resumable (epoch, position)."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: EnlargedSampler,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        epoch: int = 0,
        position: int = 0,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.epoch, self.position = epoch, position
        # A private generator: creating a loader iterator draws a base seed from it, and drawing that from the
        # global torch RNG would shift stochastic depth after every (re)start of the iterator.
        generator = torch.Generator()
        generator.manual_seed(0)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            generator=generator,
            worker_init_fn=_worker_init if num_workers > 0 else None,
        )
        self._iter: Iterator[Any] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.num_samples // self.batch_size

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_position(self.position)
        self._iter = iter(self.loader)

    def close(self) -> None:
        """Stop the loader's worker processes now, while the interpreter is fully alive.

        Left to interpreter exit, the persistent workers of a CUDA run (pin-memory thread, NCCL process group)
        were seen to block the process forever after the last iteration (4 x H100, torch 2.11: every rank
        waited in the DataLoader's worker clean-up while its workers waited for work). ``_shutdown_workers``
        is the DataLoader iterator's own shutdown (the same call its ``__del__`` makes).
        """
        iterators = {id(it): it for it in (self._iter, getattr(self.loader, "_iterator", None)) if it is not None}
        self._iter = None
        if hasattr(self.loader, "_iterator"):
            self.loader._iterator = None
        for iterator in iterators.values():
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def next(self) -> dict[str, Any]:
        """The next micro-batch; a new epoch starts when this one has no full batch left."""
        if self._iter is None:
            self._start()
        assert self._iter is not None
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start()
            batch = next(self._iter)
        self.position += self.batch_size
        return batch


# ------------------------------------------------------------------------------------------------ RNG states


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ CSV logs


class CsvLog:
    """An append-only CSV with a header; on resume the rows after the checkpoint are dropped."""

    def __init__(self, path: Path, columns: tuple[str, ...], keep_until: int | None) -> None:
        self.path, self.columns = path, columns
        rows: list[list[str]] = []
        if keep_until is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                if header == list(columns):
                    rows = [r for r in reader if r and r[0].isdigit() and int(r[0]) <= keep_until]
        lines = [",".join(columns)] + [",".join(r) for r in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")
        self.handle = path.open("a", encoding="utf-8")

    def write(self, *values: Any) -> None:
        self.handle.write(",".join(f"{v:.8g}" if isinstance(v, float) else str(v) for v in values) + "\n")
        self.handle.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()


# ------------------------------------------------------------------------------------------------ trainer


class Trainer:
    """One training process (any rank). Build with :meth:`setup`, then :meth:`run`."""

    def __init__(self, opts: TrainOptions, env: DistEnv, pre: Preflight) -> None:
        self.opts, self.env, self.pre = opts, env, pre
        self.exp = pre.exp
        self.train_cfg = pre.exp.train
        self.plan = pre.plan
        self.run_dir = opts.resolved_run_dir()
        self.stop_signal: int | None = None
        self.tracker: Any = None
        self.best: dict[str, Any] = {}
        self.elapsed_before = 0.0
        self.iteration = 0
        self.last_checkpoint = -1
        self.last_validation = -1
        self._previous_handlers: dict[int, Any] = {}

    # -------------------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        opts, env = self.opts, self.env
        device_type = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device_type == "cuda":
            if not torch.cuda.is_available():
                raise TrainError("--device cuda: no CUDA device is available (use --device cpu)")
            index = env.local_rank % torch.cuda.device_count()
            torch.cuda.set_device(index)
            self.device = torch.device("cuda", index)
        elif device_type == "cpu":
            self.device = torch.device("cpu")
        else:
            raise TrainError(f"--device must be cpu or cuda, got {device_type!r}")
        # Precision, scan backend, compile mode, Adam: mair.runtime.resolve (cuDNN autotuning on CUDA, as officially).
        self.runtime = runtime_settings(opts, self.device.type)
        cache = self.runtime.apply()
        _log(self.runtime.describe() + (f"; {cache.describe()}" if cache else ""), env)
        self.control_group: Any = None
        if env.distributed:
            self._init_process_group()
        seed = self.train_cfg.seed
        self.seed = seed
        _seed_all(seed + env.rank)  # before the model is built, as the official code
        from mair.models import from_official

        network = self.exp.network
        net = from_official(network.arch, **network.constructor_kwargs()).to(self.device)
        self.net = self.runtime.prepare_model(net)
        params = [p for p in net.parameters() if p.requires_grad]
        optim = self.train_cfg.optimizer
        kwargs = {
            "lr": float(optim.lr),
            "betas": tuple(float(b) for b in optim.betas),
            "eps": float(optim.eps),
            "weight_decay": float(optim.weight_decay),
        }
        kwargs.update(self.runtime.adam_kwargs())
        if optim.type == "Adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, **kwargs)
        elif optim.type == "AdamW":
            self.optimizer = torch.optim.AdamW(params, **kwargs)
        else:
            raise TrainError(f"unknown optimizer {optim.type!r}")
        self.scheduler = build_scheduler(self.optimizer, self.exp)
        self.loss_fn = build_loss(self.train_cfg.loss)
        self.sampler = EnlargedSampler(
            len(self.pre.train_set), env.world_size, env.rank, self.train_cfg.dataset_enlarge_ratio
        )
        workers = (
            opts.num_workers
            if opts.num_workers is not None
            else default_workers(self.exp, self.device.type, env.local_world_size)
        )
        self.num_workers = int(workers)
        self.stream = BatchStream(
            self.pre.train_set,
            self.sampler,
            self.plan.batch_per_gpu,
            self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.start_iter = self._resume_or_init()
        if env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        else:
            self.model = net
        self.model.train()
        self.cuda_graphs = self.runtime.cuda_graphs
        # The scan as custom ops, one graph (DDP: Dynamo splits it at the gradient buckets); eager when not compiled.
        self.model = self.runtime.compile(self.model, fullgraph=not env.distributed)

    def _init_process_group(self) -> None:
        env = self.env
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if env.launcher == "slurm":
            os.environ.setdefault("MASTER_ADDR", env.master_addr or "localhost")
            os.environ.setdefault("MASTER_PORT", str(env.master_port))
        timeout = _dt.timedelta(hours=2)  # rank 0 validates while the others wait
        dist.init_process_group(
            backend, init_method="env://", rank=env.rank, world_size=env.world_size, timeout=timeout
        )
        # Control messages (stop flag, resume decision, RNG states) go through gloo on the CPU: no GPU sync.
        self.control_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None

    # -------------------------------------------------------------------------------------------- resume / init

    def _decide_resume(self) -> int | None:
        """Rank 0 looks at the run folder (archiving it with --no-resume); all ranks get its decision."""
        decision: list[Any] = [None]
        if self.env.is_main:
            if self.opts.resume:
                decision[0] = latest_checkpoint(self.run_dir)
            else:
                self._archive_previous()
        if self.env.distributed:
            dist.broadcast_object_list(decision, src=0, group=self.control_group)
        return decision[0]

    def _archive_previous(self) -> None:
        names = [
            "models",
            "training_states",
            "train_log.csv",
            "val_log.csv",
            "config.yaml",
            "best.json",
            "mlflow_run.json",
            STOP_MARKER,
        ]
        present = [n for n in names if (self.run_dir / n).exists()]
        if not present:
            return
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = self.run_dir / "archive" / stamp
        target.mkdir(parents=True, exist_ok=True)
        for name in present:
            shutil.move(str(self.run_dir / name), str(target / name))
        _log(f"--no-resume: moved the previous run's files to {target}", self.env)

    def _resume_or_init(self) -> int:
        from mair.models.checkpoint import CheckpointError, load_weights

        resume_iter = self._decide_resume()
        if resume_iter is None:
            if self.pre.init_path is not None:
                report = load_weights(self.net, self.pre.init_path, strict=self.pre.init_strict)
                if not report.loaded:
                    raise CheckpointError(
                        f"{self.pre.init_path}: no tensor fits {self.exp.network.arch} "
                        f"of {self.exp.id}; is it a checkpoint of another architecture?"
                    )
                self.init_report = report.summary()
                _log(f"{self.pre.init_note}: {self.init_report}", self.env)
            else:
                self.init_report = "none"
            return 0
        state_path = self.run_dir / "training_states" / f"{resume_iter}.state"
        weights_path = self.run_dir / "models" / f"net_g_{resume_iter}.pth"
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise TrainError(
                f"{state_path}: cannot read the training state ({error}); remove it to resume from "
                f"an earlier checkpoint, or pass --no-resume"
            ) from None
        if state.get("experiment") != self.exp.id or state.get("scope") != self.opts.scope:
            raise TrainError(
                f"{state_path} belongs to {state.get('experiment')!r} ({state.get('scope')}); "
                f"choose another --run-dir or pass --no-resume"
            )
        load_weights(self.net, weights_path, strict=True)
        self.optimizer.load_state_dict(state["optimizers"][0])
        self.scheduler.load_state_dict(state["schedulers"][0])
        epoch, position = int(state["epoch"]), int(state["position"])
        old_world = int(state["world_size"])
        if old_world == self.env.world_size:
            _set_rng_state(state["rng"][self.env.rank], self.device)
        else:
            warnings.warn(
                f"resuming a run of {old_world} processes on {self.env.world_size}: the data order and "
                f"random streams change (the run is no longer bit-identical to an uninterrupted one)",
                stacklevel=2,
            )
            position = (position * old_world // self.env.world_size) // self.plan.batch_per_gpu
            position *= self.plan.batch_per_gpu
            if position + self.plan.batch_per_gpu > self.sampler.num_samples:
                epoch, position = epoch + 1, 0
            _seed_all(int(np.random.SeedSequence([self.seed, self.env.rank, resume_iter]).generate_state(1)[0]))
        self.stream.epoch, self.stream.position = epoch, position
        self.best = dict(state.get("best") or {})
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.last_validation = int(state.get("last_validation", -1))
        self.last_checkpoint = resume_iter
        self.init_report = f"resumed from iteration {resume_iter}"
        _log(f"resuming {self.exp.id} from {weights_path} (iteration {resume_iter}, epoch {epoch})", self.env)
        return resume_iter

    # -------------------------------------------------------------------------------------------- run files

    def _open_run_files(self) -> None:
        keep = self.start_iter
        self.train_log = CsvLog(self.run_dir / "train_log.csv", TRAIN_LOG_COLUMNS, keep)
        self.val_log = CsvLog(self.run_dir / "val_log.csv", VAL_LOG_COLUMNS, keep)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / STOP_MARKER).unlink()

    def _run_info(self) -> dict[str, Any]:
        from mair.models.scan import describe_backend_choice

        return {
            "experiment": self.exp.id,
            "scope": self.opts.scope,
            "launcher": self.env.launcher,
            "world_size": self.env.world_size,
            "device": str(self.device.type),
            "batch_per_gpu": self.plan.batch_per_gpu,
            "accum": self.plan.accum,
            "effective_batch": self.plan.effective_batch,
            "paper_effective_batch": self.plan.paper_effective_batch,
            "paper_gpus": self.exp.paper_gpus,
            "precision": self.runtime.precision,
            "compile": self.runtime.compile_backend,
            "compile_mode": self.runtime.compile_mode,
            "runtime": self.runtime.as_dict(),
            "num_workers": self.num_workers,
            "max_iters": self.opts.max_iters,
            "total_iter": self.train_cfg.total_iter,
            "checkpoint_every": self.checkpoint_every,
            "keep": self.opts.keep,
            "seed": self.seed,
            "init": self.pre.init_note,
            "init_report": self.init_report,
            "scan_backend": describe_backend_choice(self.device, self.runtime.scan_backend),
            "git_commit": _git_commit(),
            "torch": str(torch.__version__),
            "resumed_from": self.start_iter or None,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def _write_config(self, info: Mapping[str, Any]) -> None:
        text = yaml.safe_dump({"run": dict(info), "experiment": self.exp.to_dict()}, sort_keys=False)
        atomic_write_text(self.run_dir / "config.yaml", text)

    def _start_tracking(self, info: Mapping[str, Any]) -> None:
        from mair.common import tracking

        self.tracker = tracking.Tracker(self.opts.tracking_uri, enabled=self.opts.mlflow)
        record = self.run_dir / "mlflow_run.json"
        previous = None
        if self.start_iter and record.is_file():
            import json

            with contextlib.suppress(OSError, ValueError):
                saved = json.loads(record.read_text(encoding="utf-8"))
                if saved.get("tracking_uri") == self.tracker.uri:
                    previous = saved.get("run_id")
        tags = {
            "mair.kind": "training",
            "mair.experiment": self.exp.id,
            "mair.scope": self.opts.scope,
            "mair.git_commit": info["git_commit"],
            "mair.world_size": info["world_size"],
            "mair.effective_batch": info["effective_batch"],
            "mair.accum": info["accum"],
            "mair.scan_backend": info["scan_backend"],
            "mair.device": info["device"],
            "mair.run_dir": str(self.run_dir.absolute()),
            **tracking.runtime_tags(info["runtime"]),
        }
        name = tracking.mlflow_experiment_name(self.opts.scope, self.exp.id)
        run_id = self.tracker.start(name, f"train {self.exp.id}", tags, run_id=previous, source="mair train")
        if run_id is None:
            return
        atomic_write_json(record, {"run_id": run_id, "tracking_uri": self.tracker.uri, "experiment": name})
        exp_params = {
            k: v
            for k, v in self.exp.to_dict().items()
            if k in ("id", "scope", "task", "scale", "network", "train", "val", "paper_gpus")
        }
        params = tracking.flatten_params(exp_params)
        params.update(
            {
                f"run.{k}": str(v)
                for k, v in info.items()
                if k
                in (
                    "world_size",
                    "batch_per_gpu",
                    "accum",
                    "effective_batch",
                    "paper_effective_batch",
                    "precision",
                    "num_workers",
                    "max_iters",
                    "checkpoint_every",
                    "keep",
                    "init",
                )
            }
        )
        self.tracker.log_params(params)
        self.tracker.log_artifact(self.run_dir / "config.yaml")

    # -------------------------------------------------------------------------------------------- signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_signal = signum

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def _agree_stop(self) -> bool:
        flag = 1 if self.stop_signal is not None else 0
        if not self.env.distributed:
            return bool(flag)
        tensor = torch.tensor([flag], dtype=torch.int32)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.control_group)
        return bool(tensor.item())

    # -------------------------------------------------------------------------------------------- steps

    def _autocast(self) -> Any:
        return autocast(self.runtime.precision, self.device.type)

    def _train_step(self, iteration: int) -> torch.Tensor:
        train = self.train_cfg
        prog, mix = train.progressive, train.mixup
        mini, patch = progressive_stage(prog, iteration, self.plan.batch_per_gpu, train.patch.gt_size)
        accum = self.plan.accum
        ddp = self.env.distributed  # self.model is the DDP wrapper, or a compiled module around it
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            batch = self.stream.next()
            lq = batch["lq"].to(self.device, non_blocking=True)
            gt = batch["gt"].to(self.device, non_blocking=True)
            if prog or mix:
                rng = step_rng(self.seed, self.env.rank, iteration, micro)
                if prog:
                    lq, gt = progressive_crop(lq, gt, mini, patch, rng)
                if mix:
                    lq, gt = mixup(lq, gt, float(mix.beta), mix.use_identity, rng)
            sync = self.model.no_sync() if ddp and micro < accum - 1 else contextlib.nullcontext()
            if self.cuda_graphs:  # a new step for CUDA-graph replay: earlier outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            with sync:
                with self._autocast():
                    out = self.model(lq)
                loss = self.loss_fn(out.float(), gt)
                (loss / accum).backward()
            total += loss.detach()
        clip = train.grad_clip
        if clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
        self.optimizer.step()
        return total / accum

    # -------------------------------------------------------------------------------------------- checkpoints

    def _save_checkpoint(self, iteration: int) -> None:
        rng = [_rng_state(self.device)]
        if self.env.distributed:
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, rng[0], group=self.control_group)
            rng = gathered
        if self.env.is_main:
            from mair.models.checkpoint import weights_payload

            save_checkpoint_file(self.run_dir / "models" / f"net_g_{iteration}.pth", weights_payload(self.net))
            state = {
                "format": STATE_FORMAT,
                "experiment": self.exp.id,
                "scope": self.opts.scope,
                "arch": self.exp.network.arch,
                "iter": iteration,
                "epoch": self.stream.epoch,
                "position": self.stream.position,
                "world_size": self.env.world_size,
                "accum": self.plan.accum,
                "batch_per_gpu": self.plan.batch_per_gpu,
                "optimizers": [self.optimizer.state_dict()],
                "schedulers": [self.scheduler.state_dict()],
                "rng": rng,
                "elapsed": self._elapsed(),
                "best": dict(self.best),
                "last_validation": self.last_validation,
            }
            save_checkpoint_file(self.run_dir / "training_states" / f"{iteration}.state", state)
            self._prune_checkpoints()
        self.last_checkpoint = iteration

    def _prune_checkpoints(self) -> None:
        states = sorted(
            (int(p.stem), p) for p in (self.run_dir / "training_states").glob("*.state") if p.stem.isdigit()
        )
        for it, path in states[: -self.opts.keep]:
            path.unlink(missing_ok=True)
            (self.run_dir / "models" / f"net_g_{it}.pth").unlink(missing_ok=True)

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started)

    # -------------------------------------------------------------------------------------------- validation

    def _validate(self, iteration: int) -> None:
        """Validation on rank 0 with the paper protocol; logs val_log.csv, MLflow and the best metric."""
        self.last_validation = iteration
        if not self.env.is_main or self.pre.val_set is None:
            return
        from mair.evaluate import metrics as m
        from mair.evaluate.protocol import official_tile_forward, pad_forward, tensor2img

        val = self.exp.val
        cfg = val.metrics
        crop, y, use_image, rgb2bgr = cfg.crop_border, cfg.test_y_channel, cfg.use_image, cfg.rgb2bgr
        unet = get_task(self.exp.task).metrics == "realdenoising"
        net = self.net
        net.eval()
        psnrs, ssims = [], []
        with torch.no_grad():
            for i in range(len(self.pre.val_set)):
                item = self.pre.val_set[i]
                lq = item["lq"][None].to(self.device)
                with self._autocast():
                    out = official_tile_forward(net, lq) if val.protocol == "tile" else pad_forward(net, lq, 8)
                out = out.float()
                gt = item["gt"]
                if not unet:
                    out_u8, gt_u8 = m.metric_images(tensor2img(out), gt, rgb2bgr)
                    psnrs.append(m.calculate_psnr(out_u8, gt_u8, crop, y))
                    ssims.append(m.calculate_ssim(out_u8, gt_u8, crop, y))
                elif use_image:
                    out_u8, gt_u8 = m.metric_images(tensor2img(out), gt, rgb2bgr)
                    psnrs.append(m.calculate_psnr_float(out_u8, gt_u8, crop, y))
                    ssims.append(m.calculate_ssim_float(out_u8, gt_u8, crop, y))
                else:
                    out_f = out[0].cpu().numpy().transpose(1, 2, 0)
                    gt_f = gt.astype(np.float32) / np.float32(255.0)
                    psnrs.append(m.calculate_psnr_float(out_f, gt_f, crop, y))
                    ssims.append(m.calculate_ssim_float(out_f, gt_f, crop, y))
        net.train()
        psnr, ssim = float(np.mean(psnrs)), float(np.mean(ssims))
        dataset = val.dataset.id
        self.val_log.write(iteration, dataset, psnr, ssim)
        _log(f"iter {iteration}: validation on {dataset}: PSNR {psnr:.4f} dB, SSIM {ssim:.4f}", self.env)
        metrics = {"val_psnr": psnr, "val_ssim": ssim}
        if not self.best or psnr > float(self.best["psnr"]):
            self.best = {"iter": iteration, "dataset": dataset, "psnr": psnr, "ssim": ssim}
            atomic_write_json(self.run_dir / "best.json", self.best)
            metrics.update({"best_psnr": psnr, "best_iter": float(iteration)})
            if self.tracker is not None:
                self.tracker.set_tags({"mair.best_iter": iteration, "mair.best_psnr": f"{psnr:.4f}"})
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=iteration)

    # -------------------------------------------------------------------------------------------- main loop

    def run(self) -> TrainResult:
        opts, env = self.opts, self.env
        total_iter = self.train_cfg.total_iter
        stop_at = min(total_iter, opts.max_iters) if opts.max_iters else total_iter
        settings = overridden(self.exp, opts).train  # --checkpoint-every, --log-every
        self.checkpoint_every, log_every = settings.checkpoint_freq, settings.print_freq
        self.started = time.monotonic()
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._open_run_files()
            info = self._run_info()
            self._write_config(info)
            self._start_tracking(info)
            _log(
                f"{self.exp.id} ({opts.scope}): {env.world_size} process(es) on {self.device.type}, batch "
                f"{self.plan.batch_per_gpu} x {env.world_size} x accumulation {self.plan.accum} = "
                f"{self.plan.effective_batch} (paper {self.plan.paper_effective_batch}); iterations "
                f"{self.start_iter + 1}..{stop_at} of {total_iter}; {info['scan_backend']}",
                env,
            )
            if not self.plan.exact:
                _log(
                    f"WARNING: effective batch {self.plan.effective_batch} differs from the paper's "
                    f"{self.plan.paper_effective_batch} (--allow-batch-mismatch)",
                    env,
                )
        self._install_signals()
        iteration = self.start_iter
        loss_sum = torch.zeros((), device=self.device)
        loss_count = 0
        stopped = False
        try:
            while iteration < stop_at:
                iteration += 1
                self.iteration = iteration
                if iteration > 1:
                    self._step_scheduler(iteration)
                loss_sum += self._train_step(iteration)
                loss_count += 1
                if iteration % log_every == 0 or iteration == stop_at:
                    self._log_train(iteration, loss_sum, loss_count)
                    loss_sum.zero_()
                    loss_count = 0
                if iteration % self.checkpoint_every == 0:
                    self._save_checkpoint(iteration)
                if opts.validate and val_due(self.exp, iteration):
                    self._validate(iteration)
                if self._agree_stop():
                    stopped = iteration < stop_at
                    break
            if self.last_checkpoint != iteration:
                self._save_checkpoint(iteration)
            if stopped:
                return self._finish_stopped(iteration)
            if opts.validate and self.last_validation != iteration:
                self._validate(iteration)
            return self._finish(iteration, total_iter)
        except KeyboardInterrupt:
            if self.tracker is not None:
                self.tracker.end("KILLED")
            raise
        except BaseException:
            if self.tracker is not None:
                self.tracker.end("FAILED")
            raise
        finally:
            self._restore_signals()
            for log in (getattr(self, "train_log", None), getattr(self, "val_log", None)):
                if log is not None:
                    log.close()

    def _step_scheduler(self, iteration: int) -> None:
        if iteration == self.start_iter + 1 and self.start_iter > 0:
            with warnings.catch_warnings():  # resumed: this process has not called optimizer.step() yet
                warnings.filterwarnings("ignore", message="Detected call of")
                self.scheduler.step()
        else:
            self.scheduler.step()

    def _log_train(self, iteration: int, loss_sum: torch.Tensor, count: int) -> None:
        value = loss_sum.detach().clone().reshape(1)
        if self.env.distributed:
            dist.all_reduce(value)  # mean over ranks (the official code reduces to rank 0 and divides)
        loss = float(value.item()) / (count * self.env.world_size)
        if self.env.is_main:
            lr = float(self.optimizer.param_groups[0]["lr"])
            self.train_log.write(iteration, self.stream.epoch, loss, lr, round(self._elapsed(), 3))
            if self.tracker is not None:
                self.tracker.log_metrics({"loss": loss, "lr": lr, "epoch": float(self.stream.epoch)}, step=iteration)
        if not math.isfinite(loss):  # the same reduced value on every rank: all stop together
            raise TrainError(
                f"iteration {iteration}: the loss is {loss}; stopping (last checkpoint: {self.last_checkpoint})"
            )

    def _barrier(self) -> None:
        if self.env.distributed:
            dist.barrier(group=self.control_group)

    def _finish_stopped(self, iteration: int) -> TrainResult:
        signame = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal on another rank"
        if self.env.is_main:
            atomic_write_json(
                self.run_dir / STOP_MARKER, {"iteration": iteration, "signal": signame, "exit_code": EXIT_STOPPED}
            )
            _log(
                f"stopped by {signame} at iteration {iteration}; checkpoint written; resume with the same "
                f"command (exit status {EXIT_STOPPED})",
                self.env,
            )
            if self.tracker is not None:
                self.tracker.set_tags({"mair.stopped_at": iteration})
                self.tracker.end("KILLED")
        self._barrier()
        return TrainResult(EXIT_STOPPED, iteration, self.run_dir, None, dict(self.best))

    def _finish(self, iteration: int, total_iter: int) -> TrainResult:
        weights = None
        if self.env.is_main:
            if iteration == total_iter:
                from mair.models.checkpoint import weights_payload

                weights = Path(self.opts.results_dir) / self.opts.scope / "weights" / f"{self.exp.id}.pth"
                save_checkpoint_file(weights, weights_payload(self.net))
                _log(f"finished {self.exp.id} at iteration {iteration}; final weights: {weights}", self.env)
                if self.tracker is not None:
                    self.tracker.log_artifact(weights)
                    self.tracker.log_model(
                        weights,
                        self.exp.id,
                        files=[self.run_dir / "config.yaml"],
                        params={"experiment": self.exp.id, "scope": self.opts.scope, "iterations": iteration},
                        step=iteration,
                    )
            else:
                _log(
                    f"stopped at --max-iters {iteration} of {total_iter}: final weights not exported; the "
                    f"checkpoint is {self.run_dir / 'models' / f'net_g_{iteration}.pth'}",
                    self.env,
                )
            if self.tracker is not None:
                self.tracker.log_artifacts(
                    [self.run_dir / n for n in ("train_log.csv", "val_log.csv", "best.json")], "logs"
                )
                self.tracker.end("FINISHED")
        self._barrier()
        return TrainResult(0, iteration, self.run_dir, weights, dict(self.best))

    def close(self) -> None:
        """Shut down the data workers, then the process group (in that order; see :meth:`BatchStream.close`)."""
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.close()
        if self.env.distributed and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ entry point


def train(opts: TrainOptions, env: DistEnv | None = None) -> TrainResult:
    """Train one experiment in this process (one rank of the job described by ``env``)."""
    env = env or detect_env()
    if opts.gpus is not None and env.distributed and opts.gpus != env.world_size:
        _log(f"--gpus {opts.gpus} ignored: the launcher started {env.world_size} processes", env)
    pre = preflight(opts, env.world_size)
    lock = RunLock(opts.resolved_run_dir()).acquire() if env.is_main else None
    try:
        if lock is not None:
            for path in remove_stale_run_parts(opts.resolved_run_dir()):
                _log(f"removed {path}, left by a process killed while writing it", env)
        trainer = Trainer(opts, env, pre)
        try:
            trainer.setup()
            return trainer.run()
        finally:
            trainer.close()
    finally:
        if lock is not None:
            lock.release()
