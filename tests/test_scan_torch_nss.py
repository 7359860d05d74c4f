"""The inference-only NSS scan in plain PyTorch (CPU fast path) against the plain gather-scan-scatter composition."""

from __future__ import annotations

import pytest
import torch

from mair.models.nss import scan_orders
from mair.models.scan.torch_nss import chunked_order, nss_scan_torch
from mair.models.scan.triton_backend import nss_scan_reference

CASES = [  # batch, H, W, channels, N, chunk length (None: default), shift
    (1, 7, 9, 5, 1, None, 0),
    (2, 8, 8, 6, 4, 5, 2),
    (1, 13, 11, 10, 16, 7, 0),
    (3, 5, 3, 4, 2, None, 2),
    (1, 1, 17, 3, 32, 4, 0),
]


def _inputs(batch: int, length: int, channels: int, n_state: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    K = 4
    x = torch.randn(batch, length, channels, generator=g)
    delta = torch.randn(batch, K, length, channels, generator=g) * 0.5
    A = -torch.rand(K * channels, n_state, generator=g) * 2
    B = torch.randn(batch, K, length, n_state, generator=g)
    C = torch.randn(batch, K, length, n_state, generator=g)
    D = torch.randn(K * channels, generator=g)
    bias = torch.randn(K * channels, generator=g) * 0.1
    return x, delta, A, B, C, D, bias


@pytest.mark.parametrize("block_mb", [None, "0.0001"])
@pytest.mark.parametrize(("batch", "h", "w", "channels", "n_state", "chunk", "shift"), CASES)
def test_matches_gather_scan_scatter(monkeypatch, batch, h, w, channels, n_state, chunk, shift, block_mb):
    if block_mb is None:
        monkeypatch.delenv("MAIR_SCAN_CPU_BLOCK_MB", raising=False)
    else:  # one channel per block: exercises the block loop
        monkeypatch.setenv("MAIR_SCAN_CPU_BLOCK_MB", block_mb)
    ids = scan_orders(h, w, 4, shift)[0]
    args = _inputs(batch, h * w, channels, n_state, seed=h * 100 + w)
    ref = nss_scan_reference(*(a.double() for a in args), ids)
    out = nss_scan_torch(*args, ids, chunk=chunk)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-6
    # without D and delta_bias, and without softplus
    x, delta, A, B, C, _, _ = args
    out = nss_scan_torch(x, delta.abs(), A, B, C, None, None, ids, delta_softplus=False, chunk=chunk)
    ref = nss_scan_reference(
        x.double(), delta.abs().double(), A.double(), B.double(), C.double(), None, None, ids, delta_softplus=False
    )
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-6


def test_chunked_order_pads_reads_and_discards_writes():
    ids = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    read, write, n_chunks = chunked_order(ids, 2)  # 3 chunks of 2, one padding slot per sequence
    assert n_chunks == 3
    slots = read.view(2, 2, 3)  # (t, k, c)
    assert slots[:, 0].t().tolist() == [[0, 1], [2, 3], [4, 0]]
    assert slots[:, 1].t().tolist() == [[4, 3], [2, 1], [0, 0]]
    writes = write.view(2, 2, 3)
    assert writes[1, 0, 2].item() == 5 and writes[1, 1, 2].item() == 6 + 5  # row L of each sequence
    assert sorted(writes[:, 1].reshape(-1).tolist()) == [6, 7, 8, 9, 10, 11]


def test_rejects_mismatched_shapes():
    x, delta, A, B, C, D, bias = _inputs(1, 12, 3, 2, seed=0)
    ids = scan_orders(3, 4, 4, 0)[0]
    with pytest.raises(ValueError, match="delta"):
        nss_scan_torch(x, delta[:, :, :-1], A, B, C, D, bias, ids)
    with pytest.raises(ValueError, match="B and C"):
        nss_scan_torch(x, delta, A, B[..., :1], C, D, bias, ids)


def test_model_inference_path_equals_the_gathered_path():
    """MaIR under no_grad (this fast path) against the same network with autograd on (gathered path)."""
    from mair.models import from_official

    torch.manual_seed(0)
    net = from_official(
        "MaIR",
        img_size=16,
        embed_dim=8,
        depths=[2],
        d_state=3,
        ssm_ratio=1.5,
        mlp_ratio=1.0,
        upscale=2,
        upsampler="pixelshuffledirect",
        scan_len=4,
    ).eval()
    for vmm in (m for m in net.modules() if type(m).__name__ == "VMM"):
        vmm.scan_backend = "torch"
    x = torch.rand(1, 3, 11, 13)
    with torch.no_grad():
        fast = net(x)
    slow = net(x.requires_grad_())
    assert torch.allclose(fast, slow.detach(), atol=1e-5, rtol=1e-5)
