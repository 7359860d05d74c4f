"""GPUs of pipeline jobs: how many each job asks for, and ``run-with-gpus``, which gives a command cards of its own.

``python -m mair.pipeline run-with-gpus N -- CMD ...`` claims ``N`` cards (``CUDA_VISIBLE_DEVICES``) on a machine
shared by concurrent jobs. Cards are claimed with ``flock`` on per-card lock files, so a card is free again the
moment its holder exits, even after ``kill -9``; the command is ``exec``-ed, so signals reach it directly (a
preempted ``mair train`` checkpoints and exits 75).
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mair.pipeline.settings import PipelineError
from mair.pipeline.targets import experiment
from mair.runtime import switches


def train_gpus(exp_id: str, scope: str, config: Mapping[str, Any]) -> int:
    """GPUs a training asks for: paper scope ``train_gpus`` or the experiment's ``paper_gpus``; demo ``demo_gpus``."""
    if scope == "demo":
        return int(config.get("demo_gpus") or 0)
    override = config.get("train_gpus")
    return int(override) if override is not None else experiment(exp_id).paper_gpus


def eval_gpus(scope: str, config: Mapping[str, Any]) -> int:
    """GPUs an evaluation asks for: ``eval_gpus`` (paper) or ``demo_gpus`` (demo)."""
    key = "demo_gpus" if scope == "demo" else "eval_gpus"
    return int(config.get(key) or 0)


def detect_gpu_ids(env: Mapping[str, str] | None = None) -> list[str]:
    """The cards this process may use: ``$MAIR_GPU_IDS``, else ``$CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``."""
    ids = switches.get("MAIR_GPU_IDS", env)
    if ids is not None:
        return list(ids)
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(x for x in out.splitlines() if x.startswith("GPU "))]


def local_gpu_limit(config: Mapping[str, Any]) -> int | None:
    """The GPU limit of a local run from ``config['local_gpus']``, or None for no limit.

    ``auto`` (default) counts the cards of this machine and gives no limit where there are none (a CPU machine or
    a cluster's login node: GPU jobs then fail with a clear message locally, and SLURM gives them their cards);
    ``none`` never limits; a number is the limit.
    """
    value = config.get("local_gpus", "auto")
    if value is None or value == "none":
        return None
    if value == "auto":
        return len(detect_gpu_ids()) or None
    return int(value)


def default_lock_dir() -> Path:
    """Machine-local folder of the card locks: ``$MAIR_GPU_LOCK_DIR`` or ``<tmp>/mair-gpu-slots-<uid>``."""
    folder = switches.get("MAIR_GPU_LOCK_DIR")
    if folder is not None:
        return Path(folder).expanduser()
    import tempfile

    return Path(tempfile.gettempdir()) / f"mair-gpu-slots-{os.getuid()}"


def _lock(path: Path, blocking: bool) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _slot_name(gpu_id: str) -> str:
    return "gpu-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu_id) + ".lock"


def try_claim(n: int, gpu_ids: Sequence[str], lock_dir: Path) -> list[tuple[str, int]] | None:
    """Claim ``n`` free cards at once (all or none): ``[(gpu_id, fd), ...]``, or None when too few are free.

    The scan runs under a folder-wide lock so that two jobs never each take half of what both need.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    guard = _lock(lock_dir / "allocator.lock", blocking=True)
    assert guard is not None
    claimed: list[tuple[str, int]] = []
    try:
        for gpu_id in gpu_ids:
            fd = _lock(lock_dir / _slot_name(gpu_id), blocking=False)
            if fd is not None:
                claimed.append((gpu_id, fd))
                if len(claimed) == n:
                    break
        if len(claimed) < n:
            for _, fd in claimed:
                os.close(fd)
            return None
        for gpu_id, fd in claimed:  # who holds it, for people looking at the lock folder
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"gpu {gpu_id} pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
        return claimed
    finally:
        os.close(guard)


def claim_gpus(
    n: int,
    gpu_ids: Sequence[str],
    lock_dir: Path,
    timeout: float | None = None,
    poll: float = 1.0,
    log: Any = None,
) -> list[tuple[str, int]]:
    """Wait until ``n`` of ``gpu_ids`` are free and claim them; TimeoutError after ``timeout`` seconds."""
    if n > len(gpu_ids):
        raise PipelineError(
            f"this job needs {n} GPU(s) but this machine shows {len(gpu_ids)} ({','.join(gpu_ids) or 'none'}). "
            f"Cap the jobs at the machine's cards with `--resources gpu={len(gpu_ids)}` or "
            "`--profile workflow/profiles/local` (Snakemake then scales a job's GPUs down and mair train keeps "
            "the paper's effective batch), or run on SLURM (--profile workflow/profiles/slurm)."
        )
    start = time.monotonic()
    said = False
    while True:
        claimed = try_claim(n, gpu_ids, lock_dir)
        if claimed is not None:
            return claimed
        if timeout is not None and time.monotonic() - start >= timeout:
            raise TimeoutError(f"no {n} free GPU(s) among {','.join(gpu_ids)} after {timeout:.0f} s")
        if not said and log is not None:
            log(f"waiting for {n} free GPU(s) among {','.join(gpu_ids)} (locks in {lock_dir})")
            said = True
        time.sleep(poll * (0.5 + random.random()))


def run_with_gpus(
    n: int,
    command: Sequence[str],
    lock_dir: Path | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Claim ``n`` cards, set ``CUDA_VISIBLE_DEVICES`` to them and ``exec`` ``command`` (never returns on success).

    ``n == 0`` hides every card (CPU). Inside a SLURM job the cards SLURM gave the job are used as they are (SLURM
    already keeps jobs apart). The card locks are inherited by the command and released when it exits.
    """
    if not command:
        raise PipelineError("run-with-gpus: no command given (write it after `--`)")
    env = dict(os.environ if env is None else env)
    fds: list[int] = []
    if n <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif env.get("SLURM_JOB_ID") and env.get("CUDA_VISIBLE_DEVICES") is not None:
        ids = detect_gpu_ids(env)
        if n > len(ids):
            raise PipelineError(f"this SLURM job was given {len(ids)} GPU(s) ({','.join(ids)}), the step needs {n}")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:n])
    else:
        claimed = claim_gpus(
            n,
            detect_gpu_ids(env),
            lock_dir or default_lock_dir(),
            timeout=timeout,
            log=lambda m: print(f"run-with-gpus: {m}", file=sys.stderr, flush=True),
        )
        env["CUDA_VISIBLE_DEVICES"] = ",".join(g for g, _ in claimed)
        fds = [fd for _, fd in claimed]
    for fd in fds:
        os.set_inheritable(fd, True)
    env.pop("MAIR_GPU_IDS", None)  # the command sees only its own cards
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as error:
        for fd in fds:
            os.close(fd)
        raise PipelineError(f"run-with-gpus: cannot run {command[0]!r}: {error}") from error
    return 127  # pragma: no cover - execvpe does not return
