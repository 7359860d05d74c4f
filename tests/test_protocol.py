"""Test-time protocol: official tiling, MaIR+ ensemble, padding to 8, user tiling, and the test noise."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from mair.evaluate import protocol as P
from mair.evaluate.noise import add_test_noise


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscription on shared CPUs (10-100x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dyadic(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random values k/64: sums of up to 8 of them and division by 8 are exact in float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 65, shape, generator=g).float() / 64


class CountingIdentity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return x.clone()


def test_layout_matches_spec() -> None:
    lay = P.official_tile_layout(431, 617)
    assert (lay["nh"], lay["nw"]) == (3, 4)
    assert (lay["ph"], lay["pw"]) == (1, 3)  # 432 = 3*144, 620 = 4*155
    assert (lay["sh"], lay["sw"], lay["vh"], lay["vw"]) == (144, 155, 14, 15)
    assert P.official_tile_layout(199, 120)["nh"] == 1
    assert P.official_tile_layout(200, 120)["nh"] == 2


def test_official_tiles_have_the_spec_slices() -> None:
    net = CountingIdentity()
    x = _dyadic(1, 3, 431, 150)
    P.official_tile_forward(net, x)
    # nh = 3 (sh 144, vh 14): rows [0,158), [130,302), [274,432); nw = 1: all 150 columns
    assert [s[2] for s in net.shapes] == [158, 172, 158]
    assert all(s[3] == 150 for s in net.shapes)


@pytest.mark.parametrize("shape", [(1, 3, 60, 45), (2, 3, 199, 150)])
def test_tile_covering_image_equals_whole_inference(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2)
    ).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        assert torch.equal(P.official_tile_forward(net, x), net(x))
        y = P.tiled_forward(net, x, tile_size=256, tile_overlap=16)
        assert torch.equal(y, net(x))


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_official_tiling_of_large_input_is_exact_for_equivariant_nets(scale: int) -> None:
    x = torch.rand(2, 3, 413, 257)
    up = nn.Upsample(scale_factor=scale, mode="nearest")
    out = P.official_tile_forward(up, x)
    assert out.shape == (2, 3, 413 * scale, 257 * scale)
    assert torch.equal(out, up(x))
    conv = nn.Conv2d(3, 5, 1)
    with torch.no_grad():
        assert torch.equal(P.official_tile_forward(conv, x), conv(x))


def test_official_tiling_really_tiles_with_a_context_dependent_net() -> None:
    """A 3x3 conv sees the tile borders, but the shave (14 px) covers its 1-px radius: merge is exact."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(1, 3, 420, 90)
    with torch.no_grad():
        diff = (P.official_tile_forward(conv, x) - conv(x)).abs().amax(dim=(0, 1, 3))
    # 3 tiles of 140 rows with shave 14: every seam is 14 px inside a neighbour's context, so exact
    assert float(diff.max()) < 1e-6


def test_ensemble_transforms_order_and_inverse() -> None:
    x = _dyadic(2, 3, 5, 7)
    expected = [x, x.flip(-2), x.flip(-1), x.flip(-2).flip(-1)]
    expected += [t.transpose(-2, -1) for t in expected]
    for idx in range(8):
        t = P.ensemble_transform(x, idx)
        assert torch.equal(t, expected[idx]), idx
        assert torch.equal(P.ensemble_inverse(t, idx), x), idx
    assert len({tuple(P.ensemble_transform(x, i).flatten().tolist()) for i in range(8)}) == 8


