"""The embedded demo data: every dataset id of the experiments, tiny, made offline in a few seconds.

Clean images are crops of the colour photographs that ship inside scikit-image (``skimage.data``: astronaut,
coffee, chelsea, rocket, immunohistochemistry, hubble_deep_field, retina, motorcycle; only files bundled with the
package, nothing is downloaded; each shrunk once to at most 512 px). Degraded inputs are made by seeded,
documented degradations:

* SR: MATLAB bicubic LR at x2/x3/x4 (:func:`mair.data.imresize.bicubic_lr_uint8`, HR mod-cropped per scale);
* real noise (SIDD, DND): signal-dependent Poisson-Gaussian noise ``y = x + n``, ``n ~ N(0, a*x + b)`` per pixel
  and channel (``a`` in [0.004, 0.012], ``b`` in [1e-5, 1e-4]), rounded to 8 bit, then a JPEG round trip at
  quality 90 (the mild compression-like quantisation of camera pipelines);
* motion blur (GoPro, HIDE): a random linear kernel (length 5-13 px, any angle, 15x15 support, anti-aliased
  line) applied with reflected borders;
* haze (RESIDE): the atmospheric scattering model ``I = J t + A (1 - t)`` with ``t = exp(-beta d)`` and a
  depth-like map ``d`` in [0, 1] (a vertical gradient plus a smooth random field), ``beta`` in [0.5, 1.2],
  ``A`` in [0.7, 1.0]; the file names carry the values as RESIDE's do (ITS ``<id>_<k>_<beta>.png``, OTS
  ``<id>_<A>_<beta>.jpg``, SOTS ``<id>_<k>.png`` / ``<id>_0.8_0.2.jpg``).

Everything is seeded from the set id and image index, so building twice gives identical bytes. The layouts are
those of the real prepared sets (docs/contracts.md); crops use the real cutting rules with smaller sizes
(SIDD 128 px at stride 96, GoPro 128 px at step 64). Each set is built in a hidden folder and renamed into
place with its ``.prepared.json`` (scope ``demo``), so a set is either complete or absent.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mair.data import paths
from mair.data.image_io import encode_png
from mair.data.imresize import bicubic_lr_uint8, quantize_uint8
from mair.data.prepare.common import Context, count_files, count_images, place_file, read_marker, write_marker
from mair.data.prepare.deblur import basicsr_grid, gopro_frame_name, subimage_name
from mair.data.prepare.realnoise import block_name, dnd_name, grid_crops, sidd_crop_name
from mair.data.prepare.sr import SCALES

DEMO_SEED = 2025
SOURCE_FILES = {  # skimage.data function -> the file bundled in scikit-image's data folder
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "immunohistochemistry": "ihc.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "stereo_motorcycle": "motorcycle_left.png",
}
SOURCE_MAX_SIDE = 512
SIDD_DEMO_CROP, SIDD_DEMO_STRIDE = 128, 96
GOPRO_DEMO_CROP, GOPRO_DEMO_STEP = 128, 64


# ------------------------------------------------------------------------------------------------ sources


def _skimage_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load_source(name: str, folder: Path | None) -> np.ndarray | None:
    """One bundled photograph as BGR uint8: read straight from scikit-image's data folder (fast, no skimage
    import), else through ``skimage.data`` (a file that would need a download is skipped)."""
    path = folder / SOURCE_FILES[name] if folder is not None else None
    if path is not None and path.is_file():
        img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is not None:
            return img
    try:
        from skimage import data

        rgb = getattr(data, name)()
    except Exception:  # not bundled in this scikit-image version (it would need a download): skip it
        return None
    if isinstance(rgb, tuple):  # stereo_motorcycle -> (left, right, disparity)
        rgb = rgb[0]
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        return None
    return cv2.cvtColor(np.ascontiguousarray(rgb[:, :, :3]), cv2.COLOR_RGB2BGR)


@functools.lru_cache(maxsize=1)
def source_images() -> tuple[np.ndarray, ...]:
    """The bundled colour photographs of scikit-image, BGR uint8, shrunk once (INTER_AREA) to at most 512 px."""
    folder = _skimage_data_dir()
    images = []
    for name in SOURCE_FILES:
        img = _load_source(name, folder)
        if img is None or min(img.shape[:2]) < 256:
            continue
        scale = SOURCE_MAX_SIDE / max(img.shape[:2])
        if scale < 1:
            size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        images.append(img)
    if len(images) < 3:
        raise RuntimeError(f"only {len(images)} scikit-image photographs are available offline; the demo needs 3")
    return tuple(images)


def rng_for(tag: str) -> np.random.Generator:
    """A generator seeded from the demo seed and ``tag`` (stable across runs and machines)."""
    return np.random.default_rng([DEMO_SEED, zlib.crc32(tag.encode("utf-8"))])


def photo(tag: str, height: int, width: int) -> np.ndarray:
    """A ``height x width`` BGR uint8 crop of a bundled photograph, chosen and placed by ``tag``'s seed."""
    rng = rng_for("photo/" + tag)
    usable = [img for img in source_images() if img.shape[0] >= height and img.shape[1] >= width]
    src = usable[int(rng.integers(len(usable)))]
    top = int(rng.integers(src.shape[0] - height + 1))
    left = int(rng.integers(src.shape[1] - width + 1))
    return np.ascontiguousarray(src[top : top + height, left : left + width])


