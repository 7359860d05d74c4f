"""The dataset catalog (params/datasets.yaml), its loader, data paths, the lock file and `mair data list`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, shared_path

from mair.cli import main
from mair.data import paths
from mair.data.catalog import CatalogError, infer_format, load_catalog, parse_catalog
from mair.data.lockfile import LockFile

IDS = [
    "div2k", "flickr2k", "df2k", "bsd400", "wed", "dfwb", "sidd_medium", "sidd_val", "dnd", "gopro", "hide",
    "reside_its", "reside_ots", "reside_6k", "sots_indoor", "sots_outdoor", "set5", "set14", "b100",
    "urban100", "manga109", "cbsd68", "kodak24", "mcmaster",
]  # fmt: skip
SHIPPED = REPO / "params" / "datasets.yaml"


@pytest.fixture(scope="module")
def catalog() -> Any:
    return load_catalog(SHIPPED)


def test_shipped_catalog_has_every_dataset_of_the_contract(catalog: Any) -> None:
    assert sorted(catalog.ids()) == sorted(IDS)
    assert catalog.get("df2k").derived_from == ("div2k", "flickr2k")
    assert catalog.get("dfwb").derived_from == ("div2k", "flickr2k", "bsd400", "wed")
    assert catalog.expand(["df2k", "div2k", "set5"]) == ["div2k", "flickr2k", "set5"]
    for dataset in catalog:
        assert dataset.tasks and dataset.roles and dataset.licence and dataset.prepared_layout
        if dataset.is_manual:
            assert "mair data add" in (dataset.manual_instructions or "")
    assert {d.id for d in catalog if d.access == "login"} == {"dnd", "manga109"}
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        catalog.get("nope")


def test_shipped_catalog_values_come_from_the_reference(catalog: Any) -> None:
    """Every size and checksum in the catalog appears in the team's reference registry (never guessed)."""
    reference = shared_path("reference")
    text = (reference / "datasets.yaml").read_text()
    text += "".join(p.read_text() for p in sorted((reference / "manifests").glob("*.txt")))
    numbers = set(re.findall(r"\d+", text))
    for dataset in catalog:
        for spec in dataset.all_files():
            for algorithm in ("sha256", "sha1", "md5"):
                value = getattr(spec, algorithm)
                if value is not None:
                    assert value in text, f"{dataset.id}/{spec.name}: {algorithm} {value} not in the reference"
            if spec.size is not None:
                assert str(spec.size) in numbers, f"{dataset.id}/{spec.name}: size {spec.size} not in the reference"
    assert catalog.get("div2k").files[0].sha256 == "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"
    assert catalog.get("flickr2k").files[0].sha256 is None  # not published: the lock file records it


def test_experiments_only_use_catalogued_datasets_and_folders(catalog: Any) -> None:
    """Each dataset an experiment reads is in the catalog, lists the experiment, has the folders it reads."""
    files = sorted((REPO / "params" / "experiments").glob("*.yaml"))
    if not files:
        pytest.skip("no params/experiments/*.yaml in this checkout")
    for path in files:
        experiment = yaml.safe_load(path.read_text())
        refs = [("train", d) for d in experiment["train"]["datasets"]]
        if (experiment.get("val") or {}).get("dataset"):
            refs.append(("val", experiment["val"]["dataset"]))
        refs += [("test", d) for d in (experiment.get("test") or {}).get("datasets", [])]
        for role, ref in refs:
            dataset = catalog.get(ref["id"])
            where = f"{path.name}: {role} {ref['id']}"
            assert experiment["id"] in dataset.tasks, where
            assert role in dataset.roles, where
            for key in ("gt", "lq"):
                if ref.get(key):
                    assert ref[key] in dataset.prepared_layout, f"{where}: {ref[key]}"
            for source in dataset.derived_from:
                assert experiment["id"] in catalog.get(source).tasks, f"{where} via {source}"


