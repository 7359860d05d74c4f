"""A one-node SLURM cluster for tests: munged, slurmctld and slurmd of Debian's slurm-wlm, as root, on loopback.

Everything lives in one temporary folder (configuration, state, spool, logs, the munge key and socket); the
daemons run in the foreground as children of the test, so stopping them stops exactly what was started. Client
commands find the cluster through ``SLURM_CONF`` (:meth:`SlurmCluster.env`) and through a link
``/etc/slurm/slurm.conf`` -> the temporary configuration, which exists only while the cluster runs: Snakemake's
jobstep executor clears every ``SLURM_*`` variable before the ``srun`` inside a job, so that ``srun`` reads the
default path as on a real cluster. A machine with its own /etc/slurm/slurm.conf is left alone (no cluster).
No accounting database: ``sacct`` fails as on a cluster without slurmdbd.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun", "sacct")


#: Where SLURM's client commands look for the configuration when ``SLURM_CONF`` is not set.
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")


def why_not_available() -> str | None:
    """Why a cluster cannot be started here (None: it can)."""
    if os.geteuid() != 0:
        return "a test SLURM cluster runs its daemons as root (this user is not root)"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}; apt-get install slurm-wlm munge)"
    if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
        return f"this machine has its own SLURM configuration ({DEFAULT_CONF}); the test cluster would replace it"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_memory_mb() -> int:
    """The node's memory as slurmd itself reports it (``slurmd -C``), so that the node registers."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    for word in out.split():
        if word.startswith("RealMemory="):
            return int(word.split("=", 1)[1])
    raise RuntimeError(f"slurmd -C printed no RealMemory: {out!r}")


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (also on failure); clients use :meth:`env`."""

    NODE = "mairnode"
    PARTITION = "debug"

    def __init__(self, root: Path, cpus: int | None = None, min_job_age_s: int = 300, kill_wait_s: int = 30):
        self.root = root
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.min_job_age_s = min_job_age_s
        self.kill_wait_s = kill_wait_s
        self.conf = root / "slurm.conf"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.linked = False

    # -------------------------------------------------------------------------------------------- setup

    def _write_config(self) -> None:
        run = self.root / "run"  # munged wants the socket's folders executable by all
        for folder, mode in (("run", 0o755), ("munge", 0o700), ("state", 0o700), ("spool", 0o755), ("log", 0o755)):
            (self.root / folder).mkdir(mode=mode, exist_ok=True)
            (self.root / folder).chmod(mode)
        self.root.chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        lines = {
            "ClusterName": "mairtest",
            "SlurmctldHost": "localhost(127.0.0.1)",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={run / 'munge.socket'}",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": run / "slurmctld.pid",
            "SlurmdPidFile": run / "slurmd.pid",
            "SlurmctldLogFile": self.root / "log" / "slurmctld.log",
            "SlurmdLogFile": self.root / "log" / "slurmd.log",
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            "SchedulerType": "sched/backfill",
            "AccountingStorageType": "accounting_storage/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "ReturnToService": 2,
            "MinJobAge": self.min_job_age_s,
            "KillWait": self.kill_wait_s,
            "PlugStackConfig": self.root / "plugstack.conf",
        }
        (self.root / "plugstack.conf").write_text("")
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        text += (
            f"NodeName={self.NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={node_memory_mb()} State=UNKNOWN\n"
        )
        text += f"PartitionName={self.PARTITION} Nodes={self.NODE} Default=YES MaxTime=INFINITE State=UP\n"
        self.conf.write_text(text)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with ``SLURM_CONF`` pointing at this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
        )
        log.close()

    def start(self, timeout: float = 60) -> None:
        self._write_config()
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)
        self.linked = True
        run = self.root / "run"
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                f"--socket={run / 'munge.socket'}",
                f"--key-file={self.root / 'munge' / 'munge.key'}",
                f"--pid-file={run / 'munged.pid'}",
                f"--seed-file={self.root / 'munge' / 'seed'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
            ],
        )
        self._wait(lambda: (run / "munge.socket").exists(), timeout, "munged created no socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, timeout, "slurmctld is not up")
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.NODE, "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, "the node did not come up idle")

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-n", self.NODE, "-o", "%t", check=False).stdout.strip()
        return out in {"idle", "mix", "alloc"}

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} after {timeout:.0f} s: {self.logs()}")

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A SLURM client command against this cluster."""
        return subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, timeout=timeout, check=check)

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    # -------------------------------------------------------------------------------------------- teardown

    def stop(self) -> None:
        """Cancel what is left, then stop slurmd, slurmctld and munged: only the processes started here."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "-p", self.PARTITION, check=False)
            deadline = time.monotonic() + self.kill_wait_s + 15
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        if self.linked and DEFAULT_CONF.is_symlink() and Path(os.readlink(DEFAULT_CONF)) == self.conf:
            DEFAULT_CONF.unlink()
            self.linked = False
