"""DemP — Demon Pruning: train so that neurons die, and remove them as they die (methods.md §2).

DemP does not score neurons. It changes the training dynamics so that more neurons die, and
physically removes the dead ones during training:

1. :meth:`DemP.penalty` — ``λ_t · R(θ)`` to add to the loss (regularizer and target from
   :mod:`.regularizers`, strength λ_t from :mod:`.schedules`).
2. :meth:`DemP.after_step` — after ``optimizer.step()``: Gaussian noise ``σ_t · N(0, 1)`` on the
   parameters of *live* neurons only (:mod:`.noise`); every ``interval`` steps, measure death on the
   held-aside ``death_loader`` (:func:`compressor.activity.collect_activity`, eval mode), decide with a
   fresh :class:`compressor.graph.DependencyAnalyzer`, remove the dead channels in place, slice the
   optimizer state (:mod:`.optim_surgery`) and compose the removal into :attr:`DemP.plan`
   (original numbering).
3. :meth:`DemP.finalize` — one last measurement and removal at the end of training.

Step convention: ``step`` is the 0-based index of the optimizer step being taken (the number of
optimizer steps completed before it). Call ``penalty(step)`` before ``backward()`` and
``after_step(step, optimizer)`` after ``optimizer.step()`` with the same value. Death is measured
when ``(step + 1) % interval == 0``, i.e. after every ``interval`` completed steps; the resulting
:class:`RemovalEvent` reports ``step + 1`` (steps completed).

The model is pruned *in place*: the same ``nn.Module`` object, new parameter objects. Anything else
that holds parameters (an EMA copy, a DDP wrapper) must be refreshed by the caller after an event.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, UsageError
from ..plan import PruningPlan
from .method import TrainingMethod
from .noise import LiveNoise, NoiseTarget
from .optim_surgery import slice_optimizer_state
from .regularizers import REGULARIZERS, TARGETS, Regularizer
from .schedules import SCHEDULES, get_schedule

log = logging.getLogger(__name__)

__all__ = ["DemPConfig", "DemP", "RemovalEvent"]

STATE_VERSION = 1


@dataclass
class DemPConfig:
    """DemP's options; defaults from the papers and the authors' code (see ``docs/demp.md``).

    - ``regularizer``: ``l2`` | ``lasso`` | ``cdg_l2`` | ``cdg_lasso`` | ``none`` — added to the loss.
    - ``target``: ``weights`` (Conv/Linear weights, classifier included, biases excluded) |
      ``norm_scale`` (γ of normalization layers; the later paper's final runs) | ``all``.
    - ``peak``: peak λ. 5e-3 is in the middle of the authors' Adam + Lasso(γ) sweeps
      (5e-8 … 0.35); tune it: higher gives more sparsity and, eventually, lower accuracy.
    - ``schedule``: ``one_cycle`` (optax cosine one-cycle, the paper's default) | ``constant`` | ``linear``.
    - ``span``: fraction of the total steps the λ and σ schedules span (authors: 0.85–0.9).
    - ``pct_start``, ``div_factor``, ``final_div_factor``: one-cycle shape (optax defaults).
    - ``noise``: peak σ of the asymmetric noise on live neurons (5e-5 in the final runs; 0 disables).
    - ``interval``: measure death and remove every k optimizer steps (paper: 1000).
    - ``death_samples``: training samples held aside for the death measurement (paper: 1024).
    - ``eps``: a channel is dead when max|x| <= eps at every consumer (0: exact, lossless).
    - ``min_channels``, ``round_to``, ``ignore``: passed to the DependencyAnalyzer.
    - ``prune``: False measures (for metrics and the noise's live masks) but never removes.
    - ``final_only``: measure every ``interval`` steps but remove only once, in :meth:`DemP.finalize`
      (the "remove at the end" baseline of the dynamic-pruning benchmark).
    """

    regularizer: str = "lasso"
    target: str = "norm_scale"
    peak: float = 5e-3
    schedule: str = "one_cycle"
    span: float = 0.85
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    noise: float = 5e-5
    interval: int = 1000
    death_samples: int = 1024
    eps: float = 0.0
    min_channels: int = 1
    round_to: int = 1
    ignore: list[str] = field(default_factory=list)
    prune: bool = True
    final_only: bool = False

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the bad option and its valid values."""

        def bad(name: str, value: Any, want: str) -> UsageError:
            return UsageError(f"demp.{name} = {value!r} is invalid: expected {want}")

        if self.regularizer not in REGULARIZERS:
            raise bad("regularizer", self.regularizer, " | ".join(REGULARIZERS))
        if self.target not in TARGETS:
            raise bad("target", self.target, " | ".join(TARGETS))
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, " | ".join(SCHEDULES))
        for name in ("peak", "noise", "eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise bad(name, value, "a finite number >= 0")
        if not 0 < self.span <= 1:
            raise bad("span", self.span, "a fraction 0 < span <= 1 of the training steps")
        if not 0 <= self.pct_start <= 1:
            raise bad("pct_start", self.pct_start, "0 <= pct_start <= 1")
        if not self.div_factor > 0 or not self.final_div_factor > 0:
            raise bad("div_factor/final_div_factor", (self.div_factor, self.final_div_factor), "numbers > 0")
        if int(self.interval) != self.interval or self.interval < 1:
            raise bad("interval", self.interval, "an integer >= 1 (optimizer steps between removals)")
        if int(self.death_samples) != self.death_samples or self.death_samples < 1:
            raise bad("death_samples", self.death_samples, "an integer >= 1")
        if int(self.min_channels) != self.min_channels or self.min_channels < 1:
            raise bad("min_channels", self.min_channels, "an integer >= 1")
        if int(self.round_to) != self.round_to or self.round_to < 1:
            raise bad("round_to", self.round_to, "an integer >= 1")
        if isinstance(self.ignore, str) or not all(isinstance(s, str) for s in self.ignore):
            raise bad("ignore", self.ignore, "a list of layer names")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DemPConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown demp option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass
class RemovalEvent:
    """One death measurement (and removal, unless ``applied`` is False).

    ``step``: optimizer steps completed; ``removed``: channels removed now; ``live``: live neurons after
    the event; ``total``: neurons of the original model; ``present``: channels still in the model;
    ``dead``: channels measured dead (removed now or kept by min_channels / round_to / blocked groups);
    ``plan_delta``: this event's removals in the numbering of the model *before* it.
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the plan delta's details)."""
        return {"step": self.step, "removed": self.removed, "live": self.live, "total": self.total,
                "present": self.present, "dead": self.dead, "applied": self.applied, "final": self.final,
                "seconds": self.seconds,
                "groups": [{"root": g.root, "before": g.size, "after": g.after} for g in self.plan_delta.groups]}


def _unwrap(model: nn.Module) -> nn.Module:
    """The module DDP / DataParallel wrap (parameter names must not carry the ``module.`` prefix)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class DemP(TrainingMethod):
    """Penalty, live-only noise and dynamic dead-neuron removal for one model (see the module docstring)."""

    name = "demp"
    owns_plan = True

    def __init__(
        self,
        model: nn.Module,
        config: DemPConfig,
        *,
        example_inputs: Tensor | Sequence[Tensor],
        death_loader: Iterable[Any],
        total_steps: int,
        seed: int = 0,
    ) -> None:
        from ..criteria import parse_criterion

        super().__init__()
        if not isinstance(config, DemPConfig):
            raise TypeError(f"config must be a DemPConfig, got {type(config).__name__}")
        config.validate()
        if int(total_steps) < 1:
            raise UsageError(f"DemP needs total_steps >= 1 (got {total_steps})")
        self.model = _unwrap(model)
        self.config = config
        self.example_inputs = example_inputs
        self.death_loader = death_loader
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.span_steps = max(1, int(config.span * self.total_steps))
        shape = dict(pct_start=config.pct_start, div_factor=config.div_factor,
                     final_div_factor=config.final_div_factor)
        self._lam = get_schedule(config.schedule, config.peak, self.span_steps, **shape)
        self._sigma = get_schedule(config.schedule, config.noise, self.span_steps, **shape)
        self.criterion = parse_criterion("dead" if config.eps == 0 else f"dead:{config.eps!r}")
        self.regularizer = Regularizer(self.model, config.regularizer, config.target)
        self.noise = LiveNoise(self.seed)

        spec = getattr(self.model, "demp_spec", None)
        input_shape = list(example_inputs.shape[1:]) if isinstance(example_inputs, Tensor) else None
        self.plan = PruningPlan(criterion=self.criterion.to_dict(),
                                model=spec.to_dict() if spec is not None and hasattr(spec, "to_dict") else None,
                                input_shape=input_shape)
        self.events: list[dict[str, Any]] = []  # RemovalEvent.to_dict() summaries (kept across resume)
        self.removals = 0
        self.measurements = 0
        self.last_measure_step = -1  # steps completed at the last measurement (-1: never)
        self.steps_done = 0  # optimizer steps seen by after_step
        self._live: dict[str, Tensor] = {}  # group root -> bool mask (current numbering); absent = all live
        self._analyzer = self._build_analyzer()
        self.total_neurons = sum(self.present_neurons().values())
        self._refresh_noise()

    # ------------------------------------------------------------------ schedules
    def lam(self, step: int) -> float:
        """λ at ``step`` (0-based optimizer step index)."""
        return self._lam(step) if self.config.regularizer != "none" else 0.0

    def sigma(self, step: int) -> float:
        """Noise σ at ``step``."""
        return self._sigma(step)

    # ------------------------------------------------------------------ the training hooks
    def penalty(self, step: int) -> Tensor:
        """``λ_step · R(params)`` — add it to the loss before ``backward()``."""
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
        if done % self.config.interval != 0:
            return None
        remove = self.config.prune and not self.config.final_only
        return self._measure(done, optimizer, remove=remove, final=False)

    def finalize(self, optimizer: torch.optim.Optimizer | None = None) -> RemovalEvent | None:
        """The final measurement and removal at the end of training (measurement only with ``prune=False``)."""
        done = self.steps_done if self.steps_done > 0 else self.total_steps
        return self._measure(done, optimizer, remove=self.config.prune, final=True)

    # ------------------------------------------------------------------ measurement and removal
    def _build_analyzer(self):
        from ..graph import DependencyAnalyzer

        return DependencyAnalyzer(self.model, self.example_inputs, ignore=list(self.config.ignore),
                                  min_channels=int(self.config.min_channels), round_to=int(self.config.round_to))

    def _neuron_groups(self) -> list[Any]:
        """Groups whose channels are neurons: measurable (read by a Conv/Linear), not the model's outputs."""
        return self._analyzer.neuron_groups

    def _collect(self):
        from ..activity import collect_activity

        stats = collect_activity(self.model, self.death_loader, layers=self._analyzer.consumer_names,
                                 progress=False, desc="death", fields=("max_abs",))
        if _distributed():
            stats.all_reduce()
        return stats

    def _measure(self, done: int, optimizer: torch.optim.Optimizer | None, *, remove: bool, final: bool) -> RemovalEvent:
        t0 = time.perf_counter()
        stats = self._collect()
        neuron_roots = {g.root for g in self._neuron_groups()}
        live = {root: mask.clone() for root, mask in self._analyzer.live_masks(stats, self.criterion).items()
                if root in neuron_roots}
        dead = int(sum(int((~m).sum()) for m in live.values()))
        delta = PruningPlan(criterion=self.criterion.to_dict())
        if remove:
            delta = self._analyzer.decide(stats, self.criterion)
            if not delta.is_empty():
                self._apply(delta, optimizer)
                for g in delta.groups:
                    if g.root in live:
                        live[g.root] = live[g.root][torch.as_tensor(g.kept, dtype=torch.long)]
        self._live = live
        self._check_live_masks()
        self._refresh_noise()
        self.measurements += 1
        self.last_measure_step = done
        present = sum(self.present_neurons().values())
        event = RemovalEvent(step=done, removed=delta.removed_channels, live=sum(self.live_neurons().values()),
                             total=self.total_neurons, plan_delta=delta, seconds=time.perf_counter() - t0,
                             present=present, dead=dead, applied=not delta.is_empty(), final=final)
        self.events.append(event.to_dict())
        log.debug("DemP step %d: %d dead, %d removed, %d/%d present (%.2fs)", done, dead, event.removed, present,
                  self.total_neurons, event.seconds)
        return event

    def _apply(self, delta: PruningPlan, optimizer: torch.optim.Optimizer | None) -> None:
        result = self._analyzer.apply(delta)
        if optimizer is not None:
            slice_optimizer_state(optimizer, result)
        for p in result.new_params.values():  # gradients of the old shape are meaningless now
            if p.grad is not None and p.grad.shape != p.shape:
                p.grad = None
        self.plan = self.plan.compose(delta)
        self.removals += 1
        self._analyzer = self._build_analyzer()
        self.regularizer.refresh()
        self._notify_apply(result)

    def _check_live_masks(self) -> None:
        """Drop masks that do not fit the current groups (treated as all live)."""
        sizes = {g.root: g.size for g in self._neuron_groups()}
        for root in list(self._live):
            if sizes.get(root) != self._live[root].numel():
                del self._live[root]

    def _refresh_noise(self) -> None:
        """Rebuild the per-tensor live masks the noise uses (after a measurement or removal)."""
        if self.config.noise == 0.0:
            self.noise.set_targets([])
            return
        params = dict(self.model.named_parameters())
        masks: dict[str, Tensor] = {}
        for group in self._neuron_groups():
            live = self._live.get(group.root)
            if live is None:
                live = torch.ones(group.size, dtype=torch.bool)
            for name, dim, idxs, root_idxs in self._analyzer.channel_params(group.root):
                p = params.get(name)
                if p is None or not p.requires_grad:
                    continue
                along = torch.zeros(p.shape[dim], dtype=torch.bool)
                along[torch.as_tensor(idxs, dtype=torch.long)] = live[torch.as_tensor(root_idxs, dtype=torch.long)]
                view = [1] * p.dim()
                view[dim] = p.shape[dim]
                full = along.view(view).expand(p.shape)
                masks[name] = masks[name] | full if name in masks else full
        targets = []
        for name, p in params.items():  # named_parameters order: deterministic buffer layout
            mask = masks.get(name)
            if mask is None:
                continue
            targets.append(NoiseTarget(p, None if bool(mask.all()) else mask.to(p.device)))
        self.noise.set_targets(targets)

    # ------------------------------------------------------------------ metrics
    def present_neurons(self) -> dict[str, int]:
        """Channels currently in the model, per neuron group root."""
        return {g.root: int(g.size) for g in self._neuron_groups()}

    def live_neurons(self) -> dict[str, int]:
        """Channels present and live at the last measurement (all present ones before the first)."""
        out = {}
        for g in self._neuron_groups():
            mask = self._live.get(g.root)
            out[g.root] = int(g.size) if mask is None else int(mask.sum())
        return out

    @property
    def dead_neurons(self) -> int:
        """Channels present but dead at the last measurement (kept by min_channels / round_to / blocked groups)."""
        return sum(self.present_neurons().values()) - sum(self.live_neurons().values())

    def metrics(self, step: int) -> dict[str, Any]:
        """A flat record for logging at ``step``."""
        present = sum(self.present_neurons().values())
        live = sum(self.live_neurons().values())
        return {"lambda": self.lam(step), "sigma": self.sigma(step), "neurons_total": self.total_neurons,
                "neurons_present": present, "neurons_live": live,
                "neuron_sparsity": 1 - present / self.total_neurons if self.total_neurons else 0.0,
                "removals": self.removals, "noisy_elements": self.noise.noisy_elements}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: plain values and tensors only (safe with ``weights_only``)."""
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "total_steps": self.total_steps,
            "seed": self.seed,
            "plan": self.plan.to_dict(),
            "noise": self.noise.state_dict(),
            "live_masks": {root: mask.detach().cpu().clone() for root, mask in self._live.items()},
            "total_neurons": int(self.total_neurons),
            "removals": int(self.removals),
            "measurements": int(self.measurements),
            "last_measure_step": int(self.last_measure_step),
            "steps_done": int(self.steps_done),
            "events": [dict(e) for e in self.events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        The model may be either already pruned to the saved plan (the training loop replays the plan
        before loading weights) or still dense, in which case the saved plan is replayed on it here —
        then build the optimizer (or load its state) *after* this call.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"DemP state has version {state.get('version') if isinstance(state, dict) else None!r}, expected "
                f"{STATE_VERSION}; the checkpoint was written by another version of demp"
            )
        saved_config = state.get("config", {})
        if saved_config and saved_config != self.config.to_dict():
            changed = sorted(k for k in set(saved_config) | set(self.config.to_dict())
                             if saved_config.get(k) != self.config.to_dict().get(k))
            warnings.warn(f"resuming DemP with changed options {', '.join(changed)}; the run will not "
                          "reproduce an uninterrupted one", stacklevel=2)
        if int(state.get("total_steps", self.total_steps)) != self.total_steps:
            warnings.warn("resuming DemP with a different number of total steps; the λ/σ schedules change",
                          stacklevel=2)
        plan = PruningPlan.from_dict(state["plan"])
        self._sync_architecture(plan)
        self.plan = plan
        self.total_neurons = int(state["total_neurons"])
        self.removals = int(state.get("removals", 0))
        self.measurements = int(state.get("measurements", 0))
        self.last_measure_step = int(state.get("last_measure_step", -1))
        self.steps_done = int(state.get("steps_done", 0))
        self.events = [dict(e) for e in state.get("events", [])]
        self._live = {str(k): torch.as_tensor(v, dtype=torch.bool).cpu() for k, v in state.get("live_masks", {}).items()}
        self._check_live_masks()
        self.regularizer.refresh()
        self._refresh_noise()
        self.noise.load_state_dict(state.get("noise", {}))

    def _sync_architecture(self, plan: PruningPlan) -> None:
        """Make the model match ``plan``: nothing if already pruned to it, replay it if still dense."""
        if plan.is_empty():
            return
        sizes = {g.root: g.size for g in self._analyzer.groups}
        changed = [g for g in plan.groups if g.removed]
        if all(sizes.get(g.root) == g.after for g in changed):
            return
        if all(sizes.get(g.root) == g.size for g in changed):
            self._analyzer.apply(plan)
            self._analyzer = self._build_analyzer()
            self.regularizer.refresh()
            return
        raise CheckpointError(
            "the model matches neither the dense architecture nor the pruned one recorded in the DemP state; "
            "build the model from the same recipe (and replay the checkpoint's plan.json) before resuming"
        )
