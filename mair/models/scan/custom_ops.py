"""The selective scan as PyTorch custom ops, so that ``torch.compile`` of a whole network has no graph break.

Six ops in the ``mair`` namespace, each opaque to the compiler (it sees only the shapes from the fake
implementations) and running the eager scan code inside:

* ``mair::selective_scan(u, delta, A, B, C, D?, delta_bias?, delta_softplus, backend) -> y`` — mamba_ssm's
  layout, :func:`mair.models.scan.selective_scan` on the backend named by ``backend`` (a resolved name such as
  ``"torch"``, never ``None``/``"auto"``: the choice is made eagerly, outside the compiled region);
* ``mair::nss_scan(x, delta, A, B, C, D?, delta_bias?, ids, delta_softplus, delta_weight?) -> (y, states)`` —
  the Triton NSS-fused layout (:func:`mair.models.scan.triton_backend.nss_scan_forward`; with ``delta_weight``,
  ``delta`` is Δ's low-rank input, projected inside); ``states`` are the chunk states its backward starts
  from, saved instead of recomputed;
* ``mair::nss_scan_gated(x, delta, A, B, C, D?, delta_bias?, ids, delta_softplus, delta_weight?, gate_weight,
  gate_bias) -> (out, states, means)`` — the same scan followed by the SSA gate and the sum over the scans
  (:mod:`mair.models.scan.nss_gated`), so that the four scan outputs are not kept for the backward;
* ``mair::selective_scan_bwd`` / ``mair::nss_scan_bwd`` / ``mair::nss_scan_gated_bwd`` — their backwards,
  registered through ``register_autograd``. ``selective_scan_bwd`` recomputes the scan forward of its backend
  under autograd and differentiates it (``torch.autograd.grad``), so it runs the backend's own hand-written
  backward and works for every backend, at the cost of one extra scan forward per backward; the other two
  call the Triton backward directly on the saved states. Gradients of inputs that need none come back as empty tensors
  (shape ``(0,)``), and the autograd formula turns them into ``None``.

The model uses the ops only when the ``MAIR_SCAN_CUSTOM_OP`` switch is on (docs/switches.md): :func:`enable`
(``enable(True)``/``enable(False)``; ``enable(None)`` defers to the environment) or ``MAIR_SCAN_CUSTOM_OP=1``.
Off (the default), the VMM calls the eager functions exactly as before. :func:`compile_model` turns the switch on
and compiles a model, by default with ``fullgraph=True`` and ``dynamic=False``. The backend and the VMM's fused
paths are resolved when the graph is traced (:func:`resolved_backend`, :func:`vmm_plan`), so set
``MAIR_SCAN_BACKEND`` (or ``scan_backend`` of the VMMs) before the first compiled call. Switching on also marks
:func:`mair.models.nss.scan_orders` as a compile-time constant (its cache lock would otherwise break the graph;
see :func:`_scan_orders_as_constants`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from mair.runtime import switches

from .api import _validate
from .api import selective_scan as _eager_selective_scan
from .registry import VmmPlan, resolve_backend
from .registry import vmm_plan as _vmm_plan

__all__ = [
    "ENV_VAR",
    "compile_model",
    "enable",
    "is_enabled",
    "nss_scan",
    "nss_scan_gated",
    "resolved_backend",
    "selective_scan",
    "vmm_plan",
]

ENV_VAR = "MAIR_SCAN_CUSTOM_OP"
_NUM_INPUTS = 7  # u/x, delta, A, B, C, D, delta_bias: the differentiable inputs of both ops


def enable(on: bool | None = True) -> None:
    """Route the VMM's scans through the custom ops (``True``), the eager functions (``False``) or whatever
    ``$MAIR_SCAN_CUSTOM_OP`` says (``None``, the initial state): the switch set from Python."""
    if on is None:
        switches.reset(ENV_VAR)
    else:
        switches.set_values(**{ENV_VAR: bool(on)})
    if is_enabled():
        _scan_orders_as_constants()


def _scan_orders_as_constants() -> None:
    """Let ``torch.compile`` treat :func:`mair.models.nss.scan_orders` as a constant of the traced shapes.

    Its cache lock is a graph break for Dynamo; marked, the orders are computed eagerly when the graph is
    traced and baked into it (they depend only on the static H, W, scan_len, shift and device it guards on).
    Only Dynamo reads the mark; eager calls are unchanged. With dynamic shapes (symbolic H, W) the mark cannot
    apply and Dynamo breaks the graph there, hence ``dynamic=False`` in :func:`compile_model`.
    """
    from mair.models import nss

    torch.compiler.assume_constant_result(nss.scan_orders)


@torch.compiler.assume_constant_result
def is_enabled() -> bool:
    """Whether the VMM calls the custom ops: :func:`enable`'s setting, else ``$MAIR_SCAN_CUSTOM_OP`` (a constant
    for ``torch.compile``, read when the graph is traced)."""
    return bool(switches.get(ENV_VAR))


@torch.compiler.assume_constant_result
def resolved_backend(name: str | None, device: torch.device) -> str:
    """:func:`mair.models.scan.resolve_backend`, seen by ``torch.compile`` as a constant (evaluated eagerly when
    the graph is traced), so that the registry's lookups never enter the compiled graph."""
    return resolve_backend(name, device)


