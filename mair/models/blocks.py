"""The building blocks shared by MaIR and MaIRUNet: the VMM (SS2D-like core with NSS), SSA gating, the
residual Mamba block and the small token/image helpers.

Module and parameter names follow the official code so that official checkpoints
load strictly. The math follows docs/networks.md "The VMM block" step by step; the projections are matrix
products (einsum) rather than the official grouped conv1d, which computes the same sums.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mair.models.scan import selective_scan
from mair.models.scan.nss_gated import gated_sum, ssa_gate
from mair.models.scan.registry import VmmPlan, scan_function, vmm_plan
from mair.runtime import switches


def _custom_ops():
    """The custom-op module when the torch.compile switch is on, else None.

    Registering torch custom ops imports torch._dynamo (over a second), so the module is imported only when
    the ``MAIR_SCAN_CUSTOM_OP`` switch asks for it or someone already imported it to call ``enable``."""
    module = sys.modules.get("mair.models.scan.custom_ops")
    if module is None and switches.get("MAIR_SCAN_CUSTOM_OP"):
        from mair.models.scan import custom_ops as module
    return module if module is not None and module.is_enabled() else None


def _scan_function(loader: str, ops: Any) -> Callable[..., Tensor]:
    """The fused scan a plan names: its custom op when the ops are on (an attribute of the ops module, which
    ``torch.compile`` reads as a constant), else the eager function."""
    if ops is not None:
        return getattr(ops, loader.rsplit(":", 1)[1])
    return scan_function(loader)


def paths_taken(plan: VmmPlan, fold_scan_order: bool, fuse_gate: bool, triton_conv: bool) -> VmmPlan:
    """The backend's ``plan`` with a VMM's switches applied: the paths the VMM runs (its forward and
    ``mair info --runtime`` both read them from here). A path turned off turns off the ones that build on it."""
    fold = plan.nss_order and fold_scan_order
    return VmmPlan(
        plan.backend,
        fold,
        fold and plan.delta_in_op,
        fold and plan.gate_in_op and fuse_gate,
        fold and plan.token_conv and triton_conv,
        plan.nss_scan,
        plan.nss_scan_gated,
    )


NUM_SCANS = 4  # K: the four NSS sequences

ScanIds = tuple[Tensor, Tensor]  # (scan_ids (4, L), inverse_ids (4, L)), int64


def ssm_inner_dim(width: int, ssm_ratio: float) -> int:
    """``d_inner`` exactly as the official code computes it: Python float product, truncated."""
    return int(ssm_ratio * width)


def dt_rank_for(width: int) -> int:
    """``dt_rank = ceil(C / 16)`` (the official ``"auto"``)."""
    return math.ceil(width / 16)


class DropPath(nn.Module):
    """Stochastic depth: a per-sample Bernoulli mask scaled by 1/keep_prob, active in train mode only."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(mask_shape).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            mask.div_(keep_prob)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (no dropout)."""

    #: On CUDA the hidden width is padded with zero units to a multiple of this (1: never). cuBLAS runs matrix
    #: products whose rows are not 16-byte aligned with slow unaligned kernels: classic SR's hidden width 450
    #: (180 · 2.5) made the MLP's eight products per training step about 10 ms of the compiled SR x2 step
    #: (docs/benchmarks.md, "What makes the path fast"). A zero unit adds exactly zero (GELU(0) = 0, and its fc2
    #: column is 0), and the pad's backward drops the padded rows' gradients, so parameters and results are those
    #: of the plain MLP up to rounding. Not on the CPU, where it would only cost time, nor while FLOPs are counted.
    hidden_multiple: int = 8

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        pad = -self.fc1.out_features % self.hidden_multiple if x.is_cuda else 0
        if pad == 0:
            return self.fc2(self.act(self.fc1(x)))
        return self.forward_padded(x, pad)

    def forward_padded(self, x: Tensor, pad: int) -> Tensor:
        """The same MLP with ``pad`` zero hidden units appended (see ``hidden_multiple``)."""
        weight1 = F.pad(self.fc1.weight, (0, 0, 0, pad))
        bias1 = F.pad(self.fc1.bias, (0, pad))
        weight2 = F.pad(self.fc2.weight, (0, pad))
        return F.linear(self.act(F.linear(x, weight1, bias1)), weight2, self.fc2.bias)


