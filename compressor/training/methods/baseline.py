"""Importance-based structured pruning baselines (torch-pruning's importance estimators).

``method: baseline`` trains normally and, at the end of epoch ``at_epoch`` (``schedule: oneshot``) or at
the end of ``steps`` epochs spaced ``interval_epochs`` apart from ``at_epoch`` on (``schedule:
iterative``), scores every neuron of every prunable coupling group with a torch-pruning importance
estimator and removes the lowest-scored neurons, globally over all groups, through the
DependencyAnalyzer (optimizer state sliced); training then continues on the smaller network, so the
remaining epochs fine-tune it within the same total budget as the other methods. ``at_epoch: 0``
prunes before the first step instead: the prune-then-fine-tune baseline from a trained checkpoint
(``tools/compare_finetune.py``).

- ``importance``: ``magnitude-l1`` / ``magnitude-l2`` (``tp.importance.GroupMagnitudeImportance(p=1/2)``:
  the norm of every parameter slice of the coupling group, producers and consumers, averaged over the
  group), ``bn-scale`` (``BNScaleImportance``, network slimming: |γ| of the group's BatchNorm; groups
  without BatchNorm get no score and are not pruned), ``taylor`` (``GroupTaylorImportance``: |w·∂L/∂w|
  with gradients accumulated over ``taylor_batches`` batches of held-aside training samples in eval
  mode; under DDP each rank takes its share of the samples and the gradients are summed over the
  ranks), ``random`` (``RandomImportance``, drawn from a generator seeded by ``train.seed`` and the
  pruning's index; the training RNG is not disturbed), ``redo`` (not torch-pruning's: the ReDo dormant
  score of Sokar et al. 2023, mean |activation| over the layer's mean at the channel's most active
  reader, measured on ``samples`` held-aside samples: the ranking DemP's budget deadline cuts by).
- Scores are normalized per group by ``normalizer`` (torch-pruning's default ``mean``: global ranking
  across layers of different sizes; ``none`` ranks raw scores).
- Under DDP every rank ranks the neurons by rank 0's scores (:meth:`AnalyzerPruner.agreed_scores`),
  so every rank removes the same neurons.
- MACs: with ``target_macs: R`` the j-th of K prunings removes the fewest lowest-ranked neurons that bring
  the MACs to ``1 - (1 - R) j / K`` of the dense model's (each trial counted on a copy, by bisection).
- Sparsity: after the j-th of K prunings ``round(target_sparsity · N · j / K)`` of the N original
  neurons (every neuron group's channels, as in the run's ``neuron_sparsity``) are gone. Blocked groups
  (the classifier, LayerNorm streams, ...) are never pruned and every group keeps ``min_channels``
  channels, so a target beyond what the prunable groups allow stops short (the records say so).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...counting import count_macs
from ...criteria import Dormant
from ...errors import UsageError
from ...plan import PruningPlan
from .. import distributed as dist_util
from ..bounds import bounded, check_bounds, ignore_field, min_channels_field
from .base import AnalyzerPruner, MethodContext, RemovalEvent

__all__ = ["BaselineConfig", "BaselinePruning", "IMPORTANCES", "make_importance"]

STATE_VERSION = 1
#: The ReDo score of ``importance: redo`` (the one DemP's budget deadline ranks by).
REDO = Dormant()
IMPORTANCES = ("magnitude-l1", "magnitude-l2", "bn-scale", "taylor", "random", "redo")
#: Importances measured on held-aside samples (the others read the weights only).
MEASURED = ("taylor", "redo")
SCHEDULES = ("oneshot", "iterative")
NORMALIZERS = ("mean", "max", "sum", "none")


@dataclass
class BaselineConfig:
    """Options of ``method: baseline``."""

    importance: str = bounded("magnitude-l1", choices=IMPORTANCES,
                              help="magnitude-l1 / magnitude-l2 / bn-scale / taylor / random (torch-pruning "
                                   "estimators) / redo (the ReDo dormant score on held-aside samples)")
    target_sparsity: float = bounded(0.5, low=0, low_open=True, high=1, high_open=True,
                                     help="fraction of the neurons removed by the last pruning (0 < S < 1)")
    target_macs: float | None = bounded(None, low=0, low_open=True, high=1, high_open=True, nullable=True,
                                        help="prune to this MAC ratio compact/dense instead of target_sparsity (0 < R "
                                             "< 1; the fewest lowest-ranked neurons that reach it)")
    schedule: str = bounded("oneshot", choices=SCHEDULES,
                            help="oneshot: prune once at at_epoch / iterative: steps prunings")
    at_epoch: int = bounded(1, integer=True, low=0,
                            help="prune at the end of this epoch (1-based; the first pruning when iterative); 0: "
                                 "before the first step, from the starting checkpoint (prune, then fine-tune)")
    steps: int = bounded(3, integer=True, low=1, help="iterative: number of prunings, the same share each")
    interval_epochs: int = bounded(1, integer=True, low=1, help="iterative: epochs between prunings")
    normalizer: str = bounded("mean", choices=NORMALIZERS,
                              help="per-group score normalization before the global ranking: mean / max / sum / none")
    taylor_batches: int = bounded(4, integer=True, low=1,
                                  help="taylor: batches of held-aside training samples whose gradients are accumulated")
    samples: int = bounded(512, integer=True, low=1, help="taylor: held-aside training samples (no augmentation)")
    min_channels: int = min_channels_field()
    ignore: list[str] = ignore_field()

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the option outside its bounds and what it accepts."""
        check_bounds(self, "baseline")

    def validate_run(self, epochs: int) -> None:
        """The last pruning must fall within the run's ``epochs``."""
        last = self.pruning_epochs()[-1]
        if last > int(epochs):
            raise UsageError(f"baseline: the last pruning would happen after epoch {last} but the run has {epochs} "
                             "epochs; lower baseline.at_epoch / steps / interval_epochs or raise train.epochs")

    @property
    def prunings(self) -> int:
        return 1 if self.schedule == "oneshot" else int(self.steps)

    def pruning_epochs(self) -> list[int]:
        """1-based epochs at whose end a pruning happens."""
        return [self.at_epoch + j * self.interval_epochs for j in range(self.prunings)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_importance(name: str, normalizer: str = "mean") -> Any:
    """The torch-pruning importance estimator called ``name`` (see :data:`IMPORTANCES`)."""
    import torch_pruning as tp

    norm = None if normalizer == "none" else normalizer
    if name == "magnitude-l1":
        return tp.importance.GroupMagnitudeImportance(p=1, normalizer=norm)
    if name == "magnitude-l2":
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer=norm)
    if name == "bn-scale":
        return tp.importance.BNScaleImportance(normalizer=norm)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=norm)
    if name == "random":
        return tp.importance.RandomImportance()
    if name == "redo":
        return None  # measured on activations by BaselinePruning.score, not a torch-pruning estimator
    raise UsageError(f"unknown importance {name!r}: expected one of {', '.join(IMPORTANCES)}")


