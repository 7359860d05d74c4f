"""The enlarged distributed sampler of the official trainings, with a resumable position.

Per epoch the official ``EnlargedSampler`` draws ``torch.randperm(total)`` from a generator seeded with the
epoch number (``total = ceil(len * ratio / world) * world``), takes every index modulo the dataset length and
gives rank ``r`` the positions ``r, r + world, ...``. This sampler draws the same permutation but yields
``(epoch, k)`` keys, where ``k`` is the *enlarged* index (before the modulo). ``k`` is unique within an epoch, so
datasets derive each sample's augmentation randomness from ``(seed, epoch, k)`` instead of from data-loader
worker state: the data pipeline is then deterministic for any number of workers and resumable mid-epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

__all__ = ["EnlargedSampler", "SampleKey"]

#: ``(epoch, enlarged index)``; the dataset image is ``k % len(dataset)``.
SampleKey = tuple[int, int]


class EnlargedSampler(Sampler[SampleKey]):
    """Yield ``(epoch, k)`` keys for one rank; ``set_epoch`` and ``set_position`` choose where to start."""

    def __init__(self, dataset_len: int, world_size: int = 1, rank: int = 0, ratio: int = 1) -> None:
        if dataset_len <= 0:
            raise ValueError("the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if ratio < 1:
            raise ValueError(f"dataset_enlarge_ratio must be >= 1, got {ratio}")
        self.dataset_len = int(dataset_len)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.ratio = int(ratio)
        self.num_samples = math.ceil(self.dataset_len * self.ratio / self.world_size)
        self.total_size = self.num_samples * self.world_size
        self.epoch = 0
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` and start at its beginning."""
        self.epoch = int(epoch)
        self.position = 0

    def set_position(self, position: int) -> None:
        """Skip the first ``position`` samples of this rank's share of the current epoch."""
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"position {position} outside 0..{self.num_samples}")
        self.position = int(position)

    def keys(self, epoch: int) -> list[int]:
        """This rank's enlarged indices of ``epoch`` (all of them, ignoring the position)."""
        generator = torch.Generator()
        generator.manual_seed(int(epoch))
        perm = torch.randperm(self.total_size, generator=generator)
        return perm[self.rank : self.total_size : self.world_size].tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        for k in self.keys(epoch)[self.position :]:
            yield (epoch, k)

    def __len__(self) -> int:
        return self.num_samples - self.position

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "world_size": self.world_size,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.set_position(int(state["position"]))
