"""Registration of ``mair bench`` (kept free of torch imports so ``mair --help`` stays instant)."""

from __future__ import annotations

import argparse

from mair.runtime.compile_modes import COMPILE_MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time training steps, inference and the scan per backend",
        description="Time the performance workloads (or experiments by id) per "
        "scan backend and precision; prints ms and peak memory.",
    )
    _add_arguments(parser)
    parser.set_defaults(handler=_run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "workloads",
        nargs="*",
        help="workload names (sr_classic_x2_train, sr_light_t_x4_train, "
        "sr_light_s_x4_train, dn_color_train, sr_classic_x2_infer, scan_fwd) or experiment ids; "
        "default: all workloads",
    )
    parser.add_argument(
        "--default",
        action="store_true",
        help="time exactly what a user gets without flags: the settings mair.runtime.resolve resolves for "
        "this device (train workloads as `mair train`, infer as `mair evaluate`/`mair restore`); "
        "with --exact, what --exact gets. The JSON records the resolved settings per row",
    )
    parser.add_argument("--exact", action="store_true", help="with --default: the --exact path (eager, true fp32)")
    parser.add_argument(
        "--backends", default=None, help="comma-separated scan backends: auto, torch, mamba, triton (default auto)"
    )
    parser.add_argument(
        "--precision",
        default=None,
        help="comma-separated: exact (true fp32, no TF32), fp32 "
        "(PyTorch's defaults: TF32 convolutions, full-fp32 matmuls; the default), tf32 (TF32 "
        "matmuls too), bf16 (autocast)",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--compile-mode",
        default=None,
        choices=COMPILE_MODES,
        help="torch.compile mode (implies --compile; reduce-overhead replays CUDA graphs)",
    )
    parser.add_argument(
        "--adam",
        default="default",
        choices=("default", "foreach", "fused"),
        help="Adam's implementation in training steps: default as `mair train` chooses (fused on "
        "CUDA), foreach or fused",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def _run(args: argparse.Namespace) -> int:
    from mair.bench.workloads import main

    return main(args)
