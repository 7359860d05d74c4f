"""Numeric precision modes shared by training, evaluation and benchmarks (:mod:`mair.runtime.resolve` picks one).

* ``exact``: true float32 on GPUs: TF32 off for matrix multiplications and cuDNN convolutions alike (the
  ``--exact`` path, for bit-faithful comparisons).
* ``fp32``: float32 everywhere with PyTorch's defaults on GPUs: matrix multiplications in full float32,
  cuDNN convolutions allowed to use TF32 (which is how the official code ran its grouped-conv1d projections).
* ``tf32``: float32 storage, matrix multiplications and convolutions in TF32 on GPUs that have it
  (``torch.backends.cuda.matmul.allow_tf32``); the selective scan still accumulates in float32.
* ``bf16``: the forward under bf16 autocast (loss and scan state in float32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("exact", "fp32", "tf32", "bf16")


def check_precision(name: str) -> str:
    """Return ``name`` if it is a known precision mode, else raise ValueError naming the choices."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def apply_matmul_precision(name: str) -> None:
    """Set the process-wide TF32 switches for ``name``: tf32 on for matmul and cuDNN, exact off for both, else
    PyTorch's defaults (full-fp32 matmuls, TF32 cuDNN convolutions)."""
    check_precision(name)
    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    torch.backends.cudnn.allow_tf32 = name != "exact"


@contextlib.contextmanager
def matmul_precision(name: str) -> Iterator[None]:
    """Apply :func:`apply_matmul_precision` for a block and restore the previous switches afterwards."""
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    apply_matmul_precision(name)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def autocast(name: str, device_type: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``bf16``, a null context otherwise."""
    if check_precision(name) == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
