"""A real ``mlflow server`` on 127.0.0.1 (free port, SQLite store in a temporary folder, bounded wait): runs logged
over HTTP by mair.common.tracking are read back through the server's REST API, as the MLflow UI shows them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(request, timeout=timeout) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


@contextlib.contextmanager
def mlflow_server(db: Path, artifacts: Path) -> Iterator[str]:
    """Start ``mlflow server`` on a free local port over the SQLite file ``db``; yield its URL; stop it."""
    if shutil.which("mlflow") is None:
        pytest.skip("mlflow is not installed")
    port = free_port()
    log = artifacts.parent / f"mlflow_server_{port}.log"
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{db}",
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=artifacts.parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if str(_request(f"{url}/health", timeout=2)).strip() == "OK":
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow server not up after {STARTUP_TIMEOUT:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # the server and its worker processes (own session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def search_runs(url: str) -> list[dict[str, Any]]:
    """Every run of every experiment through the REST API, with params, metrics and tags as plain dicts."""
    experiments = _request(f"{url}/api/2.0/mlflow/experiments/search", {"max_results": 1000})
    ids = [e["experiment_id"] for e in experiments.get("experiments", [])]
    if not ids:
        return []
    found = _request(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": ids, "max_results": 1000})
    runs = []
    for run in found.get("runs", []):
        data = run.get("data", {})
        runs.append(
            {
                "info": run["info"],
                "params": {p["key"]: p["value"] for p in data.get("params", [])},
                "metrics": {m["key"]: m["value"] for m in data.get("metrics", [])},
                "tags": {t["key"]: t["value"] for t in data.get("tags", [])},
            }
        )
    return runs


def test_runs_logged_over_http_are_read_back_through_rest(tmp_path: Path) -> None:
    """A training-style run and an evaluation logged by mair.common.tracking to http://127.0.0.1:port come back
    through the REST API with their params, metrics, tags and artifact."""
    with mlflow_server(tmp_path / "mlflow.db", tmp_path / "mlartifacts") as url:
        csv = tmp_path / "set5.csv"
        csv.write_text("name,psnr,ssim\nbaby,38.1,0.96\n")
        code = f"""
import json, sys
from mair.common import tracking
tracker = tracking.Tracker({url!r})
run = tracker.start(tracking.mlflow_experiment_name("demo", "sr_classic_x2"), "train sr_classic_x2",
                    {{"mair.kind": "training", "mair.experiment": "sr_classic_x2"}})
tracker.log_params(tracking.flatten_params({{"train": {{"total_iter": 30, "optimizer": {{"lr": 2e-4}}}}}}))
for step in (10, 20, 30):
    tracker.log_metrics({{"loss": 1.0 / step}}, step=step)
tracker.end("FINISHED")
summary = {{"experiment": "sr_classic_x2", "dataset": "set5", "variant": "MaIR", "scope": "demo",
           "metrics": {{"psnr": 38.1, "ssim": 0.96}}, "n_images": 1, "complete": True, "weights": "w.pth"}}