class ShuffleAttn(nn.Module):
    """SSA gating (docs/networks.md "SSA gating"). Holds the official ``gating`` Sequential so that keys read
    ``gating.gating.1.weight``; the forward computes the same gate directly on the pooled values."""

    def __init__(self, inner: int) -> None:
        super().__init__()
        self.inner = inner
        channels = NUM_SCANS * inner
        self.gating = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels, kernel_size=1, groups=inner, bias=True),
            nn.Sigmoid(),
        )

    def gate_parameters(self) -> tuple[Tensor, Tensor]:
        """The 1x1 grouped convolution's weight as (D, K, K) ``[d, k, k']`` and bias as (D, K) ``[d, k]``."""
        conv = self.gating[1]
        return conv.weight.view(self.inner, NUM_SCANS, NUM_SCANS), conv.bias.view(self.inner, NUM_SCANS)

    def gate(self, pooled: Tensor) -> Tensor:
        """Gate (B, K, D) from pooled means (B, K, D): ``σ(Σ_k' W[d·4+k, k'] m[k', d] + b[d·4+k])``, float32
        (:func:`mair.models.scan.nss_gated.ssa_gate`)."""
        return ssa_gate(pooled, *self.gate_parameters())


class VMM(nn.Module):
    """The MaIR core (``VMM`` at top level, ``LoSh2D`` in the U-Net): in_proj, depthwise conv, 4 NSS scans
    through the selective scan, un-scan, SSA gating and sum, out_norm * SiLU(z), out_proj
    (docs/networks.md "The VMM block")."""

    # Which fused paths run is the chosen backend's answer (``mair.models.scan.registry.Fusions``, printed by
    # ``mair info --runtime``); the switches below only turn one off, to compare it with the plain path.

    #: Take the backend's scan that reads the NSS orders itself when it offers one (the Triton scan; the torch
    #: scan without autograd, its order folded into the chunked layout, about 2x faster on the CPU). False: the
    #: gathered path (the four orders copied, ``selective_scan``, inverse gathers), the reference.
    fold_scan_order: bool = True
    #: In training (eager or compiled), ``out_proj(out_norm(y) * SiLU(z))`` is recomputed in the backward from y
    #: and z (which are kept anyway) instead of keeping the norm's output, SiLU(z) and out_proj's input: three
    #: (B, L, D) maps less per block, about 2.4 GiB per classic SR x2 step, for three element-wise kernels and one
    #: matrix product more (docs/benchmarks.md). Compiled graphs recompute it too (Inductor honours the checkpoint):
    #: the compiled SR x2 step drops from 11.6 to 8.0 GiB with both regions, at the same speed.
    recompute_output_stage: bool = True
    #: Where the backend offers it (Triton), the SSA gate and the sum over the four scans run inside the scan op
    #: (``mair.models.scan.nss_gated``), which keeps the chunk states instead of the four scan outputs for the
    #: backward and recomputes what the gate's gradient needs from them: 90 MiB less per classic SR block,
    #: 3.2 GiB per SR x2 step, for one parallel pass over the chunks in the backward (docs/benchmarks.md).
    #: False: the scan op returns the four outputs and the gate and sum are separate autograd steps.
    fuse_gate: bool = True
    #: Where the backend offers it (Triton), the depthwise convolution runs as a Triton op on the (B, H, W, D)
    #: token layout (``mair.models.dwconv``): no permutes, no cuDNN layout transforms, and a weight gradient that
    #: is one pass instead of cuDNN's implicit-GEMM kernel (docs/benchmarks.md, "What makes the path fast").
    #: False: ``nn.Conv2d`` (cuDNN).
    triton_conv: bool = True

    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: float = 2.0, d_conv: int = 3) -> None:
        super().__init__()
        inner = ssm_inner_dim(d_model, ssm_ratio)
        rank = dt_rank_for(d_model)
        self.d_model, self.d_inner, self.dt_rank, self.d_state = d_model, inner, rank, d_state
        self.scan_backend: str | None = None  # None: automatic choice (see mair.models.scan)

        # Construction order follows the official module so that a seeded build consumes the RNG alike.
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, d_conv, padding=(d_conv - 1) // 2, groups=inner, bias=True)
        self.act = nn.SiLU()
        x_proj = [nn.Linear(inner, rank + 2 * d_state, bias=False) for _ in range(NUM_SCANS)]
        self.x_proj_weight = nn.Parameter(torch.stack([p.weight for p in x_proj]))  # (K, R+2N, D)
        dt_weights, dt_biases = zip(*(_dt_init(rank, inner) for _ in range(NUM_SCANS)), strict=True)
        self.dt_projs_weight = nn.Parameter(torch.stack(dt_weights))  # (K, D, R)
        self.dt_projs_bias = nn.Parameter(torch.stack(dt_biases))  # (K, D)
        a_row = torch.arange(1, d_state + 1, dtype=torch.float32).log()
        self.A_logs = nn.Parameter(a_row.repeat(NUM_SCANS * inner, 1))  # (K·D, N)
        self.Ds = nn.Parameter(torch.ones(NUM_SCANS * inner))  # (K·D)
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.gating = ShuffleAttn(inner)

    def forward(self, x: Tensor, ids: ScanIds) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        ops = _custom_ops()
        plan_for = ops.vmm_plan if ops is not None else vmm_plan
        offered = plan_for(self.scan_backend, x.device, torch.is_grad_enabled(), ops is not None)  # the backend's
        plan = paths_taken(offered, self.fold_scan_order, self.fuse_gate, self.triton_conv)
        if not plan.nss_order:
            y = self._scan_gathered(self.act(self.conv2d(x.permute(0, 3, 1, 2))), ids)  # conv on (B, D, H, W)
        elif plan.token_conv:
            from mair.models.dwconv import depthwise_conv2d

            raster = self.act(depthwise_conv2d(x, self.conv2d.weight, self.conv2d.bias))  # (B, H, W, D) dense
            y = self._scan_fused(raster.view(batch, height * width, self.d_inner), ids[0], plan, ops)
        else:
            y = self._scan_fused(_raster(self.act(self.conv2d(x.permute(0, 3, 1, 2)))), ids[0], plan, ops)
        y = y.view(batch, height, width, self.d_inner)
        return _stage(self.recompute_output_stage, self._output_stage, y, z)

    def _output_stage(self, y: Tensor, z: Tensor) -> Tensor:
        """``out_proj(out_norm(y) * SiLU(z))`` (step 8 of the VMM)."""
        return self.out_proj(self.out_norm(y.to(z.dtype)) * F.silu(z))

    def _scan_gathered(self, x: Tensor, ids: ScanIds) -> Tensor:
        """Steps 3-7 of the VMM as written: gather the 4 scan orders, scan, un-scan, SSA. Returns (B, L, D)."""
        batch, inner, height, width = x.shape
        length = height * width
        rank, state = self.dt_rank, self.d_state
        scan_ids, inverse_ids = ids
        flat = x.reshape(batch, inner, length)
        # Gather the 4 scan orders at once: (B, D, K·L) -> (B, K, D, L).
        xs = flat.index_select(2, scan_ids.reshape(-1)).view(batch, inner, NUM_SCANS, length).transpose(1, 2)
        x_dbl = torch.einsum("kcd,bkdl->bkcl", self.x_proj_weight, xs)
        dts, bs, cs = torch.split(x_dbl, [rank, state, state], dim=2)
        dts = torch.einsum("kdr,bkrl->bkdl", self.dt_projs_weight, dts)
        ops = _custom_ops()
        scan = ops.selective_scan if ops is not None else selective_scan
        ys = scan(
            xs.reshape(batch, NUM_SCANS * inner, length).float(),
            dts.reshape(batch, NUM_SCANS * inner, length).float(),
            -torch.exp(self.A_logs.float()),
            bs.float().contiguous(),
            cs.float().contiguous(),
            self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().reshape(-1),
            delta_softplus=True,
            backend=self.scan_backend,
        ).view(batch, NUM_SCANS, inner, length)
        # Un-scan: y_k back to raster order, then SSA gate and the sum over the 4 sequences.
        ys = torch.stack([ys[:, k].index_select(2, inverse_ids[k]) for k in range(NUM_SCANS)], dim=1)
        gate = self.gating.gate(ys.mean(dim=3))  # (B, K, D)
        return torch.einsum("bkd,bkdl->bld", gate.to(ys.dtype), ys)

    def _scan_fused(self, raster: Tensor, scan_ids: Tensor, plan: VmmPlan, ops: Any) -> Tensor:
        """The same computation on the raster map (B, L, D) with the scan order fused into the scan: projections
        stay in raster order (they act per position), the scan reads through ``scan_ids`` and writes back in
        raster order, so no permuted copies or inverse gathers exist. ``plan``: the paths taken
        (:func:`paths_taken`) with the backend's fused scans (the Triton ``nss_scan`` and ``nss_scan_gated``, or
        the inference-only ``torch_nss.nss_scan_torch``); ``ops``: the custom-op module when the ops are on.
        Returns (B, L, D)."""
        x_dbl = torch.einsum("bld,kcd->bklc", raster, self.x_proj_weight)  # (B, K, L, R+2N)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=3)
        A, Ds, dt_bias = -torch.exp(self.A_logs.float()), self.Ds.float(), self.dt_projs_bias.float().reshape(-1)
        # Δ projected inside the op where the backend can: only its R-channel input is then kept for the backward
        weight = self.dt_projs_weight if plan.delta_in_op else None
        if weight is None:
            dts = torch.einsum("bklr,kdr->bkld", dts, self.dt_projs_weight)
        if plan.gate_in_op:  # the gate and sum in the op: no four outputs kept
            assert plan.nss_scan_gated is not None
            gated = _scan_function(plan.nss_scan_gated, ops)
            return gated(raster, dts, A, bs, cs, Ds, dt_bias, scan_ids, True, weight, *self.gating.gate_parameters())
        assert plan.nss_scan is not None
        scan = _scan_function(plan.nss_scan, ops)
        low_rank = {"delta_weight": weight} if weight is not None else {}
        ys = scan(raster, dts, A, bs, cs, Ds, dt_bias, scan_ids, delta_softplus=True, **low_rank)  # (B, K, L, D)
        # Σ_k gate_k · y_k (on the CPU an einsum's copy of ys into (B, D, L, K) cost as much as the scan's gathers)
        return gated_sum(ys, self.gating.gate(ys.float().mean(dim=2)))


