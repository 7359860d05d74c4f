"""SLURM as the pipeline meets it (workflow/profiles/slurm, docs/pipeline.md "SLURM"): memory per job kind, and
the preflight that the Snakefile's ``onstart`` runs once before the first sbatch.

* **Memory**: a GPU job asks ``slurm.mem_mb_per_gpu`` per card, a CPU-only training or evaluation (the demo scope)
  ``slurm.cpu_mem_mb``, a download or preparation ``slurm.data_mem_mb``.
* **Job states without accounting**: snakemake-executor-plugin-slurm reads job states with ``sacct`` by default.
  On a cluster without slurmdbd every ``sacct`` call fails ("Slurm accounting storage is disabled") and Snakemake
  waits forever. :func:`choose_status_command` runs ``sacct`` once: where it fails, job states are read with
  ``squeue`` (the plugin's ``--slurm-status-command squeue``), which works while slurmctld remembers finished
  jobs (``MinJobAge``, 300 s by default); where that is too short as well, the run stops with one line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any


class SlurmSetupError(RuntimeError):
    """The cluster cannot run the pipeline as configured (the message says what to set)."""


def job_mem_mb(gpus: int, slurm: Mapping[str, Any]) -> int:
    """Memory of a training or evaluation: ``mem_mb_per_gpu`` per card, ``cpu_mem_mb`` without cards."""
    return int(slurm["mem_mb_per_gpu"]) * gpus if gpus > 0 else int(slurm["cpu_mem_mb"])


def _run(argv: list[str], timeout: float = 30) -> tuple[int, str]:
    if shutil.which(argv[0]) is None:
        return 127, f"{argv[0]}: command not found"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(argv)}: no answer after {timeout:.0f} s"
    except OSError as error:
        return 126, str(error)
    return proc.returncode, (proc.stderr or proc.stdout).strip()


def sacct_probe() -> tuple[bool, str]:
    """Run ``sacct`` once as the plugin would: (works, first line of its error)."""
    code, text = _run(
        [
            "sacct",
            "-X",
            "--parsable2",
            "--noheader",
            "--format=JobIdRaw,State",
            "--starttime",
            "now-1hours",
            "--endtime",
            "now",
        ]
    )
    first = next((line for line in text.splitlines() if line.strip()), "")
    return code == 0, first if code != 0 else ""


def min_job_age_s() -> int | None:
    """slurmctld's ``MinJobAge`` in seconds (how long squeue still shows a finished job), or None."""
    code, _ = _run(["scontrol", "ping"])
    if code != 0:
        return None
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^\s*MinJobAge\s*=\s*(\d+)", out, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def choose_status_command(
    current: str | None, sacct_ok: bool, sacct_error: str, min_job_age: int | None, first_check_s: int
) -> tuple[str, str | None]:
    """The status command to use and a one-line note (None: nothing to say), or :class:`SlurmSetupError`.

    The plugin itself falls back from squeue to sacct when ``MinJobAge`` is below three times the first status
    check's delay, so squeue is only a way out where MinJobAge is at least that.
    """
    if sacct_ok:
        return current or "sacct", None
    needed = 3 * first_check_s
    if min_job_age is not None and min_job_age >= needed:
        note = (
            f"sacct does not work on this cluster ({sacct_error or 'it failed'}): job states are read with "
            f"squeue instead (--slurm-status-command squeue; slurmctld keeps finished jobs {min_job_age} s)"
        )
        return "squeue", (note if current != "squeue" else None)
    age = f"MinJobAge={min_job_age} s" if min_job_age is not None else "MinJobAge unknown (scontrol show config)"
    raise SlurmSetupError(
        f"SLURM: sacct does not work here ({sacct_error or 'it failed'}) and squeue cannot replace it ({age}, "
        f"needs >= {needed} s): ask for accounting (slurmdbd) or MinJobAge >= {needed}, or pass "
        f"--slurm-init-seconds-before-status-checks {max(1, (min_job_age or 0) // 3)}"
    )
