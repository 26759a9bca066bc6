"""The loader that keeps a whole split on the device (uint8, or padded and normalised for training).

``DeviceLoader`` draws each epoch's order and augmentation from a generator seeded
with (seed, epoch), so an epoch is reproducible on its own: a resumed run sees
exactly the data an uninterrupted one would. Under data parallelism each process
takes a disjoint, equally long slice ``perm[rank::world]`` of the same permutation.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .augment import BatchAugment, normalize
from .dataset import Split


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1)


class DeviceLoader:
    def __init__(self, split: Split, batch_size: int, mean, std, device: torch.device | str = "cpu",
                 train: bool = False, augment: BatchAugment | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = True):
        self.device = torch.device(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        images = torch.from_numpy(np.ascontiguousarray(split.images)).to(self.device)
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.augment = augment
        self.images = augment.prepare(images) if (train and augment) else images
        self.mean = torch.tensor(mean, device=self.device)
        self.std = torch.tensor(std, device=self.device)
        self.num_samples = len(split) // world_size if train else len(split)
        self.epoch = 0
        self.last_indices: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.batch_size  # drop_last: every step has the same shape
        return -(-self.num_samples // self.batch_size)

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(epoch_seed(self.seed, self.epoch))
        return g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.train:
            for i in range(0, self.num_samples, self.batch_size):
                x = normalize(self.images[i:i + self.batch_size], self.mean, self.std)
                yield self._layout(x), self.labels[i:i + self.batch_size]
            return
        g = self._generator()
        perm = torch.randperm(len(self.labels), device=self.device, generator=g)
        idx = perm[self.rank::self.world_size][: self.num_samples]
        self.last_indices = idx
        plan = self.augment.mix_plan(epoch_seed(self.seed, self.epoch), len(self)) if self.augment else None
        for s in range(len(self)):
            bi = idx[s * self.batch_size:(s + 1) * self.batch_size]
            x = self.augment(self.images, g, bi) if self.augment else normalize(self.images[bi], self.mean, self.std)
            y = self.labels[bi]
            if plan is not None:  # mixup / cutmix: y becomes (N, classes) soft targets
                x, y = self.augment.mix(x, y, plan[s], g)
            yield self._layout(x), y

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.channels_last else x.contiguous()
