"""The networks reproduce the official code: every golden file loads strictly and matches its outputs and
input gradients (golden files made by the official repository, see ../shared/golden/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mair.models import from_official
from tests.conftest import SHARED

GOLDEN_FILES = sorted((SHARED / "golden").glob("*.pt")) if (SHARED / "golden").is_dir() else []


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.skipif(not GOLDEN_FILES, reason=f"needs golden files in {SHARED / 'golden'} (team reference)")
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_model_matches_official(path: Path) -> None:
    golden = torch.load(path, weights_only=True)
    model = from_official(golden["arch"], **golden["kwargs"])
    model.load_state_dict(golden["state_dict"], strict=True)
    # MaIR files were made in eval mode; the U-Net ones in train mode (drop_path 0: same function).
    model.train(golden["arch"] == "MaIRUNet")
    for case in golden["cases"]:
        x = case["input"].clone().requires_grad_(True)
        out = model(x)
        assert out.shape == case["output"].shape
        assert _rel_err(out.detach(), case["output"]) <= 1e-5
        out.sum().backward()
        assert _rel_err(x.grad, case["input_grad"]) <= 1e-4


@pytest.mark.skipif(not GOLDEN_FILES, reason=f"needs golden files in {SHARED / 'golden'} (team reference)")
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_resolved_kwargs_are_official_defaults(path: Path) -> None:
    """Our constructor defaults equal the official ones recorded in the golden files."""
    from mair.models import official_defaults

    golden = torch.load(path, weights_only=True)
    defaults = official_defaults(golden["arch"])
    for key, value in golden.get("resolved_kwargs", {}).items():
        if key in golden["kwargs"]:
            continue
        expected = defaults[key]
        if isinstance(expected, tuple):
            expected = list(expected)
        assert value == expected, key
