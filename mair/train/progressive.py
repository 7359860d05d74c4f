"""Progressive training and mixup of the U-Net tasks, as the official Restormer-style ``trainF.py`` does them.

The loader always delivers ``batch_per_gpu`` patches of ``gt_size``. At each iteration the stage of the
progressive schedule (:func:`mair.train.schedules.progressive_stage`) gives a mini-batch size and a patch size:

1. if the mini-batch is smaller than the loader batch, pick its members with ``random.sample(range(B), k)``;
2. if the patch is smaller than the loaded one, draw ``x0 = int((H - g) * random.random())`` then ``y0``
   likewise and cut ``[x0:x0+g, y0:y0+g]`` (rows first) from every image of the batch (one shared offset);
3. mixup (real denoising only): with ``use_identity`` a fair coin (``random.randint(0, 1)``, 0 = mixup)
   chooses mixup or identity; mixup draws one ``lam ~ Beta(1.2, 1.2)`` and a permutation of the batch and sets
   ``gt = lam * gt + (1 - lam) * gt[perm]``, likewise ``lq``. With a mini-batch of 1 it changes nothing.

All randomness comes from a ``random.Random`` made by :func:`step_rng` from (seed, rank, iteration, micro-step),
so a resumed run draws the same values as an uninterrupted one (the official code uses the global ``random``
state, which also lives on in the process; the distributions are the same).
"""

from __future__ import annotations

import random

import numpy as np
from torch import Tensor

__all__ = ["mixup", "progressive_crop", "step_rng"]


def step_rng(seed: int, rank: int, iteration: int, micro: int = 0) -> random.Random:
    """A ``random.Random`` determined by ``(seed, rank, iteration, micro)``."""
    state = np.random.SeedSequence([int(seed), int(rank), int(iteration), int(micro)]).generate_state(2)
    return random.Random(int(state[0]) << 32 | int(state[1]))


def progressive_crop(
    lq: Tensor, gt: Tensor, mini_batch: int, patch: int, rng: random.Random, scale: int = 1
) -> tuple[Tensor, Tensor]:
    """Steps 1 and 2 above on (B, C, H, W) batches; ``patch`` is in ``lq`` pixels, ``gt`` is at ``scale``."""
    batch = lq.shape[0]
    if mini_batch < batch:
        idx = rng.sample(range(batch), mini_batch)
        lq, gt = lq[idx], gt[idx]
    h, w = lq.shape[-2:]
    if patch < h or patch < w:
        x0 = int((h - patch) * rng.random())
        y0 = int((w - patch) * rng.random())
        lq = lq[..., x0 : x0 + patch, y0 : y0 + patch]
        gt = gt[..., x0 * scale : (x0 + patch) * scale, y0 * scale : (y0 + patch) * scale]
    return lq, gt


def mixup(lq: Tensor, gt: Tensor, beta: float, use_identity: bool, rng: random.Random) -> tuple[Tensor, Tensor]:
    """Step 3 above (``Mixing_Augment``); returns new tensors or the inputs unchanged."""
    choice = rng.randint(0, 1) if use_identity else 0
    if choice != 0:
        return lq, gt
    lam = rng.betavariate(beta, beta)
    perm = rng.sample(range(lq.shape[0]), lq.shape[0])
    gt = lam * gt + (1.0 - lam) * gt[perm]
    lq = lam * lq + (1.0 - lam) * lq[perm]
    return lq, gt
