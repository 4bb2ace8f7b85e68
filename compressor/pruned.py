"""Persistence of compressed models without pickle: ``plan.json`` + ``weights.safetensors``.

``load_pruned(dir)`` rebuilds the architecture from the plan's model spec, replays the plan on it
(the same analyzer path that pruned it), loads the weights and returns the model — an ordinary
``nn.Module`` in eval mode, whose ``demp_plan`` / ``demp_spec`` / ``demp_dir`` attributes say what it
is. No pickled code is ever loaded. A model built from a user's ``--model-file`` travels with its
code: the file is copied into the directory (``code/``, its sha256 in the plan) and loaded from there,
so the directory can be moved; **loading it runs that code**, as building it did.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, UsageError
from .fileio import atomic_write_bytes, prepare_output_dir, sha256_file
from .graph import DependencyAnalyzer
from .models import ModelSpec, build_model
from .plan import PruningPlan
from .weight_files import load_weights, load_weights_file, save_weights

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.safetensors"
CODE_DIR = "code"
ONNX_FILE = "model.onnx"
#: The int8 variant of ``model.onnx`` (``--quantize int8``), written only when it passed its held-out check.
INT8_ONNX_FILE = "model.int8.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT_CHANNELS = "channels.png"
PLOT_LATENCY = "latency.png"
#: Everything demp writes into a compressed directory (``--overwrite`` replaces these and nothing else).
OUTPUTS = (PLAN_FILE, WEIGHTS_FILE, CODE_DIR, ONNX_FILE, f"{ONNX_FILE}.data", INT8_ONNX_FILE, REPORT_JSON, REPORT_MD,
           PLOT_CHANNELS, PLOT_LATENCY)

__all__ = ["save_pruned", "load_pruned", "replay_plan", "is_pruned_dir", "dense_model", "input_shape", "neuron_counts",
           "OUTPUTS"]


def is_pruned_dir(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / PLAN_FILE).is_file()


def replay_plan(model: nn.Module, plan: PruningPlan, input_shape: tuple[int, ...] | list[int]) -> nn.Module:
    """Apply ``plan`` (original numbering) to a freshly built ``model`` in place and return it."""
    if plan.is_empty():
        return model
    example = torch.zeros(1, *input_shape)
    DependencyAnalyzer(model, example).apply(plan, track_indices=False)
    return model


def input_shape(model: nn.Module) -> tuple[int, ...]:
    """One sample's shape for a model built or loaded by demp (from its plan, else its spec)."""
    plan = getattr(model, "demp_plan", None)
    return tuple((plan.input_shape if plan is not None else None) or _spec(model).input_shape)


def neuron_counts(model: nn.Module) -> tuple[int, int]:
    """(neurons of the dense architecture, neurons left after the model's plan): the channels of every
    coupling group a Conv/Linear reads, the model's outputs aside — the definition every report uses."""
    dense = dense_model(model)
    before = sum(g.size for g in DependencyAnalyzer(dense, torch.zeros(1, *input_shape(model))).neuron_groups)
    plan = getattr(model, "demp_plan", None)
    return before, before - (plan.removed_channels if plan is not None else 0)


def dense_model(model: nn.Module) -> nn.Module:
    """The unpruned architecture of a demp model, with fresh weights (for dense-vs-compact MACs and latency)."""
    return build_model(_spec(model)).eval()


def _spec(model: nn.Module) -> ModelSpec:
    spec = getattr(model, "demp_spec", None)
    if spec is None:
        raise UsageError("this model was not built by demp (no demp_spec); build it with compressor.load_model")
    return spec


def _copy_model_code(plan: PruningPlan, out: Path) -> PruningPlan:
    """Copy a user model file into ``out/code/`` and point the plan at the copy (relative, with its hash)."""
    model_file = (plan.model or {}).get("model_file")
    if not model_file:
        return plan
    path, _, factory = str(model_file).rpartition(":")
    source = Path(path)
    if not source.is_absolute():  # already a copy inside another compressed directory: resolved on load
        raise UsageError(f"the model file {path} is relative; build the model with compressor.load_model")
    (out / CODE_DIR).mkdir(exist_ok=True)
    atomic_write_bytes(out / CODE_DIR / source.name, source.read_bytes())
    plan = copy.copy(plan)
    plan.model = {**(plan.model or {}), "model_file": f"{CODE_DIR}/{source.name}:{factory}"}
    plan.source = {**(plan.source or {}), "model_file_sha256": sha256_file(out / CODE_DIR / source.name),
                   "model_file_origin": str(source)}
    return plan