def _write(tmp_path: Path, datasets: Any, name: str = "datasets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"schema_version": 1, "datasets": datasets}, sort_keys=False))
    return path


def _toy(**extra: Any) -> dict[str, Any]:
    entry = {
        "name": "Toy",
        "role": ["test"],
        "tasks": ["t"],
        "access": "open",
        "licence": "x",
        "files": [{"name": "a.zip", "urls": ["https://example.invalid/a.zip"], "sha256": "a" * 64}],
        "prepared_layout": {"HR": 1},
    }
    entry.update(extra)
    return entry


def _one(name: str = "a.zip", urls: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A toy dataset with one file."""
    spec = {"name": name, "urls": ["https://x/a"] if urls is None else urls, **extra}
    return {"toy": _toy(files=[spec])}


F0 = r"datasets\.toy\.files\[0\]"


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        (
            {"toy": {k: v for k, v in _toy().items() if k != "licence"}},
            r"datasets\.toy: 'licence' is a required",
        ),
        ({"toy": _toy(role=["training"])}, r"datasets\.toy\.role\[0\]"),
        (_one(sha256="xyz"), rf"{F0}\.sha256: 'xyz' does not match"),
        (_one("../a.zip"), rf"{F0}\.name"),
        (_one("/etc/a.zip"), rf"{F0}\.name"),
        (_one(urls=["ftp://x/a"]), rf"{F0}\.urls\[0\]"),
        (_one(urls=[]), rf"{F0}\.urls: an 'open' file"),
        ({"toy": _toy(access="login")}, r"datasets\.toy\.manual\.instructions: required"),
        ({"toy": _toy(files=[], derived_from=["nope"])}, r"datasets\.toy\.derived_from: unknown dataset"),
        ({"toy": _toy(size=3)}, r"datasets\.toy: Additional properties .*'size'"),
        ({"Toy": _toy()}, r"datasets: 'Toy' does not match"),
        (
            {
                "toy": _toy(
                    alternatives={"b": {"description": "d", "files": [{"name": "a.zip", "urls": ["https://x"]}]}}
                )
            },
            r"datasets\.toy: file names must be unique",
        ),
    ],
)
def test_catalog_errors_name_file_and_key(tmp_path: Path, datasets: Any, message: str) -> None:
    path = _write(tmp_path, datasets)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(path)
    assert str(info.value).startswith(str(path))


def test_catalog_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match=r"schema_version"):
        parse_catalog({"schema_version": 2, "datasets": {"toy": _toy()}}, Path("x.yaml"))


def test_catalog_resolved_from_params_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, {"only": _toy()})
    monkeypatch.setenv("MAIR_PARAMS_DIR", str(tmp_path))
    catalog = load_catalog()
    assert catalog.ids() == ["only"] and catalog.path == tmp_path / "datasets.yaml"
    assert catalog.get("only").files[0].format == "zip"
    monkeypatch.delenv("MAIR_PARAMS_DIR")
    assert load_catalog().path == SHIPPED


def test_infer_format() -> None:
    cases = {"a.zip": "zip", "a.TAR": "tar", "a.tgz": "tar.gz", "a.tar.bz2": "tar.bz2", "a.tar.xz": "tar.xz"}
    cases |= {"x.rar": "rar", "0001.mat": "file", "img.png": "file"}
    assert {name: infer_format(name) for name in cases} == cases


def test_list_json_has_all_ids(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAIR_PARAMS_DIR", raising=False)
    assert main(["data", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    records = {r["id"]: r for r in listing["datasets"]}
    assert sorted(records) == sorted(IDS)
    assert records["div2k"]["checksums_known"] and records["div2k"]["total_size"] == 5130755626
    assert records["dnd"]["access"] == "login" and records["reside_its"]["access"] == "manual"
    assert records["gopro"]["checksums"] == "none (lock)"
    assert main(["data", "list"]) == 0
    text = capsys.readouterr().out
    assert all(re.search(rf"^{i}\s", text, re.M) for i in IDS)


def test_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIR_DATA_DIR", str(tmp_path / "root"))
    assert paths.data_dir() == tmp_path / "root"
    assert paths.raw_dir("div2k") == tmp_path / "root/raw/div2k"
    assert paths.extracted_dir("div2k") == tmp_path / "root/extracted/div2k"
    assert paths.prepared_dir("set5") == tmp_path / "root/prepared/set5"
    assert paths.prepared_dir("set5", "demo") == tmp_path / "root/demo/prepared/set5"
    assert paths.prepared_dir("set5", "paper", tmp_path / "other") == tmp_path / "other/prepared/set5"
    assert paths.lock_path() == tmp_path / "root/data.lock.json"
    assert not paths.is_prepared("set5", "demo")
    marker = paths.prepared_marker("set5", "demo")
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert paths.is_prepared("set5", "demo") and not paths.is_prepared("set5", "paper")
    monkeypatch.delenv("MAIR_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert paths.data_dir() == tmp_path / "data"
    with pytest.raises(ValueError, match="invalid dataset id"):
        paths.raw_dir("../etc")
    with pytest.raises(ValueError, match="invalid scope"):
        paths.prepared_dir("set5", "test")


def test_lock_file_keeps_first_recording(tmp_path: Path) -> None:
    lock = LockFile(tmp_path / "data.lock.json")
    first = lock.record("toy", "a.zip", {"sha256": "a" * 64, "size": 3, "origin": "first-download", "source": "u1"})
    again = lock.record("toy", "a.zip", {"sha256": "a" * 64, "size": 3, "origin": "catalog", "source": "u2"})
    assert again["origin"] == "first-download" and again["source"] == "u1"
    assert again["recorded"] == first["recorded"]
    with pytest.raises(ValueError, match="differs from the one recorded"):
        lock.record("toy", "a.zip", {"sha256": "b" * 64, "size": 3})
    assert lock.get("toy", "a.zip")["sha256"] == "a" * 64
    (tmp_path / "data.lock.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        lock.entries()


def test_registration_does_not_import_torch() -> None:
    code = (
        "import argparse, sys\n"
        "from mair.data import cli\n"
        "parser = argparse.ArgumentParser()\n"
        "cli.register(parser.add_subparsers())\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_demo_command_builds_the_demo_scope(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("mair.data.demo")
    root = tmp_path / "data"
    assert main(["data", "demo", "--data-dir", str(root)]) == 0
    assert paths.is_prepared("set5", "demo", root) and paths.is_prepared("gopro", "demo", root)
    capsys.readouterr()
    assert main(["data", "status", "--scope", "demo", "--json", "--data-dir", str(root)]) == 0
    records = {r["id"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert records["set5"]["prepared"] and records["set5"]["images"]["HR"]["found"]
    assert not records["set5"]["downloaded"]
