"""How pipeline jobs run (fast, no cluster): memory per job kind, the status command chosen without accounting,
every attempt's log kept in the run folder, a user's cancel not retried, and params/ of the checkout one works in.
The same behaviour on a real SLURM cluster: tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_workflow import copy_repo, needs_snakemake, snakemake

from mair import experiments
from mair.pipeline import jobstep
from mair.pipeline.slurm import SlurmSetupError, choose_status_command, job_mem_mb

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ memory


def test_memory_per_job_kind() -> None:
    slurm = {"mem_mb_per_gpu": 60000, "cpu_mem_mb": 8000}
    assert job_mem_mb(0, slurm) == 8000
    assert job_mem_mb(1, slurm) == 60000 and job_mem_mb(8, slurm) == 480000


@needs_snakemake
def test_dry_run_asks_memory_per_job_kind(tmp_path: Path) -> None:
    work = copy_repo(tmp_path / "repo")
    demo = snakemake(
        work, "-n", "results/trained/demo/weights/dehaze_r6k.pth", "--config", "slurm={cpu_mem_mb: 3000}"
    ).stdout
    assert re.search(r"rule train:(?:\n {4}.*)*\n {4}resources: .*\bmem_mb=3000\b", demo), demo
    paper = snakemake(work, "-n", "results/trained/paper/weights/dehaze_its.pth", "--config", "scope=paper").stdout
    assert re.search(r"rule train:(?:\n {4}.*)*\n {4}resources: .*\bgpu=2\b.*\bmem_mb=120000\b", paper), paper


# ------------------------------------------------------------------------------------------------ status command


def test_status_command_without_accounting() -> None:
    assert choose_status_command("sacct", True, "", None, 40) == ("sacct", None)
    command, note = choose_status_command("sacct", False, "Slurm accounting storage is disabled", 300, 40)
    assert command == "squeue" and "Slurm accounting storage is disabled" in note and "squeue" in note
    assert choose_status_command("squeue", False, "x", 300, 40) == ("squeue", None)
    expected = r"MinJobAge=60 s.*>= 120 s.*--slurm-init-seconds-before-status-checks 20"
    with pytest.raises(SlurmSetupError, match=expected):
        choose_status_command("sacct", False, "Slurm accounting storage is disabled", 60, 40)


# ------------------------------------------------------------------------------------------------ jobstep

_CHILD = """
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("child started", flush=True)
for _ in range(int(sys.argv[1])):
    if stop:
        print("stopped by SIGTERM", flush=True)
        sys.exit(75)
    time.sleep(0.05)
