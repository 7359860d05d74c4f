"""Learning-rate schedules and the progressive patch/batch schedule of the official training
(docs/training.md "Learning-rate schedules").

Official stepping: the scheduler is stepped at the start of iteration ``i`` only for ``i > 1``, so during
iteration ``i`` (1-based) the scheduler's ``last_epoch`` is ``i - 1``. Both schedulers here compute the
learning rate in closed form from ``last_epoch`` (no chained multiplications), so a restored ``state_dict``
gives exactly the same rate as an uninterrupted run. :func:`lr_at` is the same formula as a pure function of
an experiment and an iteration.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mair.experiments import Experiment
from mair.experiments.spec import Progressive

__all__ = [
    "CosineAnnealingRestartCyclicLR",
    "MultiStepRestartLR",
    "build_scheduler",
    "cosine_cyclic_lr",
    "lr_at",
    "multistep_factor",
    "progressive_stage",
]


# ------------------------------------------------------------------------------------------------ formulas


def multistep_factor(last_epoch: int, milestones: Sequence[int], gamma: float) -> float:
    """``gamma ** (number of milestones m <= last_epoch)``."""
    return gamma ** bisect.bisect_right(sorted(milestones), last_epoch)


def cosine_cyclic_lr(
    last_epoch: int, base_lr: float, periods: Sequence[int], restart_weights: Sequence[float], eta_mins: Sequence[float]
) -> float:
    """The learning rate of ``CosineAnnealingRestartCyclicLR`` at ``last_epoch``.

    The cycle is the first one whose cumulative end is >= ``last_epoch``; inside cycle ``c`` starting at
    ``start``: ``eta_min_c + 0.5 * w_c * (base - eta_min_c) * (1 + cos(pi * (e - start) / period_c))``.
    Past the last cycle (the official code fails there) the rate stays at the end of the last cycle.
    """
    if not (len(periods) == len(restart_weights) == len(eta_mins)) or not periods:
        raise ValueError("periods, restart_weights and eta_mins must be non-empty and of the same length")
    ends = [sum(periods[: i + 1]) for i in range(len(periods))]
    e = min(max(last_epoch, 0), ends[-1])
    idx = bisect.bisect_left(ends, e)
    start = 0 if idx == 0 else ends[idx - 1]
    eta_min, weight, period = eta_mins[idx], restart_weights[idx], periods[idx]
    return eta_min + 0.5 * weight * (base_lr - eta_min) * (1.0 + math.cos(math.pi * (e - start) / period))


def lr_at(exp: Experiment, iteration: int) -> float:
    """The learning rate in effect during 1-based ``iteration`` of experiment ``exp`` (official stepping)."""
    if iteration < 1:
        raise ValueError(f"iterations are 1-based, got {iteration}")
    base = float(exp.train.optimizer.lr)
    sched = exp.train.scheduler
    last_epoch = iteration - 1
    if sched.type == "MultiStepLR":
        return base * multistep_factor(last_epoch, sched.milestones, float(sched.gamma))
    if sched.type == "CosineAnnealingRestartCyclicLR":
        return cosine_cyclic_lr(last_epoch, base, sched.periods, sched.restart_weights, sched.eta_mins)
    raise ValueError(f"unknown scheduler type {sched.type!r}")


# ------------------------------------------------------------------------------------------------ schedulers


class MultiStepRestartLR(LRScheduler):
    """Multiply the base rate by ``gamma`` once for every milestone reached (``last_epoch >= m``).

    The official ymls use no restarts (``restarts [0]``, weight 1), which is all this class supports.
    """

    def __init__(
        self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.5, last_epoch: int = -1
    ) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        factor = multistep_factor(self.last_epoch, self.milestones, self.gamma)
        return [base * factor for base in self.base_lrs]


class CosineAnnealingRestartCyclicLR(LRScheduler):
    """Cosine cycles of lengths ``periods``, each from ``weight * base`` down to its ``eta_min``."""

    def __init__(
        self,
        optimizer: Optimizer,
        periods: Sequence[int],
        restart_weights: Sequence[float],
        eta_mins: Sequence[float],
        last_epoch: int = -1,
    ) -> None:
        self.periods = [int(p) for p in periods]
        self.restart_weights = [float(w) for w in restart_weights]
        self.eta_mins = [float(m) for m in eta_mins]
        if not (len(self.periods) == len(self.restart_weights) == len(self.eta_mins)):
            raise ValueError("periods, restart_weights and eta_mins must have the same length")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [
            cosine_cyclic_lr(self.last_epoch, base, self.periods, self.restart_weights, self.eta_mins)
            for base in self.base_lrs
        ]


def build_scheduler(optimizer: Optimizer, exp: Experiment) -> LRScheduler:
    """The experiment's scheduler (``train.scheduler``) on ``optimizer``, at ``last_epoch`` 0."""
    sched = exp.train.scheduler
    if sched.type == "MultiStepLR":
        return MultiStepRestartLR(optimizer, sched.milestones, float(sched.gamma))
    if sched.type == "CosineAnnealingRestartCyclicLR":
        return CosineAnnealingRestartCyclicLR(optimizer, sched.periods, sched.restart_weights, sched.eta_mins)
    raise ValueError(f"unknown scheduler type {sched.type!r}")


# ------------------------------------------------------------------------------------------------ progressive


def progressive_stage(
    progressive: Progressive | None, iteration: int, batch_per_gpu: int, gt_size: int
) -> tuple[int, int]:
    """``(mini_batch_size, patch_size)`` in effect at 1-based ``iteration``.

    The stage is the first ``j`` with ``iteration <= cumsum(iters)[j]`` (the last stage past the end). Without
    a progressive schedule the loader's batch and patch are used unchanged.
    """
    if not progressive:
        return batch_per_gpu, gt_size
    iters = progressive.iters
    ends = [sum(iters[: i + 1]) for i in range(len(iters))]
    j = bisect.bisect_left(ends, iteration)
    j = min(j, len(ends) - 1)
    return int(progressive.mini_batch_sizes[j]), int(progressive.gt_sizes[j])