class BaselinePruning(AnalyzerPruner):
    """Prune the lowest-importance neurons once or iteratively, then fine-tune (module docstring)."""

    name = "baseline"

    def __init__(self, model: nn.Module, config: BaselineConfig, *, example_inputs: Tensor | Sequence[Tensor],
                 loader: Iterable[Any] = (), epochs: int | None = None, seed: int = 0,
                 samples: int | None = None) -> None:
        config.validate()
        if epochs is not None:
            config.validate_run(epochs)
        self.config = config
        self.importance = make_importance(config.importance, config.normalizer)
        self.seed = int(seed)
        super().__init__(model, example_inputs=example_inputs, loader=loader,
                         criterion={"name": "baseline", **config.to_dict()}, ignore=config.ignore,
                         min_channels=config.min_channels, samples=samples if config.importance in MEASURED else None)
        self.prunings_done = 0
        self.last_removed = 0
        self._dense_macs = count_macs(self.model, self.one_sample()).total_macs if config.target_macs else None

    @classmethod
    def build(cls, config: BaselineConfig, ctx: MethodContext) -> BaselinePruning:
        return cls(ctx.model, config, example_inputs=ctx.example_inputs, loader=ctx.measurement_loader(config.samples),
                   epochs=ctx.epochs, seed=ctx.seed, samples=ctx.measurement_samples(config.samples))

    # ------------------------------------------------------------------ scoring
    def _groups(self) -> list[Any]:
        """Prunable neuron groups (not blocked, known to torch-pruning)."""
        a = self.analyzer
        return [g for g in a.neuron_groups if g.blocked is None and a.tp_group(g.root) is not None]

    def _accumulate_gradients(self) -> None:
        """Sum ∂L/∂w over ``taylor_batches`` batches of the loader (eval mode: BN statistics untouched).

        Under DDP each rank's loader holds its share of the held-aside samples and the gradients are
        then summed over all ranks, so every rank scores with the gradients of all the samples.
        """
        model = self.model
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        device = next(model.parameters()).device
        loss_fn = nn.CrossEntropyLoss()
        batches = 0
        try:
            for batch in self.loader:
                x, y = batch[0], batch[1]
                loss_fn(model(x.to(device)).float(), y.to(device)).backward()
                batches += 1
                if batches >= self.config.taylor_batches:
                    break
        finally:
            model.train(was_training)
        if dist_util.active():
            dist_util.all_reduce_grads(model)
            if not dist_util.any_rank(batches > 0, device):
                batches = 0
            elif batches == 0:
                batches = 1  # this rank's share was empty; the other ranks' gradients are summed in
        if batches == 0:
            raise UsageError("baseline.importance = taylor needs training samples for its gradients; none were "
                             "given: raise baseline.samples")

    def score(self) -> dict[str, Tensor]:
        """Importance of every neuron of every prunable group (current numbering), per group root."""
        c = self.config
        # ReDo (Sokar et al. 2023): mean |activation| over the layer's, at the most active reader
        if c.importance == "redo":
            stats = self.collect(REDO.fields)
            return self.agreed_scores({g.root: self.analyzer.channel_scores(g, stats, REDO.scores)
                                       for g in self._groups()})
        if c.importance == "taylor":
            self._accumulate_gradients()
        scores: dict[str, Tensor] = {}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1000 + self.prunings_done)
                for g in self._groups():
                    imp = self.importance(self.analyzer.tp_group(g.root))
                    if imp is None or imp.numel() != g.size:
                        continue  # the estimator has nothing to score here (bn-scale without BatchNorm)
                    scores[g.root] = imp.detach().double().cpu()
        finally:
            if c.importance == "taylor":
                self.model.zero_grad(set_to_none=True)
        return self.agreed_scores(scores)

    def _choose(self, scores: dict[str, Tensor]) -> PruningPlan:
        groups = {g.root: g for g in self._groups()}
        share = self.prunings_done / self.config.prunings  # of the target after this pruning
        candidates = [(float(v), root, i) for root, s in scores.items() for i, v in enumerate(s.tolist())
                      if math.isfinite(v)]
        candidates.sort(key=lambda x: (x[0], x[1], x[2]))
        # with a MAC target: the fewest lowest-ranked neurons that bring the MACs to the goal
        if (dense_macs := self._dense_macs) is not None and (target := self.config.target_macs) is not None:
            goal = 1.0 - (1.0 - float(target)) * share
            return self.shortest_prefix(candidates, groups, lambda plan: count_macs(
                self.trial_model(plan), self.one_sample()).total_macs <= goal * dense_macs)
        goal = round(self.config.target_sparsity * self.total_neurons * share)
        removed = self.total_neurons - sum(self.present_neurons().values())
        return self.plan_from_ranking(candidates, max(0, goal - removed), groups)

    def prune(self, optimizer: torch.optim.Optimizer | None, *, final: bool = False) -> Any:
        """Score and remove the next share of neurons now; returns the RemovalEvent."""
        t0 = time.perf_counter()
        scores = self.score()
        self.prunings_done += 1
        delta = self._choose(scores)
        self._live = {}
        event = self.remove(delta, optimizer, step=self.steps_done, dead=0, final=final, t0=t0)
        self.last_removed = delta.removed_channels
        return event

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        if 0 not in self.config.pruning_epochs() or self.prunings_done >= self.config.prunings:
            return None
        return self.prune(optimizer)

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        self.steps_done = max(self.steps_done, int(step) + 1)

    def end_of_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        if int(epoch) + 1 not in self.config.pruning_epochs() or self.prunings_done >= self.config.prunings:
            return None
        return self.prune(optimizer)

    def metrics(self, step: int) -> dict[str, Any]:
        return {"baseline_prunings": self.prunings_done, "removals": self.removals}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "criterion": f"importance:{self.config.importance}"}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": self.config.to_dict(), **self._base_state(),
                "prunings_done": self.prunings_done, "last_removed": self.last_removed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_version(state, STATE_VERSION, "baseline-pruning")
        self._load_base_state(state)
        self.prunings_done = int(state.get("prunings_done", 0))
        self.last_removed = int(state.get("last_removed", 0))
