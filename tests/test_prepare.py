"""Preparers on small synthetic raw layouts: names, LR generation, merges, crop grids, pairing rules, resuming."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from mair.data.imresize import bicubic_lr_uint8
from mair.data.paths import is_prepared
from mair.data.prepare import PrepareError, hazy_to_gt_name, prepare
from mair.data.prepare.deblur import basicsr_grid
from mair.data.prepare.realnoise import restormer_grid


def _img(path: Path, h: int, w: int, seed: int, grey: bool = False) -> np.ndarray:
    """Write a small image (PNG/JPEG/BMP by suffix) and return what was written (or what a reader decodes)."""
    rng = np.random.default_rng(seed)
    shape = (h, w) if grey else (h, w, 3)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _smooth(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    """A larger, compressible image (fast PNG) with position-dependent content."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(yy * 7 + seed) % 256, (xx * 3 + seed) % 256, (yy + xx) % 256], axis=2).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return img


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _marker(root: Path, dataset_id: str) -> dict:
    return json.loads((root / "prepared" / dataset_id / ".prepared.json").read_text())


# ------------------------------------------------------------------------------------------------ SR


def test_sr_renames_shipped_lr_and_generates_missing(tmp_path: Path) -> None:
    bench = tmp_path / "extracted" / "set5" / "benchmark"
    hr = {n: _img(bench / "Set5" / "HR" / f"{n}.png", 24, 30, i) for i, n in enumerate(["baby", "bird"])}
    hr["grey"] = _img(bench / "Set5" / "HR" / "grey.bmp", 26, 18, 5, grey=True)
    (bench / "Set5" / "LR_bicubic" / "X2").mkdir(parents=True)
    for n, img in hr.items():  # EDSR-bundle naming: babyx2.png
        cv2.imwrite(str(bench / "Set5" / "LR_bicubic" / "X2" / f"{n}x2.png"), bicubic_lr_uint8(img, 2))
    _img(bench / "Set14" / "HR" / "zebra.png", 24, 24, 9)  # another set of the same bundle is ignored
    _img(bench / "Set14" / "LR_bicubic" / "X2" / "zebrax2.png", 12, 12, 9)

    report = prepare("set5", tmp_path)
    out = tmp_path / "prepared" / "set5"
    assert report["counts"] == {"HR": 3, "LR_bicubic/X2": 3, "LR_bicubic/X3": 3, "LR_bicubic/X4": 3}
    assert sorted(p.name for p in (out / "HR").iterdir()) == ["baby.png", "bird.png", "grey.png"]
    for s in (2, 3, 4):
        assert sorted(p.name for p in (out / "LR_bicubic" / f"X{s}").iterdir()) == sorted(
            p.name for p in (out / "HR").iterdir()
        )
    # shipped x2 files: renamed, same bytes
    assert (out / "LR_bicubic" / "X2" / "baby.png").read_bytes() == (
        bench / "Set5" / "LR_bicubic" / "X2" / "babyx2.png"
    ).read_bytes()
    # x3/x4 generated from the HR mod-cropped to the scale; grey stays grey; bmp became png losslessly
    assert np.array_equal(_read(out / "LR_bicubic" / "X3" / "bird.png"), bicubic_lr_uint8(hr["bird"], 3))
    assert _read(out / "LR_bicubic" / "X4" / "grey.png").shape == (6, 4)
    assert np.array_equal(_read(out / "HR" / "grey.png"), hr["grey"])
    marker = _marker(tmp_path, "set5")
    assert marker["scope"] == "paper" and marker["total"] == 12
    assert marker["sources"]["X2"] == "shipped" and marker["sources"]["X3"].startswith("generated")
    assert is_prepared("set5", "paper", tmp_path)


