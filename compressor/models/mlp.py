"""``mlp``: Flatten, then Linear + activation per width, then a Linear classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["ACTIVATIONS", "MLP", "build_mlp"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}



class MLP(nn.Module):
    """Flatten -> [Linear -> activation] x len(widths) -> Linear classifier."""

    def __init__(self, in_features: int, num_classes: int, widths: Sequence[int], activation: str) -> None:
        super().__init__()
        self.flatten = nn.Flatten(1)
        layers: list[nn.Module] = []
        width_in = in_features
        for width in widths:
            layers += [nn.Linear(width_in, int(width)), ACTIVATIONS[activation]()]
            width_in = int(width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.flatten(x)))


def build_mlp(
    num_classes: int, input_shape: Sequence[int], *, widths: Sequence[int] = (256, 256), activation: str = "relu"
) -> nn.Module:
    """MLP on the flattened input (``prod(input_shape)`` features)."""
    if activation not in ACTIVATIONS:
        raise UsageError(f"mlp activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if not widths or any(int(w) < 1 for w in widths):
        raise UsageError(f"mlp widths must be a non-empty list of positive ints, got {list(widths)}")
    in_features = 1
    for dim in input_shape:
        in_features *= int(dim)
    return MLP(in_features, num_classes, [int(w) for w in widths], activation)
