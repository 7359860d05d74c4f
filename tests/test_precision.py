"""Precision modes: TF32 switches set for a block and restored, autocast only for bf16, clear errors."""

from __future__ import annotations

import pytest
import torch

from mair.runtime.precision import PRECISIONS, apply_matmul_precision, autocast, check_precision, matmul_precision


def test_tf32_mode_turns_matmul_tf32_on_and_restores_the_previous_switches() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with matmul_precision("tf32"):
            assert torch.backends.cuda.matmul.allow_tf32 is True
            assert torch.backends.cudnn.allow_tf32 is True
        assert torch.backends.cuda.matmul.allow_tf32 is False
        apply_matmul_precision("tf32")
        apply_matmul_precision("fp32")  # fp32 means PyTorch's defaults: full-fp32 matmuls
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_autocast_is_bf16_only_for_the_bf16_mode() -> None:
    x = torch.randn(4, 4)
    for name in PRECISIONS:
        with autocast(name, "cpu"):
            y = x @ x
        assert y.dtype == (torch.bfloat16 if name == "bf16" else torch.float32), name


def test_unknown_precision_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"fp32, tf32, bf16, got 'fp16'"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="fp16"), matmul_precision("fp16"):
        pass
