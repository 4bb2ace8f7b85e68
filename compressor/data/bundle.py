"""What a loaded dataset is: :class:`DataBundle` (splits, shape, classes, normalization) and
:class:`TensorImageDataset` (images in memory, normalized and augmented per item)."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["DataBundle", "TensorImageDataset", "num_samples"]


def num_samples(dataset: Dataset) -> int:
    """``len(dataset)``; torch's ``Dataset`` type does not promise a length, every dataset demp loads has one."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"object of type {type(dataset).__name__!r} has no len()")
    return len(dataset)


@dataclass
class DataBundle:
    """A dataset's splits and what a model needs to know about it.

    ``mean``/``std`` are the per-channel statistics already applied to ``x`` (empty for none);
    ``num_classes`` is 0 for unlabeled data. ``test`` is None when the source has no test split.
    """

    name: str
    train: Dataset
    test: Dataset | None
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: list[str] | None = None
    spec: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    #: the shape the samples are stored at, before any ``input_size`` resizing; None where the source
    #: resizes by design (image folders)
    native_shape: tuple[int, ...] | None = None


class TensorImageDataset(Dataset):
    """Images kept in memory as one tensor; normalization and augmentation applied per item.

    ``data`` is (N, *shape): uint8 (scaled by 1/255) or float. Keeping uint8 data as uint8 uses a
    quarter of the memory of a pre-normalized float copy (CIFAR: 150 MB instead of 600 MB).
    """

    def __init__(
        self,
        data: Tensor,
        targets: Tensor,
        *,
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
        size: int | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} inputs but {len(targets)} targets")
        self.data = data
        self.targets = targets.long()
        channels = data.shape[1] if data.dim() >= 2 else 1
        self._mean = _stat_tensor(mean, channels, data.dim() - 1)
        self._std = _stat_tensor(std, channels, data.dim() - 1)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.data[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.size is not None and x.dim() == 3 and tuple(x.shape[1:]) != (self.size, self.size):
            from torchvision.transforms.functional import resize

            x = resize(x, [self.size, self.size], antialias=True)
        if self.transform is not None:
            x = self.transform(x)
        if self._mean is not None and self._std is not None:
            x = (x - self._mean) / self._std
        return x, int(self.targets[index])


def _stat_tensor(values: Sequence[float], channels: int, dims: int) -> Tensor | None:
    if not values:
        return None
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if tensor.numel() == 1:
        tensor = tensor.expand(channels).clone()
    if tensor.numel() != channels:
        raise DataError(f"mean/std have {tensor.numel()} values but the data has {channels} channels")
    return tensor.reshape(channels, *([1] * (dims - 1))) if dims >= 1 else tensor
