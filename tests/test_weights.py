"""The published checkpoints: the catalog params/weights.yaml, `mair weights`, and the pipeline with
`weights=published`.

The "published" files here are demo-network checkpoints saved under the official names and served by a real
HTTP server on 127.0.0.1 (MAIR_WEIGHTS_MIRROR). Google Drive cannot be reached from CI: the one Drive test
replaces gdown's two functions at our boundary (mair.data.gdrive) and checks what they were asked for and how
their failures read.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from mair.cli import main

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_FILES = {
    "sr_classic_x2": "MaIR_SR_x2.pth",
    "sr_classic_x3": "MaIR_SR_x3.pth",
    "sr_classic_x4": "MaIR_SR_x4.pth",
    "sr_light_s_x2": "MaIR_S_lightSR_x2.pth",
    "sr_light_s_x3": "MaIR_S_lightSR_x3.pth",
    "sr_light_s_x4": "MaIR_S_lightSR_x4.pth",
    "sr_light_t_x2": "MaIR_T_lightSR_x2.pth",
    "sr_light_t_x3": "MaIR_T_lightSR_x3.pth",
    "sr_light_t_x4": "MaIR_T_lightSR_x4.pth",
    "dn_color_s15": "MaIR_CDN_s15.pth",
    "dn_color_s25": "MaIR_CDN_s25.pth",
    "dn_color_s50": "MaIR_CDN_s50.pth",
    "dn_real": "MaIR_RealDN.ckpt",
    "deblur_motion": "MaIR_MotionDeblur.ckpt",
    "dehaze_its": "MaIR_DH_ITS.pth",
    "dehaze_ots": "MaIR_DH_OTS.pth",
    "dehaze_r6k": "MaIR_DH_R6K.pth",
}
FOLDER = "1YYmIVTyynLg-Kfu-mviq24WdVkJu-S3M"


def demo_checkpoint(exp: str, path: Path, seed: int = 0) -> Path:
    """A checkpoint of ``exp``'s demo network in the official layout ({'params': state_dict})."""
    import torch

    from mair.experiments import load
    from mair.models import from_official
    from mair.models.checkpoint import save_weights

    net = load(exp, "demo").network
    torch.manual_seed(seed)
    save_weights(from_official(net.arch, **net.constructor_kwargs()), path)
    return path


