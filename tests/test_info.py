"""Params and FLOPs of every experiment's network against the official counts, and the ``mair info`` command."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mair.cli import main
from mair.experiments import experiment_ids, load
from mair.models import from_official
from mair.models.cli import experiment_info
from mair.models.flops import build_for_counting, count_flops, count_params, selective_scan_flops, vmm_flops

REPO = Path(__file__).resolve().parents[1]
IDS = experiment_ids()


@functools.cache
def _info(exp_id: str) -> dict[str, Any]:
    return experiment_info(load(exp_id))


@pytest.mark.parametrize("exp_id", IDS)
def test_params_equal_the_spec_exactly(exp_id: str) -> None:
    exp = load(exp_id)
    model = build_for_counting(exp.network.arch, exp.network.constructor_kwargs())  # no forward pass
    assert count_params(model) == exp.complexity.params


@pytest.mark.parametrize("exp_id", IDS)
def test_flops_match_the_spec_table(exp_id: str) -> None:
    info, comp = _info(exp_id), load(exp_id).complexity
    assert info["params"] == info["expected_params"] == comp.params
    if comp.flops_g is not None:
        assert info["input_size"] == list(comp.flops_input_size)
        assert info["flops_g"] == pytest.approx(comp.flops_g, rel=5e-3)
        assert info["flops_g"] == pytest.approx(info["expected_flops_g"], rel=5e-3)
    else:  # colour denoising: FLOPs are known per pixel only
        assert info["mflops_per_pixel"] == pytest.approx(comp.flops_mflops_per_pixel, rel=5e-3)


def test_the_rules_of_the_convention() -> None:
    assert selective_scan_flops(batch=2, channels=8, length=10, d_state=4) == 9 * 2 * 10 * 8 * 4 + 2 * 8 * 10
    exp = load("sr_light_t_x2")
    model = from_official("MaIR", **exp.network.constructor_kwargs())
    vmm = model.layers[0].residual_group.blocks[0].self_attention
    # C=60, D=66, R=4, N=1, K=4 at one 2x3 image: per pixel in_proj 60*132, dwconv 66*9, x_proj 4*66*6,
    # dt_proj 4*4*66, pool 4*66, out_norm 5*66, out_proj 66*60; plus the SSA 1x1 conv on pooled values 264*4.
    per_pixel = 60 * 132 + 66 * 9 + 4 * 66 * 6 + 4 * 4 * 66 + 4 * 66 + 5 * 66 + 66 * 60
    assert vmm_flops(vmm, (1, 2, 3, 60)) == 6 * per_pixel + 264 * 4

    # Outside the VMMs the op trace counts: a conv is one FLOP per multiply-add, LayerNorm 5 per element.
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.LayerNorm(5), nn.AdaptiveAvgPool2d(1))
    flops = count_flops(net, (6, 5))
    assert flops.by_kind == {"conv": 6 * 5 * 4 * 3 * 9, "layer_norm": 5 * 4 * 6 * 5, "pool": 4 * 6 * 5}


def test_counting_leaves_the_model_and_the_scan_alone() -> None:
    from mair.models import blocks, scan

    exp = load("dehaze_r6k", "demo")
    model = from_official("MaIRUNet", **exp.network.constructor_kwargs()).train()
    weight = model.output.weight.detach().clone()
    small, large = count_flops(model, (16, 16)), count_flops(model, (32, 32))
    assert model.training and model.output.weight.device.type == "cpu"
    assert torch.equal(model.output.weight, weight)
    assert blocks.selective_scan is scan.selective_scan
    # Linear in H*W up to the SSA constant (the grouped 1x1 conv on pooled values).
    assert large.total - small.total == pytest.approx(3 * small.total, rel=1e-3)


def test_demo_trainings_stay_small() -> None:
    """A cost guard for the demo scope: 17 trainings must fit a few minutes on a 2-core CPU."""
    total = 0.0
    for exp_id in IDS:
        exp = load(exp_id, "demo")
        info = experiment_info(exp, (exp.train.patch.lq_size,) * 2)
        assert info["params"] < 500_000 and info["expected_params"] is None
        train = exp.train
        total += 3 * info["flops_g"] * train.batch_per_gpu * train.total_iter  # forward + backward
    # About 125 GFLOPs in all (mostly the classic-SR upsampler at HR size); about a minute on one CPU thread.
    assert total < 200.0


def test_info_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "sr_light_t_x2", "--input-size", "32x48"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["experiment"] == "sr_light_t_x2" and info["input_size"] == [32, 48]
    assert info["params"] == info["expected_params"] == 877752
    assert info["expected_flops_g"] is None  # the expected number is for 360x640 only
    assert info["flops_g"] > 0 and set(info["flops_by_kind_g"]) >= {"conv", "vmm", "scan"}
    about = info["about"]  # the file's documentation fields
    assert about["title"] == "MaIR-T lightweight image super-resolution x2 (DIV2K)"
    assert about["official"]["weights"] and about["paper_table"] and about["drop_path"]
    assert about["init_from"] is None and all(q.count(":") >= 1 for q in about["quirks"]) and about["quirks"]
    assert main(["info", "sr_light_t_x3", "--demo"]) == 0
    about = json.loads(capsys.readouterr().out)["about"]
    assert about["init_from"]["experiment"] == "sr_light_s_x2"
    assert (
        about["init_from"]["official_weights"] == "MaIR_S_lightSR_x2.pth"
        and "S x2 checkpoint" in about["init_from"]["quirk"]
    )

    assert main(["info", "dn_color_s25", "--input-size", "64x64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["expected_flops_g"] == pytest.approx(18.26e6 * 64 * 64 / 1e9)
    assert info["flops_g"] == pytest.approx(info["expected_flops_g"], rel=5e-3)

    assert main(["info", "dehaze_its", "--demo"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scope"] == "demo" and info["expected_params"] is None and info["input_size"] == [32, 32]


def test_info_command_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "sr_classic_x5"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'sr_classic_x5'" in err and "dehaze_r6k" in err
    assert main(["info", "dn_real", "--input-size", "128"]) == 2
    assert "--input-size expects HxW" in capsys.readouterr().err


def test_registration_does_not_import_torch() -> None:
    """``mair.models.cli`` itself imports nothing heavy (checked with a bare ``mair.models`` package)."""
    code = (
        "import sys, types, argparse\n"
        "import mair\n"
        "pkg = types.ModuleType('mair.models'); pkg.__path__ = [mair.__path__[0] + '/models']\n"
        "sys.modules['mair.models'] = pkg\n"
        "import mair.models.cli as c\n"
        "c.register(argparse.ArgumentParser().add_subparsers())\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