def _png(path: Path, img: np.ndarray) -> None:
    """Write a PNG without fsync: a demo set is built in a hidden folder that is renamed into place at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(img, compression=1))


def _jpg(path: Path, img: np.ndarray, quality: int = 95) -> None:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


# ------------------------------------------------------------------------------------------------ degradations


def add_real_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian noise (variance ``a*x + b``), 8-bit rounding, then a JPEG round trip at quality 90."""
    x = img.astype(np.float64) / 255.0
    a = rng.uniform(0.004, 0.012)
    b = rng.uniform(1e-5, 1e-4)
    noisy = quantize_uint8(np.clip(x + rng.standard_normal(x.shape) * np.sqrt(a * x + b), 0.0, 1.0))
    ok, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def motion_kernel(rng: np.random.Generator, size: int = 15) -> np.ndarray:
    """A normalised linear motion-blur kernel: random length (5-13 px) and angle, anti-aliased (bilinear)."""
    length = rng.uniform(5.0, size - 2.0)
    angle = rng.uniform(0.0, math.pi)
    t = np.linspace(-length / 2, length / 2, 8 * size)
    ys = (size - 1) / 2 + t * math.sin(angle)
    xs = (size - 1) / 2 + t * math.cos(angle)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    kernel = np.zeros((size, size))
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        np.add.at(kernel, (np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)), w)
    return kernel / kernel.sum()


