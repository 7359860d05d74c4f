"""One attempt of a pipeline job, run so that retries and schedulers see what happened:
``python -m mair.pipeline.jobstep --run-dir DIR --attempt N [--label TEXT] -- COMMAND ...``.

* **Every attempt's output is kept.** Snakemake deletes a rule's log before each attempt; this wrapper appends
  COMMAND's output (stdout and stderr) to ``DIR/pipeline.log`` between a header and a footer line per attempt,
  and also writes it to its own stdout (the rule's log). A training's ``pipeline.log`` holds every attempt,
  e.g. "stopped by SIGTERM at iteration 3602" of the job that hit its time limit and the resume of the next.
* **The exit status is COMMAND's own** (128+N when it died of signal N): a training stopped by SIGTERM exits 75.
  This process waits for COMMAND; SIGTERM, SIGINT and SIGUSR1 are passed on to it outside SLURM (inside a SLURM
  job step, SLURM signals every process of the step itself).
* **A user's ``scancel`` is not retried.** Inside a SLURM job, SIGTERM makes this wrapper read the job's state
  (``scontrol show job``); a job ending well before its time limit without a reason (scancel, see
  :func:`cancelled_by_user`) leaves ``DIR/CANCELLED.json``. A retry of the same pipeline run
  (``--attempt`` > 1) then stops at once with one line; a new run of the pipeline (attempt 1) removes the marker
  and continues from the checkpoint. A time limit (the ``--signal`` warning or the limit itself) or a
  preemption is not a cancellation: the retry resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

#: The log of every attempt, in the run folder.
ATTEMPTS_LOG = "pipeline.log"
#: Left in the run folder when the job was cancelled by a user (scancel).
CANCEL_MARKER = "CANCELLED.json"
#: Exit status of an attempt refused because the previous one was cancelled by a user.
EXIT_REFUSED = 3
#: What a training's exit status means (mair.train.EXIT_STOPPED is 75).
_MEANING = {0: "done", 75: "stopped by a signal after writing a checkpoint; the next attempt resumes"}
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def slurm_job(job_id: str, timeout: float = 10) -> dict[str, str]:
    """The fields of ``scontrol show job -o JOB_ID`` (JobState, RunTime, TimeLimit...), or {} when unknown."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return {}
    try:
        out = subprocess.run(
            [scontrol, "show", "job", "-o", job_id], capture_output=True, text=True, timeout=timeout, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", out))


def slurm_seconds(text: str) -> float | None:
    """``[days-]hours:minutes:seconds`` (SLURM's RunTime, TimeLimit) in seconds; None for UNLIMITED or garbage."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text or "")
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def cancelled_by_user(job: dict[str, str], slack_s: float = 10) -> bool:
    """Whether SLURM is ending the job before its time limit without a reason: ``scancel``.

    The warning before the time limit (``--signal``) comes while the job is RUNNING; at the time limit the job is
    COMPLETING with a run time of at least its limit; after ``scancel`` it is COMPLETING (or CANCELLED) well
    before its limit, with no reason. A preempted job is requeued by SLURM (PENDING, REQUEUED, PREEMPTED)."""
    state = job.get("JobState")
    if state == "CANCELLED":
        return True
    if state != "COMPLETING" or job.get("Reason", "None") != "None":
        return False
    run, limit = slurm_seconds(job.get("RunTime", "")), slurm_seconds(job.get("TimeLimit", ""))
    return run is not None and (limit is None or run < limit - slack_s)


def describe_status(status: int) -> str:
    if status in _MEANING:
        return _MEANING[status]
    if status > 128:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(status - 128).name}"
    if status == EXIT_REFUSED:
        return "not retried: the previous attempt was cancelled by a user"
    return "failed"


class JobStep:
    """Runs COMMAND once as attempt ``attempt`` of a job whose run folder is ``run_dir``."""

    def __init__(
        self,
        run_dir: Path,
        attempt: int,
        label: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        out: IO[bytes] | None = None,
    ):
        self.run_dir = run_dir
        self.attempt = attempt
        self.label = label
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.out = out if out is not None else sys.stdout.buffer
        self.job_id = self.env.get("SLURM_JOB_ID")
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def _write(self, data: bytes) -> None:
        for stream in (self.out, self.log):
            if stream is not None:
                stream.write(data)
                stream.flush()

    def _say(self, text: str) -> None:
        self._write(f"[mair jobstep] {text}\n".encode())

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.job_id and signum == signal.SIGTERM:
            job = slurm_job(self.job_id)
            cancelled = cancelled_by_user(job)
            state = "cancelled by a user (scancel)" if cancelled else job.get("JobState", "in an unknown state")
            self._say(
                f"{name} received; SLURM job {self.job_id}: {state} (run time {job.get('RunTime', '?')} of "
                f"{job.get('TimeLimit', '?')})"
            )
            if cancelled:
                from mair.common.atomic import atomic_write_json

                atomic_write_json(
                    self.run_dir / CANCEL_MARKER,
                    {"slurm_job": self.job_id, "time": _now(), "attempt": self.attempt, "label": self.label},
                )
        else:
            self._say(f"{name} received")
        inside_slurm_step = bool(self.env.get("SLURM_STEP_ID"))
        if self.process is not None and self.process.poll() is None and not inside_slurm_step:
            self.process.send_signal(signum)

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        marker = self.run_dir / CANCEL_MARKER
        with open(self.run_dir / ATTEMPTS_LOG, "ab") as self.log:
            where = f"host {socket.gethostname()}" + (f", SLURM job {self.job_id}" if self.job_id else "")
            self._write(f"==== {self.label}: attempt {self.attempt}, {_now()}, {where} ====\n".encode())
            if marker.is_file():
                if self.attempt > 1:
                    info = json.loads(marker.read_text(encoding="utf-8"))
                    self._say(
                        f"not retried: SLURM job {info.get('slurm_job')} of this run was cancelled by a user "
                        f"(scancel) at {info.get('time')}. Run the pipeline again to continue from the "
                        f"checkpoint ({marker} is removed then)."
                    )
                    self._write(f"==== exit status {EXIT_REFUSED} ({describe_status(EXIT_REFUSED)}) ====\n".encode())
                    return EXIT_REFUSED
                self._say(f"a new run of the pipeline after a cancelled job: continuing ({marker.name} removed)")
                marker.unlink()
            previous = {sig: signal.signal(sig, self._on_signal) for sig in _FORWARDED}
            try:
                try:
                    self.process = subprocess.Popen(
                        self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env
                    )
                except OSError as error:
                    self._say(f"cannot run {self.command[0]!r}: {error}")
                    return 127
                assert self.process.stdout is not None
                for chunk in iter(lambda: self.process.stdout.readline(), b""):  # type: ignore[union-attr]
                    self._write(chunk)
                status = self.process.wait()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            status = status if status >= 0 else 128 - status
            self._write(f"==== exit status {status} ({describe_status(status)}) ====\n".encode())
            return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("python -m mair.pipeline.jobstep: error: write the command after `--`", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(
        prog="python -m mair.pipeline.jobstep",
        description=__doc__.splitlines()[0],
        usage="python -m mair.pipeline.jobstep --run-dir DIR --attempt N [--label T] -- CMD ...",
    )
    parser.add_argument("--run-dir", type=Path, required=True, help=f"run folder ({ATTEMPTS_LOG} is appended)")
    parser.add_argument("--attempt", type=int, default=1, help="Snakemake's attempt number (1 = first)")
    parser.add_argument("--label", default="job", help="what runs, for the log's header lines")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        parser.error("no command after `--`")
    return JobStep(args.run_dir, args.attempt, args.label, command).run()


if __name__ == "__main__":
    sys.exit(main())
