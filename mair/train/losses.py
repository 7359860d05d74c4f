"""Pixel losses of the official trainings: L1 (SR, lightSR, U-Net tasks) and Charbonnier (colour denoising)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mair.experiments.spec import Loss

__all__ = ["CharbonnierLoss", "L1Loss", "build_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


class L1Loss(nn.Module):
    """``weight * reduce(|pred - target|)``."""

    def __init__(self, weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.weight = float(weight)
        self.reduction = reduction

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.weight * _reduce((pred - target).abs(), self.reduction)


class CharbonnierLoss(nn.Module):
    """``weight * reduce(sqrt((pred - target)^2 + eps))``; the official colour-denoising eps is 1e-12."""

    def __init__(self, weight: float = 1.0, reduction: str = "mean", eps: float = 1e-12) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.weight = float(weight)
        self.reduction = reduction
        self.eps = float(eps)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.weight * _reduce(torch.sqrt((pred - target) ** 2 + self.eps), self.reduction)


def build_loss(cfg: Loss) -> nn.Module:
    """The loss of ``train.loss`` (``type`` l1 or charbonnier)."""
    kind = cfg.type
    weight = float(cfg.weight)
    reduction = str(cfg.reduction)
    if kind == "l1":
        return L1Loss(weight, reduction)
    if kind == "charbonnier":
        return CharbonnierLoss(weight, reduction, float(cfg.eps))
    raise ValueError(f"unknown loss type {kind!r} (expected l1 or charbonnier)")
