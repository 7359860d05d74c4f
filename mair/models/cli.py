"""``mair info <experiment> [--input-size HxW] [--demo]``: parameters and FLOPs of an experiment's network;
``mair info --runtime [--device D] [--exact] [--json]``: what runs on this machine and why
(:mod:`mair.runtime.info`).

Prints JSON with the counts (paper convention, :mod:`mair.models.flops`) beside the experiment's
``complexity`` values (docs/experiments.md "Complexity: `mair info`").
Registration imports nothing heavy; the handler imports torch.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mair.experiments import Experiment

_SIZE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*$")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` command."""
    parser = subparsers.add_parser(
        "info",
        help="parameters and FLOPs of an experiment's network; --runtime: what runs on this machine",
        description="Build the experiment's network (no weights, no data) and print its parameter count and "
        "FLOPs (fvcore convention of the paper: one per multiply-add) as JSON, beside the expected values. "
        "With --runtime instead: every MAIR_* switch with its value and source, and for training and inference "
        "the scan backend (and why), precision, compile mode, Adam and the fused paths the VMM takes.",
    )
    parser.add_argument("experiment", nargs="?", help="experiment id (see params/experiments) or path to its YAML file")
    parser.add_argument("--runtime", action="store_true", help="what runs on this machine and why (no experiment)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="with --runtime: the device (default: cuda if seen)")
    parser.add_argument("--exact", action="store_true", help="with --runtime: the --exact path")
    parser.add_argument("--json", action="store_true", help="with --runtime: JSON instead of text")
    parser.add_argument(
        "--input-size",
        metavar="HxW",
        default=None,
        help="network input size for the FLOPs (default: the paper's size for it)",
    )
    parser.add_argument("--demo", action="store_true", help="the demo-scale network instead of the paper's")
    parser.set_defaults(handler=run_info)


def parse_size(text: str) -> tuple[int, int]:
    """``"720x1280"`` -> (720, 1280); raises ``CommandError`` on anything else."""
    from mair.cli import CommandError

    match = _SIZE.match(text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise CommandError(f"--input-size expects HxW with positive integers (e.g. 360x640), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def default_input_size(exp: Experiment) -> tuple[int, int]:
    """The experiment's FLOPs input size, else the training input patch (the LR/noisy patch the network sees)."""
    size = exp.complexity.flops_input_size
    if size:
        return int(size[0]), int(size[1])
    lq = exp.train.patch.lq_size
    return lq, lq


def expected_flops_g(exp: Experiment, size: tuple[int, int]) -> float | None:
    """The expected GFLOPs for ``size``: the table value at its own size, or MFLOPs/px x pixels."""
    comp = exp.complexity
    if comp.flops_g is not None and tuple(comp.flops_input_size or ()) == size:
        return float(comp.flops_g)
    if comp.flops_mflops_per_pixel is not None:
        return float(comp.flops_mflops_per_pixel) * size[0] * size[1] / 1e3
    return None


def experiment_info(exp: Experiment, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Counts for one (loaded) experiment: params, FLOPs at ``input_size`` and the expected values."""
    import torch

    from mair.models.flops import build_for_counting, count_flops, count_params

    size = input_size or default_input_size(exp)
    network = exp.network
    model = build_for_counting(network.arch, network.constructor_kwargs())
    params = count_params(model)
    flops = count_flops(model.to(torch.device("meta")), size, in_channels=network.in_channels)
    expected_g = expected_flops_g(exp, size)
    return {
        "experiment": exp.id,
        "scope": exp.scope,
        "arch": network.arch,
        "params": params,
        "expected_params": exp.complexity.params,
        "input_size": list(size),
        "flops_g": round(flops.gflops, 4),
        "expected_flops_g": expected_g,
        "mflops_per_pixel": round(flops.total / (size[0] * size[1]) / 1e6, 4),
        "expected_mflops_per_pixel": exp.complexity.flops_mflops_per_pixel,
        "flops_by_kind_g": {k: round(v / 1e9, 4) for k, v in sorted(flops.by_kind.items())},
        "convention": "fvcore: 1 per multiply-add; LayerNorm 5/elem; pool 1/elem; scan 9BLDN + BDL",
        "about": documentation(exp),
    }


def documentation(exp: Experiment) -> dict[str, Any]:
    """The experiment file's documentation fields: what it reproduces and how it treats the official quirks."""
    init = exp.train.init_from
    return {
        "title": exp.title,
        "paper_table": exp.paper_table,
        "official": {
            "train_yml": exp.official.train_yml,
            "test_yml": exp.official.test_yml,
            "weights": exp.official.weights,
        },
        "drop_path": exp.train.drop_path.note,
        "init_from": None
        if init is None
        else {
            "experiment": init.experiment,
            "official_weights": init.weights,
            "quirk": None if init.quirk is None else init.quirk.note,
        },
        "quirks": [f"{q.ref} ({q.handling}): {q.note}" for q in exp.quirks],
    }


def run_info(args: argparse.Namespace) -> int:
    """Handler of ``mair info``."""
    from mair.cli import CommandError
    from mair.experiments import ExperimentError, load

    if args.runtime or args.experiment is None:
        return run_runtime_info(args)
    size = parse_size(args.input_size) if args.input_size is not None else None
    try:
        exp = load(args.experiment, "demo" if args.demo else "paper")
    except ExperimentError as error:
        raise CommandError(str(error)) from error
    try:
        info = experiment_info(exp, size)
    except (ValueError, RuntimeError) as error:
        raise CommandError(f"cannot count {exp.id} at {size}: {error}") from error
    print(json.dumps(info, indent=2))
    return 0


def run_runtime_info(args: argparse.Namespace) -> int:
    """``mair info --runtime``: the report of :mod:`mair.runtime.info`, as text or JSON."""
    from mair.cli import CommandError
    from mair.runtime.info import format_runtime_info, runtime_info

    if not args.runtime:
        raise CommandError("give an experiment id, or --runtime for what runs on this machine")
    if args.experiment is not None:
        raise CommandError(f"--runtime takes no experiment (got {args.experiment!r})")
    info = runtime_info(args.device, exact=args.exact)
    print(json.dumps(info, indent=2) if args.json else format_runtime_info(info))
    return 0
