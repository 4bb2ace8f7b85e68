"""What every training method is, and the one analyzer-backed pruner they share.

The trainer treats every method alike through :class:`TrainingMethod`'s hooks, called in this order:

- ``on_train_start(optimizer)`` — once before the first step of a run (a removal from the start point);
- ``penalty(step)`` — a term to add to the loss before ``backward()`` (None: nothing);
- ``after_step(step, optimizer)`` — right after ``optimizer.step()``; may measure, mask or remove;
- ``end_of_epoch(epoch, optimizer)`` — after the last step of 0-based ``epoch``, before evaluation;
- ``finalize(optimizer)`` — once at the end of training (the final removal);
- ``metrics(step)`` — extra fields for the ``interval``/``epoch``/``final`` records of ``metrics.jsonl``;
- ``describe()`` — the method's own account for the report: its criterion and what it measured on;
- ``state_dict()`` / ``load_state_dict(state)`` — tensors and plain values only (``weights_only``).

Hooks that remove neurons structurally return a :class:`RemovalEvent` (the trainer logs it and, under
DDP, re-wraps the model); the others return None. A method is built by :meth:`TrainingMethod.build`
from its config and a :class:`MethodContext` (the run's model, sizes and held-aside samples), so the
trainer needs no per-method code: a new method is one module plus one line in
:data:`compressor.training.methods.METHODS`.

A method that removes neurons *owns* the run's pruning plan (:class:`AnalyzerPruner`): it keeps one
:class:`~compressor.graph.DependencyAnalyzer` per architecture state, the plan in the original
numbering, and live masks for the metrics, and removes through :meth:`AnalyzerPruner.remove`, which
slices the optimizer state and tells the other methods (``on_structural_removal``) so that per-element
state (Synaptic Stripping's masks) follows. Under DDP every rank must take the same decision:
:meth:`AnalyzerPruner.collect` all-reduces activity statistics, and :meth:`AnalyzerPruner.agreed_scores`
hands every rank rank 0's scores for the methods that rank neurons by a score.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...activity import ActivityStats, collect_activity
from ...errors import CheckpointError
from ...graph import ApplyResult, DependencyAnalyzer
from ...model_outputs import compare_outputs, run_model
from ...plan import GroupRemoval, PruningPlan
from .. import distributed as dist_util
from ..mechanics.optim_surgery import slice_optimizer_state

__all__ = ["TrainingMethod", "AnalyzerPruner", "RemovalEvent", "MethodContext", "ERROR_SAMPLES"]

#: A lossy removal's output change is measured on at most this many measurement samples (a held copy of
#: 256 ImageNet inputs is 150 MB; 1024 would be 600 MB).
ERROR_SAMPLES = 256


@dataclass
class RemovalEvent:
    """One death measurement (and removal, unless ``applied`` is False).

    ``step``: optimizer steps completed; ``removed``: channels removed now; ``live``: live neurons after
    the event; ``total``: neurons of the original model; ``present``: channels still in the model;
    ``dead``: channels measured dead (removed now or kept by min_channels / round_to / blocked groups);
    ``plan_delta``: this event's removals in the numbering of the model *before* it; ``error``: for a
    lossy criterion, :func:`compressor.model_outputs.compare_outputs` of the model's outputs just before and
    after the removal on the method's measurement samples (None when lossless or nothing was removed).
    """

    step: int
    removed: int
    live: int
    total: int
    plan_delta: PruningPlan
    seconds: float
    present: int = 0
    dead: int = 0
    applied: bool = False
    final: bool = False
    error: dict[str, Any] | None = None  # a lossy removal's output change on the measurement samples

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the plan delta's details)."""
        return {"step": self.step, "removed": self.removed, "live": self.live, "total": self.total,
                "present": self.present, "dead": self.dead, "applied": self.applied, "final": self.final,
                "seconds": self.seconds, **({"error": self.error} if self.error is not None else {}),
                "groups": [{"root": g.root, "before": g.size, "after": g.after} for g in self.plan_delta.groups]}


@dataclass
class MethodContext:
    """What a run hands a method when it builds it.

    ``measurement_loader(samples)`` returns a loader over that many held-aside samples without
    augmentation (from the validation split when the recipe holds one out); under DDP each rank's
    loader holds its share. ``plan_owner`` is the method of the run that already owns the plan, if any.
    """

    model: nn.Module
    example_inputs: Tensor
    total_steps: int
    epochs: int
    seed: int
    measurement_loader: Callable[[int], Iterable[Any]]
    measurement_samples: Callable[[int], int]  # samples a measurement of that size sees on all ranks
    plan_owner: TrainingMethod | None = None


