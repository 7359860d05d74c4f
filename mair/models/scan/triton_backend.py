"""The ``triton`` selective-scan backend: our Triton kernels (no compilation step), forward and backward.

Two entry points share the kernels of :mod:`mair.models.scan.triton_kernels`:

* :func:`triton_scan` — mamba_ssm's layout (u, delta (batch, Dch, L); B, C (batch, G, N, L)), registered as the
  ``triton`` backend of :func:`mair.models.scan.selective_scan`;
* :func:`nss_scan` — MaIR's fused layout: the feature map once in raster order ``x (batch, L, D)`` shared by
  the four scans, per-scan projections in raster order (``delta (batch, K, L, D)``, ``B``/``C``
  ``(batch, K, L, N)``) and the NSS orders ``ids (K, L)``; returns ``y (batch, K, L, D)`` in raster order.
  The scan order is applied inside the kernel, so the model never builds the four permuted copies nor their
  inverses. Its plain reference is :func:`nss_scan_reference` (gather, ``selective_scan``, scatter).

Runs on CUDA tensors, or anywhere under Triton's interpreter (``TRITON_INTERPRET=1``), which is how CI tests it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from mair.runtime import switches

from .registry import ScanBackendUnavailable

Strides = tuple[int, int, int, int]  # (batch, k, position, channel-or-state)


def interpreting() -> bool:
    """Whether Triton runs its kernels in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def load():
    """Registry loader: the generic-layout scan, if Triton can run here."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise ScanBackendUnavailable(
            f"selective-scan backend 'triton' is not available: {exc}; install it with: pip install \"mair[triton]\""
        ) from None
    if not (torch.cuda.is_available() or interpreting()):
        raise ScanBackendUnavailable(
            "selective-scan backend 'triton' needs a CUDA GPU (or TRITON_INTERPRET=1 for the slow CPU interpreter)"
        )
    return _generic_backend


@dataclass(frozen=True)
class TileConfig:
    """Chunk length ``BL``, channels per program ``BD``, padded state size ``BN`` and warps."""

    bl: int
    bd: int
    bn: int
    warps: int


TARGET_PROGRAMS = 528  # about 4 programs per SM on an H100 (132 SMs)


def tile_config(d_state: int, channels: int, parallel: int = 1) -> TileConfig:
    """Tile sizes for ``parallel`` (= batch x K) sequences of ``channels`` channels: ``BD`` channels per program,
    halved (down to 2) until there are about 4 programs per SM, then a chunk length ``BL`` giving about 4k tile
    elements. ``BL`` is the granularity of the chunk states the forward keeps for the backward; ``BD`` and the
    warps are the adjoint-summary kernel's. Values from the sweeps in docs/benchmarks.md
    (``benchmarks/triton_tiles.py``); ``MAIR_TRITON_TILES`` = "BL,BD,warps" overrides (tuning only).
    """
    bn = 1
    while bn < d_state:
        bn *= 2
    bd = 8 if bn >= 16 else 32
    while bd > 2 and parallel * -(-channels // bd) < TARGET_PROGRAMS:
        bd //= 2
    while bd > 2 and bd >= 2 * channels:
        bd //= 2
    bl = max(8, min(128, 4096 // (bd * bn)))
    warps = 4
    override = switches.get("MAIR_TRITON_TILES")
    if override is not None:
        bl, bd, warps = override
    if interpreting():  # the CPU interpreter is slow per tile element; small tiles also test chunk carries
        bl, bd = 8, min(bd, 8)
    return TileConfig(bl=bl, bd=bd, bn=bn, warps=warps)


@dataclass
class _Problem:
    """Sizes, tensors and their (batch, k, position, channel) strides."""

    batch: int
    groups: int
    length: int
    channels: int  # per group
    d_state: int
    x: Tensor
    xs: Strides
    dt: Tensor
    dts: Strides
    A: Tensor
    B: Tensor
    bs: Strides
    C: Tensor
    cs: Strides
    D: Tensor | None
    bias: Tensor | None
    ids: Tensor | None
    softplus: bool
    #: When given (K, D, R) float32: ``dt`` is Δ's rank-R input (batch, K, L, R), projected inside the forward
    #: kernel (``scan_fwd_step_kernel``'s ``R``); forward passes only.
    delta_weight: Tensor | None = None


def _launch_meta(pb: _Problem) -> dict:
    return dict(HAS_IDS=pb.ids is not None, HAS_BIAS=pb.bias is not None, SOFTPLUS=pb.softplus)


CHAIN_VARIANTS = ("scan", "loop")


def chain_variant() -> str:
    """How chunk summaries are chained: ``scan`` (default; blocks of chunks scanned in parallel, sequential depth
    NCH / CB) or ``loop`` (one chunk per step, the first version). ``MAIR_TRITON_CHAIN`` overrides."""
    variant: str = switches.get("MAIR_TRITON_CHAIN")
    return variant


def chain_tile(n_chunks: int, channels: int, bn: int) -> tuple[int, int]:
    """Chunks per step ``CB`` and channels per program of :func:`scan_state_chain_kernel`: about 2k tile
    elements, few channels per program (the chain is latency-bound: many short programs beat few wide ones)."""
    cb = 8 if interpreting() else max(8, min(64, 1 << (n_chunks - 1).bit_length()))
    bd = max(1, min(1 << (channels - 1).bit_length(), 2048 // (cb * bn)))
    return cb, bd


def _chain(
    A: Tensor,
    summary: Tensor,
    total: Tensor,
    reverse: bool,
    bn: int,
    combine: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Chain summaries (batch, K, NCH, D, N) / ΣΔ (batch, K, NCH, D) into the state entering every chunk
    (``reverse``: the adjoint entering it from the right). ``combine`` = (summary_1, gate, const): the summaries
    are ``gate·summary + const·summary_1`` (gate and const (batch, K, D) float32), formed as they are read."""
    from .triton_kernels import scan_state_carry_kernel, scan_state_chain_kernel

    batch, groups, n_chunks, channels, d_state = summary.shape
    carries = torch.empty_like(summary)
    extra = combine if combine is not None else (A, A, A)
    if chain_variant() == "loop":
        carry_bd = min(32, max(2, 1 << (channels - 1).bit_length()))
        scan_state_carry_kernel[(-(-channels // carry_bd), batch * groups)](
            A,
            summary,
            total,
            carries,
            *extra,
            channels,
            d_state,
            groups,
            n_chunks,
            REVERSE=reverse,
            BD=carry_bd,
            BN=bn,
            COMBINE=combine is not None,
            num_warps=4,
        )
    else:
        cb, chain_bd = chain_tile(n_chunks, channels, bn)
        scan_state_chain_kernel[(-(-channels // chain_bd), batch * groups)](
            A,
            summary,
            total,
            carries,
            *extra,
            channels,
            d_state,
            groups,
            n_chunks,
            REVERSE=reverse,
            CB=cb,
            BD=chain_bd,
            BN=bn,
            COMBINE=combine is not None,
            num_warps=4,
        )
    return carries


def _adjoint_carries(pb: _Problem, cfg: TileConfig, n_chunks: int, dy: Tensor, dys: Strides) -> Tensor:
    """The adjoint entering every chunk from the right, from chunk summaries. Returns (batch, K, NCH, D, N)."""
    from .triton_kernels import scan_adjoint_summary_kernel

    dev, f32 = pb.x.device, torch.float32
    shape = (pb.batch, pb.groups, n_chunks, pb.channels)
    summary = torch.empty(*shape, pb.d_state, device=dev, dtype=f32)
    total = torch.empty(*shape, device=dev, dtype=f32)
    dummy = pb.A
    scan_adjoint_summary_kernel[(-(-pb.channels // cfg.bd), n_chunks, pb.batch * pb.groups)](
        pb.dt,
        *pb.dts,
        pb.A,
        pb.C,
        *pb.cs,
        pb.bias if pb.bias is not None else dummy,
        pb.ids if pb.ids is not None else dummy,
        dy,
        *dys,
        summary,
        total,
        pb.length,
        pb.channels,
        pb.d_state,
        pb.groups,
        n_chunks,
        **_launch_meta(pb),
        BL=cfg.bl,
        BD=cfg.bd,
        BN=cfg.bn,
        num_warps=cfg.warps,
    )
    return _chain(pb.A, summary, total, True, cfg.bn)


def forward_tiles(channels: int, d_state: int) -> TileConfig:
    """The forward's chunk length ``BL`` (the granularity of the states it stores for the backward) and padded
    state size ``BN``; shapes only, so that the compiler's fake implementation of the custom op agrees with the
    kernels on the number of chunk states."""
    return tile_config(d_state, channels, parallel=TARGET_PROGRAMS)


def forward_chunks(channels: int, length: int, d_state: int) -> int:
    """Number of chunk states the forward stores."""
    return -(-length // forward_tiles(channels, d_state).bl)


STEP_BD = 32  # channels per program of the step-by-step forward: one per lane of its single warp
STEP_TARGET_PROGRAMS = 2112  # about 16 single-warp programs per SM on an H100


def step_segments(parallel: int, channels: int, n_chunks: int, bd: int = STEP_BD) -> tuple[int, int]:
    """Segments per sequence and chunks per segment of the step-by-step forward: enough segments for about
    ``STEP_TARGET_PROGRAMS`` programs (one segment, no summary pass, when the sequences alone fill the GPU)."""
    if interpreting():  # several segments of several chunks, so the tests exercise the summary and chain
        seg_chunks = min(2, n_chunks)
    else:
        want = -(-STEP_TARGET_PROGRAMS // (parallel * -(-channels // bd)))
        seg_chunks = -(-n_chunks // max(1, min(want, n_chunks)))
    return -(-n_chunks // seg_chunks), seg_chunks


def _fwd_stepwise(pb: _Problem, args: tuple, cfg: TileConfig, n_chunks: int, sums: Tensor | None = None) -> Tensor:
    """Step-by-step forward (:func:`scan_fwd_step_kernel`): segment summaries and their chain when there are
    several segments, then the output pass. Returns the states entering every chunk of ``cfg.bl``. ``sums``:
    when given (batch, K, D) float32, receives Σ_l y."""
    from .triton_kernels import scan_fwd_step_kernel

    step_bd = step_channels()
    n_seg, seg_chunks = step_segments(pb.batch * pb.groups, pb.channels, n_chunks, step_bd)
    dev, f32 = pb.x.device, torch.float32
    hs = torch.empty(pb.batch, pb.groups, n_chunks, pb.channels, pb.d_state, device=dev, dtype=f32)
    grid = (-(-pb.channels // step_bd), n_seg, pb.batch * pb.groups)
    sizes = (pb.length, pb.channels, pb.d_state, pb.groups, n_chunks, n_seg, seg_chunks)
    meta = dict(HAS_D=pb.D is not None, **_launch_meta(pb), BL=cfg.bl, BD=step_bd, BN=cfg.bn, num_warps=1)
    if pb.delta_weight is not None:
        rank = pb.delta_weight.shape[2]
        meta.update(R=rank, RP=1 << (rank - 1).bit_length())
    dummy = pb.A
    hin = None
    if n_seg > 1:
        summary = torch.empty(pb.batch, pb.groups, n_seg, pb.channels, pb.d_state, device=dev, dtype=f32)
        total = torch.empty(pb.batch, pb.groups, n_seg, pb.channels, device=dev, dtype=f32)
        scan_fwd_step_kernel[grid](
            *args,
            dummy,
            dummy,
            summary,
            total,
            dummy,
            dummy,
            dummy,
            *sizes,
            HAS_HIN=False,
            SUMMARY=True,
            DOT=False,
            **meta,
        )
        hin = _chain(pb.A, summary, total, False, cfg.bn)
    seg_sums = None if sums is None else torch.empty(pb.batch, pb.groups, n_seg, pb.channels, device=dev, dtype=f32)
    scan_fwd_step_kernel[grid](
        *args,
        hin if hin is not None else dummy,
        hs,
        dummy,
        dummy,
        dummy,
        seg_sums if seg_sums is not None else dummy,
        dummy,
        *sizes,
        HAS_HIN=hin is not None,
        SUMMARY=False,
        DOT=False,
        SUM_Y=seg_sums is not None,
        **meta,
    )
    if sums is not None:
        torch.sum(seg_sums, 2, out=sums)
    return hs


@dataclass
class OutputDots:
    """What :func:`_output_dots` returns: Σ_l y·w (batch, K, D), and per chunk the adjoint summaries for dy = w
    and dy = 1 (batch, K, NCH, D, N) and ΣΔ (batch, K, NCH, D), all float32."""

    dots: Tensor
    summary_w: Tensor
    summary_1: Tensor
    total: Tensor
    sub_states: Tensor | None = None


def _output_dots(pb: _Problem, w: Tensor, ws: Strides, hs: Tensor, sub_states: bool = False) -> OutputDots:
    """Σ_l y_l·w_l per (batch, k, channel), with y the scan's output recomputed from the forward's chunk states
    ``hs`` (every chunk in parallel; nothing of size (batch, K, L, D) is written), and in the same walk the
    chunks' adjoint summaries for dy = w and dy = 1 (see ``scan_fwd_step_kernel``'s DOT mode). With
    ``sub_states``, the walk also stores the states entering the backward's sub-chunks, so that
    :func:`_bwd` (given them) skips its own first walk."""
    from .triton_kernels import scan_fwd_step_kernel

    if pb.delta_weight is not None:
        raise ValueError("_output_dots: the DOT pass reads the full Δ (build the problem from project_delta's Δ)")
    n_chunks = hs.shape[2]
    bl = chunk_length(pb.length, n_chunks)
    step_bd = step_channels()
    dev, f32 = pb.x.device, torch.float32
    dots = torch.empty(pb.batch, pb.groups, n_chunks, pb.channels, device=dev, dtype=f32)
    total = torch.empty_like(dots)
    summary_w, summary_1 = torch.empty_like(hs), torch.empty_like(hs)
    sub = step_backward_tile(bl)[1] if sub_states else 0
    scratch = _sub_state_scratch(pb, n_chunks, bl, sub) if sub_states else None
    scan_fwd_step_kernel[(-(-pb.channels // step_bd), n_chunks, pb.batch * pb.groups)](
        *_step_args(pb, w, ws),
        hs,
        pb.A,
        summary_w,
        total,
        summary_1,
        dots,
        scratch if scratch is not None else pb.A,
        pb.length,
        pb.channels,
        pb.d_state,
        pb.groups,
        n_chunks,
        n_chunks,
        1,
        HAS_D=pb.D is not None,
        **_launch_meta(pb),
        HAS_HIN=True,
        SUMMARY=False,
        DOT=True,
        BL=bl,
        BD=step_bd,
        BN=forward_tiles(pb.channels, pb.d_state).bn,
        SUB=sub,
        num_warps=1,
    )
    return OutputDots(dots.sum(2), summary_w, summary_1, total, scratch)


def step_channels() -> int:
    """Channels per program of the step-by-step forward kernel (``MAIR_TRITON_STEP_BD`` overrides; tuning
    only)."""
    return int(switches.get("MAIR_TRITON_STEP_BD") or STEP_BD)


def _step_args(pb: _Problem, out: Tensor, os_: Strides) -> tuple:
    """The leading arguments of :func:`scan_fwd_step_kernel`: the problem's tensors and strides (absent D,
    delta bias and ids as a dummy pointer), then the output (or DOT mode's w) and its strides."""
    dummy = pb.A
    return (
        pb.x,
        *pb.xs,
        pb.dt,
        *pb.dts,
        pb.delta_weight if pb.delta_weight is not None else dummy,
        pb.A,
        pb.B,
        *pb.bs,
        pb.C,
        *pb.cs,
        pb.D if pb.D is not None else dummy,
        pb.bias if pb.bias is not None else dummy,
        pb.ids if pb.ids is not None else dummy,
        out,
        *os_,
    )


def _fwd(pb: _Problem, out: Tensor, os_: Strides, sums: Tensor | None = None) -> Tensor:
    """Launch the forward; returns the states entering every chunk (batch, K, NCH, D, N) (and Σ_l y into
    ``sums``, (batch, K, D) float32, when given)."""
    cfg = forward_tiles(pb.channels, pb.d_state)
    n_chunks = -(-pb.length // cfg.bl)
    return _fwd_stepwise(pb, _step_args(pb, out, os_), cfg, n_chunks, sums)


def step_backward_tile(bl: int) -> tuple[int, int]:
    """Channels per program and sub-chunk length of the step-by-step backward (``MAIR_TRITON_BWD_STEP``
    "BD,S" overrides; tuning only)."""
    bd, sub = switches.get("MAIR_TRITON_BWD_STEP") or (16, 4)  # fastest in the sweep (benchmarks.md)
    if interpreting():  # several sub-chunks per chunk of 8, so the tests walk across them
        sub = 4
    return bd, min(sub, bl)


BWD_MAX_REGISTERS = 168  # 12 single-warp programs per SM; GATED_DY alone would take 180 (11), no spills at 168


def _register_cap(registers: int) -> dict:
    """The ``maxnreg`` launch option (registers per thread) on a GPU; the CPU interpreter has no registers."""
    return {} if interpreting() else {"maxnreg": registers}


def _bwd(
    pb: _Problem,
    dy: Tensor,
    dys: Strides,
    hs: Tensor,
    du: Tensor,
    dus: Strides,
    ddt: Tensor,
    ddts: Strides,
    adjoint: Tensor | None = None,
    sub_states: Tensor | None = None,
    gated_dy: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """The backward from the forward's chunk states ``hs`` (their chunk length follows from their number,
    :func:`chunk_length`): the adjoint entering every chunk from chunk summaries (unless the caller passes them
    as ``adjoint``), then one program per chunk (:func:`scan_bwd_step_kernel`) writes du and dΔ and partial sums
    of the other gradients. ``sub_states``: the states entering the sub-chunks, when the caller has them
    (:func:`_output_dots` with ``sub_states=True``); ``gated_dy``: (gate, const) (batch, K, D) float32, when
    the output gradient is ``gate·dy + const`` (dy then read with a k stride of 0). Returns dB, dC
    (batch, K, L, N), dA (K·D, N), dD (K·D) or None, and Δ bias's gradient (K·D) or None (summed in the kernel:
    a pass over dΔ for it cost about 1.5 ms per classic SR x2 step)."""
    from .triton_kernels import scan_bwd_step_kernel

    n_chunks = hs.shape[2]
    bl = chunk_length(pb.length, n_chunks)
    dev = pb.x.device
    f32 = torch.float32
    dummy = pb.A
    wide = forward_tiles(pb.channels, pb.d_state)
    summary_cfg = TileConfig(bl=bl, bd=max(2, min(wide.bd, 4096 // (bl * wide.bn))), bn=wide.bn, warps=wide.warps)
    if gated_dy is not None and adjoint is None:  # the summary pass would read dout, not gate·dout + const
        raise ValueError("_bwd: gated_dy needs the adjoint carries of the gated dy (adjoint=...)")
    gs = adjoint if adjoint is not None else _adjoint_carries(pb, summary_cfg, n_chunks, dy, dys)
    bd, sub = step_backward_tile(bl)
    scratch = sub_states if sub_states is not None else _sub_state_scratch(pb, n_chunks, bl, sub)
    gate, const = gated_dy if gated_dy is not None else (dummy, dummy)
    n_dblocks = -(-pb.channels // bd)
    dB_part = torch.empty(pb.batch, pb.groups, n_dblocks, pb.length, pb.d_state, device=dev, dtype=f32)
    dC_part = torch.empty_like(dB_part)
    dA_part = torch.empty(pb.batch, n_chunks, pb.groups * pb.channels, pb.d_state, device=dev, dtype=f32)
    # D's and Δ bias's partial sums in one (vectors, K·D, batch·NCH) tensor: one contiguous row sum for both (two
    # column sums over (batch, NCH, K·D) took about 19 µs each per classic SR block)
    vectors = [v for v in (pb.D, pb.bias) if v is not None]
    parts = torch.empty(max(1, len(vectors)), pb.groups * pb.channels, pb.batch * n_chunks, device=dev, dtype=f32)
    dD_part, dbias_part = parts[0], parts[-1]  # the same row when only one of them (or neither) is present
    scan_bwd_step_kernel[(n_dblocks, n_chunks, pb.batch * pb.groups)](
        pb.x,
        *pb.xs,
        pb.dt,
        *pb.dts,
        pb.A,
        pb.B,
        *pb.bs,
        pb.C,
        *pb.cs,
        pb.D if pb.D is not None else dummy,
        pb.bias if pb.bias is not None else dummy,
        pb.ids if pb.ids is not None else dummy,
        dy,
        *dys,
        hs,
        gs,
        du,
        *dus,
        ddt,
        *ddts,
        dB_part,
        dC_part,
        dA_part,
        dD_part,
        dbias_part,
        scratch,
        gate,
        const,
        pb.length,
        pb.channels,
        pb.d_state,
        pb.groups,
        n_chunks,
        n_dblocks,
        1,
        HAS_D=pb.D is not None,
        **_launch_meta(pb),
        BL=bl,
        S=sub,
        BD=bd,
        BN=wide.bn,
        num_warps=1,
        FIRST_WALK=sub_states is None,
        GATED_DY=gated_dy is not None,
        **_register_cap(BWD_MAX_REGISTERS),
    )
    sums = parts.sum(2) if vectors else None
    dD = sums[0] if pb.D is not None else None
    dB = dB_part[:, :, 0] if n_dblocks == 1 else dB_part.sum(2)
    dC = dC_part[:, :, 0] if n_dblocks == 1 else dC_part.sum(2)
    dbias = sums[-1] if pb.bias is not None else None
    return dB, dC, dA_part.sum((0, 1)), dD, dbias


def _sub_state_scratch(pb: _Problem, n_chunks: int, bl: int, sub: int) -> Tensor:
    """Room for the states entering every sub-chunk of the backward after each chunk's first
    (batch, K, NCH, BL / S - 1, D, N) float32."""
    return torch.empty(
        pb.batch,
        pb.groups,
        n_chunks,
        max(1, bl // sub - 1),
        pb.channels,
        pb.d_state,
        device=pb.x.device,
        dtype=torch.float32,
    )


def _bkl_strides(t: Tensor) -> Strides:
    """Strides of a (batch, K, L, X) tensor."""
    return (t.stride(0), t.stride(1), t.stride(2), t.stride(3))


def chunk_length(length: int, n_chunks: int) -> int:
    """The chunk length of stored chunk states: the forward's chunk lengths are powers of two, so the smallest
    power of two holding ``ceil(length / n_chunks)`` positions is it (for one chunk, any length >= ``length``
    gives the same results)."""
    per_chunk = -(-length // n_chunks)
    return 1 << (per_chunk - 1).bit_length()


def _nss_problem(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    softplus: bool,
    delta_weight: Tensor | None = None,
) -> _Problem:
    """The NSS layout's problem; ``delta_weight``: ``delta`` is Δ's low-rank input, projected by the forward
    kernel (see :attr:`_Problem.delta_weight`)."""
    batch, length, channels = x.shape
    return _Problem(
        batch,
        delta.shape[1],
        length,
        channels,
        A.shape[1],
        x,
        (x.stride(0), 0, x.stride(1), x.stride(2)),
        delta,
        _bkl_strides(delta),
        A.contiguous(),
        B,
        _bkl_strides(B),
        C,
        _bkl_strides(C),
        None if D is None else D.contiguous(),
        None if delta_bias is None else delta_bias.contiguous(),
        ids.contiguous(),
        bool(softplus),
        None if delta_weight is None else delta_weight.float().contiguous(),
    )


#: The forward keeps its channels' weights in registers, padded to a power of two: at rank 12 (padded 16) the
#: passes take 126 and 128 registers without spills (benchmarks/triton_offline.py --rank 12); larger ranks (the
#: U-Net's deeper levels) keep the product outside.
DELTA_IN_KERNEL_MAX_RANK = 16


#: Without ``MAIR_TRITON_DELTA_IN_KERNEL``, the forward projects Δ itself for states up to this size: measured
#: on an H100 (docs/benchmarks.md, "Tried and not kept"), MaIR-T x4's step (d_state 1, rank 4, bound by reading Δ) went
#: from 62.6 / 61.8 to 58.5 ms, while classic SR x2 (d_state 16, rank 12, bound by the walk's instructions) went
#: from 150.6 to 158.2 ms in training and from 125.6 to 160.2 ms in inference.
DELTA_IN_KERNEL_AUTO_MAX_STATE = 1


def delta_in_kernel(delta_low: Tensor, d_state: int) -> bool:
    """Whether the forward kernel projects Δ from its low-rank input itself: float32 inputs of rank up to
    ``DELTA_IN_KERNEL_MAX_RANK`` only, then ``MAIR_TRITON_DELTA_IN_KERNEL`` = 1 / 0 forces it on / off, and by
    default it is on for ``d_state`` up to ``DELTA_IN_KERNEL_AUTO_MAX_STATE``. The kernel's float32 multiply-adds
    then stand for :func:`project_delta`'s product (the backward still recomputes Δ with it): the same values up
    to rounding with TF32 off, within TF32's rounding (about 1e-3 relative) with it on. bf16 inputs keep the
    product outside, whose rounding to bf16 the backward's recomputation repeats exactly."""
    if delta_low.dtype != torch.float32 or delta_low.shape[3] > DELTA_IN_KERNEL_MAX_RANK:
        return False
    forced = switches.get("MAIR_TRITON_DELTA_IN_KERNEL")
    if forced is not None:
        return bool(forced)
    return d_state <= DELTA_IN_KERNEL_AUTO_MAX_STATE


def project_delta(delta_low: Tensor, weight: Tensor) -> Tensor:
    """Δ (batch, K, L, D) from its low-rank input (batch, K, L, R) and the per-group projections (K, D, R), in
    the input's precision (bf16 under autocast, as the model's einsum was) with autocast off, so that the
    backward's recomputation gives the forward's values."""
    with torch.autocast(delta_low.device.type, enabled=False):
        return torch.einsum("bklr,kdr->bkld", delta_low, weight.to(delta_low.dtype))


def low_rank_weight_grad(d_delta: Tensor, delta_low: Tensor, min_rows: int = 512) -> Tensor:
    """``einsum("bkld,bklr->kdr", d_delta, delta_low)``: the gradient of the per-group Δ projections (K, D, R),
    a sum over batch x L of tiny (D, R) products. One product per group gives the matrix-product library a few
    dozen output tiles for a reduction over batch·L rows (0.15 ms per classic-SR block on an H100), so the
    rows are split into up to 16 slices of at least ``min_rows``, multiplied as one batched product and the
    slices summed (split-K by hand)."""
    batch, groups, length, channels = d_delta.shape
    rank = delta_low.shape[3]
    rows = batch * length
    splits = next(s for s in (16, 8, 4, 2, 1) if (rows % s == 0 and rows // s >= min_rows) or s == 1)
    lhs = d_delta.transpose(0, 1).reshape(groups * splits, rows // splits, channels)  # a view when k-major
    rhs = delta_low.transpose(0, 1).reshape(groups * splits, rows // splits, rank)
    return torch.bmm(lhs.transpose(1, 2), rhs).view(groups, splits, channels, rank).sum(1)


def check_nss_shapes(x: Tensor, delta: Tensor, ids: Tensor, delta_weight: Tensor | None = None) -> None:
    """Raise ValueError unless the shapes fit :func:`nss_scan` (shared with the custom op's fake)."""
    if (
        x.dim() != 3
        or delta.dim() != 4
        or delta.shape[0] != x.shape[0]
        or delta.shape[2] != x.shape[1]
        or (delta_weight is None and delta.shape[3] != x.shape[2])
    ):
        raise ValueError(
            f"nss_scan: x must be (batch, L, D) and delta (batch, K, L, D); got "
            f"{tuple(x.shape)} and {tuple(delta.shape)}"
        )
    groups = delta.shape[1]
    if delta_weight is not None and tuple(delta_weight.shape) != (groups, x.shape[2], delta.shape[3]):
        raise ValueError(
            f"nss_scan: with delta_weight, delta must be the low-rank input (batch, K, L, R) and "
            f"delta_weight (K, D, R) = ({groups}, {x.shape[2]}, {delta.shape[3]}); got delta "
            f"{tuple(delta.shape)} and delta_weight {tuple(delta_weight.shape)}"
        )
    if tuple(ids.shape) != (groups, x.shape[1]):
        raise ValueError(f"nss_scan: ids must be (K, L) = ({groups}, {x.shape[1]}); got {tuple(ids.shape)}")


def nss_scan_forward(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    softplus: bool,
    delta_weight: Tensor | None = None,
    sums: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`nss_scan`'s forward without autograd: the output and the states entering every chunk
    (batch, K, NCH, D, N) float32, which :func:`nss_scan_backward` needs. ``sums``: when given
    (batch, K, D) float32, receives Σ_l y (summed in float32 inside the kernel). With ``delta_weight``, Δ is
    projected from its low-rank input inside the kernel when :func:`delta_in_kernel` says so, else by
    :func:`project_delta` first."""
    in_kernel = delta_weight is not None and delta_in_kernel(delta, A.shape[1])
    if delta_weight is not None and not in_kernel:
        delta = project_delta(delta, delta_weight)  # freed when the forward returns
    pb = _nss_problem(x, delta, A, B, C, D, delta_bias, ids, softplus, delta_weight if in_kernel else None)
    out = torch.empty(pb.batch, pb.groups, pb.length, pb.channels, device=x.device, dtype=x.dtype)
    return out, _fwd(pb, out, _bkl_strides(out), sums)


def nss_scan_backward(
    dy: Tensor,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    hs: Tensor,
    softplus: bool,
    delta_weight: Tensor | None = None,
    delta_full: Tensor | None = None,
    adjoint: Tensor | None = None,
    sub_states: Tensor | None = None,
    gated_dy: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor | None, ...]:
    """Gradients of :func:`nss_scan` (x, delta, A, B, C, D, delta_bias, then delta_weight when given; None for
    absent D / delta_bias) from the output gradient and the chunk states of :func:`nss_scan_forward`. With
    ``delta_weight``, Δ is recomputed from its low-rank input (unless the caller passes it as ``delta_full``)
    and the gradients are those of the low-rank input and of the projections. ``adjoint`` (the adjoint
    entering every chunk from the right), ``sub_states`` and ``gated_dy`` as in :func:`_bwd`, when the caller
    has them (the gated scan; with ``gated_dy``, ``dy`` is (batch, L, D))."""
    if delta_full is None:
        delta_full = delta if delta_weight is None else project_delta(delta, delta_weight)
    pb = _nss_problem(x, delta_full, A, B, C, D, delta_bias, ids, softplus)
    f32 = torch.float32
    shape = (pb.batch, pb.groups, pb.length, pb.channels)
    du_k = torch.empty(shape, device=x.device, dtype=f32)
    # dΔ with the scan index outermost in memory, so that the low-rank gradients' einsums view it as
    # (K, batch·L, D) for their batched products instead of copying it (two copies of 94 MB per classic-SR block)
    ddt = torch.empty(pb.groups, pb.batch, pb.length, pb.channels, device=x.device, dtype=f32).transpose(0, 1)
    dys = (dy.stride(0), 0, dy.stride(1), dy.stride(2)) if gated_dy is not None else _bkl_strides(dy)
    dB, dC, dA, dD, dbias = _bwd(
        pb, dy, dys, hs, du_k, _bkl_strides(du_k), ddt, _bkl_strides(ddt), adjoint, sub_states, gated_dy
    )
    del delta_full, pb
    d_delta = ddt.to(delta.dtype)  # with delta_weight: as the einsum's own backward would see it
    d_weight: tuple[Tensor, ...] = ()
    if delta_weight is not None:
        with torch.autocast(delta.device.type, enabled=False):
            d_weight = (low_rank_weight_grad(d_delta, delta).to(delta_weight.dtype),)
            d_delta = torch.einsum("bkld,kdr->bklr", d_delta, delta_weight.to(delta.dtype))
    return (
        du_k.sum(1).to(x.dtype),
        d_delta,
        dA.to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        None if D is None else dD.to(D.dtype),
        None if dbias is None else dbias.to(delta_bias.dtype),
        *d_weight,
    )


class _NSSScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, ids, softplus, delta_weight):
        out, hs = nss_scan_forward(x, delta, A, B, C, D, delta_bias, ids, softplus, delta_weight)
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, ids, hs, delta_weight)
        ctx.softplus = bool(softplus)
        return out

    @staticmethod
    def backward(ctx, dy):
        x, delta, A, B, C, D, bias, ids, hs, weight = ctx.saved_tensors
        grads = nss_scan_backward(dy, x, delta, A, B, C, D, bias, ids, hs, ctx.softplus, weight)
        return (*grads[:7], None, None, grads[7] if weight is not None else None)


def nss_scan(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool = True,
    delta_weight: Tensor | None = None,
) -> Tensor:
    """Selective scan of K sequences that read one raster feature map through the orders ``ids``.

    x (batch, L, D) raster; delta (batch, K, L, D), B and C (batch, K, L, N) in raster order; A (K·D, N);
    D and delta_bias (K·D,); ids (K, L) with sequence k visiting raster position ids[k, l] at step l.
    Returns y (batch, K, L, D) in raster order: ``y[:, k, ids[k, l]]`` is step l of sequence k.

    With ``delta_weight`` (K, D, R), ``delta`` is Δ's low-rank input (batch, K, L, R) and Δ is
    :func:`project_delta` of the two, computed inside the op and again in its backward: the full Δ (as large
    as the output) is never kept for the backward, only its R-channel input.
    """
    check_nss_shapes(x, delta, ids, delta_weight)
    return _NSSScan.apply(x, delta, A, B, C, D, delta_bias, ids, delta_softplus, delta_weight)


def nss_scan_reference(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    ids: Tensor,
    delta_softplus: bool = True,
    backend: str | None = "torch",
) -> Tensor:
    """The plain composition :func:`nss_scan` fuses: gather into scan order, ``selective_scan``, scatter back."""
    from .api import selective_scan

    batch, length, channels = x.shape
    groups = delta.shape[1]
    flat = ids.reshape(-1)
    xs = x.index_select(1, flat).view(batch, groups, length, channels)  # step order
    dts = torch.stack([delta[:, k].index_select(1, ids[k]) for k in range(groups)], 1)
    bs = torch.stack([B[:, k].index_select(1, ids[k]) for k in range(groups)], 1)
    cs = torch.stack([C[:, k].index_select(1, ids[k]) for k in range(groups)], 1)
    y = (
        selective_scan(
            xs.permute(0, 1, 3, 2).reshape(batch, groups * channels, length),
            dts.permute(0, 1, 3, 2).reshape(batch, groups * channels, length),
            A,
            bs.transpose(2, 3),
            cs.transpose(2, 3),
            D,
            delta_bias,
            delta_softplus,
            backend=backend,
        )
        .view(batch, groups, channels, length)
        .transpose(2, 3)
    )
    inverse = torch.argsort(ids, dim=1)
    return torch.stack([y[:, k].index_select(1, inverse[k]) for k in range(groups)], 1)


class _GenericScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus):
        pb = _generic_problem(u, delta, A, B, C, D, delta_bias, softplus)
        out = torch.empty_like(u)
        hs = _fwd(pb, out, pb.xs)
        ctx.save_for_backward(u, delta, pb.A, B, C, pb.D, pb.bias, hs)
        ctx.softplus = bool(softplus)
        return out

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, bias, hs = ctx.saved_tensors
        pb = _generic_problem(u, delta, A, B, C, D, bias, ctx.softplus)
        dy = dy.contiguous()
        du = torch.empty(u.shape, device=u.device, dtype=torch.float32)
        ddt = torch.empty_like(du)
        dB, dC, dA, dD, dbias = _bwd(
            pb,
            dy,
            _gen_strides(dy, pb.channels),
            hs,
            du,
            _gen_strides(du, pb.channels),
            ddt,
            _gen_strides(ddt, pb.channels),
        )
        return (
            du.to(u.dtype),
            ddt.to(delta.dtype),
            dA.to(A.dtype),
            dB.transpose(2, 3).to(B.dtype),
            dC.transpose(2, 3).to(C.dtype),
            None if D is None else dD.to(D.dtype),
            None if bias is None else dbias.to(bias.dtype),
            None,
        )


def _gen_strides(t: Tensor, channels: int) -> Strides:
    """(batch, k, l, d) strides of a (batch, K·D, L) tensor."""
    return (t.stride(0), channels * t.stride(1), t.stride(2), t.stride(1))


def _generic_problem(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, bias: Tensor | None, softplus: bool
) -> _Problem:
    batch, dch, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    channels = dch // groups
    bstr = (B.stride(0), B.stride(1), B.stride(3), B.stride(2))
    cstr = (C.stride(0), C.stride(1), C.stride(3), C.stride(2))
    return _Problem(
        batch,
        groups,
        length,
        channels,
        d_state,
        u,
        _gen_strides(u, channels),
        delta,
        _gen_strides(delta, channels),
        A.contiguous(),
        B,
        bstr,
        C,
        cstr,
        None if D is None else D.contiguous(),
        None if bias is None else bias.contiguous(),
        None,
        bool(softplus),
    )


def _generic_backend(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    """Backend callable for :func:`mair.models.scan.selective_scan` (B, C arrive as (batch, G, N, L))."""
    if u.dtype == torch.float64:
        raise ScanBackendUnavailable("the triton backend computes in float32; use backend='torch' for float64")
    return _GenericScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)
