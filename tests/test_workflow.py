"""The Snakemake pipeline, run for real: the paper-scope dry run (offline, < 10 s), config validation, the GPU
slot allocator with concurrent fake jobs, the SLURM profile against fake SLURM commands, and an end-to-end
demo run of one task (dehazing) in a temporary copy of the repository.

Every Snakemake run happens in a copy of the checkout (what a fresh clone holds), never in the checkout.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "params" / "experiments").glob("*.yaml"))
TASK_TARGETS = {
    "reproduce_sr": "sr_classic",
    "reproduce_light_sr": "sr_light",
    "reproduce_denoising": "dn_color",
    "reproduce_real_denoising": "dn_real",
    "reproduce_deblurring": "deblur",
    "reproduce_dehazing": "dehaze",
}
# Left out of a copy of the checkout: what a fresh clone does not have.
_NOT_COPIED = {".git", "data", "runs", ".snakemake", ".dvc/cache", ".dvc/tmp", "mlflow.db", "mlartifacts", "mlruns"}

needs_snakemake = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
needs_mair = pytest.mark.skipif(shutil.which("mair") is None, reason="the mair command is not installed")


# ------------------------------------------------------------------------------------------------ helpers


def copy_repo(dest: Path) -> Path:
    """Copy the checkout's files as a fresh clone would have them (tracked and untracked-but-not-ignored)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        listed = (
            subprocess.run(
                ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
            )
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file()]
    for name in filter(None, listed):
        if name.split("/")[0] in _NOT_COPIED or "/".join(name.split("/")[:2]) in _NOT_COPIED:
            continue
        source, target = REPO / name, dest / name
        if "__pycache__" in name or not (source.is_file() or source.is_symlink()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():  # as git stores it (e.g. mair/resources/params -> ../../params)
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


def run_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Environment of a pipeline run in ``workdir``: its own params, no network, no inherited settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAIR_", "MLFLOW_", "SNAKEMAKE_"))}
    env.update(
        MAIR_PARAMS_DIR=str(workdir / "params"),
        # Offline: any HTTP(S) request goes to a closed local port (the local MLflow server is exempt).
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        no_proxy="127.0.0.1,localhost",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def snakemake(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["snakemake", *args],
        cwd=workdir,
        env=env or run_env(workdir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


_RULE = re.compile(r"^(?:local)?rule (\w+):$")


def parse_dry_run(text: str) -> list[dict[str, Any]]:
    """Jobs of ``snakemake -n -p`` output: rule, input, output, wildcards, shell command."""
    jobs: list[dict[str, Any]] = []
    job: dict[str, Any] | None = None
    for line in text.splitlines():
        match = _RULE.match(line.strip()) if not line.startswith("    ") else None
        if match:
            job = {"rule": match.group(1), "input": [], "output": [], "wildcards": {}, "shell": None}
            jobs.append(job)
            continue
        if job is None:
            continue
        stripped = line.strip()
        for key in ("input", "output"):
            if line.startswith(f"    {key}: "):
                job[key] = [f.strip() for f in stripped[len(key) + 2 :].split(",") if f.strip()]
        if line.startswith("    wildcards: "):
            for pair in stripped[len("wildcards: ") :].split(", "):
                name, _, value = pair.partition("=")
                job["wildcards"][name] = value
        if line.startswith("Shell command: "):
            job["shell"] = stripped[len("Shell command: ") :]
    return jobs


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def experiment_file(exp: str) -> dict[str, Any]:
    return yaml_file(REPO / "params" / "experiments" / f"{exp}.yaml")


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the checkout for the dry runs of this module (they write only .snakemake/)."""
    return copy_repo(tmp_path_factory.mktemp("repo"))


# ------------------------------------------------------------------------------------------------ dry runs


@needs_snakemake
def test_paper_dry_run_lists_every_step_offline_and_fast(repo_copy: Path) -> None:
    """`snakemake -n reproduce_tables --config scope=paper`: every download, preparation, the 17 trainings in
    order, every test set of the paper (MaIR+ where reported) and the tables; offline, in under 10 seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = snakemake(repo_copy, "-n", "-p", "reproduce_tables", "--config", "scope=paper")
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"paper dry run: {wall:.1f} s wall, {cpu:.1f} s CPU, load {os.getloadavg()[0]:.1f}")
    assert cpu < 10, f"the dry run used {cpu:.1f} s of CPU"
    # Wall time is what users see; on a machine shared by more runnable jobs than cores it only bounds loosely.
    loaded = os.getloadavg()[0] > (os.cpu_count() or 1)
    assert wall < (30 if loaded else 10), f"the dry run took {wall:.1f} s"

    jobs = parse_dry_run(proc.stdout)
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:  # evaluate_<exp> and evaluate_plus_<exp> together as "evaluate"
        kind = "evaluate" if job["rule"].startswith("evaluate_") and job["rule"] != "evaluate_all" else job["rule"]
        by_rule.setdefault(kind, []).append(job)

    # 17 trainings, one per experiment file, each on its paper GPU count, resumable under retries.
    trains = {j["wildcards"]["exp"]: j for j in by_rule["train"]}
    assert sorted(trains) == EXPERIMENTS and len(trains) == 17
    for exp, job in trains.items():
        gpus = experiment_file(exp)["paper_gpus"]
        assert job["wildcards"]["scope"] == "paper"
        assert f"run-with-gpus {gpus} -- mair train {exp} --scope paper --gpus {gpus} " in job["shell"], job
        assert f"--run-dir runs/paper/{exp}" in job["shell"]

    # Initialisation order: x3/x4 after x2, sigma 25/50 after 15, MaIR-T x3 after MaIR-S x2 (official quirk).
    for exp in EXPERIMENTS:
        init = experiment_file(exp)["train"]["init_from"]
        weights = [f for f in trains[exp]["input"] if f.startswith("results/trained/paper/weights/")]
        assert weights == ([f"results/trained/paper/weights/{init['experiment']}.pth"] if init else []), exp
    assert "results/trained/paper/weights/sr_light_s_x2.pth" in trains["sr_light_t_x3"]["input"]
    assert "results/trained/paper/weights/sr_light_t_x2.pth" in trains["sr_light_t_x4"]["input"]
    assert "results/trained/paper/weights/sr_classic_x2.pth" in trains["sr_classic_x4"]["input"]

    # Every test set of every experiment, MaIR+ exactly where the paper reports it.
    expected = set()
    for exp in EXPERIMENTS:
        doc = experiment_file(exp)
        suffixes = ["", "+"] if doc["test"]["self_ensemble_reported"] else [""]
        expected |= {
            f"results/trained/paper/eval/{exp}/{d['id']}{s}.json" for d in doc["test"]["datasets"] for s in suffixes
        }
    evals = [out for j in by_rule["evaluate"] for out in j["output"]]
    assert sorted(evals) == sorted(expected)
    tested = {Path(f).stem.rstrip("+") for f in evals}
    assert {
        "set5",
        "set14",
        "b100",
        "urban100",
        "manga109",
        "mcmaster",
        "kodak24",
        "cbsd68",
        "sidd_val",
        "dnd",
        "gopro",
        "hide",
        "sots_indoor",
        "sots_outdoor",
        "reside_6k",
    } <= tested
    plus = {j["rule"].removeprefix("evaluate_plus_") for j in by_rule["evaluate"] if "_plus_" in j["rule"]}
    assert plus == {"sr_classic_x2", "sr_classic_x3", "sr_classic_x4"}
    for job in by_rule["evaluate"]:  # one job per experiment and variant: the network is built once
        exp = job["rule"].removeprefix("evaluate_").removeprefix("plus_")
        sets = " ".join(d["id"] for d in experiment_file(exp)["test"]["datasets"])
        weights = f"results/trained/paper/weights/{exp}.pth"
        assert f"mair evaluate {exp} --weights {weights} --datasets {sets}" in job["shell"]
        assert ("--self-ensemble" in job["shell"]) == ("_plus_" in job["rule"])
        assert f"results/trained/paper/weights/{exp}.pth" in job["input"]

    # Every download and preparation of the catalog's sets that the experiments use.
    catalog = yaml_file(REPO / "params" / "datasets.yaml")["datasets"]
    used: set[str] = set()
    for exp in EXPERIMENTS:
        doc = experiment_file(exp)
        used |= {d["id"] for d in doc["train"]["datasets"] + doc["test"]["datasets"]} | {doc["val"]["dataset"]["id"]}
    downloads = {d for u in used for d in (catalog[u].get("derived_from") or [u])}
    assert {j["wildcards"]["dataset"] for j in by_rule["download"]} == downloads
    assert {j["wildcards"]["dataset"] for j in by_rule["prepare"]} == used | downloads
    df2k = next(j for j in by_rule["prepare"] if j["wildcards"]["dataset"] == "df2k")
    assert set(df2k["input"]) == {"data/prepared/div2k/.prepared.json", "data/prepared/flickr2k/.prepared.json"}

    assert [j["output"] for j in by_rule["tables"]] == [
        ["results/trained/paper/tables/tables.tex", "results/trained/paper/tables/tables.md"]
    ]
    assert len(by_rule["tables"][0]["input"]) == len(expected)


@needs_snakemake
def test_targets_and_quirk_switch(repo_copy: Path) -> None:
    listed = set(snakemake(repo_copy, "--list-target-rules").stdout.split())
    assert {"reproduce_tables", *TASK_TARGETS, "download_all", "prepare_all", "train_all", "evaluate_all"} <= listed

    # A per-task target reaches exactly that task's experiments; init_quirk=fixed starts MaIR-T x3 from T x2.
    jobs = parse_dry_run(
        snakemake(repo_copy, "-n", "-p", "reproduce_light_sr", "--config", "scope=paper", "init_quirk=fixed").stdout
    )
    trains = {j["wildcards"]["exp"]: j for j in jobs if j["rule"] == "train"}
    assert sorted(trains) == [e for e in EXPERIMENTS if e.startswith("sr_light")]
    assert "results/trained/paper/weights/sr_light_t_x2.pth" in trains["sr_light_t_x3"]["input"]
    assert "--init-fix-t-x3" in trains["sr_light_t_x3"]["shell"]
    assert not any("--init-fix-t-x3" in j["shell"] for e, j in trains.items() if e != "sr_light_t_x3")

    # The default scope is the demo: the embedded demo set instead of downloads, CPU jobs, results/trained/demo/.
    jobs = parse_dry_run(snakemake(repo_copy, "-n", "-p").stdout)
    rules = {j["rule"] for j in jobs}
    assert "demo_data" in rules and not {"download", "prepare"} & rules
    trains = [j for j in jobs if j["rule"] == "train"]
    assert len(trains) == 17
    assert all(
        "run-with-gpus 0 -- mair train" in j["shell"] and "--scope demo --device cpu" in j["shell"] for j in trains
    )
    tables = next(j for j in jobs if j["rule"] == "tables")
    assert tables["output"] == ["results/trained/demo/tables/tables.tex", "results/trained/demo/tables/tables.md"]


@needs_snakemake
def test_local_gpu_limit_scales_jobs_to_the_machine(repo_copy: Path) -> None:
    """On a machine with 2 cards an 8-GPU training is scaled to 2 (local_gpus: auto); --resources wins."""
    target = "results/trained/paper/weights/sr_classic_x2.pth"

    def train_shell(*extra: str) -> str:
        env = run_env(repo_copy, MAIR_GPU_IDS="0,1")
        proc = snakemake(repo_copy, "-n", "-p", target, *extra, "--config", "scope=paper", env=env)
        jobs = parse_dry_run(proc.stdout)
        return next(j["shell"] for j in jobs if j["rule"] == "train")

    assert "run-with-gpus 2 -- mair train sr_classic_x2 --scope paper --gpus 2 " in train_shell()
    assert "run-with-gpus 8 -- mair train sr_classic_x2 --scope paper --gpus 8 " in train_shell("--resources", "gpu=8")


@needs_snakemake
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("scope=papr", "invalid pipeline config: scope: 'papr' is not one of ['demo', 'paper']"),
        ("retries={train: many}", "invalid pipeline config: retries.train: 'many' is not of type 'integer'"),
        ("colour=blue", "invalid pipeline config: (top level): Additional properties are not allowed ('colour'"),
        ("experiments=[sr_classic_x9]", "invalid pipeline config: config experiments: unknown id(s) sr_classic_x9"),
    ],
)
def test_config_errors_are_one_clear_message(repo_copy: Path, setting: str, message: str) -> None:
    proc = snakemake(repo_copy, "-n", "--config", setting, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert message in text, text[-3000:]
    assert "Failed validating" not in text  # not the raw jsonschema dump


@needs_snakemake
def test_nested_cli_values_get_schema_types(repo_copy: Path) -> None:
    jobs = parse_dry_run(
        snakemake(
            repo_copy,
            "-n",
            "-p",
            "reproduce_dehazing",
            "--config",
            "scope=paper",
            "download={mirror: https://mirror.example/mair, timeout: 30}",
        ).stdout
    )
    downloads = [j for j in jobs if j["rule"] == "download"]
    assert downloads and all("--mirror https://mirror.example/mair --timeout 30" in j["shell"] for j in downloads)


# ------------------------------------------------------------------------------------------------ GPU slots

_FAKE_JOB = textwrap.dedent(
    """
    import json, os, sys, time
    start = time.time()
    time.sleep(float(sys.argv[2]))
    with open(sys.argv[1], "w") as f:
        json.dump({"gpus": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time(),
                   "pid": os.getpid()}, f)
    """
)


def _slots(n: int, lock_dir: Path, *command: str, timeout: float | None = None) -> list[str]:
    wait = ["--timeout", str(timeout)] if timeout is not None else []
    return [
        sys.executable,
        "-m",
        "mair.pipeline",
        "run-with-gpus",
        "--lock-dir",
        str(lock_dir),
        *wait,
        str(n),
        "--",
        *command,
    ]


def test_concurrent_jobs_never_share_a_card(tmp_path: Path) -> None:
    """Eight jobs asking for 2 of 4 cards at once: each gets 2 cards, jobs running together get disjoint ones."""
    script = tmp_path / "job.py"
    script.write_text(_FAKE_JOB)
    env = {**os.environ, "MAIR_GPU_IDS": "0,1,2,3"}
    env.pop("SLURM_JOB_ID", None)
    procs = [
        subprocess.Popen(
            _slots(2, tmp_path / "locks", sys.executable, str(script), str(tmp_path / f"{i}.json"), "0.6"),
            env=env,
            cwd=REPO,
        )
        for i in range(8)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    runs = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(8)]
    for run in runs:
        cards = run["gpus"].split(",")
        assert len(cards) == 2 and len(set(cards)) == 2 and set(cards) <= {"0", "1", "2", "3"}
    overlaps = 0
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            if a["start"] < b["end"] and b["start"] < a["end"]:  # ran at the same time
                overlaps += 1
                assert not set(a["gpus"].split(",")) & set(b["gpus"].split(",")), (a, b)
    assert overlaps > 0, "the 4 cards were never shared out to two jobs at once"
    for run in runs:  # never more than 2 jobs (4 cards / 2) at any moment
        assert sum(r["start"] <= run["start"] < r["end"] for r in runs) <= 2
    # The command is exec-ed: the job's pid is the wrapper's pid (signals reach it directly).
    assert {r["pid"] for r in runs} == {p.pid for p in procs}


def test_cards_are_freed_when_a_job_is_killed(tmp_path: Path) -> None:
    env = {**os.environ, "MAIR_GPU_IDS": "0,1"}
    env.pop("SLURM_JOB_ID", None)
    holder = subprocess.Popen(
        _slots(2, tmp_path / "locks", sys.executable, "-c", "import time; time.sleep(60)"), env=env, cwd=REPO
    )
    try:
        time.sleep(1.0)
        waiting = subprocess.run(
            _slots(1, tmp_path / "locks", "true", timeout=1),
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert waiting.returncode == 2 and "no 1 free GPU(s)" in waiting.stderr
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the flock
        holder.wait()
    done = subprocess.run(
        _slots(2, tmp_path / "locks", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() in {"0,1", "1,0"}


def test_gpu_slot_edge_cases(tmp_path: Path) -> None:
    env = {**os.environ, "MAIR_GPU_IDS": "0,1"}
    env.pop("SLURM_JOB_ID", None)
    show = ("sh", "-c", 'echo "[$CUDA_VISIBLE_DEVICES]"')
    # No cards asked: every card hidden (CPU).
    out = subprocess.run(_slots(0, tmp_path, *show), env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]"
    # More cards than the machine has: a clear error naming the fixes.
    out = subprocess.run(_slots(4, tmp_path, *show), env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "needs 4 GPU(s) but this machine shows 2" in out.stderr
    assert "--resources gpu=2" in out.stderr
    # Inside a SLURM job the job's own cards are used as they are (no machine-wide locks).
    slurm = {**env, "SLURM_JOB_ID": "77", "CUDA_VISIBLE_DEVICES": "4,6"}
    slurm.pop("MAIR_GPU_IDS")
    out = subprocess.run(_slots(2, tmp_path / "none", *show), env=slurm, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[4,6]" and not (tmp_path / "none").exists()


def test_a_signal_reaches_the_job_through_the_wrapper(tmp_path: Path) -> None:
    """SIGTERM to the job Snakemake started reaches the training itself, which exits 75 to be requeued."""
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "MAIR_GPU_IDS": "0"}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.Popen(
        _slots(1, tmp_path, sys.executable, "-c", code), env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75


# ------------------------------------------------------------------------------------------------ SLURM

_FAKE_SLURM = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
case "$(basename "$0")" in
  sbatch) echo 4242 ;;
  sacctmgr) echo lab ;;
  sacct) echo "4242|FAILED|1:0" ;;
  squeue) echo "4242|FAILED" ;;
esac
exit 0
"""


@needs_snakemake
def test_slurm_profile_requests_gpus_time_partition_account(tmp_path: Path) -> None:
    """The slurm profile turns a training into sbatch --gpus/-t/-p/-A from the config (fake SLURM commands)."""
    work = copy_repo(tmp_path / "repo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "slurm_calls.log"
    for name in ("sbatch", "squeue", "sacct", "sinfo", "sacctmgr", "scontrol", "sshare", "srun", "scancel"):
        (bin_dir / name).write_text(_FAKE_SLURM.format(log=log))
        (bin_dir / name).chmod(0o755)
    for dataset in ("reside_its", "sots_indoor"):  # the training's data, so that it is the first job
        marker = work / "data" / "prepared" / dataset / ".prepared.json"
        marker.parent.mkdir(parents=True)
        marker.write_text("{}")
    env = run_env(work, PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = snakemake(
        work,
        "--profile",
        "workflow/profiles/slurm",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "results/trained/paper/weights/dehaze_its.pth",
        "--config",
        "scope=paper",
        "slurm={partition: gpu, account: lab, train_runtime: 600}",
        "retries={train: 0}",
        env=env,
        check=False,
        timeout=300,
    )
    calls = log.read_text() if log.exists() else ""
    sbatch = [line for line in calls.splitlines() if line.startswith("sbatch ")]
    assert len(sbatch) == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    submit = sbatch[0]
    for flag in (
        "--gpus=2",
        "-t 600",
        "-p gpu",
        "-A lab",
        "--cpus-per-gpu=8",
        "--mem 120000",
        "--requeue",
        "--signal=TERM@300",
    ):
        assert flag in submit, (flag, submit)
    assert "--target-jobs 'train:scope=paper,exp=dehaze_its'" in submit
    assert proc.returncode != 0  # the fake sacct reports the job FAILED


# ------------------------------------------------------------------------------------------------ real runs


@needs_snakemake
@needs_mair
def test_demo_dehazing_end_to_end(tmp_path: Path) -> None:
    """The demo scope of one task (dehazing: 3 trainings, 3 evaluations) in a fresh copy, for real:

    * a training that fails (its training images are gone) fails only its branch under --keep-going;
    * once its data is back, a rerun does only what is missing; a third run has nothing to do;
    * every summary is complete; MLflow holds one finished run per training and per evaluation.
    """
    work = copy_repo(tmp_path / "repo")
    exps = ["dehaze_its", "dehaze_ots", "dehaze_r6k"]
    demo = work / "data" / "demo" / "prepared"
    timings = {}

    start = time.monotonic()
    snakemake(work, "--cores", "2", "prepare_all")
    manifest = json.loads((work / "results" / "trained" / "demo" / "data" / "manifest.json").read_text())
    assert {"reside_its", "reside_ots", "reside_6k", "sots_indoor", "sots_outdoor"} <= set(manifest["datasets"])
    hazy = demo / "reside_ots" / "train" / "hazy"
    saved = tmp_path / "saved_hazy"
    shutil.move(hazy, saved)  # break one training's data, keep the set's marker
    hazy.mkdir()

    failed = snakemake(
        work,
        "--cores",
        "2",
        "--keep-going",
        "reproduce_dehazing",
        "--config",
        "retries={train: 0}",
        check=False,
        timeout=1200,
    )
    timings["first run"] = time.monotonic() - start
    assert failed.returncode != 0
    weights = work / "results" / "trained" / "demo" / "weights"
    assert (weights / "dehaze_its.pth").is_file() and (weights / "dehaze_r6k.pth").is_file()
    assert not (weights / "dehaze_ots.pth").exists()  # nothing half-done looks finished
    assert (work / "results" / "trained" / "demo" / "eval" / "dehaze_r6k" / "reside_6k.json").is_file()
    assert (work / "results" / "trained" / "demo" / "logs" / "train" / "dehaze_ots.log").read_text().strip()

    shutil.rmtree(hazy)
    shutil.move(saved, hazy)
    start = time.monotonic()
    again = snakemake(work, "--cores", "2", "reproduce_dehazing", timeout=1200)
    timings["rerun"] = time.monotonic() - start
    redone = [(j["rule"], j["wildcards"].get("exp")) for j in parse_dry_run(again.stdout + again.stderr)]
    assert sorted(r for r in redone if r[0] not in {"reproduce_dehazing"}) == [
        ("evaluate_dehaze_ots", None),
        ("train", "dehaze_ots"),
    ]
    assert "Nothing to be done" in snakemake(work, "--cores", "2", "reproduce_dehazing").stderr
    print("demo dehazing:", {k: f"{v:.0f} s" for k, v in timings.items()})

    for exp in exps:
        assert list((work / "runs" / "demo" / exp).iterdir()), "checkpoints and logs stay in runs/"
        for ref in experiment_file(exp)["test"]["datasets"]:
            summary_file = work / "results" / "trained" / "demo" / "eval" / exp / f"{ref['id']}.json"
            summary = json.loads(summary_file.read_text())
            assert summary["complete"] is True and summary["scope"] == "demo" and summary["experiment"] == exp
            assert summary["metrics"]["psnr"] > 0

    from test_mlflow_server import mlflow_server, search_runs

    with mlflow_server(work / "mlflow.db", tmp_path / "artifacts") as url:
        runs = [r for r in search_runs(url) if r["info"]["status"] == "FINISHED"]
    evaluations = [r for r in runs if r["tags"].get("mair.kind") == "evaluation"]
    trainings = [r for r in runs if r["tags"].get("mair.kind") != "evaluation"]
    assert sorted(r["tags"]["mair.experiment"] for r in evaluations) == exps
    assert len(trainings) == 3 and all(r["params"] and r["metrics"] for r in trainings + evaluations)
    # Each evaluation is a child of the training run that made its weights (the MLflow UI nests it there).
    by_id = {r["info"]["run_id"]: r for r in trainings}
    for evaluation in evaluations:
        parent = by_id[evaluation["tags"]["mlflow.parentRunId"]]
        assert parent["tags"]["mair.experiment"] == evaluation["tags"]["mair.experiment"]