def test_manga109_lrbi_names_and_hf_style_folders(tmp_path: Path) -> None:
    src = tmp_path / "extracted" / "manga109" / "Manga109"
    img = _img(src / "HR" / "AisazuNihaIrarenai.png", 24, 24, 1)
    for s in (2, 3, 4):
        folder = src / "LR_bicubic" / f"X{s}"
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / f"AisazuNihaIrarenai_LRBI_x{s}.png"), bicubic_lr_uint8(img, s))
    prepare("manga109", tmp_path)
    assert (tmp_path / "prepared" / "manga109" / "LR_bicubic" / "X3" / "AisazuNihaIrarenai.png").is_file()
    assert _marker(tmp_path, "manga109")["sources"]["X4"] == "shipped"

    hf = tmp_path / "extracted" / "urban100"  # HF eugenesiow layout: <Name>_HR/, <Name>_LR_x2/ with equal names
    img = _img(hf / "Urban100_HR" / "img_001.png", 24, 24, 2)
    (hf / "Urban100_LR_x2").mkdir()
    cv2.imwrite(str(hf / "Urban100_LR_x2" / "img_001.png"), bicubic_lr_uint8(img, 2))
    prepare("urban100", tmp_path)
    assert _marker(tmp_path, "urban100")["sources"]["X2"] == "shipped"


def test_sr_lr_of_wrong_size_is_an_error_and_leaves_no_marker(tmp_path: Path) -> None:
    src = tmp_path / "extracted" / "set14"
    _img(src / "HR" / "a.png", 24, 24, 1)
    _img(src / "LR_bicubic" / "X2" / "ax2.png", 10, 12, 1)
    with pytest.raises(PrepareError, match="needs 12x12"):
        prepare("set14", tmp_path)
    assert not is_prepared("set14", "paper", tmp_path)


def test_div2k_train_only_then_df2k_merge(tmp_path: Path) -> None:
    d = tmp_path / "extracted" / "div2k"
    imgs = {n: _img(d / "DIV2K_train_HR" / f"{n}.png", 36, 24, int(n)) for n in ("0001", "0002")}
    _img(d / "DIV2K_valid_HR" / "0801.png", 36, 24, 3)
    for s in (2, 3, 4):
        (d / "DIV2K_train_LR_bicubic" / f"X{s}").mkdir(parents=True)
        for n, img in imgs.items():
            cv2.imwrite(str(d / "DIV2K_train_LR_bicubic" / f"X{s}" / f"{n}x{s}.png"), bicubic_lr_uint8(img, s))
    _img(d / "DIV2K_train_LR_unknown" / "X2" / "0001x2.png", 18, 12, 4)  # other degradation: ignored
    _img(tmp_path / "extracted" / "flickr2k" / "Flickr2K" / "Flickr2K_HR" / "000001.png", 24, 36, 5)

    report = prepare("df2k", tmp_path)  # prepares div2k and flickr2k first
    assert report["counts"] == {"HR": 3, "LR_bicubic/X2": 3, "LR_bicubic/X3": 3, "LR_bicubic/X4": 3}
    out = tmp_path / "prepared" / "df2k"
    assert sorted(p.name for p in (out / "LR_bicubic" / "X4").iterdir()) == ["000001.png", "0001.png", "0002.png"]
    assert _marker(tmp_path, "div2k")["counts"]["HR"] == 2  # the valid split is not training data
    assert _marker(tmp_path, "flickr2k")["sources"]["X2"].startswith("generated")
    assert (out / "HR" / "0001.png").read_bytes() == (tmp_path / "prepared" / "div2k" / "HR" / "0001.png").read_bytes()