class Mirror:
    """A loopback HTTP server of one folder (python's http.server), recording the paths asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.requests = folder, []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                mirror.requests.append(self.path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/published"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    (tmp_path / "mirror" / "published").mkdir(parents=True)
    server = Mirror(tmp_path / "mirror")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("MAIR_DATA_DIR", str(root))
    monkeypatch.delenv("MAIR_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("MAIR_PARAMS_DIR", raising=False)
    return root


def lock(root: Path) -> dict[str, Any]:
    path = root / "data.lock.json"
    return json.loads(path.read_text())["files"] if path.is_file() else {}


# ------------------------------------------------------------------------------------------------ catalog


def test_catalog_lists_the_17_official_files_and_the_drive_folder() -> None:
    from mair.experiments import experiment_ids
    from mair.weights.catalog import load_weights_catalog

    catalog = load_weights_catalog()
    assert {e: w.file for e, w in catalog.entries.items()} == OFFICIAL_FILES
    assert set(catalog.ids()) == set(experiment_ids())
    assert catalog.gdrive_folder == FOLDER
    assert all(w.sha256 is None for w in catalog.entries.values())  # none published: recorded at download


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["weights"]["sr_classic_x2"].update(file="../evil.pth"), "weights.sr_classic_x2.file"),
        (lambda d: d["weights"].update(sr_classic_x9={"file": "x.pth"}), "weights.sr_classic_x9: not an experiment"),
        (lambda d: d["weights"]["sr_classic_x3"].update(file="MaIR_SR_x2.pth"), "already the file of sr_classic_x2"),
        (lambda d: d["weights"]["dn_real"].update(sha256="abc"), "weights.dn_real.sha256"),
    ],
)
def test_catalog_errors_name_the_file_and_key(tmp_path: Path, change: Any, message: str) -> None:
    from mair.data.catalog import CatalogError
    from mair.weights.catalog import load_weights_catalog

    doc = yaml.safe_load((REPO / "params" / "weights.yaml").read_text())
    change(doc)
    path = tmp_path / "weights.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CatalogError, match=message) as info:
        load_weights_catalog(path)
    assert str(info.value).startswith(str(path))


# ------------------------------------------------------------------------------------------------ add, forget


def test_add_refuses_another_experiments_checkpoint_naming_both(data: Path, tmp_path: Path, capsys) -> None:
    theirs = demo_checkpoint("sr_classic_x3", tmp_path / "downloaded.pth")
    assert main(["weights", "add", "sr_classic_x2", "--scope", "demo", "--from", str(theirs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "sr_classic_x3" in err and "sr_classic_x2" in err and "not of sr_classic_x2" in err
    assert not (data / "demo" / "weights" / "published" / "MaIR_SR_x2.pth").exists()
    assert lock(data) == {}  # nothing recorded

    # An official name of another experiment is refused too, even when the shapes agree (sigma 15 vs 25).
    named = demo_checkpoint("dn_color_s25", tmp_path / "MaIR_CDN_s25.pth")
    assert main(["weights", "add", "dn_color_s15", "--scope", "demo", "--from", str(named)]) == 2
    assert "published file of dn_color_s25" in capsys.readouterr().err
    assert lock(data) == {}


def test_add_registers_then_forget_removes(data: Path, tmp_path: Path, capsys) -> None:
    mine = demo_checkpoint("dehaze_r6k", tmp_path / "r6k.pth")
    assert main(["weights", "add", "dehaze_r6k", "--scope", "demo", "--from", str(mine)]) == 0
    final = data / "demo" / "weights" / "published" / "MaIR_DH_R6K.pth"
    assert final.read_bytes() == mine.read_bytes()
    entry = lock(data)["demo/weights/published/MaIR_DH_R6K.pth"]
    assert entry["origin"] == "first-add" and len(entry["sha256"]) == 64

    other = demo_checkpoint("dehaze_r6k", tmp_path / "other.pth", seed=1)  # fits, but other bytes
    assert main(["weights", "add", "dehaze_r6k", "--scope", "demo", "--from", str(other)]) == 2
    assert "differs from the one recorded" in capsys.readouterr().err
    assert final.read_bytes() == mine.read_bytes()

    assert main(["weights", "forget", "dehaze_r6k", "--scope", "demo"]) == 0
    assert not final.exists() and lock(data) == {}
    assert main(["weights", "add", "dehaze_r6k", "--scope", "demo", "--from", str(other)]) == 0


def test_add_refuses_an_unsafe_pickle(data: Path, tmp_path: Path, capsys) -> None:
    import torch

    evil = tmp_path / "MaIR_DH_R6K.pth"
    torch.save({"params": {"x": torch.zeros(1)}, "note": object.__new__(Mirror)}, evil)
    assert main(["weights", "add", "dehaze_r6k", "--scope", "demo", "--from", str(evil)]) == 2
    assert "weights_only" in capsys.readouterr().err
    assert lock(data) == {}


# ------------------------------------------------------------------------------------------------ download


def test_download_from_the_mirror_records_then_verifies(
    data: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MAIR_WEIGHTS_MIRROR", mirror.url)
    served = mirror.folder / "published"
    for exp in ("dehaze_r6k", "sr_classic_x2"):
        demo_checkpoint(exp, served / OFFICIAL_FILES[exp])
    manifest = data / "manifest.json"
    args = ["weights", "download", "dehaze_r6k", "sr_classic_x2", "--scope", "demo", "--quiet"]
    assert main([*args, "--manifest", str(manifest)]) == 0
    folder = data / "demo" / "weights" / "published"
    entries = lock(data)
    for exp in ("dehaze_r6k", "sr_classic_x2"):
        name = OFFICIAL_FILES[exp]
        assert (folder / name).read_bytes() == (served / name).read_bytes()
        assert entries[f"demo/weights/published/{name}"]["origin"] == "first-download"
        assert (
            json.loads(manifest.read_text())["weights"][exp]["sha256"]
            == entries[f"demo/weights/published/{name}"]["sha256"]
        )
    assert sorted(p.name for p in folder.iterdir()) == ["MaIR_DH_R6K.pth", "MaIR_SR_x2.pth"]  # no leftovers

    # A second run does nothing: no request, same files.
    mirror.requests.clear()
    assert main(args) == 0
    assert mirror.requests == []

    # The mirror's copy changes after the checksum was recorded: refused, nothing at the final path.
    (folder / "MaIR_DH_R6K.pth").unlink()
    demo_checkpoint("dehaze_r6k", served / "MaIR_DH_R6K.pth", seed=3)  # loads fine, other bytes
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "MaIR_DH_R6K.pth" in err
    assert not (folder / "MaIR_DH_R6K.pth").exists()
    assert not list(folder.glob("*.part"))
    assert main(["weights", "status", "dehaze_r6k", "--scope", "demo"]) == 1


def test_download_refuses_a_file_of_another_network_before_recording(
    data: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MAIR_WEIGHTS_MIRROR", mirror.url)
    demo_checkpoint("sr_classic_x4", mirror.folder / "published" / "MaIR_SR_x2.pth")  # a wrong file served
    assert main(["weights", "download", "sr_classic_x2", "--scope", "demo", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint of sr_classic_x4, not of sr_classic_x2" in err
    assert lock(data) == {}  # no first-seen checksum for a file that is not the right one
    assert not (data / "demo" / "weights" / "published" / "MaIR_SR_x2.pth").exists()


def test_download_from_google_drive_goes_through_gdown(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """gdown (replaced at our boundary: Google is out of reach) lists the catalog's folder and writes each file
    to the staging path; a Drive refusal becomes one line with the manual-download instructions."""
    from mair.data import gdrive

    payload = demo_checkpoint("dehaze_its", tmp_path / "its.pth").read_bytes()
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_folder(**kwargs: Any) -> list[Any]:
        calls.append(("folder", kwargs))
        from collections import namedtuple

        item = namedtuple("GoogleDriveFileToDownload", "id path local_path")
        return [
            item("1ItsFileId_abcdef", "MaIR/Dehaze/MaIR_DH_ITS.pth", "x"),
            item("1OtsFileId_abcdef", "MaIR/Dehaze/MaIR_DH_OTS.pth", "y"),
        ]

    def fake_download(**kwargs: Any) -> str:
        calls.append(("file", kwargs))
        if kwargs["id"] == "1OtsFileId_abcdef":
            raise RuntimeError(
                "Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this "
                "file recently. Please try accessing the file again later.\n\nYou may still ..."
            )
        Path(kwargs["output"]).write_bytes(payload)
        return kwargs["output"]

    monkeypatch.setattr(gdrive, "gdown_download_folder", fake_folder)
    monkeypatch.setattr(gdrive, "gdown_download", fake_download)
    assert main(["weights", "download", "dehaze_its", "dehaze_ots", "--scope", "demo", "--quiet"]) == 1
    folder = data / "demo" / "weights" / "published"
    assert (folder / "MaIR_DH_ITS.pth").read_bytes() == payload
    assert not (folder / "MaIR_DH_OTS.pth").exists()
    assert [c[0] for c in calls] == ["folder", "file", "file"]  # the folder is listed once
    assert calls[0][1]["id"] == FOLDER and calls[0][1]["skip_download"] is True
    assert calls[1][1]["id"] == "1ItsFileId_abcdef"
    assert calls[1][1]["output"] == str(folder / "MaIR_DH_ITS.pth.part") and calls[1][1]["resume"] is True
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "MaIR_DH_OTS.pth" in errors[0] and "too many users" in errors[0]
    assert f"https://drive.google.com/drive/folders/{FOLDER}" in errors[0]
    assert "mair weights add dehaze_ots --scope demo --from PATH" in errors[0]
    assert set(lock(data)) == {"demo/weights/published/MaIR_DH_ITS.pth"}


def test_real_gdown_offline_fails_with_one_line(data: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The real gdown, with every request sent to a closed local port: its failure is one line with the folder's
    address and what to do by hand; nothing is written."""
    pytest.importorskip("gdown")
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    assert main(["weights", "download", "dehaze_its", "--timeout", "5", "--quiet"]) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "Traceback" not in errors[0]
    assert f"cannot list Google Drive folder {FOLDER}" in errors[0]
    assert "mair weights add dehaze_its --from PATH" in errors[0]
    assert not (data / "weights").exists() or not any((data / "weights").rglob("*.pth"))
    assert lock(data) == {}


