"""The channels-last depthwise convolution (Triton) against ``F.conv2d(groups=C)``: values, all gradients,
strided inputs, odd sizes, bf16, the custom op's registration and the shape checks.

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton depthwise convolution needs the triton package")

from mair.models.dwconv import depthwise_conv2d, depthwise_conv2d_reference  # noqa: E402
from mair.models.dwconv.op import dwconv_weight_grad  # noqa: E402
from tests.conftest import assert_vmm_switch_keeps_results  # noqa: E402
from tests.conftest import rel_err as _rel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(
    batch: int, height: int, width: int, channels: int, ks: int, seed: int, strided: bool, bias: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    if strided:  # half of a wider projection, as the VMM's x half of in_proj's output
        x = torch.randn(batch, height, width, 2 * channels, generator=gen)[..., :channels]
    else:
        x = torch.randn(batch, height, width, channels, generator=gen)
    weight = torch.randn(channels, 1, ks, ks, generator=gen) / ks
    b = torch.randn(channels, generator=gen) if bias else None
    return x, weight, b


@pytest.mark.parametrize(
    "batch,height,width,channels,ks,strided,bias",
    [
        (2, 5, 7, 37, 3, True, True),  # odd sizes, channels across two channel blocks, in_proj's strided half
        (1, 9, 4, 8, 3, False, False),  # no bias, rows longer than columns
        (1, 3, 11, 33, 5, True, True),  # a 5x5 kernel wider than the image's height
        (3, 1, 1, 4, 3, False, True),  # a 1x1 image: only the centre tap sees data
    ],
)
def test_matches_grouped_conv2d_with_all_gradients(
    batch: int, height: int, width: int, channels: int, ks: int, strided: bool, bias: bool
) -> None:
    x, weight, b = _inputs(batch, height, width, channels, ks, seed=height * 31 + channels, strided=strided, bias=bias)
    leaves = [t.to(DEVICE).requires_grad_() for t in (x, weight) + ((b,) if b is not None else ())]
    refs = [t.detach().double().requires_grad_() for t in leaves]
    y = depthwise_conv2d(leaves[0], leaves[1], leaves[2] if bias else None)
    y_ref = depthwise_conv2d_reference(refs[0], refs[1], refs[2] if bias else None)
    assert y.shape == (batch, height, width, channels) and y.is_contiguous()
    assert _rel(y, y_ref) < 1e-6
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(DEVICE)
    grads = torch.autograd.grad(y, leaves, dy.to(y))
    grads_ref = torch.autograd.grad(y_ref, refs, dy)
    for name, g, g_ref in zip(("x", "weight", "bias"), grads, grads_ref, strict=False):
        assert g.shape == g_ref.shape, name
        assert _rel(g, g_ref) < 1e-5, (name, _rel(g, g_ref))


def test_weight_gradient_partial_sums_cover_every_position(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several runs of positions per program and a last run cut short: the same sums as one run."""
    from mair.models.dwconv import op as dwconv

    x, _, _ = _inputs(2, 13, 9, 5, 3, seed=3, strided=False)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    x, dy = x.to(DEVICE), dy.to(DEVICE)
    monkeypatch.setattr(dwconv, "TARGET_PROGRAMS", 1)
    one_run = dwconv_weight_grad(x, dy, 3)
    monkeypatch.setattr(dwconv, "TARGET_PROGRAMS", 3)  # 234 positions in runs of 128: the second run is partial
    runs = dwconv_weight_grad(x, dy, 3)
    for a, b in zip(one_run, runs, strict=True):
        assert _rel(a, b) < 1e-6
    cols = torch.nn.functional.pad(x.permute(0, 3, 1, 2).double(), (1, 1, 1, 1)).unfold(2, 3, 1).unfold(3, 3, 1)
    expected = torch.einsum("bchwij,bhwc->cij", cols, dy.double()).unsqueeze(1)
    assert _rel(runs[0], expected) < 1e-6 and _rel(runs[1], dy.double().sum((0, 1, 2))) < 1e-6


def test_tile_override_gives_the_same_results_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MAIR_DWCONV_TILES`` (tuning sweeps): other tiles, the same convolution and gradients."""
    x, weight, b = _inputs(2, 6, 5, 13, 3, seed=13, strided=True)
    leaves = [t.to(DEVICE).requires_grad_() for t in (x, weight, b)]
    dy = torch.randn(2, 6, 5, 13, generator=torch.Generator().manual_seed(14)).to(DEVICE)
    results = []
    for tiles in ("", "16,8,1"):
        monkeypatch.setenv("MAIR_DWCONV_TILES", tiles)
        y = depthwise_conv2d(*leaves)
        results.append((y.detach(), *torch.autograd.grad(y, leaves, dy)))
    for a, b_ in zip(*results, strict=True):
        assert _rel(a, b_) < 1e-6
    monkeypatch.setenv("MAIR_DWCONV_TILES", "64,24,4")
    with pytest.raises(ValueError, match="three powers of two"):
        depthwise_conv2d(*leaves)


def test_bf16_inputs_accumulate_in_fp32() -> None:
    x, weight, b = _inputs(1, 6, 6, 12, 3, seed=5, strided=True)
    y = depthwise_conv2d(x.to(DEVICE, torch.bfloat16), weight.to(DEVICE), b.to(DEVICE))
    assert y.dtype == torch.bfloat16
    ref = depthwise_conv2d_reference(x.to(torch.bfloat16).double(), weight.double(), b.double())
    assert _rel(y, ref) < 8e-3  # one bf16 rounding of the output


def test_custom_op_registration_passes_opcheck() -> None:
    x, weight, b = _inputs(1, 4, 5, 6, 3, seed=9, strided=False)
    args = (x.to(DEVICE).requires_grad_(), weight.to(DEVICE).requires_grad_(), b.to(DEVICE).requires_grad_())
    torch.library.opcheck(torch.ops.mair.depthwise_conv2d.default, args)


def test_shapes_are_checked() -> None:
    x = torch.zeros(1, 4, 4, 6)
    with pytest.raises(ValueError, match=r"weight \(C, 1, KS, KS\) with odd KS"):
        depthwise_conv2d(x, torch.zeros(6, 1, 2, 2), None)
    with pytest.raises(ValueError, match="x must be"):
        depthwise_conv2d(torch.zeros(4, 4, 6), torch.zeros(6, 1, 3, 3), None)
    with pytest.raises(ValueError, match=r"bias must be \(6,\)"):
        depthwise_conv2d(x, torch.zeros(6, 1, 3, 3), torch.zeros(5))


def test_model_with_the_triton_conv_matches_cudnn_conv() -> None:
    """``VMM.triton_conv``: the same outputs and parameter gradients (the conv's own included) as nn.Conv2d."""
    assert_vmm_switch_keeps_results("triton_conv", "layers.0.residual_group.blocks.0.self_attention.conv2d.weight")
