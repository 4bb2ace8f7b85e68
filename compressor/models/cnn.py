"""``cnn``: a small conv-BN-ReLU(-maxpool) network for 8x8 digits, 28x28 MNIST and 32x32 CIFAR."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UsageError
from .spec import require_image

__all__ = ["SmallCNN", "build_cnn"]


class SmallCNN(nn.Module):
    """[Conv3x3 -> BN -> ReLU -> MaxPool2] per width, global average pool, Linear classifier.

    The max-pool is skipped once the feature map is smaller than 2x2, so the same network works on
    8x8 digits, 28x28 MNIST and 32x32 CIFAR.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int]) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, int(out_channels), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(out_channels)),
                nn.ReLU(),
            ]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = int(out_channels)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def build_cnn(num_classes: int, input_shape: Sequence[int], *, channels: Sequence[int] = (32, 64)) -> nn.Module:
    """Small CNN; ``channels`` lists the width of each conv block."""
    require_image(input_shape, "cnn")
    if not channels or any(int(c) < 1 for c in channels):
        raise UsageError(f"cnn channels must be a non-empty list of positive ints, got {list(channels)}")
    return SmallCNN(input_shape, num_classes, [int(c) for c in channels])
