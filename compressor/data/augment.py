"""The training augmentation of the image datasets: a CIFAR-style random crop + flip, and its description."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["crop_flip_augment", "augmentation"]


def crop_flip_augment(size: int | tuple[int, int], *, flip: bool) -> tuple[Callable[[Tensor], Tensor], str]:
    """The training augmentation of every in-memory image dataset, and its description.

    A random crop of ``size`` (``side`` or ``(height, width)``) from the image zero-padded by
    ``max(1, round(min side / 8))`` pixels on each border (4 at 32, the CIFAR setting of papers 000/002;
    8 at 64, the VGG-16 recipes' input after paper 000's appendix J.2 resize), plus a random horizontal
    flip for natural images (``flip``; never for digits, which a mirror turns into other shapes). It runs
    after any resize to the model's input, so it follows the recipe at every input size.
    """
    from torchvision import transforms

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    pad = max(1, round(min(h, w) / 8))
    steps: list[Any] = [transforms.RandomCrop((h, w), padding=pad)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps), f"random {h}x{w} crop with {pad}-pixel padding" + (
        " + horizontal flip" if flip else "")


def augmentation(name: str, augment: bool, side: int | tuple[int, int] | None, *,
                 flip: bool) -> tuple[Callable[[Tensor], Tensor] | None, dict[str, str]]:
    """The training transform (None without ``augment``) and the bundle ``info`` entry that names it;
    ``side`` None: the data are not images, and a requested augmentation is refused with a warning."""
    if not augment:
        return None, {}
    if side is None:
        log.warning("%s: the arrays are not images (N x C x H x W), so train.augment has nothing to apply", name)
        return None, {}
    transform, text = crop_flip_augment(side, flip=flip)
    log.info("%s: training augmentation: %s", name, text)
    return transform, {"augment": text}
