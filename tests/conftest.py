"""Shared test fixtures and helpers: where ../shared is (skips with a reason when it is absent), relative errors,
and the comparison of a tiny MaIR's results across a switch of its VMMs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAIR_SHARED_DIR", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the team's shared reference folder beside the checkout); users do not have it")
    return path


@pytest.fixture
def golden_dir() -> Path:
    return shared_path("golden")


@pytest.fixture
def datasets_dir() -> Path:
    return shared_path("datasets")


def rel_err(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64 on the CPU (whatever the devices and dtypes of the two tensors)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_vmm_switch_keeps_results(attribute: str, nonzero_grad: str) -> None:
    """A tiny MaIR with the Triton scan computes the same outputs (≤ 1e-6) and parameter gradients (≤ 1e-5)
    with every VMM's ``attribute`` False and True; the parameter ``nonzero_grad`` gets a gradient at all. cuDNN's
    TF32 is off: its default TF32 convolutions would round the two paths' last-bit differences to 1e-4."""
    import torch

    from mair.models import from_official
    from mair.models.blocks import VMM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = from_official(
        "MaIR",
        upscale=2,
        embed_dim=8,
        depths=[2],
        d_state=4,
        ssm_ratio=1.5,
        mlp_ratio=1.5,
        upsampler="pixelshuffledirect",
        scan_len=4,
        drop_path_rate=0.0,
    ).to(device)
    vmms = [m for m in model.modules() if isinstance(m, VMM)]
    for vmm in vmms:
        vmm.scan_backend = "triton"
    x = torch.rand(2, 3, 7, 10, device=device)
    results = []
    for value in (False, True):
        for vmm in vmms:
            setattr(vmm, attribute, value)
        model.zero_grad()
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            out = model(x)
            out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert rel_err(results[1][0], results[0][0]) <= 1e-6
    for name, grad in results[0][1].items():
        assert rel_err(results[1][1][name], grad) <= 1e-5, name
    assert results[0][1][nonzero_grad].abs().sum() > 0


def _interpret_triton_without_gpu() -> None:
    """Without a GPU, Triton kernels run in Triton's CPU interpreter (set before mair is imported)."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton_without_gpu()
