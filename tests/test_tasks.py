"""The task table (mair/tasks.py) agrees with the experiment schema, with every experiment file, with the published
numbers and with the Snakemake targets; each task's network family builds and restores at the task's scale."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mair.tasks import FAMILIES, TASKS, get_task, task_names

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = {
    p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted((REPO / "params" / "experiments").glob("*"))
}


def _schema() -> dict[str, Any]:
    return json.loads((REPO / "params" / "schema" / "experiment.schema.json").read_text(encoding="utf-8"))


def test_schema_lists_exactly_the_tasks_in_paper_order() -> None:
    schema = _schema()
    assert tuple(schema["properties"]["task"]["enum"]) == task_names() == tuple(TASKS)
    assert set(schema["properties"]["network"]["properties"]["arch"]["enum"]) == set(FAMILIES)
    pairings = set(schema["$defs"]["pairing"]["enum"])
    for task in TASKS.values():
        assert set(task.pairings) <= pairings, task.name


def test_every_task_has_experiments_and_every_experiment_a_task() -> None:
    assert {doc["task"] for doc in EXPERIMENTS.values()} == set(TASKS)
    assert len({t.target for t in TASKS.values()}) == len(TASKS)
    spellings = [s for t in TASKS.values() for s in (t.name, *t.aliases)]
    assert len(spellings) == len(set(spellings)), "an alias names two tasks"


@pytest.mark.parametrize("exp_id", sorted(EXPERIMENTS))
def test_experiment_file_agrees_with_its_task(exp_id: str) -> None:
    doc = EXPERIMENTS[exp_id]
    task = TASKS[doc["task"]]
    scale = doc["scale"]
    assert doc["network"]["arch"] == task.arch
    assert (scale > 1) == (task.training_pair == "lr_hr")
    if task.unet:
        assert scale == 1
    for block in (doc["val"], doc["test"]):
        assert block["protocol"] == task.protocol
        assert block["metrics"]["test_y_channel"] == (task.metric_space == "y")
        assert block["metrics"]["crop_border"] == task.crop_border(scale)
    refs = [*doc["train"]["datasets"], doc["val"]["dataset"], *doc["test"]["datasets"]]
    assert {r["pairing"] for r in refs} <= set(task.pairings)
    synthetic = task.training_pair == "synthetic_noise"
    assert (doc["train"]["noise_sigma"] is not None) == synthetic
    assert ({r["pairing"] for r in doc["train"]["datasets"]} == {"synthetic_noise"}) == synthetic
    key = doc["paper_results"]
    assert key["task"] == task.name
    assert {v.rstrip("+") for v in key["variants"]} <= set(task.methods)
    assert (key["setting"] is None) == (task.setting is None)
    if task.setting == "scale":
        assert key["setting"] == f"x{scale}"
    if task.setting == "sigma":
        assert key["setting"] == f"sigma{doc['train']['noise_sigma']}"


def test_report_places_every_experiment_by_its_id_alone() -> None:
    """The id patterns of the table (the report's fallback for experiments without a file) find each paper
    experiment's task, setting and method row."""
    from mair.report.collect import infer_experiment

    for exp_id, doc in EXPERIMENTS.items():
        info = infer_experiment(exp_id, experiments_dir=None)
        key = doc["paper_results"]
        assert info is not None, exp_id
        assert (info.table, info.setting, info.method) == (key["task"], key["setting"] or "", key["variants"][0])


def test_published_numbers_belong_to_known_tables() -> None:
    with (REPO / "params" / "paper_results.csv").open(encoding="utf-8", newline="") as handle:
        tables = {row["table"] for row in csv.DictReader(handle)}
    assert tables == set(TASKS)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_has_a_network_family_that_builds(name: str) -> None:
    import torch

    from mair.models import ARCHITECTURES, from_official

    task = TASKS[name]
    assert set(FAMILIES) == set(ARCHITECTURES)
    doc = next(d for d in EXPERIMENTS.values() if d["task"] == name)
    torch.manual_seed(0)
    net = from_official(task.arch, **doc["demo"]["network_kwargs"]).eval()
    assert isinstance(net, ARCHITECTURES[task.arch])
    with torch.no_grad():
        out = net(torch.rand(1, 3, 16, 16))
    assert out.shape == (1, 3, 16 * doc["scale"], 16 * doc["scale"])


def test_unknown_task_is_one_clear_line() -> None:
    assert get_task("dehaze") is TASKS["dehaze"]
    with pytest.raises(ValueError, match=r"^unknown task 'denoise'; expected one of sr_classic, sr_light, .*dehaze$"):
        get_task("denoise")


def test_table_imports_nothing_heavy() -> None:
    """The Snakefile imports the table on every invocation: no torch, numpy, yaml or jsonschema behind it."""
    code = "import sys, mair.tasks; print(sorted({'torch', 'numpy', 'yaml', 'jsonschema', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
def test_snakemake_targets_come_from_the_table(tmp_path: Path) -> None:
    from test_workflow import copy_repo, snakemake

    listed = snakemake(copy_repo(tmp_path / "repo"), "--list-target-rules").stdout
    for task in TASKS.values():
        assert re.search(rf"^{task.target} \({re.escape(task.target_help)}\)$", listed, re.M), task.target
