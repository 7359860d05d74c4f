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

from mair.experiments import load
from mair.models import from_official, set_scan_backend
from mair.runtime.compile_modes import COMPILE_MODES, CUDA_GRAPH_MODES
from mair.runtime.precision import apply_matmul_precision, autocast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--infer", action="store_true", help="profile a no-grad forward instead of a train step")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (train) or 1 (--infer)")
    parser.add_argument("--size", type=int, default=None, help="input side; default 64 (train) or 256 (--infer)")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--precision", default="fp32", help="fp32, tf32 or bf16 (mair.runtime.precision)")
    parser.add_argument(
        "--compile-mode",
        default=None,
        choices=COMPILE_MODES,
        help="profile the torch.compile'd network (the scan as custom ops) in this mode",
    )
    parser.add_argument(
        "--per-kind", type=int, default=0, metavar="N", help="also print the N most expensive kernels of each kind"
    )
    parser.add_argument(
        "--shapes",
        action="store_true",
        help="also print the matrix products by operand shapes with their TFLOP/s (needs the "
        "operators recorded: eager or a compile mode without CUDA graphs)",
    )
    args = parser.parse_args()
    batch = args.batch or (1 if args.infer else 4)
    size = args.size or (256 if args.infer else 64)
    apply_matmul_precision(args.precision)
    net = load(args.experiment).network
    model = from_official(net.arch, **net.constructor_kwargs()).cuda().train(not args.infer)
    set_scan_backend(model, args.backend)
    run = model
    if args.compile_mode:
        from mair.models.scan.custom_ops import compile_model

        run = compile_model(model, mode=args.compile_mode)
    graphs = args.compile_mode in CUDA_GRAPH_MODES
    scale = net.output_scale
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
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.shapes else [])
    with profile(activities=activities, record_shapes=args.shapes) as prof:
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
    if args.per_kind:
        for kind in sorted(groups, key=lambda k: -groups[k]):
            print(f"-- {kind} (self ms, calls, name)")
            for e in [e for e in events if kernel_group(e.key) == kind][: args.per_kind]:
                print(f"{e.self_device_time_total / 1e3:9.2f} {e.count:6d}  {e.key[:140]}")
    if args.shapes:
        print_operator_shapes(prof)


#: Operators that are one matrix product each, and how to count their multiply-adds from the operand shapes.
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_flops(name: str, shapes: list) -> float:
    """Floating-point operations (2 per multiply-add) of one call of a MATMUL_OPS operator."""
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2.0 * m * k * n
    if name == "aten::addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2.0 * m * k * n
    operands = shapes[1:3] if name == "aten::baddbmm" else shapes[0:2]
    (b, m, k), (_, _, n) = operands
    return 2.0 * b * m * k * n


def print_operator_shapes(prof) -> None:
    """The matrix-product operators grouped by operand shapes (device ms, calls, TFLOP/s), then the other
    operators by shapes (self device ms, calls)."""
    by_shape = prof.key_averages(group_by_input_shape=True)
    rows = []
    for e in by_shape:
        if e.key not in MATMUL_OPS or e.device_time_total <= 0:
            continue
        flops = matmul_flops(e.key, e.input_shapes) * e.count
        seconds = e.device_time_total * 1e-6
        rows.append((e.device_time_total / 1e3, e.count, e.key, e.input_shapes, flops / seconds / 1e12))
    rows.sort(reverse=True)
    print(f"matrix products: {sum(r[0] for r in rows):.1f} ms; by shapes (device ms, calls, TFLOP/s, op, shapes):")
    for ms, count, name, shapes, tflops in rows[:40]:
        print(f"{ms:9.2f} {count:6d} {tflops:7.1f}  {name} {shapes}")
    others = [
        e for e in by_shape if e.key.startswith("aten::") and e.key not in MATMUL_OPS and e.self_device_time_total > 0
    ]
    others.sort(key=lambda e: e.self_device_time_total, reverse=True)
    print("other operators by shapes (self device ms, calls, op, shapes):")
    for e in others[:40]:
        print(f"{e.self_device_time_total / 1e3:9.2f} {e.count:6d}  {e.key} {str(e.input_shapes)[:150]}")


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
