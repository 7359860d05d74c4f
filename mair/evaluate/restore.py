"""``mair restore``: apply a trained MaIR network to your own images.

Inputs are files or folders (searched recursively) of PNG, JPEG, TIFF or BMP images, 8- or 16-bit (16-bit in
gives 16-bit out; float TIFF stays float), grey (processed as 3 identical channels and written back grey) or
RGBA (the alpha channel is kept, bicubic-upscaled for SR, or dropped). Without ``--tile`` each image goes
through the paper protocol (MaIR: the official 200-px tiling; U-Net: padding to a multiple of 8); with
``--tile SIZE`` it is processed in overlapping tiles one at a time, the result assembled on the CPU, which
bounds device memory for large images. Outputs are written atomically; an unreadable file is reported and the
others still processed (exit status 1 at the end when any failed).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mair import experiments
from mair.common.atomic import atomic_write_bytes
from mair.common.errors import missing_weights_message, not_a_file_reason
from mair.evaluate.runner import EvaluationError, eval_spec, experiment_at, inference_runtime
from mair.experiments.spec import Network

INPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "INPUT_EXTENSIONS",
    "LoadedImage",
    "Restorer",
    "check_pixel_count",
    "collect_inputs",
    "find_experiment_for_weights",
    "header_size",
    "load_restorer",
    "plan_outputs",
    "read_image",
    "restore_files",
    "write_image",
]


# ----------------------------------------------------------------------------------------------------------
# Image files


#: Default ``--max-pixels``: larger images are refused from their header, before any decoding.
DEFAULT_MAX_PIXELS = 250_000_000


@dataclass
class LoadedImage:
    """An image in the file's own sample type, plus what is needed to write the result back in the same form.

    ``pixels`` stay 8-bit, 16-bit or float as in the file (a quarter of the memory of float32 for 8-bit
    images); :attr:`rgb` is the float32 view the network sees, made on demand (the restorer converts one tile
    at a time with ``--tile``).
    """

    pixels: np.ndarray  # HWC RGB, uint8, uint16 or float32 (grey files repeated to 3 channels)
    alpha: np.ndarray | None  # HW, same sample type as pixels
    dtype: np.dtype  # uint8, uint16 or float32 (the file's sample type)
    grey: bool

    @property
    def rgb(self) -> np.ndarray:
        """float32 HWC RGB in [0, 1]."""
        return _to_unit(self.pixels)

    @property
    def alpha_unit(self) -> np.ndarray | None:
        """The alpha channel as float32 HW in [0, 1], or None."""
        return None if self.alpha is None else _to_unit(self.alpha)


def _to_unit(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise ValueError(f"unsupported sample type {arr.dtype} (8-bit, 16-bit or float images only)")


def header_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header without decoding its pixels; None when it cannot be told."""
    from mair.data.image_io import png_size

    size = png_size(path)
    if size is not None:
        return size
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only the header is read here: the size is what we want to know
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # not an image Pillow knows: the decoder reports it
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return int(height), int(width)


def check_pixel_count(path: Path, max_pixels: int, scale: int = 1) -> None:
    """Raise ``ValueError`` when the header says the image has more than ``max_pixels`` pixels."""
    size = header_size(path)
    if size is None:
        return
    height, width = size
    if height * width > max_pixels:
        out_gib = height * width * scale * scale * 3 * 4 / 2**30
        raise ValueError(
            f"{height}x{width} = {height * width:,} pixels, more than --max-pixels {max_pixels:,}; "
            f"raise the limit if this machine has the memory (the float32 result alone takes "
            f"{out_gib:.1f} GiB)"
        )


