"""Training recipes: YAML files that map one-to-one onto dataclass configs.

A recipe is a YAML mapping with the sections of :class:`RecipeConfig`::

    method: demp                 # a name of compressor.training.methods.METHODS, a combination, or none
    model: {arch: cnn, kwargs: {}}
    data:  {spec: digits, batch_size: 64}
    train: {epochs: 10, optimizer: adam, lr: 1.0e-3, lr_schedule: cosine}
    demp:  {regularizer: lasso, target: norm_scale, peak: 1.0e-3, interval: 50}
    export: {onnx: true}

Loading goes through :func:`yaml.safe_load` only. Every key must be a field of the matching dataclass
(an unknown key is a :class:`~compressor.errors.UsageError` that suggests the closest valid key),
every value must have the field's type (``1e-3`` written without a dot, which YAML 1.1 reads as a
string, is accepted for float fields), and out-of-range values are rejected by :func:`validate_recipe`
with a message naming the key, the value, and the valid range.

``--set a.b=value`` overrides (:func:`apply_overrides`) are applied to the raw mapping *before* it is
turned into dataclasses, so they get the same checks. :func:`recipe_diff` lists the dotted keys in
which two recipes differ; resuming a run refuses a recipe that differs in a key that changes the run.

The method sections (``demp``, ``stripping``, ...) come from the method registry
(:data:`compressor.training.methods.METHODS`): :class:`RecipeConfig` has one field per registered
method, holding that method's config dataclass, which validates itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..fileio import atomic_write_text
from .bounds import bounded, check_bounds, reject
from .methods import METHODS, method_names
from .methods.baseline import BaselineConfig
from .methods.demp import DemPConfig
from .methods.dnr import DNRConfig
from .methods.dormant import DormantConfig
from .methods.stripping import StrippingConfig

RECIPE_SCHEMA = "demp.recipe/1"

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "step", "multistep", "cosine", "one_cycle")
DEVICES = ("auto", "cpu", "cuda")

#: Keys that may differ between the recipe of an interrupted run and the one given to ``--resume``:
#: they change where files go or how the run is shown, never the numbers it produces.
RESUME_TOLERANT_KEYS = (
    "data.num_workers",
    "data.eval_batch_size",
    "train.checkpoint_keep",
    "train.log_every",
    "train.device",
    "export.",
    "name",
    "description",
)


@dataclass
class ModelConfig:
    """Which network to train (see :func:`compressor.models.build_model`)."""

    arch: str = bounded("cnn", text=True, what="an architecture name",
                        help="a built-in (\"mlp\", \"cnn\", \"resnet18-cifar\", \"vgg16-cifar\", \"vit-tiny\", ...: "
                             "docs/models-data.md) or a torchvision name")
    kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "passed to the architecture's builder"})
    num_classes: int | None = bounded(None, integer=True, low=2, nullable=True,
                                      help="default: the dataset's number of classes")
    checkpoint: str | None = field(default=None,
                                   metadata={"help": "optional starting weights (fine-tune with DemP); safetensors or "
                                                     "state dict"})
    model_file: str | None = field(default=None,
                                   metadata={"help": "optional user factory file (see compressor.models)"})


@dataclass
class DataConfig:
    """Which data to train on and how it is batched (see :func:`compressor.data.load_data`)."""

    spec: str = bounded("digits", text=True, what="a dataset spec such as digits or cifar10:/data/cifar",
                        help="\"digits\", \"mnist:ROOT\", \"cifar10:ROOT\", \"imagefolder:PATH\", \"npz:PATH\", ...")
    input_size: int | None = bounded(None, integer=True, low=1, nullable=True,
                                     help="resize images to this side length (None: the dataset's own)")
    normalize: str = field(default="auto",
                           metadata={"help": "input statistics: auto | imagenet | cifar10 | cifar100 | mnist | "
                                             "\"M1,M2,M3/S1,S2,S3\"; auto: those the architecture's published weights "
                                             "expect (resnet*-cifar-a: imagenet), else the dataset's own"})
    batch_size: int = bounded(128, integer=True, low=1, help="training batch size")
    eval_batch_size: int | None = bounded(None, integer=True, low=1, nullable=True, help="None: 2 x batch_size")
    num_workers: int = bounded(0, integer=True, low=0,
                               help="DataLoader worker processes (0: load in the training process)")
    drop_last: bool = field(default=True,
                            metadata={"help": "drop the last incomplete training batch (keeps BatchNorm batches >= 2)"})
    val_samples: int = bounded(0, integer=True, low=0, note="0: no validation split",
                               help="training samples held out as a validation split (never trained on): death, "
                                    "dormancy and importance are measured there and val accuracy is logged per epoch; "
                                    "0: measure on held-aside training samples")


@dataclass
class TrainConfig:
    """The optimization recipe. Epoch-valued fields (``step_size``, ``milestones``, ``warmup_epochs``)
    are converted to optimizer steps with the number of batches per epoch."""

    epochs: int | float = bounded(10, low=0, low_open=True, note="a fraction trains part of an epoch",
                                  help="training epochs (> 0; a fraction such as 0.2 trains that share of an epoch: "
                                       "the run takes round(epochs x batches per epoch) optimizer steps)")
    optimizer: str = bounded("adam", choices=OPTIMIZERS, help="adam | adamw | sgd")
    lr: float = bounded(1e-3, low=0, low_open=True, help="learning rate (peak lr for one_cycle)")
    momentum: float = bounded(0.9, low=0, high=1, high_open=True, help="sgd only")
    nesterov: bool = field(default=False, metadata={"help": "sgd only"})
    betas: list[float] = bounded(default_factory=lambda: [0.9, 0.999], each=True, length=2, low=0, high=1,
                                 high_open=True, help="adam/adamw")
    adam_eps: float = bounded(1e-8, low=0, low_open=True,
                              help="adam/adamw epsilon (it matters for neuron death: paper 000, appendix E)")
    weight_decay: float = bounded(0.0, low=0,
                                  help="coupled (adam, sgd) or decoupled (adamw) decay, beside DemP's penalty")
    lr_schedule: str = bounded("constant", choices=LR_SCHEDULES,
                               help="constant | step | multistep | cosine | one_cycle")
    step_size: int = bounded(30, integer=True, low=1, note="epochs", help="step: decay every step_size epochs")
    gamma: float = bounded(0.1, low=0, low_open=True, high=1,
                           help="step / multistep: multiply the lr by gamma at each decay")
    milestones: list[int] = bounded(default_factory=list, each=True, integer=True, low=1,
                                    help="multistep: epochs at which to decay")
    min_lr_factor: float = bounded(0.0, low=0, high=1, help="cosine: final lr = lr * min_lr_factor")
    pct_start: float = bounded(0.3, low=0, low_open=True, high=1, high_open=True,
                               help="one_cycle: fraction of the steps spent rising")
    div_factor: float = bounded(25.0, low=1, help="one_cycle: initial lr = lr / div_factor")
    final_div_factor: float = bounded(1e4, low=1, help="one_cycle: final lr = initial lr / final_div_factor")
    warmup_epochs: float = bounded(0.0, low=0, help="linear warm-up from 0, composed with any schedule above")
    label_smoothing: float = bounded(0.0, low=0, high=1, high_open=True, help="cross-entropy label smoothing in [0, 1)")
    augment: bool = field(default=False,
                          metadata={"help": "random crop with side/8 padding (+ horizontal flip for colour images) at "
                                            "the input size; large-image folders: random-resized crop + flip"})
    grad_clip: float | None = bounded(None, low=0, low_open=True, nullable=True,
                                      help="clip the global gradient norm to this value")
    seed: int = bounded(0, integer=True, low=0,
                        help="seeds python, numpy, torch, the shuffling order and the death-sample choice")
    device: str = bounded("auto", choices=DEVICES, help="auto | cpu | cuda")
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (ignored on CPU)"})
    checkpoint_keep: int = bounded(2, integer=True, low=1, help="keep the last N epoch checkpoints")
    log_every: int = bounded(20, integer=True, low=1, help="optimizer steps between interval records in metrics.jsonl")


@dataclass
class ExportConfig:
    """What happens after training: the compact model is always saved (plan.json +
    weights.safetensors); these options control the ONNX export and report of ``demp train``."""

    onnx: bool = field(default=True,
                       metadata={"help": "export model.onnx, report.json, report.md through exporters.pipeline"})
    latency: bool = field(default=True, metadata={"help": "measure dense vs compact latency in the report"})
    batch_sizes: list[int] = bounded(default_factory=lambda: [1], each=True, nonempty=True, integer=True, low=1,
                                     help="latency batch sizes")
    opset: int | None = bounded(None, integer=True, low=7, nullable=True, what="an ONNX opset >= 7",
                                help="ONNX opset (None: the exporter's default)")
    threads: int = bounded(1, integer=True, low=1,
                           help="intra-op threads while timing (1: demp's timing policy, see docs/exporters.md)")
    # The same settings as `demp compress --quantize` (exporters.quantize.QuantizeConfig checks them again).
    quantize: str | None = bounded(None, choices=("int8",), nullable=True,
                                   help="int8: also write model.int8.onnx (onnxruntime static quantization), shipped "
                                   "if it agrees with model.onnx on held-out training samples")
    quantize_exclude: list[str] = bounded(default_factory=list, each=True, text=True,
                                          help="operator types, ONNX node names or module names kept in float")
    quantize_max_disagreement: float = bounded(0.01, low=0, high=1,
                                               help="ship int8 only if its top-1 class differs on at most this share "
                                               "of the held-out samples")


@dataclass
class RecipeConfig:
    """A whole training recipe (see the module docstring): run settings, one section per registered
    method (:data:`~compressor.training.methods.METHODS`; checked below), export, labels."""

    method: str = bounded("demp", choices=method_names(),
                          help=f"{' | '.join(method_names())} (none: plain training)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    demp: DemPConfig = field(default_factory=DemPConfig)
    stripping: StrippingConfig = field(default_factory=StrippingConfig)
    dnr: DNRConfig = field(default_factory=DNRConfig)
    dormant: DormantConfig = field(default_factory=DormantConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    name: str | None = field(default=None, metadata={"help": "a label for reports"})
    description: str | None = field(default=None, metadata={"help": "free text"})

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (YAML/JSON-safe) that :func:`recipe_from_dict` turns back into this recipe."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def save(self, path: str | Path) -> Path:
        """Write the recipe as YAML, atomically."""
        return atomic_write_text(path, self.to_yaml())

    def method_sections(self) -> list[str]:
        """The registered methods this recipe runs, in hook order ([] for plain training)."""
        return [] if self.method == "none" else self.method.split("+")


def _check_method_sections() -> None:
    """Every registered method has its section in :class:`RecipeConfig`, typed with its config class."""
    hints = typing.get_type_hints(RecipeConfig)
    for name, (config_cls, _) in METHODS.items():
        if hints.get(name) is not config_cls:
            raise TypeError(f"RecipeConfig needs a field {name}: {config_cls.__name__} for registered method {name!r}")


_check_method_sections()


# ---------------------------------------------------------------------------- dict -> dataclass


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert the harmless cases (int -> float,
    ``"1e-3"`` -> float, tuple -> list); raise UsageError for anything else."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UsageError as exc:
                errors.append(exc)
        raise UsageError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list ({_type_name(tp)}), got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_mapping(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UsageError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
            except ValueError:
                pass
        raise UsageError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where}: expected a string, got {value!r}")
    return value


def _from_mapping(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys are errors with a did-you-mean hint."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            section = f"section {where!r}" if where else "the recipe's top level"
            raise UsageError(
                f"unknown recipe key {dotted!r}{hint} (valid keys in {section}: {', '.join(names)})"
            )
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # a config's own __post_init__ checks
        raise UsageError(f"recipe section {where or 'top level'!r}: {exc}") from None


def recipe_from_dict(data: Mapping[str, Any] | None) -> RecipeConfig:
    """Turn a parsed recipe mapping into a validated :class:`RecipeConfig`."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UsageError(f"a recipe must be a YAML mapping of sections, got {type(data).__name__}")
    data = dict(data)
    schema = data.pop("schema", RECIPE_SCHEMA)
    if schema != RECIPE_SCHEMA:
        raise UsageError(f"recipe schema {schema!r} is not supported (expected {RECIPE_SCHEMA!r})")
    recipe = _from_mapping(RecipeConfig, data)
    validate_recipe(recipe)
    return recipe


