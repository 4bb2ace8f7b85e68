"""Persistence of compressed models without pickle: ``plan.json`` + ``weights.safetensors``.

``load_pruned(dir)`` rebuilds the architecture from the plan's model spec, replays the plan on it
(the same analyzer path that pruned it) and loads the weights. No pickled code is ever loaded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_weights, load_weights_file, save_weights
from .errors import CheckpointError, UsageError
from .fileio import prepare_output_dir
from .graph import DependencyAnalyzer
from .models import ModelSpec, build_model
from .plan import PruningPlan

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT_CHANNELS = "channels.png"
PLOT_LATENCY = "latency.png"
#: Everything demp writes into a compressed directory (``--overwrite`` replaces these and nothing else).
OUTPUTS = (PLAN_FILE, WEIGHTS_FILE, ONNX_FILE, f"{ONNX_FILE}.data", REPORT_JSON, REPORT_MD, PLOT_CHANNELS,
           PLOT_LATENCY)


@dataclass
class PrunedModel:
    """A compressed model loaded from a directory."""

    model: nn.Module
    plan: PruningPlan
    spec: ModelSpec
    path: Path

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.plan.input_shape or self.spec.input_shape)

    def build_dense(self) -> nn.Module:
        """The unpruned architecture with fresh weights (for dense-vs-compact MACs and latency)."""
        return build_model(self.spec).eval()


def is_pruned_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / PLAN_FILE).is_file()


def replay_plan(model: nn.Module, plan: PruningPlan, input_shape: tuple[int, ...] | list[int]) -> nn.Module:
    """Apply ``plan`` (original numbering) to a freshly built ``model`` in place and return it."""
    if plan.is_empty():
        return model
    example = torch.zeros(1, *input_shape)
    DependencyAnalyzer(model, example).apply(plan, track_indices=False)
    return model


def save_pruned(result_or_model: Any, out_dir: str | Path, *, plan: PruningPlan | None = None,
                overwrite: bool = False, prepare: bool = True) -> Path:
    """Write ``plan.json`` and ``weights.safetensors`` for a pruned model into ``out_dir``.

    ``result_or_model`` is a :class:`~compressor.compression.CompressResult` (its plan is used) or a
    pruned ``nn.Module`` together with ``plan``. An existing non-empty directory is refused unless
    ``overwrite`` (pass ``prepare=False`` when the caller already prepared the directory).
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
    save_weights({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    plan.save(out / PLAN_FILE)
    return out


def load_pruned(path: str | Path, *, map_location: str | torch.device = "cpu") -> PrunedModel:
    """Rebuild a compressed model from ``path`` (plan replay + safetensors weights), in eval mode."""
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
    spec = ModelSpec.from_dict(plan.model)
    model = build_model(spec)
    replay_plan(model, plan, plan.input_shape or spec.input_shape)
    load_weights(model, load_weights_file(weights_path))
    model.to(map_location).eval()
    model.demp_spec = spec
    model.demp_plan = plan  # compressing this model again composes onto this plan
    return PrunedModel(model=model, plan=plan, spec=spec, path=path)