def read_image(path: Path) -> LoadedImage:
    """Read an image file (any of :data:`INPUT_EXTENSIONS`) in its own sample type; raise ``ValueError`` if it
    cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if not data.size:
        raise ValueError("empty file")
    # JPEGs carry no alpha: read them so that their EXIF orientation is applied (IMREAD_UNCHANGED ignores it).
    flags = (
        (cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
        if path.suffix.lower() in (".jpg", ".jpeg")
        else cv2.IMREAD_UNCHANGED
    )
    img = cv2.imdecode(data, flags)
    del data
    if img is None:
        raise ValueError("not a readable image (corrupt or unsupported format)")
    if img.dtype not in (np.uint8, np.uint16) and not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"unsupported sample type {img.dtype} (8-bit, 16-bit or float images only)")
    if np.issubdtype(img.dtype, np.floating) and img.dtype != np.float32:
        img = img.astype(np.float32)
    alpha = None
    if img.ndim == 2 or img.shape[2] == 1:
        grey = True
        pixels = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    elif img.shape[2] in (3, 4):
        grey = False
        if img.shape[2] == 4:
            alpha = np.ascontiguousarray(img[..., 3])
        pixels = np.ascontiguousarray(img[..., 2::-1])  # BGR(A) -> RGB
    else:
        raise ValueError(f"unsupported channel count {img.shape[2]}")
    return LoadedImage(pixels, alpha, np.dtype(img.dtype), grey)


def _from_unit(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    arr = np.clip(arr, 0.0, 1.0)
    if dtype == np.uint8:
        return (arr * 255.0).round().astype(np.uint8)
    if dtype == np.uint16:
        return (arr * 65535.0).round().astype(np.uint16)
    return arr.astype(np.float32)


def write_image(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, dtype: np.dtype, grey: bool) -> None:
    """Write float RGB (+ alpha) in [0, 1] as ``dtype`` to ``path`` atomically (format from the suffix)."""
    if grey:
        out = _from_unit(rgb.mean(axis=2), dtype)
        if alpha is not None:
            out = np.dstack([out, _from_unit(alpha, dtype)])
    else:
        planes = [rgb[..., 2], rgb[..., 1], rgb[..., 0]] + ([alpha] if alpha is not None else [])
        out = _from_unit(np.dstack(planes), dtype)
    suffix = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, out, params)
    if not ok:
        raise ValueError(f"cannot encode {dtype} image as {suffix}")
    atomic_write_bytes(path, buf.tobytes())


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, Path]]:
    """``(source, output path relative to OUTDIR)`` for every file named or found (recursively) in a folder.

    A named file keeps its name; files in a folder keep their path relative to that folder. Files with other
    extensions inside folders are skipped; a named file is always tried (and reported if unreadable).
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if (
                    file.is_file()
                    and file.suffix.lower() in INPUT_EXTENSIONS
                    and not any(part.startswith(".") for part in file.relative_to(path).parts)
                ):
                    found.append((file, file.relative_to(path)))
        else:
            found.append((path, Path(path.name)))
    return found


