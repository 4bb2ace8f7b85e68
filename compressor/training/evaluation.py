"""Running a model on data during training: devices, seeding, autocast, batches, evaluation."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.bundle import num_samples
from ..errors import DataError, UsageError
from ..model_outputs import output_tensor

__all__ = ["seed_everything", "resolve_device", "autocast", "split_batch", "evaluate", "sample_inputs"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``train.device``: auto (CUDA when there is one), cpu or cuda (refused without a GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device is cuda but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``train.bf16``; nothing on the CPU."""
    if device.type == "cuda" and bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a training batch; a clear error for anything else."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError("training batches must be (inputs, labels) pairs; the dataset returned something else")


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, bf16: bool = True) -> tuple[float, float]:
    """(mean cross-entropy loss, top-1 accuracy) of ``model`` on ``loader`` in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    try:
        for batch in loader:
            x, y = split_batch(batch)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, bf16):
                out = output_tensor(model(x))
            out = out.float()
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            seen += y.numel()
    finally:
        model.train(was_training)
    if seen == 0:
        return float("nan"), float("nan")
    return loss_sum.item() / seen, correct.item() / seen


def sample_inputs(dataset: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` inputs of ``dataset`` stacked (deterministic: no shuffling)."""
    k = min(n, num_samples(dataset))
    return torch.stack([dataset[i][0] for i in range(k)]) if k else torch.zeros(0)