@torch.compiler.assume_constant_result
def vmm_plan(name: str | None, device: torch.device, grad: bool, custom_ops: bool) -> VmmPlan:
    """:func:`mair.models.scan.registry.vmm_plan` (the VMM's fused paths with the chosen backend), seen by
    ``torch.compile`` as a constant, like :func:`resolved_backend`."""
    return _vmm_plan(name, device, grad, custom_ops)


def _fresh(outputs: Sequence[Tensor], inputs: Sequence[Tensor | None]) -> list[Tensor]:
    """``outputs`` made contiguous and owning their memory: a custom op may not return a view of an input."""
    taken = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel()}
    fresh = []
    for t in outputs:
        t = t.contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in taken:
            t = t.clone()
        taken.add(t.untyped_storage().data_ptr())
        fresh.append(t)
    return fresh


_AUTOGRAD_KEYS = (
    torch._C.DispatchKey.AutogradFunctionality,
    torch._C.DispatchKey.AutogradOther,
    torch._C.DispatchKey.AutogradNestedTensor,
)


@contextmanager
def _autograd_recording() -> Iterator[None]:
    """Grad mode on and the autograd dispatch keys included again.

    A compiled backward (AOTAutograd's runtime) calls the backward op below autograd, with those keys excluded
    from dispatch; plain tensor ops (the ``reference`` backend) would then record no graph to differentiate.
    """
    keys = [k for k in _AUTOGRAD_KEYS if torch._C._dispatch_tls_is_dispatch_key_excluded(k)]
    for key in keys:
        torch._C._dispatch_tls_set_dispatch_key_excluded(key, False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for key in keys:
            torch._C._dispatch_tls_set_dispatch_key_excluded(key, True)


def _grads(
    forward: Callable[..., Tensor], inputs: Sequence[Tensor | None], needs: Sequence[bool], dy: Tensor
) -> list[Tensor]:
    """Gradients of ``forward(*inputs)`` for the inputs flagged in ``needs`` (empty tensors for the others),
    by recomputing ``forward`` under autograd on detached copies of the inputs."""
    with _autograd_recording():
        leaves = [
            None if t is None else t.detach().requires_grad_(bool(n) and t.is_floating_point())
            for t, n in zip(inputs, needs, strict=True)
        ]
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        found = iter(torch.autograd.grad(forward(*leaves), wanted, dy, allow_unused=True) if wanted else ())
    grads = []
    for t in leaves:
        g = next(found) if t is not None and t.requires_grad else None
        if g is None:
            g = torch.zeros_like(t) if t is not None and t.requires_grad else dy.new_empty(0)
        grads.append(g)
    return _fresh(grads, [dy, *inputs])


def _fake_grads(inputs: Sequence[Tensor | None], needs: Sequence[bool], dy: Tensor) -> list[Tensor]:
    return [
        torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None and n else dy.new_empty(0)
        for t, n in zip(inputs, needs, strict=True)
    ]


def _needs(ctx: Any) -> list[bool]:
    return [bool(n) for n in ctx.needs_input_grad[:_NUM_INPUTS]]


def _as_grads(ctx: Any, grads: Sequence[Tensor], extra: int) -> tuple[Tensor | None, ...]:
    """The backward op's outputs as autograd's gradients: ``None`` where no gradient was asked for."""
    out = tuple(g if n else None for g, n in zip(grads, _needs(ctx), strict=True))
    return out + (None,) * extra


# --------------------------------------------------------------------------------------------------------------
# mair::selective_scan


@torch.library.custom_op("mair::selective_scan", mutates_args=())
def _selective_scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    backend: str,
) -> Tensor:
    y = _eager_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, backend=backend)
    return _fresh([y], [u, delta, A, B, C, D, delta_bias])[0]