def plan_outputs(inputs: Sequence[str | os.PathLike[str]], outdir: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """:func:`collect_inputs`, refusing inputs that would be written to one output before any is processed.

    The same file named twice is restored once. Two different files with one output path (``a/x.png`` and
    ``b/x.png``, or two folders holding the same relative path) raise :class:`EvaluationError` naming both.
    """
    planned: dict[Path, Path] = {}
    sources: set[Path] = set()
    result = []
    for src, rel in collect_inputs(inputs):
        real = src.resolve()
        if real in sources:
            continue
        previous = planned.get(rel)
        if previous is not None:
            raise EvaluationError(
                f"{previous} and {src} would both be written to {Path(outdir) / rel}; restore them into "
                f"different -o folders (or rename one)"
            )
        planned[rel] = src
        sources.add(real)
        result.append((src, rel))
    return result


# ----------------------------------------------------------------------------------------------------------
# The restorer


def _as_tensor_array(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous array that torch can hold: uint16 samples are viewed as int16 (same bits)."""
    arr = np.ascontiguousarray(arr)
    return arr.view(np.int16) if arr.dtype == np.uint16 else arr


def _unit_tensor(t: Any) -> Any:
    """float32 in [0, 1] from a float, uint8 or (int16-viewed) uint16 tensor."""
    import torch

    if t.is_floating_point():
        return t.float()
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.dtype == torch.int16:
        return t.to(torch.int32).bitwise_and(0xFFFF).float() / 65535.0
    raise ValueError(f"unsupported sample type {t.dtype}")


class Restorer:
    """A network plus the way to apply it: paper protocol or user tiles, optionally MaIR+.

    ``model`` is any module mapping (B, 3, h, w) to (B, 3, h*scale, w*scale); ``protocol`` is ``tile``
    (MaIR: official 200-px tiling without user tiles) or ``pad8`` (U-Net: pad to a multiple of 8, also per
    user tile).
    """

    def __init__(
        self,
        model: Any,
        scale: int = 1,
        protocol: str = "tile",
        device: str = "cpu",
        tile: int | None = None,
        tile_overlap: int = 32,
        self_ensemble: bool = False,
        tile_blend: bool = True,
    ) -> None:
        if protocol not in ("tile", "pad8"):
            raise ValueError(f"protocol must be 'tile' or 'pad8', got {protocol!r}")
        if tile is not None and tile <= tile_overlap:
            raise ValueError(f"--tile ({tile}) must be larger than --tile-overlap ({tile_overlap})")
        self.model = model
        self.scale = int(scale)
        self.protocol = protocol
        self.device = device
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.tile_blend = tile_blend
        self.self_ensemble = self_ensemble
        #: Images with more pixels than this are refused before decoding (``--max-pixels``).
        self.max_pixels = DEFAULT_MAX_PIXELS
        #: How the network runs (:class:`mair.runtime.resolve.RuntimeSettings`), set by :func:`load_restorer`.
        self.runtime: Any = None
        #: Called as ``on_tile(done, total)`` after every user tile of the current image, counted over all
        #: self-ensemble passes (for a progress display of large images); ``None``: not called.
        self.on_tile: Callable[[int, int], None] | None = None
        self._pass, self._passes = 0, 1

    def _tile_progress(self) -> Callable[[int, int], None] | None:
        if self.on_tile is None:
            return None
        report, index, passes = self.on_tile, self._pass, self._passes
        return lambda done, total: report(index * total + done, passes * total)

    def _net(self, t: Any) -> Any:
        from mair.evaluate.protocol import pad_forward

        t = _unit_tensor(t)  # a tile in the file's sample type becomes float32 here, one at a time
        if self.protocol == "pad8":
            return pad_forward(self.model, t, 8)
        return self.model(t)

    def _forward(self, x: Any) -> Any:
        """One (possibly ensemble-transformed) image through the chosen tiling."""
        from mair.evaluate.protocol import official_tile_forward, tiled_forward

        if self.tile is not None:
            return tiled_forward(
                self._net,
                x,
                self.tile,
                self.tile_overlap,
                scale=self.scale,
                blend=self.tile_blend,
                device=self.device,
                progress=self._tile_progress(),
            )
        x = x.to(self.device)
        if self.protocol == "tile":
            return official_tile_forward(self.model, x, scale=self.scale).cpu()
        return self._net(x).cpu()

    def restore_array(self, rgb: np.ndarray) -> np.ndarray:
        """Restore an HWC RGB image: float in [0, 1], or uint8/uint16 samples (kept in that type, converted
        tile by tile with ``--tile``); returns float32 HWC (unclamped) on the CPU."""
        import torch

        from mair.evaluate.protocol import ensemble_inverse, ensemble_transform

        x = torch.from_numpy(_as_tensor_array(rgb.transpose(2, 0, 1)))[None]
        if self.tile is None:  # the whole image goes through the network at once anyway
            x = _unit_tensor(x)
        with torch.no_grad():
            if self.self_ensemble:
                total = None
                self._passes = 8
                for idx in range(8):
                    self._pass = idx
                    y = ensemble_inverse(self._forward(ensemble_transform(x, idx).contiguous()), idx)
                    total = y.float() if total is None else total + y.float()
                assert total is not None
                out = total / 8
            else:
                self._pass, self._passes = 0, 1
                out = self._forward(x)
        return out[0].float().cpu().numpy().transpose(1, 2, 0)

    def restore_file(self, src: Path, dst: Path, keep_alpha: bool = True) -> str:
        """Restore one file into ``dst``; returns a short note (e.g. about the alpha channel).

        Images with more than :attr:`max_pixels` pixels are refused from their header (``ValueError``).
        """
        check_pixel_count(src, self.max_pixels, self.scale)
        img = read_image(src)
        out = self.restore_array(img.pixels)
        expected = (img.pixels.shape[0] * self.scale, img.pixels.shape[1] * self.scale)
        if out.shape[:2] != expected:
            raise RuntimeError(f"network output {out.shape[:2]} is not {expected} (wrong scale?)")
        note = ""
        alpha = None
        if img.alpha is not None:
            if keep_alpha:
                alpha = img.alpha_unit
                if self.scale != 1:
                    alpha = np.clip(
                        cv2.resize(alpha, (expected[1], expected[0]), interpolation=cv2.INTER_CUBIC), 0.0, 1.0
                    )
                    note = f"alpha channel kept (bicubic-upscaled x{self.scale} and re-attached)"
                else:
                    note = "alpha channel kept unchanged"
            else:
                note = "alpha channel dropped (written without alpha)"
        write_image(dst, out, alpha, img.dtype, img.grey)
        return note


def find_experiment_for_weights(state: Mapping[str, Any], scope: str = "paper") -> str:
    """The id of an experiment whose network has exactly the key names and shapes of ``state``.

    Experiments with identical network sections are interchangeable; networks that differ but fit the same
    tensors (e.g. only ``scan_len`` differs) make the choice ambiguous and raise. ``scope`` ``demo`` compares
    with the demo-size networks.
    """
    from mair.models import from_official

    ids = sorted(experiments.experiment_ids())
    arch = "MaIRUNet" if any(k.startswith("encoder_level1.") for k in state) else "MaIR"
    width_key = "patch_embed.proj.weight" if arch == "MaIRUNet" else "conv_first.weight"
    width = int(state[width_key].shape[0]) if width_key in state else None
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    groups: dict[str, list[str]] = {}
    networks: dict[str, Network] = {}
    for exp_id in ids:
        net = experiment_at(exp_id, scope).network
        if net.arch != arch:
            continue
        kw = net.constructor_kwargs()
        if width is not None and int(kw.get("embed_dim" if arch == "MaIR" else "dim", -1)) != width:
            continue
        key = json.dumps({"arch": net.arch, "kwargs": kw}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(exp_id)
        networks[key] = net
    matches = []
    for key, net in networks.items():
        model = from_official(net.arch, **net.constructor_kwargs())
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes:
            matches.append(groups[key])
        del model
    if not matches:
        raise EvaluationError(
            "these weights fit no experiment's network; name the experiment with --experiment ID or --arch-from ID"
        )
    if len(matches) > 1:
        raise EvaluationError(
            "these weights fit several different networks ("
            + "; ".join(", ".join(m) for m in matches)
            + "); choose one with --arch-from ID"
        )
    return matches[0][0]


def load_restorer(
    experiment: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    arch_from: str | None = None,
    *,
    scope: str = "paper",
    results_dir: str = "results/trained",
    device: str | None = None,
    tile: int | None = None,
    tile_overlap: int = 32,
    self_ensemble: bool = False,
    tile_blend: bool = True,
    log: Callable[[str], None] | None = None,
    exact: bool = False,
    compile: bool | None = None,
) -> Restorer:
    """Build a :class:`Restorer` from an experiment and/or a weights file (official or ours).

    ``exact``: true fp32 (``--exact``); ``compile``: compile the network for the tile shape (needs ``tile``).
    Everything else about how the network runs is :func:`mair.runtime.resolve_runtime`'s default."""
    from mair.evaluate.runner import build_model, default_weights, resolve_device
    from mair.models.checkpoint import CheckpointError, read_state_dict

    say = log or (lambda msg: print(msg, file=sys.stderr))
    if experiment and arch_from and experiment != arch_from:
        raise EvaluationError("give either --experiment or --arch-from, not both")
    exp_id = experiment or arch_from
    if weights is None:
        if exp_id is None:
            raise EvaluationError("name the network: --experiment ID, or --weights PATH [--arch-from ID]")
        path = default_weights(exp_id, scope, results_dir)
        if not path.is_file():
            raise EvaluationError(
                f"no weights for {exp_id}: expected {path}. Put the trained or official weights there "
                f"(e.g. the released checkpoint of this experiment), or pass --weights PATH."
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise EvaluationError(missing_weights_message(path))
    if exp_id is None:
        try:
            state, _ = read_state_dict(path)
        except CheckpointError as error:
            raise EvaluationError(str(error)) from None
        exp_id = find_experiment_for_weights(state, scope)
        say(f"weights {path.name} fit the network of experiment {exp_id}")
    if compile and tile is None:
        raise EvaluationError("compiling needs tiles (--tile SIZE): without them every image size compiles again")
    spec = eval_spec(experiment_at(exp_id, scope))
    dev = resolve_device(device)
    runtime = inference_runtime(dev, exact, compile=compile)
    model = runtime.prepare_model(build_model(spec, path, dev))
    restorer = Restorer(
        _compiled_for_tiles(model, runtime),
        scale=spec.scale,
        protocol=spec.protocol,
        device=dev,
        tile=tile,
        tile_overlap=tile_overlap,
        self_ensemble=self_ensemble,
        tile_blend=tile_blend,
    )
    restorer.runtime = runtime
    return restorer


def _compiled_for_tiles(model: Any, runtime: Any) -> Any:
    """``model`` compiled as ``runtime`` says; with CUDA graphs every call starts a new graph step (each tile's
    output is copied off the device before the next call)."""
    compiled = runtime.compile(model)
    if compiled is model or not runtime.cuda_graphs:
        return compiled
    import torch

    def forward(t: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(t)

    return forward


# ----------------------------------------------------------------------------------------------------------
# The loop over files


def _progress(total: int) -> tuple[Callable[[], None], Callable[[str], None], Callable[[], None]]:
    """(advance, write a message, close) of a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", file=sys.stderr)
    return (lambda: bar.update(1)), (lambda msg: bar.write(msg, file=sys.stderr)), bar.close


class _TileProgress:
    """A second progress line (tqdm) for the tiles of one large image."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="tile", desc="  tiles", leave=False, position=1, file=sys.stderr)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


def restore_files(
    restorer: Restorer,
    inputs: Sequence[str | os.PathLike[str]],
    outdir: str | os.PathLike[str],
    keep_alpha: bool = True,
    progress: bool = True,
) -> tuple[int, list[tuple[Path, str]]]:
    """Restore every input into ``outdir``; returns ``(number written, [(file, error), ...])``.

    Inputs that would overwrite each other's output raise :class:`EvaluationError` before any is processed
    (:func:`plan_outputs`); a file that fails (unreadable, too many pixels, out of memory) is reported and the
    others go on.
    """
    files = plan_outputs(inputs, outdir)
    out_root = Path(outdir)
    failures: list[tuple[Path, str]] = []
    written = 0
    if progress:
        advance, write, close_bar = _progress(len(files))
        tiles = _TileProgress()
        restorer.on_tile = tiles

        def close() -> None:
            tiles.close()
            restorer.on_tile = None
            close_bar()
    else:

        def advance() -> None:
            return None

        def write(msg: str) -> None:
            print(msg, file=sys.stderr)

        def close() -> None:
            return None

    try:
        for src, rel in files:
            dst = out_root / rel
            try:
                if not src.is_file():
                    raise ValueError(not_a_file_reason(src))
                if dst.resolve() == src.resolve():
                    raise ValueError("output would overwrite the input; choose another -o folder")
                note = restorer.restore_file(src, dst, keep_alpha=keep_alpha)
                written += 1
                if note:
                    write(f"{src}: {note}")
            except (ValueError, OSError, RuntimeError, MemoryError, cv2.error) as error:
                if isinstance(error, MemoryError):
                    error = MemoryError(
                        f"out of memory ({error or 'allocation failed'}); try --tile SIZE or a smaller --max-pixels"
                    )
                failures.append((src, str(error)))
                write(f"{src}: FAILED: {error}")
            advance()
    finally:
        close()
    return written, failures


def iter_errors(failures: Sequence[tuple[Path, str]]) -> Iterator[str]:
    """Lines describing failed files."""
    for path, msg in failures:
        yield f"  {path}: {msg}"
