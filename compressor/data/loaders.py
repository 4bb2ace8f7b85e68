"""Train/test, calibration and held-out splits, and reproducible data loaders."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import DataError, UsageError

log = logging.getLogger(__name__)

__all__ = ["stratified_split", "calibration_split", "stack_samples", "make_loader", "seed_worker", "SPLIT_SEED",
           "TEST_FRACTION"]

#: The seed and test share of :func:`stratified_split` (sources without their own test split).
SPLIT_SEED = 0
TEST_FRACTION = 0.2

#: Below this many calibration samples a channel that happens to be zero on them may fire on other data.
SMALL_CALIBRATION = 128


def stratified_split(targets: Sequence[int] | Tensor, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: from each class, ``round(test_fraction * n)`` go to test.

    Classes with a single sample stay in train. Returns sorted (train_indices, test_indices).
    """
    targets = torch.as_tensor(np.asarray(targets)).long()
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    test: list[int] = []
    for cls in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == cls).flatten()
        shuffled: list[int] = idx[torch.randperm(len(idx), generator=generator)].tolist()
        n_test = min(max(int(round(test_fraction * len(shuffled))), 1), len(shuffled) - 1) if len(shuffled) > 1 else 0
        test += shuffled[:n_test]
        train += shuffled[n_test:]
    return sorted(train), sorted(test)


def calibration_split(dataset: Dataset, samples: int = 1024, heldout: int = 256,
                      seed: int = 0) -> tuple[Subset, Subset]:
    """Two disjoint random subsets: ``samples`` for measuring activity, ``heldout`` for checking.

    The calibration request is honoured first (all of a smaller dataset); the held-out check gets what
    is left, up to ``heldout`` samples, and is empty when nothing is left (the caller says so in its
    report). A calibration set below :data:`SMALL_CALIBRATION` samples is legal and logs a warning
    saying what it risks. Deterministic: the same ``seed`` gives the same (sorted) indices. Use a
    dataset without augmentation (``load_data(..., augment=False)``).
    """
    samples, heldout = int(samples), int(heldout)
    if samples < 1:
        raise UsageError(f"calibration samples must be >= 1, got {samples}")
    if heldout < 0:
        raise UsageError(f"held-out samples must be >= 0, got {heldout}")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("the dataset is empty: no samples to calibrate on")
    n_calib = min(samples, n)
    n_held = min(heldout, n - n_calib)
    if n_calib < samples or n_held < heldout:
        log.warning("the dataset has %d samples (asked for %d calibration + %d held-out); using %d + %d%s", n,
                    samples, heldout, n_calib, n_held,
                    "; no held-out check: every sample calibrates" if heldout and not n_held else "")
    if n_calib < SMALL_CALIBRATION:
        log.warning("only %d calibration samples: a channel that is zero on all of them may still fire on other "
                    "inputs, so the removal may not be lossless there; the held-out check measures it, and more "
                    "samples (%d or more) make it less likely", n_calib, SMALL_CALIBRATION)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    calib = sorted(perm[:n_calib])
    held = sorted(perm[n_calib:n_calib + n_held])
    return Subset(dataset, calib), Subset(dataset, held)


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker distinct, reproducible NumPy/random seeds (derived from torch's)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def stack_samples(dataset: Dataset) -> tuple[Tensor | None, Tensor | None]:
    """All of a small dataset's (input, label) samples as one input tensor and one tensor of class indices:
    ``(None, None)`` for an empty dataset; labels None when they are not class indices (regression targets,
    unlabelled data). For the calibration and held-out splits that checks run on in one piece."""
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    if not items:
        return None, None
    x = torch.stack([torch.as_tensor(item[0]) for item in items])
    try:
        labels = [item[1] for item in items]
        if any(int(v) != v for v in labels):
            return x, None  # float targets that int() would truncate
        return x, torch.tensor([int(v) for v in labels])
    except (TypeError, ValueError, RuntimeError, IndexError):
        return x, None


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
