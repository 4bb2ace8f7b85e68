"""Calibration / held-out splits and reproducible data loaders."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import DataError, UsageError

log = logging.getLogger(__name__)

__all__ = ["calibration_split", "make_loader", "seed_worker"]


def calibration_split(dataset: Dataset, samples: int = 1024, heldout: int = 256, seed: int = 0) -> tuple[Subset, Subset]:
    """Two disjoint random subsets: ``samples`` for measuring activity, ``heldout`` for checking.

    Deterministic: the same ``seed`` gives the same (sorted) indices. When the dataset has fewer
    than ``samples + heldout`` items, both are scaled down proportionally and a warning is logged;
    a split that would leave no calibration sample, or no held-out sample although ``heldout > 0``
    was asked for, raises :class:`DataError`. ``heldout=0`` returns an empty held-out subset.
    Use a dataset without augmentation (``load_data(..., augment=False)``).
    """
    samples, heldout = int(samples), int(heldout)
    if samples < 1:
        raise UsageError(f"calibration samples must be >= 1, got {samples}")
    if heldout < 0:
        raise UsageError(f"held-out samples must be >= 0, got {heldout}")
    n = len(dataset)  # type: ignore[arg-type]
    n_calib, n_held = samples, heldout
    if n < samples + heldout:
        n_calib = min(samples, int(math.floor(n * samples / (samples + heldout))))
        n_held = min(heldout, n - n_calib)
        if heldout > 0 and n_held < 1 and n_calib > 1:
            n_calib, n_held = n_calib - 1, 1
        if n_calib < 1 or (heldout > 0 and n_held < 1):
            raise DataError(
                f"dataset has {n} sample(s), too few for a calibration set and a held-out set "
                f"(asked for {samples} + {heldout}); use a larger dataset"
            )
        log.warning(
            "dataset has only %d samples (asked for %d calibration + %d held-out); using %d + %d",
            n, samples, heldout, n_calib, n_held,
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    calib = sorted(perm[:n_calib])
    held = sorted(perm[n_calib:n_calib + n_held])
    return Subset(dataset, calib), Subset(dataset, held)


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker distinct, reproducible NumPy/random seeds (derived from torch's)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A reproducible DataLoader: shuffling order comes from a ``torch.Generator`` seeded with ``seed``."""
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=int(num_workers),
        pin_memory=pin_memory,
        generator=generator,
        worker_init_fn=seed_worker if num_workers else None,
        persistent_workers=False,
    )
