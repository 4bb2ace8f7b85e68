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
* ``vgg16-cifar`` — VGG-16 (configuration D) with BatchNorm, global average pool and a small
  classifier (512 -> 512 -> classes), for 32x32 inputs;
* a user's own model: ``model_file="path/to/file.py:factory"``.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .checkpoint import find_classifier, load_weights, read_checkpoint
from .errors import CheckpointError, DempError, UsageError

log = logging.getLogger(__name__)

#: Archs whose ``weights.meta["min_size"]`` is a hard structural minimum (verified); for the others
#: (ViT, MaxViT, Swin, EfficientNetV2) it only describes the pretrained resolution.
_MIN_SIZE_FROM_META = ("alexnet", "inception", "googlenet", "squeezenet", "densenet", "vgg", "convnext")
#: Checkpoint key prefixes of the auxiliary classifiers of googlenet / inception_v3.
_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")
#: An unusual class count used to find the classifier layer of an architecture (see infer_num_classes).
_SENTINEL_CLASSES = 1013


# --------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """Everything needed to rebuild an architecture (not its weights). JSON round-trips exactly.

    ``model_file`` is ``"path.py:factory"`` for a user model (stored as an absolute path); ``arch`` is
    then a free label. ``input_shape`` excludes the batch dimension.
    """

    arch: str
    num_classes: int
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    model_file: str | None = None

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.kwargs = dict(self.kwargs or {})
        try:
            # Normalize (tuples -> lists) so that to_dict/from_dict round-trips compare equal.
            self.kwargs = json.loads(json.dumps(self.kwargs))
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"model kwargs for {self.arch!r} must be JSON values (numbers, strings, lists): {exc}"
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "kwargs": json.loads(json.dumps(self.kwargs)),
            "model_file": self.model_file,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        known = {"arch", "num_classes", "input_shape", "kwargs", "model_file"}
        unknown = sorted(set(data) - known)
        missing = sorted({"arch", "num_classes", "input_shape"} - set(data))
        if unknown or missing:
            raise UsageError(
                f"invalid model spec: unknown keys {unknown} / missing keys {missing}; expected {sorted(known)}"
            )
        return cls(
            arch=str(data["arch"]),
            num_classes=int(data["num_classes"]),
            input_shape=tuple(data["input_shape"]),
            kwargs=dict(data.get("kwargs") or {}),
            model_file=data.get("model_file"),
        )


# --------------------------------------------------------------------------------------------------
# Built-in architectures
# --------------------------------------------------------------------------------------------------

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


class SmallCNN(nn.Module):
    """[Conv3x3 -> BN -> ReLU -> MaxPool2] per width, global average pool, Linear classifier.

    The max-pool is skipped once the feature map is smaller than 2x2, so the same network works on
    8x8 digits, 28x28 MNIST and 32x32 CIFAR.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int]) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, int(out_channels), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(out_channels)),
                nn.ReLU(),
            ]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = int(out_channels)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


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


def build_cnn(num_classes: int, input_shape: Sequence[int], *, channels: Sequence[int] = (32, 64)) -> nn.Module:
    """Small CNN; ``channels`` lists the width of each conv block."""
    _require_image(input_shape, "cnn")
    if not channels or any(int(c) < 1 for c in channels):
        raise UsageError(f"cnn channels must be a non-empty list of positive ints, got {list(channels)}")
    return SmallCNN(input_shape, num_classes, [int(c) for c in channels])


def build_resnet18_cifar(
    num_classes: int, input_shape: Sequence[int], *, zero_init_residual: bool = False
) -> nn.Module:
    """torchvision ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a 3x3/1 stem and no max-pool."""
    from torchvision.models.resnet import BasicBlock, ResNet

    _require_image(input_shape, "resnet18-cifar")
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, zero_init_residual=zero_init_residual)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def build_vgg16_cifar(num_classes: int, input_shape: Sequence[int], *, classifier_width: int = 512) -> nn.Module:
    """VGG-16-BN for 32x32 inputs; ``classifier_width=0`` gives a single Linear classifier."""
    _require_image(input_shape, "vgg16-cifar")
    return VGGCifar(input_shape[0], num_classes, int(classifier_width))


def _require_image(input_shape: Sequence[int], arch: str) -> None:
    if len(input_shape) != 3:
        raise UsageError(f"{arch} needs an image input shape (C, H, W), got {tuple(input_shape)}")


@dataclass(frozen=True)
class BuiltinArch:
    """A built-in architecture: its builder and defaults."""

    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int = 10


