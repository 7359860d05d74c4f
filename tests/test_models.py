"""Network behaviour beyond the golden files: any input size, clear errors, checkpoint I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mair.models import MaIR, MaIRUNet, from_official
from mair.models.checkpoint import CheckpointError, load_weights, read_state_dict, save_weights


def tiny_mair(**overrides: object) -> MaIR:
    kwargs = dict(
        upscale=2,
        embed_dim=8,
        depths=[2],
        d_state=2,
        ssm_ratio=1.5,
        mlp_ratio=1.5,
        upsampler="pixelshuffledirect",
        scan_len=4,
        img_size=16,
    )
    kwargs.update(overrides)
    return from_official("MaIR", **kwargs)


def tiny_unet(**overrides: object) -> MaIRUNet:
    kwargs = dict(dim=4, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, scan_len=4)
    kwargs.update(overrides)
    return from_official("MaIRUNet", **kwargs)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 1), (3, 3), (7, 13), (17, 9)])
@pytest.mark.parametrize("upsampler,scale", [("pixelshuffledirect", 3), ("pixelshuffle", 2), ("", 1)])
def test_mair_any_size(size: tuple[int, int], upsampler: str, scale: int) -> None:
    model = tiny_mair(upsampler=upsampler, upscale=scale).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (1, 1), (3, 17), (24, 16)])
def test_unet_any_size_on_cpu_in_eval(size: tuple[int, int]) -> None:
    """The official U-Net crashes in eval on the CPU and needs multiples of 8; ours pads and crops back."""
    model = tiny_unet().eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_unet_padding_matches_explicit_reflect_padding() -> None:
    model = tiny_unet().eval()
    x = torch.rand(1, 3, 13, 10)
    padded = torch.nn.functional.pad(x, (0, 6, 0, 3), mode="reflect")
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[:, :, :13, :10], atol=1e-6)


def test_train_and_eval_agree_without_drop_path() -> None:
    model = tiny_mair(drop_path_rate=0.0)
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.allclose(model.train()(x), model.eval()(x), atol=1e-6)


def test_drop_path_is_active_in_training_by_default() -> None:
    model = tiny_mair(depths=[4])
    rates = [blk.drop_path.drop_prob for blk in model.layers[0].residual_group.blocks]
    assert rates == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])


def test_odd_blocks_use_the_shifted_scan() -> None:
    model = tiny_mair(depths=[3, 2], scan_len=8)
    shifts = [[blk.shift_size for blk in g.residual_group.blocks] for g in model.layers]
    assert shifts == [[0, 4, 0], [0, 4]]
    assert all(blk.shift_size == 0 for stage in (tiny_unet().encoder_level1, tiny_unet().refinement) for blk in stage)


def test_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = tiny_mair(drop_path_rate=0.0)
    x = torch.rand(1, 3, 9, 9)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_checkpointing(True)
    model(x).square().sum().backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for the backward of ``model(x)``."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


@pytest.mark.parametrize("region", ["output_stage", "mlp"])
def test_recompute_regions_give_the_same_gradients_and_keep_less(region: str) -> None:
    from mair.models.blocks import VMM, ResidualMambaBlock

    torch.manual_seed(0)
    model = tiny_mair(drop_path_rate=0.0, depths=[1])
    owners = [m for m in model.modules() if isinstance(m, VMM if region == "output_stage" else ResidualMambaBlock)]
    x = torch.rand(2, 3, 7, 9, requires_grad=True)
    results = {}
    for recompute in (False, True):
        for m in model.modules():  # only the region under test recomputes
            if isinstance(m, VMM):
                m.recompute_output_stage = recompute and region == "output_stage"
            if isinstance(m, ResidualMambaBlock):
                m.recompute_mlp = recompute and region == "mlp"
        model.zero_grad()
        x.grad = None
        model(x).square().sum().backward()
        results[recompute] = ([p.grad.clone() for p in model.parameters()], x.grad.clone(), _saved_bytes(model, x))
    for a, b in zip(results[False][0], results[True][0], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-6, atol=1e-7)
    tokens = 2 * 7 * 9
    if region == "output_stage":
        # Per VMM, the norm's output, SiLU(z) and out_proj's input (one (B, H, W, D) float32 map each) and the
        # norm's mean and 1/std (B, H, W, 1) are no longer kept.
        per_token = 3 * owners[0].d_inner + 2
    else:
        # Per block, the second norm's output (B, H, W, C) with its mean and 1/std, fc1's output and the GELU's
        # output (B, H, W, hidden each) are no longer kept.
        mlp = getattr(owners[0], owners[0].mlp_name)
        per_token = mlp.fc1.in_features + 2 + 2 * mlp.fc1.out_features
    assert results[False][2] - results[True][2] == len(owners) * tokens * per_token * 4


def test_from_official_rejects_unknown_arguments() -> None:
    with pytest.raises(TypeError, match="embed_dims"):
        from_official("MaIR", embed_dims=3)
    with pytest.raises(TypeError, match="batch_size"):  # the U-Net accepts it; MaIR absorbs it
        from_official("MaIRUNet", dim=4, foo=1)
    from_official("MaIR", batch_size=4, embed_dim=8, depths=[1])
    with pytest.raises(ValueError, match="unknown architecture"):
        from_official("SwinIR")


def test_input_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_mair()(torch.rand(3, 8, 8))


def test_param_names_are_official() -> None:
    keys = set(tiny_mair(upsampler="pixelshuffle", upscale=4).state_dict())
    for key in [
        "conv_first.weight",
        "patch_embed.norm.weight",
        "layers.0.residual_group.blocks.1.skip_scale2",
        "layers.0.residual_group.blocks.0.self_attention.gating.gating.1.weight",
        "layers.0.residual_group.blocks.0.conv_blk.fc1.weight",
        "layers.0.conv.weight",
        "conv_before_upsample.0.weight",
        "upsample.2.weight",
        "conv_last.bias",
        "norm.bias",
    ]:
        assert key in keys, key
    assert "mean" not in keys
    unet_keys = set(tiny_unet().state_dict())
    assert "encoder_level1.0.mlp.fc2.bias" in unet_keys and "reduce_chan_level3.weight" in unet_keys


class PickledThing:
    """An arbitrary Python object: safe loading must refuse it."""


# --- checkpoint I/O -------------------------------------------------------------------------------------


def test_save_and_load_roundtrip_official_layout(tmp_path: Path) -> None:
    model = tiny_mair()
    path = tmp_path / "w.pth"
    save_weights(model, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"params"}
    other = tiny_mair()
    report = load_weights(other, path)
    assert report.param_key == "params" and not report.missing
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_load_params_ema_and_module_prefix(tmp_path: Path) -> None:
    model = tiny_mair()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"params_ema": state}, tmp_path / "ema.pth")
    assert load_weights(tiny_mair(), tmp_path / "ema.pth").param_key == "params_ema"
    # the requested key wins when both exist
    torch.save({"params": model.state_dict(), "params_ema": state}, tmp_path / "both.pth")
    assert read_state_dict(tmp_path / "both.pth", "params_ema")[1] == "params_ema"


def test_non_strict_init_from_other_scale_reports_skips(tmp_path: Path) -> None:
    x2 = tiny_mair(upscale=2)
    path = tmp_path / "x2.pth"
    save_weights(x2, path)
    x3 = tiny_mair(upscale=3)
    report = load_weights(x3, path, strict=False)
    assert [k for k, _, _ in report.skipped_shape] == ["upsample.0.weight", "upsample.0.bias"]
    assert torch.equal(x3.conv_first.weight, x2.conv_first.weight)
    assert "skipped 2" in report.summary()
    with pytest.raises(CheckpointError, match="another shape"):
        load_weights(tiny_mair(upscale=3), path, strict=True)


def test_foreign_and_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_weights(tiny_mair(), tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt\.pth: not a readable"):
        load_weights(tiny_mair(), corrupt)
    truncated = tmp_path / "truncated.pth"
    save_weights(tiny_mair(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated\.pth"):
        load_weights(tiny_mair(), truncated)

    pickled = tmp_path / "pickled.pth"
    torch.save({"params": PickledThing()}, pickled)
    with pytest.raises(CheckpointError, match="safe loading"):
        load_weights(tiny_mair(), pickled)
    save_weights(tiny_unet(), tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match="does not fit this MaIR"):
        load_weights(tiny_mair(), tmp_path / "unet.pth")


def test_ssa_gate_backward_matches_autograd() -> None:
    """The SSA gate's hand-written gradients (used inside the fused scan op) against autograd, float64."""
    from mair.models.scan.nss_gated import ssa_gate, ssa_gate_backward

    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    pooled, weight, bias = (
        torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in ((3, 4, 7), (7, 4, 4), (7, 4))
    )
    gate = ssa_gate(pooled, weight, bias)
    assert gate.dtype == torch.float64
    d_gate = torch.randn(gate.shape, generator=gen, dtype=torch.float64)
    want = torch.autograd.grad(gate, [pooled, weight, bias], d_gate)
    got = ssa_gate_backward(d_gate, gate.detach(), pooled.detach(), weight.detach())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hidden,pad", [(13, 3), (450, 6), (8, 8)])