def test_ensemble_inverts_each_transform_individually() -> None:
    """A net that marks the top-left pixel of what it sees: the inverse must put the mark back where that
    pixel came from in the original image (checks every transform against its own inverse)."""
    h, w = 6, 9
    x = torch.zeros(1, 1, h, w)

    def mark(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(t)
        out[..., 0, 0] = 1
        return out

    origin = [(0, 0), (h - 1, 0), (0, w - 1), (h - 1, w - 1)] * 2
    for idx in range(8):
        y = P.ensemble_inverse(mark(P.ensemble_transform(x, idx)), idx)
        assert y.shape == x.shape
        assert torch.nonzero(y[0, 0]).tolist() == [list(origin[idx])], idx


def test_self_ensemble_identity_returns_input_and_recomputes_tiling() -> None:
    net = CountingIdentity()
    x = _dyadic(1, 3, 230, 90)
    out = P.self_ensemble(net, x)
    assert torch.equal(out, x)
    assert len(net.shapes) == 8 * 2  # 2 tiles for every transform
    # tiles split along H for the 4 untransposed inputs and along W after the transpose
    assert net.shapes[0][2] < 230 and net.shapes[0][3] == 90
    assert net.shapes[-1][2] == 90 and net.shapes[-1][3] < 230
    up = nn.Upsample(scale_factor=2, mode="nearest")
    assert torch.equal(P.self_ensemble(up, x), up(x))


def test_pad_forward_pads_to_eight_and_crops_back() -> None:
    seen: list[tuple[int, int]] = []

    def net(t: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(t.shape[-2:]))
        assert t.shape[-2] % 8 == 0 and t.shape[-1] % 8 == 0
        return t * 2

    x = torch.rand(2, 3, 21, 30)
    out = P.pad_forward(net, x)
    assert seen == [(24, 32)]
    assert torch.equal(out, x * 2)
    padded = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        padded["t"] = t
        return t

    P.pad_forward(keep, x)
    assert torch.equal(padded["t"][..., 21:, :30], x[..., [19, 18, 17], :])  # reflect at the bottom
    tiny = torch.rand(1, 3, 3, 2)
    assert torch.equal(P.pad_forward(keep, tiny), tiny)
    assert padded["t"].shape[-2:] == (8, 8)


@pytest.mark.parametrize("blend", [True, False])
@pytest.mark.parametrize("scale", [1, 2])
def test_tiled_forward_matches_whole_image(blend: bool, scale: int) -> None:
    x = torch.rand(1, 3, 150, 97)
    up = nn.Upsample(scale_factor=scale, mode="nearest")
    calls: list[tuple[int, int]] = []

    def net(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape[-2:]))
        return up(t)

    out = P.tiled_forward(net, x, tile_size=48, tile_overlap=10, blend=blend)
    assert out.device.type == "cpu"
    assert len(calls) > 4 and all(c == (48, 48) for c in calls)  # one bounded tile at a time
    if blend:
        torch.testing.assert_close(out, up(x), atol=1e-6, rtol=0)
    else:
        assert torch.equal(out, up(x))


def test_tiled_forward_blend_has_no_seams_for_context_nets() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 3, 5, padding=2)
    x = torch.rand(1, 3, 120, 120)
    with torch.no_grad():
        out = P.tiled_forward(conv, x, tile_size=64, tile_overlap=24, blend=False)
        ref = conv(x)
    # the crop mode keeps 12 px of context on every internal side: exact for a 5x5 conv
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_tensor2img_rounds_like_official() -> None:
    t = torch.tensor([[[[-0.2, 0.5 / 255, 1.5 / 255, 1.3]]]]).repeat(1, 3, 1, 1)
    before = t.clone()
    img = P.tensor2img(t)
    assert torch.equal(t, before)  # the input is not clamped in place
    assert img.dtype == np.uint8 and img.shape == (1, 4, 3)
    assert img[0, :, 0].tolist() == [0, 0, 2, 255]  # round half to even, clamp


# ---------------------------------------------------------------------------------------------------------
# Test noise


def test_noise_matches_direct_bgr_draw() -> None:
    rng = np.random.default_rng(5)
    clean = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    state = np.random.get_state()
    noisy = add_test_noise(clean, 25)
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global RNG is untouched
    bgr = clean[..., ::-1].astype(np.float32) / 255.0
    np.random.seed(0)
    official = bgr + np.random.normal(0, 25 / 255.0, bgr.shape)
    np.random.set_state(state)
    assert noisy.dtype == np.float64
    assert np.array_equal(noisy, official[..., ::-1])
    # deterministic per image (reseeded), and the draw really is in BGR order
    assert np.array_equal(add_test_noise(clean, 25), noisy)
    rgb_order = clean.astype(np.float32) / 255.0 + np.random.RandomState(0).normal(0, 25 / 255.0, clean.shape)
    assert not np.allclose(noisy, rgb_order)


def test_noise_is_unclipped_and_scales_with_sigma() -> None:
    clean = np.zeros((64, 64, 3), np.uint8)
    noisy = add_test_noise(clean, 50)
    assert noisy.min() < -0.3  # negative values are kept
    assert np.std(noisy) == pytest.approx(50 / 255, rel=0.05)
    assert np.allclose(add_test_noise(clean, 15), noisy * 15 / 50)
