"""Architectures: every torchvision classifier by name, small built-ins, and user factories.

An architecture is described by a :class:`ModelSpec` (name, number of classes, input shape, builder
keyword arguments, optional user model file). The spec is JSON-serializable and is stored in a
compressed model's ``plan.json``, so :func:`build_model` can rebuild exactly the same architecture
later. Like torchvision's ``models/``, builders are plain functions with explicit keyword arguments
and no hidden global state.

Architectures (``arch``):

* every classification model of ``torchvision.models`` (``resnet18``, ``mobilenet_v3_small``,
  ``vit_b_16``, ...), built with ``weights=None``; input ``(3, 224, 224)`` by default
  (``inception_v3``: 299), ``(3, S, S)`` with ``input_size=S``;
* ``mlp`` — Flatten, then Linear + activation per width (``widths=[256, 256]``,
  ``activation`` in relu/leaky_relu/gelu/silu/tanh), then a Linear classifier;
* ``cnn`` — small conv-BN-ReLU(-maxpool) CNN (``channels=(32, 64)``), global average pool, Linear;
  meant for 1x8x8 digits (the default input), 1x28x28 MNIST and 3x32x32 CIFAR;
* ``resnet18-cifar`` — ResNet-18 from torchvision's ``BasicBlock`` with a 3x3 stride-1 stem and no
  max-pool, for 32x32 inputs (the DemP papers' CIFAR network);
* ``resnet20-cifar`` / ``resnet56-cifar`` — He et al. (2016)'s CIFAR ResNets (3x3 stem, three stages of
  3 / 9 basic blocks with 16/32/64 channels, 1x1 conv + BN projection shortcuts where the shape changes);
* ``resnet20-cifar-a`` / ``resnet32-cifar-a`` / ``resnet44-cifar-a`` / ``resnet56-cifar-a`` /
  ``resnet110-cifar-a`` — the same networks with the paper's option-A (zero-padding) shortcuts and
  akamaster's module names, so the published CIFAR-10 checkpoints load; their data is normalized with
  ImageNet statistics under ``normalize="auto"``, as those weights expect;
* ``vgg16-cifar`` — VGG-16 (configuration D) with BatchNorm, global average pool and a small
  classifier (512 -> 512 -> classes), for 32x32 inputs;
* ``vit-tiny`` — a small pre-norm Vision Transformer (4x4 patches, class token, width 64, depth 4,
  4 heads, MLP ratio 2, ``activation`` relu/gelu) for 28x28 and 32x32 inputs; only its MLP hidden
  units are prunable (the residual stream and attention are blocked);
* a user's own model: ``model_file="path/to/file.py:factory"`` (:mod:`.user_file`).

Modules: :mod:`.spec` (:class:`ModelSpec`), :mod:`.registry` (names, :func:`make_spec`,
:func:`build_model`), one module per built-in family (:mod:`.mlp`, :mod:`.cnn`, :mod:`.resnet_cifar`,
:mod:`.resnet_cifar_he`, :mod:`.resnet_cifar_a`, :mod:`.vgg_cifar`, :mod:`.vit`), :mod:`.zoo` (torchvision),
:mod:`.user_file`. Loading a checkpoint into a model is :func:`compressor.loading.load_model`.
"""

from __future__ import annotations

from .cnn import SmallCNN, build_cnn
from .mlp import ACTIVATIONS, MLP, build_mlp
from .registry import (
    BUILTINS,
    BuiltinArch,
    build_model,
    canonical_arch,
    data_normalization,
    example_input,
    infer_num_classes,
    list_archs,
    make_spec,
)
from .resnet_cifar import build_resnet18_cifar
from .resnet_cifar_a import ResNetCifarA
from .resnet_cifar_he import CifarResNet, build_resnet20_cifar, build_resnet56_cifar
from .spec import ModelSpec
from .vgg_cifar import VGGCifar, build_vgg16_cifar
from .vit import VisionTransformer, build_vit_tiny
from .zoo import torchvision_archs

__all__ = [
    "ModelSpec", "BuiltinArch", "BUILTINS", "build_model", "make_spec", "canonical_arch", "list_archs",
    "infer_num_classes", "example_input", "data_normalization", "torchvision_archs", "ACTIVATIONS", "MLP",
    "SmallCNN", "VGGCifar", "VisionTransformer", "CifarResNet", "ResNetCifarA", "build_mlp", "build_cnn",
    "build_resnet18_cifar", "build_resnet20_cifar", "build_resnet56_cifar", "build_vgg16_cifar", "build_vit_tiny",
]