def _raster(x: Tensor) -> Tensor:
    """(B, D, H, W) -> the raster map (B, L, D)."""
    batch, inner, height, width = x.shape
    return x.permute(0, 2, 3, 1).reshape(batch, height * width, inner)


def _dt_init(
    rank: int, inner: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Official dt projection init: weight U(±rank^-0.5); bias = softplus^-1 of a log-uniform dt in
    [dt_min, dt_max] clamped at ``floor``. Built through an nn.Linear like the original so
    that the RNG is consumed in the same order."""
    proj = nn.Linear(rank, inner, bias=True)
    std = rank**-0.5
    nn.init.uniform_(proj.weight, -std, std)
    dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    inv_softplus = dt + torch.log(-torch.expm1(-dt))
    return proj.weight.data, inv_softplus


class ResidualMambaBlock(nn.Module):
    """RMB (top level) / VSSBlock (U-Net): ``x·s1 + DropPath(VMM(LN(x)))`` then ``x·s2 + Mlp(LN(x))``.

    The MLP child is ``conv_blk`` in MaIR and ``mlp`` in MaIRUNet (``mlp_name``); nothing else differs.
    """

    #: In training (eager or compiled), ``Mlp(LN(x))`` is recomputed in the backward from x (kept anyway for the
    #: skip scale) instead of keeping the norm's output, fc1's output and the GELU's output: with the MLP ratio 2 of
    #: classic SR, five (B, L, C) maps less per block, about 2 GiB per classic SR x2 step, for two matrix
    #: products and three element-wise kernels more (docs/benchmarks.md).
    recompute_mlp: bool = True

    def __init__(
        self,
        width: int,
        d_state: int,
        ssm_ratio: float,
        mlp_ratio: float,
        drop_path: float,
        shift_size: int = 0,
        mlp_name: str = "conv_blk",
    ) -> None:
        super().__init__()
        self.shift_size = shift_size
        self.mlp_name = mlp_name
        self.ln_1 = nn.LayerNorm(width)
        self.self_attention = VMM(width, d_state=d_state, ssm_ratio=ssm_ratio)
        self.drop_path = DropPath(drop_path)
        self.skip_scale = nn.Parameter(torch.ones(width))
        setattr(self, mlp_name, Mlp(width, int(width * mlp_ratio)))
        self.ln_2 = nn.LayerNorm(width)
        self.skip_scale2 = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor, ids: ScanIds, x_size: tuple[int, int]) -> Tensor:
        """x: tokens (B, H·W, C) in raster order."""
        batch, length, width = x.shape
        inp = x.view(batch, *x_size, width)
        x = inp * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(inp), ids))
        x = x * self.skip_scale2 + _stage(self.recompute_mlp, self._mlp_stage, x)
        return x.reshape(batch, length, width)

    def _mlp_stage(self, x: Tensor) -> Tensor:
        """``Mlp(LN(x))``."""
        return getattr(self, self.mlp_name)(self.ln_2(x))


def _stage(recompute: bool, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``fn(*args)``; with ``recompute`` and a graph being recorded for a backward (eager or compiled), under a
    non-reentrant checkpoint, so that its intermediates are recomputed in the backward instead of kept."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def tokens_to_image(x: Tensor, x_size: tuple[int, int]) -> Tensor:
    """(B, H·W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *x_size)


def image_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H·W, C), raster order."""
    return x.flatten(2).transpose(1, 2)
