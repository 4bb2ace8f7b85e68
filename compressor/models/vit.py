"""``vit-tiny``: a small pre-norm Vision Transformer for 28x28 MNIST and 32x32 CIFAR.

Synaptic Stripping (Whitaker & Whitley 2023, seed paper 003) trains a ReLU ViT on CIFAR-10 (an
omihub777/ViT-CIFAR network: 4x4 patches of a 32x32 image, a class token, 7 pre-norm encoder layers
of width 384 with 8 heads, MLP expansion 4) and strips only the hidden units of the MLP blocks: "we do
not prune any of the attention modules". The later DemP paper applies DemP to transformer-like models
whose MLPs use GELU. This module builds that family at a CPU-friendly default size (width 64, depth 4,
4 heads, MLP ratio 2); the paper's network is ``dim=384, depth=7, heads=8, mlp_ratio=4,
activation=relu``.

Structure, and what demp's analyzer (:mod:`compressor.graph`) makes of it:

* patch embedding: ``Conv2d(C, dim, kernel=stride=patch)``, flattened to ``(B, N, dim)`` tokens;
* a learned class token (the ViT and ViT-CIFAR convention; the head reads its final state) and learned
  position embeddings for ``1 + (H/patch) * (W/patch)`` tokens, sized from the input shape;
* ``depth`` pre-norm blocks ``x = x + attn(LN(x)); x = x + mlp(LN(x))`` with
  ``nn.MultiheadAttention(batch_first=True)`` and ``mlp = fc1 -> activation -> fc2``;
* a final LayerNorm and a Linear head on the class token.

The embedding width (the residual stream: patch embedding, class token, position embedding, every
LayerNorm, attention projections, ``fc2`` and the head's input) is one coupling group that the analyzer
blocks (LayerNorm mixes its channels, MultiheadAttention's inputs are not measured), and attention heads
are never pruned. The only prunable neurons are the MLP hidden units, the outputs of each block's
``mlp.fc1``, read by ``mlp.fc2`` alone: removing dead ones is lossless.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UsageError
from .spec import require_image

__all__ = ["VIT_ACTIVATIONS", "FeedForward", "EncoderBlock", "VisionTransformer", "build_vit_tiny"]

#: MLP activations: ReLU (paper 003's Synaptic Stripping setting, neurons can die) or GELU (the ViT default).
VIT_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class FeedForward(nn.Module):
    """The block's MLP: ``fc1`` (dim -> hidden) -> activation -> ``fc2`` (hidden -> dim).

    ``fc1``'s outputs are the block's prunable neurons; ``fc2`` writes back into the residual stream.
    """

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = VIT_ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, hidden, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding + class token + position embeddings, pre-norm blocks, LayerNorm, Linear head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, patch_size: int, dim: int, depth: int,
                 heads: int, mlp_ratio: float, activation: str) -> None:
        super().__init__()
        in_channels, height, width = (int(d) for d in input_shape)
        num_patches = (height // patch_size) * (width // patch_size)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, hidden, activation) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm/torchvision-style: truncated-normal embeddings and Linear weights, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0])


def build_vit_tiny(
    num_classes: int,
    input_shape: Sequence[int],
    *,
    patch_size: int = 4,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    activation: str = "gelu",
) -> nn.Module:
    """Small ViT; ``activation`` (``relu`` | ``gelu``) is the MLP blocks' nonlinearity.

    The image side lengths must be multiples of ``patch_size`` and ``dim`` a multiple of ``heads``.
    """
    require_image(input_shape, "vit-tiny")
    if activation not in VIT_ACTIVATIONS:
        raise UsageError(f"vit-tiny activation {activation!r} is not one of {', '.join(VIT_ACTIVATIONS)}")
    for name, value in (("patch_size", patch_size), ("dim", dim), ("depth", depth), ("heads", heads)):
        if int(value) != value or int(value) < 1:
            raise UsageError(f"vit-tiny {name} must be a positive int, got {value!r}")
    if not float(mlp_ratio) > 0:
        raise UsageError(f"vit-tiny mlp_ratio must be positive, got {mlp_ratio!r}")
    _, height, width = (int(d) for d in input_shape)
    if height % int(patch_size) or width % int(patch_size):
        raise UsageError(f"vit-tiny needs image sides divisible by patch_size={patch_size}, got {height}x{width}")
    if int(dim) % int(heads):
        raise UsageError(f"vit-tiny dim={dim} must be divisible by heads={heads}")
    return VisionTransformer(input_shape, num_classes, patch_size=int(patch_size), dim=int(dim), depth=int(depth),
                             heads=int(heads), mlp_ratio=float(mlp_ratio), activation=activation)
