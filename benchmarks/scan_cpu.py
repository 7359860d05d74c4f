"""Selective scan on the CPU: the chunked ``torch`` backend against the sequential reference (with autograd).

Times forward + backward (all seven gradients) at MaIR-like settings (softplus, delta_bias, D, grouped-free
B/C, A = -exp(A_log)) in one process, and prints both medians (and minima) and the speed-up.

    python benchmarks/scan_cpu.py                      # batch 1, 64 channels, L 4096, N 16, float32
    python benchmarks/scan_cpu.py --sweep 16,32,64,128 # also time other chunk lengths
    python benchmarks/scan_cpu.py --threads 1          # torch.set_num_threads(1) (busy shared machines)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from torch import Tensor

from mair.models.scan.reference import selective_scan_reference
from mair.models.scan.torch_backend import default_chunk_size, selective_scan_torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_inputs(batch: int, channels: int, length: int, n_state: int, seed: int = 0) -> list[Tensor]:
    """float32 leaf tensors (u, delta, A, B, C, D, delta_bias) initialised like MaIR's VMM."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(channels, generator=gen) * math.log(0.1 / 0.001) + math.log(0.001))
    tensors = [
        torch.randn(batch, channels, length, generator=gen),
        torch.randn(batch, channels, length, generator=gen) * 0.5,
        -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(channels, 1),  # -exp(A_log)
        torch.randn(batch, 1, n_state, length, generator=gen),
        torch.randn(batch, 1, n_state, length, generator=gen),
        torch.ones(channels),
        dt + torch.log(-torch.expm1(-dt)),
    ]
    return [t.requires_grad_() for t in tensors]


def step(fn: Callable[..., Tensor], inputs: list[Tensor], dy: Tensor, **kw: object) -> Tensor:
    """One forward + backward; returns the output."""
    for t in inputs:
        t.grad = None
    y = fn(*inputs, True, **kw)
    y.backward(dy)
    return y


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=None, help="chunk length T (default: the backend's)")
    parser.add_argument("--repeats", type=int, default=7, help="reference runs; torch runs 5x as many")
    parser.add_argument("--sweep", default="", help="comma-separated chunk lengths to time as well")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chunk = args.chunk or default_chunk_size(args.length)
    inputs = make_inputs(args.batch, args.channels, args.length, args.state)
    dy = torch.randn(args.batch, args.channels, args.length, generator=torch.Generator().manual_seed(1))
    load_before = os.getloadavg()

    # Same result first (and warm-up): outputs and gradients of the two agree.
    y_ref = step(selective_scan_reference, inputs, dy).detach()
    g_ref = [t.grad.clone() for t in inputs]
    y_fast = step(selective_scan_torch, inputs, dy, chunk=chunk).detach()
    errs = [((y_fast - y_ref).norm() / y_ref.norm()).item()]
    errs += [((t.grad - g).norm() / g.norm()).item() for t, g in zip(inputs, g_ref, strict=True)]

    # Interleaved so that a noisy neighbour hits both alike.
    ref_times, fast_times = [], []
    for _ in range(args.repeats):
        ref_times.append(timed(lambda: step(selective_scan_reference, inputs, dy)))
        for _ in range(5):
            fast_times.append(timed(lambda: step(selective_scan_torch, inputs, dy, chunk=chunk)))
    sweep = {}
    for value in [int(v) for v in args.sweep.split(",") if v.strip()]:
        step(selective_scan_torch, inputs, dy, chunk=value)
        times = [timed(lambda v=value: step(selective_scan_torch, inputs, dy, chunk=v)) for _ in range(15)]
        sweep[value] = {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}
    fwd_times = []
    with torch.no_grad():
        for _ in range(15):
            fwd_times.append(timed(lambda: selective_scan_torch(*inputs, True, chunk=chunk)))

    ref_ms, fast_ms = statistics.median(ref_times) * 1e3, statistics.median(fast_times) * 1e3
    result: dict[str, object] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": {"batch": args.batch, "channels": args.channels, "L": args.length, "N": args.state},
        "chunk": chunk,
        "reference_fwd_bwd_ms": {"median": ref_ms, "min": min(ref_times) * 1e3, "runs": len(ref_times)},
        "torch_fwd_bwd_ms": {"median": fast_ms, "min": min(fast_times) * 1e3, "runs": len(fast_times)},
        "torch_fwd_ms": {"median": statistics.median(fwd_times) * 1e3, "min": min(fwd_times) * 1e3},
        "speedup_median": ref_ms / fast_ms,
        "speedup_min": min(ref_times) / min(fast_times),
        "rel_err_vs_reference_y_then_grads": errs,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "sweep": sweep,
    }
    print(
        f"CPU {result['cpu']} ({result['logical_cpus']} logical), torch {torch.__version__}, "
        f"{result['threads']} threads, load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"batch {args.batch}, channels {args.channels}, L {args.length}, N {args.state}, float32, chunk {chunk}")
    print(f"reference (sequential loop + autograd) fwd+bwd: median {ref_ms:8.1f} ms  (min {min(ref_times) * 1e3:.1f})")
    print(
        f"torch backend (chunked)                fwd+bwd: median {fast_ms:8.1f} ms  "
        f"(min {min(fast_times) * 1e3:.1f}); forward alone {result['torch_fwd_ms']['median']:.1f} ms"
    )
    print(f"speed-up: {result['speedup_median']:.1f}x (medians), {result['speedup_min']:.1f}x (minima)")
    print("max rel L2 error of y and grads vs reference:", f"{max(errs):.1e}")
    for value, t in sweep.items():
        print(f"  chunk {value:5d}: median {t['median_ms']:7.1f} ms  (min {t['min_ms']:.1f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
