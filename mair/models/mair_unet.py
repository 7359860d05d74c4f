"""``MaIRUNet``: the Restormer-shaped U-Net of MaIR for real denoising, motion deblurring and dehazing
(docs/networks.md). Arguments and defaults are the official ones; module names equal the official state_dict keys.

Kept from the official code: no block uses the shifted NSS (the official never passes ``shift_size``), no
``_init_weights`` (PyTorch default init), ``drop_path_rate`` a constant for every block.
Fixed: the official CPU eval crash (scan orders were only built for CUDA) and the divisible-by-8 restriction:
inputs whose sides are not multiples of 8 are reflect-padded bottom/right (as the official test does) and the
output is cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mair.models.blocks import ResidualMambaBlock, ScanIds, image_to_tokens, tokens_to_image
from mair.models.nss import scan_orders

BASE_D_STATE = 4
SIZE_MULTIPLE = 8  # three 2x down-samplings


class OverlapPatchEmbed(nn.Module):
    """3x3 conv from the image to ``dim`` channels."""

    def __init__(self, in_c: int, embed_dim: int, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Conv (C -> C/2) + PixelUnshuffle(2): half the resolution, twice the channels."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Conv (C -> 2C) + PixelShuffle(2): twice the resolution, half the channels."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, 1, 1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Stage(nn.ModuleList):
    """A sequence of VSSBlocks at one resolution (keys ``<stage>.<i>.``)."""

    def __init__(
        self, count: int, width: int, d_state: int, ssm_ratio: float, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__(
            ResidualMambaBlock(width, d_state, ssm_ratio, mlp_ratio, drop_path, shift_size=0, mlp_name="mlp")
            for _ in range(count)
        )

    def run(self, x: Tensor, ids: ScanIds) -> Tensor:
        """x: image (B, C, H, W) -> image."""
        size = (x.shape[2], x.shape[3])
        tokens = image_to_tokens(x)
        for blk in self:
            tokens = blk(tokens, ids, size)
        return tokens_to_image(tokens, size)


class MaIRUNet(nn.Module):
    """MaIR's U-Net. Arguments are the official ones; unknown arguments raise, as officially."""

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        ssm_ratio: float = 1.5,
        num_refinement_blocks: int = 4,
        drop_path_rate: float = 0.0,
        bias: bool = False,
        dual_pixel_task: bool = False,
        flp_ratio: float = 2,
        mlp_ratio: float = 2,
        dynamic_ids: bool = False,
        img_size: int = 64,
        scan_len: int = 8,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks must have 4 entries (3 encoder levels + latent), got {num_blocks}")
        self.scan_len = scan_len
        self.img_size, self.dynamic_ids = img_size, dynamic_ids  # kept for the signature
        self.dual_pixel_task = dual_pixel_task
        n = BASE_D_STATE

        def stage(count: int, width: int, d_state: int, ratio: float) -> Stage:
            return Stage(count, width, d_state, ssm_ratio, ratio, drop_path_rate)

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim, bias)
        self.encoder_level1 = stage(num_blocks[0], dim, n, flp_ratio)
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = stage(num_blocks[1], dim * 2, n * 2, mlp_ratio)
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = stage(num_blocks[2], dim * 4, n * 4, mlp_ratio)
        self.down3_4 = Downsample(dim * 4)
        self.latent = stage(num_blocks[3], dim * 8, n * 8, mlp_ratio)
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=bias)
        self.decoder_level3 = stage(num_blocks[2], dim * 4, n * 4, mlp_ratio)
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=bias)
        self.decoder_level2 = stage(num_blocks[1], dim * 2, n * 2, mlp_ratio)
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = stage(num_blocks[0], dim * 2, n * 2, mlp_ratio)
        self.refinement = stage(num_refinement_blocks, dim * 2, n * 2, mlp_ratio)
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)

    def _ids(self, x: Tensor) -> ScanIds:
        return scan_orders(x.shape[2], x.shape[3], self.scan_len, 0, x.device)

    def forward(self, inp_img: Tensor) -> Tensor:
        if inp_img.ndim != 4:
            raise ValueError(f"MaIRUNet expects input (B, C, H, W), got {tuple(inp_img.shape)}")
        height, width = inp_img.shape[2], inp_img.shape[3]
        padded = pad_to_multiple(inp_img, SIZE_MULTIPLE)

        enc1_in = self.patch_embed(padded)
        enc1 = self.encoder_level1.run(enc1_in, self._ids(enc1_in))
        enc2_in = self.down1_2(enc1)
        enc2 = self.encoder_level2.run(enc2_in, self._ids(enc2_in))
        enc3_in = self.down2_3(enc2)
        enc3 = self.encoder_level3.run(enc3_in, self._ids(enc3_in))
        lat_in = self.down3_4(enc3)
        latent = self.latent.run(lat_in, self._ids(lat_in))

        dec3 = self.reduce_chan_level3(concat_skip(self.up4_3(latent), enc3))
        dec3 = self.decoder_level3.run(dec3, self._ids(dec3))
        dec2 = self.reduce_chan_level2(concat_skip(self.up3_2(dec3), enc2))
        dec2 = self.decoder_level2.run(dec2, self._ids(dec2))
        dec1 = concat_skip(self.up2_1(dec2), enc1)
        ids1 = self._ids(dec1)
        dec1 = self.decoder_level1.run(dec1, ids1)
        out = self.refinement.run(dec1, ids1)

        if self.dual_pixel_task:
            out = self.output(out + self.skip_conv(enc1_in))
        else:
            out = self.output(out) + padded
        return out[:, :, :height, :width]


def concat_skip(up: Tensor, skip: Tensor) -> Tensor:
    """Channel concatenation with the up-sampled tensor first (official order)."""
    return torch.cat([up, skip], dim=1)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad bottom/right to a multiple of ``multiple``: reflect where the image is large enough (as the
    official test's ``pad_test``), replicate otherwise (reflect needs padding < size)."""
    height, width = x.shape[2], x.shape[3]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
