"""Safe extraction (mair.data.extract) on real archives built here: zip, tar (plain/gz/bz2/xz) and rar."""

from __future__ import annotations

import io
import os
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mair.data.extract import (
    ExtractError,
    MissingToolError,
    UnsafeArchiveError,
    extract_archive,
    extract_dataset,
    read_marker,
)


def png_bytes(seed: int, size: int = 8) -> bytes:
    """A tiny real PNG."""
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def make_tar(path: Path, members: list[tuple[str, bytes | None]], mode: str = "w", **special: str) -> Path:
    """A tar with regular files (``data``) and folders (``None``)."""
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for name, target in special.items():
            kind, _, link = target.partition(":")
            info = tarfile.TarInfo(name)
            info.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE}[kind]
            info.linkname = link
            tar.addfile(info)
    return path


def make_zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0
            archive.writestr(info, target)
    return path


def make_rar4(path: Path, entries: list[tuple[str, bytes | None, int]]) -> Path:
    """A RAR 1.5-4.x archive written byte by byte (stored members need no external tool to read)."""
    out = b"Rar!\x1a\x07\x00"
    main = struct.pack("<BHH", 0x73, 0, 13) + b"\x00" * 6
    out += struct.pack("<H", zlib.crc32(main) & 0xFFFF) + main
    dos_time = ((2020 - 1980) << 25) | (1 << 21) | (1 << 16)
    for name, data, method in entries:
        raw_name = name.encode()
        payload = data or b""
        flags = 0x8000 | (0x00E0 if data is None else 0)
        attr = 0o040755 if data is None else 0o100644
        head = struct.pack(
            "<BHHIIBIIBBHI",
            0x74,
            flags,
            32 + len(raw_name),
            len(payload),
            len(payload),
            3,
            zlib.crc32(payload) & 0xFFFFFFFF,
            dos_time,
            29,
            method,
            len(raw_name),
            attr,
        )
        head += raw_name
        out += struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head + payload
    end = struct.pack("<BHH", 0x7B, 0x4000, 7)
    out += struct.pack("<H", zlib.crc32(end) & 0xFFFF) + end
    path.write_bytes(out)
    return path


GOOD = [("set/HR", None), ("set/HR/a.png", png_bytes(1)), ("set/HR/b.png", png_bytes(2))]


@pytest.mark.parametrize(
    ("suffix", "mode", "fmt"),
    [
        (".tar", "w", "tar"),
        (".tar.gz", "w:gz", "tar.gz"),
        (".tar.bz2", "w:bz2", "tar.bz2"),
        (".tar.xz", "w:xz", "tar.xz"),
    ],
)
def test_tar_formats_extract(tmp_path: Path, suffix: str, mode: str, fmt: str) -> None:
    archive = make_tar(tmp_path / f"a{suffix}", GOOD, mode, **{"set/link.png": "sym:HR/a.png"})
    out = tmp_path / "out"
    out.mkdir()
    assert extract_archive(archive, out, fmt) == 2
    assert (out / "set/HR/a.png").read_bytes() == png_bytes(1)
    assert cv2.imread(str(out / "set/HR/b.png")).shape == (8, 8, 3)
    assert os.readlink(out / "set/link.png") == "HR/a.png"  # an inside link is kept


def test_zip_extracts_and_converts_backslashes(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", [("x/a.png", png_bytes(3)), ("x\\sub\\b.png", png_bytes(4))])
    out = tmp_path / "out"
    out.mkdir()
    assert extract_archive(archive, out, "zip") == 2
    assert (out / "x/a.png").read_bytes() == png_bytes(3)
    assert (out / "x/sub/b.png").read_bytes() == png_bytes(4)


@pytest.mark.parametrize(
    ("members", "special", "message"),
    [
        ([("ok.png", b"1"), ("../evil.png", b"2")], {}, "path traversal"),
        ([("a/../../evil.png", b"2")], {}, "path traversal"),
        ([("/etc/evil.png", b"2")], {}, "absolute"),
        ([("ok.png", b"1")], {"link": "sym:../../outside"}, "symlink"),
        ([("ok.png", b"1")], {"link": "sym:/etc/passwd"}, "symlink"),
        ([("ok.png", b"1")], {"hl": "hard:../outside.txt"}, "path traversal"),
        ([("ok.png", b"1")], {"hl": "hard:/etc/passwd"}, "absolute"),
        ([("ok.png", b"1")], {"dev": "chr:"}, "device"),
    ],
)
def test_tar_unsafe_members_are_refused(
    tmp_path: Path, members: list[tuple[str, bytes]], special: dict[str, str], message: str
) -> None:
    archive = make_tar(tmp_path / "bad.tar", members, **special)
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_archive(archive, out, "tar")
    assert not (tmp_path / "deep" / "evil.png").exists()
    assert not (tmp_path / "evil.png").exists()
    assert not Path("/etc/evil.png").exists()


def test_links_inside_are_followed_but_never_out(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("d")
        link.type, link.linkname = tarfile.SYMTYPE, "."
        tar.addfile(link)
        data = png_bytes(9)
        info = tarfile.TarInfo("d/x.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    out.mkdir()
    extract_archive(archive, out, "tar")
    assert (out / "x.png").read_bytes() == png_bytes(9)  # through the inside link "d -> ."

    escape = make_tar(tmp_path / "esc.tar", [], **{"up": "sym:.."})
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        extract_archive(escape, out, "tar")

    # a link already in the folder that points outside: a member written through it is refused
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "evil").symlink_to(outside)
    through = make_tar(tmp_path / "through.tar", [("evil/x.png", b"1")])
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(through, out, "tar")
    assert not any(outside.iterdir())


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ([("../evil.png", b"2")], {}, "path traversal"),
        ([("/abs/evil.png", b"2")], {}, "absolute"),
        ([("C:/evil.png", b"2")], {}, "absolute"),
        ([("ok.png", b"1")], {"lnk": "../../outside"}, "symlink"),
        ([("ok.png", b"1")], {"lnk": "/etc"}, "symlink"),
    ],
)
def test_zip_unsafe_members_are_refused(
    tmp_path: Path, members: list[tuple[str, bytes]], links: dict[str, str], message: str
) -> None:
    archive = make_zip(tmp_path / "bad.zip", members, links)
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_archive(archive, out, "zip")
    assert not (tmp_path / "deep" / "evil.png").exists()


