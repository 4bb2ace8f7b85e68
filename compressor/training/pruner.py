"""Shared machinery of the training methods that remove neurons through the DependencyAnalyzer.

:class:`AnalyzerPruner` keeps one :class:`~compressor.graph.DependencyAnalyzer` per architecture
state, the run's :class:`~compressor.plan.PruningPlan` (original numbering), per-group live masks for
the metrics, and turns a removal plan (current numbering) into an in-place removal that also slices
the optimizer state and tells the apply listeners (:meth:`TrainingMethod.add_apply_listener`).
Synaptic Stripping, DNR-Pruning and dormant pruning build on it; DemP has its own (older) copy.

Under DDP every rank must take the same removal decision: :meth:`AnalyzerPruner.collect` all-reduces
activity statistics, and :meth:`AnalyzerPruner.agreed_scores` hands every rank rank 0's scores for
the methods that rank neurons by a score (DNR, the importance baselines).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..plan import GroupRemoval, PruningPlan
from .demp import RemovalEvent
from .method import TrainingMethod, distributed_ready, unwrap_model
from .optim_surgery import slice_optimizer_state

__all__ = ["AnalyzerPruner"]


class AnalyzerPruner(TrainingMethod):
    """Plan ownership, neuron counting and structural removal for a training method."""

    owns_plan = True

    def __init__(self, model: nn.Module, *, example_inputs: Tensor | Sequence[Tensor], loader: Iterable[Any],
                 criterion: dict[str, Any], ignore: Sequence[str] = (), min_channels: int = 1,
                 round_to: int = 1) -> None:
        super().__init__()
        self.model = unwrap_model(model)
        self.example_inputs = example_inputs
        self.loader = loader
        self.ignore = list(ignore)
        self.min_channels = int(min_channels)
        self.round_to = int(round_to)
        spec = getattr(self.model, "demp_spec", None)
        input_shape = list(example_inputs.shape[1:]) if isinstance(example_inputs, Tensor) else None
        self.plan = PruningPlan(criterion=dict(criterion),
                                model=spec.to_dict() if spec is not None and hasattr(spec, "to_dict") else None,
                                input_shape=input_shape)
        self._analyzer: Any = None
        self._live: dict[str, Tensor] = {}  # group root -> bool (current numbering); absent = all live
        self.removals = 0
        self.steps_done = 0
        self.events: list[dict[str, Any]] = []
        self.total_neurons = sum(self.present_neurons().values())

    # ------------------------------------------------------------------ analyzer
    @property
    def analyzer(self) -> Any:
        """The analyzer of the current architecture (rebuilt lazily after any removal)."""
        if self._analyzer is None or self._analyzer._stale:
            from ..graph import DependencyAnalyzer

            self._analyzer = DependencyAnalyzer(self.model, self.example_inputs, ignore=self.ignore,
                                                min_channels=self.min_channels, round_to=self.round_to)
        return self._analyzer

    def invalidate(self, result: Any = None) -> None:
        """Forget the analyzer (the model changed under us: another method removed neurons)."""
        self._analyzer = None
        if result is not None:
            sizes = {g.root: g.size for g in self.analyzer.neuron_groups}
            self._live = {r: m for r, m in self._live.items() if sizes.get(r) == m.numel()}

    def collect(self, fields: tuple[str, ...]) -> Any:
        """Activity statistics at every consumer input on ``loader`` (all-reduced under DDP)."""
        from ..activity import collect_activity

        stats = collect_activity(self.model, self.loader, layers=self.analyzer.consumer_names, progress=False,
                                 desc=self.name, fields=fields)
        if distributed_ready():
            stats.all_reduce()
        return stats

    @staticmethod
    def agreed_scores(scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rank 0's per-group scores on every rank under DDP (``scores`` itself otherwise).

        A score-ranked removal is then decided from identical numbers on every rank, even where the
        ranks' own scores could differ (each rank's share of the samples, float results that differ
        between machines), so the plans cannot diverge.
        """
        from .distributed import broadcast_from_main

        if not distributed_ready():
            return scores
        return broadcast_from_main({k: v.detach().cpu() for k, v in scores.items()})

    # ------------------------------------------------------------------ counting
    def present_neurons(self) -> dict[str, int]:
        return {g.root: int(g.size) for g in self.analyzer.neuron_groups}

    def live_neurons(self) -> dict[str, int]:
        out = {}
        for g in self.analyzer.neuron_groups:
            mask = self._live.get(g.root)
            out[g.root] = int(g.size) if mask is None or mask.numel() != g.size else int(mask.sum())
        return out

    # ------------------------------------------------------------------ removal
    def plan_from_ranking(self, ranked: Iterable[tuple[float, str, int]], budget: int,
                          groups: dict[str, Any]) -> PruningPlan:
        """Take up to ``budget`` channels ``(score, root, index)`` in the given order, every group keeping
        at least ``max(min_channels, 1)`` channels; the removals as a plan (current numbering)."""
        chosen: dict[str, list[int]] = {}
        for _, root, i in ranked:
            if budget <= 0:
                break
            g = groups[root]
            picked = chosen.setdefault(root, [])
            if g.size - len(picked) <= max(g.min_channels, 1):
                continue
            picked.append(i)
            budget -= 1
        removals = [GroupRemoval(r, groups[r].size, sorted(ix), groups[r].members) for r, ix in chosen.items() if ix]
        return PruningPlan(groups=removals, criterion=self.plan.criterion)

    def remove(self, delta: PruningPlan, optimizer: torch.optim.Optimizer | None, *, step: int, dead: int,
               final: bool, t0: float) -> RemovalEvent:
        """Apply ``delta`` (current numbering) in place, slice optimizer state, compose the plan."""
        if not delta.is_empty():
            for g in delta.groups:  # keep the live masks in the new numbering
                if g.root in self._live:
                    self._live[g.root] = self._live[g.root][torch.as_tensor(g.kept, dtype=torch.long)]
            result = self.analyzer.apply(delta)
            if optimizer is not None:
                slice_optimizer_state(optimizer, result)
            for p in result.new_params.values():
                if p.grad is not None and p.grad.shape != p.shape:
                    p.grad = None
            self.plan = self.plan.compose(delta)
            self.removals += 1
            self._analyzer = None
            self._notify_apply(result)
        present = sum(self.present_neurons().values())
        event = RemovalEvent(step=step, removed=delta.removed_channels, live=sum(self.live_neurons().values()),
                             total=self.total_neurons, plan_delta=delta, seconds=time.perf_counter() - t0,
                             present=present, dead=dead, applied=not delta.is_empty(), final=final)
        self.events.append(event.to_dict())
        return event

    # ------------------------------------------------------------------ persistence
    def _base_state(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "total_neurons": int(self.total_neurons), "removals": self.removals,
                "steps_done": self.steps_done, "events": [dict(e) for e in self.events],
                "live_masks": {r: m.detach().cpu().clone() for r, m in self._live.items()}}

    @staticmethod
    def check_state_version(state: Any, version: int, label: str) -> None:
        """Refuse a method state written by another version of demp (``label`` names the method)."""
        if not isinstance(state, dict) or state.get("version") != version:
            raise CheckpointError(f"{label} state has another version; the checkpoint was written by another "
                                  "version of demp")

    def _load_base_state(self, state: dict[str, Any]) -> None:
        plan = PruningPlan.from_dict(state["plan"])
        sizes = {g.root: g.size for g in self.analyzer.groups}
        changed = [g for g in plan.groups if g.removed]
        if not all(sizes.get(g.root) == g.after for g in changed):
            if all(sizes.get(g.root) == g.size for g in changed):
                self.analyzer.apply(plan)
                self._analyzer = None
            else:
                raise CheckpointError(f"the model matches neither the dense nor the pruned architecture recorded "
                                      f"in the {self.name} state; build it from the same recipe before resuming")
        self.plan = plan
        self.total_neurons = int(state["total_neurons"])
        self.removals = int(state.get("removals", 0))
        self.steps_done = int(state.get("steps_done", 0))
        self.events = [dict(e) for e in state.get("events", [])]
        self._live = {str(k): torch.as_tensor(v, dtype=torch.bool).cpu() for k, v in state.get("live_masks", {}).items()}
        self.invalidate(result=True)
