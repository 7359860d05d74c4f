"""Shared test fixtures: where ../shared is, and skips with a reason when it is absent."""

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


def _interpret_triton_without_gpu() -> None:
    """Without a GPU, Triton kernels run in Triton's CPU interpreter (set before mair is imported)."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton_without_gpu()