def test_list_json_reports_file_source_size_checksum_presence(
    data: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MAIR_WEIGHTS_MIRROR", mirror.url)
    demo_checkpoint("dn_real", mirror.folder / "published" / "MaIR_RealDN.ckpt")
    assert main(["weights", "download", "dn_real", "--scope", "demo", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["weights", "list", "--json", "--scope", "demo"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["experiment"]: r for r in doc["weights"]}
    assert len(rows) == 17 and doc["source"]["gdrive_folder"] == FOLDER
    real = rows["dn_real"]
    assert real["file"] == "MaIR_RealDN.ckpt" and real["present"] is True and real["source"].startswith(mirror.url)
    assert real["size"] == (mirror.folder / "published" / "MaIR_RealDN.ckpt").stat().st_size
    assert len(real["sha256"]) == 64 and real["checksum_origin"] == "first-download"
    assert rows["dehaze_its"]["present"] is False and rows["dehaze_its"]["sha256"] is None


# ------------------------------------------------------------------------------------------------ pipeline

needs_snakemake = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
needs_mair = pytest.mark.skipif(shutil.which("mair") is None, reason="the mair command is not installed")


@needs_snakemake
def test_paper_dry_run_with_published_weights_plans_no_training(tmp_path: Path) -> None:
    from test_workflow import copy_repo, parse_dry_run, snakemake

    work = copy_repo(tmp_path / "repo")
    start = time.monotonic()
    proc = snakemake(work, "-n", "-p", "reproduce_tables", "--config", "scope=paper", "weights=published")
    elapsed = time.monotonic() - start
    jobs = parse_dry_run(proc.stdout)
    rules = [j["rule"] for j in jobs]
    assert "train" not in rules and rules.count("fetch_weights") == 1
    evaluations = [j for j in jobs if j["rule"].startswith("evaluate_")]
    assert len(evaluations) >= 17
    for job in evaluations:
        assert all(f.startswith("results/published/paper/eval/") for f in job["output"])
        assert "--weights data/weights/published/MaIR_" in job["shell"]
    tables = next(j for j in jobs if j["rule"] == "tables")
    assert "--weights published" in tables["shell"] and "--results-dir results/published" in tables["shell"]
    fetch = next(j for j in jobs if j["rule"] == "fetch_weights")
    assert fetch["shell"].startswith("mair weights download sr_classic_x2 ")
    assert elapsed < 60

    sr = [
        j["rule"]
        for j in parse_dry_run(
            snakemake(work, "-n", "-p", "reproduce_sr", "--config", "scope=paper", "weights=published").stdout
        )
    ]
    assert "train" not in sr and "fetch_weights" in sr
    assert {r for r in sr if r.startswith("evaluate_")} == {
        f"evaluate{p}_sr_classic_x{s}" for p in ("", "_plus") for s in (2, 3, 4)
    }


@needs_snakemake
def test_a_wrong_weights_setting_is_one_clear_line(tmp_path: Path) -> None:
    from test_workflow import copy_repo, snakemake

    work = copy_repo(tmp_path / "repo")
    proc = snakemake(work, "-n", "--config", "weights=publishd", check=False)
    assert proc.returncode != 0
    assert "invalid pipeline config: weights: 'publishd' is not one of ['trained', 'published']" in (
        proc.stdout + proc.stderr
    )


@needs_snakemake
@needs_mair
def test_fetch_job_stops_with_instructions_when_drive_cannot_be_reached(tmp_path: Path) -> None:
    """Offline and without a mirror, the fetch job fails (after its retry) and its log says what to do by hand;
    no record is written, so the evaluations never start on missing weights."""
    from test_workflow import copy_repo, run_env, snakemake

    work = copy_repo(tmp_path / "repo")
    target = "results/published/demo/weights/published.json"
    proc = snakemake(
        work,
        "--cores",
        "1",
        target,
        "--config",
        "weights=published",
        "experiments=[dehaze_r6k]",
        "retries={download: 0}",
        env=run_env(work),
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    log = (work / "results/published/demo/logs/fetch_weights.log").read_text()
    assert "cannot reach Google Drive" in log and "mair weights add dehaze_r6k --scope demo --from PATH" in log
    assert "Traceback" not in log
    assert not (work / target).exists()


@needs_snakemake
@needs_mair
@pytest.mark.slow
def test_demo_pipeline_with_published_weights_end_to_end(tmp_path: Path, mirror: Mirror) -> None:
    """weights=published in the demo scope, for real: the DAG fetches the mirror's files, records their checksums,
    evaluates, writes tables whose published-weights rows are filled; a second run does nothing."""
    from test_workflow import copy_repo, parse_dry_run, run_env, snakemake

    exps = ["dehaze_r6k", "dn_real"]  # dn_real: the paper's SIDD number is known, so the difference is filled
    for exp in exps:
        demo_checkpoint(exp, mirror.folder / "published" / OFFICIAL_FILES[exp])
    work = copy_repo(tmp_path / "repo")
    env = run_env(work, MAIR_WEIGHTS_MIRROR=mirror.url)
    config = ["--config", "weights=published", f"experiments=[{','.join(exps)}]"]
    run = snakemake(work, "--cores", "2", "reproduce_tables", *config, env=env, timeout=1200)
    rules = [j["rule"] for j in parse_dry_run(run.stdout + run.stderr)]
    assert "train" not in rules and rules.count("fetch_weights") == 1

    entries = lock(work / "data")
    for exp in exps:
        name = OFFICIAL_FILES[exp]
        assert entries[f"demo/weights/published/{name}"]["origin"] == "first-download"
        assert (work / "data" / "demo" / "weights" / "published" / name).is_file()
    summary = json.loads((work / "results/published/demo/eval/dehaze_r6k/reside_6k.json").read_text())
    assert summary["complete"] and summary["weights"].endswith("data/demo/weights/published/MaIR_DH_R6K.pth")
    assert summary["weights_source"] == "published"
    assert not (work / "results" / "trained").exists()  # never mixed with trained weights' results

    import pandas as pd

    for name, column in (("dehaze", "RESIDE-6K PSNR"), ("dn_real", "SIDD PSNR")):
        table = pd.read_csv(work / f"results/published/demo/tables/{name}.csv")
        assert table[table["row"] == "published weights"][column].notna().any(), table.to_string()  # filled
        assert not (table["row"] == "ours").any()
    table = pd.read_csv(work / "results/published/demo/tables/dn_real.csv")
    rows = table[table["method"] == "MaIR"].set_index("row")["SIDD PSNR"]
    assert rows["difference"] == pytest.approx(rows["published weights"] - rows["published"], abs=1e-4)
    assert "published weights" in (work / "results/published/demo/tables/tables.md").read_text()

    again = snakemake(work, "--cores", "2", "reproduce_tables", *config, env=env)
    assert "Nothing to be done" in again.stderr


# ------------------------------------------------------------------------------------------------ DVC

needs_dvc = pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed")


def _committed_copy(tmp_path: Path, **settings: str) -> Path:
    """A fresh git repository of the project (committed, with a git identity) whose params/pipeline.yaml has the
    one-word ``settings`` (weights, experiments...)."""
    import subprocess

    from test_dvc import _set_scope
    from test_workflow import copy_repo

    work = copy_repo(tmp_path / "repo")
    for key, value in settings.items():
        _set_scope(work, value, key)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    for key, value in (("user.name", "t"), ("user.email", "t@example.invalid")):
        subprocess.run(["git", "config", key, value], cwd=work, check=True)
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", "commit", "-qm", "fresh"], cwd=work, check=True)
    return work


@needs_dvc
@needs_snakemake
@needs_mair
def test_dvc_dry_repro_with_published_weights_plans_no_training(tmp_path: Path) -> None:
    """The one dvc.yaml with `weights: published`: `dvc repro --dry --force` plans every stage with paths under
    results/published/demo/, and the weights stages' commands make Snakemake plan one fetch and no training."""
    import shlex
    import subprocess

    from test_dvc import parse_stage_command, weights_stage
    from test_workflow import parse_dry_run, run_env, snakemake

    work = _committed_copy(tmp_path, weights="published")
    proc = subprocess.run(
        ["dvc", "repro", "--dry", "--force"], cwd=work, env=run_env(work), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    planned = dict(re.findall(r"Running stage '([^']+)':\n> (.+)", proc.stdout))
    assert len(planned) == 36 and set(planned) == {"data", "tables"} | {
        stage for e in OFFICIAL_FILES for stage in (weights_stage(e), f"evaluate@{e}")
    }
    paths = [w for cmd in planned.values() for w in shlex.split(cmd) if w.startswith("results")]
    assert paths and all(p.startswith("results/published/demo/") for p in paths), paths
    commands = [parse_stage_command(planned[weights_stage(e)]) for e in OFFICIAL_FILES]
    targets = [t for c in commands for t in c["targets"]]
    assert targets == [f"results/published/demo/weights/{e}.pth" for e in OFFICIAL_FILES]
    rules = commands[0]["rules"]
    assert all(c["rules"] == rules and not c["config"] for c in commands)  # weights: read from the params file
    # What those commands run: Snakemake reads weights: published from the same file and plans no training.
    jobs = parse_dry_run(snakemake(work, "-n", "-p", "--allowed-rules", *rules, "--", *targets).stdout)
    planned_rules = [j["rule"] for j in jobs]
    assert "train" not in planned_rules and planned_rules.count("fetch_weights") == 1
    assert planned_rules.count("published_weights") == 17


@needs_dvc
@needs_snakemake
@needs_mair
@pytest.mark.slow
def test_dvc_experiment_with_published_weights(tmp_path: Path, mirror: Mirror) -> None:
    """`dvc exp run -S params/pipeline.yaml:weights=published evaluate@dehaze_r6k` in a fresh clone, the file
    served by a loopback mirror: data, the fetched weights, the evaluation, no training, results only under
    results/published/demo/; then `dvc repro` of the same stage has nothing to do."""
    import subprocess

    from test_dvc import weights_stage
    from test_workflow import run_env

    demo_checkpoint("dehaze_r6k", mirror.folder / "published" / OFFICIAL_FILES["dehaze_r6k"])
    work = _committed_copy(tmp_path, experiments="[dehaze_r6k]")  # committed: weights: trained
    env = run_env(work, MAIR_WEIGHTS_MIRROR=mirror.url)
    proc = subprocess.run(
        ["dvc", "exp", "run", "-n", "published", "-S", "params/pipeline.yaml:weights=published", "evaluate@dehaze_r6k"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    for stage in ("data", weights_stage("dehaze_r6k"), "evaluate@dehaze_r6k"):
        assert f"Running stage '{stage}'" in proc.stdout
    lock_doc = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert set(lock_doc) == {"data", "evaluate@dehaze_r6k"}
    lock_doc = yaml.safe_load((work / "workflow" / "dvc.lock").read_text())["stages"]
    assert set(lock_doc) == {"weights_dehaze_r6k"}
    assert [o["path"] for o in lock_doc["weights_dehaze_r6k"]["outs"]] == [
        "results/published/demo/weights/dehaze_r6k.pth"
    ]
    summary = json.loads((work / "results/published/demo/eval/dehaze_r6k/reside_6k.json").read_text())
    assert summary["complete"] and summary["weights_source"] == "published"
    assert summary["weights"].endswith("data/demo/weights/published/MaIR_DH_R6K.pth")
    fetched = work / "data" / "demo" / "weights" / "published" / "MaIR_DH_R6K.pth"
    linked = work / "results/published/demo/weights/dehaze_r6k.pth"
    assert linked.read_bytes() == fetched.read_bytes()
    assert lock(work / "data")["demo/weights/published/MaIR_DH_R6K.pth"]["origin"] == "first-download"
    assert not (work / "results" / "trained").exists() and not (work / "runs").exists()  # nothing trained
    assert "published" in (work / "params" / "pipeline.yaml").read_text().split("\nweights: ", 1)[1][:10]
    again = subprocess.run(
        ["dvc", "repro", "evaluate@dehaze_r6k"], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout


# ------------------------------------------------------------------------------------------------ tables


def test_tables_label_published_weights_and_keep_mlflow_runs_apart(tmp_path: Path, monkeypatch) -> None:

    import pandas as pd

    from mair.common import tracking
    from mair.report.collect import read_mlflow
    from mair.report.write import write_report

    eval_dir = tmp_path / "results" / "published" / "paper" / "eval" / "dn_real"
    eval_dir.mkdir(parents=True)
    (eval_dir / "sidd.json").write_text(
        json.dumps(
            {
                "experiment": "dn_real",
                "dataset": "sidd",
                "variant": "MaIR",
                "scope": "paper",
                "complete": True,
                "n_images": 2,
                "metrics": {"psnr": 39.5, "ssim": 0.95},
                "weights_source": "published",
            }
        )
    )
    result = write_report("paper", tmp_path / "results" / "published", weights="published", figures=False)
    table = pd.read_csv(result.out_dir / "dn_real.csv")
    rows = table[table["method"] == "MaIR"].set_index("row")["SIDD PSNR"]
    assert rows["published weights"] == 39.5 and rows["difference"] == pytest.approx(39.5 - rows["published"])
    text = (result.out_dir / "dn_real.md").read_text()
    assert "MaIR (published weights)" in text and "Δ published weights − paper" in text and "(ours)" not in text
    assert "published checkpoints" in (result.out_dir / "dn_real.tex").read_text()

    runs = [  # one run of each kind
        {
            "experiment": "dn_real",
            "dataset": "sidd",
            "variant": "MaIR",
            "metrics": {"psnr": 30.0},
            "complete": True,
            "run_id": "trained-run",
        },
        {
            "experiment": "dn_real",
            "dataset": "sidd",
            "variant": "MaIR",
            "metrics": {"psnr": 39.9},
            "complete": True,
            "run_id": "published-run",
            "weights_source": "published",
        },
    ]
    monkeypatch.setattr(tracking, "eval_summaries", lambda uri, scope: runs)  # what the store returns
    for weights, value in (("published", 39.9), ("trained", 30.0)):
        frame = read_mlflow("sqlite:///x.db", "paper", weights=weights).frame
        psnr = frame[(frame["dataset"] == "SIDD") & (frame["metric"] == "PSNR")]["value"]
        assert list(psnr) == [pytest.approx(value)]
