"""The pipeline on a real one-node SLURM cluster (Debian's slurm-wlm: munged, slurmctld, slurmd; no accounting),
started by this module on loopback and stopped at its end (tests/slurm_cluster.py):

* Snakemake with workflow/profiles/slurm, demo scope, two experiments: every training and evaluation goes
  through sbatch, job states are read with squeue (sacct fails without accounting), the tables appear, a
  training stopped by its time limit resumes in a new job, every attempt's output stays in the run folder, the
  SLURM job logs go under results/trained/demo/, and the jobs read the checkout's own params/;
* DVC with ``executor: slurm``: queued experiments run at once (``dvc queue start -j 2``), each stage's work as
  SLURM jobs.

Skipped, with the reason, where the cluster cannot run (not root, slurm-wlm or munge missing); CI has both.
"""

from __future__ import annotations

import math
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
# Long enough that SLURM's time-limit signal (slurmctld checks limits every ~30 s) lands mid-training.
SLOW_EXP, SLOW_ITERS = "dehaze_r6k", 400


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
    raise AssertionError(f"no running training job of {exp} with a checkpoint after {timeout:.0f} s:\n{cluster.logs()}")


def test_snakemake_on_slurm(cluster: SlurmCluster, tmp_path: Path) -> None:
    work = copy_repo(tmp_path / "repo")
    lengthen_demo_training(work, SLOW_EXP, SLOW_ITERS)
    stop_signal_s = 300
    started = time.monotonic()
    command = [
        "snakemake",
        "--profile",
        "workflow/profiles/slurm",
        "--slurm-init-seconds-before-status-checks",
        "3",
        "--config",
        "scope=demo",
        f"experiments=[{','.join(EXPS)}]",
        f"slurm={{train_runtime: 10, cpu_mem_mb: 1000, stop_signal_s: {stop_signal_s}}}",
        "retries={train: 2}",
    ]
    with open(tmp_path / "snakemake.out", "w+") as out:
        proc = subprocess.Popen(
            command, cwd=work, env=pipeline_env(cluster, work), stdout=out, stderr=subprocess.STDOUT, text=True
        )
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
    tables = (work / "results" / "trained" / "demo" / "tables" / "tables.md").read_text()
    assert "DEMO SCOPE" in tables.upper()

    # The stopped training: SIGTERM reached it, it exited 75 (what the outer Snakemake shows), and the next job
    # (a new SLURM job, not a retry inside the old allocation) resumed from its checkpoint.
    attempts_log = (work / "runs" / "demo" / SLOW_EXP / "pipeline.log").read_text()
    headers = re.findall(r"==== train \S+: attempt (\d+), .*SLURM job (\d+) ====", attempts_log)
    assert [a for a, _ in headers] == ["1", "2"], attempts_log
    assert headers[0][1] == stopped_job and headers[1][1] != stopped_job
    first, second = attempts_log.split("==== train ")[1:]
    assert re.search(r"stopped by SIGTERM at iteration \d+", first) and "exit status 75" in first
    stopped_at = int(re.search(r"stopped by SIGTERM at iteration (\d+)", first).group(1))
    resumed_at = int(re.search(r"resuming \S+ from \S+ \(iteration (\d+),", second).group(1))
    assert 0 < resumed_at == stopped_at < SLOW_ITERS  # the checkpoint written on SIGTERM
    assert "exit status 0 (done)" in second
    assert f"iterations 1..{SLOW_ITERS} of {SLOW_ITERS}" in first  # the copy's own params, not the install's
    assert "exit status 75" in output  # the outer Snakemake shows the failed attempt's log
    # SLURM job logs under the scope's results folder; the failed attempt's is kept.
    slurm_logs = work / "results" / "trained" / "demo" / "logs" / "slurm"
    assert (slurm_logs / "rule_train" / f"demo_{SLOW_EXP}" / f"{stopped_job}.log").is_file()
    assert not (work / "results" / "trained" / "paper").exists()


