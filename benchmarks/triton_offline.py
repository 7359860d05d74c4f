"""Compile the Triton scan kernels for an H100 (sm_90) on a machine without a GPU and report what ptxas made of
them: registers per thread, spills, shared memory and SASS instruction counts, plus the layouts Triton chose.

The real launch code runs (``nss_scan`` forward and backward on CPU tensors of the chosen shape); every kernel
launch is intercepted, specialised exactly as Triton's JIT would (integer arguments equal to 1 become constants,
16-divisible values and pointers get divisibility hints), compiled for ``cuda:90`` and not run. Outputs are
therefore garbage; only the compiled kernels are of interest. Use it to iterate on register pressure without
device time:

    python benchmarks/triton_offline.py                       # classic-SR shape, B 4, 64x64
    python benchmarks/triton_offline.py --batch 1 --side 256  # batch-1 inference shape
    python benchmarks/triton_offline.py --gated               # the model's path: scan, SSA gate and sum
    MAIR_TRITON_BWD_STEP=32,2 python benchmarks/triton_offline.py --dump /tmp/asm
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

TARGET = ("cuda", 90, 32)


def _nvidia_bin(tool: str) -> str:
    import triton.backends.nvidia as nvidia

    return str(Path(nvidia.__file__).parent / "bin" / tool)


def resource_usage(cubin: bytes, workdir: Path) -> dict[str, int]:
    """Registers, stack, shared memory and SASS instruction count of a compiled kernel (cuobjdump)."""
    path = workdir / "kernel.cubin"
    path.write_bytes(cubin)
    res = subprocess.run(
        [_nvidia_bin("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True, check=True
    ).stdout
    found = {key.lower(): int(val) for key, val in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res)}
    sass = subprocess.run(
        [_nvidia_bin("cuobjdump"), "-sass", str(path)], capture_output=True, text=True, check=True
    ).stdout
    found["sass"] = sum(1 for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line))
    found["shfl"] = sass.count("SHFL")
    found["mufu"] = sass.count("MUFU")
    return found


@contextmanager
def offline_launches(records: list[dict], dump: Path | None = None) -> Iterator[None]:
    """Within the block, Triton kernel launches compile for sm_90 and append a record instead of running."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    original = JITFunction.run
    seen: dict[tuple, dict] = {}

    def run(self, *args, grid, warmup, **kwargs):
        binder = create_function_from_signature(self.signature, self.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args, specialization, options)
        key = (
            self.fn.__name__,
            repr(sorted(signature.items())),
            repr(sorted(constexprs.items())),
            repr(sorted(attrs.items())),
            repr(sorted(options.__dict__.items())),
        )
        if key not in seen:
            kernel = compile(ASTSource(self, signature, constexprs, attrs), target=target, options=options.__dict__)
            work = Path(os.environ.get("TMPDIR", "/tmp"))
            usage = resource_usage(kernel.asm["cubin"], work)
            layouts = sorted(set(re.findall(r"#ttg\.blocked<\{[^}]*\}>", kernel.asm["ttgir"])))
            meta = {k: v for k, v in constexprs.items() if isinstance(k, tuple) and isinstance(v, (bool, int))}
            names = [p.name for p in self.params]
            consts = {names[k[0]]: v for k, v in meta.items() if names[k[0]].isupper()}
            seen[key] = {
                "kernel": self.fn.__name__,
                "grid": tuple(grid) if not callable(grid) else grid,
                "num_warps": options.num_warps,
                **consts,
                **usage,
                "layouts": layouts,
            }
            if dump is not None:
                dump.mkdir(parents=True, exist_ok=True)
                stem = f"{len(seen):02d}_{self.fn.__name__}"
                for ext in ("ttgir", "ptx"):
                    (dump / f"{stem}.{ext}").write_text(kernel.asm[ext])
                (dump / f"{stem}.cubin").write_bytes(kernel.asm["cubin"])
                (dump / f"{stem}.sass").write_text(
                    subprocess.run(
                        [_nvidia_bin("cuobjdump"), "-sass", str(dump / f"{stem}.cubin")],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
            records.append(seen[key])
        return None

    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = original


def trace_scan(
    batch: int,
    side: int,
    channels: int,
    d_state: int,
    groups: int = 4,
    dump: Path | None = None,
    gated: bool = False,
    rank: int = 0,
) -> list[dict]:
    """Compile every kernel of one ``nss_scan`` (``gated``: ``nss_scan_gated``) forward and backward at the
    given shape (``rank`` > 0: Δ from its rank-``rank`` input, as the model passes it)."""
    from mair.models.nss import scan_orders
    from mair.models.scan import triton_backend

    length = side * side
    x = torch.randn(batch, length, channels, requires_grad=True)
    delta = torch.randn(batch, groups, length, channels, requires_grad=True)
    A = -torch.rand(groups * channels, d_state, requires_grad=True)
    x_dbl = torch.randn(batch, groups, length, 12 + 2 * d_state, requires_grad=True)
    B, C = x_dbl[..., 12 : 12 + d_state], x_dbl[..., 12 + d_state :]
    weight = None
    if rank:  # Δ's low-rank input as a view of the projections' output, like the model's
        x_dbl = torch.randn(batch, groups, length, rank + 2 * d_state, requires_grad=True)
        delta, B, C = x_dbl[..., :rank], x_dbl[..., rank : rank + d_state], x_dbl[..., rank + d_state :]
        weight = torch.randn(groups, channels, rank, requires_grad=True)
    D = torch.ones(groups * channels, requires_grad=True)
    bias = torch.zeros(groups * channels, requires_grad=True)
    ids = scan_orders(side, side, 4, 0, torch.device("cpu"))[0]
    records: list[dict] = []
    with offline_launches(records, dump):
        if gated:
            from mair.models.scan.nss_gated import nss_scan_gated

            gate_w, gate_b = torch.randn(channels, groups, groups), torch.randn(channels, groups)
            y = nss_scan_gated(x, delta, A, B, C, D, bias, ids, True, weight, gate_w, gate_b)
        else:
            y = triton_backend.nss_scan(x, delta, A, B, C, D, bias, ids, True, delta_weight=weight)
        y.backward(torch.randn_like(y))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--channels", type=int, default=360)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--layouts", action="store_true", help="print the blocked layouts of each kernel")
    parser.add_argument("--dump", type=Path, default=None, help="write each kernel's TTGIR, PTX, cubin and SASS here")
    parser.add_argument("--gated", action="store_true", help="trace nss_scan_gated (the model's path)")
    parser.add_argument(
        "--rank",
        type=int,
        default=0,
        help="Δ from a low-rank input of this rank (the model's 12 for classic SR); 0: full Δ",
    )
    args = parser.parse_args()
    for rec in trace_scan(
        args.batch, args.side, args.channels, args.d_state, dump=args.dump, gated=args.gated, rank=args.rank
    ):
        layouts = rec.pop("layouts")
        print(" ".join(f"{k}={v}" for k, v in rec.items()))
        if args.layouts:
            for layout in layouts:
                print("    ", layout)


if __name__ == "__main__":
    main()
