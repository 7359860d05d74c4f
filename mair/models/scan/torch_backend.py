"""Chunked selective scan in pure PyTorch, with a hand-written backward; runs on any device.

The sequence is cut into ``nc`` chunks of ``T`` positions (about sqrt(L) each) and laid out as
``(T, batch, G, nc, Dg, N)``, so that position ``t`` of every chunk is one contiguous slice. A scan is then

1. pass 1: the recurrence ``h_t = a_t h_{t-1} + x_t`` inside every chunk from a zero state, ``T`` steps
   vectorised over all chunks, keeping only the state each chunk hands on;
2. a pass over the ``nc`` chunk boundaries: the true state entering chunk ``c`` is what chunk ``c-1`` hands on
   plus the state entering ``c-1`` times that chunk's total decay ``exp(A ΣΔ)``;
3. pass 2: the recurrence again, ``T`` steps, from the true entering states, writing every ``h_t``.

Python runs about ``2T + nc`` small steps instead of ``L``. Only ``a = exp(ΔA)`` and ``exp(A ΣΔ)`` are formed
(exponents <= 0 for A <= 0), never a ratio of cumulative products, so a large ``Δ|A|`` underflows to zero: no
overflow, no NaN. The backward is the same scan run in reverse, ``g_l = C_l dy_l + a_{l+1} g_{l+1}``, on a
recomputed forward state, so memory stays three tensors of size ``batch·Dch·N·L`` instead of an autograd graph
of every step. On the CPU those buffers come from a small reused pool (see ``_CpuWorkspace``).
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from mair.runtime import switches

from .registry import ScanFn

SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default, and the CUDA kernel's
WORKSPACE_ENV = "MAIR_SCAN_CPU_WORKSPACE_MB"
# Device types whose small contractions run as matrix products (faster on the CPU); elsewhere they are
# multiply-and-sum, so that a global TF32 matmul setting on a GPU never lowers the scan's precision.
MATMUL_DEVICES = ("cpu",)


class _CpuWorkspace:
    """A small per-thread pool of state-sized CPU buffers, reused from call to call.

    A fresh multi-megabyte CPU tensor is page-faulted in on first touch, which can cost more than the
    arithmetic done in it (2 to 7 ms per 16 MiB buffer on the machines of docs/benchmarks.md, where the pool
    makes a forward + backward about 1.5x faster). At most ``$MAIR_SCAN_CPU_WORKSPACE_MB`` (docs/switches.md; 0 turns
    the pool off) is kept; bigger requests are plain allocations. CUDA tensors never come here (the caching
    allocator does this).
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _free(self) -> list[Tensor]:
        if not hasattr(self._local, "free"):
            self._local.free = []
        free: list[Tensor] = self._local.free
        return free

    @staticmethod
    def limit_bytes() -> int:
        return int(switches.get(WORKSPACE_ENV) * 2**20)

    def take(self, numel: int, like: Tensor) -> Tensor:
        """A flat buffer of at least ``numel`` elements of ``like``'s dtype and device."""
        if like.device.type == "cpu":
            free = self._free()
            fits = [i for i, b in enumerate(free) if b.dtype == like.dtype and b.numel() >= numel]
            if fits:
                return free.pop(min(fits, key=lambda i: free[i].numel()))
        return like.new_empty(numel)

    def give(self, buffers: list[Tensor]) -> None:
        """Return flat buffers from :meth:`take`; keeps the largest that fit under the limit."""
        if not buffers or buffers[0].device.type != "cpu":
            return
        pool = sorted(self._free() + buffers, key=Tensor.numel, reverse=True)
        kept, total, limit = [], 0, self.limit_bytes()
        for b in pool:
            size = b.numel() * b.element_size()
            if total + size <= limit:
                kept.append(b)
                total += size
        self._local.free = kept

    def clear(self) -> None:
        """Drop this thread's pooled buffers."""
        self._local.free = []


_WORKSPACE = _CpuWorkspace()


def clear_workspace() -> None:
    """Release the CPU buffers the torch backend keeps for reuse (this thread's)."""
    _WORKSPACE.clear()