def motion_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` convolved with :func:`motion_kernel` (reflected borders), rounded to uint8."""
    out = cv2.filter2D(img.astype(np.float64), -1, motion_kernel(rng), borderType=cv2.BORDER_REFLECT)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def depth_map(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A depth-like map in [0, 1]: far at the top (vertical gradient) plus a smooth random field."""
    grad = np.repeat(np.linspace(1.0, 0.0, height)[:, None], width, axis=1)
    field = cv2.resize(rng.random((4, 5)), (width, height), interpolation=cv2.INTER_CUBIC)
    field = (field - field.min()) / max(field.max() - field.min(), 1e-8)
    return np.clip(0.6 * grad + 0.4 * field, 0.0, 1.0)


def add_haze(img: np.ndarray, beta: float, airlight: float, depth: np.ndarray) -> np.ndarray:
    """Atmospheric scattering ``I = J t + A (1 - t)``, ``t = exp(-beta d)``, rounded to uint8."""
    t = np.exp(-beta * depth)[:, :, None]
    hazy = img.astype(np.float64) / 255.0 * t + airlight * (1.0 - t)
    return quantize_uint8(hazy)


# ------------------------------------------------------------------------------------------------ set builders

Builder = Callable[[Context, Path], dict[str, int]]


def _sr_set(names: list[str], sizes: list[tuple[int, int]], grey: tuple[int, ...] = ()) -> Builder:
    def build(ctx: Context, base: Path) -> dict[str, int]:
        for k, name in enumerate(names):
            hr = photo(f"{ctx.dataset_id}/{name}", *sizes[k % len(sizes)])
            if k in grey:
                hr = cv2.cvtColor(hr, cv2.COLOR_BGR2GRAY)
            _png(ctx.out / "HR" / f"{name}.png", hr)
            for s in SCALES:
                _png(ctx.out / "LR_bicubic" / f"X{s}" / f"{name}.png", bicubic_lr_uint8(hr, s))
        return _counts(ctx.out, ["HR"] + [f"LR_bicubic/X{s}" for s in SCALES])

    return build


def _hr_set(names: list[str], sizes: list[tuple[int, int]]) -> Builder:
    def build(ctx: Context, base: Path) -> dict[str, int]:
        for k, name in enumerate(names):
            _png(
                ctx.out / "HR" / f"{name}.png", photo(f"{ctx.dataset_id}/{name}", *sizes[k % len(sizes)])
            )
        return _counts(ctx.out, ["HR"])

    return build


def _merged(parts: tuple[str, ...], subdirs: list[str], prefix: bool) -> Builder:
    def build(ctx: Context, base: Path) -> dict[str, int]:
        for part in parts:
            for sub in subdirs:
                for f in sorted((base / part / sub).glob("*.png")):
                    place_file(f, ctx.out / sub / (f"{part}-{f.name}" if prefix else f.name))
        ctx.sources["from"] = " + ".join(parts)
        return _counts(ctx.out, subdirs)

    return build


def _sidd_medium(ctx: Context, base: Path) -> dict[str, int]:
    for k in range(1, 5):
        clean = photo(f"sidd_medium/{k}", 208, 272)
        noisy = add_real_noise(clean, rng_for(f"sidd_medium/noise/{k}"))
        stem = f"{k:04d}_NOISY_SRGB_010"
        for i, (t, s) in enumerate(grid_crops(208, 272, SIDD_DEMO_CROP, SIDD_DEMO_STRIDE), start=1):
            box = (slice(t, t + SIDD_DEMO_CROP), slice(s, s + SIDD_DEMO_CROP))
            _png(ctx.out / "train" / "input_crops" / sidd_crop_name(stem, i), noisy[box])
            _png(ctx.out / "train" / "target_crops" / sidd_crop_name(stem, i), clean[box])
    ctx.sources.update(crop=SIDD_DEMO_CROP, stride=SIDD_DEMO_STRIDE)
    return _counts(ctx.out, ["train/input_crops", "train/target_crops"])


def _sidd_val(ctx: Context, base: Path) -> dict[str, int]:
    size = 128
    for i in range(2):
        for j in range(3):
            clean = photo(f"sidd_val/{i}/{j}", size, size)
            noisy = add_real_noise(clean, rng_for(f"sidd_val/noise/{i}/{j}"))
            _png(ctx.out / "val" / "input" / block_name(i, j), noisy)
            _png(ctx.out / "val" / "target" / block_name(i, j), clean)
    return _counts(ctx.out, ["val/input", "val/target"])


def _dnd(ctx: Context, base: Path) -> dict[str, int]:
    """Two images in the DND format (HDF5 / MATLAB v7.3 layout): ``InoisySRGB`` and 20 boxes each in info.mat."""
    n_images, height, width, box = 2, 128, 160, 32
    header = (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 HDF5 schema 1.00 ."
    )
    (ctx.out / "images_srgb").mkdir(parents=True, exist_ok=True)
    for k in range(1, n_images + 1):
        clean = photo(f"dnd/{k}", height, width)
        noisy = cv2.cvtColor(add_real_noise(clean, rng_for(f"dnd/noise/{k}")), cv2.COLOR_BGR2RGB)
        data = (noisy.astype(np.float32) / 255.0).T  # MATLAB stores column-major: (3, W, H) in HDF5
        _write_mat73(ctx.out / "images_srgb" / dnd_name(k), header, {"InoisySRGB": data})
    # boxes: [row_start (1-based), col_start (1-based), row_end, col_end] in a 4 x 5 grid of 32 px squares
    boxes = np.array(
        [[r * box + 1, c * box + 1, (r + 1) * box, (c + 1) * box] for r in range(4) for c in range(5)],
        dtype=np.float64,
    )
    _write_dnd_info(ctx.out / "info.mat", header, [boxes] * n_images)
    ctx.sources["format"] = "HDF5 (MATLAB v7.3) like the real DND; 20 boxes of 32 px per image"
    return {"images_srgb": count_files(ctx.out / "images_srgb", ".mat"), "info.mat": 1}


def _write_mat73(path: Path, header: bytes, arrays: dict[str, np.ndarray]) -> None:
    import h5py

    tmp = path.with_name(f".{path.name}.part")
    with h5py.File(tmp, "w", userblock_size=512, track_order=False) as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, track_times=False)
    _stamp_userblock(tmp, header)
    os.replace(tmp, path)


def _write_dnd_info(path: Path, header: bytes, boxes: list[np.ndarray]) -> None:
    import h5py

    tmp = path.with_name(f".{path.name}.part")
    with h5py.File(tmp, "w", userblock_size=512) as f:
        refs_group = f.create_group("#refs#", track_order=False)
        refs = []
        for k, b in enumerate(boxes):
            ds = refs_group.create_dataset(
                f"b{k}", data=b.T, track_times=False
            )  # MATLAB (20, 4) -> HDF5 (4, 20)
            refs.append(ds.ref)
        info = f.create_group("info")
        info.create_dataset("boundingboxes", data=np.array([refs], dtype=h5py.ref_dtype), track_times=False)
    _stamp_userblock(tmp, header)
    os.replace(tmp, path)


def _stamp_userblock(path: Path, header: bytes) -> None:
    """Write the MATLAB v7.3 text header into the 512-byte HDF5 user block (what MATLAB does)."""
    block = header.ljust(116, b" ")[:116] + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(block.ljust(512, b"\x00"))


def _gopro(ctx: Context, base: Path) -> dict[str, int]:
    h, w = 192, 256
    for seq in ("GOPR0001_00_00", "GOPR0002_00_00"):
        for k in (1, 2):
            frame = gopro_frame_name(seq, f"{k:06d}")
            sharp = photo(f"gopro/train/{frame}", h, w)
            blur = motion_blur(sharp, rng_for(f"gopro/blur/{frame}"))
            boxes = [
                (t, s)
                for t in basicsr_grid(h, GOPRO_DEMO_CROP, GOPRO_DEMO_STEP)
                for s in basicsr_grid(w, GOPRO_DEMO_CROP, GOPRO_DEMO_STEP)
            ]
            for i, (t, s) in enumerate(boxes, start=1):
                box = (slice(t, t + GOPRO_DEMO_CROP), slice(s, s + GOPRO_DEMO_CROP))
                _png(ctx.out / "train" / "input_crops" / subimage_name(frame, i), blur[box])
                _png(ctx.out / "train" / "target_crops" / subimage_name(frame, i), sharp[box])
    for k in (1, 2):
        frame = gopro_frame_name("GOPR0003_00_00", f"{k:06d}")
        sharp = photo(f"gopro/test/{frame}", 128, 192)
        _png(
            ctx.out / "test" / "input" / f"{frame}.png", motion_blur(sharp, rng_for(f"gopro/blur/{frame}"))
        )
        _png(ctx.out / "test" / "target" / f"{frame}.png", sharp)
    ctx.sources.update(crop=GOPRO_DEMO_CROP, step=GOPRO_DEMO_STEP)
    return _counts(ctx.out, ["train/input_crops", "train/target_crops", "test/input", "test/target"])


def _hide(ctx: Context, base: Path) -> dict[str, int]:
    for k in (1, 2):
        name = f"{k}fromGOPR{k:04d}.MP4"
        sharp = photo(f"hide/{k}", 128, 192)
        _png(ctx.out / "test" / "input" / f"{name}.png", motion_blur(sharp, rng_for(f"hide/blur/{k}")))
        _png(ctx.out / "test" / "target" / f"{name}.png", sharp)
    return _counts(ctx.out, ["test/input", "test/target"])


def _hazy_set(
    ids: list[str],
    per_id: int,
    name: Callable[[str, int, float, float], str],
    sub: str,
    size: tuple[int, int],
) -> Builder:
    def build(ctx: Context, base: Path) -> dict[str, int]:
        folder = ctx.out / sub if sub else ctx.out
        for gid in ids:
            clear = photo(f"{ctx.dataset_id}/{gid}", *size)
            _png(folder / "gt" / f"{gid}.png", clear)
            rng = rng_for(f"{ctx.dataset_id}/haze/{gid}")
            depth = depth_map(size[0], size[1], rng)
            for k in range(1, per_id + 1):
                beta, airlight = float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.7, 1.0))
                file_name = name(gid, k, round(airlight, 2), round(beta, 2))
                hazy = add_haze(clear, round(beta, 2), round(airlight, 2), depth)
                if file_name.endswith(".jpg"):
                    _jpg(folder / "hazy" / file_name, hazy, quality=95)
                else:
                    _png(folder / "hazy" / file_name, hazy)
        prefix = f"{sub}/" if sub else ""
        return _counts(ctx.out, [f"{prefix}hazy", f"{prefix}gt"])

    return build


def _reside_6k(ctx: Context, base: Path) -> dict[str, int]:
    for split, n in (("train", 4), ("test", 2)):
        for k in range(1, n + 1):
            name = f"{k:04d}.png"
            clear = photo(f"reside_6k/{split}/{k}", 160, 160)
            rng = rng_for(f"reside_6k/haze/{split}/{k}")
            hazy = add_haze(
                clear, float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.7, 1.0)), depth_map(160, 160, rng)
            )
            _png(ctx.out / split / "gt" / name, clear)
            _png(ctx.out / split / "hazy" / name, hazy)
    return _counts(ctx.out, ["train/hazy", "train/gt", "test/hazy", "test/gt"])


def _counts(out: Path, subdirs: list[str]) -> dict[str, int]:
    return {sub: count_images(out / sub) for sub in subdirs}


_TEST_SIZES = [(96, 120), (120, 96), (125, 98)]  # the last is not a multiple of 3 or 4: LR is mod-cropped
_TRAIN_SIZES = [(192, 240), (240, 192)]


def _names(prefix: str, n: int, width: int = 3) -> list[str]:
    return [f"{prefix}{k:0{width}d}" for k in range(1, n + 1)]


BUILDERS: dict[str, Builder] = {
    "div2k": _sr_set(_names("", 4, 4), _TRAIN_SIZES),
    "flickr2k": _sr_set(_names("", 2, 6), _TRAIN_SIZES),
    "df2k": _merged(("div2k", "flickr2k"), ["HR"] + [f"LR_bicubic/X{s}" for s in SCALES], prefix=False),
    "bsd400": _hr_set(_names("", 2, 6), [(160, 160)]),
    "wed": _hr_set(_names("", 2, 5), [(160, 160)]),
    "dfwb": _merged(("div2k", "flickr2k", "bsd400", "wed"), ["HR"], prefix=True),
    "set5": _sr_set(_names("img", 3), _TEST_SIZES),
    "set14": _sr_set(_names("img", 3), _TEST_SIZES, grey=(1,)),
    "b100": _sr_set(_names("img", 3), _TEST_SIZES),
    "urban100": _sr_set(_names("img", 3), _TEST_SIZES),
    "manga109": _sr_set(_names("img", 3), _TEST_SIZES),
    "cbsd68": _hr_set(_names("img", 3), [(128, 128), (112, 144)]),
    "kodak24": _hr_set(_names("kodim", 3, 2), [(128, 128)]),
    "mcmaster": _hr_set(_names("img", 3), [(128, 128)]),
    "sidd_medium": _sidd_medium,
    "sidd_val": _sidd_val,
    "dnd": _dnd,
    "gopro": _gopro,
    "hide": _hide,
    "reside_its": _hazy_set(
        [str(k) for k in range(1, 5)], 2, lambda i, k, a, b: f"{i}_{k}_{b:.2f}.png", "train", (160, 160)
    ),
    "reside_ots": _hazy_set(
        [f"{k:04d}" for k in range(1, 5)],
        2,
        lambda i, k, a, b: f"{i}_{a:.2f}_{b:.2f}.jpg",
        "train",
        (160, 160),
    ),
    "sots_indoor": _hazy_set(["1400", "1401"], 2, lambda i, k, a, b: f"{i}_{k}.png", "", (128, 160)),
    "sots_outdoor": _hazy_set(
        ["0001", "0002", "0003"], 1, lambda i, k, a, b: f"{i}_0.8_0.2.jpg", "", (128, 160)
    ),
    "reside_6k": _reside_6k,
}


def demo_ids() -> list[str]:
    """The dataset ids the demo provides."""
    return list(BUILDERS)


def build_demo(data_dir: str | os.PathLike[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Build every demo set under ``<data root>/demo/prepared/<id>/``; complete sets are kept unless ``force``.

    Returns ``{"root": ..., "datasets": {id: {dataset, scope, path, counts, total, skipped, ...}}, "notes": [...]}``.
    """
    base = paths.data_dir(data_dir) / "demo" / "prepared"
    base.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"root": str(base), "datasets": {}, "notes": []}
    for set_id, builder in BUILDERS.items():
        final = paths.prepared_dir(set_id, "demo", data_dir)
        marker = read_marker(final)
        if marker is not None and not force:
            report["datasets"][set_id] = _entry(marker, final, skipped=True)
            continue
        if set_id == "dnd" and not _have_h5py():
            report["notes"].append("dnd skipped: writing DND-format (HDF5) .mat files needs h5py")
            continue
        tmp = base / f".{set_id}.building"
        if tmp.exists():
            shutil.rmtree(tmp)
        ctx = Context(dataset_id=set_id, root=paths.data_dir(data_dir), src=tmp, out=tmp, scope="demo")
        ctx.sources["demo"] = "scikit-image photographs, seeded synthetic degradations (mair.data.demo)"
        counts = builder(ctx, base)
        marker = write_marker(ctx, counts, deterministic=True)
        old = base / f".{set_id}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():  # moved aside in one step: a half-removed set never keeps its marker in place
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        report["datasets"][set_id] = _entry(marker, final, skipped=False)
    return report


def _have_h5py() -> bool:
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def _entry(marker: dict[str, Any], path: Path, skipped: bool) -> dict[str, Any]:
    return {
        "dataset": marker.get("dataset"),
        "scope": "demo",
        "path": str(path),
        "counts": marker.get("counts", {}),
        "total": marker.get("total", 0),
        "notes": marker.get("notes", []),
        "skipped": skipped,
    }
