"""The architecture registry: names to builders, spec resolution, and :func:`build_model`.

Like torchvision's ``models/``, builders are plain functions with explicit keyword arguments and no
hidden global state; a built-in architecture is one entry in :data:`BUILTINS`.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..weight_files import find_classifier
from .cnn import build_cnn
from .mlp import build_mlp
from .resnet_cifar import build_resnet18_cifar
from .resnet_cifar_a import (
    build_resnet20_cifar_a,
    build_resnet32_cifar_a,
    build_resnet44_cifar_a,
    build_resnet56_cifar_a,
    build_resnet110_cifar_a,
)
from .resnet_cifar_he import build_resnet20_cifar, build_resnet56_cifar
from .spec import ModelSpec
from .user_file import (
    build_from_file,
    import_model_file,
    spec_from_file,
    split_model_file,
)
from .vgg_cifar import build_vgg16_cifar
from .vit import build_vit_tiny
from .zoo import (
    build_timm,
    build_torchvision,
    check_timm_arch,
    timm_name,
    timm_spec,
    torchvision_archs,
    torchvision_spec,
)

__all__ = ["BuiltinArch", "BUILTINS", "list_archs", "canonical_arch", "make_spec", "build_model",
           "infer_num_classes", "example_input", "data_normalization"]

log = logging.getLogger(__name__)

#: An unusual class count used to find the classifier layer of an architecture (see infer_num_classes).
_SENTINEL_CLASSES = 1013


@dataclass(frozen=True)
class BuiltinArch:
    """A built-in architecture: its builder and defaults.

    ``normalization`` names the input statistics its published weights expect (a ``normalize`` value of
    :func:`compressor.data.load_data`, e.g. ``"imagenet"``); ``normalize="auto"`` then uses them for this
    architecture (:func:`data_normalization`). None: the data's own statistics.
    """

    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int = 10
    normalization: str | None = None


BUILTINS: dict[str, BuiltinArch] = {
    "mlp": BuiltinArch(build_mlp, (1, 8, 8)),
    "cnn": BuiltinArch(build_cnn, (1, 8, 8)),
    "resnet18-cifar": BuiltinArch(build_resnet18_cifar, (3, 32, 32)),
    "resnet20-cifar": BuiltinArch(build_resnet20_cifar, (3, 32, 32)),
    "resnet56-cifar": BuiltinArch(build_resnet56_cifar, (3, 32, 32)),
    # option A, akamaster's published CIFAR-10 weights: trained on ImageNet-normalized inputs
    "resnet20-cifar-a": BuiltinArch(build_resnet20_cifar_a, (3, 32, 32), normalization="imagenet"),
    "resnet32-cifar-a": BuiltinArch(build_resnet32_cifar_a, (3, 32, 32), normalization="imagenet"),
    "resnet44-cifar-a": BuiltinArch(build_resnet44_cifar_a, (3, 32, 32), normalization="imagenet"),
    "resnet56-cifar-a": BuiltinArch(build_resnet56_cifar_a, (3, 32, 32), normalization="imagenet"),
    "resnet110-cifar-a": BuiltinArch(build_resnet110_cifar_a, (3, 32, 32), normalization="imagenet"),
    "vgg16-cifar": BuiltinArch(build_vgg16_cifar, (3, 32, 32)),
    "vit-tiny": BuiltinArch(build_vit_tiny, (3, 32, 32)),
}


def list_archs() -> list[str]:
    """All architecture names ``arch`` accepts (built-ins first)."""
    return [*BUILTINS, *torchvision_archs()]


def canonical_arch(arch: str) -> str:
    """Resolve ``arch`` case-insensitively and with ``_``/``-`` interchangeable; UsageError if unknown."""
    if timm_name(arch) is not None:
        return check_timm_arch(arch)
    names = list_archs()
    if arch in names:
        return arch
    key = arch.strip().lower().replace("_", "-")
    matches = [n for n in names if n.lower().replace("_", "-") == key]
    if len(matches) == 1:
        return matches[0]
    close = difflib.get_close_matches(arch.lower(), names, n=6, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see docs/models-data.md for the list"
    raise UsageError(
        f"unknown architecture {arch!r}; {hint} (built-ins: {', '.join(BUILTINS)}; any torchvision "
        "classification model; timm:NAME for a timm model; or your own with --model-file PATH.py:FACTORY)"
    )


def data_normalization(arch: str | None, normalize: str | None = "auto") -> str:
    """The ``normalize`` value to load data with for ``arch``: ``normalize`` itself unless it is ``auto``
    (or None) and ``arch`` is a built-in that declares the statistics its published weights expect
    (:attr:`BuiltinArch.normalization`); then those, with an INFO line saying why."""
    normalize = normalize or "auto"
    if normalize.strip().lower() != "auto" or not arch:
        return normalize
    entry = BUILTINS.get(arch.strip().lower().replace("_", "-"))
    if entry is None or entry.normalization is None:
        return normalize
    log.info("normalize auto: %s statistics for --arch %s (the statistics its published weights were trained "
             "with); pass --normalize (data.normalize) to choose others", entry.normalization, arch)
    return entry.normalization


def make_spec(
    arch: str | None,
    *,
    num_classes: int | None = None,
    input_size: int | None = None,
    input_shape: Sequence[int] | None = None,
    model_file: str | None = None,
    **kwargs: Any,
) -> ModelSpec:
    """Fill in defaults and validate: the spec that :func:`build_model` will build.

    ``num_classes=None`` means the architecture's default (1000 for torchvision, 10 for the
    built-ins; a user factory's own default, found after building).
    """
    if input_size is not None and int(input_size) < 1:
        raise UsageError(f"--input-size must be a positive int, got {input_size}")
    if num_classes is not None and int(num_classes) < 1:
        raise UsageError(f"--num-classes must be a positive int, got {num_classes}")
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d < 1 for d in input_shape):
            raise UsageError(f"input shape must be positive ints, got {input_shape}")

    if model_file is not None:
        return spec_from_file(model_file, arch=arch, num_classes=num_classes, input_size=input_size,
                              input_shape=input_shape, kwargs=kwargs)
    if not arch:
        raise UsageError("no architecture given; pass --arch NAME (or --model-file PATH.py:FACTORY)")
    arch = canonical_arch(arch)
    if arch in BUILTINS:
        entry = BUILTINS[arch]
        if input_shape is None:
            input_shape = entry.input_shape
            if input_size is not None:
                input_shape = (entry.input_shape[0], int(input_size), int(input_size))
        return ModelSpec(arch, int(num_classes or entry.num_classes), input_shape, kwargs)

    if timm_name(arch) is not None:
        return timm_spec(arch, num_classes=num_classes, input_size=input_size, input_shape=input_shape, kwargs=kwargs)
    return torchvision_spec(arch, num_classes=num_classes, input_size=input_size, input_shape=input_shape,
                            kwargs=kwargs)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a freshly initialized model from ``spec`` and attach it as ``model.demp_spec``.

    Weights come from the global torch RNG: seed it (``torch.manual_seed``) for reproducibility.
    The model is returned in training mode, like any freshly constructed ``nn.Module``.
    """
    model = _instantiate(spec)
    if spec.num_classes < 0:  # user factory with its own default class count
        found = find_classifier(model)
        n = int(found[1].get_parameter("weight").shape[0]) if found is not None else 0
        spec = replace(spec, num_classes=n)
    model.demp_spec = spec  # type: ignore[assignment]  # demp's attribute; Module.__setattr__ is typed for tensors
    return model


