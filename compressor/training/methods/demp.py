"""DemP — Demon Pruning: train so that neurons die, and remove them as they die.

From "A Demon at Work" (paper 000) and "Maxwell's Demon at Work" (paper 002, Dufort-Labbé et al.);
``docs/demp.md`` gives every option's source.

DemP does not score neurons. It changes the training dynamics so that more neurons die, and
physically removes the dead ones during training:

1. :meth:`DemP.penalty` — ``λ_t · R(θ)`` to add to the loss (regularizer and target from
   :mod:`..mechanics.regularizers`, strength λ_t from :mod:`..mechanics.schedules`).
2. :meth:`DemP.after_step` — after ``optimizer.step()``: Gaussian noise ``σ_t · N(0, 1)`` on the
   parameters of *live* neurons only (:mod:`..mechanics.noise`); every ``interval`` steps, measure
   death on the held-aside ``death_loader`` (eval mode) with ``criterion`` (``dead``: zero outputs,
   lossless; ``saturated``: never positive, for Leaky ReLU / GELU / SiLU, lossy, each removal's
   output change on the death samples reported), decide with the analyzer, remove the dead
   channels in place, slice the optimizer state and compose the removal into :attr:`DemP.plan`
   (original numbering) — the shared :class:`~.base.AnalyzerPruner` path.
3. :meth:`DemP.finalize` — one last measurement and removal at the end of training.

Beyond the papers (``docs/demp.md`` §8-9): budget mode (a target share instead of a λ, with a
deadline), ``remove_at_start`` (the dead neurons of a starting checkpoint go before the first step),
``cost`` (each group's λ scaled by what one of its neurons costs, :mod:`..mechanics.costs`) and
``select: budget`` (the penalty only on the neurons a budget still needs, :mod:`..mechanics.selection`).

Step convention: ``step`` is the 0-based index of the optimizer step being taken (the number of
optimizer steps completed before it). Call ``penalty(step)`` before ``backward()`` and
``after_step(step, optimizer)`` after ``optimizer.step()`` with the same value. Death is measured
when ``(step + 1) % interval == 0``, i.e. after every ``interval`` completed steps; the resulting
:class:`RemovalEvent` reports ``step + 1`` (steps completed).

The model is pruned *in place*: the same ``nn.Module`` object, new parameter objects. Anything else
that holds parameters (an EMA copy, a DDP wrapper) must be refreshed by the caller after an event.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...counting import count_macs, count_params, neuron_sparsity
from ...criteria import Dormant, parse_criterion
from ...errors import UsageError
from ...graph import ApplyResult
from ...plan import PruningPlan
from ..mechanics.budget import BudgetController
from ..mechanics.costs import describe_costs, group_weights, neuron_costs, tensor_weights
from ..mechanics.noise import LiveNoise, NoiseTarget
from ..mechanics.regularizers import Regularizer
from ..mechanics.schedules import get_schedule
from ..mechanics.selection import BudgetSelection, rank_by_scale
from .base import AnalyzerPruner, MethodContext, RemovalEvent
from .demp_config import DemPConfig

log = logging.getLogger(__name__)

__all__ = ["DemPConfig", "DemP"]

STATE_VERSION = 1
#: ``interval: 0`` measures this many times over a run (about every 5% of the steps).
AUTO_MEASUREMENTS = 20
#: Budget mode warns when one measurement interval carries the share past its target by more than this.
OVERSHOOT_WARNING = 0.03
#: Budget mode's deadline removes the live neurons with the lowest ReDo score (mean |activation| over the layer's).
CLOSEST_TO_DEAD = Dormant()


def _no_target_message(config: DemPConfig) -> str:
    """Why a penalty that selects no tensor is refused, and what to set instead."""
    if config.target == "norm_scale":
        what = ("the model has no normalization layer with a trainable scale (BatchNorm, LayerNorm, GroupNorm, "
                "InstanceNorm or RMSNorm with affine=True)")
        fix = ("set demp.target: weights (the first DemP paper's choice: Conv/Linear weights; e.g. "
               "regularizer lasso with peak 1e-3, as samples/recipes/demp-mlp-digits.yaml does)")
    else:
        what = f"demp.target = {config.target} selects no trainable tensor of this model"
        fix = "choose another demp.target (weights | norm_scale | all)"
    problem = (f"demp.regularizer = {config.regularizer} with demp.target = {config.target} would regularize "
               f"nothing: {what}, so the penalty would be 0")
    if config.select != "all":  # a budget chooses among normalization scales; it needs its penalty
        return (f"{problem}, and a budget (demp compress --target-*) could not be reached. Set demp.target: weights "
                "and demp.select: all (on demp compress: --set demp.target=weights --set demp.select=all): the "
                "penalty then acts on every Conv/Linear weight")
    return (f"{problem} and DemP would only add noise. {fix[0].upper() + fix[1:]}, or set demp.regularizer: none "
            "to train with noise and dead-neuron removal alone")


class DemP(AnalyzerPruner):
    """Penalty, live-only noise and dynamic dead-neuron removal for one model (see the module docstring)."""

    name = "demp"

    def __init__(self, model: nn.Module, config: DemPConfig, *, example_inputs: Tensor | Sequence[Tensor],
                 death_loader: Iterable[Any], total_steps: int, seed: int = 0, samples: int | None = None) -> None:
        if not isinstance(config, DemPConfig):
            raise TypeError(f"config must be a DemPConfig, got {type(config).__name__}")
        config.validate()
        if int(total_steps) < 1:
            raise UsageError(f"DemP needs total_steps >= 1 (got {total_steps})")
        self.config = config
        self.criterion = parse_criterion(f"{config.criterion}:{float(config.eps)!r}")
        super().__init__(model, example_inputs=example_inputs, loader=death_loader,
                         criterion=self.criterion.to_dict(), ignore=config.ignore, min_channels=config.min_channels,
                         round_to=config.round_to, samples=samples)
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.span_steps = max(1, int(config.span * self.total_steps))
        self.interval = int(config.interval) or max(1, round(self.total_steps / AUTO_MEASUREMENTS))
        shape = dict(pct_start=config.pct_start, div_factor=config.div_factor,
                     final_div_factor=config.final_div_factor)
        self._lam = get_schedule(config.schedule, config.peak, self.span_steps, **shape)
        self._sigma = get_schedule(config.schedule, config.noise, self.span_steps, **shape)
        self.regularizer = Regularizer(self.model, config.regularizer, config.target)
        if config.regularizer != "none" and config.peak > 0 and not self.regularizer.params:
            raise UsageError(_no_target_message(config))
        self.noise = LiveNoise(self.seed)
        share = config.budget_share
        # select: budget penalizes only the neurons the budget needs, so the choice steers and lambda stays at
        # peak (the papers' penalty is steered by the gain: every neuron feels it, an overshoot cannot be undone)
        steer = config.select == "all"
        self.budget = None
        if share is not None:
            self.budget = (BudgetController(share, self.total_steps, config.reach_by) if steer else
                           BudgetController(share, self.total_steps, config.reach_by, gain=1.0, rate=0.0))
        self._dense_cost = self._cost(self.model) if config.budget_kind in ("macs", "params") else None
        self.measurements = 0
        self.last_measure_step = -1  # steps completed at the last measurement (-1: never)
        self.cost_table: list[dict[str, Any]] = []  # the cost-aware penalty's group weights at the start
        self.group_weight: dict[str, float] = {}  # root -> cost weight of one neuron (mean 1 over prunable neurons)
        self.selection = BudgetSelection()
        self.add_apply_listener(self._after_own_removal)
        self._refresh_weights()
        self._refresh_selection()
        self._refresh_noise()

    @classmethod
    def build(cls, config: DemPConfig, ctx: MethodContext) -> DemP:
        return cls(ctx.model, config, example_inputs=ctx.example_inputs,
                   death_loader=ctx.measurement_loader(config.death_samples), total_steps=ctx.total_steps,
                   seed=ctx.seed, samples=ctx.measurement_samples(config.death_samples))

    # ------------------------------------------------------------------ schedules
    def lam(self, step: int) -> float:
        """λ at ``step`` (0-based optimizer step index).

        In budget mode: the one-cycle rise (from peak/div_factor), then ``peak`` held instead of the decay,
        times the controller's gain; 0 once the target is reached.
        """
        if self.config.regularizer == "none":
            return 0.0
        if self.budget is not None:  # the schedule's rise, then peak held; times the gain (0 once reached)
            rising = self.config.schedule == "one_cycle" and step < int(self.config.pct_start * self.span_steps)
            return (self._lam(step) if rising else self.config.peak) * self.budget.scale()
        return self._lam(step)

    def sigma(self, step: int) -> float:
        """Noise σ at ``step`` (0 once a budget's target is reached)."""
        return 0.0 if self.budget is not None and self.budget.frozen else self._sigma(step)

    def _cost(self, model: nn.Module) -> int:
        """What a MAC or parameter budget counts of ``model`` (the counters of every report)."""
        if self.config.budget_kind == "params":
            return count_params(model)
        return count_macs(model, self.one_sample()).total_macs

    def budget_measured(self) -> float:
        """The share the budget steers: neurons removed, or MACs / parameters removed, over the dense model's.

        Removed, not merely dead: a dead channel kept by ``round_to`` or ``min_channels`` is still in the
        model the user gets, so it does not count towards the target."""
        if self._dense_cost is not None:
            return 1.0 - self._cost(self.model) / self._dense_cost
        present = sum(self.present_neurons().values())
        return 1.0 - present / self.total_neurons if self.total_neurons else 0.0

    # ------------------------------------------------------------------ the training hooks
    def penalty(self, step: int) -> Tensor:
        """``λ_step · R(params)`` (``select: budget``: the chosen neurons' term of :mod:`..mechanics.selection`)
        — add it to the loss before ``backward()``."""
        if self.config.select == "budget":
            return self.selection(self.lam(step))
        return self.regularizer(self.lam(step))

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        """Call right after ``optimizer.step()``: noise on live neurons; every ``interval`` steps measure/remove.

        Returns a :class:`RemovalEvent` when death was measured at this step, else None.
        """
        sigma = self.sigma(step)
        if sigma > 0.0:
            self.noise.apply(sigma)
        done = int(step) + 1
        self.steps_done = max(self.steps_done, done)
        if done % self.interval != 0:
            return None
        return self._measure(done, optimizer, remove=self.config.prune and not self.config.final_only, final=False)

    def on_train_start(self, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        """With ``remove_at_start``: measure death on the starting weights and remove the dead neurons
        (lossless with ``dead`` at eps 0); a budget counts this share as the lossless part."""
        if not self.config.remove_at_start:
            return None
        event = self._measure(0, optimizer, remove=self.config.prune, final=False)
        if self.budget is not None:
            self.budget.lossless_share = self.budget_measured()
        return event

    def finalize(self, optimizer: torch.optim.Optimizer | None = None) -> RemovalEvent:
        """The final measurement and removal at the end of training (measurement only with ``prune=False``)."""
        done = self.steps_done if self.steps_done > 0 else self.total_steps
        event = self._measure(done, optimizer, remove=self.config.prune, final=True)
        if self.budget is not None:
            self.budget.final_share = self.budget_measured()
        return event

    # ------------------------------------------------------------------ measurement and removal
    def _measure(self, done: int, optimizer: torch.optim.Optimizer | None, *, remove: bool,
                 final: bool) -> RemovalEvent:
        t0 = time.perf_counter()
        budget = self.budget
        deadline = budget is not None and remove and not budget.frozen and done >= budget.deadline
        stats = self.collect(tuple(dict.fromkeys(self.criterion.fields + (CLOSEST_TO_DEAD.fields if deadline else ()))))
        dead = self.measured_live(stats, self.criterion)
        delta = (self.analyzer.decide(stats, self.criterion) if remove
                 else PruningPlan(criterion=self.criterion.to_dict()))
        closed_from, dead_removed = None, delta.removed_channels
        if deadline and budget is not None:  # the first measurement past reach_by: close the gap if any
            share = self.share_after(delta)
            if budget.due(done, share):
                closed_from = share
                delta = self.close_gap(stats, delta, budget.target)
        event = self.remove(delta, optimizer, step=done, dead=dead, final=final, t0=t0,
                            exact=False if closed_from is not None else None)
        if budget is not None and closed_from is not None:
            budget.close(done, closed_from, self.budget_measured(), delta.removed_channels - dead_removed, event.error)
            log.info("DemP budget: lambda reached %.1f%% of the %.1f%% target by the deadline (step %d); the %d "
                     "live neurons closest to dead were removed to close the gap (output change: %s)",
                     100 * closed_from, 100 * budget.target, done, budget.closed_neurons,
                     "not measured" if event.error is None else f"max |diff| {event.error['max_abs_diff']:.3g}")
        elif budget is not None and not final:
            budget.update(done, self.budget_measured())
            if (budget.reached_step == done and budget.last_measured is not None
                    and budget.last_measured > budget.target + OVERSHOOT_WARNING):
                log.warning("DemP budget: %.1f%% gone at step %d, past the %.1f%% target in one measurement interval "
                            "(death is irreversible). Neurons died faster than lambda was steering them, usually "
                            "from the learning rate: use train.warmup_epochs, a lower train.lr or a shorter "
                            "demp.interval", 100 * budget.last_measured, done, 100 * budget.target)
        self._refresh_selection()
        self._refresh_noise()
        self.measurements += 1
        self.last_measure_step = done
        log.debug("DemP step %d: %d dead, %d removed, %d/%d present (%.2fs)", done, dead, event.removed,
                  event.present, self.total_neurons, event.seconds)
        return event

    # ------------------------------------------------------------------ budget mode's deadline
    def share_after(self, delta: PruningPlan) -> float:
        """The budget's share (neurons, MACs or parameters removed) once ``delta`` is applied; nothing changes."""
        if self._dense_cost is not None:
            if delta.is_empty():
                return self.budget_measured()
            return 1.0 - self._cost(self.trial_model(delta)) / self._dense_cost
        present = sum(self.present_neurons().values()) - delta.removed_channels
        return 1.0 - present / self.total_neurons if self.total_neurons else 0.0

    def close_gap(self, stats: Any, delta: PruningPlan, target: float) -> PruningPlan:
        """``delta`` plus the fewest live neurons closest to dead (lowest ReDo score at their most active
        reader, ranked over every prunable group) that bring the budget's share to ``target``.

        Neurons: the count follows from the share. MACs: a bisection over the ranking, each trial applied
        to a copy of the model and counted (:meth:`share_after`). Groups keep ``min_channels``, so a
        target beyond what they allow ends as close as they permit."""
        groups = {g.root: g for g in self.analyzer.neuron_groups if g.blocked is None}
        ranked: list[tuple[float, str, int]] = []
        for root, g in groups.items():
            scores = self.analyzer.channel_scores(g, stats, CLOSEST_TO_DEAD.scores)
            live = self._live.get(root, torch.ones(g.size, dtype=torch.bool))
            ranked += [(float(v), root, i) for i, v in enumerate(scores.tolist()) if live[i] and math.isfinite(v)]
        ranked.sort()
        if self._dense_cost is None:
            count = max(0, math.ceil(round((target - self.share_after(delta)) * self.total_neurons, 6)))
            return self.plan_from_ranking(ranked, count, groups, base=delta)
        return self.shortest_prefix(ranked, groups, lambda plan: self.share_after(plan) >= target, base=delta)

    def _after_own_removal(self, result: ApplyResult) -> None:
        self.regularizer.refresh()  # the regularized tensors are new parameter objects
        self._refresh_weights()

    def on_structural_removal(self, result: ApplyResult) -> None:
        super().on_structural_removal(result)
        self.regularizer.refresh()
        self._refresh_weights()
        self._refresh_selection()
        self._refresh_noise()

    def _refresh_weights(self) -> None:
        """The cost-aware penalty's weights for the architecture now (costs change as widths shrink)."""
        if self.config.cost == "uniform" and self.config.select == "all":
            return
        costs = neuron_costs(self.model, self.analyzer, self.example_inputs, self.config.cost)
        self.group_weight = group_weights(self.analyzer, costs)
        if self.config.cost != "uniform" and self.regularizer.params:
            self.regularizer.set_weights(tensor_weights(self.analyzer, costs, self.regularizer.names))
        if not self.cost_table and self.config.cost != "uniform":
            self.cost_table = describe_costs(self.analyzer, costs)

    def _refresh_selection(self) -> None:
        """``select: budget``: choose the live neurons with the smallest |γ| / cost weight whose removal would
        reach the budget, and penalize only them (none once the budget is reached)."""
        if self.config.select != "budget" or self.budget is None:
            return
        if self.budget.frozen:
            self.selection.clear()
            return
        groups = {g.root: g for g in self.analyzer.neuron_groups if g.blocked is None}
        ranked = rank_by_scale(self.model, {r: self.analyzer.channel_params(r) for r in groups}, groups, self._live,
                               self.group_weight, self.regularizer.names)
        target = self.budget.target
        if self._dense_cost is None:
            count = max(0, math.ceil(round((target - self.budget_measured()) * self.total_neurons, 6)))
            plan = self.plan_from_ranking(ranked, count, groups)
        else:
            plan = self.shortest_prefix(ranked, groups, lambda p: self.share_after(p) >= target)
        chosen = {g.root: list(g.removed) for g in plan.groups}
        self.selection.refresh(self.model, {r: self.analyzer.channel_params(r) for r in chosen}, chosen,
                               self.group_weight)

    def _refresh_noise(self) -> None:
        """Rebuild the per-tensor live masks the noise uses (after a measurement or removal)."""
        if self.config.noise == 0.0:
            self.noise.set_targets([])
            return
        params = dict(self.model.named_parameters())
        masks: dict[str, Tensor] = {}
        for group in self.analyzer.neuron_groups:
            live = self._live.get(group.root)
            if live is None:
                live = torch.ones(group.size, dtype=torch.bool)
            for name, dim, idxs, root_idxs in self.analyzer.channel_params(group.root):
                p = params.get(name)
                if p is None or not p.requires_grad:
                    continue
                along = torch.zeros(p.shape[dim], dtype=torch.bool)
                along[torch.as_tensor(idxs, dtype=torch.long)] = live[torch.as_tensor(root_idxs, dtype=torch.long)]
                view = [1] * p.dim()
                view[dim] = p.shape[dim]
                full = along.view(view).expand(p.shape)
                masks[name] = masks[name] | full if name in masks else full
        targets = [NoiseTarget(p, None if bool(masks[name].all()) else masks[name].to(p.device))
                   for name, p in params.items() if name in masks]  # named_parameters order: deterministic
        self.noise.set_targets(targets)

    # ------------------------------------------------------------------ metrics
    @property
    def dead_neurons(self) -> int:
        """Channels present but dead at the last measurement (kept by min_channels / round_to / blocked groups)."""
        return sum(self.present_neurons().values()) - sum(self.live_neurons().values())

    def metrics(self, step: int) -> dict[str, Any]:
        """A flat record for logging at ``step``."""
        present = sum(self.present_neurons().values())
        return {"lambda": self.lam(step), "sigma": self.sigma(step), "neurons_total": self.total_neurons,
                "neurons_present": present, "neurons_live": sum(self.live_neurons().values()),
                "neuron_sparsity": neuron_sparsity(self.total_neurons, present),
                "removals": self.removals, "noisy_elements": self.noise.noisy_elements, **self._budget_fields()}

    def _budget_fields(self) -> dict[str, Any]:
        """Budget mode's record: target, plan and measurement at the last measurement, gain, when reached."""
        b = self.budget
        if b is None:
            return {}
        kind = {"neurons": "neuron_sparsity", "macs": "macs_removed",
                "params": "params_removed"}[str(self.config.budget_kind)]
        return {"budget_kind": kind, "budget_target": b.target, "budget_planned": b.last_planned,
                "budget_measured": b.last_measured, "budget_gain": b.gain, "budget_reached_step": b.reached_step,
                "budget_closed_step": b.closed_step, "budget_closed_from": b.closed_from,
                "budget_closed_neurons": b.closed_neurons}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.budget is not None:
            out["budget"] = {**{k[len("budget_"):]: v for k, v in self._budget_fields().items()},
                             "breakdown": self.budget.breakdown(), "beyond_papers": True}
        if self.config.cost != "uniform":
            out["cost_aware"] = {"cost": self.config.cost, "beyond_papers": True, "groups": self.cost_table}
        if self.config.select == "budget":
            out["select"] = {"select": "budget", "beyond_papers": True, **self.selection.describe()}
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: plain values and tensors only (safe with ``weights_only``)."""
        return {"version": STATE_VERSION, "config": self.config.to_dict(), "total_steps": self.total_steps,
                "seed": self.seed, **self._base_state(), "noise": self.noise.state_dict(),
                "measurements": int(self.measurements), "last_measure_step": int(self.last_measure_step),
                **({"budget": self.budget.state_dict()} if self.budget is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        The model may be either already pruned to the saved plan (the trainer replays the plan before
        loading weights) or still dense, in which case the saved plan is replayed on it here — then
        build the optimizer (or load its state) *after* this call.
        """
        self.check_state_version(state, STATE_VERSION, "DemP")
        saved_config = state.get("config", {})
        if saved_config and saved_config != self.config.to_dict():
            changed = sorted(k for k in set(saved_config) | set(self.config.to_dict())
                             if saved_config.get(k) != self.config.to_dict().get(k))
            warnings.warn(f"resuming DemP with changed options {', '.join(changed)}; the run will not "
                          "reproduce an uninterrupted one", stacklevel=2)
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            warnings.warn("resuming DemP with a different number of total steps; the λ/σ schedules change",
                          stacklevel=2)
        self._load_base_state(state)
        self.measurements = int(state.get("measurements", 0))
        self.last_measure_step = int(state.get("last_measure_step", -1))
        self.regularizer.refresh()
        self._refresh_weights()
        self._refresh_noise()
        self.noise.load_state_dict(state.get("noise", {}))
        if self.budget is not None:
            self.budget.load_state_dict(state.get("budget", {}))
        self._refresh_selection()
