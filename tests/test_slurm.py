"""The pipeline on a real one-node SLURM cluster (Debian's slurm-wlm: munged, slurmctld, slurmd; no accounting),
started by this module on loopback and stopped at its end (tests/slurm_cluster.py):

* Snakemake with workflow/profiles/slurm, demo scope, two experiments: every training and evaluation goes
  through sbatch, job states are read with squeue (sacct fails without accounting), the tables appear, a
  training stopped by its time limit resumes in a new job, every attempt's output stays in the run folder, the
  SLURM job logs go under results/demo/, and the jobs read the checkout's own params/;
* DVC with ``executor: slurm``: queued experiments run at once (``dvc queue start -j 2``), each stage's work as
  SLURM jobs.

Skipped, with the reason, where the cluster cannot run (not root, slurm-wlm or munge missing); CI has both.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from slurm_cluster import SlurmCluster, why_not_available
from test_workflow import copy_repo, run_env

_WHY_NOT = why_not_available() or (None if shutil.which("snakemake") else "snakemake is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_WHY_NOT is not None, reason=f"no SLURM test cluster: {_WHY_NOT}")]

EXPS = ["dehaze_r6k", "dehaze_its"]
#: The training stopped by its time limit, made long enough (iterations) to be caught while it runs.
SLOW_EXP, SLOW_ITERS = "dehaze_r6k", 150


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    # Not under pytest's tmp folder: munged wants every folder above its socket open to all (0755).
    root = Path(tempfile.mkdtemp(prefix="mair-slurm-"))
    started = time.monotonic()
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        print(f"SLURM test cluster up in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def pipeline_env(cluster: SlurmCluster, work: Path) -> dict[str, str]:
    """A user's environment: no MAIR_PARAMS_DIR (the pipeline passes its own params/), the cluster's SLURM_CONF."""
    env = cluster.env(run_env(work))
    env.pop("MAIR_PARAMS_DIR")
    return env


def lengthen_demo_training(work: Path, exp: str, iters: int) -> None:
    path = work / "params" / "experiments" / f"{exp}.yaml"
    doc = yaml.safe_load(path.read_text())
    train = doc["demo"]["train"]
    train["total_iter"] = iters
    train["scheduler"]["periods"] = [8, iters - 8]
    train["progressive"]["iters"] = [iters]
    doc["demo"]["val"] = {"val_freq": iters, "val_freq_final": iters, "val_milestone": iters}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def running_job(cluster: SlurmCluster, comment_part: str) -> tuple[str, int] | None:
    """(job id, seconds it has run) of the RUNNING job whose comment contains ``comment_part``."""
    out = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%M", check=False).stdout
    for line in out.splitlines():
        job_id, comment, elapsed = line.split("|")
        if comment_part in comment:
            parts = [int(p) for p in re.split(r"[:-]", elapsed)]
            seconds = 0
            for part in parts:
                seconds = seconds * 60 + part
            return job_id, seconds
    return None


def stop_by_time_limit(cluster: SlurmCluster, work: Path, exp: str, stop_signal_s: int, timeout: float) -> str:
    """Once ``exp``'s training job has written a checkpoint, shorten its time limit so that SLURM's warning
    (``--signal=TERM@stop_signal_s``) is due now, as if the job had reached the end of its time. Returns the id."""
    states = work / "runs" / "demo" / exp / "training_states"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = running_job(cluster, f"wildcards_demo_{exp}")
        if job is not None and states.is_dir() and any(states.iterdir()):
            job_id, elapsed = job
            minutes = math.floor((stop_signal_s + elapsed) / 60)  # time left <= stop_signal_s, > the kill wait
            cluster.run("scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}")
            return job_id
        time.sleep(0.5)
    raise AssertionError(f"no running training job of {exp} with a checkpoint after {timeout:.0f} s:\n"
                         f"{cluster.logs()}")


def test_snakemake_on_slurm(cluster: SlurmCluster, tmp_path: Path) -> None:
    work = copy_repo(tmp_path / "repo")
    lengthen_demo_training(work, SLOW_EXP, SLOW_ITERS)
    stop_signal_s = 300
    started = time.monotonic()
    command = ["snakemake", "--profile", "workflow/profiles/slurm", "--slurm-init-seconds-before-status-checks", "3",
               "--config", "scope=demo", f"experiments=[{','.join(EXPS)}]",
               f"slurm={{train_runtime: 10, cpu_mem_mb: 1000, stop_signal_s: {stop_signal_s}}}", "retries={train: 2}"]
    with open(tmp_path / "snakemake.out", "w+") as out:
        proc = subprocess.Popen(command, cwd=work, env=pipeline_env(cluster, work), stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        try:
            stopped_job = stop_by_time_limit(cluster, work, SLOW_EXP, stop_signal_s, timeout=300)
            status = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
        out.seek(0)
        output = out.read()
    took = time.monotonic() - started
    print(f"snakemake on SLURM (2 experiments, one time-limit stop): {took:.0f} s")
    assert status == 0, output[-8000:] + cluster.logs()

    # Every training and evaluation went through sbatch (5 jobs: 2 trainings, 1 retry, 2 evaluations).
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", output)
    assert len(submitted) == 5, output[-6000:]
    ctld = (cluster.root / "log" / "slurmctld.log").read_text()
    for job_id in submitted:
        assert re.search(rf"_slurm_rpc_submit_batch_job: JobId={job_id}\b", ctld), job_id
    # No accounting here: the preflight switched the status queries to squeue.
    assert "job states are read with squeue" in output
    # The tables of the two experiments.
    tables = (work / "results" / "demo" / "tables" / "tables.md").read_text()
    assert "DEMO SCOPE" in tables.upper()

    # The stopped training: SIGTERM reached it, it exited 75 (what the outer Snakemake shows), and the next job
    # (a new SLURM job, not a retry inside the old allocation) resumed from its checkpoint.
    attempts_log = (work / "runs" / "demo" / SLOW_EXP / "pipeline.log").read_text()
    headers = re.findall(r"==== train \S+: attempt (\d+), .*SLURM job (\d+) ====", attempts_log)
    assert [a for a, _ in headers] == ["1", "2"], attempts_log
    assert headers[0][1] == stopped_job and headers[1][1] != stopped_job
    first, second = attempts_log.split("==== train ")[1:]
    assert re.search(r"stopped by SIGTERM at iteration \d+", first) and "exit status 75" in first
    assert re.search(r"resuming \S+ from \S+ iteration", second) or "resum" in second
    assert "exit status 0 (done)" in second
    assert f"iterations 1..{SLOW_ITERS} of {SLOW_ITERS}" in first  # the copy's own params, not the install's
    assert "exit status 75" in output  # the outer Snakemake shows the failed attempt's log
    # SLURM job logs under the scope's results folder; the failed attempt's is kept.
    slurm_logs = work / "results" / "demo" / "logs" / "slurm"
    assert (slurm_logs / "rule_train" / f"demo_{SLOW_EXP}" / f"{stopped_job}.log").is_file()
    assert not (work / "results" / "paper").exists()
