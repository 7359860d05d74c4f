"""The paper's test-time protocol (docs/evaluation.md "Test protocol") and a memory-bounded tiling for large images.

* :func:`official_tile_forward`: ``MambaIRModel.test``, the tiling used for every MaIR test (SR, lightSR,
  CDN).
* :func:`self_ensemble`: MaIR+ (``MaIRPlusModel``), the 8x geometric self-ensemble with the tiling recomputed
  for every transformed input.
* :func:`pad_forward`: ``ImageCleanModel.pad_test``, reflect padding to a multiple of 8 for the U-Net.
* :func:`tiled_forward`: general tiling for ``mair restore`` (tile size and overlap chosen by the user), one
  tile on the device at a time, output canvas on the CPU.

All functions take ``fn``, any callable mapping a (B, C, h, w) tensor to (B, C', h*s, w*s), and work for any
batch size. They do not switch the model to eval mode or disable gradients: callers wrap them in
``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "ENSEMBLE_SIZE",
    "Forward",
    "ensemble_inverse",
    "ensemble_transform",
    "official_tile_forward",
    "official_tile_layout",
    "pad_forward",
    "self_ensemble",
    "tensor2img",
    "tiled_forward",
]


def _check_4d(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")


def _scale_of(out: torch.Tensor, tile: torch.Tensor) -> int:
    sh, rh = divmod(out.shape[-2], tile.shape[-2])
    sw, rw = divmod(out.shape[-1], tile.shape[-1])
    if rh or rw or sh != sw or sh < 1:
        raise ValueError(f"output {tuple(out.shape)} is not an integer upscaling of input {tuple(tile.shape)}")
    return sh


# ----------------------------------------------------------------------------------------------------
# Official MaIR tiling


def official_tile_layout(h: int, w: int, tile_divisor: int = 200) -> dict[str, int]:
    """The official tile counts, padding, tile size and shave for an h x w input.

    ``nh = h // 200 + 1`` tiles per column (likewise ``nw``), bottom/right padding ``ph``/``pw`` so the
    padded size divides evenly, tile size ``sh = H // nh`` and shave ``vh = sh // 10``.
    """
    nh, nw = h // tile_divisor + 1, w // tile_divisor + 1
    ph = (nh - h % nh) % nh
    pw = (nw - w % nw) % nw
    sh, sw = (h + ph) // nh, (w + pw) // nw
    return {"nh": nh, "nw": nw, "ph": ph, "pw": pw, "sh": sh, "sw": sw, "vh": sh // 10, "vw": sw // 10}


def _official_slice(i: int, n: int, size: int, shave: int) -> slice:
    if n == 1:
        return slice(0, size)
    if i == 0:
        return slice(0, size + shave)
    if i == n - 1:
        return slice(i * size - shave, (i + 1) * size)
    return slice(i * size - shave, (i + 1) * size + shave)


def official_tile_forward(
    fn: Forward, lq: torch.Tensor, scale: int | None = None, tile_divisor: int = 200
) -> torch.Tensor:
    """``MambaIRModel.test``: split into ``(h//200+1) x (w//200+1)`` tiles with a shave of a tenth, run
    each, merge.

    The input is reflect-padded bottom/right so it divides into equal tiles; tile (i, j) is extended by the
    shave on each side that has a neighbour; from each tile output only its own ``sh*s x sw*s`` block is
    kept (starting at ``vh*s`` except for the first tile); then the padding is cropped. ``scale`` is
    inferred from the first tile output when not given. The canvas lives on the device of the tile outputs
    (the official canvas is on the CPU and assumes batch 1; neither matters for the values).
    """
    _check_4d(lq)
    b, _, h, w = lq.shape
    lay = official_tile_layout(h, w, tile_divisor)
    nh, nw, ph, pw, sh, sw, vh, vw = (lay[k] for k in ("nh", "nw", "ph", "pw", "sh", "sw", "vh", "vw"))
    img = F.pad(lq, (0, pw, 0, ph), mode="reflect") if (ph or pw) else lq
    canvas: torch.Tensor | None = None
    s = scale
    for i in range(nh):
        rows = _official_slice(i, nh, sh, vh)
        for j in range(nw):
            cols = _official_slice(j, nw, sw, vw)
            tile = img[..., rows, cols]
            out = fn(tile)
            if s is None:
                s = _scale_of(out, tile)
            if canvas is None:
                canvas = out.new_zeros(b, out.shape[1], (h + ph) * s, (w + pw) * s)
            r0 = 0 if i == 0 else vh * s
            c0 = 0 if j == 0 else vw * s
            canvas[..., i * sh * s : (i + 1) * sh * s, j * sw * s : (j + 1) * sw * s] = out[
                ..., r0 : r0 + sh * s, c0 : c0 + sw * s
            ]
    assert canvas is not None and s is not None
    return canvas[..., : (h + ph) * s - ph * s, : (w + pw) * s - pw * s]


# ----------------------------------------------------------------------------------------------------
# MaIR+ self-ensemble

ENSEMBLE_SIZE = 8


def ensemble_transform(x: torch.Tensor, idx: int) -> torch.Tensor:
    """The ``idx``-th MaIR+ input: x, vflip, hflip, hflip(vflip), then the H/W transposes of those four."""
    if not 0 <= idx < ENSEMBLE_SIZE:
        raise ValueError(f"ensemble index must be in 0..7, got {idx}")
    k = idx % 4
    if k in (1, 3):
        x = x.flip(-2)  # vflip: flips H
    if k in (2, 3):
        x = x.flip(-1)  # hflip: flips W
    if idx >= 4:
        x = x.transpose(-2, -1)
    return x


def ensemble_inverse(y: torch.Tensor, idx: int) -> torch.Tensor:
    """Undo :func:`ensemble_transform` as the official code: transpose (idx >= 4), then hflip, then vflip."""
    if not 0 <= idx < ENSEMBLE_SIZE:
        raise ValueError(f"ensemble index must be in 0..7, got {idx}")
    if idx >= 4:
        y = y.transpose(-2, -1)
    if idx % 4 in (2, 3):
        y = y.flip(-1)
    if idx % 4 in (1, 3):
        y = y.flip(-2)
    return y


def self_ensemble(fn: Forward, x: torch.Tensor, tile: bool = True, tile_divisor: int = 200) -> torch.Tensor:
    """MaIR+: run ``fn`` (through the official tiling when ``tile``) on the 8 transforms, invert, take the
    mean.

    The tiling is recomputed from each transformed input's own h and w, as the official code does.
    """
    _check_4d(x)
    total: torch.Tensor | None = None
    for idx in range(ENSEMBLE_SIZE):
        xi = ensemble_transform(x, idx).contiguous()
        yi = official_tile_forward(fn, xi, tile_divisor=tile_divisor) if tile else fn(xi)
        yi = ensemble_inverse(yi, idx)
        total = yi.clone() if total is None else total + yi
    assert total is not None
    return total / ENSEMBLE_SIZE


# ----------------------------------------------------------------------------------------------------
# U-Net padding


def _pad_bottom_right(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    if not (ph or pw):
        return x
    if ph < x.shape[-2] and pw < x.shape[-1]:
        return F.pad(x, (0, pw, 0, ph), mode="reflect")
    # Reflect padding needs pad < size; only tiny images get here. Reflect repeatedly (mirror of mirror).
    while ph or pw:
        step_h = min(ph, x.shape[-2] - 1)
        step_w = min(pw, x.shape[-1] - 1)
        if step_h == 0 and step_w == 0:  # a 1-pixel dimension: nothing to reflect
            return F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        ph, pw = ph - step_h, pw - step_w
    return x


def pad_forward(fn: Forward, x: torch.Tensor, multiple: int = 8, scale: int = 1) -> torch.Tensor:
    """``pad_test``: reflect-pad bottom/right to a multiple of ``multiple``, run ``fn``, crop to h*s x w*s."""
    _check_4d(x)
    h, w = x.shape[-2:]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    out = fn(_pad_bottom_right(x, ph, pw))
    return out[..., : h * scale, : w * scale]


# ----------------------------------------------------------------------------------------------------
# General tiling for large images (mair restore)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(length: int, lead: int, trail: int) -> torch.Tensor:
    """1-D blend weights: linear ramps of ``lead``/``trail`` samples at the ends, 1 inside; never 0."""
    w = torch.ones(length, dtype=torch.float32)
    if lead:
        w[:lead] = torch.arange(1, lead + 1, dtype=torch.float32) / (lead + 1)
    if trail:
        w[length - trail :] = torch.minimum(
            w[length - trail :], torch.arange(trail, 0, -1, dtype=torch.float32) / (trail + 1)
        )
    return w


def tiled_forward(
    fn: Forward,
    x: torch.Tensor,
    tile_size: int,
    tile_overlap: int = 32,
    scale: int | None = None,
    blend: bool = True,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run ``fn`` on overlapping ``tile_size`` tiles of ``x`` one at a time; assemble on the CPU.

    Tiles start every ``tile_size - tile_overlap`` pixels, the last one flush with the border. With
    ``blend`` the overlaps are blended with linear ramps (no seams); otherwise each output pixel comes from
    one tile, cut at the middle of each overlap. Each tile is moved to ``device`` (default: the device of
    ``x``) before ``fn`` and its output is moved back to the CPU, so at most one tile occupies the
    accelerator. ``progress(done, total)`` is called after each tile.
    """
    _check_4d(x)
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= tile_overlap < tile_size:
        raise ValueError(f"tile_overlap must be in [0, tile_size), got {tile_overlap} with tile {tile_size}")
    target = torch.device(device) if device is not None else x.device
    b, _, h, w = x.shape
    rows = _tile_starts(h, tile_size, tile_overlap)
    cols = _tile_starts(w, tile_size, tile_overlap)
    th, tw = min(tile_size, h), min(tile_size, w)
    total = len(rows) * len(cols)
    canvas: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    s = scale
    done = 0
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            tile = x[..., r : r + th, c : c + tw].to(target)
            out = fn(tile)
            if s is None:
                s = _scale_of(out, tile)
            out = out.detach().to("cpu", torch.float32)
            if canvas is None:
                canvas = torch.zeros(b, out.shape[1], h * s, w * s, dtype=torch.float32)
                if blend:
                    weight = torch.zeros(1, 1, h * s, w * s, dtype=torch.float32)
            if blend:
                assert weight is not None
                lead_h = (rows[i - 1] + th - r) * s if i > 0 else 0
                trail_h = (r + th - rows[i + 1]) * s if i + 1 < len(rows) else 0
                lead_w = (cols[j - 1] + tw - c) * s if j > 0 else 0
                trail_w = (c + tw - cols[j + 1]) * s if j + 1 < len(cols) else 0
                wt = torch.outer(_ramp(th * s, lead_h, trail_h), _ramp(tw * s, lead_w, trail_w))[None, None]
                canvas[..., r * s : (r + th) * s, c * s : (c + tw) * s] += out * wt
                weight[..., r * s : (r + th) * s, c * s : (c + tw) * s] += wt
            else:
                top = (r + rows[i - 1] + th + 1) // 2 if i > 0 else r
                bottom = (rows[i + 1] + r + th + 1) // 2 if i + 1 < len(rows) else r + th
                left = (c + cols[j - 1] + tw + 1) // 2 if j > 0 else c
                right = (cols[j + 1] + c + tw + 1) // 2 if j + 1 < len(cols) else c + tw
                canvas[..., top * s : bottom * s, left * s : right * s] = out[
                    ..., (top - r) * s : (bottom - r) * s, (left - c) * s : (right - c) * s
                ]
            done += 1
            if progress is not None:
                progress(done, total)
    assert canvas is not None
    if blend:
        assert weight is not None
        canvas /= weight
    return canvas


# ----------------------------------------------------------------------------------------------------
# Output quantisation


def tensor2img(t: torch.Tensor) -> np.ndarray:
    """The official ``tensor2img`` for one image, in RGB: clamp to [0, 1], x255 in float32, round, uint8, HWC.

    Accepts (C, H, W) or (1, C, H, W); a 1-channel result is returned as (H, W).
    """
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"tensor2img converts one image, got batch {t.shape[0]}")
        t = t[0]
    arr = t.detach().float().cpu().clamp(0, 1).numpy().transpose(1, 2, 0)  # never in place
    arr = (arr * 255.0).round().astype(np.uint8)
    return arr[..., 0] if arr.shape[2] == 1 else arr
