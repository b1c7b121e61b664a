"""Which samples each step sees, identical for any number of processes.

Every epoch draws one global list of (index, augmentation seed) keys from the
seed and epoch alone; rank r takes every world-th key. A 2-process run
therefore trains on exactly the batches (and augmentations) of a 1-process run
with the same global batch, and a resumed run repeats the same epochs.
"""

from __future__ import annotations

import numpy as np
import torch


class EpochSampler:
    def __init__(self, has_lesion: np.ndarray, batch_size: int, steps: int | None,
                 foreground_fraction: float, seed: int, rank: int = 0, world: int = 1):
        self.has_lesion = np.asarray(has_lesion, bool)
        n = len(self.has_lesion)
        self.steps = steps or max(n // batch_size, 1)
        self.batch_size, self.fg = batch_size, foreground_fraction
        self.seed, self.rank, self.world = seed, rank, world
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_keys(self) -> list[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.steps * self.batch_size
        n, n_fg = len(self.has_lesion), int(self.has_lesion.sum())
        if 0 < self.fg < 1 and 0 < n_fg < n:
            w = np.where(self.has_lesion, self.fg / n_fg, (1 - self.fg) / (n - n_fg))
            idx = torch.multinomial(torch.as_tensor(w), total, replacement=True, generator=g)
        else:
            reps = -(-total // n)
            idx = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:total]
        aug = torch.randint(0, 2**31 - 1, (total,), generator=g)
        return list(zip(idx.tolist(), aug.tolist()))

    def __iter__(self):
        keys = self.global_keys()
        local = self.batch_size // self.world
        for s in range(self.steps):
            batch = keys[s * self.batch_size:(s + 1) * self.batch_size]
            yield batch[self.rank::self.world][:local]

    def __len__(self) -> int:
        return self.steps
