"""``vgg16-cifar``: VGG-16 (configuration D) with BatchNorm, global average pool and a small classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .spec import require_image

__all__ = ["VGGCifar", "build_vgg16_cifar"]


class VGGCifar(nn.Module):
    """VGG-16-BN features (torchvision's ``make_layers``), global average pool, small classifier."""

    def __init__(self, in_channels: int, num_classes: int, classifier_width: int) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"], batch_norm=True)
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        if classifier_width > 0:
            self.classifier: nn.Module = nn.Sequential(
                nn.Linear(512, classifier_width), nn.ReLU(), nn.Linear(classifier_width, num_classes)
            )
        else:
            self.classifier = nn.Linear(512, num_classes)
        for module in self.modules():  # torchvision VGG's initialization
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def build_vgg16_cifar(num_classes: int, input_shape: Sequence[int], *, classifier_width: int = 512) -> nn.Module:
    """VGG-16-BN for 32x32 inputs; ``classifier_width=0`` gives a single Linear classifier."""
    require_image(input_shape, "vgg16-cifar")
    return VGGCifar(input_shape[0], num_classes, int(classifier_width))
