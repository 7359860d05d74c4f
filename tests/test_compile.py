"""The scan as torch custom ops (``mair::selective_scan``, ``mair::nss_scan``) and ``torch.compile`` of whole
networks through them: same outputs and gradients as eager, no graph breaks.

CPU-sized: tiny networks, the ``aot_eager`` compiler backend (Dynamo + AOTAutograd, no code generation). The
Inductor run compiles C++ for minutes on a busy 2-core machine, so it runs only with ``MAIR_TEST_INDUCTOR=1``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from mair.models import from_official
from mair.models.nss import scan_orders
from mair.models.scan import custom_ops, selective_scan

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="the nss_scan op runs the triton backend")
# The Triton kernels run on the GPU when there is one, else in the interpreter (tests/conftest.py).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _clean_switch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(custom_ops.ENV_VAR, raising=False)
    monkeypatch.delenv("MAIR_SCAN_BACKEND", raising=False)
    custom_ops.enable(None)
    torch._dynamo.reset()
    yield
    custom_ops.enable(None)
    torch._dynamo.reset()


def tiny_mair(backend: str | None = "torch", **overrides: Any) -> nn.Module:
    torch.manual_seed(0)
    kwargs = dict(
        upscale=2,
        embed_dim=8,
        depths=[2],
        d_state=4,
        ssm_ratio=1.5,
        mlp_ratio=1.5,
        upsampler="pixelshuffledirect",
        scan_len=4,
        drop_path_rate=0.0,
    )
    model = from_official("MaIR", **{**kwargs, **overrides})
    _set_backend(model, backend)
    return model


def tiny_unet(backend: str | None = "torch") -> nn.Module:
    torch.manual_seed(0)
    model = from_official("MaIRUNet", dim=4, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, scan_len=4)
    _set_backend(model, backend)
    return model


def _set_backend(model: nn.Module, backend: str | None) -> None:
    for module in model.modules():
        if hasattr(module, "scan_backend"):
            module.scan_backend = backend


NETWORKS = {"mair": (tiny_mair, [(2, 3, 8, 8), (1, 3, 6, 10)]), "unet": (tiny_unet, [(1, 3, 8, 8)])}


def _step(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Output, and the gradients of a fixed random projection of it w.r.t. the input and every parameter."""
    x = x.detach().clone().requires_grad_()
    out = model(x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * weight).sum(), [x, *params])
    return out.detach(), list(grads)


def _assert_same(got: tuple[Tensor, list[Tensor]], want: tuple[Tensor, list[Tensor]], tol: float) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol)
    assert len(got[1]) == len(want[1])
    for i, (g, w) in enumerate(zip(got[1], want[1], strict=True)):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=lambda m, i=i: f"gradient {i}: {m}")


