"""Tests for mair.models.nss: the NSS scan orders against a loop reference and the documented grids
(docs/networks.md "NSS scan orders")."""

from __future__ import annotations

import pytest
import torch

from mair.models import nss
from mair.models.nss import cache_info, clear_cache, scan_orders, stripe_path


def reference_path(H: int, W: int, s: int, t: int) -> list[tuple[int, int]]:
    """P(H, W, s, t) as (row, col) pairs, written directly from the rules in docs/networks.md "NSS scan orders".

    The offset region is clipped to the grid width when t > W (our documented choice).
    """
    regions: list[tuple[int, int]] = []  # [start, end) column ranges, left to right
    c = 0
    if t > 0:
        regions.append((0, min(t, W)))
        c = min(t, W)
    while c + s <= W:  # full-width stripes
        regions.append((c, c + s))
        c += s
    if c < W:  # the narrower remainder at the right edge
        regions.append((c, W))
    path: list[tuple[int, int]] = []
    for m, (c0, c1) in enumerate(regions):
        rows = range(H) if m % 2 == 0 else range(H - 1, -1, -1)
        for j, r in enumerate(rows):
            cols = range(c0, c1) if j % 2 == 0 else range(c1 - 1, c0 - 1, -1)
            path.extend((r, col) for col in cols)
    return path


def reference_orders(H: int, W: int, s: int, t: int) -> list[list[int]]:
    """The four sequences of docs/networks.md "NSS scan orders" from the loop reference."""
    L = H * W
    seq0 = [r * W + c for r, c in reference_path(H, W, s, t)]
    seq2 = [j * W + i for i, j in reference_path(W, H, s, t)]
    return [seq0, [L - 1 - p for p in seq0], seq2, [L - 1 - p for p in seq2]]


def position_grid(H: int, W: int, scan_len: int, shift: int, k: int) -> torch.Tensor:
    """Grid whose entry is the sequence-k position of that pixel."""
    return scan_orders(H, W, scan_len, shift)[1][k].view(H, W)


