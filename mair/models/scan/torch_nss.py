"""Inference-only NSS scan in plain PyTorch: the scan order folded into the chunked layout (CPU fast path).

:func:`nss_scan_torch` computes what :func:`mair.models.scan.triton_backend.nss_scan` computes (and its plain
composition ``nss_scan_reference``) without autograd: K selective scans that read one raster feature map
through the orders ``ids`` and write back in raster order.

The torch backend's chunked scan (``torch_backend``) wants every tensor as ``(T, batch, K, nc, channels)``:
position ``t`` of all ``nc`` chunks of all K sequences in one slice. The gathered model path reaches that
layout in three copies per tensor (gather into scan order, permute into chunks, and back again for the
output, then a fourth inverse gather). Step ``c·T + t`` of sequence ``k`` is raster position ``ids[k, c·T + t]``,
so one ``index_select`` with the index ``ids[k, c·T + t]`` laid out as ``(t, k, c)`` reads every raster input
straight into the chunked layout, and one ``index_copy_`` writes the outputs straight back to raster order.

Channels are independent in the scan, so the recurrence runs over blocks of channels whose state buffers fit
in ``$MAIR_SCAN_CPU_BLOCK_MB`` (docs/switches.md): memory stays bounded for large inputs and the working set
stays in cache. Padding steps at the end of a sequence (when T does not divide L) come after every real step,
so they cannot change a real output; they read position 0 and are written to a discarded row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mair.runtime import switches

from .torch_backend import _WORKSPACE, _forward_scan, default_chunk_size

BLOCK_ENV = "MAIR_SCAN_CPU_BLOCK_MB"


def _block_bytes() -> int:
    return max(1, int(switches.get(BLOCK_ENV) * 2**20))


def chunked_order(ids: Tensor, size: int) -> tuple[Tensor, Tensor, int]:
    """For orders ``ids`` (K, L): the raster position of every (t, k, c) slot of the chunked layout.

    Returns ``(read, write, n_chunks)``: ``read`` (T·K·nc,) positions to gather (padding slots read 0) and
    ``write`` (T·K·nc,) flat indices into a ``(K·(L+1),)`` raster buffer (padding slots go to row ``L`` of
    their sequence, which is discarded).
    """
    groups, length = ids.shape
    n_chunks = -(-length // size)
    pad = size * n_chunks - length
    order = F.pad(ids, (0, pad), value=-1) if pad else ids
    slots = order.view(groups, n_chunks, size).permute(2, 0, 1)  # (T, K, nc)
    valid = slots >= 0
    read = torch.where(valid, slots, 0).reshape(-1)
    offsets = torch.arange(groups, device=ids.device).view(1, groups, 1) * (length + 1)
    write = (torch.where(valid, slots, length) + offsets).reshape(-1)
    return read, write, n_chunks


def _gather(t: Tensor, index: Tensor, size: int, groups: int, n_chunks: int) -> Tensor:
    """Raster ``(batch, L, X)`` (or ``(batch, K·L, X)`` with per-sequence rows) to ``(T, batch, K, nc, X)``."""
    out = t.index_select(1, index).view(t.shape[0], size, groups, n_chunks, t.shape[-1])
    return out.transpose(0, 1) if t.shape[0] > 1 else out.view(size, 1, groups, n_chunks, t.shape[-1])


def _per_sequence_index(read: Tensor, groups: int, length: int, size: int, n_chunks: int) -> Tensor:
    """``read`` turned into row indices of a ``(batch, K·L, X)`` view of a ``(batch, K, L, X)`` tensor."""
    offsets = torch.arange(groups, device=read.device).view(1, groups, 1) * length
    return (read.view(size, groups, n_chunks) + offsets).reshape(-1)


@torch.no_grad()
def nss_scan_torch(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool = True,
    chunk: int | None = None,
) -> Tensor:
    """The NSS selective scan without autograd; arguments and result as :func:`triton_backend.nss_scan`.

    x (batch, L, D) raster; delta (batch, K, L, D), B and C (batch, K, L, N) raster; A (K·D, N); D and
    delta_bias (K·D,); ids (K, L). Returns y (batch, K, L, D) float32 in raster order.
    """
    batch, length, channels = x.shape
    groups, n_state = delta.shape[1], A.shape[1]
    if delta.shape != (batch, groups, length, channels) or tuple(ids.shape) != (groups, length):
        raise ValueError(
            f"nss_scan_torch: x {tuple(x.shape)}, delta {tuple(delta.shape)}, ids {tuple(ids.shape)}"
            " do not fit (batch, L, D), (batch, K, L, D), (K, L)"
        )
    if B.shape != (batch, groups, length, n_state) or C.shape != B.shape:
        raise ValueError(
            f"nss_scan_torch: B and C must be (batch, K, L, N) = {(batch, groups, length, n_state)}; "
            f"got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    size = min(chunk or default_chunk_size(length), length)
    read, write, n_chunks = chunked_order(ids.to(x.device), size)
    rows = _per_sequence_index(read, groups, length, size, n_chunks)

    def per_sequence(t: Tensor) -> Tensor:
        return _gather(t.float().reshape(batch, groups * length, t.shape[-1]), rows, size, groups, n_chunks)

    u = _gather(x.float(), read, size, groups, n_chunks)  # (T, b, K, nc, D)
    dt = per_sequence(delta)
    if delta_bias is not None:
        dt = dt + delta_bias.float().view(groups, 1, channels)
    dl = F.softplus(dt) if delta_softplus else dt
    Bc, Cc = per_sequence(B).unsqueeze(-2), per_sequence(C).unsqueeze(-2)  # (T, b, K, nc, 1, N)
    A_kd = A.float().view(groups, 1, channels, n_state)
    y = torch.empty_like(u)

    # Channel blocks whose (T, b, K, nc, block, N) state buffers stay under the block budget.
    per_channel = size * batch * groups * n_chunks * n_state * 4
    block = max(1, min(channels, _block_bytes() // max(1, per_channel)))
    numel = size * batch * groups * n_chunks * block * n_state
    # Reused buffers (the torch backend's CPU pool): fresh multi-megabyte tensors are page-faulted in on
    # first touch, which cost more than the products written into them.
    buffers = [_WORKSPACE.take(numel, u), _WORKSPACE.take(numel, u), _WORKSPACE.take(numel // n_state, u)]
    try:
        for lo in range(0, channels, block):
            hi = min(channels, lo + block)
            shape = (size, batch, groups, n_chunks, hi - lo, n_state)
            count = math.prod(shape)
            dl_blk = dl[..., lo:hi].unsqueeze(-1)
            a = torch.mul(dl_blk, A_kd[..., lo:hi, :], out=buffers[0][:count].view(shape)).exp_()
            dlu = torch.mul(
                dl_blk, u[..., lo:hi].unsqueeze(-1), out=buffers[2][: count // n_state].view(*shape[:-1], 1)
            )
            h = torch.mul(dlu, Bc, out=buffers[1][:count].view(shape))
            chunk_decay = torch.exp_(dl_blk.sum(0) * A_kd[..., lo:hi, :])
            h = _forward_scan(a, h, chunk_decay)
            if n_state == 1:
                torch.mul(h.squeeze(-1), Cc.squeeze(-1), out=y[..., lo:hi])
            else:
                y[..., lo:hi] = torch.matmul(Cc, h.transpose(-1, -2)).squeeze(-2)
    finally:
        _WORKSPACE.give(buffers)
    if D is not None:
        y.addcmul_(u, D.float().view(groups, 1, channels))

    out = x.new_empty((batch, groups * (length + 1), channels), dtype=torch.float32)
    source = (
        y.view(size * groups * n_chunks, channels)[None]
        if batch == 1
        else (y.transpose(0, 1).reshape(batch, size * groups * n_chunks, channels))
    )
    out.index_copy_(1, write, source)
    return out.view(batch, groups, length + 1, channels)[:, :, :length]