def test_dfwb_merges_four_sets_with_prefixes(tmp_path: Path) -> None:
    ex = tmp_path / "extracted"
    _img(ex / "div2k" / "DIV2K_train_HR" / "0001.png", 24, 24, 1)
    _img(ex / "flickr2k" / "Flickr2K_HR" / "000001.png", 24, 24, 2)
    images = ex / "bsd400" / "BSR" / "BSDS500" / "data" / "images"
    _img(images / "train" / "2092.jpg", 20, 30, 3)
    _img(images / "test" / "100007.jpg", 30, 20, 4)
    _img(images / "val" / "3096.jpg", 20, 30, 5)  # BSD100 / CBSD68 images: excluded
    wed = _img(ex / "wed" / "exploration_database_and_code" / "pristine_images" / "00001.bmp", 22, 22, 6)

    report = prepare("dfwb", tmp_path)
    names = sorted(p.name for p in (tmp_path / "prepared" / "dfwb" / "HR").iterdir())
    assert names == ["bsd400-100007.png", "bsd400-2092.png", "div2k-0001.png", "flickr2k-000001.png", "wed-00001.png"]
    assert report["counts"] == {"HR": 5}
    assert np.array_equal(_read(tmp_path / "prepared" / "dfwb" / "HR" / "wed-00001.png"), wed)


def test_clean_sets_prefer_original_folder(tmp_path: Path) -> None:
    src = tmp_path / "extracted" / "cbsd68" / "CBSD68-dataset" / "CBSD68"
    for k in range(3):
        _img(src / "original_png" / f"{k}.png", 16, 16, k)
        _img(src / "noisy25" / f"{k}.png", 16, 16, 10 + k)
    _img(tmp_path / "extracted" / "mcmaster" / "McMaster" / "1.tif", 16, 16, 3)
    assert prepare("cbsd68", tmp_path)["counts"] == {"HR": 3}
    assert np.array_equal(
        _read(tmp_path / "prepared" / "cbsd68" / "HR" / "1.png"), _read(src / "original_png" / "1.png")
    )
    assert prepare("mcmaster", tmp_path)["counts"] == {"HR": 1}  # TIFF -> PNG


# ------------------------------------------------------------------------------------------------ real noise


def test_crop_grids() -> None:
    assert restormer_grid(1000, 512, 384) == [0, 384, 488]  # last crop flush to the border
    assert restormer_grid(896, 512, 384) == [0, 384]  # no duplicate when the stride lands on the border
    assert restormer_grid(512, 512, 384) == [0]
    assert basicsr_grid(720, 512, 256) == [0, 208]
    assert basicsr_grid(1280, 512, 256) == [0, 256, 512, 768]  # nothing left over: no extra crop
    assert basicsr_grid(800, 512, 256) == [0, 256, 288]
    with pytest.raises(ValueError):
        restormer_grid(500, 512, 384)


def test_sidd_medium_crops(tmp_path: Path) -> None:
    scene = tmp_path / "extracted" / "sidd_medium" / "SIDD_Medium_Srgb" / "Data" / "0001_001_S6_00100_00060_3200_L"
    noisy = _smooth(scene / "0001_NOISY_SRGB_010.PNG", 1000, 896, 1)
    gt = _smooth(scene / "0001_GT_SRGB_010.PNG", 1000, 896, 2)
    report = prepare("sidd_medium", tmp_path)
    out = tmp_path / "prepared" / "sidd_medium" / "train"
    assert report["counts"] == {"train/input_crops": 6, "train/target_crops": 6}  # rows 0,384,488 x cols 0,384
    names = sorted(p.name for p in (out / "input_crops").iterdir())
    assert names == sorted(f"0001_NOISY_SRGB_010-{k}.png" for k in range(1, 7))
    assert names == sorted(p.name for p in (out / "target_crops").iterdir())
    # crop k runs row by row: k=2 is (0, 384), k=6 is the bottom-right crop flush to both borders (488, 384)
    assert np.array_equal(_read(out / "input_crops" / "0001_NOISY_SRGB_010-2.png"), noisy[0:512, 384:896])
    assert np.array_equal(_read(out / "input_crops" / "0001_NOISY_SRGB_010-6.png"), noisy[488:1000, 384:896])
    assert np.array_equal(_read(out / "target_crops" / "0001_NOISY_SRGB_010-6.png"), gt[488:1000, 384:896])


def test_sidd_medium_missing_gt_is_named(tmp_path: Path) -> None:
    scene = tmp_path / "extracted" / "sidd_medium" / "Data" / "0002_x"
    _img(scene / "0002_NOISY_SRGB_011.PNG", 8, 8, 1)
    with pytest.raises(PrepareError, match=r"0002_GT_SRGB_011\.PNG"):
        prepare("sidd_medium", tmp_path)