def _instantiate(spec: ModelSpec) -> nn.Module:
    if spec.model_file is not None:
        return build_from_file(spec)
    if spec.arch in BUILTINS:
        builder = BUILTINS[spec.arch].builder
        accepted = [p for p in inspect.signature(builder).parameters if p not in ("num_classes", "input_shape")]
        unknown = sorted(set(spec.kwargs) - set(accepted))
        if unknown:
            raise UsageError(f"{spec.arch} does not take option(s) {unknown}; it accepts {accepted}")
        return builder(spec.num_classes, spec.input_shape, **spec.kwargs)
    if spec.arch in torchvision_archs():
        return build_torchvision(spec)
    if timm_name(spec.arch) is not None:
        return build_timm(spec)
    canonical_arch(spec.arch)  # raises the unknown-arch error
    raise UsageError(f"cannot build architecture {spec.arch!r}")  # pragma: no cover


def infer_num_classes(spec: ModelSpec, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The class count a checkpoint was trained for, read from its classifier's weight.

    Builds the architecture once (cheaply, on the meta device when possible) with an unusual class
    count to find which layer is the classifier (the last layer with that many outputs; else the
    last Linear, or the last conv for SqueezeNet-style heads), then reads the first dimension of
    that layer's weight in ``state_dict``. None if the checkpoint has no such key.
    """
    probe_spec = replace(spec, num_classes=_SENTINEL_CLASSES)
    probe = _instantiate_cheaply(probe_spec)
    candidates = [
        name for name, module in probe.named_modules()
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.weight.shape[0] == _SENTINEL_CLASSES
    ]
    if candidates:
        name = candidates[-1]
    else:
        found = find_classifier(probe)
        if found is None:
            return None
        name = found[0]
    weight = state_dict.get(f"{name}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None


def _instantiate_cheaply(spec: ModelSpec) -> nn.Module:
    """Build on the meta device (no memory, no init cost); fall back to CPU if a builder needs data."""
    if spec.model_file is not None:
        import_model_file(split_model_file(spec.model_file)[0])  # import outside the meta context
    try:
        with torch.device("meta"):
            return _instantiate(spec)
    except Exception:  # e.g. regnet computes widths with tensor ops; meta tensors have no data
        return _instantiate(spec)


def example_input(spec_or_model: ModelSpec | nn.Module, batch_size: int = 1) -> torch.Tensor:
    """A random input batch of the model's input shape (for tracing and export)."""
    spec = spec_or_model if isinstance(spec_or_model, ModelSpec) else getattr(spec_or_model, "demp_spec", None)
    if spec is None:
        raise UsageError("model has no demp_spec; build it with compressor.models.build_model/load_model")
    return torch.randn(batch_size, *spec.input_shape)
