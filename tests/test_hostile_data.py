"""Hostile and broken data input, as a careful (and a hostile) user would try it: every probe runs on a real HTTP
server on 127.0.0.1 (the one of tests/test_data_download.py) and in temp folders, with archives built here.

* links that escape the extraction folder only on disk (``y -> .`` makes every ``..`` climb a real level);
* archives that expand without bound (a zip bomb, a tar with too many members);
* a way out after a bad file (``mair data forget``), transfers that may be incomplete, where a value came from;
* a SIGKILL in the middle of an extraction;
* file modes of atomic writes under two umasks.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_data_download as loopback
from test_data_download import FAST, Server, entry, lock_entries, png_bytes, sha256, tar_gz, zip_bytes

from mair.cli import main
from mair.common.atomic import atomic_torch_save, atomic_write_json

server = loopback.server  # the loopback HTTP server fixture
env = loopback.env  # temp catalog (MAIR_PARAMS_DIR) and data root (MAIR_DATA_DIR) pointing at it

REPO = Path(__file__).resolve().parents[1]
DEPTH = 48  # more levels than any temp folder is deep
# lexically "etc" (every y/.. pair cancels on paper); on disk, with y -> ., every '..' climbs a real level: /etc
ESCAPE = "/".join(["y"] * DEPTH + [".."] * DEPTH + ["etc"])

Member = tuple[str, bytes | str]  # (name, file bytes) or (name, "->target") for a symlink


def tar_members(members: list[Member], mode: str = "w:gz") -> bytes:
    """A tar whose members come in the given order; ``"->t"`` makes a symlink to ``t``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_members(members: list[Member]) -> bytes:
    """A zip whose members come in the given order; ``"->t"`` makes a symlink to ``t`` (Unix mode bits)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members:
            if isinstance(data, str):
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o120777 << 16
                archive.writestr(info, data[2:])
            else:
                archive.writestr(name, data)
    return buf.getvalue()


def serve(env: dict[str, Any], server: Server, name: str, data: bytes, checksum: bool = True, **spec: Any) -> str:
    """Serve ``data`` as ``/<name>`` and write a catalog with one set ``toy`` holding that one file."""
    server.files[f"/{name}"] = data
    url = f"{server.base}/{name}"
    spec = {"name": name, "urls": [url], **({"sha256": sha256(data)} if checksum else {}), **spec}
    env["write"]({"toy": entry([spec])})
    return url


def leftovers(folder: Path) -> list[str]:
    """Hidden temp files and folders left in ``folder`` (lock files aside)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def status(capsys: pytest.CaptureFixture, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["data", "status", "--json", *args]) == 0
    return {d["id"]: d for d in json.loads(capsys.readouterr().out)["datasets"]}


