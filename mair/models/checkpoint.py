"""Reading and writing MaIR weights in the official layout (``{'params': state_dict}``).

Official checkpoints may hold ``params`` and/or ``params_ema``, may carry ``module.`` prefixes (DDP), and are
always read with ``torch.load(weights_only=True)``. Failures become :class:`CheckpointError` with a message
naming the file and what was expected, instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mair.common.atomic import atomic_torch_save
from mair.common.errors import not_a_file_reason

PARAM_KEYS = ("params", "params_ema", "state_dict", "model")


class CheckpointError(Exception):
    """A weights file that cannot be read or does not fit the model."""


class CheckpointMismatch(CheckpointError):
    """Readable weights whose names or shapes do not fit the model (strict loading)."""


@dataclass
class LoadReport:
    """What a (possibly non-strict) load did."""

    source: str
    param_key: str | None
    loaded: list[str] = field(default_factory=list)
    skipped_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.skipped_shape:
            names = ", ".join(f"{k} {tuple(a)}->{tuple(b)}" for k, a, b in self.skipped_shape[:5])
            parts.append(
                f"skipped {len(self.skipped_shape)} with another shape ({names}"
                + (", ..." if len(self.skipped_shape) > 5 else "")
                + ")"
            )
        if self.missing:
            parts.append(f"{len(self.missing)} model tensors not in the file")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} file tensors unused")
        return "; ".join(parts)


def _read_file(path: Path) -> Any:
    if not path.is_file():
        reason = not_a_file_reason(path)
        raise CheckpointError(f"{path}: no such weights file" if reason == "no such file" else f"{path} {reason}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line), None)
        if refused is None:  # the safe unpickler met no Python object, just bytes it cannot parse
            raise CheckpointError(
                f"{path}: not a PyTorch weights file (corrupt, truncated or another format; expected what "
                f"torch.save writes)"
            ) from None
        raise CheckpointError(
            f"{path}: refused by safe loading (weights_only=True): the file holds Python objects, not just "
            f"tensors. Re-save it as {{'params': state_dict}} from trusted code. ({refused.strip()})"
        ) from None
    except Exception as error:  # torch raises many types for damaged files (IndexError, EOFError, ...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file (corrupt, truncated or another format): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None


def read_state_dict(
    source: str | os.PathLike[str] | Mapping[str, Any], param_key: str = "params"
) -> tuple[dict[str, Tensor], str | None]:
    """Return ``(state_dict, key_used)`` from a file or an already-loaded dict, without ``module.`` prefixes.

    The requested ``param_key`` wins; otherwise ``params``, ``params_ema``, ``state_dict``, ``model`` are
    tried; a flat dict of tensors is taken as the state_dict itself.
    """
    name = str(source) if not isinstance(source, Mapping) else "<state dict>"
    obj = source if isinstance(source, Mapping) else _read_file(Path(source))
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: expected a dict of weights, found {type(obj).__name__}")
    key_used: str | None = None
    for key in (param_key, *PARAM_KEYS):
        if key in obj and isinstance(obj[key], Mapping):
            obj, key_used = obj[key], key
            break
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor; expected "
                f"{{'params': state_dict}} or a state_dict (top-level keys: {sorted(map(str, obj))[:8]})"
            )
        state[key.removeprefix("module.")] = value
    if not state:
        raise CheckpointError(f"{name}: holds no tensors")
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CheckpointError(
                    f"{name}: tensor {key!r} holds NaN or Inf values ({bad} of {value.numel()}); these weights "
                    f"are damaged (a diverged or interrupted training?) and would give black or empty images"
                )
    return state, key_used


def load_weights(
    model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any], strict: bool = True, param_key: str = "params"
) -> LoadReport:
    """Load weights into ``model``.

    strict: every key and shape must match, otherwise :class:`CheckpointError` says what differs (usually a
    checkpoint of another architecture or configuration). Non-strict (initialising x3/x4 from x2): tensors
    whose name is missing or whose shape differs are skipped and listed in the returned report.
    """
    state, key_used = read_state_dict(source, param_key)
    name = str(source) if not isinstance(source, Mapping) else "<state dict>"
    own = model.state_dict()
    report = LoadReport(source=name, param_key=key_used)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.skipped_shape = [
        (k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape
    ]
    if strict and (report.missing or report.unexpected or report.skipped_shape):
        details = []
        if report.missing:
            details.append(f"{len(report.missing)} missing (e.g. {report.missing[:3]})")
        if report.unexpected:
            details.append(f"{len(report.unexpected)} unexpected (e.g. {report.unexpected[:3]})")
        if report.skipped_shape:
            k, a, b = report.skipped_shape[0]
            details.append(f"{len(report.skipped_shape)} with another shape (e.g. {k}: file {a}, model {b})")
        raise CheckpointMismatch(
            f"{name} does not fit this {type(model).__name__}: "
            + "; ".join(details)
            + ". Is it a checkpoint of another architecture, size or scale?"
        )
    skipped = {k for k, _, _ in report.skipped_shape}
    loadable = {k: v for k, v in state.items() if k in own and k not in skipped}
    model.load_state_dict(loadable, strict=strict)
    report.loaded = sorted(loadable)
    return report


def weights_payload(model_or_state: nn.Module | Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{'params': state_dict}`` with CPU tensors and no ``module.`` prefix, the layout the official tools
    load."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {"params": {k.removeprefix("module."): v.detach().cpu() for k, v in state.items()}}


def save_weights(model_or_state: nn.Module | Mapping[str, Tensor], path: str | os.PathLike[str]) -> None:
    """Save weights atomically as :func:`weights_payload` lays them out."""
    atomic_torch_save(path, weights_payload(model_or_state))
