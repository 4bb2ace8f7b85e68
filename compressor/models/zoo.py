"""Every classification model of ``torchvision.models`` by name, built with ``weights=None``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import UsageError
from .spec import ModelSpec

__all__ = ["torchvision_archs", "torchvision_spec", "check_min_size", "build_torchvision", "TIMM_PREFIX", "timm_name",
           "check_timm_arch", "timm_spec", "build_timm"]

#: Archs whose ``weights.meta["min_size"]`` is a hard structural minimum (verified); for the others
#: (ViT, MaxViT, Swin, EfficientNetV2) it only describes the pretrained resolution.
_MIN_SIZE_FROM_META = ("alexnet", "inception", "googlenet", "squeezenet", "densenet", "vgg", "convnext")


@functools.lru_cache(maxsize=1)
def torchvision_archs() -> tuple[str, ...]:
    """Names of torchvision's classification models."""
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def torchvision_spec(arch: str, *, num_classes: int | None, input_size: int | None,
                     input_shape: Sequence[int] | None, kwargs: dict[str, Any]) -> ModelSpec:
    """The spec of torchvision classifier ``arch``: 3xSxS inputs (S = ``input_size``, default 224, 299 for
    inception_v3), 1000 classes by default, aux classifiers off."""
    if input_shape is None:
        size = int(input_size or (299 if arch == "inception_v3" else 224))
        input_shape = (3, size, size)
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise UsageError(f"torchvision model {arch} takes 3-channel images (3, H, W); got input shape {input_shape}")
    check_min_size(arch, input_shape)
    if arch in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
    return ModelSpec(arch, int(num_classes or 1000), input_shape, kwargs)


def check_min_size(arch: str, input_shape: tuple[int, ...]) -> None:
    """Refuse an input smaller than the architecture can take (a clear error instead of a shape crash)."""
    if not arch.startswith(_MIN_SIZE_FROM_META):
        return
    import torchvision.models as tvm

    sizes = [w.meta.get("min_size") for w in tvm.get_model_weights(arch)]
    sizes = [s for s in sizes if s]
    if not sizes:
        return
    min_h, min_w = min(s[0] for s in sizes), min(s[1] for s in sizes)
    if input_shape[1] < min_h or input_shape[2] < min_w:
        raise UsageError(
            f"{arch} needs inputs of at least {min_h}x{min_w} pixels, got {input_shape[1]}x{input_shape[2]}; "
            f"pass --input-size {max(min_h, min_w)} or larger (resize your data to match)"
        )


def build_torchvision(spec: ModelSpec) -> nn.Module:
    """Build a torchvision classifier for ``spec`` (input size passed where the architecture needs it)."""
    import torchvision.models as tvm

    kwargs = dict(spec.kwargs)
    size = spec.input_shape[1]
    if spec.arch.startswith("vit_"):
        if spec.input_shape[1] != spec.input_shape[2]:
            raise UsageError(f"{spec.arch} needs square inputs, got {spec.input_shape}")
        kwargs.setdefault("image_size", size)
    elif spec.arch.startswith("maxvit"):
        kwargs.setdefault("input_size", [spec.input_shape[1], spec.input_shape[2]])
    if spec.arch in ("googlenet", "inception_v3"):
        kwargs.setdefault("init_weights", True)  # silences torchvision's init-change warning
    try:
        return tvm.get_model(spec.arch, weights=None, num_classes=spec.num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise UsageError(
            f"cannot build {spec.arch} with options {spec.kwargs} for input {spec.input_shape}: {exc}"
        ) from exc


# ------------------------------------------------------------------------------------------- timm
TIMM_PREFIX = "timm:"


def timm_name(arch: str) -> str | None:
    """``NAME`` of ``timm:NAME``, else None."""
    return arch[len(TIMM_PREFIX):].strip() if arch.startswith(TIMM_PREFIX) else None


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UsageError("--arch timm:NAME needs timm: pip install timm (or pip install 'demp[timm]')") from None
    return timm


def check_timm_arch(arch: str) -> str:
    """``timm:NAME`` if timm has a model NAME (UsageError naming close matches otherwise)."""
    import difflib

    name = timm_name(arch) or ""
    names = _timm().list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        raise UsageError(f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                         "; see timm.list_models()"))
    return TIMM_PREFIX + name


def timm_spec(arch: str, *, num_classes: int | None, input_size: int | None, input_shape: Sequence[int] | None,
              kwargs: dict[str, Any]) -> ModelSpec:
    """The spec of timm model ``timm:NAME``: its default input size unless ``input_size`` (models built
    for a fixed size, like ViTs, get ``img_size``), 1000 classes by default."""
    name = timm_name(arch) or ""
    if input_shape is None:
        if input_size is None:
            cfg = _timm().models.get_pretrained_cfg(name)
            size = int((getattr(cfg, "input_size", None) or (3, 224, 224))[-1])
        else:
            size = int(input_size)
        input_shape = (3, size, size)
    return ModelSpec(arch, int(num_classes or 1000), tuple(int(d) for d in input_shape), dict(kwargs))


def build_timm(spec: ModelSpec) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False, num_classes=...)``; a model that cannot run at the spec's
    input size is built again with ``img_size`` (ViT-style models fix their size at construction)."""
    import torch

    timm = _timm()
    name = timm_name(spec.arch) or ""
    kwargs = dict(spec.kwargs)
    model = timm.create_model(name, pretrained=False, num_classes=spec.num_classes, **kwargs)
    if "img_size" in kwargs or torch.empty(0).device.type == "meta":  # meta: built only to read shapes
        return model
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *spec.input_shape))
    except Exception:  # noqa: BLE001 - a model built for a fixed size: build it for this one
        try:
            model = timm.create_model(name, pretrained=False, num_classes=spec.num_classes,
                                      img_size=spec.input_shape[1], **kwargs)
        except TypeError as exc:
            raise UsageError(f"timm model {name} cannot take {spec.input_shape[1]}x{spec.input_shape[2]} inputs "
                             f"({exc}); pass its own --input-size") from None
    return model.train()
