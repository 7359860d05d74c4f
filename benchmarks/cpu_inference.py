"""CPU inference of a paper network: the ``torch`` backend's gathered path against the NSS order folded into
its chunked layout (``mair.models.scan.torch_nss``), interleaved in one process, random weights.

    python benchmarks/cpu_inference.py sr_light_t_x4 --size 128 --threads 2 --repeat 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--size", type=int, default=128, help="input tile side (pixels)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from mair.experiments import load
    from mair.models import from_official
    from mair.models.blocks import VMM

    if args.threads:
        torch.set_num_threads(args.threads)
    net = load(args.experiment).network
    torch.manual_seed(0)
    model = from_official(net.arch, **net.constructor_kwargs()).eval()
    for module in model.modules():
        if isinstance(module, VMM):
            module.scan_backend = "torch"
    x = torch.rand(1, 3, args.size, args.size)
    times: dict[str, list[float]] = {"gathered": [], "fused": []}
    outputs = {}
    with torch.inference_mode():
        for _ in range(args.repeat + 1):  # the first round warms up and is dropped
            for name in times:
                VMM.fold_scan_order = name == "fused"
                start = time.perf_counter()
                outputs[name] = model(x)
                times[name].append(time.perf_counter() - start)
    VMM.fold_scan_order = True
    diff = (outputs["fused"] - outputs["gathered"]).abs().max().item()
    print(
        f"{args.experiment} 1x3x{args.size}x{args.size}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {platform.processor() or platform.machine()}"
    )
    for name, values in times.items():
        kept = values[1:]
        print(f"  {name:9s} median {statistics.median(kept) * 1e3:8.1f} ms  min {min(kept) * 1e3:8.1f} ms")
    speedup = statistics.median(times["gathered"][1:]) / statistics.median(times["fused"][1:])
    print(f"  speed-up {speedup:.2f}x; max |fused - gathered| = {diff:.2e}")


if __name__ == "__main__":
    main()