def test_mlp_with_padded_hidden_width_matches_the_plain_mlp(hidden: int, pad: int) -> None:
    """The MLP with zero hidden units appended (as on CUDA, ``Mlp.hidden_multiple``) gives the plain MLP's output
    and gradients (float64: equal up to rounding), and its parameters keep their official shapes."""
    from mair.models.blocks import Mlp

    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    mlp = Mlp(7, hidden).double()
    x = torch.randn(2, 5, 3, 7, dtype=torch.float64, requires_grad=True)
    results = []
    for run in (mlp, lambda t: mlp.forward_padded(t, pad)):
        mlp.zero_grad()
        x.grad = None
        out = run(x)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=torch.float64)).view_as(out))
        results.append((out.detach(), x.grad.clone(), *(p.grad.clone() for p in mlp.parameters())))
    for got, want in zip(results[1], results[0], strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert mlp.fc1.weight.shape == (hidden, 7) and mlp.fc2.weight.shape == (7, hidden)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the hidden width is padded on CUDA only")
def test_mlp_pads_on_cuda_and_flop_count_ignores_the_padding() -> None:
    from mair.models.blocks import Mlp
    from mair.models.flops import count_flops

    mlp = Mlp(12, 30).cuda()
    x = torch.randn(4, 9, 12, device="cuda")
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    try:
        mlp(x)
    finally:
        handle.remove()
    assert "Linear" not in calls  # the padded path calls F.linear with padded weights, not fc1 / fc2
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.testing.assert_close(mlp(x), mlp.fc2(mlp.act(mlp.fc1(x))), rtol=1e-5, atol=1e-6)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    # The MLPs' products counted on CUDA (where they run padded) are those of the unpadded model (counted on the
    # meta device); the scans are not compared: on CUDA the Triton path does not go through selective_scan.
    model = tiny_mair(embed_dim=12, mlp_ratio=2.5).cuda()
    on_cuda = count_flops(model, (8, 8), device=None).by_kind["matmul"]
    assert on_cuda == count_flops(model.cpu(), (8, 8)).by_kind["matmul"] > 0
