"""How a training process finds its place in a (possibly distributed) job, and how ``mair train --gpus N``
starts torchrun itself.

Three ways to run:

* **single process**: no launcher variables; world size 1;
* **torchrun** (ours or the user's): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``;
* **SLURM** (``srun``, one task per GPU): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``),
  ``SLURM_LOCALID``; ``MASTER_ADDR`` from the environment or the first host of ``SLURM_STEP_NODELIST`` /
  ``SLURM_JOB_NODELIST``; ``MASTER_PORT`` from the environment or derived from the job id (never fixed).

:func:`run_torchrun` re-invokes ``python -m mair.cli <same arguments>`` under
``python -m torch.distributed.run --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint localhost:0`` (torchrun
picks a free port), forwards SIGTERM / SIGUSR1 to it (torchrun passes them on to the workers and waits for them
to checkpoint) and returns torchrun's exit status, mapped to 75 when the workers stopped on a signal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from mair.runtime import switches
from mair.train import EXIT_STOPPED

__all__ = [
    "EXIT_STOPPED",
    "DistEnv",
    "detect_env",
    "first_slurm_host",
    "run_torchrun",
    "torchrun_command",
]

#: Seconds torchrun waits for workers to checkpoint and exit after forwarding a signal, before SIGKILL.
SHUTDOWN_TIMEOUT = 900
#: The marker rank 0 writes into the run folder when it stopped on a signal.
STOP_MARKER = "STOPPED.json"


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "single"  # single | torchrun | slurm

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,07],cpu1`` -> ``gpu03``; ``a,b`` -> ``a``."""
    nodelist = nodelist.strip()
    match = re.match(r"^([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not match:
        raise ValueError(f"cannot read SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(3)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _int(environ: Mapping[str, str], *names: str, default: int | None = None) -> int | None:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            try:
                return int(str(value).split("(")[0])
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return default


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher variables (torchrun first, then an ``srun`` step of SLURM, else single process)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE", default=1) or 1
        rank = _int(env, "RANK", default=0) or 0
        local = _int(env, "LOCAL_RANK", default=rank) or 0
        local_world = _int(env, "LOCAL_WORLD_SIZE", default=world) or world
        return DistEnv(rank, world, local, local_world, env.get("MASTER_ADDR"), _int(env, "MASTER_PORT"), "torchrun")
    world = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default=1) or 1
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and world > 1:
        rank = _int(env, "SLURM_PROCID", default=0) or 0
        local = _int(env, "SLURM_LOCALID", default=0) or 0
        local_world = _int(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", default=world) or world
        addr = env.get("MASTER_ADDR")
        if not addr:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            addr = first_slurm_host(nodelist) if nodelist else "localhost"
        port = _int(env, "MASTER_PORT")
        if port is None:
            job = _int(env, "SLURM_JOB_ID", default=0) or 0
            port = 20000 + job % 20000
        return DistEnv(rank, world, local, local_world, addr, port, "slurm")
    return DistEnv()


def _torchrun_options() -> set[str]:
    """Option names the installed torchrun accepts (they differ between torch releases)."""
    from torch.distributed.run import get_args_parser

    return {opt for action in get_args_parser()._actions for opt in action.option_strings}


def torchrun_command(nproc: int, argv: Sequence[str], python: str | None = None) -> list[str]:
    """The torchrun command that runs ``python -m mair.cli <argv>`` on ``nproc`` local processes.

    ``--signals-to-handle`` and ``--shutdown-timeout`` are passed only where this torch's torchrun has them
    (``--shutdown-timeout`` is newer than torch 2.11)."""
    options = _torchrun_options()
    optional = []
    if "--signals-to-handle" in options:
        optional += ["--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"]
    if "--shutdown-timeout" in options:
        optional += ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
    return [
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "localhost:0",
        "--max-restarts",
        "0",
        *optional,
        "-m",
        "mair.cli",
        *argv,
    ]


def run_torchrun(nproc: int, argv: Sequence[str], run_dir: Path, extra_env: Mapping[str, str] | None = None) -> int:
    """Run the training under torchrun and wait; forward SIGTERM / SIGUSR1 / SIGINT; return the exit status.

    Returns :data:`EXIT_STOPPED` when the workers stopped on a signal (rank 0 wrote the stop marker during
    this launch), else torchrun's own status.
    """
    started = time.time()
    env = switches.child_environ()  # the switches set from Python reach the workers too
    env.update(extra_env or {})
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    process = subprocess.Popen(torchrun_command(nproc, argv), env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        status = process.wait()
        while status is None:  # pragma: no cover - wait() returns the status
            status = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    marker = run_dir / STOP_MARKER
    if status != 0 and marker.is_file() and marker.stat().st_mtime >= started - 1:
        return EXIT_STOPPED
    return status if status >= 0 else 128 - status