def default_chunk_size(length: int) -> int:
    """Chunk length for a sequence of ``length``: about ``sqrt(L)``, tuned on the CPU (docs/benchmarks.md)."""
    return max(1, min(length, round(math.sqrt(length))))


def _to_chunks(t: Tensor, size: int, n_chunks: int) -> Tensor:
    """``(b, G, X, L)`` to a contiguous ``(T, b, G, nc, X)``, zero-padded at the end of the sequence."""
    pad = size * n_chunks - t.shape[-1]
    if pad:
        t = F.pad(t, (0, pad))
    t = t.reshape(*t.shape[:3], n_chunks, size)
    return t.permute(4, 0, 1, 3, 2).contiguous()


def _from_chunks(t: Tensor, length: int) -> Tensor:
    """``(T, b, G, nc, X)`` back to ``(b, G, X, L)``."""
    t = t.permute(1, 2, 4, 3, 0)
    return t.reshape(*t.shape[:3], -1)[..., :length]


def _carry(ends: Tensor, decays: Tensor, reverse: bool) -> Tensor:
    """The state entering each chunk from its neighbour, ``(b, G, nc, Dg, N)``.

    ``ends[c]``: what chunk ``c`` hands on when entered with a zero state; ``decays[c]``: how much of an
    entering state survives the whole chunk. Forward, ``carry[c] = ends[c-1] + decays[c-1] * carry[c-1]``;
    in reverse the neighbour is ``c+1``.
    """
    ends, decays = ends.movedim(2, 0), decays.movedim(2, 0)
    n_chunks = ends.shape[0]
    carry = ends.new_zeros(ends.shape)
    prev = 1 if reverse else -1
    for c in range(n_chunks - 2, -1, -1) if reverse else range(1, n_chunks):
        torch.addcmul(ends[c + prev], decays[c + prev], carry[c + prev], out=carry[c])
    return carry.movedim(0, 2)


def _forward_scan(a: Tensor, x: Tensor, chunk_decay: Tensor) -> Tensor:
    """``h_t = a_t h_{t-1} + x_t`` from a zero state, in place in ``x``; both ``(T, b, G, nc, Dg, N)``.

    ``chunk_decay`` ``(b, G, nc, Dg, N)`` is the product of ``a`` over each chunk. Pass 1 runs every chunk
    from a zero state to find what it hands on, the boundary pass turns that into each chunk's true entering
    state, and pass 2 runs the recurrence again from those states, writing ``h``.
    """
    size, n_chunks = x.shape[0], x.shape[3]
    if n_chunks > 1:
        state = x[0].clone()
        for t in range(1, size):
            torch.addcmul(x[t], a[t], state, out=state)
        x[0].addcmul_(a[0], _carry(state, chunk_decay, reverse=False))
    for t in range(1, size):
        x[t].addcmul_(a[t], x[t - 1])
    return x


def _decayed_previous(a: Tensor, h: Tensor, out: Tensor) -> Tensor:
    """``a_l h_{l-1}`` (zero at l = 0) into ``out``, all ``(T, b, G, nc, Dg, N)``."""
    torch.mul(a[1:], h[:-1], out=out[1:])
    torch.mul(a[0, :, :, 1:], h[-1, :, :, :-1], out=out[0, :, :, 1:])
    out[0, :, :, 0] = 0.0
    return out


def _reverse_scan(a: Tensor, e: Tensor, chunk_decay: Tensor) -> Tensor:
    """``g_t = e_t + a_{t+1} g_{t+1}`` from a zero state after the end, in place in ``e`` (two passes)."""
    size, n_chunks = e.shape[0], e.shape[3]
    if n_chunks > 1:
        state = e[-1].clone()
        for t in range(size - 2, -1, -1):
            torch.addcmul(e[t], a[t + 1], state, out=state)
        # What chunk c hands to chunk c-1 is a at its first position times its g there.
        e[-1].add_(_carry(state.mul_(a[0]), chunk_decay, reverse=True))
    for t in range(size - 2, -1, -1):
        e[t].addcmul_(a[t + 1], e[t + 1])
    return e