BUILTINS: dict[str, BuiltinArch] = {
    "mlp": BuiltinArch(build_mlp, (1, 8, 8)),
    "cnn": BuiltinArch(build_cnn, (1, 8, 8)),
    "resnet18-cifar": BuiltinArch(build_resnet18_cifar, (3, 32, 32)),
    "vgg16-cifar": BuiltinArch(build_vgg16_cifar, (3, 32, 32)),
}


@functools.lru_cache(maxsize=1)
def torchvision_archs() -> tuple[str, ...]:
    """Names of torchvision's classification models."""
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def list_archs() -> list[str]:
    """All architecture names ``arch`` accepts (built-ins first)."""
    return [*BUILTINS, *torchvision_archs()]


def canonical_arch(arch: str) -> str:
    """Resolve ``arch`` case-insensitively and with ``_``/``-`` interchangeable; UsageError if unknown."""
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
        "classification model; or your own with --model-file PATH.py:FACTORY)"
    )


# --------------------------------------------------------------------------------------------------
# Spec resolution and building
# --------------------------------------------------------------------------------------------------


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
        path, factory_name = _split_model_file(model_file)
        module = _import_model_file(path)
        if input_shape is None:
            declared = getattr(module, "INPUT_SHAPE", None)
            if declared is not None:
                input_shape = tuple(int(d) for d in declared)
            else:
                size = int(input_size or 224)
                input_shape = (3, size, size)
        return ModelSpec(
            arch=arch or f"custom:{factory_name}",
            num_classes=int(num_classes) if num_classes is not None else -1,
            input_shape=input_shape,
            kwargs=kwargs,
            model_file=f"{path}:{factory_name}",
        )

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

    # torchvision
    if input_shape is None:
        size = int(input_size or (299 if arch == "inception_v3" else 224))
        input_shape = (3, size, size)
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise UsageError(f"torchvision model {arch} takes 3-channel images (3, H, W); got input shape {input_shape}")
    _check_min_size(arch, input_shape)
    if arch in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
    return ModelSpec(arch, int(num_classes or 1000), input_shape, kwargs)


