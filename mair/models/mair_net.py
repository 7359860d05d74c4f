"""``MaIR``: the top-level network for classic SR, lightweight SR and Gaussian colour denoising (docs/networks.md).

Constructor arguments and defaults are the official ones; module names equal the official state_dict keys.
Differences from the official code, none of which changes the computed function:
* NSS scan orders come from :func:`mair.models.nss.scan_orders` (closed form, cached per size and device)
  instead of Python loops rebuilt on every forward at a new size;
* the mean is a non-persistent buffer (moves with ``.to()``, not in the state_dict, like the official
  plain attribute);
* the broken ``use_checkpoint`` path is replaced by a working activation-checkpointing option.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mair.models.blocks import ResidualMambaBlock, ScanIds, image_to_tokens, tokens_to_image
from mair.models.nss import scan_orders

RGB_MEAN = (0.4488, 0.4371, 0.4040)
NUM_FEAT = 64  # width of the classic-SR upsampler


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> tokens (B, H·W, C), then LayerNorm when ``norm`` is set."""

    def __init__(self, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = image_to_tokens(x)
        return self.norm(x) if self.norm is not None else x


class BasicLayer(nn.Module):
    """``depth`` residual Mamba blocks; odd blocks use the shifted NSS (shift = scan_len // 2)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        d_state: int,
        ssm_ratio: float,
        mlp_ratio: float,
        drop_path: Sequence[float],
        scan_len: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualMambaBlock(
                dim,
                d_state,
                ssm_ratio,
                mlp_ratio,
                drop_path[i],
                shift_size=0 if i % 2 == 0 else scan_len // 2,
                mlp_name="conv_blk",
            )
            for i in range(depth)
        )
        self.use_checkpoint = False

    def forward(self, x: Tensor, ids: tuple[ScanIds, ScanIds], x_size: tuple[int, int]) -> Tensor:
        for blk in self.blocks:
            blk_ids = ids[1] if blk.shift_size > 0 else ids[0]
            if self.use_checkpoint and self.training:
                x = checkpoint(blk, x, blk_ids, x_size, use_reentrant=False)
            else:
                x = blk(x, blk_ids, x_size)
        return x


def _body_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


class RMG(nn.Module):
    """Residual Mamba Group: blocks, a conv, and a residual connection around both."""

    def __init__(
        self,
        dim: int,
        depth: int,
        d_state: int,
        ssm_ratio: float,
        mlp_ratio: float,
        drop_path: Sequence[float],
        scan_len: int,
        resi_connection: str,
    ) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, d_state, ssm_ratio, mlp_ratio, drop_path, scan_len)
        self.conv = _body_conv(dim, resi_connection)

    def forward(self, x: Tensor, ids: tuple[ScanIds, ScanIds], x_size: tuple[int, int]) -> Tensor:
        y = tokens_to_image(self.residual_group(x, ids, x_size), x_size)
        return image_to_tokens(self.conv(y)) + x


class Upsample(nn.Sequential):
    """Classic-SR upsampler: conv + PixelShuffle(2) per factor 2, or one conv + PixelShuffle(3)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: list[nn.Module] = []
        if scale >= 1 and (scale & (scale - 1)) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"upscale {scale} is not supported by the 'pixelshuffle' upsampler: use 2^n or 3")
        super().__init__(*layers)


class MaIR(nn.Module):
    """MaIR for SR and colour denoising. Arguments are the official ones."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 60,
        depths: Sequence[int] = (6, 6, 6, 6),
        drop_rate: float = 0.0,
        d_state: int = 16,
        ssm_ratio: float = 1.5,
        drop_path_rate: float = 0.1,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: str | None = "pixelshuffledirect",
        resi_connection: str = "1conv",
        dynamic_ids: bool = False,
        scan_len: int = 8,
        mlp_ratio: float = 2,
        **kwargs: object,
    ) -> None:
        super().__init__()
        unknown = set(kwargs) - {"batch_size"}  # the official **kwargs only ever absorbs the yml's batch_size
        if unknown:
            raise TypeError(f"MaIR got unexpected argument(s) {sorted(unknown)}")
        if norm_layer is not nn.LayerNorm:
            raise ValueError("MaIR only supports norm_layer=nn.LayerNorm (as every official config)")
        if patch_size != 1:
            raise ValueError(f"MaIR works on pixels: patch_size must be 1, got {patch_size}")
        self.img_size = img_size
        self.in_chans, self.embed_dim, self.upscale = in_chans, embed_dim, int(upscale)
        self.img_range = img_range
        self.upsampler = upsampler or ""
        self.scan_len = scan_len
        self.dynamic_ids = dynamic_ids  # kept for the signature; orders are cached per size anyway
        self.mlp_ratio = mlp_ratio
        mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, norm=patch_norm)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        start = 0
        for depth in depths:
            self.layers.append(
                RMG(
                    embed_dim,
                    depth,
                    d_state,
                    ssm_ratio,
                    mlp_ratio,
                    rates[start : start + depth],
                    scan_len,
                    resi_connection,
                )
            )
            start += depth
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _body_conv(embed_dim, resi_connection)

        if self.upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True)
            )
            self.upsample = Upsample(self.upscale, NUM_FEAT)
            self.conv_last = nn.Conv2d(NUM_FEAT, in_chans, 3, 1, 1)
        elif self.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, self.upscale**2 * in_chans, 3, 1, 1), nn.PixelShuffle(self.upscale)
            )
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)

        self.apply(_init_weights)
        self.set_checkpointing(use_checkpoint)

    def set_checkpointing(self, enabled: bool) -> None:
        """Activation checkpointing per block in training (saves memory, costs a recompute)."""
        for layer in self.layers:
            layer.residual_group.use_checkpoint = enabled

    def scan_ids(self, height: int, width: int, device: torch.device) -> tuple[ScanIds, ScanIds]:
        """The unshifted and shifted NSS orders for an (H, W) feature map."""
        return (
            scan_orders(height, width, self.scan_len, 0, device),
            scan_orders(height, width, self.scan_len, self.scan_len // 2, device),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        x_size = (x.shape[2], x.shape[3])
        ids = self.scan_ids(*x_size, x.device)
        tokens = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            tokens = layer(tokens, ids, x_size)
        return tokens_to_image(self.norm(tokens), x_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MaIR expects input (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        feat = self.conv_first(x)
        res = self.conv_after_body(self.forward_features(feat)) + feat
        if self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(res)))
        elif self.upsampler == "pixelshuffledirect":
            x = self.upsample(res)
        else:
            x = x + self.conv_last(res)
        return x / self.img_range + mean


def _init_weights(module: nn.Module) -> None:
    """Official init: Linear weights truncated normal (std 0.02, cut at ±2), biases 0; LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
