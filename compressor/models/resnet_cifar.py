"""``resnet18-cifar``: torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool (the DemP
papers' CIFAR network)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .spec import require_image

__all__ = ["build_resnet18_cifar"]


def build_resnet18_cifar(
    num_classes: int, input_shape: Sequence[int], *, zero_init_residual: bool = False
) -> nn.Module:
    """torchvision ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a 3x3/1 stem and no max-pool."""
    from torchvision.models.resnet import BasicBlock, ResNet

    require_image(input_shape, "resnet18-cifar")
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, zero_init_residual=zero_init_residual)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
