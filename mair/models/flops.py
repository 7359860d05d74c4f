"""Parameter and FLOP counts with the paper's convention (the authors' fvcore rules).

* One FLOP per multiply-add for convolutions, linear layers and matrix products (bias adds are free).
* LayerNorm counts 5 per element of its input (4 without affine parameters); adaptive average pooling one per
  input element; every element-wise op (activations, add, mul, gathers, pixel shuffles) counts 0.
* The selective scan counts ``9·B·L·Dk·N + B·Dk·L`` (Mamba's 9BLDN rule plus the D skip), Dk = K·d_inner.
* The VMM core is counted as the official module's graph: in_proj, the depthwise conv, the x and dt
  projections, the SSA pooling and grouped 1x1 conv, out_norm and out_proj. Our VMM computes the same
  function with other primitives (einsums instead of grouped conv1d, an einsum for the gated sum of the four
  scans, which officially is element-wise and free), so its internals are not taken from the op trace.

Everything outside the VMMs is counted from the ops that actually run, by a ``TorchDispatchMode``. The
forward runs on the ``meta`` device by default, so any input size costs no arithmetic; the scan is replaced by
a stub during counting.
"""

from __future__ import annotations

import copy
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from mair.models.blocks import VMM, Mlp

__all__ = [
    "FlopCount",
    "build_for_counting",
    "count_flops",
    "count_params",
    "selective_scan_flops",
    "vmm_flops",
]

_aten = torch.ops.aten
_NORM_OPS = {_aten.native_layer_norm}
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def count_params(model: nn.Module) -> int:
    """``sum(p.numel())`` over all parameters (fvcore's ``parameter_count(model)['']``); no forward pass."""
    return sum(p.numel() for p in model.parameters())


def selective_scan_flops(batch: int, channels: int, length: int, d_state: int) -> int:
    """``9·B·L·Dk·N + B·Dk·L`` with Dk = ``channels`` (= K·d_inner): the authors' scan rule."""
    return 9 * batch * length * channels * d_state + batch * channels * length


def vmm_flops(module: VMM, x_shape: tuple[int, ...] | torch.Size) -> int:
    """FLOPs of one VMM on input (B, H, W, C), **without** the selective scan, as fvcore counts the official
    module: in_proj, depthwise conv, x_proj and dt_proj (grouped conv1d), SSA (pool + grouped 1x1 conv),
    out_norm (LayerNorm) and out_proj. Shapes come from the parameters."""
    batch, height, width, _ = x_shape
    length = height * width
    scans, proj_width, inner = module.x_proj_weight.shape  # (K, R + 2N, D)
    rank = module.dt_projs_weight.shape[2]
    width_in = module.in_proj.in_features
    kernel = module.conv2d.weight.shape[1] * module.conv2d.weight.shape[2] * module.conv2d.weight.shape[3]
    ssa = module.gating.gating[1]
    ssa_conv = ssa.out_channels * ssa.weight.shape[1]  # on the pooled (1x1) map
    per_pixel = (
        width_in * module.in_proj.out_features  # in_proj
        + inner * kernel  # depthwise 3x3 conv
        + scans * inner * proj_width  # x_proj
        + scans * rank * inner  # dt_proj
        + scans * inner  # SSA adaptive average pool (numel)
        + 5 * inner  # out_norm
        + inner * module.out_proj.out_features  # out_proj
    )
    return batch * (length * per_pixel + ssa_conv)


@dataclass
class FlopCount:
    """A FLOP count (multiply-adds) with its parts: ``by_kind`` maps conv/matmul/layer_norm/pool/vmm/scan."""

    total: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, kind: str, flops: int) -> None:
        self.total += int(flops)
        self.by_kind[kind] += int(flops)

    @property
    def gflops(self) -> float:
        return self.total / 1e9


