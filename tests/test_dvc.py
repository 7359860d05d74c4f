"""DVC: dvc.yaml is up to date, describes the same steps as the Snakemake DAG (both parsed: DVC's own index vs a
Snakemake dry run), and `dvc repro` really runs a step of the demo in a fresh copy of the repository."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_workflow import EXPERIMENTS, copy_repo, parse_dry_run, run_env, snakemake

REPO = Path(__file__).resolve().parents[1]
TARGET_RULES = {
    "all",
    "reproduce_tables",
    "reproduce_sr",
    "reproduce_light_sr",
    "reproduce_denoising",
    "reproduce_real_denoising",
    "reproduce_deblurring",
    "reproduce_dehazing",
    "download_all",
    "prepare_all",
    "train_all",
    "evaluate_all",
}

pytestmark = [
    pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed"),
    pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed"),
]


def _git_init(work: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)


def _set_scope(work: Path, scope: str, key: str = "scope") -> None:
    """Set ``key`` (scope, or another top-level setting such as weights or experiments, whose value may go on over
    indented lines) to ``scope`` in the copy's params/pipeline.yaml."""
    path = work / "params" / "pipeline.yaml"
    path.write_text(re.sub(rf"(?m)^{key}:.*\n(?:[ \t]+\S.*\n)*", f"{key}: {scope}\n", path.read_text(), count=1))
    assert f"\n{key}: {scope}\n" in path.read_text()


#: The generated DVC files: the chosen pipeline (root) and the weights stages of every experiment.
DVC_FILES = ("dvc.yaml", "workflow/dvc.yaml")


def weights_stage(exp: str) -> str:
    """How DVC names (and prints) the weights stage of ``exp``: it lives in workflow/dvc.yaml."""
    return f"workflow/dvc.yaml:weights_{exp}"