@_selective_scan_op.register_fake
def _(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    backend: str,
) -> Tensor:
    _validate(u, delta, A, B, C, D, delta_bias)
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("mair::selective_scan_bwd", mutates_args=())
def _selective_scan_bwd_op(
    dy: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    backend: str,
    needs: list[bool],
) -> list[Tensor]:
    def forward(*args: Tensor | None) -> Tensor:
        return _eager_selective_scan(*args, delta_softplus=delta_softplus, backend=backend)

    return _grads(forward, [u, delta, A, B, C, D, delta_bias], needs, dy)


@_selective_scan_bwd_op.register_fake
def _(
    dy: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    backend: str,
    needs: list[bool],
) -> list[Tensor]:
    return _fake_grads([u, delta, A, B, C, D, delta_bias], needs, dy)


def _selective_scan_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    u, delta, A, B, C, D, delta_bias, delta_softplus, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
    ctx.delta_softplus, ctx.backend = delta_softplus, backend


def _selective_scan_backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
    grads = _selective_scan_bwd_op(dy, *ctx.saved_tensors, ctx.delta_softplus, ctx.backend, _needs(ctx))
    return _as_grads(ctx, grads, extra=2)


_selective_scan_op.register_autograd(_selective_scan_backward, setup_context=_selective_scan_setup)


# --------------------------------------------------------------------------------------------------------------
# mair::nss_scan