ev = tracking.log_evaluation(summary, {{"self_ensemble": False}}, [{str(csv)!r}], uri={url!r})
print(json.dumps({{"train": run, "eval": ev, "enabled": tracker.enabled}}))
"""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_TRACKING_URI"] = url
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        ids = json.loads(proc.stdout.strip().splitlines()[-1])
        assert ids["enabled"] and ids["train"] and ids["eval"], proc.stderr[-4000:]

        runs = {r["info"]["run_id"]: r for r in search_runs(url)}
        train, evaluation = runs[ids["train"]], runs[ids["eval"]]
        assert train["info"]["status"] == "FINISHED" and train["info"]["run_name"] == "train sr_classic_x2"
        assert train["params"]["train.total_iter"] == "30" and train["params"]["train.optimizer.lr"] == "0.0002"
        assert train["metrics"]["loss"] == pytest.approx(1.0 / 30)
        history = _request(f"{url}/api/2.0/mlflow/metrics/get-history?run_id={ids['train']}&metric_key=loss")
        assert sorted(m["step"] for m in history["metrics"]) == [10, 20, 30]

        assert evaluation["metrics"]["psnr"] == pytest.approx(38.1)
        assert evaluation["tags"]["mair.kind"] == "evaluation" and evaluation["tags"]["mair.dataset"] == "set5"
        assert evaluation["params"]["self_ensemble"] == "False"
        exp = _request(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={evaluation['info']['experiment_id']}")
        assert exp["experiment"]["name"] == "mair/demo/sr_classic_x2"
        listed = _request(f"{url}/api/2.0/mlflow/artifacts/list?run_id={ids['eval']}")
        assert "set5.csv" in [f["path"] for f in listed.get("files", [])]


def _download(url: str, timeout: float = 30.0) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.read()


@pytest.mark.slow
def test_experiment_kind_source_tags_training_link_model_and_artifacts(tmp_path: Path) -> None:
    """What the MLflow UI shows, read back through the REST API of a real server: the experiment is a
    model-training experiment, runs carry the standard Source / commit / user tags, an evaluation of a training's
    weights is that run's child, the final weights are a logged model (weights-only loadable) with the evaluation
    metrics, and tables, figures, logs and restored samples are artifacts."""
    torch = pytest.importorskip("torch")
    weights = tmp_path / "results" / "weights" / "dehaze_r6k.pth"
    weights.parent.mkdir(parents=True)
    torch.save({"params": {"conv.weight": torch.arange(6.0).reshape(1, 1, 2, 3)}}, weights)
    other = tmp_path / "other.pth"  # weights no training run logged (e.g. published ones)
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, other)
    config, log = tmp_path / "config.yaml", tmp_path / "train_log.csv"
    config.write_text("experiment: {id: dehaze_r6k}\n")
    log.write_text("iter,epoch,loss,lr,seconds\n10,0,0.5,0.0002,1.0\n")
    sample = tmp_path / "samples" / "0001.png"
    sample.parent.mkdir()
    sample.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    tables = tmp_path / "tables"
    (tables / "figures").mkdir(parents=True)
    for name in ("tables.md", "tables.tex", "table4_dehazing.csv", "figures/psnr_curves.png"):
        (tables / name).write_text(name)

    with mlflow_server(tmp_path / "mlflow.db", tmp_path / "mlartifacts") as url:
        code = f"""
import json
from pathlib import Path
from mair.common import tracking
t = tracking.Tracker({url!r})
train = t.start(tracking.mlflow_experiment_name("demo", "dehaze_r6k"), "train dehaze_r6k",
                {{"mair.kind": "training", "mair.experiment": "dehaze_r6k"}}, source="mair train")
t.log_metrics({{"loss": 0.5}}, step=10)
model = t.log_model({str(weights)!r}, "dehaze_r6k", files=[{str(config)!r}], params={{"iterations": 10}}, step=10)
t.log_artifacts([{str(log)!r}], "logs")
t.end("FINISHED")
summary = {{"experiment": "dehaze_r6k", "dataset": "reside_6k", "variant": "MaIR", "scope": "demo",
           "metrics": {{"psnr": 25.5, "ssim": 0.9}}, "n_images": 3, "complete": True}}
