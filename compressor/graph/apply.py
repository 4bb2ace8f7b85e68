"""Apply a removal plan: expand it into per-layer actions, merge, validate, execute once.

Every group's concrete items are expanded on the *unmodified* graph (:func:`expand_group`), merged per
(layer, pruning function) (:func:`merge_actions`), validated against the layers' real channel counts
(:func:`validate_actions`) and executed once (:func:`execute_actions`), so stale indices after an
earlier prune can never remove the wrong channel. :func:`apply_actions` also restores
``requires_grad`` and the train/eval mode, and with ``track_indices`` prunes a float64 copy whose
tensors hold their own element indices alongside: its surviving values are the flat index maps
(:class:`ApplyResult`) that slice optimizer state and masks, and every pruned tensor is checked to
equal the original at those indices.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch_pruning import ops as tp_ops

from ..errors import DempError
from .tp_compat import IndexBudget, bounded_index_mappings, pruning_dim

__all__ = ["Action", "ApplyResult", "expand_group", "merge_actions", "validate_actions", "execute_actions",
           "apply_actions"]


@dataclass
class Action:
    """One pruning call: ``handler`` removes ``idxs`` along ``pruning_dim`` of ``module``."""

    module: str  # module name, or parameter name for unwrapped parameters
    is_parameter: bool
    handler: Any
    pruning_dim: int
    idxs: set[int]
    is_out: bool = True  # the handler removes output channels (else input channels)


@dataclass
class ApplyResult:
    """What a plan application changed.

    ``index_maps[name]`` holds, for every parameter or buffer whose shape changed, the flat indices
    into the *old* tensor of the surviving elements (``new.flatten() == old.flatten()[idx]``): enough
    to slice any per-element state (optimizer moments, EMA, masks) without knowing layer layouts.
    """

    index_maps: dict[str, Tensor]
    old_params: dict[str, nn.Parameter]
    new_params: dict[str, nn.Parameter]
    removed: int
    seconds: float


def expand_group(dg: Any, tp_group: Any, removed: list[int], name_of: Callable[[Any], str]) -> list[Action]:
    """The concrete actions that remove root channels ``removed`` of one torch-pruning group."""
    root_dep = tp_group[0].dep
    with bounded_index_mappings(IndexBudget()):
        concrete = dg.get_pruning_group(root_dep.target.module, root_dep.handler, list(removed))
    actions: list[Action] = []
    for item in concrete.items:
        node = item.dep.target
        if not isinstance(node.module, (nn.Module, nn.Parameter)) or isinstance(node.module, tp_ops.DummyMHA):
            continue
        if type(node.module).__module__.startswith("torch_pruning"):
            continue  # bookkeeping ops (concat/split/elementwise): nothing to slice in the model
        actions.append(Action(name_of(node), node.type == tp_ops.OPTYPE.PARAMETER, item.dep.handler,
                              node.pruning_dim, {int(i) for i in item.idxs},
                              is_out=dg.is_out_channel_pruning_fn(item.dep.handler)))
    return actions


def merge_actions(groups: list[list[Action]]) -> list[Action]:
    """One action per (layer, pruning function), the union of every group's indices."""
    merged: dict[tuple[str, Any], Action] = {}
    for actions in groups:
        for a in actions:
            key = (a.module, a.handler)
            if key in merged:
                merged[key].idxs |= a.idxs
            else:
                merged[key] = Action(a.module, a.is_parameter, a.handler, a.pruning_dim, set(a.idxs), a.is_out)
    return list(merged.values())


def _channel_count(model: nn.Module, action: Action) -> int:
    """The size of the dimension ``action`` cuts, read from the layer itself."""
    if action.is_parameter:
        return int(model.get_parameter(action.module).shape[action.pruning_dim])
    module = model.get_submodule(action.module)
    pruner = action.handler.__self__
    with pruning_dim(action.handler, action.pruning_dim):
        try:
            size = pruner.get_out_channels(module) if action.is_out else pruner.get_in_channels(module)
        except Exception as exc:  # noqa: BLE001 - torch-pruning raises assorted errors for odd layers
            raise DempError(f"cannot tell how many channels {action.module} ({type(module).__name__}) has "
                            f"({type(exc).__name__}: {exc}); this layer type is not supported for removal: "
                            f"--ignore {action.module}") from None
    if size is None:
        raise DempError(f"torch-pruning reports no channel count for {action.module} ({type(module).__name__}); "
                        f"this layer type is not supported for removal: --ignore {action.module}")
    return int(size)


def validate_actions(model: nn.Module, actions: list[Action]) -> None:
    """Refuse an action whose indices fall outside its layer, or that would remove every channel."""
    for a in actions:
        if not a.idxs:
            continue
        size = _channel_count(model, a)
        lo, hi = min(a.idxs), max(a.idxs)
        if lo < 0 or hi >= size:
            raise DempError(f"internal error: index {hi if hi >= size else lo} out of range for {a.module} "
                            f"({size} channels) in {a.handler.__qualname__}; please report this model")
        if len(a.idxs) >= size:
            raise DempError(f"internal error: every channel of {a.module} would be removed")


def execute_actions(model: nn.Module, actions: list[Action]) -> None:
    """Run merged actions on ``model`` (any model with the same module names)."""
    for a in actions:
        idxs = sorted(a.idxs)
        with pruning_dim(a.handler, a.pruning_dim):
            if a.is_parameter:
                parent_name, _, leaf = a.module.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, leaf, a.handler(getattr(parent, leaf), idxs))
            else:
                a.handler(model.get_submodule(a.module), idxs)


def _index_model(model: nn.Module) -> nn.Module:
    """A copy whose floating tensors hold their own flat element index (float64: exact to 2**53)."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(clone.parameters()) + list(clone.buffers()):
            if t.dim() == 0 or not t.is_floating_point():
                continue
            t.data = torch.arange(t.numel(), dtype=torch.float64, device=t.device).view(t.shape)
    return clone


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    return {**dict(model.named_buffers()), **dict(model.named_parameters())}


def _index_maps(old: dict[str, Tensor], model: nn.Module, id_model: nn.Module) -> dict[str, Tensor]:
    """Flat surviving indices of every changed tensor, each checked against the original values."""
    id_tensors = _tensors(id_model)
    maps: dict[str, Tensor] = {}
    for name, new in _tensors(model).items():
        before = old.get(name)
        if before is None or before.shape == new.shape or name not in id_tensors:
            continue
        idx = id_tensors[name].detach().flatten().to(torch.long)
        if not torch.equal(before.detach().flatten()[idx].view(new.shape), new.detach()):
            raise DempError(f"internal error: pruning {name} did not keep the original values; please report "
                            "this model")
        maps[name] = idx
    return maps


def apply_actions(model: nn.Module, actions: list[Action], *, removed: int, track_indices: bool) -> ApplyResult:
    """Validate and execute ``actions`` on ``model`` in place (see the module docstring)."""
    t0 = time.perf_counter()
    validate_actions(model, actions)
    old_params = dict(model.named_parameters())
    old_tensors = _tensors(model)
    flags = {n: p.requires_grad for n, p in old_params.items()}
    was_training = model.training
    id_model = _index_model(model) if track_indices else None
    with torch.no_grad():
        execute_actions(model, actions)
        if id_model is not None:
            execute_actions(id_model, actions)
    for n, p in model.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])
    model.train(was_training)
    index_maps = _index_maps(old_tensors, model, id_model) if id_model is not None else {}
    return ApplyResult(index_maps, old_params, dict(model.named_parameters()), removed, time.perf_counter() - t0)
