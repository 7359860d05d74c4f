"""List what one residual Mamba block keeps for its backward, and scale it to a training step.

Runs one block forward on the CPU (the ``triton`` backend through Triton's interpreter, or ``torch``) under
``torch.autograd.graph.saved_tensors_hooks``, collects every tensor autograd saves (deduplicated by storage: a
view keeps its whole base alive; parameters left out) and prints them largest first, then the bytes per
block and per step at a target batch and size (default: the classic SR x2 step, batch 4, 64x64, C 180, 36
blocks). The block is built at the target width, so per-token tensors scale exactly with the number of
tokens; the Triton scan's chunk states are sized for the GPU chunk length (``forward_tiles``), not the
interpreter's.

    python benchmarks/saved_activations.py
    python benchmarks/saved_activations.py --width 60 --target-batch 16 --blocks 20   # MaIR-T x4 step
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch

from mair.models.blocks import NUM_SCANS, ResidualMambaBlock, ssm_inner_dim
from mair.models.nss import scan_orders


def saved_tensors(backend: str, batch: int, side: int, width: int, d_state: int) -> list[tuple[tuple, int]]:
    """(shape, bytes of the storage) of every non-parameter tensor one block's forward saves for backward."""
    torch.manual_seed(0)
    block = ResidualMambaBlock(width, d_state, 2.0, 2.0, 0.0)
    for module in block.modules():
        if hasattr(module, "scan_backend"):
            module.scan_backend = backend
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    ids = scan_orders(side, side, 4, 0, "cpu")
    x = torch.randn(batch, side * side, width, requires_grad=True)
    seen: dict[int, tuple[tuple, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), (tuple(t.shape), storage.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, ids, (side, side))
    return sorted(seen.values(), key=lambda item: -item[1])


def gpu_chunk_states_bytes(batch: int, length: int, inner: int, d_state: int) -> int:
    """Bytes of the chunk states the Triton forward keeps on a GPU (its chunk length, not the interpreter's)."""
    from mair.models.scan import triton_backend

    interpreting = triton_backend.interpreting
    triton_backend.interpreting = lambda: False
    try:
        n_chunks = triton_backend.forward_chunks(inner, length, d_state)
    finally:
        triton_backend.interpreting = interpreting
    return batch * NUM_SCANS * n_chunks * inner * d_state * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="triton", choices=["triton", "torch"])
    parser.add_argument(
        "--batch", type=int, default=3, help="batch of the measured block (not 4: told apart from the four scans)"
    )
    parser.add_argument("--side", type=int, default=8, help="feature map side of the measured block")
    parser.add_argument("--width", type=int, default=180, help="block width C (the target's)")
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--target-batch", type=int, default=4)
    parser.add_argument("--target-side", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=36)
    args = parser.parse_args()
    tokens, target_tokens = args.batch * args.side**2, args.target_batch * args.target_side**2
    inner = ssm_inner_dim(args.width, 2.0)
    unit = target_tokens * args.width * 4  # one (batch, L, C) float32 map at the target shape
    per_block = 0.0
    print(f"{'target MiB':>10}  {'units':>6}  measured shape")
    for shape, nbytes in saved_tensors(args.backend, args.batch, args.side, args.width, args.d_state):
        is_states = args.backend == "triton" and len(shape) == 5 and shape[1] == NUM_SCANS and shape[3] == inner
        per_token = shape[0] == args.batch or tokens in shape  # batch-major or flattened tokens
        if is_states:
            target = gpu_chunk_states_bytes(args.target_batch, args.target_side**2, inner, args.d_state)
        else:
            target = nbytes * target_tokens / tokens if per_token else nbytes
        per_block += target
        note = "  chunk states, GPU chunk length" if is_states else "" if per_token else "  (not per token)"
        print(f"{target / 2**20:10.1f}  {target / unit:6.2f}  {shape}{note}")
    print(
        f"per block {per_block / 2**20:.1f} MiB; {args.blocks} blocks {per_block * args.blocks / 2**30:.2f} GiB "
        f"(batch {args.target_batch}, {args.target_side}x{args.target_side}, C {args.width})"
    )


if __name__ == "__main__":
    main()