# ---------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into (["a", "b"], value parsed as a YAML scalar/flow value)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set demp.peak=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of the raw recipe mapping with ``--set a.b=value`` overrides applied."""
    import copy

    out = copy.deepcopy(dict(data or {}))
    for item in overrides:
        path, value = parse_override(item)
        node: dict[str, Any] = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UsageError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def read_recipe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a recipe file with ``yaml.safe_load``; missing/invalid files are UsageErrors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"recipe {path} not found; see samples/recipes/ for examples") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read recipe {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"recipe {path} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise UsageError(f"recipe {path} must be a YAML mapping of sections (method, model, data, train, ...)")
    return data or {}


def load_recipe(
    source: str | os.PathLike[str] | Mapping[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    data_spec: str | None = None,
) -> RecipeConfig:
    """Load a recipe from a YAML file (or an already-parsed mapping), apply ``--set`` overrides and a
    ``--data`` spec override, and validate it."""
    raw = dict(source) if isinstance(source, Mapping) else read_recipe_file(source)
    raw = apply_overrides(raw, list(overrides))
    if data_spec is not None:
        raw = apply_overrides(raw, [])
        raw.setdefault("data", {})
        if not isinstance(raw["data"], dict):
            raise UsageError("recipe key 'data' must be a mapping")
        raw["data"]["spec"] = data_spec
    return recipe_from_dict(raw)


# ---------------------------------------------------------------------------- validation


def _validate_train(t: TrainConfig) -> None:
    """What one field's bounds cannot say: the checks across fields of ``train``."""
    if t.nesterov and t.optimizer == "sgd" and t.momentum <= 0:
        reject("train.nesterov", t.nesterov, "false when train.momentum is 0 (Nesterov needs momentum)")
    if t.milestones != sorted(set(t.milestones)):
        reject("train.milestones", t.milestones, "strictly increasing positive epochs")
    if t.lr_schedule == "multistep" and not t.milestones:
        reject("train.milestones", t.milestones, "a non-empty list when lr_schedule is multistep")
    if not t.warmup_epochs < t.epochs:
        reject("train.warmup_epochs", t.warmup_epochs, f"0 <= warmup_epochs < epochs ({t.epochs})")


def validate_recipe(recipe: RecipeConfig) -> None:
    """Reject values out of range with a UsageError naming the key, the value and the valid range.

    Every field's bounds are declared next to it (:func:`~compressor.training.bounds.bounded`) and
    checked by :func:`~compressor.training.bounds.check_bounds`, the run's sections here and every method
    section by its config's ``validate()``, which adds its checks across fields; a method that needs
    something of the run (``validate_run(epochs)``, e.g. the baseline's pruning epochs) checks it for the
    methods the recipe runs.
    """
    check_bounds(recipe)
    for section in ("model", "data", "train"):
        check_bounds(getattr(recipe, section), section)
    _validate_train(recipe.train)
    for section in METHODS:
        try:
            getattr(recipe, section).validate()
        except ValueError as exc:
            raise UsageError(f"recipe section {section!r}: {exc}") from None
    for section in recipe.method_sections():
        check = getattr(getattr(recipe, section), "validate_run", None)
        if check is not None:
            check(recipe.train.epochs)
    check_bounds(recipe.export, "export")


# ---------------------------------------------------------------------------- comparison


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and key != "kwargs":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def recipe_diff(a: RecipeConfig | Mapping[str, Any], b: RecipeConfig | Mapping[str, Any],
                *, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """The dotted keys in which two recipes differ, as (key, a_value, b_value), skipping keys that
    equal or start with an entry of ``ignore`` (an entry ending in '.' is a prefix)."""
    fa = flatten(a.to_dict() if isinstance(a, RecipeConfig) else dict(a))
    fb = flatten(b.to_dict() if isinstance(b, RecipeConfig) else dict(b))
    missing = object()
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        if any(key == ig or (ig.endswith(".") and key.startswith(ig)) for ig in ignore):
            continue
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va != vb:
            diffs.append((key, None if va is missing else va, None if vb is missing else vb))
    return diffs


def recipe_reference() -> str:
    """A Markdown table of every recipe key, its type, default and meaning (docs/training.md embeds
    it; a test checks the document against this)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        default_obj = cls()
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = f"{prefix}{f.name}"
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                walk(tp, key + ".")
                continue
            default = getattr(default_obj, f.name)
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            help_ = f.metadata.get("help", "")
            lines.append(f"| `{key}` | {_type_name(tp).replace('|', 'or')} | `{shown}` | {help_.replace('|', '/')} |")

    walk(RecipeConfig, "")
    return "\n".join(lines)