class _Layout:
    """Inputs in the chunked layout, shared by forward and backward."""

    def __init__(
        self,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        delta_bias: Tensor | None,
        delta_softplus: bool,
        chunk: int | None,
    ) -> None:
        batch, dch, length = u.shape
        groups, n_state = B.shape[1], A.shape[1]
        self.batch, self.dch, self.length, self.groups = batch, dch, length, groups
        self.size = min(chunk or default_chunk_size(length), length)
        self.n_chunks = -(-length // self.size)
        dt = delta if delta_bias is None else delta + delta_bias[:, None]
        self.dt = dt  # before softplus, for the backward
        dl = F.softplus(dt) if delta_softplus else dt
        # Channel tensors (T, b, G, nc, Dg, 1); B and C (T, b, G, nc, 1, N); A (G, 1, Dg, N).
        self.dl = self.channels(dl).unsqueeze(-1)
        self.u = self.channels(u).unsqueeze(-1)
        self.B = self.chunks(B).unsqueeze(-2)
        self.C = self.chunks(C).unsqueeze(-2)
        self.A = A.reshape(groups, 1, dch // groups, n_state)
        self.dlu = self.dl * self.u
        self.state_shape = (*self.dl.shape[:-1], n_state)  # (T, b, G, nc, Dg, N)
        self._taken: list[Tensor] = []

    def chunks(self, t: Tensor) -> Tensor:
        return _to_chunks(t, self.size, self.n_chunks)

    def channels(self, t: Tensor) -> Tensor:
        """A ``(b, Dch, L)`` tensor as ``(T, b, G, nc, Dg)``."""
        return self.chunks(t.reshape(self.batch, self.groups, -1, self.length))

    def natural(self, t: Tensor) -> Tensor:
        """A chunked ``(T, b, G, nc, X)`` tensor as ``(b, G·X, L)``."""
        t = _from_chunks(t, self.length)
        return t.reshape(self.batch, -1, self.length)

    def empty_state(self) -> Tensor:
        """A ``(T, b, G, nc, Dg, N)`` buffer (pooled on the CPU; give it back with :meth:`release`).

        Broadcasting products are written into such buffers with ``out=``, which on the CPU is also several
        times faster than letting torch pick the result's layout."""
        flat = _WORKSPACE.take(math.prod(self.state_shape), self.dl)
        self._taken.append(flat)
        return flat[: math.prod(self.state_shape)].view(self.state_shape)

    def release(self) -> None:
        """Hand the state buffers back to the pool (none of them may be referenced afterwards)."""
        _WORKSPACE.give(self._taken)
        self._taken = []

    def decay(self, out: Tensor) -> Tensor:
        """``a = exp(Δ A)`` into ``out``."""
        return torch.mul(self.dl, self.A, out=out).exp_()

    def chunk_decay(self) -> Tensor:
        """Product of the decays over each chunk, ``(b, G, nc, Dg, N)``: ``exp(A ΣΔ)``, <= 1 for A <= 0."""
        return torch.exp_(self.dl.sum(0) * self.A)

    def drive(self, out: Tensor) -> Tensor:
        """``x = Δ u B`` into ``out``."""
        return torch.mul(self.dlu, self.B, out=out)

    def contract_state(self, bc: Tensor, state: Tensor) -> Tensor:
        """``Σ_n bc_n state_n`` for B or C ``(T, b, G, nc, 1, N)``: ``(T, b, G, nc, Dg)``."""
        if state.device.type not in MATMUL_DEVICES:
            return (bc * state).sum(-1)
        return torch.matmul(bc, state.transpose(-1, -2)).squeeze(-2)

    def sum_states(self, state: Tensor) -> Tensor:
        """``Σ_n state_n``: ``(T, b, G, nc, Dg)``."""
        if state.device.type not in MATMUL_DEVICES:
            return state.sum(-1)
        return torch.matmul(state, state.new_ones(state.shape[-1], 1)).squeeze(-1)

    def contract_channels(self, weight: Tensor, state: Tensor) -> Tensor:
        """``Σ_d weight_d state_d`` over the channels of each group, for ``weight`` ``(T, b, G, nc, Dg)``."""
        if state.device.type not in MATMUL_DEVICES:
            return (weight.unsqueeze(-1) * state).sum(-2)
        return torch.matmul(weight.unsqueeze(-2), state).squeeze(-2)


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        delta_bias: Tensor | None,
        delta_softplus: bool,
        chunk: int | None,
    ) -> Tensor:
        lay = _Layout(u, delta, A, B, C, delta_bias, delta_softplus, chunk)
        h = _forward_scan(lay.decay(lay.empty_state()), lay.drive(lay.empty_state()), lay.chunk_decay())
        y = lay.natural(lay.contract_state(lay.C, h))
        del h
        lay.release()
        if D is not None:
            y = y + D[:, None] * u
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        need_u, need_delta, need_A, need_B, need_C, need_D, need_bias = ctx.needs_input_grad[:7]
        need_dt = need_delta or need_bias
        lay = _Layout(u, delta, A, B, C, delta_bias, ctx.delta_softplus, ctx.chunk)
        dy_c = lay.channels(dy)  # (T, b, G, nc, Dg)

        # Three state-sized buffers in all: a; x -> h -> e -> g; a_l h_{l-1} -> q.
        a = lay.decay(lay.empty_state())
        chunk_decay = lay.chunk_decay()
        h = _forward_scan(a, lay.drive(lay.empty_state()), chunk_decay)
        decayed = _decayed_previous(a, h, lay.empty_state()) if need_dt or need_A else None
        dC = lay.natural(lay.contract_channels(dy_c, h)) if need_C else None
        # g_l = dL/dh_l = C_l dy_l + a_{l+1} g_{l+1}
        g = _reverse_scan(a, torch.mul(lay.C, dy_c.unsqueeze(-1), out=h), chunk_decay)
        du = ddl = dA = dB = None
        if need_u or need_dt:
            gB = lay.contract_state(lay.B, g)  # (T, b, G, nc, Dg)
            du = gB * lay.dl.squeeze(-1) if need_u else None
            ddl = gB * lay.u.squeeze(-1) if need_dt else None
        if need_B:
            dB = lay.natural(lay.contract_channels(lay.dlu.squeeze(-1), g))
        if decayed is not None:
            # Through the decay a_l = exp(Δ_l A): dL/da_l = g_l h_{l-1}, da/dΔ = A a, da/dA = Δ a.
            q = decayed.mul_(g)
            if need_dt:
                ddl = ddl + lay.sum_states(torch.mul(q, lay.A, out=a))
            if need_A:
                dA = torch.mul(q, lay.dl, out=a).sum(dim=(0, 1, 3)).reshape(lay.dch, -1)
            del q
        del a, h, g, decayed
        lay.release()

        grads: list[Tensor | None] = [None] * 9
        if du is not None:
            du = lay.natural(du)
            grads[0] = du + D[:, None] * dy if D is not None else du
        if ddl is not None:
            ddt = lay.natural(ddl)
            if ctx.delta_softplus:
                ddt = ddt * torch.where(lay.dt > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(lay.dt))
            grads[1] = ddt if need_delta else None
            grads[6] = ddt.sum(dim=(0, 2)) if need_bias else None
        grads[2] = dA
        grads[3] = dB.reshape(B.shape) if dB is not None else None
        grads[4] = dC.reshape(C.shape) if dC is not None else None
        if need_D and D is not None:
            grads[5] = (dy * u).sum(dim=(0, 2))
        return tuple(grads)


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int | None = None,
) -> Tensor:
    """The chunked scan on validated inputs (one float dtype; B, C as (batch, G, N, L)); ``chunk``: T."""
    y: Tensor = _ChunkedScan.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), chunk)
    return y


def load() -> ScanFn:
    """Registry loader: always available."""
    return selective_scan_torch