@torch.library.custom_op("mair::nss_scan", mutates_args=())
def _nss_scan_op(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool,
    delta_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    from .triton_backend import nss_scan_forward

    y, states = nss_scan_forward(x, delta, A, B, C, D, delta_bias, ids, delta_softplus, delta_weight)
    return y, states


def _fake_states(x: Tensor, delta: Tensor, A: Tensor) -> Tensor:
    """The chunk states the NSS scan's forward keeps (batch, K, NCH, D, N) float32, as an empty fake tensor."""
    from .triton_backend import forward_chunks

    batch, length, channels = x.shape
    n_chunks = forward_chunks(channels, length, A.shape[1])
    return x.new_empty(batch, delta.shape[1], n_chunks, channels, A.shape[1], dtype=torch.float32)


@_nss_scan_op.register_fake
def _(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool,
    delta_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    from .triton_backend import check_nss_shapes

    check_nss_shapes(x, delta, ids, delta_weight)
    return x.new_empty(*delta.shape[:3], x.shape[2]), _fake_states(x, delta, A)


@torch.library.custom_op("mair::nss_scan_bwd", mutates_args=())
def _nss_scan_bwd_op(
    dy: Tensor,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_weight: Tensor | None,
    ids: Tensor,
    states: Tensor,
    delta_softplus: bool,
    needs: list[bool],
) -> list[Tensor]:
    from .triton_backend import nss_scan_backward

    inputs = [x, delta, A, B, C, D, delta_bias, delta_weight]
    grads = nss_scan_backward(dy.contiguous(), *inputs[:7], ids, states, delta_softplus, delta_weight)
    out = [g if n and g is not None else dy.new_empty(0) for g, n in zip(grads, needs, strict=True)]
    return _fresh(out, [dy, *inputs, states])


@_nss_scan_bwd_op.register_fake
def _(
    dy: Tensor,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_weight: Tensor | None,
    ids: Tensor,
    states: Tensor,
    delta_softplus: bool,
    needs: list[bool],
) -> list[Tensor]:
    inputs = [x, delta, A, B, C, D, delta_bias, delta_weight]
    return _fake_grads(inputs[: len(needs)], needs, dy)


def _nss_needs(ctx: Any) -> list[bool]:
    """Which of x, delta, A, B, C, D, delta_bias (and delta_weight, when given) need gradients."""
    needs = [bool(n) for n in ctx.needs_input_grad[:_NUM_INPUTS]]
    return [*needs, bool(ctx.needs_input_grad[9])] if ctx.has_weight else needs


def _nss_scan_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, delta, A, B, C, D, delta_bias, ids, delta_softplus, delta_weight = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, delta_weight, ids, output[1])
    ctx.delta_softplus, ctx.has_weight = delta_softplus, delta_weight is not None


def _nss_scan_backward(ctx: Any, dy: Tensor, _dstates: Tensor | None) -> tuple[Tensor | None, ...]:
    *saved, ids, states = ctx.saved_tensors
    needs = _nss_needs(ctx)
    grads = _nss_scan_bwd_op(dy, *saved, ids, states, ctx.delta_softplus, needs)
    out = [g if n else None for g, n in zip(grads, needs, strict=True)]
    return (*out[:_NUM_INPUTS], None, None, out[_NUM_INPUTS] if ctx.has_weight else None)


_nss_scan_op.register_autograd(_nss_scan_backward, setup_context=_nss_scan_setup)


# --------------------------------------------------------------------------------------------------------------
# mair::nss_scan_gated


@torch.library.custom_op("mair::nss_scan_gated", mutates_args=())
def _nss_scan_gated_op(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    from .nss_gated import nss_scan_gated_forward

    return tuple(
        nss_scan_gated_forward(
            x, delta, A, B, C, D, delta_bias, ids, delta_softplus, delta_weight, gate_weight, gate_bias
        )
    )


@_nss_scan_gated_op.register_fake
def _(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    from .nss_gated import check_gate_shapes
    from .triton_backend import check_nss_shapes

    check_nss_shapes(x, delta, ids, delta_weight)
    check_gate_shapes(x, delta, gate_weight, gate_bias)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        _fake_states(x, delta, A),
        x.new_empty(x.shape[0], delta.shape[1], x.shape[2], dtype=torch.float32),
    )


@torch.library.custom_op("mair::nss_scan_gated_bwd", mutates_args=())
def _nss_scan_gated_bwd_op(
    dout: Tensor,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
    ids: Tensor,
    states: Tensor,
    mean: Tensor,
    delta_softplus: bool,
    needs: list[bool],
) -> list[Tensor]:
    from .nss_gated import nss_scan_gated_backward

    grads = nss_scan_gated_backward(
        dout.contiguous(),
        x,
        delta,
        A,
        B,
        C,
        D,
        delta_bias,
        ids,
        states,
        mean,
        delta_softplus,
        delta_weight,
        gate_weight,
        gate_bias,
    )
    if delta_weight is None:  # the scan's gradients have no delta_weight entry then
        grads = (*grads[:_NUM_INPUTS], None, *grads[_NUM_INPUTS:])
    out = [g if n and g is not None else dout.new_empty(0) for g, n in zip(grads, needs, strict=True)]
    return _fresh(out, [dout, x, delta, A, B, C, D, delta_bias, delta_weight, gate_weight, gate_bias, states, mean])


@_nss_scan_gated_bwd_op.register_fake
def _(
    dout: Tensor,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
    ids: Tensor,
    states: Tensor,
    mean: Tensor,
    delta_softplus: bool,
    needs: list[bool],
) -> list[Tensor]:
    return _fake_grads([x, delta, A, B, C, D, delta_bias, delta_weight, gate_weight, gate_bias], needs, dout)


_GATED_GRAD_INPUTS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 11)  # x .. delta_bias, delta_weight, gate_weight, gate_bias


def _nss_scan_gated_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, delta, A, B, C, D, delta_bias, ids, delta_softplus, delta_weight, gate_weight, gate_bias = inputs
    ctx.save_for_backward(
        x, delta, A, B, C, D, delta_bias, delta_weight, gate_weight, gate_bias, ids, output[1], output[2]
    )
    ctx.delta_softplus = delta_softplus


def _nss_scan_gated_backward(
    ctx: Any, dout: Tensor, _dstates: Tensor | None, _dmean: Tensor | None
) -> tuple[Tensor | None, ...]:
    *saved, ids, states, mean = ctx.saved_tensors
    needs = [bool(ctx.needs_input_grad[i]) for i in _GATED_GRAD_INPUTS]
    grads = _nss_scan_gated_bwd_op(dout, *saved, ids, states, mean, ctx.delta_softplus, needs)
    out = [g if n else None for g, n in zip(grads, needs, strict=True)]
    return (*out[:_NUM_INPUTS], None, None, *out[_NUM_INPUTS:])


_nss_scan_gated_op.register_autograd(_nss_scan_gated_backward, setup_context=_nss_scan_gated_setup)


# --------------------------------------------------------------------------------------------------------------
# What the model calls


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str | None = None,
) -> Tensor:
    """:func:`mair.models.scan.selective_scan` through ``mair::selective_scan`` (same arguments and result);
    ``backend`` is resolved here (a compile-time constant under ``torch.compile``)."""
    name = resolved_backend(backend, u.device)
    return _selective_scan_op(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), name)