def test_extract_dataset_is_atomic_and_writes_marker(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    good = make_tar(raw / "good.tar.gz", GOOD, "w:gz")
    plain = raw / "c.png"
    plain.write_bytes(png_bytes(5))
    target = tmp_path / "extracted" / "toy"
    marker = extract_dataset([(good, "good.tar.gz", "tar.gz"), (plain, "HR/c.png", "file")], target, {"x": 1})
    assert marker["n_files"] == 3 and marker["x"] == 1
    assert read_marker(target)["archives"] == ["good.tar.gz"]
    assert (target / "HR/c.png").stat().st_ino == plain.stat().st_ino  # hard link, no copy

    bad = make_tar(raw / "bad.tar", [("fine.png", b"1"), ("../escape.png", b"2")])
    with pytest.raises(UnsafeArchiveError):
        extract_dataset([(bad, "bad.tar", "tar")], target, {"x": 2})
    # the previous complete extraction is untouched and no temp folder is left behind
    assert read_marker(target)["x"] == 1
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == ["toy"]
    assert not (tmp_path / "extracted" / "escape.png").exists()

    fresh = tmp_path / "extracted" / "other"
    with pytest.raises(UnsafeArchiveError):
        extract_dataset([(bad, "bad.tar", "tar")], fresh)
    assert not fresh.exists()


def test_rar_stored_members_extract_without_a_tool(tmp_path: Path) -> None:
    pytest.importorskip("rarfile")
    archive = make_rar4(tmp_path / "a.rar", [("pristine", None, 0x30), ("pristine/a.png", png_bytes(6), 0x30)])
    out = tmp_path / "out"
    out.mkdir()
    assert extract_archive(archive, out, "rar") == 1
    assert (out / "pristine/a.png").read_bytes() == png_bytes(6)


def test_rar_traversal_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("rarfile")
    archive = make_rar4(tmp_path / "bad.rar", [("ok.png", b"1", 0x30), ("../evil.png", b"2", 0x30)])
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError, match="path traversal"):
        extract_archive(archive, out, "rar")
    assert not any(out.iterdir())  # checked before anything was written
    assert not (tmp_path / "deep" / "evil.png").exists()


def test_compressed_rar_without_tool_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rarfile = pytest.importorskip("rarfile")
    # point rarfile's tool names (module settings it reads at run time) at programs that do not exist
    for name in ("UNRAR_TOOL", "UNAR_TOOL", "BSDTAR_TOOL", "SEVENZIP_TOOL", "SEVENZIP2_TOOL"):
        monkeypatch.setattr(rarfile, name, "mair-test-no-such-tool")
    monkeypatch.setattr(rarfile, "CURRENT_SETUP", None)
    archive = make_rar4(tmp_path / "c.rar", [("a.bin", b"not really compressed", 0x33)])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MissingToolError, match=r"unrar.*7-Zip.*bsdtar"):
        extract_archive(archive, out, "rar")
    assert not any(out.iterdir())


def test_corrupt_compressed_rar_with_a_tool_is_an_extract_error(tmp_path: Path) -> None:
    rarfile = pytest.importorskip("rarfile")
    try:
        rarfile.tool_setup(force=True)
    except rarfile.RarCannotExec:
        pytest.skip("no unrar/7z/bsdtar/unar tool installed (CI installs bsdtar: libarchive-tools)")
    archive = make_rar4(tmp_path / "c.rar", [("a.bin", b"garbage, not RAR-compressed data", 0x33)])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExtractError, match=r"c\.rar"):
        extract_archive(archive, out, "rar")


def test_compressed_rar_with_a_tool(tmp_path: Path) -> None:
    rarfile = pytest.importorskip("rarfile")
    if not shutil.which("rar"):
        pytest.skip("building a compressed RAR needs the non-free `rar` program (not installed)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(7))
    import subprocess

    subprocess.run(["rar", "a", "-m3", "-ep1", str(tmp_path / "c.rar"), str(src / "a.png")], check=True)
    rarfile.tool_setup(force=True)
    out = tmp_path / "out"
    out.mkdir()
    assert extract_archive(tmp_path / "c.rar", out, "rar") == 1
    assert (out / "a.png").read_bytes() == png_bytes(7)
