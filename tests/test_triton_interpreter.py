"""Our adjustments to Triton's CPU interpreter (mair/models/triton_interpreter.py), which every kernel test
without a GPU runs in: kernels that call helpers still compute what they should, and a helper call inside a
running kernel no longer patches ``triton.language`` again (the model-level tests' main cost)."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    pytest.skip(
        "these adjustments apply in Triton's CPU interpreter only (TRITON_INTERPRET=1)", allow_module_level=True
    )

import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

import mair.models.scan.triton_kernels  # noqa: E402, F401  (applies the adjustments)


@triton.jit
def _scaled(x, factor):
    return x * factor


@triton.jit
def _helper_loop_kernel(x_ptr, out_ptr, steps, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    acc = tl.load(x_ptr + offsets)
    for _ in range(steps):
        acc = _scaled(acc, 2.0)  # a helper of this module
    total = tl.sum(acc, axis=0)  # a helper of Triton's own (its module sees triton.language.core)
    tl.store(out_ptr + offsets, acc + total)


def _run(steps: int, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, int]:
    """The kernel's output and how many times it patched the language modules."""
    calls = []
    real = interpreter._patch_builtin
    monkeypatch.setattr(interpreter, "_patch_builtin", lambda *a: (calls.append(1), real(*a))[1])
    x = torch.arange(8, dtype=torch.float32)
    out = torch.empty_like(x)
    _helper_loop_kernel[(1,)](x, out, steps, BLOCK=8)
    monkeypatch.setattr(interpreter, "_patch_builtin", real)
    return out, len(calls)


def test_helper_calls_compute_as_written_and_patch_the_language_once_per_launch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _run(1, monkeypatch)  # the first launch of a process patches a little less (nothing to count on)
    few_out, few_patches = _run(2, monkeypatch)
    many_out, many_patches = _run(20, monkeypatch)
    x = torch.arange(8, dtype=torch.float32)
    for steps, out in ((2, few_out), (20, many_out)):
        acc = x * 2.0**steps
        torch.testing.assert_close(out, acc + acc.sum(), rtol=0, atol=0)
    assert few_patches == many_patches > 0  # one patch of each module per launch, not one per helper call


def test_the_language_is_restored_after_a_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch leaves ``triton.language`` as it found it (a second launch patches afresh and works)."""
    before = tl.load
    _run(3, monkeypatch)
    assert tl.load is before
    out, _ = _run(1, monkeypatch)
    x = torch.arange(8, dtype=torch.float32) * 2.0
    torch.testing.assert_close(out, x + x.sum(), rtol=0, atol=0)
