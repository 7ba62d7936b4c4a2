"""Index order for the training and evaluation loaders, reproducible across workers, ranks and
resumes.

- ``SeededSamples`` seeds each sample's augmentation from (seed, epoch, index), so a clip is
  augmented the same way whichever worker draws it, and after a resume.
- ``SkipFirst`` drops the indices a resumed run has already trained on in its epoch.
- ``Shard`` gives each rank every world_size-th clip for evaluation, without padding.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class SeededSamples(Dataset):
    """Seeds each sample's randomness from (seed, epoch, index).

    Augmentation then does not depend on which worker draws a clip, so a resumed run sees the
    same clips as an uninterrupted one. The caller's RNG states are left untouched.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + index
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class SkipFirst(Sampler):
    """The first ``skip`` indices of a sampler dropped: a run resumed mid-epoch continues there."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class Shard(Sampler):
    """Every world_size-th index from rank on, in order, without padding (evaluation)."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
