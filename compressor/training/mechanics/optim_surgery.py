"""Keep an optimizer working across a structural removal (see docs/demp.md).

Pruning replaces the model's parameters by new, smaller ``nn.Parameter`` objects. The optimizer still
holds the old objects in ``param_groups`` and their per-element state (Adam's moments, SGD's momentum
buffer) under the old keys. :func:`slice_optimizer_state` moves both to the new parameters:

- every per-parameter state tensor with the old parameter's shape (``exp_avg``, ``exp_avg_sq``,
  ``max_exp_avg_sq``, ``momentum_buffer``, RMSprop's ``square_avg``, Adagrad's ``sum``, ...) is
  flattened, indexed by ``apply_result.index_maps[name]`` (the flat indices of the surviving elements
  in the old tensor) and reshaped to the new parameter's shape;
- scalar state (Adam's ``step``) and non-tensor entries are kept;
- the old parameter object is replaced by the new one *at the same position* of its param group, so
  group hyper-parameters, LR schedulers (which only touch ``group["lr"]``) and
  ``optimizer.state_dict()`` ordering keep working. Parameters that were not replaced keep their state
  object untouched.

Removing a dead neuron this way is exact: the surviving parameters continue with exactly the moments
they would have had (see ``tests/test_optim_surgery.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ...errors import UsageError

__all__ = ["slice_optimizer_state", "slice_state_tensor"]


class _ApplyResultLike(Protocol):
    @property
    def index_maps(self) -> Mapping[str, Tensor]: ...
    @property
    def old_params(self) -> Mapping[str, nn.Parameter]: ...
    @property
    def new_params(self) -> Mapping[str, nn.Parameter]: ...


def slice_state_tensor(value: Tensor, index_map: Tensor, new_param: Tensor) -> Tensor:
    """``value`` flattened (row-major), indexed by ``index_map``, shaped (and laid out) like ``new_param``."""
    if index_map.numel() != new_param.numel():
        raise ValueError(
            f"index map selects {index_map.numel()} elements but the new parameter has {new_param.numel()}"
        )
    picked = value.reshape(-1).index_select(0, index_map.to(device=value.device, dtype=torch.long))
    out = torch.empty_like(new_param, dtype=value.dtype, device=value.device)
    out.copy_(picked.view(new_param.shape))
    return out


def _slice_state(name: str, state: dict[str, Any], old: Tensor, new: Tensor,
                 index_map: Tensor | None) -> dict[str, Any]:
    sliced: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            sliced[key] = value
            continue
        if value.shape == old.shape and value.dim() > 0:
            if index_map is None:
                if new.shape != old.shape:
                    raise ValueError(
                        f"parameter {name} changed shape {tuple(old.shape)} -> {tuple(new.shape)} but the removal "
                        "result has no index map for it"
                    )
                sliced[key] = value
            else:
                sliced[key] = slice_state_tensor(value, index_map, new)
        elif value.numel() <= 1:
            sliced[key] = value  # step counters and other scalars
        else:
            raise UsageError(
                f"the optimizer keeps state {key!r} of shape {tuple(value.shape)} for parameter {name} "
                f"(shape {tuple(old.shape)}), which cannot be sliced when neurons are removed; use an optimizer "
                "whose per-parameter state has the parameter's shape (SGD, Adam, AdamW, RMSprop, Adagrad, ...) "
                "or set prune: false"
            )
    return sliced


def slice_optimizer_state(optimizer: torch.optim.Optimizer, apply_result: _ApplyResultLike) -> int:
    """Move ``optimizer``'s params and state from the old to the new parameters of ``apply_result``, in place.

    Returns the number of parameters swapped. Parameters absent from the optimizer (frozen ones,
    buffers) are ignored; a replaced parameter without optimizer state (never stepped) is only swapped.
    """
    swaps: dict[int, tuple[str, nn.Parameter, nn.Parameter]] = {}
    for name, new in apply_result.new_params.items():
        old = apply_result.old_params.get(name)
        if old is None or old is new:
            continue
        swaps[id(old)] = (name, old, new)
    if not swaps:
        return 0
    # Phase 1: compute every new state (may raise) before touching the optimizer.
    plan: list[tuple[list, int, nn.Parameter, nn.Parameter, dict[str, Any] | None]] = []
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            hit = swaps.get(id(p))
            if hit is None:
                continue
            name, old, new = hit
            new_state = None
            if old in optimizer.state:
                new_state = _slice_state(name, optimizer.state[old], old, new, apply_result.index_maps.get(name))
            plan.append((params, i, old, new, new_state))
    # Phase 2: commit.
    for params, i, old, new, new_state in plan:
        if new_state is not None:
            del optimizer.state[old]
            optimizer.state[new] = new_state
        params[i] = new
    return len(plan)
