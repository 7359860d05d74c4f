"""``mair data download|add|status`` against a real HTTP server on 127.0.0.1 serving archives built here.

The server (a ThreadingHTTPServer in a fixture) honours ``Range``, can cut a transfer part-way, can answer 500
once and can leave out ``Content-Length`` (the body then ends when the connection closes). Google Drive goes
through gdown, whose calls are replaced at our boundary (mair.data.gdrive) in the Drive tests, since Google cannot
be reached. Every test uses a temp catalog through ``MAIR_PARAMS_DIR`` and a temp data root, so no real host is
ever contacted. tests/test_hostile_data.py reuses the server and ``env``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pytest
import yaml

from mair.cli import main
from mair.data.catalog import load_catalog
from mair.data.download import DownloadOptions, download_file

FAST = ["--retries", "2", "--backoff", "0", "--timeout", "10", "--quiet"]


def png_bytes(seed: int, size: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ server


@dataclass
class Server:
    """What the local server serves and what it saw."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    html: set[str] = field(default_factory=set)
    cut_once: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection drops
    fail_once: dict[str, int] = field(default_factory=dict)  # path -> HTTP status answered once
    no_length: set[str] = field(default_factory=set)  # paths answered without Content-Length (read to EOF)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ranges(self, path: str) -> list[str]:
        return [h["Range"] for p, h in self.requests if urlsplit(p).path == path and "Range" in h]


