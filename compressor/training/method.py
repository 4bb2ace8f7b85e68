"""The common interface of training-time methods (DemP, Synaptic Stripping, DNR, dormant pruning).

The training loop (:mod:`.loop`) treats every method alike through these hooks, called in this order:

- ``penalty(step)`` — a term to add to the loss before ``backward()`` (None: nothing);
- ``after_step(step, optimizer)`` — right after ``optimizer.step()``; may measure, mask or remove;
- ``end_of_epoch(epoch, optimizer)`` — after the last step of 0-based ``epoch``, before evaluation;
- ``finalize(optimizer)`` — once at the end of training (the final removal);
- ``metrics(step)`` — extra fields for the ``interval``/``epoch`` records of ``metrics.jsonl``;
- ``state_dict()`` / ``load_state_dict(state)`` — tensors and plain values only (``weights_only``).

Hooks that remove neurons structurally return a :class:`~compressor.training.demp.RemovalEvent` (the
loop logs it and, under DDP, re-wraps the model); the others return None.

A method that removes neurons *owns* the run's pruning plan: it has ``plan`` (a
:class:`~compressor.plan.PruningPlan` in the original numbering), ``total_neurons``,
``present_neurons()`` and ``live_neurons()``. At most one method of a run owns the plan.

Methods that keep per-element state over a parameter (Synaptic Stripping's masks) register with the
plan owner through ``add_apply_listener(fn)``: ``fn(apply_result)`` is called after every structural
removal with the analyzer's :class:`~compressor.graph.ApplyResult` (its ``index_maps`` slice the state).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["TrainingMethod", "unwrap_model", "distributed_ready"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module DDP / DataParallel wrap (parameter names must not carry the ``module.`` prefix)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def distributed_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class TrainingMethod:
    """No-op defaults for every hook (subclasses override what they use)."""

    name: str = "method"
    owns_plan: bool = False

    def __init__(self) -> None:
        self._apply_listeners: list[Callable[[Any], None]] = []

    # hooks ------------------------------------------------------------------
    def penalty(self, step: int) -> Tensor | None:
        return None

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> Any:
        return None

    def end_of_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> Any:
        return None

    def finalize(self, optimizer: torch.optim.Optimizer | None = None) -> Any:
        return None

    def metrics(self, step: int) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # structural removals ------------------------------------------------------
    def add_apply_listener(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(apply_result)`` after each structural removal this method makes."""
        if not hasattr(self, "_apply_listeners"):
            self._apply_listeners = []
        self._apply_listeners.append(fn)

    def _notify_apply(self, result: Any) -> None:
        for fn in getattr(self, "_apply_listeners", []):
            fn(result)