class _OpLog(TorchDispatchMode):
    """Records the ``mair::`` ops that run, with their string arguments (the backend name)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if func.namespace == "mair":
            self.calls.append((func.name(), tuple(a for a in args if isinstance(a, str))))
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------------------------------------------------------
# The switch


def test_switch_is_off_by_default_and_follows_env_and_enable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not custom_ops.is_enabled()
    monkeypatch.setenv(custom_ops.ENV_VAR, "1")
    assert custom_ops.is_enabled()
    custom_ops.enable(False)
    assert not custom_ops.is_enabled()
    monkeypatch.setenv(custom_ops.ENV_VAR, "0")
    custom_ops.enable(True)
    assert custom_ops.is_enabled()
    custom_ops.enable(None)
    assert not custom_ops.is_enabled()


@pytest.mark.parametrize("on", [False, True])
def test_vmm_calls_the_ops_only_when_switched_on(on: bool) -> None:
    model = tiny_mair()
    custom_ops.enable(on)
    log = _OpLog()
    with log:
        out = model(torch.rand(1, 3, 5, 6, requires_grad=True))
        out.sum().backward()
    if not on:
        assert log.calls == []
    else:  # two blocks: one forward and one backward op each, told the backend by name
        assert (
            sorted(log.calls)
            == [("mair::selective_scan", ("torch",))] * 2 + [("mair::selective_scan_bwd", ("torch",))] * 2
        )


def test_backend_is_resolved_eagerly_and_passed_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_mair(backend=None)
    custom_ops.enable(True)
    monkeypatch.setenv("MAIR_SCAN_BACKEND", "reference")
    log = _OpLog()
    with log, torch.no_grad():
        model(torch.rand(1, 3, 4, 4))
    assert log.calls == [("mair::selective_scan", ("reference",))] * 2


# ---------------------------------------------------------------------------------------------------------------
# The ops against the eager functions


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_custom_ops_match_eager_network(name: str) -> None:
    build, shapes = NETWORKS[name]
    model = build()
    x = torch.rand(shapes[0], generator=torch.Generator().manual_seed(2))
    eager = _step(model, x)
    custom_ops.enable(True)
    _assert_same(_step(model, x), eager, tol=1e-6)


def _scan_inputs(grouped: bool, extras: bool, dtype: torch.dtype) -> list[Tensor | None]:
    gen = torch.Generator().manual_seed(3)
    batch, groups, channels, state, length = 2, 2, 3, 4, 9
    dch = groups * channels

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_()

    bshape = (batch, groups, state, length) if grouped else (batch, state, length)
    return [
        rnd(batch, dch, length),
        rnd(batch, dch, length, scale=0.5),
        (-torch.rand(dch, state, generator=gen, dtype=dtype)).requires_grad_(),
        rnd(*bshape),
        rnd(*bshape),
        rnd(dch) if extras else None,
        rnd(dch, scale=0.5) if extras else None,
    ]


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize(
    "grouped,extras,dtype", [(True, True, torch.float32), (False, False, torch.float32), (True, True, torch.float64)]
)
def test_opcheck_selective_scan(backend: str, grouped: bool, extras: bool, dtype: torch.dtype) -> None:
    args = (*_scan_inputs(grouped, extras, dtype), extras, backend)
    result = torch.library.opcheck(torch.ops.mair.selective_scan.default, args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_selective_scan_op_gradients_for_a_subset_of_inputs() -> None:
    """Only the inputs that need a gradient get one, equal to the eager backend's."""
    inputs = _scan_inputs(grouped=True, extras=True, dtype=torch.float32)
    for i in (1, 2, 4, 5):  # delta, A, C, D are constants here
        inputs[i] = inputs[i].detach()
    dy = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(4))
    want = selective_scan(*inputs, delta_softplus=True, backend="torch")
    got = custom_ops.selective_scan(*inputs, delta_softplus=True, backend="torch")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    leaves = [inputs[i] for i in (0, 3, 6)]
    for g, w in zip(torch.autograd.grad(got, leaves, dy), torch.autograd.grad(want, leaves, dy), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def _nss_inputs() -> tuple[list[Tensor], Tensor]:
    gen = torch.Generator().manual_seed(5)
    batch, groups, channels, state, height, width = 1, 4, 3, 4, 3, 5
    length = height * width

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(TRITON_DEVICE).requires_grad_()

    inputs = [
        rnd(batch, length, channels),
        rnd(batch, groups, length, channels, scale=0.5),
        (-torch.rand(groups * channels, state, generator=gen)).to(TRITON_DEVICE).requires_grad_(),
        rnd(batch, groups, length, state),
        rnd(batch, groups, length, state),
        rnd(groups * channels),
        rnd(groups * channels, scale=0.5),
    ]
    return inputs, scan_orders(height, width, 4, 2, TRITON_DEVICE)[0]


def _low_rank(inputs: list[Tensor], rank: int = 2) -> tuple[list[Tensor], Tensor]:
    """The inputs with Δ replaced by a low-rank input (batch, K, L, R), and the projections (K, D, R)."""
    gen = torch.Generator().manual_seed(7)
    batch, groups, length, channels = inputs[1].shape
    low = torch.randn(batch, groups, length, rank, generator=gen).to(TRITON_DEVICE).requires_grad_()
    weight = (torch.randn(groups, channels, rank, generator=gen) * 0.5).to(TRITON_DEVICE).requires_grad_()
    return [inputs[0], low, *inputs[2:]], weight


@needs_triton
@pytest.mark.parametrize("low_rank", [False, True])
def test_opcheck_nss_scan(low_rank: bool) -> None:
    inputs, ids = _nss_inputs()
    args: tuple = (*inputs, ids, True)
    if low_rank:
        low, weight = _low_rank(inputs)
        args = (*low, ids, True, weight)
    result = torch.library.opcheck(torch.ops.mair.nss_scan.default, args)
    assert set(result.values()) == {"SUCCESS"}, result


@needs_triton
@pytest.mark.parametrize("low_rank", [False, True])
def test_nss_scan_op_matches_the_triton_function(low_rank: bool) -> None:
    from mair.models.scan.triton_backend import nss_scan

    inputs, ids = _nss_inputs()
    weight = None
    if low_rank:
        inputs, weight = _low_rank(inputs)
    want = nss_scan(*inputs, ids, True, delta_weight=weight)
    got = custom_ops.nss_scan(*inputs, ids, True, delta_weight=weight)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    dy = torch.randn(want.shape, generator=torch.Generator().manual_seed(6)).to(TRITON_DEVICE)
    leaves = inputs + ([weight] if low_rank else [])
    for g, w in zip(torch.autograd.grad(got, leaves, dy), torch.autograd.grad(want, leaves, dy), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def _gate_params(inputs: list[Tensor]) -> list[Tensor]:
    gen = torch.Generator().manual_seed(8)
    groups, channels = inputs[1].shape[1], inputs[0].shape[2]
    return [
        (torch.randn(channels, groups, groups, generator=gen) * 0.5).to(TRITON_DEVICE).requires_grad_(),
        (torch.randn(channels, groups, generator=gen) * 0.5).to(TRITON_DEVICE).requires_grad_(),
    ]


@needs_triton
@pytest.mark.parametrize("low_rank", [False, True])
def test_opcheck_nss_scan_gated(low_rank: bool) -> None:
    inputs, ids = _nss_inputs()
    gate = _gate_params(inputs)
    weight = None
    if low_rank:
        inputs, weight = _low_rank(inputs)
    result = torch.library.opcheck(torch.ops.mair.nss_scan_gated.default, (*inputs, ids, True, weight, *gate))
    assert set(result.values()) == {"SUCCESS"}, result


@needs_triton
def test_nss_scan_gated_op_matches_the_function() -> None:
    from mair.models.scan.nss_gated import nss_scan_gated

    inputs, ids = _nss_inputs()
    inputs, weight = _low_rank(inputs)
    gate = _gate_params(inputs)
    want = nss_scan_gated(*inputs, ids, True, weight, *gate)
    got = custom_ops.nss_scan_gated(*inputs, ids, True, weight, *gate)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    dout = torch.randn(want.shape, generator=torch.Generator().manual_seed(6)).to(TRITON_DEVICE)
    leaves = [*inputs, weight, *gate]
    for g, w in zip(torch.autograd.grad(got, leaves, dout), torch.autograd.grad(want, leaves, dout), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# torch.compile of whole networks


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_compile_whole_network_without_graph_breaks(name: str) -> None:
    build, shapes = NETWORKS[name]
    model = build()
    x = torch.rand(shapes[0], generator=torch.Generator().manual_seed(2))
    eager = [_step(model, torch.rand(s, generator=torch.Generator().manual_seed(2))) for s in shapes]

    custom_ops.enable(True)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()

    compiled = custom_ops.compile_model(model, backend="aot_eager")  # fullgraph=True: a break raises
    for shape, want in zip(shapes, eager, strict=True):  # a second size: new graph, new scan orders
        _assert_same(_step(compiled, torch.rand(shape, generator=torch.Generator().manual_seed(2))), want, tol=1e-5)


@needs_triton
@pytest.mark.parametrize("fuse_gate", [True, False])
def test_compile_network_with_the_fused_triton_scan(monkeypatch: pytest.MonkeyPatch, fuse_gate: bool) -> None:
    """The fused (``mair::nss_scan_gated``, or ``mair::nss_scan`` without the gate) path compiles too (on the
    CPU, Triton's interpreter runs the kernels)."""
    from mair.models.blocks import VMM
    from mair.models.scan import nss_gated, triton_backend

    monkeypatch.setattr(VMM, "fuse_gate", fuse_gate)
    # Smaller still: the interpreter's time grows with the number of kernel programs.
    model = tiny_mair(backend="triton", embed_dim=4, depths=[1], upscale=1, upsampler="").eval().to(TRITON_DEVICE)
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2)).to(TRITON_DEVICE)
    want = _step(model, x)
    calls = []
    module, names = (
        (nss_gated, ("nss_scan_gated_forward", "nss_scan_gated_backward"))
        if fuse_gate
        else (triton_backend, ("nss_scan_forward", "nss_scan_backward"))
    )
    for name in names:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    compiled = custom_ops.compile_model(model, backend="aot_eager")
    got = _step(compiled, x)
    assert calls == list(names)  # inside the ops, no recomputed forward
    _assert_same(got, want, tol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MAIR_TEST_INDUCTOR") != "1",
    reason="Inductor compiles C++ for 1-2 min on a small CPU; set MAIR_TEST_INDUCTOR=1",
)
def test_compile_with_inductor_matches_eager() -> None:
    model = tiny_mair()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    want = _step(model, x)
    compiled = custom_ops.compile_model(model)  # default backend: inductor
    _assert_same(_step(compiled, x), want, tol=1e-4)


class _DropPaths(nn.Module):
    """Four DropPath(0.5) applied to one input, stacked: with an input of ones, each output is its mask / 0.5."""

    def __init__(self) -> None:
        super().__init__()
        from mair.models.blocks import DropPath

        self.drops = nn.ModuleList(DropPath(0.5) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2).contiguous()  # a materialised reshape before the random op
        return torch.stack([drop(x) for drop in self.drops])


def check_drop_path_masks(
    device: str, mode: str | None, backend: str = "inductor", steps: int = 4, batch: int = 256
) -> None:
    """Compiled DropPath: per-sample masks, fresh every step and in every module, keeping about half of the
    samples, adjacent samples independent, and the backward using the forward's masks. (Not the same masks as
    eager from the same seed: how a compiled graph draws them differs between torch versions.)"""
    torch.manual_seed(0)
    compiled = torch.compile(_DropPaths().to(device).train(), fullgraph=True, backend=backend, mode=mode)
    masks = []
    for _ in range(steps):
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        x = torch.ones(batch, 16, 8, device=device, requires_grad=True)
        out = compiled(x)
        out.sum().backward()
        kept = (out.detach() * 0.5).reshape(4, batch, -1).cpu()  # 1: kept, 0: dropped
        assert torch.equal(kept.amin(-1), kept.amax(-1)), "a mask varies inside a sample"
        sample = kept[..., 0]
        assert set(sample.unique().tolist()) <= {0.0, 1.0}
        grad = x.grad.reshape(batch, -1).cpu()
        torch.testing.assert_close(grad, (sample / 0.5).sum(0)[:, None].expand_as(grad))  # the forward's masks
        masks.append(sample)
    drawn = torch.stack(masks)  # (step, module, sample)
    n = drawn.numel()
    assert abs(drawn.mean().item() - 0.5) < 5 * (0.25 / n) ** 0.5, drawn.mean()
    same_as_next = (drawn[..., 1:] == drawn[..., :-1]).float()
    assert abs(same_as_next.mean().item() - 0.5) < 5 * (0.25 / same_as_next.numel()) ** 0.5, "adjacent samples agree"
    for a in range(steps):
        for b in range(4):
            for c, d in ((a, (b + 1) % 4), ((a + 1) % steps, b)):
                assert not torch.equal(drawn[a, b], drawn[c, d]), f"step {a} module {b} repeats step {c} module {d}"


def test_drop_path_masks_in_the_compiled_graph() -> None:
    """On the CPU: Inductor's decompositions and forward/backward partition, without its code generation."""
    check_drop_path_masks("cpu", None, backend="aot_eager_decomp_partition")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs, Inductor's GPU kernels)")
def test_drop_path_masks_under_the_compiled_training_path() -> None:
    """The training default compiles with CUDA graphs, where Inductor draws DropPath's masks with its own random
    kernels replayed every step: they must be fresh, independent and unbiased as in eager."""
    check_drop_path_masks("cuda", "reduce-overhead")
