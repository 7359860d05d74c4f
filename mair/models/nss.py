"""Nested S-shaped Scanning (NSS): the four scan orders of MaIR, in closed form.

The stripe path ``P(H, W, s, t)`` splits the columns of an H×W grid into regions, left to right: the
offset region ``[0, t)`` when ``t > 0``, then full stripes of width ``s``, then a narrower remainder
stripe at the right edge. Region ``m`` is walked top→bottom when ``m`` is even and bottom→top when odd;
inside a region the ``j``-th visited row goes left→right when ``j`` is even and right→left when odd.

Every pixel's position on the path has a closed form. All regions before a pixel's region span all ``H``
rows, so a pixel in column ``c`` of the region ``[start, start + width)`` with region index ``m`` is at::

    j   = r            if m is even else H - 1 - r     # visited-row index inside the region
    u   = c - start    if j is even else start + width - 1 - c
    pos = H * start + j * width + u

Splitting rows by parity turns this into ``pos[r, c] = base[r % 2, c] + coef[c] * r`` with O(W) per-column
terms, so each (H, W) grid is written by two broadcast ``addcmul`` passes straight into the output (no loop
over pixels or rows, no (H, W) temporaries). The paths are the inverse permutations, written by one
scatter (the rotated sequences by ``L - 1 - path``); nothing is sorted.

Edge case ``t > W`` (or ``t > H`` for the transposed sequences): the official code's negative modulo
gives an order that is not an S-shaped path (not reached by any experiment). Here the offset region is
**clipped to the grid**: its width is ``min(t, W)``, so when ``t >= W`` the whole grid is a single
region walked as one snake and the result is still an S-shaped permutation. For every ``t <= W`` the
order equals the official code's (docs/networks.md "NSS scan orders").
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict

import torch
from torch import Tensor

__all__ = ["cache_info", "clear_cache", "scan_orders", "stripe_path"]

_MAX_ENTRIES = 64
_MAX_BYTES = 512 * 2**20  # total size of the cached tensors; the newest entry is always kept

_cache: OrderedDict[tuple[int, int, int, int, str], tuple[Tensor, Tensor]] = OrderedDict()
_cache_bytes = 0
_lock = threading.Lock()


def _as_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int ≥ ``minimum``; TypeError for non-integers, ValueError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def _check(
    H: object, W: object, s: object, t: object, names: tuple[str, str] = ("scan_len", "shift")
) -> tuple[int, int, int, int]:
    """Validate the grid size, stripe width and offset (``0 <= t < s``); ``names`` name s and t in errors."""
    s_name, t_name = names
    h = _as_int("H", H, 1)
    w = _as_int("W", W, 1)
    s_ = _as_int(s_name, s, 1)
    t_ = _as_int(t_name, t, 0)
    if t_ >= s_:
        raise ValueError(f"{t_name} must be < {s_name} ({s_}), got {t_}")
    return h, w, s_, t_


def _stripe_terms(H: int, W: int, s: int, t: int) -> tuple[Tensor, Tensor]:
    """Per-column terms of the position grid of P(H, W, s, t): ``pos[r, c] = base[r % 2, c] + coef[c] * r``.

    ``base`` is (2, W) and ``coef`` (W,), both int64. Only O(W) work: the grid itself is written by
    :func:`_fill`.
    """
    te = min(t, W)  # the offset region is clipped to the grid (see the module docstring)
    c = torch.arange(W, dtype=torch.int64)
    # Stripe counter: -1 inside the offset region (te <= t < s), 0, 1, ... for the stripes after it.
    q = torch.div(c - te, s, rounding_mode="floor")
    m = q + 1 if te > 0 else q  # region index, 0 for the offset region when there is one
    start = (te + q * s).clamp_(min=0)
    width = (te + (q + 1) * s).clamp_(max=W) - start
    odd_region = (m & 1).bool()
    left_to_right = c - start  # column offset inside the region when the visited row index j is even
    right_to_left = width - 1 - left_to_right  # ... and when j is odd
    # Even region: j = r, so j*width = r*width and j has the parity of r.
    # Odd region: j = H-1-r, so j*width = (H-1)*width - r*width and j has the parity of r xor (H-1).
    coef = torch.where(odd_region, -width, width)
    offset = H * start + torch.where(odd_region, (H - 1) * width, 0)
    flip_parity = odd_region & bool((H - 1) & 1)
    base = torch.empty(2, W, dtype=torch.int64)
    base[0] = offset + torch.where(flip_parity, right_to_left, left_to_right)  # rows r with r even
    base[1] = offset + torch.where(flip_parity, left_to_right, right_to_left)  # rows r with r odd
    return base, coef


def _rotated_terms(H: int, base: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """Terms of the 180°-rotated grid ``pos[H-1-r, W-1-c]`` from the terms of ``pos``."""
    swap = (H - 1) & 1  # the parity of H-1-r is the parity of r xor (H-1)
    rot_base = (base[[swap, 1 - swap]] + coef * (H - 1)).flip(1)
    return rot_base, -coef.flip(0)


def _fill(out: Tensor, base: Tensor, coef: Tensor) -> Tensor:
    """Write ``out[g, r, c] = base[g, r % 2, c] + coef[g, c] * r`` into the (possibly strided) view ``out``.

    ``out`` is (G, n, m), ``base`` (G, 2, m), ``coef`` (G, m). The rows are paired as (n // 2, 2) so all G
    grids are written by a single broadcast op (few parallel regions: cheap even on a busy CPU).
    """
    n = out.shape[1]
    half = n // 2
    if half:
        rows = torch.arange(2 * half, dtype=torch.int64).view(1, half, 2, 1)
        paired = out[:, : 2 * half].unflatten(1, (half, 2))  # a view, also of a strided ``out``
        torch.addcmul(base[:, None], rows, coef[:, None, None], out=paired)
    if n % 2:  # the last row of an odd height has an even index
        torch.add(base[:, 0], coef, alpha=n - 1, out=out[:, n - 1])
    return out


def stripe_path(H: int, W: int, s: int, t: int = 0) -> Tensor:
    """The stripe path P(H, W, s, t) as flat raster indices ``r*W + c`` in visiting order (int64, H*W).

    ``s`` is the stripe width and ``t`` the offset (``0 <= t < s``); see the module docstring. Returns a
    new tensor on the CPU (not cached).
    """
    h, w, s_, t_ = _check(H, W, s, t, names=("s", "t"))
    L = h * w
    base, coef = _stripe_terms(h, w, s_, t_)
    pos = _fill(torch.empty(1, h, w, dtype=torch.int64), base[None], coef[None]).view(L)
    return torch.empty(L, dtype=torch.int64).scatter_(0, pos, torch.arange(L, dtype=torch.int64))


def _build(H: int, W: int, s: int, t: int) -> tuple[Tensor, Tensor]:
    """Build (scan_ids, inverse_ids), both (4, H*W) int64, on the CPU."""
    L = H * W
    inverse_ids = torch.empty(4, L, dtype=torch.int64)
    inv = inverse_ids.view(4, H, W)
    # Sequences 0 and 1 (seq1 = (L-1) - seq0, so pos1[p] = pos0[L-1-p], the 180° rotation of the grid).
    base, coef = _stripe_terms(H, W, s, t)
    rot_base, rot_coef = _rotated_terms(H, base, coef)
    _fill(inv[0:2], torch.stack((base, rot_base)), torch.stack((coef, rot_coef)))
    # Sequences 2 and 3: the same on the transposed W×H grid, written through transposed views.
    base, coef = _stripe_terms(W, H, s, t)
    rot_base, rot_coef = _rotated_terms(W, base, coef)
    _fill(inv[2:4].transpose(1, 2), torch.stack((base, rot_base)), torch.stack((coef, rot_coef)))
    # The paths are the inverse permutations: scan_ids[k][inverse_ids[k][p]] = p, one scatter for all four.
    arange = torch.arange(L, dtype=torch.int64).expand(4, L)
    scan_ids = torch.empty(4, L, dtype=torch.int64).scatter_(1, inverse_ids, arange)
    return scan_ids, inverse_ids


def scan_orders(H: int, W: int, scan_len: int, shift: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The four NSS scan orders of an H×W map and their inverse permutations.

    Returns ``(scan_ids, inverse_ids)``, both (4, L) int64 with L = H*W, on ``device``:

    * ``scan_ids[0]``: P(H, W, scan_len, shift) as raster ids ``r*W + c`` (vertical stripes);
    * ``scan_ids[1] = (L-1) - scan_ids[0]``: the same path on the 180°-rotated image (not the reverse);
    * ``scan_ids[2]``: ``j*W + i`` for ``(i, j)`` in P(W, H, scan_len, shift) (horizontal bands);
    * ``scan_ids[3] = (L-1) - scan_ids[2]``;
    * ``inverse_ids[k][p]``: the position of pixel ``p`` in sequence ``k``, so
      ``inverse_ids[k][scan_ids[k]] == arange(L)``.

    ``shift`` is the offset t: 0 for unshifted blocks, ``scan_len // 2`` for shifted ones; any
    ``0 <= shift < scan_len`` is accepted. Results are cached per (H, W, scan_len, shift, device) in a
    bounded LRU cache (64 entries, 512 MiB): they are built on the CPU and moved to ``device`` once.

    The returned tensors are **shared and read-only**: every caller with the same key gets the same
    objects, so never modify them in place (clone first).
    """
    h, w, s, t = _check(H, W, scan_len, shift)
    dev = torch.device(device)
    key = (h, w, s, t, str(dev))
    global _cache_bytes
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    scan_ids, inverse_ids = _build(h, w, s, t)
    if dev.type != "cpu":
        scan_ids, inverse_ids = scan_ids.to(dev), inverse_ids.to(dev)
    entry = (scan_ids, inverse_ids)
    size = 2 * scan_ids.numel() * scan_ids.element_size()
    with _lock:
        hit = _cache.get(key)
        if hit is not None:  # another thread built it meanwhile: share that one
            _cache.move_to_end(key)
            return hit
        _cache[key] = entry
        _cache_bytes += size
        while len(_cache) > 1 and (len(_cache) > _MAX_ENTRIES or _cache_bytes > _MAX_BYTES):
            _, (old_ids, _old_inv) = _cache.popitem(last=False)
            _cache_bytes -= 2 * old_ids.numel() * old_ids.element_size()
    return entry


def clear_cache() -> None:
    """Empty the scan-order cache."""
    global _cache_bytes
    with _lock:
        _cache.clear()
        _cache_bytes = 0


def cache_info() -> dict[str, int]:
    """The cache's current entry count and total bytes, and its limits."""
    with _lock:
        return {
            "entries": len(_cache),
            "bytes": _cache_bytes,
            "max_entries": _MAX_ENTRIES,
            "max_bytes": _MAX_BYTES,
        }