def nss_scan(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool = True,
    delta_weight: Tensor | None = None,
) -> Tensor:
    """:func:`mair.models.scan.triton_backend.nss_scan` through ``mair::nss_scan`` (same arguments and result;
    the op's second output, the chunk states, stays inside for the backward)."""
    return _nss_scan_op(x, delta, A, B, C, D, delta_bias, ids, bool(delta_softplus), delta_weight)[0]


def nss_scan_gated(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool,
    delta_weight: Tensor | None,
    gate_weight: Tensor,
    gate_bias: Tensor,
) -> Tensor:
    """:func:`mair.models.scan.nss_gated.nss_scan_gated` through ``mair::nss_scan_gated`` (same arguments and
    result; the chunk states and the means stay inside for the backward)."""
    return _nss_scan_gated_op(
        x, delta, A, B, C, D, delta_bias, ids, bool(delta_softplus), delta_weight, gate_weight, gate_bias
    )[0]


def compile_model(
    model: nn.Module, fullgraph: bool = True, dynamic: bool | None = False, **compile_kwargs: Any
) -> nn.Module:
    """Turn the custom-op switch on (:func:`enable`) and return ``torch.compile(model, fullgraph=fullgraph,
    dynamic=dynamic, **compile_kwargs)``.

    ``dynamic=False`` (static shapes) because the NSS scan orders are graph constants of the input size: each
    new input size compiles a new graph (up to ``torch._dynamo.config.recompile_limit`` sizes). The switch is
    process-wide: eager calls of the model also go through the ops afterwards (same results).
    """
    enable(True)
    compiled: nn.Module = torch.compile(model, fullgraph=fullgraph, dynamic=dynamic, **compile_kwargs)
    return compiled


if is_enabled():
    _scan_orders_as_constants()
