"""Profile one inference forward of an experiment's network on the GPU and print the most expensive kernels.

    python benchmarks/profile_infer.py sr_classic_x2 --backend triton --size 256
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from mair.experiments import load_experiment
from mair.models import from_official, set_scan_backend
from mair.precision import apply_matmul_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--precision", default="fp32", help="fp32 or tf32 (mair.precision)")
    args = parser.parse_args()
    apply_matmul_precision(args.precision)
    net = load_experiment(args.experiment)["network"]
    model = from_official(net["arch"], **net["kwargs"]).cuda().eval()
    set_scan_backend(model, args.backend)
    x = torch.rand(args.batch, 3, args.size, args.size, device="cuda")
    with torch.no_grad():
        for _ in range(2):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events) / 1e3
    print(f"GPU time {total:.1f} ms; top kernels (self ms, calls, name):")
    for e in events[: args.rows]:
        print(f"{e.self_device_time_total / 1e3:9.2f} {e.count:6d}  {e.key[:100]}")


if __name__ == "__main__":
    main()