def dvc_stages(work: Path) -> dict[str, dict[str, Any]]:
    """Pipeline stages of both DVC files as DVC resolves them (vars from params/pipeline.yaml interpolated, the
    ``evaluate`` foreach expanded to ``evaluate@<exp>``), by name; paths relative to the repository root."""
    code = """
import json, sys
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo
with Repo(".") as repo:
    out = {}
    for st in repo.index.stages:
        if not getattr(st, "cmd", None) or st.relpath not in sys.argv[1:]:
            continue
        out[st.name] = {
            "cmd": st.cmd if isinstance(st.cmd, list) else [st.cmd],
            "deps": [d.def_path for d in st.deps if not isinstance(d, ParamsDependency)],
            "params": {d.def_path: d.params for d in st.deps if isinstance(d, ParamsDependency)},
            "outs": {o.def_path: {"persist": o.persist, "cache": o.use_cache} for o in st.outs},
        }
print(json.dumps(out))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code, *DVC_FILES], cwd=work, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def parse_stage_command(cmd: str) -> dict[str, Any]:
    """``snakemake ... --allowed-rules R... --config K=V... -- TARGETS`` -> rules, config, targets."""
    words = shlex.split(cmd)
    if words[:3] == ["python", "-m", "mair.pipeline.snakemake_run"]:  # Snakemake with the profile `executor` names
        words = ["snakemake", *words[3:]]
    assert words[0] == "snakemake", cmd
    out: dict[str, Any] = {"rules": [], "config": {}, "targets": words[words.index("--") + 1 :]}
    key = None
    for word in words[1 : words.index("--")]:
        if word.startswith("--"):
            key = word
            continue
        if key == "--allowed-rules":
            out["rules"].append(word)
        elif key == "--config":
            name, _, value = word.partition("=")
            out["config"][name] = yaml.safe_load(value)
    return out


def _inside(path: str, outs: dict[str, Any]) -> str | None:
    return next((o for o in outs if path == o or path.startswith(o.rstrip("/") + "/")), None)


def _overlaps(dep: str, outs: dict[str, Any]) -> bool:
    """A dependency on ``dep`` orders after a stage with ``outs``: one of them is inside the other (DVC's rule)."""
    return bool(_inside(dep, outs)) or any(_inside(o, {dep: None}) for o in outs)


def _kind(stage: str) -> str:
    """data, weights, evaluate or tables."""
    return stage.split("@")[0].split("_")[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = copy_repo(tmp_path_factory.mktemp("dvc_repo"))
    _git_init(work)
    return work


def test_dvc_yaml_is_generated_from_the_experiments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mair.pipeline", "dvc-yaml", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert doc["vars"] == ["params/pipeline.yaml"]
    assert set(doc["stages"]) == {"data", "evaluate", "tables"}
    assert doc["stages"]["evaluate"]["foreach"] == "${experiments}"  # one evaluation per chosen experiment
    weights = yaml.safe_load((REPO / "workflow" / "dvc.yaml").read_text())
    assert weights["vars"] == ["../params/pipeline.yaml"]
    assert set(weights["stages"]) == {f"weights_{e}" for e in EXPERIMENTS}
    assert all(s["wdir"] == ".." for s in weights["stages"].values())
    # The shipped choice is every experiment, as a list (DVC's foreach takes no `all`).
    assert sorted(yaml.safe_load((REPO / "params" / "pipeline.yaml").read_text())["experiments"]) == sorted(EXPERIMENTS)
    assert not (REPO / "workflow" / "published").exists()  # one dvc.yaml for both weight sources
    assert yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["path"] == "data"
    assert (REPO / ".dvc" / "config").is_file() and (REPO / ".dvcignore").is_file()


@pytest.mark.parametrize(("scope", "weights"), [("demo", "trained"), ("paper", "trained"), ("paper", "published")])
def test_dvc_stages_and_snakemake_dag_describe_the_same_steps(work: Path, scope: str, weights: str) -> None:
    """The same dvc.yaml, resolved with each scope and weight source, and Snakemake's DAG of that config."""
    _set_scope(work, scope)
    _set_scope(work, weights, "weights")
    try:
        stages = dvc_stages(work)
    finally:
        _set_scope(work, "demo")
        _set_scope(work, "trained", "weights")
    root = f"results/{weights}/{scope}"
    jobs = []
    for quirk in ("official", "fixed"):  # dvc.yaml orders MaIR-T x3 after both of its possible inits
        jobs += parse_dry_run(
            snakemake(
                work,
                "-n",
                "-p",
                "reproduce_tables",
                "prepare_all",
                "--config",
                f"scope={scope}",
                f"init_quirk={quirk}",
                f"weights={weights}",
            ).stdout
        )
    jobs = [j for j in jobs if j["rule"] not in TARGET_RULES]
    commands = {name: parse_stage_command(s["cmd"][0]) for name, s in stages.items()}
    assert all(len(s["cmd"]) == 1 for s in stages.values())

    # Each Snakemake rule belongs to one kind of DVC stage (--allowed-rules), every rule of the DAG is covered.
    owners: dict[str, set[str]] = {}
    for name, command in commands.items():
        for rule in command["rules"]:
            owners.setdefault(rule, set()).add(_kind(name))
    assert all(len(kinds) == 1 for kinds in owners.values()), owners
    assert {j["rule"] for j in jobs} <= set(owners)

    def stage_of(job: dict[str, Any]) -> str:
        holders = {name for name, s in stages.items() for f in job["output"] if _inside(f, s["outs"])}
        if not holders:  # data files: data/ is tracked by data.dvc, the data stage records the manifest
            holders = {name for name, c in commands.items() if job["rule"] in c["rules"] and name == "data"}
        assert len(holders) == 1, (job, holders)
        stage = holders.pop()
        assert job["rule"] in commands[stage]["rules"], (job["rule"], stage)
        return stage

    # The one fetch job of the published weights writes a record no stage keeps (like the trainings' runs/): the
    # first weights stage to run fetches every selected file, its rule is one of every weights stage's rules.
    fetches = [j for j in jobs if j["rule"] == "fetch_weights"]
    assert len(fetches) == (2 if weights == "published" else 0)  # one per init_quirk dry run
    assert all("fetch_weights" in c["rules"] for n, c in commands.items() if n.startswith("weights_"))
    jobs = [j for j in jobs if j["rule"] != "fetch_weights"]
    producer = {f: job for job in jobs for f in job["output"]}
    job_stage = {id(j): stage_of(j) for j in jobs}

    # Every recorded output is made by a Snakemake job of that stage, under the weight source's own folder.
    made = {f for j in jobs for f in j["output"]}
    for name, stage in stages.items():
        for out in stage["outs"]:
            assert out.startswith(f"{root}/"), (name, out)
            assert any(_inside(f, {out: None}) for f in made), (name, out)
        targets = commands[name]["targets"]
        if name.startswith("weights_"):
            assert targets == [f"{root}/weights/{name.removeprefix('weights_')}.pth"]
        if name.startswith("evaluate@"):
            assert commands[name]["config"]["experiments"] == [name.removeprefix("evaluate@")]

    # The same order: a Snakemake edge between two stages is a DVC dependency on the upstream stage's out,
    # and every DVC dependency on another stage's out is such an edge.
    smk_edges = set()
    for job in jobs:
        for f in job["input"]:
            if f in producer and job_stage[id(producer[f])] != job_stage[id(job)]:
                smk_edges.add((job_stage[id(producer[f])], job_stage[id(job)]))
    dvc_edges = set()
    for name, stage in stages.items():
        for dep in stage["deps"]:
            for other, s in stages.items():
                if other != name and _overlaps(dep, s["outs"]):
                    dvc_edges.add((other, name))
    if weights == "trained":
        assert dvc_edges == smk_edges
        assert ("weights_sr_classic_x2", "weights_sr_classic_x3") in dvc_edges
        assert ("weights_sr_light_s_x2", "weights_sr_light_t_x3") in dvc_edges
        assert {("data", f"weights_{e}") for e in EXPERIMENTS} <= dvc_edges
    else:  # no training: DVC still orders x3 after x2 (same stages for both sources), Snakemake need not
        assert "train" not in {j["rule"] for j in jobs} and smk_edges <= dvc_edges
        assert {(f"weights_{e}", f"evaluate@{e}") for e in EXPERIMENTS} <= smk_edges
        assert all(j["shell"].startswith("mair weights download") for j in fetches)

    # Experiment files are dependencies of their steps; params/pipeline.yaml settings are DVC params, a few only.
    for e in EXPERIMENTS:
        assert f"params/experiments/{e}.yaml" in stages[f"weights_{e}"]["deps"]
        assert f"params/experiments/{e}.yaml" in stages[f"evaluate@{e}"]["deps"]
        assert set(stages[f"weights_{e}"]["params"]) == {"params/pipeline.yaml"}
        assert "weights" in stages[f"weights_{e}"]["params"]["params/pipeline.yaml"]
    assert {"scope", "experiments"} <= set(stages["data"]["params"]["params/pipeline.yaml"])
    assert "experiments" in stages["tables"]["params"]["params/pipeline.yaml"]
    tracked = {k for s in stages.values() for keys in s["params"].values() for k in keys}
    assert tracked == {"scope", "experiments", "weights", "data_dir", "init_quirk", "self_ensemble", "precision"}
    # The data and tables stages take the experiments from params/pipeline.yaml (what `dvc exp run -S` edits).
    assert "experiments" not in commands["data"]["config"] and "experiments" not in commands["tables"]["config"]
    # Metrics: one small file per evaluation stage, not cached (git-tracked-size, shown by `dvc metrics show`).
    for e in EXPERIMENTS:
        assert stages[f"evaluate@{e}"]["outs"][f"{root}/metrics/{e}.json"] == {"persist": False, "cache": False}


def _plan(work: Path, *args: str) -> list[str]:
    """The stages ``dvc repro --dry ARGS`` would run, in order."""
    proc = subprocess.run(
        ["dvc", "repro", "--dry", *args], cwd=work, env=run_env(work), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return re.findall(r"Running stage '([^']+)'", proc.stdout)


def test_the_chosen_experiments_are_the_stages_dvc_runs(work: Path) -> None:
    """`experiments` in params/pipeline.yaml chooses DVC's stages: an evaluation per chosen experiment, the weights
    it needs (MaIR x3 starts from x2: that training too), the data and the tables; no other experiment's."""
    _set_scope(work, "[sr_classic_x3, dehaze_r6k]", "experiments")
    try:
        plan = _plan(work, "--force")
    finally:
        (work / "params" / "pipeline.yaml").write_text((REPO / "params" / "pipeline.yaml").read_text())
    assert sorted(plan) == sorted(
        [
            "data",
            weights_stage("sr_classic_x2"),
            weights_stage("sr_classic_x3"),
            "evaluate@sr_classic_x3",
            weights_stage("dehaze_r6k"),
            "evaluate@dehaze_r6k",
            "tables",
        ]
    )
    assert plan[0] == "data" and plan[-1] == "tables"
    assert plan.index(weights_stage("sr_classic_x2")) < plan.index(weights_stage("sr_classic_x3"))
    assert len(_plan(work, "--force")) == 36  # the shipped list: every experiment


def test_a_plain_dry_run_on_a_fresh_clone_stops_where_the_docs_say(work: Path) -> None:
    """DVC 3.67 hashes the dependencies of a changed stage for its run cache even in a dry run, so the plain
    `dvc repro --dry` stops at the first stage whose input does not exist yet (docs/pipeline.md "DVC", dry runs: use
    `--force`). When a DVC release plans from nothing, this fails: drop `--force` from the docs then."""
    proc = subprocess.run(
        ["dvc", "repro", "--dry"], cwd=work, env=run_env(work), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0 and re.findall(r"Running stage '([^']+)'", proc.stdout) == ["data"]
    assert "No such file or directory" in proc.stderr and "data/manifest.json" in proc.stderr, proc.stderr[-2000:]
    assert not (work / "results" / "trained").exists()  # a dry run writes no output


@pytest.mark.skipif(shutil.which("mair") is None, reason="the mair command is not installed")
def test_dvc_repro_runs_a_demo_step_in_a_fresh_clone(tmp_path: Path) -> None:
    """`dvc repro evaluate@dehaze_r6k` in a fresh copy runs data -> train -> evaluate through Snakemake, records
    them in dvc.lock and workflow/dvc.lock, and a second repro has nothing to do."""
    work = copy_repo(tmp_path / "repo")
    _git_init(work)
    env = run_env(work)
    start = time.monotonic()
    proc = subprocess.run(
        ["dvc", "repro", "evaluate@dehaze_r6k"], cwd=work, env=env, capture_output=True, text=True, timeout=1800
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    print(f"dvc repro evaluate@dehaze_r6k (demo): {elapsed:.0f} s")
    for stage in ("data", weights_stage("dehaze_r6k"), "evaluate@dehaze_r6k"):
        assert f"Running stage '{stage}'" in proc.stdout
    assert "weights_dehaze_its" not in proc.stdout
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"data", "evaluate@dehaze_r6k"}
    assert set(yaml.safe_load((work / "workflow" / "dvc.lock").read_text())["stages"]) == {"weights_dehaze_r6k"}
    assert any(o["path"] == "results/trained/demo/eval/dehaze_r6k" for o in lock["evaluate@dehaze_r6k"]["outs"])
    assert (work / "results" / "trained" / "demo" / "eval" / "dehaze_r6k" / "reside_6k.json").is_file()
    assert any((work / "runs" / "demo" / "dehaze_r6k").iterdir())

    status = subprocess.run(
        ["dvc", "status", "evaluate@dehaze_r6k"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
    again = subprocess.run(
        ["dvc", "repro", "evaluate@dehaze_r6k"], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout


def _dvc(work: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["dvc", *args], cwd=work, env=run_env(work), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return proc


def _documented_dvc_commands() -> list[str]:
    """The `dvc ...` lines of the code blocks of docs/pipeline.md's DVC section, comments stripped."""
    text = (REPO / "docs" / "pipeline.md").read_text()
    section = text.split("\n## DVC\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    lines = [ln.split("  #", 1)[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln.startswith("dvc ")]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mair") is None, reason="the mair command is not installed")
def test_dvc_experiment_metrics_plots_and_documented_commands_on_a_fresh_clone(tmp_path: Path) -> None:
    """On a fresh clone (committed state): the dry run plans every stage from nothing; `dvc exp run -S` chooses
    the experiments (only dehaze_r6k's data is prepared); `dvc metrics show`, `dvc plots show` and `dvc exp show`
    present the real outputs with few params; the documented data commands work as written."""
    work = copy_repo(tmp_path / "repo")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    git_id = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", *git_id, "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", *git_id, "commit", "-qm", "fresh"], cwd=work, check=True)
    subprocess.run(["git", "config", "user.name", "t"], cwd=work, check=True)
    subprocess.run(["git", "config", "user.email", "t@example.invalid"], cwd=work, check=True)

    # (8) The plan from nothing, as documented: every stage, in order (data first, tables last).
    documented = _documented_dvc_commands()
    dry = next(c for c in documented if "--dry" in c)
    plan = re.findall(r"Running stage '([^']+)'", _dvc(work, *shlex.split(dry)[1:], timeout=600).stdout)
    assert len(plan) == 36 and plan[0] == "data" and plan[-1] == "tables"
    x2, x3 = weights_stage("sr_classic_x2"), weights_stage("sr_classic_x3")
    assert plan.index(x2) < plan.index(x3) < plan.index("evaluate@sr_classic_x3")

    # (10) Experiments chosen through DVC params alone, as with --config: no target, only dehaze_r6k's stages run
    # (its data, weights, evaluation, and the tables), and the workspace is then up to date.
    started = time.monotonic()
    ran = _dvc(work, "exp", "run", "-n", "r6k", "-S", "params/pipeline.yaml:experiments=[dehaze_r6k]").stdout
    print(f"dvc exp run -S experiments=[dehaze_r6k] (demo): {time.monotonic() - started:.0f} s")
    assert re.findall(r"Running stage '([^']+)'", ran) == [
        "data", weights_stage("dehaze_r6k"), "evaluate@dehaze_r6k", "tables"
    ]  # fmt: skip
    assert sorted(p.name for p in (work / "runs" / "demo").iterdir()) == ["dehaze_r6k"]  # nothing else trained
    assert set(yaml.safe_load((work / "dvc.lock").read_text())["stages"]) == {"data", "evaluate@dehaze_r6k", "tables"}
    assert set(yaml.safe_load((work / "workflow" / "dvc.lock").read_text())["stages"]) == {"weights_dehaze_r6k"}
    assert (work / "results" / "trained" / "demo" / "tables" / "dehaze.md").is_file()
    assert "Running stage" not in _dvc(work, "repro").stdout
    manifest = json.loads((work / "results" / "trained" / "demo" / "data" / "manifest.json").read_text())
    assert set(manifest["datasets"]) == {"reside_6k"}
    metrics_file = work / "results" / "trained" / "demo" / "metrics" / "dehaze_r6k.json"
    assert json.loads(metrics_file.read_text())["reside_6k"]["psnr"] > 0

    # (9) Metrics, plots and the experiments table.
    shown = json.loads(_dvc(work, "metrics", "show", "--json").stdout)
    values = shown[""]["data"]["results/trained/demo/metrics/dehaze_r6k.json"]["data"]
    assert values["reside_6k"]["psnr"] == pytest.approx(json.loads(metrics_file.read_text())["reside_6k"]["psnr"])
    out = tmp_path / "plots"
    _dvc(work, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "training loss" in html and "validation PSNR" in html  # the two plots' titles
    assert "dehaze_r6k/train_log.csv" in html and "dehaze_r6k/val_log.csv" in html  # with the run's data
    rows = json.loads(_dvc(work, "exp", "show", "--json", "-A").stdout)
    exps = [e for row in rows for e in (row.get("experiments") or []) if e.get("name") == "r6k"]
    assert exps, rows
    data = exps[0]["revs"][0]["data"]
    params = {k for f in data["params"].values() for k in f.get("data", {})}
    assert "experiments" in params and len(params) <= 12, params
    assert data["metrics"]["results/trained/demo/metrics/dehaze_r6k.json"]["data"]["reside_6k"]["psnr"] > 0

    # (12) The documented data commands, as written, in a non-interactive shell (a local remote for the push).
    remote = tmp_path / "remote"
    _dvc(work, "remote", "add", "-d", "local", str(remote))
    for command in documented:
        if command.startswith(("dvc commit", "dvc push", "dvc config")):
            for part in command.split("&&"):
                _dvc(work, *shlex.split(part)[1:], timeout=600)
    assert yaml.safe_load((work / "data.dvc").read_text())["outs"][0]["md5"].endswith(".dir")
    assert any(remote.rglob("*")), "dvc push sent the data to the remote"