def _handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str], send: int | None = None) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if unquote(urlsplit(self.path).path) not in state.no_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if send is None else body[:send])
            self.wfile.flush()

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append((self.path, dict(self.headers)))
            url = urlsplit(self.path)
            path = unquote(url.path)
            with state.lock:
                fail = state.fail_once.pop(path, None)
                cut = None if fail else state.cut_once.pop(path, None)
            if fail:
                self._send(fail, b"try again", {"Content-Type": "text/plain"})
                return
            data = state.files.get(path)
            if data is None:
                self._send(404, b"not found", {"Content-Type": "text/plain"})
                return
            ctype = "text/html; charset=utf-8" if path in state.html else "application/octet-stream"
            self._serve(data, ctype, cut)

        def _serve(self, data: bytes, ctype: str, cut: int | None) -> None:
            match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                if start >= len(data):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                headers = {
                    "Content-Type": ctype,
                    "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                }
                self._send(206, data[start:], headers, cut)
                return
            self._send(200, data, {"Content-Type": ctype}, cut)

    return Handler


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


# ------------------------------------------------------------------------------------------------ catalog


def entry(files: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    base = {
        "name": "toy",
        "role": ["test"],
        "tasks": ["toy_task"],
        "access": "open",
        "licence": "test data",
        "files": files,
        "prepared_layout": {"HR": 2},
    }
    base.update(extra)
    return base


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> dict[str, Any]:
    """Temp params folder and data root; ``write(datasets)`` writes the catalog."""
    params = tmp_path / "params"
    params.mkdir()
    data = tmp_path / "data"
    monkeypatch.setenv("MAIR_PARAMS_DIR", str(params))
    monkeypatch.setenv("MAIR_DATA_DIR", str(data))
    monkeypatch.delenv("MAIR_DATA_MIRROR", raising=False)

    def write(datasets: dict[str, Any]) -> Path:
        path = params / "datasets.yaml"
        path.write_text(yaml.safe_dump({"schema_version": 1, "datasets": datasets}, sort_keys=False))
        return path

    return {"params": params, "data": data, "write": write}


def lock_entries(data: Path) -> dict[str, Any]:
    return json.loads((data / "data.lock.json").read_text())["files"]


# ------------------------------------------------------------------------------------------------ tests


def test_download_verifies_then_extracts(env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture) -> None:
    archive = tar_gz({"toy/HR/a.png": png_bytes(1), "toy/HR/b.png": png_bytes(2)})
    server.files["/toy.tar.gz"] = archive
    spec = {
        "name": "toy.tar.gz",
        "urls": [f"{server.base}/toy.tar.gz"],
        "size": len(archive),
        "sha256": sha256(archive),
    }
    env["write"]({"toy": entry([spec])})
    assert main(["data", "download", "toy", *FAST]) == 0
    data = env["data"]
    assert (data / "raw/toy/toy.tar.gz").read_bytes() == archive
    assert not (data / "raw/toy/toy.tar.gz.part").exists()
    assert (data / "extracted/toy/toy/HR/a.png").read_bytes() == png_bytes(1)
    assert json.loads((data / "extracted/toy/.extracted.json").read_text())["source"] == "default"
    assert lock_entries(data)["toy/toy.tar.gz"]["origin"] == "catalog"

    capsys.readouterr()
    assert main(["data", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["datasets"][0]
    assert status["downloaded"] and status["verified"] and status["extracted"] and not status["prepared"]
    assert status["images"] == {"HR": {"found": None, "expected": 2}}

    before = len(server.requests)
    assert main(["data", "download", "toy", *FAST]) == 0  # already verified: no new request
    assert len(server.requests) == before


def test_checksum_mismatch_keeps_nothing(env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture) -> None:
    archive = tar_gz({"a.png": png_bytes(3)})
    server.files["/toy.tar.gz"] = archive
    wrong = "0" * 64
    env["write"]({"toy": entry([{"name": "toy.tar.gz", "urls": [f"{server.base}/toy.tar.gz"], "sha256": wrong}])})
    assert main(["data", "download", "toy", *FAST]) == 1
    err = capsys.readouterr().err
    assert "toy/toy.tar.gz" in err and wrong in err and sha256(archive) in err
    raw = env["data"] / "raw/toy"
    assert not (raw / "toy.tar.gz").exists()
    assert not (raw / "toy.tar.gz.part").exists()
    assert not (env["data"] / "extracted/toy").exists()


def test_size_mismatch_announced_by_server_stops_early(env: dict[str, Any], server: Server, capsys) -> None:
    server.files["/big.zip"] = b"x" * 5000
    env["write"]({"toy": entry([{"name": "big.zip", "urls": [f"{server.base}/big.zip"], "size": 4000}])})
    assert main(["data", "download", "toy", *FAST]) == 1
    err = capsys.readouterr().err
    assert "big.zip" in err and "4000" in err and "5000" in err
    assert not (env["data"] / "raw/toy/big.zip").exists()


def test_cut_transfer_resumes_on_next_run(env: dict[str, Any], server: Server) -> None:
    archive = zip_bytes({f"HR/{i}.png": png_bytes(10 + i, 32) for i in range(4)})
    server.files["/toy.zip"] = archive
    server.cut_once["/toy.zip"] = 1000
    env["write"]({"toy": entry([{"name": "toy.zip", "urls": [f"{server.base}/toy.zip"], "sha256": sha256(archive)}])})
    no_retry = ["--retries", "0", "--backoff", "0", "--timeout", "10", "--quiet"]
    assert main(["data", "download", "toy", *no_retry]) == 1
    part = env["data"] / "raw/toy/toy.zip.part"
    assert part.stat().st_size == 1000
    assert not (env["data"] / "raw/toy/toy.zip").exists()

    assert main(["data", "download", "toy", *no_retry]) == 0
    assert server.ranges("/toy.zip") == ["bytes=1000-"]
    assert (env["data"] / "raw/toy/toy.zip").read_bytes() == archive
    assert not part.exists()
    assert (env["data"] / "extracted/toy/HR/3.png").is_file()


def test_retries_resume_within_one_run(env: dict[str, Any], server: Server) -> None:
    archive = zip_bytes({"HR/a.png": png_bytes(20, 40)})
    server.files["/toy.zip"] = archive
    server.fail_once["/toy.zip"] = 503  # first request: 503
    server.cut_once["/toy.zip"] = 700  # second: the connection drops after 700 bytes; third: Range
    env["write"]({"toy": entry([{"name": "toy.zip", "urls": [f"{server.base}/toy.zip"], "size": len(archive)}])})
    assert main(["data", "download", "toy", "--retries", "3", "--backoff", "0", "--quiet"]) == 0
    assert len([p for p, _ in server.requests if p == "/toy.zip"]) == 3
    assert server.ranges("/toy.zip") == ["bytes=700-"]
    assert (env["data"] / "raw/toy/toy.zip").read_bytes() == archive


def test_mirror_serves_the_file(env: dict[str, Any], server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tar_gz({"HR/a.png": png_bytes(4)})
    server.files["/mirror/toy/nested/toy.tar.gz"] = archive
    spec = {
        "name": "nested/toy.tar.gz",
        "urls": [f"{server.base}/official/gone.tar.gz"],
        "sha256": sha256(archive),
    }
    env["write"]({"toy": entry([spec])})
    assert main(["data", "download", "toy", "--mirror", f"{server.base}/mirror/", *FAST]) == 0
    assert (env["data"] / "raw/toy/nested/toy.tar.gz").read_bytes() == archive
    paths = [urlsplit(p).path for p, _ in server.requests]
    assert "/official/gone.tar.gz" not in paths  # the mirror replaces the official host

    # the environment variable does the same; a mirror with bad bytes is refused by the same checksum
    (env["data"] / "raw/toy/nested/toy.tar.gz").unlink()
    server.files["/badmirror/toy/nested/toy.tar.gz"] = b"tampered"
    monkeypatch.setenv("MAIR_DATA_MIRROR", f"{server.base}/badmirror")
    assert main(["data", "download", "toy", *FAST]) == 1
    assert not (env["data"] / "raw/toy/nested/toy.tar.gz").exists()


def test_falls_back_to_next_url(env: dict[str, Any], server: Server) -> None:
    archive = tar_gz({"HR/a.png": png_bytes(5)})
    server.files["/hf/toy.tar.gz"] = archive
    urls = [f"{server.base}/dead/toy.tar.gz", f"{server.base}/hf/toy.tar.gz"]
    env["write"]({"toy": entry([{"name": "toy.tar.gz", "urls": urls, "sha256": sha256(archive)}])})
    assert main(["data", "download", "toy", *FAST]) == 0
    assert lock_entries(env["data"])["toy/toy.tar.gz"]["source"] == urls[1]


def test_login_dataset_prints_instructions(env: dict[str, Any], server: Server, capsys) -> None:
    instructions = "1. Open https://example.invalid/downloads and log in.\n2. mair data add locked --from DIR\n"
    env["write"](
        {"locked": entry([{"name": "info.mat", "urls": []}], access="login", manual={"instructions": instructions})}
    )
    assert main(["data", "download", "locked", *FAST]) == 1
    err = capsys.readouterr().err
    assert "manual download" in err and "https://example.invalid/downloads" in err and "mair data add" in err
    assert server.requests == []
    assert not (env["data"] / "raw/locked").exists()


def test_lock_records_first_download_and_refuses_a_different_file(env: dict[str, Any], server: Server, capsys) -> None:
    first = zip_bytes({"HR/a.png": png_bytes(6)})
    server.files["/toy.zip"] = first
    env["write"]({"toy": entry([{"name": "toy.zip", "urls": [f"{server.base}/toy.zip"]}])})
    assert main(["data", "download", "toy", *FAST]) == 0
    recorded = lock_entries(env["data"])["toy/toy.zip"]
    assert recorded["sha256"] == sha256(first) and recorded["origin"] == "first-download"
    assert recorded["size"] == len(first)

    (env["data"] / "raw/toy/toy.zip").unlink()
    changed = zip_bytes({"HR/a.png": png_bytes(7)})
    server.files["/toy.zip"] = changed
    capsys.readouterr()
    assert main(["data", "download", "toy", *FAST]) == 1
    err = capsys.readouterr().err
    assert "toy/toy.zip" in err and sha256(first) in err and "data.lock.json" in err
    assert not (env["data"] / "raw/toy/toy.zip").exists()
    assert lock_entries(env["data"])["toy/toy.zip"]["sha256"] == sha256(first)


def test_html_page_is_not_taken_for_the_file(env: dict[str, Any], server: Server, capsys) -> None:
    server.files["/login.zip"] = b"<html><body>Please sign in</body></html>"
    server.html.add("/login.zip")
    env["write"]({"toy": entry([{"name": "toy.zip", "urls": [f"{server.base}/login.zip"]}])})
    assert main(["data", "download", "toy", *FAST]) == 1
    assert "HTML page" in capsys.readouterr().err
    assert not (env["data"] / "raw/toy/toy.zip").exists()
    assert not (env["data"] / "data.lock.json").exists()


def test_google_drive_goes_through_gdown(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A gdrive:<id> file is fetched by gdown (replaced at our boundary) into the .part path, then verified,
    recorded and extracted like any other download."""
    from mair.data import gdrive

    archive = zip_bytes({"test/input/a.png": png_bytes(8), "test/target/a.png": png_bytes(9)})
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        Path(kwargs["output"]).write_bytes(archive)
        return kwargs["output"]

    monkeypatch.setattr(gdrive, "gdown_download", fake_download)
    spec = {"name": "test.zip", "urls": ["gdrive:1AbC-xyz_9"], "sha256": sha256(archive)}
    env["write"]({"toy": entry([spec], access="gdrive")})
    assert main(["data", "download", "toy", *FAST]) == 0
    assert (env["data"] / "raw/toy/test.zip").read_bytes() == archive
    assert len(calls) == 1 and calls[0]["id"] == "1AbC-xyz_9" and calls[0]["resume"] is True
    assert calls[0]["output"] == str(env["data"] / "raw/toy/test.zip.part")
    assert (env["data"] / "extracted/toy/test/target/a.png").is_file()


@pytest.mark.parametrize(("announced", "origin"), [(True, "first-download"), (False, "unconfirmed-download")])
def test_google_drive_pins_a_first_seen_checksum_only_when_the_length_was_announced(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, announced: bool, origin: str
) -> None:
    from mair.data import gdrive

    archive = zip_bytes({"test/input/a.png": png_bytes(8), "test/target/a.png": png_bytes(9)})

    def fake_download(**kwargs: Any) -> str:
        Path(kwargs["output"]).write_bytes(archive)
        kwargs["progress"](len(archive), len(archive) if announced else None)
        return kwargs["output"]

    monkeypatch.setattr(gdrive, "gdown_download", fake_download)
    env["write"]({"toy": entry([{"name": "test.zip", "urls": ["gdrive:1AbC-xyz_9"]}], access="gdrive")})
    assert main(["data", "download", "toy", *FAST]) == 0
    assert lock_entries(env["data"])["toy/test.zip"]["origin"] == origin


def test_google_drive_refusal_is_one_line_with_instructions(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from mair.data import gdrive

    def refused(**kwargs: Any) -> str:
        raise RuntimeError(
            "Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file recently. "
            "Please try accessing the file again later.\n\nYou may still be able to access the file from the browser"
        )

    monkeypatch.setattr(gdrive, "gdown_download", refused)
    env["write"]({"toy": entry([{"name": "test.zip", "urls": ["gdrive:1AbC-xyz_9"]}], access="gdrive")})
    assert main(["data", "download", "toy", *FAST]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if "1AbC-xyz_9" in ln]
    assert len(err) == 1 and "too many users" in err[0] and "mair data add" in err[0]
    assert "https://drive.google.com/file/d/1AbC-xyz_9/view" in err[0]
    assert not (env["data"] / "raw/toy/test.zip").exists()
    assert not (env["data"] / "data.lock.json").exists()


def test_add_registers_verified_files(env: dict[str, Any], server: Server, tmp_path: Path, capsys) -> None:
    good, bad = png_bytes(11), png_bytes(12)
    files = [
        {"name": "info.mat", "urls": [], "sha256": sha256(b"info")},
        {"name": "images_srgb/0001.mat", "urls": [], "size": len(good), "sha256": sha256(good)},
    ]
    env["write"]({"dnd": entry(files, access="login", manual={"instructions": "get it by hand"})})
    src = tmp_path / "download" / "DND"
    (src / "images_srgb").mkdir(parents=True)
    (src / "info.mat").write_bytes(b"info")
    (src / "images_srgb" / "0001.mat").write_bytes(good)
    (src / "unrelated.txt").write_text("ignored")
    assert main(["data", "add", "dnd", "--from", str(src.parent), "--quiet"]) == 0
    raw = env["data"] / "raw/dnd"
    assert (raw / "images_srgb/0001.mat").stat().st_ino == (src / "images_srgb/0001.mat").stat().st_ino
    assert not (raw / "unrelated.txt").exists()
    assert (env["data"] / "extracted/dnd/images_srgb/0001.mat").read_bytes() == good
    assert main(["data", "download", "dnd", *FAST]) == 0  # present now: no instructions, no network
    assert server.requests == []

    other = tmp_path / "other"
    other.mkdir()
    (other / "0001.mat").write_bytes(bad)
    (raw / "images_srgb/0001.mat").unlink()
    capsys.readouterr()
    assert main(["data", "add", "dnd", "--from", str(other / "0001.mat"), "--copy", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "dnd/images_srgb/0001.mat" in err and sha256(good) in err and sha256(bad) in err
    assert not (raw / "images_srgb/0001.mat").exists()
    assert [p.name for p in (raw / "images_srgb").iterdir()] == []

    assert main(["data", "add", "dnd", "--from", str(tmp_path / "nothing-here")]) == 2


def test_add_free_form_folder_records_lock(env: dict[str, Any], tmp_path: Path, capsys) -> None:
    env["write"](
        {
            "haze": entry(
                [],
                access="manual",
                manual={"instructions": "Dropbox folder; then mair data add", "accept_any_files": True},
                prepared_layout={"hazy": 2, "gt": 1},
            )
        }
    )
    src = tmp_path / "ITS"
    (src / "hazy").mkdir(parents=True)
    (src / "clear").mkdir()
    (src / "hazy" / "1_1_0.9.png").write_bytes(png_bytes(13))
    (src / "hazy" / "1_2_0.8.png").write_bytes(png_bytes(14))
    (src / "clear" / "1.png").write_bytes(png_bytes(15))
    assert main(["data", "download", "haze", *FAST]) == 1  # nothing yet: instructions
    assert "Dropbox folder" in capsys.readouterr().err
    assert main(["data", "add", "haze", "--from", str(src), "--copy", "--quiet"]) == 0
    entries = lock_entries(env["data"])
    assert set(entries) == {"haze/hazy/1_1_0.9.png", "haze/hazy/1_2_0.8.png", "haze/clear/1.png"}
    assert entries["haze/clear/1.png"]["origin"] == "first-add"
    assert (env["data"] / "extracted/haze/clear/1.png").read_bytes() == png_bytes(15)

    # a different file under a recorded name is refused
    (src / "clear" / "1.png").write_bytes(png_bytes(16))
    (env["data"] / "raw/haze/clear/1.png").unlink()
    assert main(["data", "add", "haze", "--from", str(src), "--copy", "--quiet"]) == 1
    assert not (env["data"] / "raw/haze/clear/1.png").exists()


def test_all_expands_derived_sets_and_reports_manual(env: dict[str, Any], server: Server, capsys) -> None:
    a, b = tar_gz({"A/x.png": png_bytes(17)}), tar_gz({"B/y.png": png_bytes(18)})
    server.files["/a.tar.gz"], server.files["/b.tar.gz"] = a, b
    env["write"](
        {
            "part_a": entry([{"name": "a.tar.gz", "urls": [f"{server.base}/a.tar.gz"], "sha256": sha256(a)}]),
            "part_b": entry([{"name": "b.tar.gz", "urls": [f"{server.base}/b.tar.gz"], "sha256": sha256(b)}]),
            "merged": entry([], derived_from=["part_a", "part_b"]),
            "locked": entry([{"name": "x.mat", "urls": []}], access="login", manual={"instructions": "by hand"}),
        }
    )
    assert main(["data", "download", "merged", *FAST]) == 0
    assert (env["data"] / "extracted/part_b/B/y.png").is_file()
    assert main(["data", "download", "--all", *FAST]) == 1  # the login set still needs a manual download
    assert "need a manual download: locked" in capsys.readouterr().err
    assert main(["data", "status", "--json"]) == 0
    status = {d["id"]: d for d in json.loads(capsys.readouterr().out)["datasets"]}
    assert status["merged"]["downloaded"] and status["merged"]["verified"]
    assert not status["locked"]["downloaded"]
    assert main(["data", "download", "nope"]) == 2


def test_alternative_source_and_prepared_counts(env: dict[str, Any], server: Server, capsys) -> None:
    alt = zip_bytes({"HR/a.png": png_bytes(19), "HR/b.png": png_bytes(20)})
    server.files["/alt.zip"] = alt
    env["write"](
        {
            "toy": entry(
                [{"name": "official.tar", "urls": [f"{server.base}/gone.tar"]}],
                alternatives={
                    "hf": {
                        "description": "a copy",
                        "files": [{"name": "alt.zip", "urls": [f"{server.base}/alt.zip"]}],
                    }
                },
            )
        }
    )
    assert main(["data", "download", "toy", "--source", "hf", *FAST]) == 0
    marker = json.loads((env["data"] / "extracted/toy/.extracted.json").read_text())
    assert marker["source"] == "hf"
    prepared = env["data"] / "prepared/toy"
    prepared.mkdir(parents=True)
    (prepared / ".prepared.json").write_text(json.dumps({"counts": {"HR": 2}}))
    capsys.readouterr()
    assert main(["data", "status", "toy"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"toy\s+open\s+1/1\s+yes\s+yes\s+yes\s+yes\s+2/2", out), out
    assert main(["data", "download", "toy", "--source", "nope"]) == 2


def test_download_file_api_resumes_with_options(tmp_path: Path, server: Server) -> None:
    data = png_bytes(21, 64) * 3
    server.files["/f.bin"] = data
    server.cut_once["/f.bin"] = 300
    (catalog_dir := tmp_path / "p").mkdir()
    (catalog_dir / "datasets.yaml").write_text(
        yaml.safe_dump(
            {
                "schema_version": 1,
                "datasets": {"toy": entry([{"name": "f.bin", "urls": [f"{server.base}/f.bin"], "size": len(data)}])},
            }
        )
    )
    spec = load_catalog(catalog_dir / "datasets.yaml").get("toy").files[0]
    opts = DownloadOptions(retries=2, backoff=0, timeout=10, quiet=True)
    path = download_file("toy", spec, tmp_path / "root", opts)
    assert path.read_bytes() == data
    assert server.ranges("/f.bin") == ["bytes=300-"]
    assert os.path.exists(tmp_path / "root" / "data.lock.json")