def _check_min_size(arch: str, input_shape: tuple[int, ...]) -> None:
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


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a freshly initialized model from ``spec`` and attach it as ``model.demp_spec``.

    Weights come from the global torch RNG: seed it (``torch.manual_seed``) for reproducibility.
    The model is returned in training mode, like any freshly constructed ``nn.Module``.
    """
    model = _instantiate(spec)
    if spec.num_classes < 0:  # user factory with its own default class count
        found = find_classifier(model)
        n = int(found[1].weight.shape[0]) if found is not None else 0
        spec = replace(spec, num_classes=n)
    model.demp_spec = spec
    return model


def _instantiate(spec: ModelSpec) -> nn.Module:
    if spec.model_file is not None:
        return _build_from_file(spec)
    if spec.arch in BUILTINS:
        builder = BUILTINS[spec.arch].builder
        accepted = [p for p in inspect.signature(builder).parameters if p not in ("num_classes", "input_shape")]
        unknown = sorted(set(spec.kwargs) - set(accepted))
        if unknown:
            raise UsageError(f"{spec.arch} does not take option(s) {unknown}; it accepts {accepted}")
        return builder(spec.num_classes, spec.input_shape, **spec.kwargs)
    if spec.arch in torchvision_archs():
        return _build_torchvision(spec)
    canonical_arch(spec.arch)  # raises the unknown-arch error
    raise UsageError(f"cannot build architecture {spec.arch!r}")  # pragma: no cover


def _build_torchvision(spec: ModelSpec) -> nn.Module:
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


# --------------------------------------------------------------------------------------------------
# User model files (--model-file PATH.py:FACTORY)
# --------------------------------------------------------------------------------------------------


def _split_model_file(model_file: str) -> tuple[str, str]:
    path, sep, name = str(model_file).rpartition(":")
    if not sep or not path or not name or not name.isidentifier():
        raise UsageError(
            f"--model-file {model_file!r} must be PATH.py:FACTORY, e.g. my_model.py:build_model "
            "(FACTORY is a function in that file that returns an nn.Module)"
        )
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise UsageError(f"model file {path} does not exist; check the --model-file path")
    return str(resolved.resolve()), name


_MODULE_CACHE: dict[tuple[str, int], Any] = {}


def _import_model_file(path: str) -> Any:
    """Import a user's Python file as a module. This EXECUTES the file's code, by design.

    The file's directory is on ``sys.path`` while it is imported, so it can import its neighbours.
    A file is imported once per modification time.
    """
    key = (path, os.stat(path).st_mtime_ns)
    if key in _MODULE_CACHE:
        return _MODULE_CACHE[key]
    module_name = "demp_user_model_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"model file {path} is not an importable Python file (it must end in .py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    parent = str(Path(path).parent)
    sys.path.insert(0, parent)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code failed: say where, keep the traceback chained
        sys.modules.pop(module_name, None)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
        where = f" (line {frames[-1].lineno})" if frames else ""
        raise DempError(f"importing model file {path} failed{where}: {type(exc).__name__}: {exc}") from exc
    finally:
        try:
            sys.path.remove(parent)
        except ValueError:
            pass
    _MODULE_CACHE[key] = module
    return module


def _build_from_file(spec: ModelSpec) -> nn.Module:
    assert spec.model_file is not None
    path, name = _split_model_file(spec.model_file)
    module = _import_model_file(path)
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        available = sorted(
            n for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise UsageError(
            f"model file {path} has no function {name!r}; functions defined there: {', '.join(available) or 'none'}"
        )
    kwargs = dict(spec.kwargs)
    if spec.num_classes >= 0 and _accepts(factory, "num_classes"):
        kwargs["num_classes"] = spec.num_classes
    try:
        model = factory(**kwargs)
    except Exception as exc:  # user code
        raise DempError(f"{path}:{name}({_fmt_kwargs(kwargs)}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"{path}:{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _fmt_kwargs(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


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
        _import_model_file(_split_model_file(spec.model_file)[0])  # import outside the meta context
    try:
        with torch.device("meta"):
            return _instantiate(spec)
    except Exception:  # e.g. regnet computes widths with tensor ops; meta tensors have no data
        return _instantiate(spec)


def load_model(
    arch: str | None,
    checkpoint: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    input_size: int | None = None,
    input_shape: Sequence[int] | None = None,
    model_file: str | None = None,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``arch`` and load ``checkpoint`` into it; returns the model in eval mode.

    * ``checkpoint`` None: a fresh model (seed ``torch.manual_seed`` first for reproducibility).
    * ``checkpoint`` a directory with ``plan.json``: a compressed model written by demp, loaded via
      :func:`compressor.pruned.load_pruned` (``arch`` and the other options are then ignored).
    * otherwise any format :func:`compressor.checkpoint.read_checkpoint` reads. When
      ``num_classes`` is None it is inferred from the checkpoint's classifier.
    * ``model_file="path.py:factory"`` builds a user model: **this imports and executes that
      Python file**, by design (like ``python path.py``); ``factory(num_classes=..., **kwargs)`` is
      called (``num_classes`` only if the factory accepts it). The file may set ``INPUT_SHAPE``.

    ``kwargs`` are builder options (e.g. ``widths=[512, 512]`` for ``mlp``).
    """
    if checkpoint is not None and Path(checkpoint).is_dir() and (Path(checkpoint) / "plan.json").is_file():
        from .pruned import load_pruned  # written by the core; imported lazily

        return load_pruned(checkpoint).model

    state_dict = read_checkpoint(checkpoint, trust_pickle=trust_pickle) if checkpoint is not None else None
    arch_name = canonical_arch(arch) if (arch and model_file is None) else arch
    if state_dict is not None and arch_name in ("googlenet", "inception_v3") and "aux_logits" not in kwargs:
        kwargs["aux_logits"] = any(k.startswith(_AUX_PREFIXES) for k in state_dict)
    spec = make_spec(
        arch_name, num_classes=num_classes, input_size=input_size, input_shape=input_shape,
        model_file=model_file, **kwargs,
    )
    if state_dict is not None and num_classes is None:
        inferred = infer_num_classes(spec, state_dict)
        if inferred is not None:
            if inferred != spec.num_classes:
                log.info("%s: %d classes (read from the checkpoint's classifier)", spec.arch, inferred)
            spec = replace(spec, num_classes=inferred)
        else:
            log.debug("could not infer the class count from %s; using %d", checkpoint, spec.num_classes)
    model = build_model(spec)
    if state_dict is not None:
        try:
            load_weights(model, state_dict)
        except CheckpointError as exc:
            raise CheckpointError(f"{checkpoint}: {exc}") from exc
    return model.eval()


def example_input(spec_or_model: ModelSpec | nn.Module, batch_size: int = 1) -> torch.Tensor:
    """A random input batch of the model's input shape (for tracing and export)."""
    spec = spec_or_model if isinstance(spec_or_model, ModelSpec) else getattr(spec_or_model, "demp_spec", None)
    if spec is None:
        raise UsageError("model has no demp_spec; build it with compressor.models.build_model/load_model")
    return torch.randn(batch_size, *spec.input_shape)