def save_pruned(result_or_model: Any, out_dir: str | Path, *, plan: PruningPlan | None = None,
                overwrite: bool = False, prepare: bool = True) -> Path:
    """Write ``plan.json`` and ``weights.safetensors`` (and ``code/``, the copy of a user model file) for
    a pruned model into ``out_dir``; ``demp export DIR`` adds ``model.onnx`` and the report.

    ``result_or_model`` is a :class:`~compressor.compression.CompressResult` (its plan is used) or a
    pruned ``nn.Module`` together with ``plan``. An existing non-empty directory is refused unless
    ``overwrite``, which replaces demp's own outputs only (pass ``prepare=False`` when the caller
    already prepared the directory).
    """
    model = getattr(result_or_model, "model", result_or_model)
    plan = plan if plan is not None else getattr(result_or_model, "plan", None)
    if not isinstance(model, nn.Module) or plan is None:
        raise UsageError("save_pruned needs a CompressResult, or a model together with plan=")
    if plan.model is None:
        spec = getattr(model, "demp_spec", None)
        if spec is None:
            raise UsageError(
                "the plan has no model spec, so the architecture could not be rebuilt on load; build the "
                "model with compressor.load_model/build_model, or set plan.model = ModelSpec(...).to_dict()"
            )
        plan = copy.copy(plan)
        plan.model = spec.to_dict()
    out = prepare_output_dir(out_dir, overwrite=overwrite, outputs=OUTPUTS) if prepare else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _copy_model_code(plan, out)
    save_weights({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    plan.save(out / PLAN_FILE)
    return out


def _resolve_model_code(spec: ModelSpec, plan: PruningPlan, path: Path) -> ModelSpec:
    """The spec with its model file resolved: the copy in ``path/code/`` (hash-checked), or an absolute path."""
    if not spec.model_file:
        return spec
    file, _, factory = spec.model_file.rpartition(":")
    resolved = Path(file) if Path(file).is_absolute() else path / file
    if not resolved.is_file():
        raise CheckpointError(f"{path} was compressed from the model file {file}, which does not exist any more; "
                              "put it back, or compress again (demp now keeps a copy in the output folder)")
    expected = (plan.source or {}).get("model_file_sha256")
    if expected and sha256_file(resolved) != expected:
        raise CheckpointError(f"the model code {resolved} changed since the model was compressed (sha256 differs "
                              "from plan.json); restore it, or compress again")
    return dataclasses.replace(spec, model_file=f"{resolved.resolve()}:{factory}")


def load_pruned(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a compressed model from ``path`` (plan replay + safetensors weights), in eval mode.

    Returns the model; ``model.demp_plan`` (the plan), ``model.demp_spec`` (the architecture) and
    ``model.demp_dir`` (``path``) say what it is, and :func:`dense_model` / :func:`input_shape` use them.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not is_pruned_dir(path):
        raise CheckpointError(
            f"{path} is not a compressed model directory (no {PLAN_FILE}); make one with `demp compress` "
            "or `demp train`"
        )
    plan = PruningPlan.load(path / PLAN_FILE)
    if not plan.model:
        raise CheckpointError(f"{path / PLAN_FILE} has no model spec; the directory cannot be rebuilt")
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing; the compressed directory is incomplete")
    spec = _resolve_model_code(ModelSpec.from_dict(plan.model), plan, path)
    model = build_model(spec)
    replay_plan(model, plan, plan.input_shape or spec.input_shape)
    load_weights(model, load_weights_file(weights_path))
    model.to(map_location).eval()
    # demp's own attributes on the module (nn.Module's __setattr__ is typed for tensors and modules only)
    model.demp_spec = spec  # type: ignore[assignment]
    model.demp_plan = plan  # type: ignore[assignment]  # compressing this model again composes onto this plan
    model.demp_dir = path  # type: ignore[assignment]
    return model
