"""From a trained checkpoint to a budget: the fine-tuning recipe of ``demp compress --target-*``.

A converged network has few dead neurons (a published CIFAR ResNet-20: 13 of 352), so lossless removal
alone takes about 5% of the MACs. To reach a budget, demp fine-tunes the checkpoint with DemP in
budget mode (beyond the papers, ``docs/demp.md`` §8-9): the dead neurons are removed before the first
step (``demp.remove_at_start``, lossless); then the penalty acts only on the live neurons the budget
still needs to lose (``demp.select: budget``, :mod:`.mechanics.selection`), chosen by their BatchNorm
scale over what one of them costs (``demp.cost: macs``, MorphNet-style weights of
:mod:`.mechanics.costs`), and pushes them to an exact death, each removed losslessly as it dies; what
the penalty has not reached by ``demp.reach_by`` of the steps is cut (the live neurons closest to
dead, lossy, reported) and the remaining steps recover.

:data:`FINETUNE_RECIPE` holds the defaults (the values and why: ``docs/demp.md`` §9);
:func:`finetune_recipe` fills in the model, data and target; :func:`compress_to_target` is the
Python entry point (one call on a model, its data and a target).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataBundle
from ..errors import UsageError
from .config import RecipeConfig, apply_overrides, load_recipe
from .finish import TrainResult
from .trainer import Trainer

__all__ = ["FINETUNE_RECIPE", "TARGETS", "finetune_recipe", "compress_to_target", "target_option"]

#: The budget options of ``demp compress`` and the DemP option each sets.
TARGETS = {"macs": "target_macs", "sparsity": "target_sparsity", "params": "target_params"}

#: The fine-tuning defaults: SGD with Nesterov momentum and a cosine decay from a tenth of a CIFAR
#: ResNet's training rate, standard crop + flip; the penalty on the BatchNorm scale and shift of the
#: neurons the budget needs, chosen by |γ| over MAC cost, at λ = 0.1 from the start, the target by half
#: of the steps (``docs/demp.md`` §9 has the measurements behind each value).
FINETUNE_RECIPE = """\
name: demp-finetune
method: demp
train:
  epochs: 1
  optimizer: sgd
  lr: 0.01
  momentum: 0.9
  nesterov: true
  weight_decay: 0.0
  lr_schedule: cosine
  augment: true
  seed: 0
data:
  batch_size: 128
demp:
  regularizer: lasso
  target: norm_scale
  peak: 0.1
  schedule: one_cycle
  span: 0.85
  pct_start: 0.1
  noise: 0.0
  interval: 0
  death_samples: 1024
  reach_by: 0.5
  cost: macs
  select: budget
  remove_at_start: true
export:
  onnx: true
  latency: true
  batch_sizes: [1, 8]
"""


def target_option(kind: str) -> str:
    """The DemP option that a target kind (``macs``, ``sparsity``, ``params``) sets."""
    if kind not in TARGETS:
        raise UsageError(f"unknown target {kind!r}: expected one of {', '.join(TARGETS)}")
    return TARGETS[kind]


def finetune_recipe(*, target: tuple[str, float], arch: str | None = None, checkpoint: str | None = None,
                    model_file: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                    num_classes: int | None = None, data: str | None = None, normalize: str | None = None,
                    epochs: float | None = None, seed: int | None = None,
                    base: Mapping[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """The recipe of a fine-tune to ``target`` (``("macs", 0.5)``: half the MACs), from :data:`FINETUNE_RECIPE`
    or a user's ``base`` recipe mapping; the arguments given replace the base's keys, ``overrides``
    (``a.b=value``) come last. The cost weighting follows the target (MACs, parameters, or uniform
    for a neuron sparsity) unless the base recipe names one."""
    kind, value = target
    option = target_option(kind)
    raw = copy.deepcopy(dict(base)) if base is not None else yaml.safe_load(FINETUNE_RECIPE)
    sets: list[str] = [f"demp.{name}=null" for name in TARGETS.values()] + [f"demp.{option}={float(value)!r}"]
    if base is None:
        sets.append(f"demp.cost={'uniform' if kind == 'sparsity' else kind}")
    pairs = {"model.arch": arch, "model.checkpoint": checkpoint, "model.model_file": model_file,
             "model.num_classes": num_classes, "data.spec": data, "data.normalize": normalize,
             "train.epochs": epochs, "train.seed": seed}
    raw = apply_overrides(raw, sets)
    for key, v in pairs.items():
        if v is not None:
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = v
    if model_kwargs:
        raw.setdefault("model", {})["kwargs"] = dict(model_kwargs)
    if raw.get("method") != "demp":
        raise UsageError(f"a fine-tuning recipe runs method demp (budget mode); this one says method: "
                         f"{raw.get('method')!r}")
    return load_recipe(raw, list(overrides))


def _bundle(data: DataBundle | DataLoader) -> DataBundle:
    """A DataLoader's dataset as a bundle (labels needed: the fine-tune minimizes cross-entropy)."""
    if isinstance(data, DataBundle):
        return data
    if isinstance(data, DataLoader):
        x, _ = data.dataset[0]
        return DataBundle(name="loader", train=data.dataset, test=None, input_shape=tuple(x.shape), num_classes=0)
    raise UsageError(f"data must be a compressor.DataBundle (compressor.load_data) or a DataLoader of (input, label) "
                     f"pairs, got {type(data).__name__}")


def compress_to_target(model: nn.Module, data: str | DataBundle | DataLoader, out: str | os.PathLike, *,
                       target_macs: float | None = None, target_sparsity: float | None = None,
                       target_params: float | None = None, epochs: float = 1.0, seed: int = 0,
                       recipe: Mapping[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = (),
                       **trainer_kwargs: Any) -> TrainResult:
    """Fine-tune ``model`` with DemP until ``target_*`` is reached; the compact model is ``result.model``
    (saved in ``out/model``; ``out`` holds the run: recipe, metrics, checkpoints, resume with
    ``resume=True``).

    ``model`` must come from :func:`compressor.load_model` (it knows its architecture, so the output can
    be reloaded); it is not changed (a copy is fine-tuned). ``data`` is a dataset spec (``"cifar10:/data"``:
    loaded with the recipe's augmentation, death measured on un-augmented samples), a bundle from
    :func:`compressor.load_data` (used as loaded: load it with ``augment=True`` to augment) or a
    DataLoader of (input, label) batches (its dataset as it is, its batch size).
    """
    given = [(kind, v) for kind, v in (("macs", target_macs), ("sparsity", target_sparsity),
                                        ("params", target_params)) if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of target_macs, target_sparsity, target_params")
    spec = getattr(model, "demp_spec", None)
    if spec is None:
        raise UsageError("the model does not know its architecture: build it with compressor.load_model(arch, "
                         "checkpoint=...) so the compact model can be saved and reloaded")
    bundle: DataBundle | None = None
    if isinstance(data, str):
        label = data
    else:
        bundle = _bundle(data)
        label = bundle.spec or bundle.name
    base = dict(recipe) if recipe is not None else None
    sets = list(overrides)
    if isinstance(data, DataLoader) and data.batch_size:
        sets.append(f"data.batch_size={int(data.batch_size)}")
    rec = finetune_recipe(target=given[0], arch=spec.arch, data=label, epochs=epochs, seed=seed,
                          num_classes=spec.num_classes, base=base, overrides=sets)
    trainer = Trainer(rec, out, data=bundle, model=copy.deepcopy(model), **trainer_kwargs)
    return trainer.fit()