sys.exit(int(sys.argv[2]))
"""


def _jobstep(run_dir: Path, attempt: int, *child: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mair.pipeline.jobstep",
        "--run-dir",
        str(run_dir),
        "--attempt",
        str(attempt),
        "--label",
        "train x",
        "--",
        sys.executable,
        "-c",
        _CHILD,
        *child,
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_every_attempt_is_kept_and_a_signal_gives_the_command_s_status(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_jobstep(run_dir, 1, "400", "0"), env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert "attempt 1" in proc.stdout.readline() and "child started" in proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)  # outside SLURM the wrapper passes it on
    out = proc.stdout.read()
    assert proc.wait(timeout=30) == 75, out
    assert "stopped by SIGTERM" in out
    done = subprocess.run(_jobstep(run_dir, 2, "1", "0"), env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    log = (run_dir / jobstep.ATTEMPTS_LOG).read_text()
    assert re.findall(r"==== train x: attempt (\d)", log) == ["1", "2"]
    assert "stopped by SIGTERM\n==== exit status 75 (stopped by a signal" in log
    assert log.rstrip().endswith("==== exit status 0 (done) ====")
    assert "stopped by SIGTERM" not in done.stdout  # the rule's own log holds this attempt only


def test_a_cancelled_job_is_not_retried_but_a_new_run_continues(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / jobstep.CANCEL_MARKER).write_text(json.dumps({"slurm_job": "17", "time": "then"}))
    refused = subprocess.run(_jobstep(run_dir, 2, "1", "0"), env=_env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode == jobstep.EXIT_REFUSED
    assert "not retried: SLURM job 17 of this run was cancelled by a user" in refused.stdout
    assert "child started" not in refused.stdout
    again = subprocess.run(_jobstep(run_dir, 1, "1", "0"), env=_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "child started" in again.stdout
    assert not (run_dir / jobstep.CANCEL_MARKER).exists()


def test_child_killed_by_a_signal_reports_128_plus_n(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "mair.pipeline.jobstep",
        "--run-dir",
        str(tmp_path),
        "--",
        sys.executable,
        "-c",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    ]
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 137 and "killed by SIGKILL" in proc.stdout


# ------------------------------------------------------------------------------------------------ params


def test_params_follow_the_checkout_one_works_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    (other / "params" / "experiments").mkdir(parents=True)
    (other / "Snakefile").write_text("")
    (other / "deep" / "er").mkdir(parents=True)
    monkeypatch.delenv("MAIR_PARAMS_DIR", raising=False)
    monkeypatch.chdir(other / "deep" / "er")
    assert experiments.params_dir() == (other / "params").resolve()
    monkeypatch.chdir(tmp_path)  # outside any checkout: the installed package's
    assert experiments.params_dir() != (other / "params").resolve()
    monkeypatch.setenv("MAIR_PARAMS_DIR", str(other / "params"))  # what the pipeline passes wins
    monkeypatch.chdir(REPO)
    assert experiments.params_dir() == other / "params"


def test_mair_reads_the_params_of_the_checkout_it_runs_in(tmp_path: Path) -> None:
    """One environment, two checkouts: `mair` in the second reads the second's experiment files."""
    work = copy_repo(tmp_path / "repo")
    path = work / "params" / "experiments" / "dehaze_r6k.yaml"
    path.write_text(path.read_text().replace("\n  print_freq: 200\n", "\n  print_freq: 123\n"))
    code = "from mair.experiments import load; print(load('dehaze_r6k').train.print_freq)"
    env = {k: v for k, v in _env().items() if k != "MAIR_PARAMS_DIR"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "123", out.stderr + f" ({time.monotonic() - started:.0f} s)"


# ------------------------------------------------------------------------------------------------ dvc executor


def test_dvc_stages_run_snakemake_with_the_profile_executor_names(tmp_path: Path) -> None:
    from mair.pipeline.snakemake_run import snakemake_command

    (tmp_path / "params").mkdir()
    settings = tmp_path / "params" / "pipeline.yaml"
    settings.write_text("scope: demo\nexecutor: slurm\n")  # the slurm profile's scope=paper must not win
    assert snakemake_command(["-n", "--", "x"], tmp_path) == [
        "snakemake", "--profile", "workflow/profiles/slurm", "-n", "--config", "scope=demo", "--", "x"
    ]  # fmt: skip
    assert snakemake_command(["--config", "experiments=[a]", "--", "x"], tmp_path)[3:] == [
        "--config", "scope=demo", "experiments=[a]", "--", "x"
    ]  # fmt: skip
    settings.write_text("scope: paper\n")
    assert snakemake_command([], tmp_path) == [
        "snakemake", "--profile", "workflow/profiles/local", "--config", "scope=paper"
    ]  # fmt: skip
    settings.write_text("scope: demo\nexecutor: pbs\n")
    proc = subprocess.run([sys.executable, "-m", "mair.pipeline.snakemake_run", "-n"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mair.pipeline.snakemake_run: error: {settings}: executor: expected one of local, slurm, got 'pbs'"
    ]
    for dvc_file in (REPO / "dvc.yaml", REPO / "workflow" / "dvc.yaml"):
        stages = dvc_file.read_text()
        assert stages.count("cmd: python -m mair.pipeline.snakemake_run ") == stages.count("cmd: ") > 0, dvc_file


# What `scontrol show job -o` said, inside the job, when SIGTERM came (slurm-wlm 22.05 without accounting).
_WARNING = {"JobState": "RUNNING", "Reason": "None", "RunTime": "00:00:26", "TimeLimit": "00:01:00"}
_TIME_LIMIT = {"JobState": "COMPLETING", "Reason": "TimeLimit", "RunTime": "00:01:26", "TimeLimit": "00:01:00"}
_SCANCEL = {"JobState": "COMPLETING", "Reason": "None", "RunTime": "00:00:06", "TimeLimit": "00:05:00"}


def test_only_a_user_s_scancel_counts_as_cancelled() -> None:
    assert jobstep.cancelled_by_user(_SCANCEL)
    assert jobstep.cancelled_by_user({**_SCANCEL, "JobState": "CANCELLED"})
    assert not jobstep.cancelled_by_user(_WARNING)  # --signal=TERM@N before the time limit
    assert not jobstep.cancelled_by_user(_TIME_LIMIT)
    assert not jobstep.cancelled_by_user({**_TIME_LIMIT, "Reason": "None"})  # run time reached the limit
    assert not jobstep.cancelled_by_user({"JobState": "PENDING", "Reason": "BeginTime"})  # requeued (preemption)
    assert not jobstep.cancelled_by_user({})
    assert jobstep.slurm_seconds("1-02:03:04") == 93784 and jobstep.slurm_seconds("UNLIMITED") is None