class TrainingMethod:
    """No-op defaults for every hook (subclasses override what they use)."""

    name: ClassVar[str] = "method"
    owns_plan: bool = False

    def __init__(self) -> None:
        self._apply_listeners: list[Callable[[ApplyResult], None]] = []

    @classmethod
    def build(cls, config: Any, ctx: MethodContext) -> TrainingMethod:
        """Build the method for a run from its recipe section ``config``."""
        raise NotImplementedError(f"{cls.__name__} does not implement build()")

    # hooks ------------------------------------------------------------------
    def penalty(self, step: int) -> Tensor | None:
        return None

    def on_train_start(self, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        """Once before the first optimizer step of a run (not on resume): a removal from the starting
        checkpoint (DemP's lossless removal before fine-tuning, a one-shot baseline's cut)."""
        return None

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        return None

    def end_of_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        return None

    def finalize(self, optimizer: torch.optim.Optimizer | None = None) -> RemovalEvent | None:
        return None

    def metrics(self, step: int) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """For the report: ``method``, ``criterion`` (a spec such as ``dead`` or ``dormant:0.025``),
        ``params`` (the criterion's settings), ``lossless`` and ``samples`` (held-aside samples it
        measured on, over all ranks; None when it reads weights only)."""
        return {"method": self.name, "criterion": "none", "params": {}, "lossless": True, "samples": None}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # structural removals ------------------------------------------------------
    def add_apply_listener(self, fn: Callable[[ApplyResult], None]) -> None:
        """Call ``fn(apply_result)`` after each structural removal this method makes."""
        self._apply_listeners.append(fn)

    def on_structural_removal(self, result: ApplyResult) -> None:
        """Another method removed neurons (its ``result.index_maps`` slice per-element state)."""

    def _notify_apply(self, result: ApplyResult) -> None:
        for fn in self._apply_listeners:
            fn(result)

    @staticmethod
    def check_state_version(state: Any, version: int, label: str) -> None:
        """Refuse a method state written by another version of demp (``label`` names the method)."""
        if not isinstance(state, dict) or state.get("version") != version:
            found = state.get("version") if isinstance(state, dict) else None
            raise CheckpointError(f"{label} state has version {found!r}, expected {version}; the checkpoint was "
                                  "written by another version of demp")


class AnalyzerPruner(TrainingMethod):
    """Plan ownership, neuron counting and structural removal for a training method."""

    owns_plan = True

    def __init__(self, model: nn.Module, *, example_inputs: Tensor | Sequence[Tensor], loader: Iterable[Any],
                 criterion: dict[str, Any], ignore: Sequence[str] = (), min_channels: int = 1,
                 round_to: int = 1, samples: int | None = None) -> None:
        super().__init__()
        self.model = dist_util.unwrap_model(model)
        self.example_inputs = example_inputs
        self.loader = loader
        self.samples = samples  # held-aside samples the measurements see (all ranks); None: weights only
        self.ignore = list(ignore)
        self.min_channels = int(min_channels)
        self.round_to = int(round_to)
        spec = getattr(self.model, "demp_spec", None)
        input_shape = list(example_inputs.shape[1:]) if isinstance(example_inputs, Tensor) else None
        self.plan = PruningPlan(criterion=dict(criterion), model=spec.to_dict() if spec is not None else None,
                                input_shape=input_shape)
        self._analyzer: DependencyAnalyzer | None = None
        self._live: dict[str, Tensor] = {}  # group root -> bool (current numbering); absent = all live
        self._probe: Tensor | None = None  # the measurement samples' inputs, for a lossy removal's error
        self.removals = 0
        self.forced_removals = 0  # removals that took live channels although the criterion is lossless
        self.steps_done = 0
        self.events: list[dict[str, Any]] = []
        self.total_neurons = sum(self.present_neurons().values())

    def one_sample(self) -> Tensor:
        """The first example input (what MACs are counted on); MAC counting needs one input tensor."""
        if not isinstance(self.example_inputs, Tensor):
            raise TypeError("counting MACs needs the example inputs as one tensor")
        return self.example_inputs[:1]

    # ------------------------------------------------------------------ analyzer
    @property
    def analyzer(self) -> DependencyAnalyzer:
        """The analyzer of the current architecture (rebuilt lazily after any removal)."""
        if self._analyzer is None or self._analyzer._stale:
            self._analyzer = DependencyAnalyzer(self.model, self.example_inputs, ignore=self.ignore,
                                                min_channels=self.min_channels, round_to=self.round_to)
        return self._analyzer

    def on_structural_removal(self, result: ApplyResult) -> None:
        """Another method changed the model: forget the analyzer and the masks that no longer fit."""
        self._analyzer = None
        self._drop_stale_masks()

    def _drop_stale_masks(self) -> None:
        sizes = {g.root: g.size for g in self.analyzer.neuron_groups}
        self._live = {r: m for r, m in self._live.items() if sizes.get(r) == m.numel()}

    def collect(self, fields: tuple[str, ...]) -> ActivityStats:
        """Activity statistics at every consumer input on ``loader`` (all-reduced under DDP)."""
        stats = collect_activity(self.model, self.loader, layers=self.analyzer.consumer_names, progress=False,
                                 desc=self.name, fields=fields)
        if dist_util.active():
            stats.all_reduce()
        return stats

    @staticmethod
    def agreed_scores(scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rank 0's per-group scores on every rank under DDP (``scores`` itself otherwise).

        A score-ranked removal is then decided from identical numbers on every rank, even where the
        ranks' own scores could differ (each rank's share of the samples, float results that differ
        between machines), so the plans cannot diverge.
        """
        if not dist_util.active():
            return scores
        return dist_util.broadcast_from_main({k: v.detach().cpu() for k, v in scores.items()})

    # ------------------------------------------------------------------ counting
    def present_neurons(self) -> dict[str, int]:
        """Channels currently in the model, per neuron group root."""
        return {g.root: int(g.size) for g in self.analyzer.neuron_groups}

    def live_neurons(self) -> dict[str, int]:
        """Channels present and live at the last measurement (all present ones before the first)."""
        out = {}
        for g in self.analyzer.neuron_groups:
            mask = self._live.get(g.root)
            out[g.root] = int(g.size) if mask is None or mask.numel() != g.size else int(mask.sum())
        return out

    def rooted_groups(self, accept: Callable[[nn.Module, Any], bool]) -> list[Any]:
        """Unblocked neuron groups whose root module passes ``accept(module, group)``, in analyzer order."""
        out = []
        for g in self.analyzer.neuron_groups:
            if g.blocked is not None:
                continue
            try:
                module = self.model.get_submodule(g.root)
            except AttributeError:
                continue
            if accept(module, g):
                out.append(g)
        return out

    def measured_live(self, stats: ActivityStats, criterion: Any) -> int:
        """Set the live masks of the neuron groups from ``stats``; returns the channels measured dead."""
        roots = {g.root for g in self.analyzer.neuron_groups}
        self._live = {r: m.clone() for r, m in self.analyzer.live_masks(stats, criterion).items() if r in roots}
        return int(sum(int((~m).sum()) for m in self._live.values()))

    @property
    def lossless(self) -> bool:
        """Whether the removals are exact by construction (the activity criterion says so)."""
        return bool(getattr(getattr(self, "criterion", None), "lossless", False))

    def describe(self) -> dict[str, Any]:
        crit = getattr(self, "criterion", None)  # the activity criterion the removals are decided by
        out = {"method": self.name, "criterion": crit.spec() if crit is not None else self.plan.criterion.get("name"),
               "params": dict(self.plan.criterion), "lossless": self.lossless and not self.forced_removals,
               "samples": self.samples}
        errors = [e["error"] for e in self.events if e.get("error")]
        if errors:  # the largest output change any removal of the run caused (lossy criteria)
            worst = max(errors, key=lambda e: e["max_abs_diff"])
            out["removal_error"] = {"max_abs_diff": worst["max_abs_diff"], "rel_diff": worst["rel_diff"],
                                    "removals": len(errors), "samples": worst["samples"]}
        return out

    # ------------------------------------------------------------------ removal
    def plan_from_ranking(self, ranked: Iterable[tuple[float, str, int]], budget: int,
                          groups: dict[str, Any], base: PruningPlan | None = None) -> PruningPlan:
        """Take up to ``budget`` channels ``(score, root, index)`` in the given order, every group keeping
        at least ``max(min_channels, 1)`` channels; the removals as a plan (current numbering). ``base``'s
        removals (same numbering) come first and do not count against ``budget``."""
        chosen: dict[str, list[int]] = {g.root: list(g.removed) for g in base.groups} if base is not None else {}
        for _, root, i in ranked:
            if budget <= 0:
                break
            g = groups[root]
            picked = chosen.setdefault(root, [])
            if g.size - len(picked) <= max(g.min_channels, 1) or i in picked:
                continue
            picked.append(i)
            budget -= 1
        removals = [GroupRemoval(r, groups[r].size, sorted(ix), groups[r].members) for r, ix in chosen.items() if ix]
        return PruningPlan(groups=removals, criterion=self.plan.criterion)

    def trial_model(self, delta: PruningPlan) -> nn.Module:
        """A copy of the model with ``delta`` (current numbering) applied; the model itself is untouched."""
        trial = copy.deepcopy(self.model)
        if not delta.is_empty():
            DependencyAnalyzer(trial, self.example_inputs, ignore=self.ignore, min_channels=self.min_channels,
                               round_to=self.round_to).apply(delta, track_indices=False)
        return trial

    def shortest_prefix(self, ranked: Sequence[tuple[float, str, int]], groups: dict[str, Any],
                        reaches: Callable[[PruningPlan], bool], base: PruningPlan | None = None) -> PruningPlan:
        """The plan taking the fewest channels of ``ranked`` (in order, after ``base``) for which
        ``reaches(plan)`` holds, by bisection (``reaches`` must be monotone in the number taken); all of
        them when none does. A MAC or parameter target is met this way: each trial counts a copy."""
        take = lambda k: self.plan_from_ranking(ranked, k, groups, base=base)  # noqa: E731
        lo, hi = 0, len(ranked)
        if not reaches(take(hi)):
            return take(hi)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reaches(take(mid)) else (mid + 1, hi)
        return take(lo)

    def remove(self, delta: PruningPlan, optimizer: torch.optim.Optimizer | None, *, step: int, dead: int,
               final: bool, t0: float, exact: bool | None = None) -> RemovalEvent:
        """Apply ``delta`` (current numbering) in place, slice optimizer state, compose the plan.

        With a lossy criterion (or ``exact=False``: this removal takes live channels) and measurement
        samples (a method that reads weights only has none), the outputs on up to :data:`ERROR_SAMPLES`
        of them are compared just before and after (``error``; under DDP on each rank's own share, a
        diagnostic: rank 0's is the one written).
        """
        exact = self.lossless if exact is None else exact
        probe = self._probe_inputs() if not delta.is_empty() and not exact else None
        before = run_model(self.model, probe, batch_size=256) if probe is not None else None
        if not delta.is_empty():
            for g in delta.groups:  # keep the live masks in the new numbering
                if g.root in self._live:
                    self._live[g.root] = self._live[g.root][torch.as_tensor(g.kept, dtype=torch.long)]
            result = self.analyzer.apply(delta)
            if optimizer is not None:
                slice_optimizer_state(optimizer, result)
            for p in result.new_params.values():  # gradients of the old shape are meaningless now
                if p.grad is not None and p.grad.shape != p.shape:
                    p.grad = None
            self.plan = self.plan.compose(delta)
            self.removals += 1
            self.forced_removals += int(not exact and self.lossless)
            self._analyzer = None
            self._notify_apply(result)
        self._drop_stale_masks()
        error = (compare_outputs(before, run_model(self.model, probe, batch_size=256))
                 if before is not None and probe is not None else None)
        event = RemovalEvent(step=step, removed=delta.removed_channels, live=sum(self.live_neurons().values()),
                             total=self.total_neurons, plan_delta=delta, seconds=time.perf_counter() - t0,
                             present=sum(self.present_neurons().values()), dead=dead,
                             applied=not delta.is_empty(), final=final, error=error)
        self.events.append(event.to_dict())
        return event

    def _probe_inputs(self) -> Tensor | None:
        """Up to :data:`ERROR_SAMPLES` inputs of the measurement samples (this rank's share), gathered once."""
        if self._probe is None:
            xs: list[Tensor] = []
            for batch in self.loader:
                xs.append((batch[0] if isinstance(batch, (tuple, list)) else batch).detach().cpu())
                if sum(len(x) for x in xs) >= ERROR_SAMPLES:
                    break
            self._probe = torch.cat(xs)[:ERROR_SAMPLES] if xs else None
        return self._probe

    # ------------------------------------------------------------------ persistence
    def _base_state(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "total_neurons": int(self.total_neurons), "removals": self.removals,
                "forced_removals": self.forced_removals,
                "steps_done": self.steps_done, "events": [dict(e) for e in self.events],
                "live_masks": {r: m.detach().cpu().clone() for r, m in self._live.items()}}

    def _sync_architecture(self, plan: PruningPlan) -> None:
        """Make the model match ``plan``: nothing if already pruned to it, replay it if still dense."""
        sizes = {g.root: g.size for g in self.analyzer.groups}
        changed = [g for g in plan.groups if g.removed]
        if all(sizes.get(g.root) == g.after for g in changed):
            return
        if all(sizes.get(g.root) == g.size for g in changed):
            self.analyzer.apply(plan)
            self._analyzer = None
            return
        raise CheckpointError(f"the model matches neither the dense nor the pruned architecture recorded in the "
                              f"{self.name} state; build it from the same recipe before resuming")

    def _load_base_state(self, state: dict[str, Any]) -> None:
        plan = PruningPlan.from_dict(state["plan"])
        self._sync_architecture(plan)
        self.plan = plan
        self.total_neurons = int(state["total_neurons"])
        self.removals = int(state.get("removals", 0))
        self.forced_removals = int(state.get("forced_removals", 0))
        self.steps_done = int(state.get("steps_done", 0))
        self.events = [dict(e) for e in state.get("events", [])]
        self._live = {str(k): torch.as_tensor(v, dtype=torch.bool).cpu()
                      for k, v in state.get("live_masks", {}).items()}
        self._analyzer = None
        self._drop_stale_masks()
