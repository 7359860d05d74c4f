"""Sweep the Triton scan's tile sizes on the GPU at the classic-SR VMM shape (B 4, K 4, D 360, 64x64, N 16)
and print forward and forward+backward times per configuration (wall-clock median, and the GPU kernel time
summed from the profiler, which does not depend on how fast the host launches the op's small kernels):
"BL,BD,warps" sets MAIR_TRITON_TILES (chunk length of the stored states, adjoint-summary tile), "step:BD,S" sets
MAIR_TRITON_BWD_STEP (channels per program and sub-chunk length of the backward).

    python benchmarks/triton_tiles.py --configs "default;64,8,4"
    python benchmarks/triton_tiles.py --variants "step;step:16,4;step:32,2"
    python benchmarks/triton_tiles.py --gated      # the scan with the SSA gate and sum (nss_scan_gated)
    python benchmarks/triton_tiles.py --gated --rank 12   # ... with the model's low-rank Δ (classic SR)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import torch, triton
from mair.models.nss import scan_orders
from mair.models.scan.triton_backend import nss_scan
B, K, D, N, S = {batch}, 4, {channels}, {state}, {side}
GATED, RANK = {gated}, {rank}
L = S * S
ids = scan_orders(S, S, 8, 0, "cuda")[0]
g = torch.Generator(device="cuda").manual_seed(0)
def r(*s, scale=1.0):
    return (torch.randn(*s, device="cuda", generator=g) * scale).requires_grad_()
x, dt = r(B, L, D), r(B, K, L, RANK or D, scale=0.5)
dt_weight = r(K, D, RANK, scale=0.3) if RANK else None
A = (-torch.rand(K * D, N, device="cuda", generator=g)).requires_grad_()
Bs, Cs, Dv, bias = r(B, K, L, N), r(B, K, L, N), r(K * D), r(K * D, scale=0.5)
dy = torch.randn(B, K, L, D, device="cuda", generator=g)
leaves = [x, dt, A, Bs, Cs, Dv, bias] + ([dt_weight] if RANK else [])
if GATED:
    from mair.models.scan.nss_gated import nss_scan_gated
    gw, gb = r(D, K, K, scale=0.5), r(D, K, scale=0.5)
    dy = torch.randn(B, L, D, device="cuda", generator=g)
    leaves += [gw, gb]
    def scan(*args):
        return nss_scan_gated(*args, ids, True, dt_weight, gw, gb)
else:
    def scan(*args):
        return nss_scan(*args, ids, True, dt_weight)
def fwd():
    with torch.no_grad():
        scan(x, dt, A, Bs, Cs, Dv, bias)
def fwdbwd():
    y = scan(x, dt, A, Bs, Cs, Dv, bias)
    torch.autograd.grad(y, leaves, dy)
if {profile}:
    fwdbwd()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fwdbwd()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12))
f = triton.testing.do_bench(fwd, warmup=50, rep=200, return_mode="median")
fb = triton.testing.do_bench(fwdbwd, warmup=50, rep=300, return_mode="median")
def kernel_ms(fn, calls=20):
    # GPU kernel time per call summed from the profiler: the wall time above also holds the host's launches
    # of the op's small torch kernels, which differ between machines (the compiled step replays CUDA graphs)
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / calls
print(f"RESULT {{f:.3f}} {{fb:.3f}} {{kernel_ms(fwd):.3f}} {{kernel_ms(fwdbwd):.3f}}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", default="default", help="';'-separated BL,BD,warps ('default': tile_config's choice)"
    )
    parser.add_argument(
        "--variants", default="step", help="';'-separated backward tiles: step (the default) or step:BD,S"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--side", type=int, default=64, help="feature map side (L = side^2)")
    parser.add_argument("--channels", type=int, default=360)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--gated", action="store_true", help="time nss_scan_gated (scan, SSA gate and sum)")
    parser.add_argument(
        "--rank",
        type=int,
        default=0,
        help="Δ from a rank-R input projected inside the op, as "
        "in the model (classic SR: 12); 0 (default, as in earlier rounds): full Δ",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print the CUDA kernels of 10 forward+backward calls per configuration (torch profiler)",
    )
    args = parser.parse_args()
    code = CHILD.format(
        channels=args.channels,
        state=args.state,
        batch=args.batch,
        side=args.side,
        profile=args.profile,
        gated=args.gated,
        rank=args.rank,
    )
    for config in [c for c in args.configs.split(";") if c.strip()]:
        for variant in [v.strip() for v in args.variants.split(";") if v.strip()]:
            env = dict(os.environ)
            env.pop("MAIR_TRITON_TILES", None)
            if config != "default":
                env["MAIR_TRITON_TILES"] = config
            name, _, tile = variant.partition(":")
            if name != "step":
                parser.error(f"unknown backward variant {name!r}: the backward is 'step' or 'step:BD,S'")
            env.pop("MAIR_TRITON_BWD_STEP", None)
            if tile:
                env["MAIR_TRITON_BWD_STEP"] = tile
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
            label = f"{config} {variant}"
            if args.profile:
                print(proc.stdout.split("RESULT")[0], flush=True)
            if line is None:
                print(f"{label:>28}: failed: {proc.stderr.strip().splitlines()[-3:]}", flush=True)
            else:
                f, fb, kf, kfb = line.split()[1:]
                print(
                    f"{label:>28}: fwd {f} ms  fwd+bwd {fb} ms (wall, median); kernels: fwd {kf} ms  fwd+bwd {kfb} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
