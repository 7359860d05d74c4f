"""MLflow tracking against real stores: SQLite files in temporary folders, concurrent writers, a dead server."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient

from mair.common.tracking import (
    Tracker,
    TrackingWarning,
    eval_summaries,
    flatten_params,
    log_evaluation,
    tracking_uri,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised (migrated) SQLite store, created once; tests copy it (creating one takes ~10 s)."""
    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path: Path, template_db: Path) -> str:
    db = tmp_path / "mlflow.db"
    shutil.copy(template_db, db)
    return f"sqlite:///{db}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_round_trip(store: str, tmp_path: Path) -> None:
    artifact = tmp_path / "config.yaml"
    artifact.write_text("a: 1\n")
    tracker = Tracker(store)
    run_id = tracker.start("mair/demo/sr_classic_x2", "train sr_classic_x2", {"mair.scope": "demo"})
    assert run_id is not None
    tracker.log_params({"train.lr": 2e-4, "run.accum": 2})
    for step in (1, 2, 3):
        tracker.log_metrics({"loss": 1.0 / step, "lr": 2e-4}, step=step)
    tracker.set_tags({"mair.world_size": 2})
    tracker.log_artifact(artifact)
    tracker.end("FINISHED")
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.0002", "run.accum": "2"}
    assert run.data.tags["mair.world_size"] == "2" and run.data.tags["mair.scope"] == "demo"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "mair/demo/sr_classic_x2"
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()  # beside the database


def test_resumed_run_continues_and_keeps_params(store: str) -> None:
    first = Tracker(store)
    run_id = first.start("mair/demo/x", "train x")
    first.log_params({"a": 1})
    first.log_metrics({"loss": 3.0}, step=1)
    first.end("KILLED")
    second = Tracker(store)
    assert second.start("mair/demo/x", "train x", {"mair.resumed": 1}, run_id=run_id) == run_id
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.status == "RUNNING"
    second.log_params({"a": 1, "b": 2})  # "a" is already there: kept, "b" added
    second.log_metrics({"loss": 2.0}, step=2)
    second.end()
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.data.params == {"a": "1", "b": "2"} and run.data.tags["mair.resumed"] == "1"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
    # an id the store does not know starts a new run
    third = Tracker(store)
    new_id = third.start("mair/demo/x", "train x", run_id="0" * 32)
    assert new_id is not None and new_id != run_id


def test_three_processes_log_concurrently_to_a_fresh_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    script = textwrap.dedent(f"""
        import sys, warnings
        sys.path.insert(0, {str(REPO)!r})
        from mair.common.tracking import Tracker
        warnings.simplefilter("error")
        t = Tracker({uri!r}, lock_timeout=120)
        run_id = t.start("mair/demo/concurrent", "worker " + sys.argv[1], {{"worker": sys.argv[1]}})
        t.log_params({{"worker": sys.argv[1]}})
        for step in range(3):
            t.log_metrics({{"loss": float(step)}}, step=step)
        t.end()
        assert t.enabled, "tracking switched off"
        print(run_id)
    """)
    path = tmp_path / "worker.py"
    path.write_text(script)
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mair/demo/concurrent")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["worker"] for r in runs) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 3 for r in runs)


