"""``resnet20-cifar`` and ``resnet56-cifar``: He et al. (2016)'s CIFAR ResNets, with 1x1 conv + BN
projection shortcuts where the shape changes (option B).

Depth ``6n + 2``: a 3x3 stem with 16 channels, three stages of ``n`` basic blocks (torchvision's
``BasicBlock``: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU) with 16, 32 and 64
channels (the second and third start with stride 2), global average pooling and a linear classifier.

The paper's CIFAR networks use option A, an identity shortcut that zero-pads the new channels and
subsamples by striding. Option B (a learned 1x1 stride-2 convolution + BatchNorm) is used here because
it is what pruning libraries and the dependency graph handle natively: every residual sum then adds
tensors produced by prunable layers, so a stage's channels form one coupled group, whereas a
zero-padding shortcut ties channels of two stages through a fixed slice that a graph analyzer cannot
remove from. It adds 2,752 parameters: at 10 classes ResNet-20 has 272,474 (269,722 with option A, the
paper's "0.27M") and ResNet-56 855,770 (853,018 with option A, "0.85M").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .spec import require_image

__all__ = ["CifarResNet", "build_resnet20_cifar", "build_resnet56_cifar"]

#: The three stages' widths (the paper's 16/32/64).
WIDTHS = (16, 32, 64)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth ``6 * blocks + 2`` with option-B projection shortcuts.

    Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1``..``layer3``, ``fc``).
    """

    def __init__(self, blocks: int, num_classes: int = 10, in_channels: int = 3, *,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        inplanes = WIDTHS[0]
        for i, width in enumerate(WIDTHS):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                downsample = None
                if b == 0 and (stride != 1 or inplanes != width):
                    downsample = nn.Sequential(nn.Conv2d(inplanes, width, kernel_size=1, stride=stride, bias=False),
                                               nn.BatchNorm2d(width))
                layers.append(BasicBlock(inplanes, width, stride if b == 0 else 1, downsample))
                inplanes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        for module in self.modules():  # torchvision ResNet's initialization
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.constant_(module.bn2.weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet20_cifar(num_classes: int, input_shape: Sequence[int], *,
                         zero_init_residual: bool = False) -> nn.Module:
    """ResNet-20 for 32x32 inputs (3 blocks per stage; 272,474 parameters at 10 classes)."""
    require_image(input_shape, "resnet20-cifar")
    return CifarResNet(3, num_classes, input_shape[0], zero_init_residual=zero_init_residual)


def build_resnet56_cifar(num_classes: int, input_shape: Sequence[int], *,
                         zero_init_residual: bool = False) -> nn.Module:
    """ResNet-56 for 32x32 inputs (9 blocks per stage; 855,770 parameters at 10 classes)."""
    require_image(input_shape, "resnet56-cifar")
    return CifarResNet(9, num_classes, input_shape[0], zero_init_residual=zero_init_residual)