ev = tracking.log_evaluation({{**summary, "weights": {str(weights)!r}}}, {{}}, [], images=[{str(sample)!r}])
lone = tracking.log_evaluation({{**summary, "weights": {str(other)!r}}}, {{}}, [])
files = [str(p) for p in Path({str(tables)!r}).rglob("*") if p.is_file()]
tab = tracking.log_tables("demo", files, {str(tables)!r})
print(json.dumps({{"train": train, "model": model, "eval": ev, "lone": lone, "tables": tab}}))
"""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_TRACKING_URI"] = url
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        proc = subprocess.run(
            [sys.executable, "-W", "error::UserWarning:mair.common.tracking", "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        ids = json.loads(proc.stdout.strip().splitlines()[-1])
        assert all(ids.values()), ids

        runs = {r["info"]["run_id"]: r for r in search_runs(url)}
        train, evaluation, lone = runs[ids["train"]], runs[ids["eval"]], runs[ids["lone"]]

        # A model-training experiment (MLflow 3's experiment kind), not a GenAI one.
        exp = _request(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={train['info']['experiment_id']}")
        exp_tags = {t["key"]: t["value"] for t in exp["experiment"].get("tags", [])}
        assert exp_tags["mlflow.experimentKind"] == "custom_model_development"

        # Source, type, user and commit: the UI's "Source" and "Created by".
        commit = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        for run, source in ((train, "mair train"), (evaluation, "mair evaluate")):
            assert run["tags"]["mlflow.source.name"] == source and run["tags"]["mlflow.source.type"] == "LOCAL"
            assert run["tags"]["mlflow.user"]
            if commit:
                assert run["tags"]["mlflow.source.git.commit"] == commit

        # The evaluation of these weights is the training run's child; weights no run logged have no parent.
        assert evaluation["tags"]["mlflow.parentRunId"] == ids["train"] == evaluation["tags"]["mair.training_run"]
        assert "mlflow.parentRunId" not in lone["tags"]

        # The logged model: this experiment, this source run, READY, the evaluation's metrics, weights-only files.
        model = _request(f"{url}/api/2.0/mlflow/logged-models/{ids['model']}")["model"]
        assert model["info"]["experiment_id"] == train["info"]["experiment_id"]
        assert model["info"]["source_run_id"] == ids["train"] and model["info"]["name"] == "dehaze_r6k"
        assert model["info"]["status"] == "LOGGED_MODEL_READY"
        model_metrics = {m["key"]: m["value"] for m in model["data"].get("metrics", [])}
        assert model_metrics["reside_6k/psnr"] == pytest.approx(25.5)
        found = _request(
            f"{url}/api/2.0/mlflow/logged-models/search", {"experiment_ids": [train["info"]["experiment_id"]]}
        )
        assert [m["info"]["model_id"] for m in found["models"]] == [ids["model"]]
        listed = _request(f"{url}/api/2.0/mlflow/logged-models/{ids['model']}/artifacts/directories")
        assert {f["path"] for f in listed["files"]} == {"dehaze_r6k.pth", "config.yaml"}
        data = _download(
            f"{url}/ajax-api/2.0/mlflow/logged-models/{ids['model']}/artifacts/files?artifact_file_path=dehaze_r6k.pth"
        )
        fetched = tmp_path / "fetched.pth"
        fetched.write_bytes(data)
        state = torch.load(fetched, weights_only=True)
        assert torch.equal(state["params"]["conv.weight"], torch.arange(6.0).reshape(1, 1, 2, 3))
        assert train["tags"]["mair.model_id"] == ids["model"]

        # Artifacts: training logs, restored samples, tables and figures (folders kept).
        def artifacts(run_id: str, path: str = "") -> set[str]:
            query = f"run_id={run_id}" + (f"&path={path}" if path else "")
            return {f["path"] for f in _request(f"{url}/api/2.0/mlflow/artifacts/list?{query}").get("files", [])}

        assert "logs/train_log.csv" in artifacts(ids["train"], "logs")
        assert artifacts(ids["eval"], "samples") == {"samples/0001.png"}
        assert {"tables.md", "tables.tex", "table4_dehazing.csv", "figures"} <= artifacts(ids["tables"])
        assert artifacts(ids["tables"], "figures") == {"figures/psnr_curves.png"}
        tables_exp = _request(
            f"{url}/api/2.0/mlflow/experiments/get?experiment_id={runs[ids['tables']]['info']['experiment_id']}"
        )
        assert tables_exp["experiment"]["name"] == "mair/demo/tables"


#: The address docs/pipeline.md and README.md give for the MLflow UI: the experiments in the model-training view.
UI_ADDRESS = "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"


def test_the_documented_ui_address_chooses_the_model_training_view() -> None:
    """MLflow 3's UI picks GenAI or model-training view from the address's ``workflowType``, else from the browser's
    localStorage, else GenAI; the experiment kind tag is not read for it. The installed UI bundle still does so,
    and the docs give the address that opens on runs (read docs/pipeline.md "MLflow" for the details)."""
    mlflow = pytest.importorskip("mlflow")
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    if not bundle.is_dir():
        pytest.skip("this mlflow has no UI bundle")
    sources = [p.read_text(errors="replace") for p in sorted(bundle.glob("*.js"))]
    provider = [s for s in sources if 'key:"mlflow.workflowType"' in s]
    assert len(provider) == 1, "the UI keeps its view choice under the localStorage key mlflow.workflowType"
    code = provider[0]
    start = code.index('key:"mlflow.workflowType"')
    window = code[start - 700 : start + 700]
    assert 'MACHINE_LEARNING="machine_learning"' in window and 'GENAI="genai"' in window
    assert '.get("workflowType")' in window, "the view follows the address's workflowType parameter"
    assert re.search(r"const (\w+)=\w+\.GENAI,.*initialValue:\1", window), "and starts on GenAI without one"
    assert "`${e}_v${t}`" in code and "localStorage" in code  # remembered as mlflow.workflowType_v1
    for doc in (REPO / "docs" / "pipeline.md", REPO / "README.md"):
        assert UI_ADDRESS in doc.read_text(), doc