def test_unreachable_server_only_warns_once(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    tracker = Tracker(uri)
    start = time.monotonic()
    with pytest.warns(TrackingWarning, match="MLflow tracking off"):
        assert tracker.start("mair/demo/x", "train x") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        tracker.log_params({"a": 1})
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.log_artifact(tmp_path / "missing")
        tracker.end()
    assert time.monotonic() - start < 15
    assert not tracker.enabled and not tracker.active


def test_briefly_locked_store_waits_and_logs(store: str) -> None:
    tracker = Tracker(store)
    run_id = tracker.start("mair/demo/x", "train x")
    holder = sqlite3.connect(store[len("sqlite:///") :], timeout=0.1, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, holder.rollback)
    release.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tracker.log_metrics({"loss": 1.0}, step=1)  # another writer holds the database for 1.5 s
    finally:
        release.join()
        holder.close()
    assert tracker.enabled
    assert [m.value for m in MlflowClient(tracking_uri=store).get_metric_history(run_id, "loss")] == [1.0]


@pytest.mark.slow
def test_persistently_locked_store_warns_and_continues(store: str) -> None:
    # MLflow waits 20 s (its SQLite busy_timeout) before it reports the lock, hence slow.
    tracker = Tracker(store, lock_timeout=1.0)
    run_id = tracker.start("mair/demo/x", "train x")
    assert run_id is not None
    holder = sqlite3.connect(store[len("sqlite:///") :], timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.warns(TrackingWarning, match="locked"):
            tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.log_metrics({"loss": 2.0}, step=2)  # off now: returns at once, no error
    finally:
        holder.rollback()
        holder.close()
    assert not tracker.enabled


def test_disabled_tracker_never_touches_mlflow(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'never.db'}", enabled=False)
    assert tracker.start("e", "r") is None
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert not (tmp_path / "never.db").exists()


def test_log_evaluation(store: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "set5.csv"
    csv_file.write_text("name,psnr,ssim\nbaby.png,38.5,0.96\n")
    summary = {
        "experiment": "sr_classic_x2",
        "dataset": "set5",
        "variant": "MaIR+",
        "scope": "demo",
        "metrics": {"psnr": 38.5, "ssim": 0.962},
        "metric_space": "y",
        "crop_border": 2,
        "extra_metrics": {"rgb": {"psnr": 36.1, "ssim": 0.95}},
        "n_images": 5,
        "complete": True,
        "weights": "results/trained/demo/weights/sr_classic_x2.pth",
    }
    run_id = log_evaluation(summary, params={"protocol": "tile"}, artifacts=[csv_file], uri=store)
    assert run_id is not None
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.run_name == "eval set5+"
    assert run.data.metrics == pytest.approx(
        {"psnr": 38.5, "ssim": 0.962, "psnr_rgb": 36.1, "ssim_rgb": 0.95, "n_images": 5.0}
    )
    assert run.data.tags["mair.variant"] == "MaIR+" and run.data.tags["mair.kind"] == "evaluation"
    assert run.data.params == {"protocol": "tile"}
    assert client.get_experiment(run.info.experiment_id).name == "mair/demo/sr_classic_x2"
    assert [a.path for a in client.list_artifacts(run_id)] == ["set5.csv"]
    back = eval_summaries(store, "demo")
    assert len(back) == 1 and back[0]["run_id"] == run_id
    assert {k: back[0][k] for k in summary} == summary  # the report can read the summary back
    assert eval_summaries(store, "paper") == []


def test_uri_default_and_flatten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking_uri() == "http://example:5000"
    assert tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert flatten_params({"a": {"b": [1, 2], "c": {"d": None}}, "e": 1.5}) == {
        "a.b": "[1, 2]",
        "a.c.d": "None",
        "e": "1.5",
    }


# ------------------------------------------------------------------------------------------------ training runs


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("skimage")
    from mair.data.demo import build_demo

    root = tmp_path_factory.mktemp("demo-data")
    build_demo(root)
    return root


def _train(store: str, data: Path, *extra: str) -> int:
    from mair.cli import main

    return main(
        [
            "train",
            "sr_light_t_x2",
            "--scope",
            "demo",
            "--device",
            "cpu",
            "--data-dir",
            str(data),
            "--tracking-uri",
            store,
            "--log-every",
            "1",
            "--num-workers",
            "0",
            *extra,
        ]
    )


def test_training_is_tracked_and_a_resumed_run_continues_the_same_mlflow_run(
    store: str, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _train(store, demo_data, "--max-iters", "3") == 0
        run_dir = tmp_path / "runs" / "demo" / "sr_light_t_x2"
        run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        client = MlflowClient(tracking_uri=store)
        assert client.get_run(run_id).info.status == "FINISHED"
        assert _train(store, demo_data) == 0  # resumes at 4 and runs to the end (30), with validation
    finally:
        torch.set_num_threads(threads)
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train sr_light_t_x2"
    tags, params = run.data.tags, run.data.params
    assert tags["mair.experiment"] == "sr_light_t_x2" and tags["mair.scope"] == "demo"
    assert tags["mair.world_size"] == "1" and tags["mair.accum"] == "1" and tags["mair.effective_batch"] == "2"
    assert tags["mair.precision"] == "fp32" and "backend 'torch'" in tags["mair.scan_backend"]
    assert tags["mair.git_commit"] and tags["mair.best_iter"] == "30"
    assert params["run.accum"] == "1" and params["run.effective_batch"] == "2"
    assert params["train.optimizer.lr"] == "0.0002" and params["network.kwargs.d_state"] == "1"
    losses = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, 31))
    assert [m.step for m in client.get_metric_history(run_id, "val_psnr")] == [3, 30]  # end of each launch
    assert {m.key for m in client.get_metric_history(run_id, "best_psnr")} == {"best_psnr"}
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "sr_light_t_x2.pth", "logs"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "logs")} == {
        "logs/train_log.csv",
        "logs/val_log.csv",
        "logs/best.json",
    }
    assert tags["mlflow.source.name"] == "mair train" and tags["mlflow.source.type"] == "LOCAL"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The final weights are a logged model of this run, holding exactly the exported weights file.
    model = client.get_logged_model(tags["mair.model_id"])
    assert model.source_run_id == run_id and model.experiment_id == run.info.experiment_id
    assert model.name == "sr_light_t_x2" and str(model.status).endswith("READY")
    weights = tmp_path / "results" / "trained" / "demo" / "weights" / "sr_light_t_x2.pth"
    assert tags["mair.weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert {a.path for a in client.list_logged_model_artifacts(model.model_id)} == {"sr_light_t_x2.pth", "config.yaml"}

    # `mair evaluate` of these weights: a child run of the training, restored samples, metrics on the model.
    from mair.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert (
        main(
            [
                "evaluate",
                "sr_light_t_x2",
                "--scope",
                "demo",
                "--device",
                "cpu",
                "--weights",
                str(weights),
                "--datasets",
                "set5",
                "--data-dir",
                str(demo_data),
                "--results-dir",
                str(tmp_path / "results"),
                "--quiet",
            ]
        )
        == 0
    )
    (evaluation,) = client.search_runs([run.info.experiment_id], "tags.`mair.kind` = 'evaluation'")
    assert evaluation.data.tags["mlflow.parentRunId"] == run_id == evaluation.data.tags["mair.training_run"]
    assert evaluation.data.tags["mlflow.source.name"] == "mair evaluate"
    samples = {a.path for a in client.list_artifacts(evaluation.info.run_id, "samples")}
    assert 1 <= len(samples) <= 3 and all(a.startswith("samples/") and a.endswith(".png") for a in samples)
    on_disk = sorted((tmp_path / "results" / "demo" / "eval" / "sr_light_t_x2" / "samples" / "set5").glob("*.png"))
    assert {f"samples/{f.name}" for f in on_disk} == samples
    model = client.get_logged_model(model.model_id)
    psnr = {m.key: m.value for m in model.metrics}["set5/psnr"]
    assert psnr == pytest.approx(evaluation.data.metrics["psnr"])
    with (run_dir / "train_log.csv").open() as handle:
        assert [int(r["iter"]) for r in csv.DictReader(handle)] == list(range(1, 31))


def test_unreachable_store_does_not_stop_training(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.warns(TrackingWarning, match="MLflow tracking off"):
        code = _train(f"http://127.0.0.1:{_closed_port()}", demo_data, "--max-iters", "2", "--no-val")
    assert code == 0
    run_dir = tmp_path / "runs" / "demo" / "sr_light_t_x2"
    with (run_dir / "train_log.csv").open() as handle:
        assert [r["iter"] for r in csv.DictReader(handle)] == ["1", "2"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "models" / "net_g_2.pth").is_file()
    assert not (run_dir / "mlflow_run.json").exists()
