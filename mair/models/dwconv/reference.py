"""The plain reference of the VMM's depthwise convolution (channels-last in and out), which the Triton op in
:mod:`mair.models.dwconv.op` is tested against (tests/test_dwconv.py)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def depthwise_conv2d_reference(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(..., groups=C)`` on the (B, C, H, W) view, returned as (B, H, W, C) contiguous."""
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])
    return y.permute(0, 2, 3, 1).contiguous()
