"""Which samples a run trains on, validates on and measures on, and in which order.

* :class:`EpochSampler` — the shuffling order is a function of (seed, epoch) and an epoch can start
  mid-way, so a resumed run sees exactly the batches an uninterrupted one would.
* :class:`TrainingSplits` — ``data.val_samples`` training samples (chosen by the seed) held out as the
  validation split, never trained on; and the held-aside samples a method measures death, dormancy
  or importance on: from the validation split when there is one, else from the training split
  (still trained on), always without augmentation. Under DDP each rank measures its share and the
  statistics are all-reduced, so every rank decides from all of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler, Subset

from ..data import DataBundle, load_data, num_samples
from ..errors import UsageError
from ..models.registry import data_normalization
from . import distributed as dist_util
from .config import RecipeConfig

__all__ = ["EpochSampler", "steps_per_epoch", "TrainingSplits"]

VALIDATION_SEED_OFFSET = 7907
MEASUREMENT_SEED_OFFSET = 7919


class EpochSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch), and can start mid-epoch.

    That makes the sample order reproducible after a resume without replaying the data loader.
    """

    def __init__(self, n: int, seed: int, batch_size: int, drop_last: bool):
        self.n = n
        self.seed = seed
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator()
        g.manual_seed(int(self.seed) * 1_000_003 + int(epoch) + 17)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation(self.epoch)
        return iter(perm[self.start_batch * self.batch_size:].tolist())

    def __len__(self) -> int:
        return max(0, self.n - self.start_batch * self.batch_size)


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    if drop_last and n >= batch_size:
        return n // batch_size
    return math.ceil(n / batch_size)


class TrainingSplits:
    """The training split of a run, its validation split and its held-aside measurement samples.

    ``data`` may be an already-loaded bundle (tests, benchmarks); otherwise the recipe's dataset is
    loaded here (with augmentation when the recipe asks for it).
    """

    def __init__(self, recipe: RecipeConfig, data: DataBundle | None = None) -> None:
        self.recipe = recipe
        self._given = data is not None
        d = recipe.data
        m = recipe.model
        self._normalize = data_normalization(None if m.model_file else m.arch, d.normalize) if data is None else "auto"
        full = data if data is not None else load_data(d.spec, input_size=d.input_size, augment=recipe.train.augment,
                                                       normalize=self._normalize)
        self.full_train: Dataset = full.train
        self.val_idx: list[int] | None = None
        self.bundle = self._hold_out(full)
        self._plain: Dataset | None = None

    def _hold_out(self, bundle: DataBundle) -> DataBundle:
        """The bundle minus ``data.val_samples`` training samples (held out as the validation split)."""
        k, n = int(self.recipe.data.val_samples), num_samples(bundle.train)
        if not k:
            return bundle
        if k >= n:
            raise UsageError(f"data.val_samples = {k} leaves no training samples ({self.recipe.data.spec!r} has "
                             f"{n} in its training split); hold out fewer, e.g. --set "
                             f"data.val_samples={max(n // 10, 1)}")
        g = torch.Generator()
        g.manual_seed(self.recipe.train.seed + VALIDATION_SEED_OFFSET)
        perm = torch.randperm(n, generator=g)
        self.val_idx = perm[:k].sort().values.tolist()
        return dataclasses.replace(bundle, train=Subset(bundle.train, perm[k:].sort().values.tolist()))

    def plain_train(self) -> Dataset:
        """The full training split without augmentation (death and validation are measured on it)."""
        if self._plain is None:
            d = self.recipe.data
            if self.recipe.train.augment and not self._given:
                self._plain = load_data(d.spec, input_size=d.input_size, augment=False, normalize=self._normalize).train
            else:
                self._plain = self.full_train
        return self._plain

    def validation(self) -> Dataset | None:
        """The held-out validation split (no augmentation), or None without ``data.val_samples``."""
        return None if self.val_idx is None else Subset(self.plain_train(), self.val_idx)

    def _measurement_indices(self, samples: int) -> list[int]:
        pool = self.val_idx if self.val_idx is not None else list(range(num_samples(self.full_train)))
        k = min(int(samples), len(pool))
        g = torch.Generator()
        g.manual_seed(self.recipe.train.seed + MEASUREMENT_SEED_OFFSET)
        return sorted(pool[i] for i in torch.randperm(len(pool), generator=g)[:k].tolist())

    def measurement_samples(self, samples: int) -> int:
        """How many samples a measurement of ``samples`` sees over all ranks (capped by the pool)."""
        return len(self._measurement_indices(samples))

    def measurement(self, samples: int) -> Dataset:
        """``samples`` held-aside samples without augmentation, chosen by the seed; this rank's share
        under DDP (the all-reduce of the statistics gives every rank those of all of them)."""
        idx = self._measurement_indices(samples)
        ctx = dist_util.context()
        if ctx.enabled and ctx.world_size > 1:
            idx = idx[ctx.rank::ctx.world_size]
        return Subset(self.plain_train(), idx)
