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
TARGET_RULES = {"all", "reproduce_tables", "reproduce_sr", "reproduce_light_sr", "reproduce_denoising",
                "reproduce_real_denoising", "reproduce_deblurring", "reproduce_dehazing", "download_all",
                "prepare_all", "train_all", "evaluate_all"}

pytestmark = [
    pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed"),
    pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed"),
]


def _git_init(work: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)


def _set_scope(work: Path, scope: str) -> None:
    path = work / "params" / "pipeline.yaml"
    path.write_text(re.sub(r"(?m)^scope: \w+$", f"scope: {scope}", path.read_text()))
    assert f"\nscope: {scope}\n" in path.read_text()


def dvc_stages(work: Path) -> dict[str, dict[str, Any]]:
    """Pipeline stages of dvc.yaml as DVC resolves them (vars from params/pipeline.yaml interpolated)."""
    code = """
import json
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo
with Repo(".") as repo:
    out = {}
    for st in repo.index.stages:
        if not getattr(st, "cmd", None):
            continue
        out[st.name] = {
            "cmd": st.cmd if isinstance(st.cmd, list) else [st.cmd],
            "deps": [d.def_path for d in st.deps if not isinstance(d, ParamsDependency)],
            "params": {d.def_path: d.params for d in st.deps if isinstance(d, ParamsDependency)},
            "outs": {o.def_path: {"persist": o.persist, "cache": o.use_cache} for o in st.outs},
        }
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def parse_stage_command(cmd: str) -> dict[str, Any]:
    """``snakemake ... --allowed-rules R... --config K=V... -- TARGETS`` -> rules, config, targets."""
    words = shlex.split(cmd)
    if words[:3] == ["python", "-m", "mair.snakemake_run"]:  # Snakemake with the profile `executor` names
        words = ["snakemake", *words[3:]]
    assert words[0] == "snakemake", cmd
    out: dict[str, Any] = {"rules": [], "config": {}, "targets": words[words.index("--") + 1:]}
    key = None
    for word in words[1:words.index("--")]:
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


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = copy_repo(tmp_path_factory.mktemp("dvc_repo"))
    _git_init(work)
    return work


def test_dvc_yaml_is_generated_from_the_experiments() -> None:
    proc = subprocess.run([sys.executable, "-m", "mair.pipeline", "dvc-yaml", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert doc["vars"] == ["params/pipeline.yaml"]
    assert set(doc["stages"]) == {"data", "tables"} | {f"{k}_{e}" for k in ("train", "evaluate") for e in EXPERIMENTS}
    assert yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["path"] == "data"
    assert (REPO / ".dvc" / "config").is_file() and (REPO / ".dvcignore").is_file()


@pytest.mark.parametrize("scope", ["demo", "paper"])
def test_dvc_stages_and_snakemake_dag_describe_the_same_steps(work: Path, scope: str) -> None:
    _set_scope(work, scope)
    try:
        stages = dvc_stages(work)
    finally:
        _set_scope(work, "demo")
    jobs = []
    for quirk in ("official", "fixed"):  # dvc.yaml orders MaIR-T x3 after both of its possible inits
        jobs += parse_dry_run(snakemake(work, "-n", "-p", "reproduce_tables", "prepare_all", "--config",
                                        f"scope={scope}", f"init_quirk={quirk}").stdout)
    jobs = [j for j in jobs if j["rule"] not in TARGET_RULES]
    commands = {name: parse_stage_command(s["cmd"][0]) for name, s in stages.items()}
    assert all(len(s["cmd"]) == 1 for s in stages.values())

    # Each Snakemake rule belongs to one kind of DVC stage (--allowed-rules), every rule of the DAG is covered.
    owners: dict[str, set[str]] = {}
    for name, command in commands.items():
        for rule in command["rules"]:
            owners.setdefault(rule, set()).add(name.split("_")[0])
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

    producer = {f: job for job in jobs for f in job["output"]}
    job_stage = {id(j): stage_of(j) for j in jobs}

    # Every recorded output is made by a Snakemake job of that stage (runs/ is the trainings' side output).
    made = {f for j in jobs for f in j["output"]}
    for name, stage in stages.items():
        for out in stage["outs"]:
            if out.startswith("runs/"):
                assert out == f"runs/{scope}/{name.removeprefix('train_')}" and stage["outs"][out] == {
                    "persist": True, "cache": False}
                continue
            assert any(_inside(f, {out: None}) for f in made), (name, out)
        targets = commands[name]["targets"]
        if name.startswith("train_"):
            assert targets == [f"results/{scope}/weights/{name.removeprefix('train_')}.pth"]
        if name.startswith("evaluate_"):
            assert commands[name]["config"]["experiments"] == [name.removeprefix("evaluate_")]

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
                if other != name and _inside(dep, s["outs"]):
                    dvc_edges.add((other, name))
    assert dvc_edges == smk_edges
    assert ("train_sr_classic_x2", "train_sr_classic_x3") in dvc_edges
    assert ("train_sr_light_s_x2", "train_sr_light_t_x3") in dvc_edges
    assert {("data", f"train_{e}") for e in EXPERIMENTS} <= dvc_edges

    # params/ files are DVC params of the steps they drive.
    for e in EXPERIMENTS:
        assert f"params/experiments/{e}.yaml" in stages[f"train_{e}"]["params"]
    assert "scope" in stages["data"]["params"]["params/pipeline.yaml"]


@pytest.mark.skipif(shutil.which("mair") is None, reason="the mair command is not installed")
def test_dvc_repro_runs_a_demo_step_in_a_fresh_clone(tmp_path: Path) -> None:
    """`dvc repro evaluate_dehaze_r6k` in a fresh copy runs data -> train -> evaluate through Snakemake, records
    them in dvc.lock, and a second repro has nothing to do."""
    work = copy_repo(tmp_path / "repo")
    _git_init(work)
    env = run_env(work)
    start = time.monotonic()
    proc = subprocess.run(["dvc", "repro", "evaluate_dehaze_r6k"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=1800)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    print(f"dvc repro evaluate_dehaze_r6k (demo): {elapsed:.0f} s")
    for stage in ("data", "train_dehaze_r6k", "evaluate_dehaze_r6k"):
        assert f"Running stage '{stage}'" in proc.stdout
    assert "train_dehaze_its" not in proc.stdout
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"data", "train_dehaze_r6k", "evaluate_dehaze_r6k"}
    assert any(o["path"] == "results/demo/eval/dehaze_r6k" for o in lock["evaluate_dehaze_r6k"]["outs"])
    assert (work / "results" / "demo" / "eval" / "dehaze_r6k" / "reside_6k.json").is_file()
    assert any((work / "runs" / "demo" / "dehaze_r6k").iterdir())

    status = subprocess.run(["dvc", "status", "evaluate_dehaze_r6k"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=300)
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
    again = subprocess.run(["dvc", "repro", "evaluate_dehaze_r6k"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout
