"""The Triton selective scan (generic layout and the NSS-fused layout) against the plain references.

Without a GPU these run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on small
sizes with small tiles so that several chunks and chunk carries are exercised.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="the triton backend needs the triton package (mair[triton])")

from mair.models import from_official  # noqa: E402
from mair.models.nss import scan_orders  # noqa: E402
from mair.models.scan import selective_scan  # noqa: E402
from mair.models.scan.triton_backend import nss_scan, nss_scan_reference  # noqa: E402
from tests.conftest import assert_vmm_switch_keeps_results  # noqa: E402
from tests.conftest import rel_err as _rel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The forward is the step-by-step kernel with segment summaries and their chain; the backward chains adjoint
# carries from chunk summaries, then walks every chunk step by step in sub-chunks (both exercised at these sizes).


def _inputs(
    batch: int, groups: int, channels: int, d_state: int, length: int, seed: int, grouped: bool = True
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    dch = groups * channels

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    bshape = (batch, groups, d_state, length) if grouped else (batch, d_state, length)
    return [
        rnd(batch, dch, length),
        rnd(batch, dch, length, scale=0.5),
        (-torch.rand(dch, d_state, generator=gen, dtype=torch.float64) * 3).requires_grad_(),
        rnd(*bshape),
        rnd(*bshape),
        rnd(dch),
        rnd(dch, scale=0.5),
    ]


@pytest.mark.parametrize(
    "batch,groups,channels,d_state,length,grouped",
    [
        (2, 4, 3, 1, 37, True),  # d_state 1 (MaIR-T), odd L
        (1, 4, 5, 16, 33, True),  # N 16, odd L
        (1, 1, 6, 32, 19, False),  # N 32 (U-Net latent), ungrouped B/C
        (2, 2, 9, 5, 8, True),  # N not a power of two, L equal to one chunk
    ],
)
@pytest.mark.parametrize("with_extras", [True, False])
def test_generic_layout_matches_reference(
    batch: int, groups: int, channels: int, d_state: int, length: int, grouped: bool, with_extras: bool
) -> None:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    inputs = _inputs(batch, groups, channels, d_state, length, seed, grouped)
    if not with_extras:
        inputs[5] = inputs[6] = None
    ref = selective_scan(*inputs[:5], inputs[5], inputs[6], with_extras, backend="reference")
    grad_out = torch.randn_like(ref)
    present = [t for t in inputs if t is not None]
    ref_grads = torch.autograd.grad(ref, present, grad_out)
    ours_in = [t.detach().float().to(DEVICE).requires_grad_() for t in present]
    args = [*ours_in, None, None] if not with_extras else ours_in
    out = selective_scan(*args[:5], args[5], args[6], with_extras, backend="triton")
    grads = torch.autograd.grad(out, ours_in, grad_out.float().to(DEVICE))
    assert _rel(out.cpu(), ref) <= 1e-5, f"seed {seed}"
    for name, got, want in zip(["u", "delta", "A", "B", "C", "D", "bias"], grads, ref_grads, strict=False):
        assert _rel(got.cpu(), want) <= 1e-5, f"grad {name}, seed {seed}"


@pytest.mark.parametrize(
    "height,width,scan_len,shift,d_state",
    [
        (5, 7, 4, 2, 4),
        (6, 9, 8, 4, 1),
        (3, 11, 4, 0, 32),
        (8, 8, 8, 0, 16),
    ],
)
def test_nss_fused_scan_matches_gather_scan_scatter(
    height: int, width: int, scan_len: int, shift: int, d_state: int
) -> None:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    batch, groups, channels, length = 2, 4, 5, height * width
    ids = scan_orders(height, width, scan_len, shift, DEVICE)[0]
    inputs = [
        torch.randn(batch, length, channels),
        torch.randn(batch, groups, length, channels) * 0.5,
        -torch.rand(groups * channels, d_state) * 2,
        torch.randn(batch, groups, length, d_state),
        torch.randn(batch, groups, length, d_state),
        torch.randn(groups * channels),
        torch.randn(groups * channels) * 0.5,
    ]
    inputs = [t.to(DEVICE).requires_grad_() for t in inputs]
    ref = nss_scan_reference(*inputs, ids, True, backend="torch")
    out = nss_scan(*inputs, ids, True)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    assert _rel(out, ref) <= 1e-5
    for name, got, want in zip(["x", "delta", "A", "B", "C", "D", "bias"], grads, ref_grads, strict=True):
        assert _rel(got, want) <= 1e-5, name


@pytest.mark.parametrize("length_side,d_state,rank", [((5, 7), 4, 3), ((6, 6), 1, 1), ((3, 11), 16, 12)])
@pytest.mark.parametrize("in_kernel", [False, True])
def test_low_rank_delta_matches_projecting_outside(
    length_side: tuple[int, int], d_state: int, rank: int, in_kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``delta_weight``: Δ projected inside the op (and again in its backward) gives the output and every
    gradient of the einsum followed by the scan, and the op keeps only the low-rank input for the backward.
    ``in_kernel``: the forward kernel projects Δ itself (``MAIR_TRITON_DELTA_IN_KERNEL``), without
    ``project_delta``."""
    from mair.models.scan import triton_backend
    from mair.models.scan.triton_backend import project_delta

    monkeypatch.setenv("MAIR_TRITON_DELTA_IN_KERNEL", "1" if in_kernel else "0")
    projections: list[int] = []
    monkeypatch.setattr(triton_backend, "project_delta", lambda *a: projections.append(1) or project_delta(*a))
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    height, width = length_side
    batch, groups, channels, length = 2, 4, 5, height * width
    ids = scan_orders(height, width, 4, 2, DEVICE)[0]
    inputs = [
        torch.randn(batch, length, channels),
        torch.randn(batch, groups, length, rank),
        -torch.rand(groups * channels, d_state) * 2,
        torch.randn(batch, groups, length, d_state),
        torch.randn(batch, groups, length, d_state),
        torch.randn(groups * channels),
        torch.randn(groups * channels) * 0.5,
        torch.randn(groups, channels, rank) * 0.5,
    ]
    inputs = [t.to(DEVICE).requires_grad_() for t in inputs]
    x, low, A, B, C, D, bias, weight = inputs
    want = nss_scan(x, torch.einsum("bklr,kdr->bkld", low, weight), A, B, C, D, bias, ids, True)
    saved: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        got = nss_scan(x, low, A, B, C, D, bias, ids, True, delta_weight=weight)
    assert (batch, groups, length, channels) not in saved, saved  # Δ itself is not kept
    assert len(projections) == (0 if in_kernel else 1)  # the forward's own
    dy = torch.randn_like(want)
    assert _rel(got, want) <= 1e-6
    assert _rel(project_delta(low, weight), torch.einsum("bklr,kdr->bkld", low, weight)) <= 1e-6
    names = ["x", "delta_low", "A", "B", "C", "D", "bias", "delta_weight"]
    for name, g, w in zip(
        names, torch.autograd.grad(got, inputs, dy), torch.autograd.grad(want, inputs, dy), strict=True
    ):
        assert _rel(g, w) <= 1e-5, name
    with pytest.raises(ValueError, match="delta_weight"):
        nss_scan(x, low, A, B, C, D, bias, ids, True, delta_weight=weight[:, :, :-1] if rank > 1 else weight[:1])


