"""``resnet20-cifar-a`` ... ``resnet110-cifar-a``: He et al. (2016)'s CIFAR ResNets with the paper's own
option-A shortcut, named so that the published ``akamaster/pytorch_resnet_cifar10`` checkpoints load.

Why a second family beside :mod:`.resnet_cifar_he` (option B, a 1x1 conv + BN projection where the shape
changes): these exist to load the published weights with no user code. The architecture is the
paper's: a 3x3 stem of 16 channels, three stages of ``n`` basic blocks (conv3x3-BN-ReLU-conv3x3-BN, plus
the shortcut, then ReLU) with 16, 32 and 64 channels, the first block of stages 2 and 3 with stride 2,
global average pooling and ``Linear(64, classes)``; depth ``6n + 2`` (n = 3, 5, 7, 9, 18). Where the
shape changes the shortcut is option A (:class:`PadShortcut`): the input subsampled with
``x[:, :, ::2, ::2]`` and zero-padded with ``planes // 4`` channels on each side, no parameters. Module
and parameter names are akamaster's (``conv1``, ``bn1``, ``layer1``..``layer3`` of blocks with ``conv1``,
``bn1``, ``conv2``, ``bn2``, ``shortcut``, and ``linear``), ReLUs are functional as there, and the
parameter counts are the paper's: 269,722 (ResNet-20) and 853,018 (ResNet-56) at 10 classes. The
published weights expect inputs normalized with ImageNet statistics, which the registry declares
(``BuiltinArch.normalization``), so ``--normalize auto`` uses them for this family.

What is prunable (``demp inspect`` on the published ResNet-20 with 2,000 CIFAR-10 JPEG training images):
torch-pruning traces the padded shortcut as an element-wise op, so it joins the three residual streams
(written by the stem's ``conv1``/``bn1`` and every block's ``conv2``/``bn2``, read by every block's ``conv1``
and the classifier) into one 16-channel group rooted at ``conv1``, with index maps that ignore the padding
offset. The analyzer blocks that group (:func:`compressor.graph.tp_compat.channel_padding`: a removal
across the pad would cut the wrong channels), so the residual streams are never pruned; none of their
channels is dead there anyway. The block-internal channels, each block's ``conv1``/``bn1`` outputs read
only by its ``conv2``, are ordinary groups and prunable: 13 of their 336 channels are dead (2 of 16 in
``layer1.0`` and ``layer1.2``, 2 and 1 of 32 in ``layer2.1`` and ``layer2.2``, 2, 3 and 1 of 64 in
``layer3.0``..``layer3.2``), which is what ``demp compress`` removes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .spec import require_image

__all__ = ["PadShortcut", "BasicBlockA", "ResNetCifarA", "DEPTHS", "build_resnet20_cifar_a",
           "build_resnet32_cifar_a", "build_resnet44_cifar_a", "build_resnet56_cifar_a", "build_resnet110_cifar_a"]

#: The three stages' widths (the paper's 16/32/64).
WIDTHS = (16, 32, 64)
#: Blocks per stage of each depth (depth = 6 n + 2).
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class PadShortcut(nn.Module):
    """Option A: subsample by 2 (``x[:, :, ::2, ::2]``) and zero-pad ``pad`` channels before and after.

    A module rather than akamaster's lambda, so the model pickles and deep-copies and the analyzer can
    name the construct.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlockA(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the identity or :class:`PadShortcut`, then ReLU (akamaster's names)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifarA(nn.Module):
    """He et al.'s CIFAR ResNet of depth ``6 * blocks + 2`` with option-A shortcuts (akamaster's layout)."""

    def __init__(self, blocks: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        stages = []
        in_planes = WIDTHS[0]
        for i, planes in enumerate(WIDTHS):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlockA(in_planes, planes, 2 if (i > 0 and b == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(WIDTHS[-1], num_classes)
        for module in self.modules():  # akamaster's _weights_init
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _build(depth: int, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    require_image(input_shape, f"resnet{depth}-cifar-a")
    return ResNetCifarA(DEPTHS[depth], num_classes, input_shape[0])


def build_resnet20_cifar_a(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """ResNet-20, option A (3 blocks per stage; 269,722 parameters at 10 classes)."""
    return _build(20, num_classes, input_shape)


def build_resnet32_cifar_a(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """ResNet-32, option A (5 blocks per stage; 464,154 parameters at 10 classes)."""
    return _build(32, num_classes, input_shape)


def build_resnet44_cifar_a(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """ResNet-44, option A (7 blocks per stage; 658,586 parameters at 10 classes)."""
    return _build(44, num_classes, input_shape)


def build_resnet56_cifar_a(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """ResNet-56, option A (9 blocks per stage; 853,018 parameters at 10 classes)."""
    return _build(56, num_classes, input_shape)


def build_resnet110_cifar_a(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """ResNet-110, option A (18 blocks per stage; 1,727,962 parameters at 10 classes)."""
    return _build(110, num_classes, input_shape)
