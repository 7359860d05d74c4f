"""On a CUDA GPU: the ``torch`` scan backend against mamba_ssm's kernel (``mamba``), forward and all gradients.

Inputs follow MaIR's VMM layout: u and delta (B, K·D, L), A = -exp(A_logs) (K·D, N), B and C grouped
(B, K, N, L) as views of one projection output, D, delta_bias, softplus. For every case it prints the relative
L2 error of the output and of each gradient (u, delta, A, B, C, D, delta_bias) between the two backends and
against a float64 run of the torch backend, and the median time of forward and of forward + backward.

    python benchmarks/scan_gpu_check.py --out scan_gpu_check.json
    python benchmarks/scan_gpu_check.py --lengths 1024,999 --states 16,1 --channels 96 --out check.json

Needs CUDA and an importable mamba_ssm (``pip install --no-build-isolation "mair[cuda]"``); exits with a
message otherwise. Exit status 1 when an error exceeds ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from mair.models.scan import ScanBackendUnavailable, describe_backend_choice, load_backend, selective_scan

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="write the numbers to this JSON file")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--k", type=int, default=4, help="number of scans K (groups of B/C)")
    parser.add_argument("--channels", type=int, default=96, help="channels per scan D (K·D in all)")
    parser.add_argument("--lengths", default="1024,999", help="comma-separated sequence lengths L")
    parser.add_argument("--states", default="16,1", help="comma-separated d_state values N")
    parser.add_argument("--tol", type=float, default=1e-5, help="largest relative L2 error accepted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-timing", action="store_true", help="only compare numbers")
    args = parser.parse_args(argv)
    args.lengths = [int(v) for v in args.lengths.split(",") if v.strip()]
    args.states = [int(v) for v in args.states.split(",") if v.strip()]
    return args


def require_cuda_and_mamba() -> str:
    """mamba_ssm's version; exits with a clear message when CUDA or mamba_ssm is missing."""
    if not torch.cuda.is_available():
        sys.exit(f"scan_gpu_check: needs a CUDA GPU, but torch {torch.__version__} sees none")
    try:
        load_backend("mamba")
    except ScanBackendUnavailable as exc:
        sys.exit(f"scan_gpu_check: {exc}")
    import mamba_ssm

    return str(getattr(mamba_ssm, "__version__", "unknown"))


def make_inputs(batch: int, k: int, d: int, length: int, n: int, seed: int) -> dict[str, Tensor]:
    """float32 CUDA leaf tensors in MaIR's layout (B and C are views of one (B, K, 2N, L) projection)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, device="cuda")

    dt = torch.exp(torch.rand(k * d, generator=gen, device="cuda") * math.log(100.0) + math.log(0.001))
    a_logs = torch.log(torch.arange(1, n + 1, device="cuda", dtype=torch.float32)).repeat(k * d, 1)
    a_logs = a_logs + 0.1 * rnd(k * d, n)
    proj = rnd(batch, k, 2 * n, length)
    return {
        "u": rnd(batch, k * d, length),
        "delta": rnd(batch, k * d, length) * 0.5,
        "A": -torch.exp(a_logs),
        "B": proj[:, :, :n],
        "C": proj[:, :, n:],
        "D": 1.0 + 0.1 * rnd(k * d),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


def fwd_bwd(backend: str, inputs: dict[str, Tensor], dy: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Output and the gradients of <y, dy> with respect to every input."""
    leaves = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(y, [leaves[name] for name in NAMES], dy.to(y.dtype))
    return y.detach(), [g.detach() for g in grads]


def rel(a: Tensor, b: Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def bench(fn: Callable[[], object], repeats: int = 50) -> float:
    """Median milliseconds per call: triton.testing.do_bench when available, else CUDA events."""
    try:
        from triton.testing import do_bench

        try:
            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except TypeError:  # older triton: no return_mode, returns (median, ...) with quantiles
            return float(do_bench(fn, warmup=25, rep=100, quantiles=[0.5])[0])
    except ImportError:
        pass
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_case(args: argparse.Namespace, length: int, n: int) -> dict[str, object]:
    inputs = make_inputs(args.batch, args.k, args.channels, length, n, args.seed + 7 * length + n)
    dy = torch.randn(inputs["u"].shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    y_m, g_m = fwd_bwd("mamba", inputs, dy)
    y_t, g_t = fwd_bwd("torch", inputs, dy)
    y_64, g_64 = fwd_bwd("torch", {k: v.double() for k, v in inputs.items()}, dy.double())
    labels = ["y", *NAMES]

    def compare(got: list[Tensor], want: list[Tensor]) -> dict[str, float]:
        return {label: rel(a, b) for label, a, b in zip(labels, got, want, strict=True)}

    errors = {
        "torch_vs_mamba": compare([y_t, *g_t], [y_m, *g_m]),
        "torch_vs_float64": compare([y_t, *g_t], [y_64, *g_64]),
        "mamba_vs_float64": compare([y_m, *g_m], [y_64, *g_64]),
    }
    case: dict[str, object] = {
        "batch": args.batch,
        "channels": args.k * args.channels,
        "groups": args.k,
        "L": length,
        "N": n,
        "errors": errors,
        "max_torch_vs_mamba": max(errors["torch_vs_mamba"].values()),
    }
    if not args.no_timing:
        timings, memory = {}, {}
        leaves = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}
        for backend in ("mamba", "torch"):

            def forward(backend: str = backend) -> Tensor:
                with torch.no_grad():
                    return selective_scan(**leaves, delta_softplus=True, backend=backend)

            def forward_backward(backend: str = backend) -> object:
                y = selective_scan(**leaves, delta_softplus=True, backend=backend)
                return torch.autograd.grad(y, [leaves[name] for name in NAMES], dy)

            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            forward_backward()
            torch.cuda.synchronize()
            memory[backend] = (torch.cuda.max_memory_allocated() - base) / 2**20
            timings[backend] = {"fwd_ms": bench(forward), "fwd_bwd_ms": bench(forward_backward)}
        case["timings_ms"] = timings
        case["peak_extra_memory_mib"] = memory
    return case


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mamba_version = require_cuda_and_mamba()
    torch.backends.cuda.matmul.allow_tf32 = False  # the torch backend's small matmuls stay in full float32
    device_name = torch.cuda.get_device_name()
    print(f"{device_name}, torch {torch.__version__}, mamba_ssm {mamba_version}")
    print(describe_backend_choice("cuda"))
    cases = []
    for length in args.lengths:
        for n in args.states:
            case = check_case(args, length, n)
            cases.append(case)
            errs = case["errors"]
            print(f"\nB {args.batch}, K·D {case['channels']} (G {args.k}), L {length}, N {n}")
            for pair, values in errs.items():
                print(f"  {pair:17s} " + "  ".join(f"{k}={v:.1e}" for k, v in values.items()))
            if "timings_ms" in case:
                for backend, t in case["timings_ms"].items():
                    print(
                        f"  {backend:6s} fwd {t['fwd_ms']:8.3f} ms   fwd+bwd {t['fwd_bwd_ms']:8.3f} ms   "
                        f"peak extra memory {case['peak_extra_memory_mib'][backend]:.0f} MiB"
                    )
    worst = max(c["max_torch_vs_mamba"] for c in cases)
    passed = worst <= args.tol
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name,
        "torch": torch.__version__,
        "mamba_ssm": mamba_version,
        "tol": args.tol,
        "worst_torch_vs_mamba": worst,
        "passed": passed,
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nworst torch vs mamba relative L2 error {worst:.2e} (tol {args.tol:g}): {'OK' if passed else 'FAIL'}")
    print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
