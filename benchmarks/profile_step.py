"""Profile one training step (or, with ``--infer``, one inference forward) of an experiment on the GPU and
print the most expensive kernels.

    python benchmarks/profile_step.py sr_classic_x2 --backend triton --batch 4 --size 64
    python benchmarks/profile_step.py sr_classic_x2 --backend triton --infer      # batch 1, 256x256
    python benchmarks/profile_step.py sr_classic_x2 --backend triton --precision tf32 --compile-mode reduce-overhead
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from mair.compile_modes import COMPILE_MODES, CUDA_GRAPH_MODES
from mair.experiments import load_experiment
from mair.models import from_official, set_scan_backend
from mair.precision import apply_matmul_precision, autocast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--infer", action="store_true", help="profile a no-grad forward instead of a train step")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (train) or 1 (--infer)")
    parser.add_argument("--size", type=int, default=None, help="input side; default 64 (train) or 256 (--infer)")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--precision", default="fp32", help="fp32, tf32 or bf16 (mair.precision)")
    parser.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                        help="profile the torch.compile'd network (the scan as custom ops) in this mode")
    args = parser.parse_args()
    batch = args.batch or (1 if args.infer else 4)
    size = args.size or (256 if args.infer else 64)
    apply_matmul_precision(args.precision)
    net = load_experiment(args.experiment)["network"]
    model = from_official(net["arch"], **net["kwargs"]).cuda().train(not args.infer)
    set_scan_backend(model, args.backend)
    run = model
    if args.compile_mode:
        from mair.models.scan.custom_ops import compile_model

        run = compile_model(model, mode=args.compile_mode)
    graphs = args.compile_mode in CUDA_GRAPH_MODES
    scale = int(net["kwargs"].get("upscale", 1)) if net["kwargs"].get("upsampler") else 1
    x = torch.rand(batch, 3, size, size, device="cuda")
    target = torch.rand(batch, 3, size * scale, size * scale, device="cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)

    def step() -> None:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if args.infer:
            with torch.no_grad(), autocast(args.precision, "cuda"):
                run(x)
            return
        optimizer.zero_grad(set_to_none=True)
        with autocast(args.precision, "cuda"):
            loss = torch.nn.functional.l1_loss(run(x).float(), target)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    print(f"step: median {sorted(times)[5]:.1f} ms over 10 (events)")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events) / 1e3
    print(f"GPU time {total:.1f} ms; top kernels (self ms, calls, name):")
    for e in events[: args.rows]:
        print(f"{e.self_device_time_total / 1e3:9.2f} {e.count:6d}  {e.key[:100]}")
    groups: dict[str, float] = {}
    for e in events:
        groups[kernel_group(e.key)] = groups.get(kernel_group(e.key), 0.0) + e.self_device_time_total / 1e3
    print("by kind (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])))


def kernel_group(name: str) -> str:
    """A coarse kind of a CUDA kernel by its name: our scan kernels, matrix products, Inductor's fused
    kernels, convolutions, or other."""
    lowered = name.lower()
    if lowered.startswith("scan_"):
        return "scan kernels"
    if any(t in lowered for t in ("gemm", "nvjet", "cutlass", "sm90_x", "cublas", "matmul")):
        return "matrix products"
    if any(t in lowered for t in ("conv", "cudnn", "implicit", "winograd")):
        return "convolutions"
    if lowered.startswith("triton_"):
        return "inductor kernels"
    return "other"


if __name__ == "__main__":
    main()