def one_line(err: str) -> str:
    """The error lines of a failed command: exactly one for the failure itself (the summary line aside)."""
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------ 1. symlink escape


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("order", ["loop-first", "escape-first"])
def test_link_that_escapes_only_on_disk_is_refused_and_removed(
    env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture, kind: str, order: str
) -> None:
    links: list[Member] = [("y", "->."), ("esc", "->" + ESCAPE)]
    if order == "escape-first":  # checked one by one, the escape still resolves inside when it is created
        links.reverse()
    members: list[Member] = [("HR/a.png", png_bytes(1)), *links, ("HR/b.png", png_bytes(2))]
    data = tar_members(members) if kind == "tar" else zip_members(members)
    serve(env, server, f"toy.{'tar.gz' if kind == 'tar' else 'zip'}", data)
    assert main(["data", "download", "toy", *FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert "esc" in line and "outside" in line
    extracted = env["data"] / "extracted"
    assert not (extracted / "toy").exists() and not (extracted / "toy").is_symlink()
    assert leftovers(extracted) == []  # what was extracted is removed
    assert not status(capsys)["toy"]["extracted"]


def test_links_to_members_inside_keep_working(env: dict[str, Any], server: Server) -> None:
    members: list[Member] = [
        ("HR/a.png", png_bytes(3)),
        ("alias.png", "->HR/a.png"),
        ("images", "->HR"),
        ("deep/up.png", "->../HR/a.png"),
        ("here", "->."),
        ("far.png", "->here/here/deep/../HR/a.png"),
    ]
    serve(env, server, "toy.tar.gz", tar_members(members))
    assert main(["data", "download", "toy", *FAST]) == 0
    out = env["data"] / "extracted/toy"
    for name in ("alias.png", "images/a.png", "deep/up.png", "here/HR/a.png", "far.png"):
        assert (out / name).read_bytes() == png_bytes(3), name
    assert (out / ".extracted.json").is_file()


def test_links_across_two_archives_of_one_set_are_checked_together(
    env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture
) -> None:
    first = tar_members([("HR/a.png", png_bytes(4)), ("esc", "->" + ESCAPE)])
    second = zip_members([("y", "->.")])
    server.files["/a.tar.gz"], server.files["/b.zip"] = first, second
    files = [
        {"name": "a.tar.gz", "urls": [f"{server.base}/a.tar.gz"], "sha256": sha256(first)},
        {"name": "b.zip", "urls": [f"{server.base}/b.zip"], "sha256": sha256(second)},
    ]
    env["write"]({"toy": entry(files)})
    assert main(["data", "download", "toy", *FAST]) == 1
    assert "outside" in one_line(capsys.readouterr().err)
    assert not (env["data"] / "extracted/toy").exists()
    assert leftovers(env["data"] / "extracted") == []


# ------------------------------------------------------------------------------------------ 2. bounds


def zip_of_zeros(mib: int) -> bytes:
    """A deflated zip holding ``mib`` MiB of zeros (about 1 kB per MiB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("zeros.bin", "w") as out:
        block = bytes(1 << 20)
        for _ in range(mib):
            out.write(block)
    return buf.getvalue()


def tar_gz_of_zeros(mib: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = mib << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return buf.getvalue()


def test_zip_bomb_is_refused_by_the_default_limit_before_anything_is_written(
    env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture
) -> None:
    bomb = zip_of_zeros(300)  # 300 MiB from about 300 kB: over both 20x its size and 256 MiB
    assert len(bomb) < 1 << 20
    serve(env, server, "bomb.zip", bomb)
    assert main(["data", "download", "toy", *FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert "bomb.zip" in line and "--max-extract-size" in line
    assert not (env["data"] / "extracted/toy").exists() and leftovers(env["data"] / "extracted") == []


def test_tar_bomb_stops_at_a_lowered_limit_and_the_flag_raises_it(
    env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture
) -> None:
    serve(env, server, "bomb.tar.gz", tar_gz_of_zeros(8))
    assert main(["data", "download", "toy", "--max-extract-size", "1M", *FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert "bomb.tar.gz" in line and "1.0 MiB" in line and "--max-extract-size" in line
    assert not (env["data"] / "extracted/toy").exists() and leftovers(env["data"] / "extracted") == []

    assert main(["data", "extract", "toy", "--max-extract-size", "16M"]) == 0
    assert (env["data"] / "extracted/toy/zeros.bin").stat().st_size == 8 << 20


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_member_count_is_bounded(env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture, kind: str) -> None:
    members: list[Member] = [(f"f/{i}.txt", b"") for i in range(300)]
    data = tar_members(members) if kind == "tar" else zip_members(members)
    name = f"many.{'tar.gz' if kind == 'tar' else 'zip'}"
    serve(env, server, name, data)
    assert main(["data", "download", "toy", "--max-members", "100", *FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert name in line and "100" in line and "--max-members" in line
    assert not (env["data"] / "extracted/toy").exists() and leftovers(env["data"] / "extracted") == []
    assert main(["data", "extract", "toy", "--max-members", "1000"]) == 0


def test_limit_flags_reject_nonsense(env: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    env["write"]({"toy": entry([{"name": "a.zip", "urls": ["http://127.0.0.1:9/a.zip"]}])})
    assert main(["data", "extract", "toy", "--max-extract-size", "lots"]) == 2
    assert "--max-extract-size" in capsys.readouterr().err
    assert main(["data", "extract", "toy", "--max-members", "0"]) == 2


# ------------------------------------------------------------------------------------------ 3. a way out


def test_forget_is_the_way_out_after_a_refused_archive(
    env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture
) -> None:
    bad = tar_members([("HR/a.png", png_bytes(5)), ("y", "->."), ("esc", "->" + ESCAPE)])
    serve(env, server, "toy.tar.gz", bad, checksum=False)  # no catalog checksum: the first download pins one
    other = zip_bytes({"x.png": png_bytes(9)})
    server.files["/other.zip"] = other
    catalog = {
        "toy": entry([{"name": "toy.tar.gz", "urls": [f"{server.base}/toy.tar.gz"]}]),
        "other": entry([{"name": "other.zip", "urls": [f"{server.base}/other.zip"]}]),
    }
    env["write"](catalog)
    assert main(["data", "download", "toy", "other", *FAST]) == 1
    assert "toy/toy.tar.gz" in lock_entries(env["data"])
    # the publisher fixes the archive; the pinned bad one blocks every later attempt
    good = tar_members([("HR/a.png", png_bytes(5))])
    server.files["/toy.tar.gz"] = good
    assert main(["data", "download", "toy", *FAST]) == 1
    capsys.readouterr()

    assert main(["data", "forget", "toy"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "raw" in out
    assert not (env["data"] / "raw/toy").exists()
    assert not (env["data"] / "extracted/toy").exists()
    entries = lock_entries(env["data"])
    assert not any(key.startswith("toy/") for key in entries) and "other/other.zip" in entries
    assert (env["data"] / "extracted/other/x.png").is_file()  # other sets are untouched

    assert main(["data", "download", "toy", *FAST]) == 0
    assert (env["data"] / "extracted/toy/HR/a.png").read_bytes() == png_bytes(5)
    assert lock_entries(env["data"])["toy/toy.tar.gz"]["sha256"] == sha256(good)
    assert main(["data", "forget", "nope"]) == 2


def test_forget_one_file_and_prepared(env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture) -> None:
    a, b = zip_bytes({"A/x.png": png_bytes(6)}), zip_bytes({"B/y.png": png_bytes(7)})
    server.files["/a.zip"], server.files["/b.zip"] = a, b
    files = [{"name": n, "urls": [f"{server.base}/{n}"]} for n in ("a.zip", "b.zip")]
    env["write"]({"toy": entry(files)})
    assert main(["data", "download", "toy", *FAST]) == 0
    prepared = env["data"] / "prepared/toy"
    prepared.mkdir(parents=True)
    (prepared / ".prepared.json").write_text("{}")
    assert main(["data", "forget", "toy", "--file", "b.zip"]) == 0
    assert (env["data"] / "raw/toy/a.zip").is_file() and not (env["data"] / "raw/toy/b.zip").exists()
    assert set(k for k in lock_entries(env["data"]) if k.startswith("toy/")) == {"toy/a.zip"}
    assert not (env["data"] / "extracted/toy").exists()  # built from the forgotten file too
    assert prepared.is_dir()  # prepared data is kept unless asked
    assert main(["data", "forget", "toy", "--file", "c.zip"]) == 2
    assert main(["data", "forget", "toy", "--prepared"]) == 0
    assert not prepared.exists() and not (env["data"] / "raw/toy").exists()


def test_a_transfer_without_length_is_never_pinned(
    env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture
) -> None:
    archive = zip_bytes({f"HR/{i}.png": png_bytes(20 + i, 48) for i in range(4)})
    url = serve(env, server, "toy.zip", archive, checksum=False)
    server.no_length.add("/toy.zip")
    server.cut_once["/toy.zip"] = len(archive) // 2  # the connection drops; without a length it looks complete
    assert main(["data", "download", "toy", *FAST]) == 1  # the truncated zip cannot be extracted
    recorded = lock_entries(env["data"]).get("toy/toy.zip")
    assert recorded is None or not recorded["origin"].startswith("first-"), recorded
    assert not status(capsys)["toy"]["verified"]

    # the next run fetches it again (nothing was pinned) and gets the whole file, still unconfirmed
    assert main(["data", "download", "toy", *FAST]) == 0
    assert (env["data"] / "raw/toy/toy.zip").read_bytes() == archive
    assert (env["data"] / "extracted/toy/HR/3.png").is_file()
    assert not lock_entries(env["data"])["toy/toy.zip"]["origin"].startswith("first-")
    assert not status(capsys)["toy"]["verified"]
    # two transfers without a length that agree confirm each other: the set is verified and pinned now
    assert main(["data", "download", "toy", *FAST]) == 0
    recorded = lock_entries(env["data"])["toy/toy.zip"]
    assert recorded["sha256"] == sha256(archive) and recorded["source"] == url
    assert recorded["origin"] == "first-download"
    assert status(capsys)["toy"]["verified"]


def test_a_confirmed_length_pins_and_messages_say_where_values_came_from(
    env: dict[str, Any], server: Server, capsys: pytest.CaptureFixture
) -> None:
    first = zip_bytes({"HR/a.png": png_bytes(30)})
    url = serve(env, server, "toy.zip", first, checksum=False)
    assert main(["data", "download", "toy", *FAST]) == 0
    recorded = lock_entries(env["data"])["toy/toy.zip"]
    assert recorded["origin"] == "first-download"
    day = recorded["recorded"][:10]
    (env["data"] / "raw/toy/toy.zip").unlink()

    server.files["/toy.zip"] = zip_bytes({"HR/a.png": png_bytes(31, 40)})  # another length
    capsys.readouterr()
    assert main(["data", "download", "toy", *FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"recorded at first download on {day} from {url}" in line and "catalog" not in line

    same_length = bytearray(first)
    same_length[-30] ^= 0xFF  # same length, other bytes: the sha256 tells
    server.files["/toy.zip"] = bytes(same_length)
    assert main(["data", "download", "toy", *FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert "sha256" in line and f"recorded at first download on {day} from {url}" in line

    serve(env, server, "toy.zip", first, checksum=True)
    server.files["/toy.zip"] = bytes(same_length)
    assert main(["data", "download", "toy", *FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert "(catalog)" in line and "recorded at" not in line


# ------------------------------------------------------------------------------------------ 4. SIGKILL


PAUSING_EXTRACT = """
import sys, time
from pathlib import Path
import mair.data.extract as extract
original, seen = extract._write_stream, []
def pausing(src, dest, *args, **kwargs):
    original(src, dest, *args, **kwargs)
    seen.append(dest)
    if len(seen) == 2:
        Path(sys.argv[1]).write_text("paused")
        time.sleep(120)
extract._write_stream = pausing
from mair.cli import main
sys.exit(main(["data", "extract", "toy", "--force"]))
"""


def kill_during_extraction(env: dict[str, Any], tmp_path: Path) -> None:
    flag = tmp_path / "paused"
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_EXTRACT, str(flag)], env=environ)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the extraction did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)


def test_sigkill_during_extraction_is_never_reported_as_extracted(
    env: dict[str, Any], server: Server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    archive = tar_gz({f"HR/{i}.png": png_bytes(40 + i) for i in range(5)})
    serve(env, server, "toy.tar.gz", archive)
    assert main(["data", "download", "toy", "--no-extract", *FAST]) == 0
    kill_during_extraction(env, tmp_path)
    extracted = env["data"] / "extracted"
    assert any(name.endswith(".tmp") for name in leftovers(extracted))  # the kill left its temp folder
    assert not status(capsys)["toy"]["extracted"]

    assert main(["data", "extract", "toy"]) == 0  # the next start cleans the stale temp folder
    assert leftovers(extracted) == []
    assert status(capsys)["toy"]["extracted"]


def test_stale_extraction_of_other_raw_files_is_not_reported_as_extracted(
    env: dict[str, Any], server: Server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    serve(env, server, "toy.zip", zip_bytes({"HR/a.png": png_bytes(50)}), checksum=False)
    assert main(["data", "download", "toy", *FAST]) == 0
    assert status(capsys)["toy"]["extracted"]
    # the marker describes other raw bytes than those recorded now (files replaced, lock edited): stale
    lock = env["data"] / "data.lock.json"
    data = json.loads(lock.read_text())
    data["files"]["toy/toy.zip"]["sha256"] = "0" * 64
    lock.write_text(json.dumps(data))
    assert not status(capsys)["toy"]["extracted"]


def test_stale_temp_files_of_a_download_or_add_are_cleaned(env: dict[str, Any], server: Server, tmp_path: Path) -> None:
    data = zip_bytes({"HR/a.png": png_bytes(60)})
    serve(env, server, "toy.zip", data)
    raw = env["data"] / "raw/toy"
    raw.mkdir(parents=True)
    # what kills leave: an add's hidden temp copy, an atomic write's temp file of the lock file
    (raw / ".toy.zip.k2j4x9.add").write_bytes(b"half a copy")
    (env["data"] / ".data.lock.json.abc123.part").write_text("{")
    assert main(["data", "download", "toy", *FAST]) == 0
    assert leftovers(raw) == []
    assert leftovers(env["data"]) == []
    # a .part beside a verified final file can never be resumed
    (raw / "toy.zip.part").write_bytes(b"old")
    assert main(["data", "download", "toy", *FAST]) == 0
    assert not (raw / "toy.zip.part").exists()


PAUSING_RMTREE = """
import shutil, sys, time
from pathlib import Path
original = shutil.rmtree
def pausing(path, *args, **kwargs):
    Path(sys.argv[1]).write_text("paused")
    time.sleep(120)
shutil.rmtree = pausing
from mair.data.prepare import prepare
prepare("cbsd68", sys.argv[2], force=True)
"""


def clean_set(root: Path) -> Path:
    """An extracted clean-image set (cbsd68) of three PNGs, as ``mair data prepare`` reads it."""
    import cv2
    import numpy as np

    src = root / "extracted/cbsd68/original_png"
    src.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    return src


def test_prepare_removes_what_a_killed_run_left_and_force_drops_the_marker_first(tmp_path: Path) -> None:
    from mair.data.paths import is_prepared
    from mair.data.prepare import prepare

    root = tmp_path / "data"
    clean_set(root)
    assert prepare("cbsd68", root)["counts"] == {"HR": 3}
    out = root / "prepared/cbsd68"
    (out / ".prepared.json").unlink()  # what a kill before the marker leaves: a temp file, no marker
    (out / "HR/.1.png.5d1e0a77.part").write_bytes(b"half a png")
    assert prepare("cbsd68", root)["total"] == 3
    assert leftovers(out / "HR") == [] and is_prepared("cbsd68", root=root)

    flag = tmp_path / "paused"
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_RMTREE, str(flag), str(root)], env=environ)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "prepare --force did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    # killed while removing the old folder: whatever is left of it is never reported as prepared
    assert not is_prepared("cbsd68", root=root)
    assert prepare("cbsd68", root)["total"] == 3 and is_prepared("cbsd68", root=root)


# ------------------------------------------------------------------------------------------ 5. modes


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_have_the_modes_of_a_plain_write(umask: int, tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    (tmp_path / "plain_dir").mkdir()
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert mode(plain) == file_mode and mode(tmp_path / "plain_dir") == dir_mode
    atomic_torch_save(tmp_path / "w.pth", {"x": 1})
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert mode(tmp_path / "w.pth") == file_mode
    assert mode(tmp_path / "r.json") == file_mode
    # like open("w") on an existing file, a rewrite keeps the file's mode
    (tmp_path / "r.json").chmod(0o640)
    atomic_write_json(tmp_path / "r.json", {"a": 2})
    assert mode(tmp_path / "r.json") == 0o640


def test_data_files_and_folders_have_the_modes_of_a_plain_write(
    umask: int, env: dict[str, Any], server: Server, tmp_path: Path
) -> None:
    from mair.data.image_io import write_png
    from mair.data.prepare.common import Context, write_marker

    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    archive = tar_gz({"HR/a.png": png_bytes(70)})
    serve(env, server, "toy.tar.gz", archive)
    assert main(["data", "download", "toy", *FAST]) == 0
    data = env["data"]
    for path in (data / "data.lock.json", data / "raw/toy/toy.tar.gz", data / "extracted/toy/HR/a.png"):
        assert mode(path) == file_mode, path
    assert mode(data / "extracted/toy/.extracted.json") == file_mode
    for path in (data / "extracted/toy", data / "extracted/toy/HR", data / "raw/toy"):
        assert mode(path) == dir_mode, path

    env["write"]({"hand": entry([{"name": "x.mat", "urls": []}], access="manual", manual={"instructions": "-"})})
    (tmp_path / "x.mat").write_bytes(b"matlab")
    assert main(["data", "add", "hand", "--from", str(tmp_path / "x.mat"), "--copy", "--quiet"]) == 0
    assert mode(data / "raw/hand/x.mat") == file_mode

    out = data / "prepared/toy"
    write_png(out / "HR/a.png", png_bytes_array())
    write_marker(Context("toy", data, data / "extracted/toy", out), {"HR": 1})
    assert mode(out / "HR/a.png") == file_mode and mode(out / ".prepared.json") == file_mode
    assert mode(out) == dir_mode


def png_bytes_array() -> Any:
    import numpy as np

    return np.zeros((4, 4, 3), dtype=np.uint8)