class _Counter(TorchDispatchMode):
    """Counts aten ops while ``paused`` is 0: matrix products and convolutions (torch's formulas count 2 per
    multiply-add, halved here) and LayerNorm (5 per element with affine parameters)."""

    def __init__(self, count: FlopCount) -> None:
        super().__init__()
        self.count = count
        self.paused = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func._overloadpacket in _NORM_OPS and args[0].device.type == "meta":
            out = _meta_layer_norm(args[0], args[1])  # the meta kernel is a slow Python decomposition
        else:
            out = func(*args, **kwargs)
        if self.paused:
            return out
        packet = func._overloadpacket
        if packet in _NORM_OPS:
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            self.count.add("layer_norm", (5 if weight is not None else 4) * args[0].numel())
        elif packet in flop_registry:
            kind = "conv" if "conv" in packet.__name__ else "matmul"
            self.count.add(kind, flop_registry[packet](*args, **kwargs, out_val=out) // 2)
        return out


def _meta_layer_norm(x: torch.Tensor, normalized_shape: Any) -> tuple[torch.Tensor, ...]:
    """Shapes of ``native_layer_norm``'s (output, mean, rstd) on the meta device."""
    stat_shape = (*x.shape[: x.dim() - len(normalized_shape)], *([1] * len(normalized_shape)))
    return torch.empty_like(x), x.new_empty(stat_shape), x.new_empty(stat_shape)


_RANDOM_INITS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
)


@contextmanager
def _no_random_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s random initialisers no-ops (shapes, not values, matter for counting)."""
    saved = {name: getattr(nn.init, name) for name in _RANDOM_INITS}
    for name in _RANDOM_INITS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def build_for_counting(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """``from_official(arch, **kwargs)`` without the random initialisation (fast; weights are meaningless)."""
    from mair.models import from_official

    with _no_random_init():
        return from_official(arch, **copy.deepcopy(kwargs))


@contextmanager
def _scan_stub(count: FlopCount) -> Iterator[None]:
    """Replace ``selective_scan`` where the models bound it by a zero-output stub that adds the scan rule.

    The VMM's fused scans (``VMM.fold_scan_order``) are switched off meanwhile, so every scan goes through
    ``selective_scan`` (and so through the stub), and so is the MLPs' padding of their hidden width on CUDA
    (``Mlp.hidden_multiple``), so that the count is the model's, not the padded products'."""
    from mair.models import scan as scan_pkg

    original = scan_pkg.selective_scan

    def stub(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
        batch, channels, length = u.shape
        count.add("scan", selective_scan_flops(batch, channels, length, A.shape[1]))
        return torch.zeros(u.shape, dtype=torch.float32, device=u.device)

    patched = [
        m
        for name, m in list(sys.modules.items())
        if name.startswith("mair.models") and getattr(m, "selective_scan", None) is original
    ]
    for module in patched:
        module.selective_scan = stub  # type: ignore[attr-defined]
    fused, multiple = VMM.fold_scan_order, Mlp.hidden_multiple
    VMM.fold_scan_order, Mlp.hidden_multiple = False, 1
    try:
        yield
    finally:
        VMM.fold_scan_order, Mlp.hidden_multiple = fused, multiple
        for module in patched:
            module.selective_scan = original  # type: ignore[attr-defined]


def _hooks(model: nn.Module, counter: _Counter) -> list[Any]:
    handles: list[Any] = []

    def pause(module: nn.Module, inputs: tuple) -> None:
        counter.paused += 1

    def vmm_done(module: nn.Module, inputs: tuple, output: Any) -> None:
        counter.paused -= 1
        counter.count.add("vmm", vmm_flops(module, inputs[0].shape))  # type: ignore[arg-type]

    def pool_done(module: nn.Module, inputs: tuple, output: Any) -> None:
        counter.paused -= 1
        counter.count.add("pool", inputs[0].numel())

    for module in model.modules():
        done: Callable[..., None] | None = (
            vmm_done if isinstance(module, VMM) else pool_done if isinstance(module, _POOL_MODULES) else None
        )
        if done is not None:
            handles.append(module.register_forward_pre_hook(pause))
            handles.append(module.register_forward_hook(done))
    return handles


def count_flops(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    batch: int = 1,
    in_channels: int = 3,
    device: str | torch.device | None = "meta",
) -> FlopCount:
    """FLOPs of one forward pass on a (batch, in_channels, H, W) input, with the paper's convention.

    ``device="meta"`` (default) runs a meta copy of the model, so no arithmetic is done at any size; ``None``
    runs the model where its parameters are. The model is left unchanged.
    """
    height, width = input_size
    if device is not None and next(model.parameters()).device != torch.device(device):
        model = copy.deepcopy(model).to(device)
    dev = next(model.parameters()).device
    count = FlopCount()
    counter = _Counter(count)
    handles = _hooks(model, counter)
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(batch, in_channels, height, width, device=dev)
        with torch.no_grad(), _scan_stub(count), counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    count.by_kind = dict(count.by_kind)
    return count