def _combos() -> list[tuple[int, int, int, int]]:
    out = []
    for H in range(1, 19):
        for W in range(1, 19):
            for s in (1, 2, 4, 8):
                for t in sorted({0, s // 2}):
                    out.append((H, W, s, t))
    return out


def test_matches_loop_reference_on_all_small_grids() -> None:
    """Every H, W in 1..18, s in {1, 2, 4, 8}, t in {0, s//2}: includes H=1, W=1, remainders and W < t."""
    combos = _combos()
    assert (1, 3, 8, 4) in combos and (18, 2, 8, 4) in combos  # W < t and H < t are covered
    for H, W, s, t in combos:
        ids, inv = scan_orders(H, W, s, t)
        expected = torch.tensor(reference_orders(H, W, s, t), dtype=torch.int64)
        assert ids.shape == (4, H * W) and ids.dtype == torch.int64, (H, W, s, t)
        assert torch.equal(ids, expected), (H, W, s, t)
        assert torch.equal(stripe_path(H, W, s, t), expected[0]), (H, W, s, t)
        assert inv.dtype == torch.int64
        assert torch.equal(inv, torch.argsort(expected, dim=-1)), (H, W, s, t)
    clear_cache()


def test_spec_grid_t0() -> None:
    expected = torch.tensor(
        [
            [0, 1, 2, 3, 31, 30, 29, 28],
            [7, 6, 5, 4, 24, 25, 26, 27],
            [8, 9, 10, 11, 23, 22, 21, 20],
            [15, 14, 13, 12, 16, 17, 18, 19],
        ]
    )
    assert torch.equal(position_grid(4, 8, 4, 0, 0), expected)
    # k=1 is the k=0 grid rotated by 180 degrees.
    assert torch.equal(position_grid(4, 8, 4, 0, 1), torch.rot90(expected, 2))


def test_spec_grid_t2() -> None:
    expected = torch.tensor(
        [
            [0, 1, 23, 22, 21, 20, 24, 25],
            [3, 2, 16, 17, 18, 19, 27, 26],
            [4, 5, 15, 14, 13, 12, 28, 29],
            [7, 6, 8, 9, 10, 11, 31, 30],
        ]
    )
    assert torch.equal(position_grid(4, 8, 4, 2, 0), expected)


def test_spec_grid_odd_height_with_remainder() -> None:
    expected = torch.tensor(
        [
            [0, 1, 2, 3, 28, 29],
            [7, 6, 5, 4, 27, 26],
            [8, 9, 10, 11, 24, 25],
            [15, 14, 13, 12, 23, 22],
            [16, 17, 18, 19, 20, 21],
        ]
    )
    assert torch.equal(position_grid(5, 6, 4, 0, 0), expected)


def test_seq1_is_rotation_not_reverse() -> None:
    ids, _ = scan_orders(4, 8, 4, 0)
    L = 32
    assert int(ids[1, 0]) == L - 1  # starts at the bottom-right pixel
    assert not torch.equal(ids[1], ids[0].flip(0))
    assert not torch.equal(ids[3], ids[2].flip(0))
    assert torch.equal(ids[1], (L - 1) - ids[0])


def test_k2_single_band_walks_columns_as_snake() -> None:
    grid = position_grid(4, 8, 4, 0, 2)
    for col in range(8):
        block = torch.arange(4 * col, 4 * col + 4)
        expected = block if col % 2 == 0 else block.flip(0)  # top-down on even columns, bottom-up on odd
        assert torch.equal(grid[:, col], expected), col


def test_stripe_join_is_not_adjacent_for_even_height() -> None:
    path = stripe_path(4, 8, 4, 0)
    # Stripe 0 ends at its bottom-left pixel (3, 0); stripe 1 starts at its bottom-left pixel (3, 4).
    assert int(path[15]) == 3 * 8 + 0
    assert int(path[16]) == 3 * 8 + 4


def test_offset_wider_than_grid_is_clipped_to_one_snake() -> None:
    # W=2 < t=4: the offset region is the whole width, so the path is a plain row snake.
    assert stripe_path(3, 2, 8, 4).tolist() == [0, 1, 3, 2, 4, 5]
    # Same on the transposed grid (H=2 < t): seq2 is a column snake.
    ids, _ = scan_orders(2, 3, 8, 4)
    assert ids[2].tolist() == [0, 3, 4, 1, 2, 5]


@pytest.mark.parametrize(
    ("H", "W", "s", "t"), [(1, 1, 8, 4), (1, 37, 8, 4), (29, 1, 8, 0), (33, 50, 8, 4), (64, 41, 8, 0)]
)
def test_larger_grids_permutations_inverse_and_reference(H: int, W: int, s: int, t: int) -> None:
    ids, inv = scan_orders(H, W, s, t)
    L = H * W
    arange = torch.arange(L)
    assert torch.equal(ids, torch.tensor(reference_orders(H, W, s, t)))
    for k in range(4):
        assert torch.equal(torch.sort(ids[k]).values, arange), k
        assert torch.equal(inv[k][ids[k]], arange), k
        assert torch.equal(ids[k][inv[k]], arange), k


def test_s_shaped_continuity_inside_stripes() -> None:
    """Consecutive path pixels inside one region are 4-neighbours (the path is S-shaped)."""
    H, W, s, t = 13, 21, 8, 4
    path = stripe_path(H, W, s, t)
    r, c = path // W, path % W
    step = (r[1:] - r[:-1]).abs() + (c[1:] - c[:-1]).abs()
    # Region boundaries: every H * width pixels; offset region width 4, then 8, 8, remainder 1.
    boundaries = {H * 4, H * 12, H * 20}
    jumps = {i + 1 for i in torch.nonzero(step != 1).flatten().tolist()}
    assert jumps <= boundaries


def test_cache_identity_and_keys() -> None:
    clear_cache()
    a = scan_orders(6, 7, 4, 0)
    assert scan_orders(6, 7, 4, 0) is a
    assert scan_orders(6, 7, 4, 0, torch.device("cpu")) is a  # device string and device object agree
    assert cache_info()["entries"] == 1
    shifted = scan_orders(6, 7, 4, 2)
    assert shifted is not a and not torch.equal(shifted[0], a[0])
    meta = scan_orders(6, 7, 4, 0, "meta")
    assert meta is not a and meta[0].device.type == "meta"
    assert cache_info()["entries"] == 3
    clear_cache()
    assert cache_info()["entries"] == 0
    assert scan_orders(6, 7, 4, 0) is not a


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_cache()
    monkeypatch.setattr(nss, "_MAX_ENTRIES", 3)
    first = scan_orders(2, 2, 2, 0)
    for w in range(3, 8):
        scan_orders(2, w, 2, 0)
    assert cache_info()["entries"] == 3
    assert scan_orders(2, 2, 2, 0) is not first  # evicted (least recently used)
    clear_cache()
    monkeypatch.setattr(nss, "_MAX_BYTES", 4 * 8 * 2 * 100)  # room for 100 pixels
    scan_orders(5, 10, 2, 0)  # 50 px
    scan_orders(5, 9, 2, 0)  # 45 px
    assert cache_info()["entries"] == 2
    scan_orders(5, 11, 2, 0)  # 55 px: evicts the oldest
    info = cache_info()
    assert info["entries"] == 2 and info["bytes"] == 4 * 8 * 2 * 100
    clear_cache()


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 4, 8, 0), "H"),
        ((4, 0, 8, 0), "W"),
        ((4, 4, 0, 0), "scan_len"),
        ((4, 4, 8, -1), "shift"),
        ((4, 4, 8, 8), "shift"),
    ],
)
def test_value_errors_name_the_argument(args: tuple[int, int, int, int], name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        scan_orders(*args)
    path_name = {"scan_len": "s", "shift": "t"}.get(name, name)  # stripe_path's own argument names
    with pytest.raises(ValueError, match=rf"^{path_name} must be"):
        stripe_path(*args)


def test_non_integer_arguments_raise_type_error() -> None:
    with pytest.raises(TypeError, match="H must be an integer"):
        scan_orders(4.0, 4, 8, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shift must be an integer"):
        scan_orders(4, 4, 8, True)  # type: ignore[arg-type]