def test_sidd_val_blocks_from_mat(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    gt = rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    src = tmp_path / "extracted" / "sidd_val" / "SIDD"
    src.mkdir(parents=True)
    savemat(str(src / "ValidationNoisyBlocksSrgb.mat"), {"ValidationNoisyBlocksSrgb": noisy})
    with pytest.raises(PrepareError, match=r"ValidationGtBlocksSrgb\.mat"):
        prepare("sidd_val", tmp_path)
    savemat(str(src / "ValidationGtBlocksSrgb.mat"), {"ValidationGtBlocksSrgb": gt})
    report = prepare("sidd_val", tmp_path)
    assert report["counts"] == {"val/input": 6, "val/target": 6}
    out = tmp_path / "prepared" / "sidd_val" / "val"
    names = [f"{i:02d}_{j:02d}.png" for i in range(2) for j in range(3)]
    assert sorted(p.name for p in (out / "input").iterdir()) == names
    # the .mat blocks are RGB; the PNG files hold the same pixels (cv2 reads them back as BGR)
    assert np.array_equal(_read(out / "input" / "01_02.png")[:, :, ::-1], noisy[1, 2])
    assert np.array_equal(_read(out / "target" / "00_01.png")[:, :, ::-1], gt[0, 1])


def test_dnd_kept_as_shipped(tmp_path: Path) -> None:
    src = tmp_path / "extracted" / "dnd" / "test" / "DND"
    (src / "images_srgb").mkdir(parents=True)
    (src / "info.mat").write_bytes(b"info")
    for k in range(1, 51):
        if k != 7:
            (src / "images_srgb" / f"{k:04d}.mat").write_bytes(f"img{k}".encode())
    with pytest.raises(PrepareError, match=r"0007\.mat"):
        prepare("dnd", tmp_path)
    (src / "images_srgb" / "0007.mat").write_bytes(b"img7")
    report = prepare("dnd", tmp_path)
    assert report["counts"] == {"images_srgb": 50, "info.mat": 1}
    assert (tmp_path / "prepared" / "dnd" / "images_srgb" / "0050.mat").read_bytes() == b"img50"


# ------------------------------------------------------------------------------------------------ deblurring


def test_gopro_crops_and_full_test_frames(tmp_path: Path) -> None:
    root = tmp_path / "extracted" / "gopro" / "GOPRO_Large"
    seq = root / "train" / "GOPR0372_07_00"
    blur = _smooth(seq / "blur" / "000047.png", 600, 800, 1)
    _smooth(seq / "blur_gamma" / "000047.png", 600, 800, 9)  # not the variant MaIR uses
    sharp = _smooth(seq / "sharp" / "000047.png", 600, 800, 2)
    _img(root / "test" / "GOPR0384_11_00" / "blur" / "000001.png", 16, 24, 3)
    _img(root / "test" / "GOPR0384_11_00" / "sharp" / "000001.png", 16, 24, 4)
    report = prepare("gopro", tmp_path)
    assert report["counts"] == {
        "train/input_crops": 6,  # rows 0, 88 x cols 0, 256, 288
        "train/target_crops": 6,
        "test/input": 1,
        "test/target": 1,
    }
    out = tmp_path / "prepared" / "gopro"
    name = "GOPR0372_07_00-000047_s006.png"
    assert np.array_equal(_read(out / "train" / "input_crops" / name), blur[88:600, 288:800])
    assert np.array_equal(_read(out / "train" / "target_crops" / name), sharp[88:600, 288:800])
    assert (out / "test" / "input" / "GOPR0384_11_00-000001.png").is_file()


def test_gopro_missing_test_split(tmp_path: Path) -> None:
    seq = tmp_path / "extracted" / "gopro" / "GOPRO_Large" / "train" / "S"
    _img(seq / "blur" / "1.png", 8, 8, 1)
    _img(seq / "sharp" / "1.png", 8, 8, 2)
    with pytest.raises(PrepareError, match="no test/ folder"):
        prepare("gopro", tmp_path)


def test_hide_pairs_test_subfolders_with_gt(tmp_path: Path) -> None:
    root = tmp_path / "extracted" / "hide" / "HIDE_dataset"
    _img(root / "test" / "test-close-ups" / "a.png", 8, 8, 1)
    _img(root / "test" / "test-long-shot" / "b.png", 8, 8, 2)
    for n in ("a", "b", "c"):
        _img(root / "GT" / f"{n}.png", 8, 8, 3)
    assert prepare("hide", tmp_path)["counts"] == {"test/input": 2, "test/target": 2}


# ------------------------------------------------------------------------------------------------ dehazing


def test_hazy_name_rule() -> None:
    assert hazy_to_gt_name("1_1_0.90179.png") == "1.png"
    assert hazy_to_gt_name("0025_0.85_0.04.jpg") == "0025.png"
    assert hazy_to_gt_name("/data/reside_its/hazy_dir/1400_3.png") == "1400.png"  # base name only
    assert hazy_to_gt_name("0007.png") == "0007.png"


def test_reside_its_pairing(tmp_path: Path) -> None:
    root = tmp_path / "extracted" / "reside_its" / "ITS"
    for n in ("1_1_0.90179.png", "1_2_0.8.png", "2_1_0.7.png"):
        _img(root / "hazy" / n, 8, 8, 1)
    for n in ("1", "2", "3"):
        _img(root / "clear" / f"{n}.png", 8, 8, 2)
    report = prepare("reside_its", tmp_path)
    assert report["counts"] == {"train/gt": 2, "train/hazy": 3}  # only the clear images that hazy ones use
    gt = tmp_path / "prepared" / "reside_its" / "train" / "gt"
    assert sorted(p.name for p in gt.iterdir()) == ["1.png", "2.png"]


def test_reside_ots_jpg_clear_becomes_png(tmp_path: Path) -> None:
    root = tmp_path / "extracted" / "reside_ots" / "OTS_BETA"
    _img(root / "haze" / "part1" / "0025_0.85_0.04.jpg", 16, 16, 1)
    _img(root / "haze" / "part2" / "0026_1_0.2.jpg", 16, 16, 2)
    clear = _img(root / "clear" / "clear_images" / "0025.jpg", 16, 16, 3)
    _img(root / "clear" / "clear_images" / "0026.jpg", 16, 16, 4)
    prepare("reside_ots", tmp_path)
    out = tmp_path / "prepared" / "reside_ots" / "train"
    assert sorted(p.name for p in (out / "hazy").iterdir()) == ["0025_0.85_0.04.jpg", "0026_1_0.2.jpg"]
    assert (out / "hazy" / "0025_0.85_0.04.jpg").read_bytes() == (
        root / "haze" / "part1" / "0025_0.85_0.04.jpg"
    ).read_bytes()
    assert np.array_equal(_read(out / "gt" / "0025.png"), clear)  # decoded JPEG pixels, stored losslessly


def test_reside_missing_clear_image_is_named(tmp_path: Path) -> None:
    root = tmp_path / "extracted" / "reside_its"
    _img(root / "hazy" / "5_1_0.9.png", 8, 8, 1)
    _img(root / "clear" / "4.png", 8, 8, 1)
    with pytest.raises(PrepareError, match=r"5\.png"):
        prepare("reside_its", tmp_path)


def test_sots_indoor_and_outdoor_from_one_bundle(tmp_path: Path) -> None:
    sots = tmp_path / "extracted" / "reside_sots" / "SOTS"
    for k in (1, 2):
        _img(sots / "indoor" / "nyuhaze500" / "hazy" / f"1400_{k}.png", 8, 10, k)
    _img(sots / "indoor" / "nyuhaze500" / "gt" / "1400.png", 12, 14, 3)  # a GT of another size: kept, noted
    _img(sots / "outdoor" / "hazy" / "0001_0.8_0.2.jpg", 8, 8, 4)
    _img(sots / "outdoor" / "gt" / "0001.png", 8, 8, 5)
    indoor = prepare("sots_indoor", tmp_path)
    assert indoor["counts"] == {"gt": 1, "hazy": 2}
    assert "differ in size" in indoor["notes"][0]
    assert prepare("sots_outdoor", tmp_path)["counts"] == {"gt": 1, "hazy": 1}


def test_reside_6k_gt_folder_renamed(tmp_path: Path) -> None:
    root = tmp_path / "extracted" / "reside_6k" / "RESIDE-6K"
    for split, names in (("train", ["a", "b"]), ("test", ["c"])):
        for n in names:
            _img(root / split / "GT" / f"{n}.png", 8, 8, 1)
            _img(root / split / "hazy" / f"{n}.png", 8, 8, 2)
    report = prepare("reside_6k", tmp_path)
    assert report["counts"] == {"test/gt": 1, "test/hazy": 1, "train/gt": 2, "train/hazy": 2}
    assert (tmp_path / "prepared" / "reside_6k" / "train" / "gt" / "a.png").is_file()
    _img(root / "test" / "hazy" / "d.png", 8, 8, 3)
    with pytest.raises(PrepareError, match="same names"):
        prepare("reside_6k", tmp_path, force=True)


# ------------------------------------------------------------------------------------------------ resuming


def test_rerun_skips_and_resumes_without_redoing_work(tmp_path: Path) -> None:
    src = tmp_path / "extracted" / "b100" / "B100"
    for k in range(3):
        _img(src / "HR" / f"{k}.png", 24, 24, k)
    first = prepare("b100", tmp_path)
    assert first["written"] == 12 and not first["skipped"]
    assert prepare("b100", tmp_path)["skipped"]  # complete: nothing to do

    out = tmp_path / "prepared" / "b100"
    (out / ".prepared.json").unlink()  # simulate an interrupted run
    (out / "LR_bicubic" / "X3" / "1.png").unlink()
    kept = out / "LR_bicubic" / "X4" / "2.png"
    before = os.stat(kept)
    resumed = prepare("b100", tmp_path)
    assert resumed["written"] == 1 and resumed["reused"] == 11
    after = os.stat(kept)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert is_prepared("b100", "paper", tmp_path)

    forced = prepare("b100", tmp_path, force=True)
    assert forced["written"] == 12 and forced["reused"] == 0


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"extracted/set5"):
        prepare("set5", tmp_path)
    with pytest.raises(PrepareError, match="no preparer"):
        prepare("nosuchset", tmp_path)
    with pytest.raises(PrepareError, match="extracted/div2k"):
        prepare("df2k", tmp_path)
    assert not (tmp_path / "prepared" / "df2k" / ".prepared.json").exists()


def test_image_io_keeps_depth_drops_alpha_and_reads_headers(tmp_path: Path) -> None:
    from mair.data.image_io import image_size, png_size, read_color, read_image, write_png

    deep = (np.arange(6 * 5 * 3, dtype=np.uint16).reshape(6, 5, 3) * 700).astype(np.uint16)
    write_png(tmp_path / "deep.png", deep)
    assert np.array_equal(read_image(tmp_path / "deep.png"), deep)  # 16 bit kept
    assert read_color(tmp_path / "deep.png").dtype == np.uint8  # what the official loaders see
    rgba = np.random.default_rng(0).integers(0, 256, (4, 7, 4), dtype=np.uint8)
    write_png(tmp_path / "rgba.png", rgba)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgba[:, :, :3])
    assert png_size(tmp_path / "rgba.png") == (4, 7)
    _img(tmp_path / "x.bmp", 9, 11, 1, grey=True)
    assert png_size(tmp_path / "x.bmp") is None and image_size(tmp_path / "x.bmp") == (9, 11)
    assert read_image(tmp_path / "x.bmp").ndim == 2 and read_color(tmp_path / "x.bmp").shape == (9, 11, 3)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
