"""Triton kernels of the VMM's depthwise convolution in channels-last layout (B, H, W, C).

cuDNN runs this convolution (3x3, one filter per channel) from the (B, D, H, W) view of ``in_proj``'s output
through layout transforms, and its weight gradient through an implicit-GEMM kernel that took 9.6 of 78 ms of a
compiled MaIR-T x4 training step (docs/benchmarks.md, "What makes the path fast"). Here every tensor stays in the
token layout
the rest of the block uses, addressed through strides:

* ``dwconv_kernel``: y[b, h, w, c] = Σ_ij x[b, h+i-P, w+j-P, c]·W[c, i, j] (+ bias), zero padding P = KS // 2.
  With ``FLIP`` the taps are read mirrored, which makes the same kernel the input gradient
  (dx = Σ_ij dy[b, h+i-P, w+j-P, c]·W[c, KS-1-i, KS-1-j] for odd KS);
* ``dwconv_weight_grad_kernel``: per program, partial sums over a run of positions of dy·x shifted by each tap
  (and of dy, the bias's gradient), summed over programs afterwards (no atomics: deterministic).

Accumulation is float32 whatever the input dtype. The plain reference is ``torch.nn.functional.conv2d`` with
``groups = C`` (``mair.models.dwconv.reference.depthwise_conv2d_reference``); tests/test_dwconv.py compares the two.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mair.models.triton_interpreter import adapt_interpreter

adapt_interpreter()  # the CPU interpreter's adjustments (no-op on GPUs)


@triton.jit
def _tap(h, w, valid, height, width, sh, sw, DI: tl.constexpr, DJ: tl.constexpr):
    """Offsets (int64, through the strides ``sh``, ``sw``) of the positions (h + DI, w + DJ) and where they are
    ``valid`` and inside the image (zero padding elsewhere)."""
    hh = h + DI
    ww = w + DJ
    ok = valid & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
    return hh.to(tl.int64) * sh + ww.to(tl.int64) * sw, ok


@triton.jit
def dwconv_kernel(
    x_ptr,
    sxb,
    sxh,
    sxw,
    sxc,
    w_ptr,
    bias_ptr,
    y_ptr,
    syb,
    syh,
    syw,
    syc,
    height,
    width,
    channels,
    KS: tl.constexpr,
    FLIP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BP: tl.constexpr,
    BC: tl.constexpr,
):
    """One program: ``BP`` positions of one image x ``BC`` channels."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    p = pid_p * BP + tl.arange(0, BP)
    c = pid_c * BC + tl.arange(0, BC)
    in_image = p < height * width
    c_mask = c < channels
    h = p // width
    w = p % width
    x_base = x_ptr + b * sxb + c[None, :].to(tl.int64) * sxc
    acc = tl.zeros((BP, BC), dtype=tl.float32)
    for i in tl.static_range(KS):
        for j in tl.static_range(KS):
            offs, ok = _tap(h, w, in_image, height, width, sxh, sxw, i - KS // 2, j - KS // 2)
            xv = tl.load(x_base + offs[:, None], mask=ok[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
            tap = (KS - 1 - i) * KS + (KS - 1 - j) if FLIP else i * KS + j
            wv = tl.load(w_ptr + c * (KS * KS) + tap, mask=c_mask, other=0.0).to(tl.float32)
            acc += xv * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    y_offs = b * syb + h.to(tl.int64)[:, None] * syh + w.to(tl.int64)[:, None] * syw + c[None, :].to(tl.int64) * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=in_image[:, None] & c_mask[None, :])


@triton.jit
def dwconv_weight_grad_kernel(
    x_ptr,
    sxb,
    sxh,
    sxw,
    sxc,
    dy_ptr,
    sdb,
    sdh,
    sdw,
    sdc,
    part_ptr,
    height,
    width,
    channels,
    positions,
    per_program,
    KS: tl.constexpr,
    TP: tl.constexpr,
    BP: tl.constexpr,
    BC: tl.constexpr,
):
    """One program: the positions [pid·per_program, (pid+1)·per_program) of the flattened (B, H, W) x ``BC``
    channels. Writes part[pid, t, c] = Σ dy·x shifted by tap t (t < KS²) and part[pid, KS², c] = Σ dy (rows
    up to ``TP``, a power of two, are zero)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    c = pid_c * BC + tl.arange(0, BC)
    c_mask = c < channels
    c64 = c[None, :].to(tl.int64)
    rows = tl.arange(0, TP)
    acc = tl.zeros((TP, BC), dtype=tl.float32)
    image = height * width
    start = pid_p * per_program
    for offset in range(0, per_program, BP):
        p = start + offset + tl.arange(0, BP)
        valid = (p < positions) & (p < start + per_program)
        b = (p // image).to(tl.int64)
        rem = p % image
        h = rem // width
        w = rem % width
        m = valid[:, None] & c_mask[None, :]
        dy = tl.load(
            dy_ptr + b[:, None] * sdb + h.to(tl.int64)[:, None] * sdh + w.to(tl.int64)[:, None] * sdw + c64 * sdc,
            mask=m,
            other=0.0,
        ).to(tl.float32)
        acc += tl.where(rows[:, None] == KS * KS, tl.sum(dy, 0)[None, :], 0.0)
        for i in tl.static_range(KS):
            for j in tl.static_range(KS):
                offs, ok = _tap(h, w, valid, height, width, sxh, sxw, i - KS // 2, j - KS // 2)
                xv = tl.load(
                    x_ptr + b[:, None] * sxb + offs[:, None] + c64 * sxc, mask=ok[:, None] & c_mask[None, :], other=0.0
                ).to(tl.float32)
                acc += tl.where(rows[:, None] == i * KS + j, tl.sum(dy * xv, 0)[None, :], 0.0)
    out = part_ptr + pid_p.to(tl.int64) * TP * channels + rows[:, None] * channels + c[None, :]
    tl.store(out, acc, mask=(rows[:, None] < TP) & c_mask[None, :])
