"""Learning-rate and progressive schedules against values computed by hand from the rules in docs/training.md
"Learning-rate schedules"."""

from __future__ import annotations

import math

import pytest
import torch

from mair.experiments import Experiment, experiment_ids, load
from mair.train.schedules import (
    CosineAnnealingRestartCyclicLR,
    MultiStepRestartLR,
    build_scheduler,
    lr_at,
    progressive_stage,
)


def _cosine(base: float, eta_min: float, e: int, start: int, period: int) -> float:
    """The documented formula for cycle weight 1, written out by hand."""
    return eta_min + 0.5 * (base - eta_min) * (1 + math.cos(math.pi * (e - start) / period))


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        (1, 2e-4),
        (250000, 2e-4),
        (250001, 1e-4),
        (400000, 1e-4),
        (400001, 5e-5),
        (450001, 2.5e-5),
        (475000, 2.5e-5),
        (475001, 1.25e-5),
        (500000, 1.25e-5),
    ],
)
def test_sr_x2_multistep(iteration: int, expected: float) -> None:
    # 2e-4 * 0.5^(number of milestones m <= i - 1); the first halving applies from 250001
    assert lr_at(load("sr_classic_x2"), iteration) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        (1, 2e-4),
        (1600000, 2e-4),
        (1600001, 1e-4),
        (2100000, 1e-4),
        (2100001, 5e-5),
        (2500001, 2.5e-5),
        (2800001, 1.25e-5),
        (3000000, 1.25e-5),
        (3000001, 6.25e-6),
        (3200000, 6.25e-6),
    ],
)
def test_cdn_s15_milestones(iteration: int, expected: float) -> None:
    assert lr_at(load("dn_color_s15"), iteration) == pytest.approx(expected, rel=1e-12)


def test_cdn_s25_and_x3_milestones() -> None:
    s25 = load("dn_color_s25")
    assert [lr_at(s25, i) for i in (200000, 200001, 800001, 1200001, 1400001, 1500001)] == pytest.approx(
        [2e-4, 1e-4, 5e-5, 2.5e-5, 1.25e-5, 6.25e-6], rel=1e-12
    )
    x3 = load("sr_classic_x3")
    assert [lr_at(x3, i) for i in (125000, 125001, 237500, 237501)] == pytest.approx(
        [2e-4, 1e-4, 2.5e-5, 1.25e-5], rel=1e-12
    )


def test_dn_real_cyclic_cosine() -> None:
    exp = load("dn_real")
    # constant 3e-4 through the first cycle (its eta_min equals the base rate)
    for iteration in (1, 2, 100000, 184000, 184001):
        assert lr_at(exp, iteration) == pytest.approx(3e-4, rel=1e-12)
    # then the cosine of the second cycle: e = i - 1, start 184000, period 544000, eta_min 1e-6
    assert lr_at(exp, 451000) == pytest.approx(_cosine(3e-4, 1e-6, 450999, 184000, 544000), rel=1e-12)
    assert lr_at(exp, 451000) == pytest.approx(1.5482e-4, rel=1e-4)
    end = lr_at(exp, 718250)  # sum(periods) 728000 > total_iter: never reaches eta_min
    assert end == pytest.approx(_cosine(3e-4, 1e-6, 718249, 184000, 544000), rel=1e-12)
    assert end == pytest.approx(1.24e-6, rel=5e-3)
    assert end > 1e-6


def test_dehaze_cyclic_cosine_ends_at_eta_min() -> None:
    for exp_id in ("dehaze_its", "dehaze_ots", "dehaze_r6k"):
        exp = load(exp_id)
        assert lr_at(exp, 1) == pytest.approx(2e-4)
        assert lr_at(exp, 184001) == pytest.approx(2e-4)
        assert abs(lr_at(exp, 700000) - 1e-6) < 1e-12
        assert lr_at(exp, 442000) == pytest.approx(_cosine(2e-4, 1e-6, 441999, 184000, 516000), rel=1e-12)


def _stepped_lrs(exp: Experiment, iterations: int) -> list[float]:
    """Run the torch scheduler with the official stepping: step at the start of iteration i only for i > 1."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=float(exp.train.optimizer.lr))
    sched = build_scheduler(opt, exp)
    lrs = []
    for i in range(1, iterations + 1):
        if i > 1:
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
    return lrs


@pytest.mark.parametrize("exp_id", experiment_ids())
def test_scheduler_classes_match_lr_at_on_every_demo_iteration(exp_id: str) -> None:
    exp = load(exp_id, "demo")
    total = exp.train.total_iter
    lrs = _stepped_lrs(exp, total)
    assert lrs == pytest.approx([lr_at(exp, i) for i in range(1, total + 1)], rel=1e-12)


def test_scheduler_state_dict_resumes_exactly() -> None:
    exp = load("dn_real", "demo")
    full = _stepped_lrs(exp, 32)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=3e-4)
    sched = build_scheduler(opt, exp)
    for _ in range(12):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([param], lr=3e-4)
    opt2.load_state_dict(opt.state_dict())
    sched2 = build_scheduler(opt2, exp)
    sched2.load_state_dict(state)
    resumed = []
    for _ in range(13, 32):
        opt2.step()
        sched2.step()
        resumed.append(opt2.param_groups[0]["lr"])
    assert resumed == pytest.approx(full[13:32], rel=1e-12)


def test_scheduler_classes_closed_form() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1.0)
    ms = MultiStepRestartLR(opt, [2, 4], gamma=0.5)
    got = []
    for _ in range(6):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        ms.step()
    assert got == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    opt = torch.optim.Adam([param], lr=1.0)
    cos = CosineAnnealingRestartCyclicLR(opt, [4, 4], [1.0, 0.5], [0.0, 0.1])
    got = []
    for _ in range(9):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        cos.step()
    expected = [_cosine(1.0, 0.0, e, 0, 4) for e in range(5)]
    expected += [0.1 + 0.5 * 0.5 * (1.0 - 0.1) * (1 + math.cos(math.pi * (e - 4) / 4)) for e in range(5, 9)]
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        (1, (4, 128)),
        (184000, (4, 128)),
        (184001, (2, 160)),
        (344000, (2, 160)),
        (344001, (1, 192)),
        (536000, (1, 192)),
        (536001, (1, 256)),
        (718250, (1, 256)),
        (800000, (1, 256)),
    ],
)
def test_progressive_stage_dn_real(iteration: int, expected: tuple[int, int]) -> None:
    train = load("dn_real").train
    assert progressive_stage(train.progressive, iteration, train.batch_per_gpu, train.patch.gt_size) == expected


def test_progressive_stage_dehaze_and_none() -> None:
    train = load("dehaze_its").train
    for iteration in (1, 350000, 700000):
        assert progressive_stage(train.progressive, iteration, 6, 256) == (6, 256)
    assert progressive_stage(None, 5, 4, 128) == (4, 128)


def test_lr_at_rejects_iteration_zero() -> None:
    with pytest.raises(ValueError, match="1-based"):
        lr_at(load("sr_classic_x2"), 0)