def test_a_job_cancelled_by_a_user_is_not_retried(cluster: SlurmCluster, tmp_path: Path) -> None:
    """`scancel` of a running training: the job records the cancel, its retry (a new job) stops at once without
    training, Snakemake fails; a new run of the pipeline would continue from the checkpoint."""
    work = copy_repo(tmp_path / "repo")
    lengthen_demo_training(work, SLOW_EXP, SLOW_ITERS)
    command = [
        "snakemake", "--profile", "workflow/profiles/slurm", "--slurm-init-seconds-before-status-checks", "3",
        f"results/trained/demo/weights/{SLOW_EXP}.pth", "--config", "scope=demo", "slurm={cpu_mem_mb: 1000}",
        "retries={train: 1}",
    ]  # fmt: skip
    started = time.monotonic()
    with open(tmp_path / "snakemake.out", "w+") as out:
        proc = subprocess.Popen(
            command, cwd=work, env=pipeline_env(cluster, work), stdout=out, stderr=subprocess.STDOUT, text=True
        )
        try:
            states = work / "runs" / "demo" / SLOW_EXP / "training_states"
            deadline, job = time.monotonic() + 300, None
            while time.monotonic() < deadline:
                job = running_job(cluster, f"wildcards_demo_{SLOW_EXP}")
                if job is not None and states.is_dir() and any(states.iterdir()):
                    break
                time.sleep(0.5)
            assert job is not None, cluster.logs()
            cluster.run("scancel", job[0])
            status = proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
        out.seek(0)
        output = out.read()
    print(f"snakemake on SLURM, one training cancelled by scancel: {time.monotonic() - started:.0f} s")
    assert status != 0, output[-6000:]
    attempts_log = (work / "runs" / "demo" / SLOW_EXP / "pipeline.log").read_text()
    first, second = attempts_log.split("==== train ")[1:]
    assert f"SLURM job {job[0]}: cancelled by a user (scancel)" in first
    assert "not retried: SLURM job" in second and "cancelled by a user" in second
    assert "[mair train]" not in second  # the retry trained nothing
    assert (work / "runs" / "demo" / SLOW_EXP / "CANCELLED.json").is_file()
    assert not (work / "results" / "trained" / "demo" / "weights" / f"{SLOW_EXP}.pth").exists()


def job_span(ctld_log: str, job_id: str) -> tuple[str, str]:
    """When slurmctld started and ended a job (its log's time stamps, which sort as text)."""
    start = re.search(
        rf"^\[(\S+)\] sched\S*: (?:Allocate|_start_job: Started) JobId={job_id}\b", ctld_log, flags=re.MULTILINE
    )
    end = re.search(rf"^\[(\S+)\] _job_complete: JobId={job_id} done", ctld_log, flags=re.MULTILINE)
    assert start and end, (job_id, ctld_log[-3000:])
    return start.group(1), end.group(1)


def _git(work: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=mair test", "-c", "user.email=test@localhost", *args],
        cwd=work,
        check=True,
        capture_output=True,
    )


def test_dvc_queue_runs_experiments_at_once_on_slurm(cluster: SlurmCluster, tmp_path: Path) -> None:
    """`executor: slurm`: two queued DVC experiments (`dvc queue start -j 2`) run at once, each stage's work as
    SLURM jobs submitted from the queue's workers; both finish and `dvc exp list` lists them."""
    if shutil.which("dvc") is None:
        pytest.skip("dvc is not installed")
    work = copy_repo(tmp_path / "repo")
    settings = work / "params" / "pipeline.yaml"
    settings.write_text(re.sub(r"(?m)^executor: local$", "executor: slurm", settings.read_text()))
    assert "\nexecutor: slurm\n" in settings.read_text()
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "fresh clone")
    env = pipeline_env(cluster, work)
    before = set(
        re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", (cluster.root / "log" / "slurmctld.log").read_text())
    )
    started = time.monotonic()

    def dvc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["dvc", *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    for exp in EXPS:
        dvc("exp", "run", "--queue", "-n", f"on-slurm-{exp}", f"workflow/dvc.yaml:weights_{exp}")
    dvc("queue", "start", "-j", "2")
    deadline, states = time.monotonic() + 600, ""
    while time.monotonic() < deadline:
        states = dvc("queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", states):
            break
        time.sleep(1)
    took = time.monotonic() - started
    print(f"dvc queue on SLURM (2 experiments, -j 2): {took:.0f} s")
    assert states.count("Success") == 2, states + dvc("queue", "logs", f"on-slurm-{EXPS[0]}").stdout[-4000:]
    logs = dvc("queue", "logs", f"on-slurm-{EXPS[0]}").stdout
    assert "mair.pipeline.snakemake_run: snakemake --profile workflow/profiles/slurm" in logs, logs[-4000:]
    ctld = (cluster.root / "log" / "slurmctld.log").read_text()
    new_jobs = set(re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", ctld)) - before
    assert len(new_jobs) == 2, ctld[-3000:]  # one training job per experiment; data and tables are local rules
    (start_a, end_a), (start_b, end_b) = (job_span(ctld, job) for job in sorted(new_jobs))
    assert start_b < end_a and start_a < end_b, "the two experiments' training jobs never ran at the same time"
    shown = dvc("exp", "list").stdout
    for exp in EXPS:
        assert f"on-slurm-{exp}" in shown