def _gated_inputs(height: int, width: int, d_state: int, rank: int | None) -> list[torch.Tensor]:
    batch, groups, channels, length = 2, 4, 5, height * width
    delta = torch.randn(batch, groups, length, rank if rank else channels) * 0.5
    inputs = [
        torch.randn(batch, length, channels),
        delta,
        -torch.rand(groups * channels, d_state) * 2,
        torch.randn(batch, groups, length, d_state),
        torch.randn(batch, groups, length, d_state),
        torch.randn(groups * channels),
        torch.randn(groups * channels) * 0.5,
        torch.randn(groups, channels, rank) * 0.5 if rank else None,
        torch.randn(channels, groups, groups) * 0.5,
        torch.randn(channels, groups) * 0.5,
    ]
    return [None if t is None else t.to(DEVICE).requires_grad_() for t in inputs]


@pytest.mark.parametrize("height,width,d_state,rank", [(5, 7, 4, 3), (6, 9, 1, None), (3, 11, 16, 12)])
def test_output_dots_and_adjoint_summaries_from_the_chunk_states(
    height: int, width: int, d_state: int, rank: int | None
) -> None:
    """The gated backward's pass over the chunk states gives Σ_l y ⊙ w of the forward's outputs and the chunks'
    adjoint summaries for dy = w and dy = 1."""
    from mair.models.scan.triton_backend import _nss_problem, _output_dots, nss_scan_forward, project_delta

    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    x, delta, A, B, C, D, bias, weight, _, _ = (
        t if t is None else t.detach() for t in _gated_inputs(height, width, d_state, rank)
    )
    ids = scan_orders(height, width, 4, 2, DEVICE)[0]
    ys, states = nss_scan_forward(x, delta, A, B, C, D, bias, ids, True, weight)
    w = torch.randn(x.shape[0], x.shape[2], x.shape[1], device=DEVICE).transpose(1, 2)  # (B, L, D), strided
    full = delta if weight is None else project_delta(delta, weight)
    found = _output_dots(
        _nss_problem(x, full, A, B, C, D, bias, ids, True), w, (w.stride(0), 0, w.stride(1), w.stride(2)), states
    )
    assert _rel(found.dots, (ys * w[:, None]).sum(2)) <= 1e-5
    # The chunks' adjoint summaries, plainly in float64 and scan order: Σ_l exp(A Σ_{l0 < j <= l} Δ_j) C_l dy_l
    # for dy = w and dy = 1, and Σ_{l0 < l <= l0 + BL} Δ_l.
    _, groups, length, channels = full.shape
    order = [ids[k] for k in range(groups)]
    dt = torch.nn.functional.softplus(full.double() + bias.double().view(groups, 1, channels))
    dt = torch.stack([dt[:, k, order[k]] for k in range(groups)], 1)
    cs = torch.stack([C.double()[:, k, order[k]] for k in range(groups)], 1)
    ws = torch.stack([w.double()[:, order[k]] for k in range(groups)], 1)
    a = A.double().view(groups, channels, -1)
    n_chunks = states.shape[2]
    bl = -(-length // n_chunks)
    bl = 1 << (bl - 1).bit_length()
    for c in range(n_chunks):
        part = slice(c * bl, min(length, (c + 1) * bl))
        span = dt[:, :, part].cumsum(2) - dt[:, :, part][:, :, :1]
        weight_l = torch.exp(span[..., None] * a[None, :, None])  # (B, K, l, D, N)
        for got, dy in ((found.summary_w[:, :, c], ws[:, :, part]), (found.summary_1[:, :, c], 1.0)):
            want = (weight_l * cs[:, :, part, None, :] * (dy[..., None] if torch.is_tensor(dy) else dy)).sum(2)
            assert _rel(got, want) <= 1e-5, c
        total = dt[:, :, c * bl + 1 : min(length, (c + 1) * bl + 1)].sum(2)
        assert _rel(found.total[:, :, c], total) <= 1e-5, c


@pytest.mark.parametrize(
    "height,width,d_state,rank,in_kernel",
    [
        (5, 7, 4, 3, False),
        (6, 9, 1, None, False),
        (3, 11, 16, 12, False),
        (5, 7, 4, 3, True),
        (3, 11, 16, 12, True),
    ],
)
def test_gated_scan_matches_scan_then_gate_and_keeps_no_scan_outputs(
    height: int, width: int, d_state: int, rank: int | None, in_kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nss_scan_gated``: the output and all ten gradients of the scan followed by the SSA gate and the sum,
    without keeping any (B, K, L, D) tensor for the backward (``in_kernel``: Δ projected by the forward kernel;
    the reference projects it outside)."""
    from mair.models.scan.nss_gated import nss_scan_gated, nss_scan_gated_reference

    monkeypatch.setenv("MAIR_TRITON_DELTA_IN_KERNEL", "0")
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    inputs = _gated_inputs(height, width, d_state, rank)
    ids = scan_orders(height, width, 4, 2, DEVICE)[0]
    args = [*inputs[:7], ids, True, *inputs[7:]]
    want = nss_scan_gated_reference(*args)
    monkeypatch.setenv("MAIR_TRITON_DELTA_IN_KERNEL", "1" if in_kernel else "0")
    saved: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        got = nss_scan_gated(*args)
    batch, length, channels = inputs[0].shape
    assert got.shape == (batch, length, channels)
    kept = [s for s in saved if len(s) == 4 and s[2] == length and s[3] == channels]
    assert len(kept) == (0 if rank else 1), saved  # without delta_weight, Δ itself is an input (and kept)
    assert _rel(got, want) <= 1e-5
    present = [t for t in inputs if t is not None]
    dout = torch.randn_like(want)
    names = ["x", "delta", "A", "B", "C", "D", "bias", "delta_weight", "gate_weight", "gate_bias"]
    names = [n for n, t in zip(names, inputs, strict=True) if t is not None]
    for name, g, w in zip(
        names, torch.autograd.grad(got, present, dout), torch.autograd.grad(want, present, dout), strict=True
    ):
        assert _rel(g, w) <= 1e-5, name
    with pytest.raises(ValueError, match="gate_weight"):
        nss_scan_gated(*args[:-2], args[-2][:, :2], args[-1])


def test_gated_backward_reads_only_the_sub_chunk_states_the_dot_pass_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DOT pass stores the states entering the backward's sub-chunks up to the sequence's end only; with
    the scratch poisoned (NaN) beforehand, the gradients still match (nothing unwritten is read). L = 33 leaves
    whole sub-chunks past the end in the last chunk (chunks of 8 positions, sub-chunks of 4 under the CPU
    interpreter; chunks of 32 on a GPU)."""
    from mair.models.scan import triton_backend
    from mair.models.scan.nss_gated import nss_scan_gated, nss_scan_gated_reference

    allocate = triton_backend._sub_state_scratch
    poisoned: list[torch.Tensor] = []

    def poisoned_scratch(*args: object) -> torch.Tensor:
        poisoned.append(allocate(*args).fill_(float("nan")))
        return poisoned[-1]

    monkeypatch.setattr(triton_backend, "_sub_state_scratch", poisoned_scratch)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    inputs = _gated_inputs(3, 11, 16, 3)
    args = [*inputs[:7], scan_orders(3, 11, 4, 2, DEVICE)[0], True, *inputs[7:]]
    present = [t for t in inputs if t is not None]
    got = nss_scan_gated(*args)
    want = nss_scan_gated_reference(*args)
    dout = torch.randn_like(want)
    for g, w in zip(torch.autograd.grad(got, present, dout), torch.autograd.grad(want, present, dout), strict=True):
        assert torch.isfinite(g).all() and _rel(g, w) <= 1e-5
    assert poisoned, "the gated backward did not allocate the sub-chunk scratch through _sub_state_scratch"


@pytest.mark.parametrize("batch,groups,length,channels", [(2, 4, 35, 5), (1, 4, 1, 7), (3, 2, 300, 9), (1, 1, 1030, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_sum_kernel_matches_the_chain_of_multiply_adds(
    batch: int, groups: int, length: int, channels: int, dtype: torch.dtype
) -> None:
    """``gated_sum_triton`` (one pass, float32 accumulation) against ``gated_sum`` in float64, at sizes whose
    L·D is not a multiple of the kernel's block and with blocks that span several rows."""
    from mair.models.scan.nss_gated import gated_sum, gated_sum_triton

    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    ys = torch.randn(batch, groups, length, channels, generator=gen).to(dtype)
    gate = torch.rand(batch, groups, channels, generator=gen)
    got = gated_sum_triton(ys.to(DEVICE), gate.to(DEVICE)).cpu()
    want = gated_sum(ys.double(), gate.double())
    assert got.dtype == dtype and got.shape == (batch, length, channels)
    tolerance = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: the result's own rounding
    torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance)
    with pytest.raises(ValueError, match="contiguous"):
        gated_sum_triton(torch.zeros(1, 2, 3, 4, device=DEVICE).transpose(2, 3), torch.zeros(1, 2, 3, device=DEVICE))


@pytest.mark.parametrize("batch,length,channels,rank", [(4, 4096, 9, 12), (2, 35, 5, 3), (1, 1, 7, 1), (3, 1000, 6, 4)])
@pytest.mark.parametrize("k_major", [False, True])
def test_low_rank_weight_gradient_by_slices_matches_the_einsum(
    batch: int, length: int, channels: int, rank: int, k_major: bool
) -> None:
    """The projections' gradient summed over slices of batch·L (split-K) equals the plain einsum in float64,
    whatever the memory order of dΔ (the backward allocates it scan-index outermost)."""
    from mair.models.scan.triton_backend import low_rank_weight_grad

    groups = 4
    d_delta = (
        torch.randn(groups, batch, length, channels).transpose(0, 1)
        if k_major
        else torch.randn(batch, groups, length, channels)
    )
    low = torch.randn(batch, groups, length, rank)
    want = torch.einsum("bkld,bklr->kdr", d_delta.double(), low.double())
    got = low_rank_weight_grad(d_delta, low, min_rows=64)
    assert got.shape == (groups, channels, rank)
    assert _rel(got, want) <= 1e-6


def test_bf16_inputs_accumulate_in_fp32() -> None:
    batch, groups, channels, d_state, length = 1, 4, 4, 8, 24
    ids = scan_orders(4, 6, 4, 0, DEVICE)[0]
    inputs = [
        torch.randn(batch, length, channels),
        torch.randn(batch, groups, length, channels) * 0.5,
        -torch.rand(groups * channels, d_state),
        torch.randn(batch, groups, length, d_state),
        torch.randn(batch, groups, length, d_state),
        torch.randn(groups * channels),
        torch.randn(groups * channels),
    ]
    inputs = [t.to(DEVICE) for t in inputs]
    ref = nss_scan_reference(*inputs, ids, True, backend="torch")
    low = [t.bfloat16() if i in (0, 1, 3, 4) else t for i, t in enumerate(inputs)]
    out = nss_scan(*low, ids, True)
    assert out.dtype == torch.bfloat16
    assert _rel(out.float(), ref) < 2e-2


def test_model_with_triton_backend_matches_torch_backend() -> None:
    """The fused model path (no permuted copies) computes the same network as the gathered path."""
    model = (
        from_official(
            "MaIR",
            upscale=2,
            embed_dim=8,
            depths=[2],
            d_state=4,
            ssm_ratio=1.5,
            mlp_ratio=1.5,
            upsampler="pixelshuffledirect",
            scan_len=4,
        )
        .to(DEVICE)
        .eval()
    )
    x = torch.rand(1, 3, 7, 10, device=DEVICE, requires_grad=True)
    outputs, grads = [], []
    for backend in ("torch", "triton"):
        for module in model.modules():
            if hasattr(module, "scan_backend"):
                module.scan_backend = backend
        out = model(x)
        outputs.append(out.detach())
        grads.append(torch.autograd.grad(out.square().sum(), x)[0])
    assert _rel(outputs[1], outputs[0]) <= 1e-5
    assert _rel(grads[1], grads[0]) <= 1e-5


def test_model_with_the_gate_in_the_scan_op_matches_the_separate_gate() -> None:
    """``VMM.fuse_gate``: the gate and sum inside the scan op give the same outputs and parameter gradients."""
    assert_vmm_switch_keeps_results(
        "fuse_gate", "layers.0.residual_group.blocks.0.self_attention.gating.gating.1.weight"
    )


def test_delta_in_kernel_is_chosen_by_state_size_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the forward projects Δ itself only where it was measured faster (d_state 1); the variable
    forces it either way; bf16 inputs and ranks past the register budget always keep the product outside."""
    from mair.models.scan.triton_backend import DELTA_IN_KERNEL_MAX_RANK, delta_in_kernel

    rank4 = torch.zeros(1, 4, 8, 4)
    monkeypatch.delenv("MAIR_TRITON_DELTA_IN_KERNEL", raising=False)
    assert delta_in_kernel(rank4, 1) and not delta_in_kernel(rank4, 16)
    monkeypatch.setenv("MAIR_TRITON_DELTA_IN_KERNEL", "1")
    assert delta_in_kernel(rank4, 16)
    assert not delta_in_kernel(rank4.bfloat16(), 16)
    assert not delta_in_kernel(torch.zeros(1, 4, 8, DELTA_IN_KERNEL_MAX_RANK + 1), 1)
    monkeypatch.setenv("MAIR_TRITON_DELTA_IN_KERNEL", "0")
    assert not delta_in_kernel(rank4, 1)


def test_step_segments_fill_the_gpu_and_cover_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from mair.models.scan import triton_backend as tb

    monkeypatch.setattr(tb, "interpreting", lambda: False)  # the GPU rule, whatever runs the tests
    for parallel, channels, n_chunks in [(16, 360, 128), (4, 360, 2048), (64, 90, 32), (1, 8, 1), (4, 40, 7)]:
        n_seg, seg_chunks = tb.step_segments(parallel, channels, n_chunks)
        assert (n_seg - 1) * seg_chunks < n_chunks <= n_seg * seg_chunks  # every chunk once, no empty segment
        programs = parallel * -(-channels // tb.STEP_BD) * n_seg
        assert programs >= tb.STEP_TARGET_PROGRAMS or n_seg == n_chunks, (parallel, channels, n_chunks)
    assert tb.step_segments(512, 360, 128) == (1, 128)  # the sequences alone fill the GPU: no summary pass


def _plain_chain(A: torch.Tensor, summary: torch.Tensor, total: torch.Tensor, reverse: bool) -> torch.Tensor:
    """h_{c+1} = exp(A ΣΔ_c) h_c + e_c over chunks, one after the other (reverse: from the last chunk down);
    returns the state entering every chunk. summary (batch, K, NCH, D, N), total (batch, K, NCH, D)."""
    batch, groups, n_chunks, channels, d_state = summary.shape
    A = A.view(groups, channels, d_state)
    out = torch.empty_like(summary)
    h = summary.new_zeros(batch, groups, channels, d_state)
    order = range(n_chunks - 1, -1, -1) if reverse else range(n_chunks)
    for c in order:
        out[:, :, c] = h
        h = torch.exp(A * total[:, :, c, :, None]) * h + summary[:, :, c]
    return out


@pytest.mark.parametrize("n_chunks,channels,d_state", [(1, 3, 16), (19, 5, 4), (40, 2, 1), (8, 7, 32)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("variant", ["scan", "loop"])
@pytest.mark.parametrize("combine", [False, True])
def test_chunk_chain_kernels_match_a_plain_loop(
    n_chunks: int,
    channels: int,
    d_state: int,
    reverse: bool,
    variant: str,
    combine: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both chain kernels (through ``_chain``) against a plain loop; with ``combine`` the summaries are formed
    as gate·summary + const·summary_1 while read (the gated backward's adjoint summaries)."""
    from mair.models.scan.triton_backend import _chain

    monkeypatch.setenv("MAIR_TRITON_CHAIN", variant)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    gen = torch.Generator().manual_seed(seed)
    batch, groups = 2, 3
    A = -torch.rand(groups * channels, d_state, generator=gen) * 2
    summary = torch.randn(batch, groups, n_chunks, channels, d_state, generator=gen)
    summary_1 = torch.randn(batch, groups, n_chunks, channels, d_state, generator=gen)
    gate = torch.rand(batch, groups, channels, generator=gen)
    const = torch.randn(batch, groups, channels, generator=gen)
    total = torch.rand(batch, groups, n_chunks, channels, generator=gen)
    combined = gate[:, :, None, :, None] * summary + const[:, :, None, :, None] * summary_1 if combine else summary
    want = _plain_chain(A.double(), combined.double(), total.double(), reverse)
    A, summary, total, summary_1, gate, const = (t.to(DEVICE) for t in (A, summary, total, summary_1, gate, const))
    bn = 1 << (d_state - 1).bit_length()
    got = _chain(A, summary, total, reverse, bn, (summary_1, gate, const) if combine else None)
    assert _rel(got.cpu(), want) <= 1e-5, f"seed {seed}"


def test_chunk_length_is_recovered_from_the_number_of_stored_chunk_states() -> None:
    from mair.models.scan.triton_backend import chunk_length

    for bl in (8, 16, 32, 64, 128):
        for length in (1, bl - 1, bl, bl + 1, 3 * bl - 5, 4096, 65536, 4099):
            n_chunks = -(-length // bl)
            got = chunk_length(length, n_chunks)
            if n_chunks > 1:
                assert got == bl, (bl, length)
            else:  # one chunk: any tile holding the whole sequence is equivalent
                assert length <= got <= max(bl, 1), (bl, length)
