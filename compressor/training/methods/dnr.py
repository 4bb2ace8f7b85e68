"""DNR-Pruning: prune neurons by their Dying Neuron Reactivation score (paper 001).

**No runnable reference implementation exists** (the authors' repository has empty or broken
functions); this module follows the paper's text and its Algorithm 1. Choices made where the text
leaves room:

- *The distribution*: the neuron's incoming weights are the row ``W[c]`` (all fan-in elements,
  flattened; for a convolution ``in_channels x kH x kW``) of the layer that produces the neuron (the
  coupling group's root). ``p = |w| / Σ|w|`` (the paper's normalized magnitude; an all-zero row is the
  uniform distribution).
- ``H(W^t) = -Σ p log2(p + ε)``; ``ΔH = H(W^(t-1)) - H(W^t)``;
  ``KL(W^t || W^(t-1)) = Σ p_t ln(p_t / (p_(t-1) + ε))`` (natural log, as written);
  ``DNR = α·ΔH / (H(W^(t-1)) + ε) + β·KL / (D_max + ε)``.
- *Algorithm 1*: the previous weights ``W^(t-1)`` are taken when the method is built, before
  training (line 2), and replaced by the current ones only at a pruning milestone, after its
  removal (line 24). Scores are computed only at the milestones (lines 8-18), so ``t-1`` is the
  previous milestone (or the initial weights), not the previous epoch. ``D_max`` is the per-layer
  maximum KL at the milestone (line 16: ``max_j`` over the neurons of layer ``i``), so every layer's
  largest KL term is β. The previous weights are kept as ``|W|`` tensors.
- The milestones are every ``interval_epochs`` (PI) epochs up to ``stop_epoch`` (default: the last
  epoch; an earlier one leaves epochs to recover): with ``target_sparsity`` S, **every layer** removes
  its highest-DNR neurons so that after the j-th of the K = stop_epoch // PI milestones it has lost
  ``round(S'·n·j/K)`` of its n original neurons (S' = S scaled so that blocked groups, never pruned,
  still leave the network at S; the same share each milestone and each layer, as Algorithm 1 decides
  layer by layer); without it, every neuron with ``DNR > tau`` (Algorithm 1, line 19). Groups keep
  ``min_channels`` channels; blocked groups (classifier, LayerNorm streams, ...) are never pruned.
- The reactivation potential (Definition 3.4) ``R = 1 - DNR / (max_t DNR + ε)``, ``max_t`` per neuron
  over the milestones so far, is defined in [0, 1]: a neuron whose DNR never was positive (no entropy
  reduction at any milestone) has R = 1, and R is clipped to [0, 1] otherwise (a negative DNR, an
  entropy increase, is full potential, not R > 1). It is reported as a diagnostic (``dnr_mean_R``).
- Under DDP the scores come from the weights, which DDP keeps identical on every rank; rank 0's scores
  and ``D_max`` values are broadcast all the same (:meth:`AnalyzerPruner.agreed_scores`), so every rank
  ranks the neurons by the same numbers and removes the same ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import UsageError
from ...plan import PruningPlan
from .. import distributed as dist_util
from ..bounds import bounded, check_bounds, ignore_field, min_channels_field
from .base import AnalyzerPruner, MethodContext, RemovalEvent

__all__ = ["DNRConfig", "DNRPruning", "weight_distribution", "entropy", "kl_divergence", "dnr_score"]

STATE_VERSION = 2  # 2: W^(t-1) only at milestones, per-layer D_max (Algorithm 1)
_D_MAX_KEY = "\0d_max:"  # + root: rides along with the broadcast scores (no module is named like this)


@dataclass
class DNRConfig:
    """Options of ``method: dnr``."""

    alpha: float = bounded(1.0, help="weight of the relative entropy change")
    beta: float = bounded(1.0, help="weight of the normalized KL divergence")
    tau: float = bounded(0.5, help="without target_sparsity: prune neurons with DNR > tau")
    interval_epochs: int = bounded(10, integer=True, low=1, help="prune every PI epochs (paper: 10-15 best)")
    stop_epoch: int | None = bounded(None, integer=True, low=1, nullable=True,
                                     help="prune at no epoch after this one (1-based): with target_sparsity the target "
                                          "is reached there and the remaining epochs recover (null: the last epoch)")
    target_sparsity: float | None = bounded(None, low=0, low_open=True, high=1, high_open=True, nullable=True,
                                            help="fraction of neurons to remove by the end, the same share each "
                                                 "interval, highest DNR first (null: use tau)")
    eps: float = bounded(1e-12, low=0, low_open=True, high=1, high_open=True,
                         help="epsilon of the entropy, KL and score formulas")
    min_channels: int = min_channels_field()
    ignore: list[str] = ignore_field()

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the option outside its bounds and what it accepts."""
        check_bounds(self, "dnr")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_distribution(rows: Tensor) -> Tensor:
    """``|w| / Σ|w|`` per row of a 2-D tensor (float64); an all-zero row becomes uniform."""
    a = rows.detach().double().abs()
    s = a.sum(dim=1, keepdim=True)
    uniform = torch.full_like(a, 1.0 / max(a.shape[1], 1))
    return torch.where(s > 0, a / s.clamp_min(torch.finfo(torch.float64).tiny), uniform)


def entropy(p: Tensor, eps: float) -> Tensor:
    """``-Σ p log2(p + ε)`` per row."""
    return -(p * torch.log2(p + eps)).sum(dim=1)


def kl_divergence(p_t: Tensor, p_prev: Tensor, eps: float) -> Tensor:
    """``Σ p_t ln(p_t / (p_prev + ε))`` per row (terms with p_t = 0 contribute 0), at least 0.

    A true KL divergence is never negative; the ε in the denominator makes an unchanged row's value
    about ``-n·ε`` instead of 0, which a per-layer ``D_max`` near 0 would blow up into a score of order 1.
    """
    ratio = torch.where(p_t > 0, p_t / (p_prev + eps), torch.ones_like(p_t))
    return (p_t * torch.log(ratio)).sum(dim=1).clamp_min(0.0)


def dnr_score(h_prev: Tensor, h_t: Tensor, kl: Tensor, d_max: float, alpha: float, beta: float, eps: float) -> Tensor:
    """``α·(H_prev - H_t)/(H_prev + ε) + β·KL/(D_max + ε)``."""
    return alpha * (h_prev - h_t) / (h_prev + eps) + beta * kl / (d_max + eps)


class DNRPruning(AnalyzerPruner):
    """Score neurons by DNR once per epoch and prune every PI epochs (see the module docstring)."""

    name = "dnr"

    def __init__(self, model: nn.Module, config: DNRConfig, *, example_inputs: Tensor | Sequence[Tensor],
                 loader: Iterable[Any] = (), epochs: int = 1) -> None:
        config.validate()
        self.config = config
        super().__init__(model, example_inputs=example_inputs, loader=loader,
                         criterion={"name": "dnr", **config.to_dict()}, ignore=config.ignore,
                         min_channels=config.min_channels)
        self.epochs = int(epochs)
        # the last epoch at which pruning may happen
        self.horizon = min(self.epochs, int(config.stop_epoch)) if config.stop_epoch is not None else self.epochs
        if config.stop_epoch is not None and self.horizon < config.interval_epochs:
            raise UsageError(f"dnr.stop_epoch = {config.stop_epoch} comes before the first pruning (epoch "
                             f"dnr.interval_epochs = {config.interval_epochs}), so nothing would be pruned: "
                             f"raise stop_epoch or lower interval_epochs")
        self.d_max: dict[str, float] = {}  # group root -> max KL of the layer at the last milestone
        self.scores: dict[str, Tensor] = {}  # group root -> DNR at the last milestone (current numbering)
        self.max_dnr: dict[str, Tensor] = {}  # group root -> max over the milestones of DNR per neuron
        self.intervals_done = 0
        self.last_removed = 0
        self.prev: dict[str, Tensor] = self._snapshot()  # W^(t-1): the weights before training (line 2)

    @classmethod
    def build(cls, config: DNRConfig, ctx: MethodContext) -> DNRPruning:
        return cls(ctx.model, config, example_inputs=ctx.example_inputs, epochs=ctx.epochs)

    # ------------------------------------------------------------------ structure
    def _groups(self) -> list[Any]:
        """Prunable neuron groups whose root is a Conv/Linear layer producing all of the group's channels."""
        return self.rooted_groups(lambda module, g: isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
                                  and module.weight.shape[0] == g.size)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _snapshot(self) -> dict[str, Tensor]:
        """``|W|`` of every scored layer now (float64, CPU): the next milestone's ``W^(t-1)``."""
        params = dict(self.model.named_parameters())
        return {f"{g.root}.weight": params[f"{g.root}.weight"].detach().abs().double().cpu().clone()
                for g in self._groups()}

    @torch.no_grad()
    def score(self) -> dict[str, Tensor]:
        """DNR of every neuron from the weights now against ``W^(t-1)`` (Algorithm 1, lines 11-18).

        ``D_max`` is per layer (the largest KL of the layer's neurons now). Sets and returns
        :attr:`scores` per group root; updates :attr:`max_dnr`; does not move ``W^(t-1)``.
        """
        c = self.config
        params = dict(self.model.named_parameters())
        scores: dict[str, Tensor] = {}
        d_max: dict[str, float] = {}
        for g in self._groups():
            name = f"{g.root}.weight"
            prev = self.prev.get(name)
            if prev is None or prev.shape != params[name].shape:
                continue  # a layer without previous weights of its shape: scored from the next milestone
            p_t = weight_distribution(params[name].detach().reshape(g.size, -1).cpu())
            p_prev = weight_distribution(prev.reshape(g.size, -1))
            h_t, h_prev = entropy(p_t, c.eps), entropy(p_prev, c.eps)
            kl = kl_divergence(p_t, p_prev, c.eps)
            d_max[g.root] = float(kl.max())
            scores[g.root] = dnr_score(h_prev, h_t, kl, d_max[g.root], c.alpha, c.beta, c.eps)
        if dist_util.active():  # every rank decides from rank 0's numbers
            packed = {**scores, **{_D_MAX_KEY + r: torch.tensor([v], dtype=torch.float64) for r, v in d_max.items()}}
            agreed = self.agreed_scores(packed)
            d_max = {k[len(_D_MAX_KEY):]: float(v[0]) for k, v in agreed.items() if k.startswith(_D_MAX_KEY)}
            scores = {k: v for k, v in agreed.items() if not k.startswith(_D_MAX_KEY)}
        for root, s in scores.items():
            best = self.max_dnr.get(root)
            self.max_dnr[root] = s.clone() if best is None or best.shape != s.shape else torch.maximum(best, s)
        self.scores, self.d_max = scores, d_max
        return scores

    def reactivation(self) -> dict[str, Tensor]:
        """``R = 1 - DNR / (max_t DNR + ε)`` per root at the last milestone, in [0, 1] (see the module docstring)."""
        out = {}
        for root, s in self.scores.items():
            best = self.max_dnr.get(root)
            if best is None or best.shape != s.shape:
                continue
            r = (1 - s / (best + self.config.eps)).clamp(0.0, 1.0)
            out[root] = torch.where(best > 0, r, torch.ones_like(r))
        return out

    def _slice_to_kept(self, delta: PruningPlan) -> None:
        """Keep the per-neuron scores of the neurons that survive ``delta`` (the new numbering)."""
        for g in delta.groups:
            kept = torch.as_tensor(g.kept, dtype=torch.long)
            for table in (self.scores, self.max_dnr):
                if g.root in table and table[g.root].numel() == g.size:
                    table[g.root] = table[g.root][kept]

    def _choose(self) -> PruningPlan:
        """The neurons to remove at this milestone: per layer with ``target_sparsity``, else ``DNR > tau``."""
        c = self.config
        groups = {g.root: g for g in self._groups()}
        ranked: dict[str, list[tuple[float, str, int]]] = {}
        for root, s in self.scores.items():
            if root in groups and s.numel() == groups[root].size:
                ranked[root] = sorted(((float(v), root, i) for i, v in enumerate(s.tolist())),
                                      key=lambda x: (-x[0], x[2]))
        if c.target_sparsity is None:
            candidates = sorted((x for xs in ranked.values() for x in xs if x[0] > c.tau),
                                key=lambda x: (-x[0], x[1], x[2]))
            return self.plan_from_ranking(candidates, len(candidates), groups)
        budgets = self._layer_budgets(groups, c.target_sparsity)
        candidates = [x for root, xs in ranked.items() for x in xs[:budgets.get(root, 0)]]
        return self.plan_from_ranking(candidates, len(candidates), groups)

    def _layer_budgets(self, groups: dict[str, Any], target_sparsity: float) -> dict[str, int]:
        """Neurons each scored layer gives up now so that every layer has lost the same share by milestone j.

        The share is ``target_sparsity`` scaled by all neurons over the prunable ones (so that blocked
        groups, never pruned, still leave the whole network at ``target_sparsity``), at most 1; after the
        j-th of K milestones each layer has lost ``round(share · original size · j / K)``. Ranking the
        whole network in one list instead lets a few large cuts land in one layer: on the digits CNN at
        70% the second convolution kept 1 of its 64 channels and accuracy fell to chance
        (``tools/ablations.py --study dnr_interval``).
        """
        c = self.config
        original = {g.root: g.size for g in self.plan.groups}  # the plan keeps the original sizes
        sizes = {root: original.get(root, g.size) for root, g in groups.items()}
        prunable = sum(sizes.values())
        share = min(1.0, target_sparsity * self.total_neurons / prunable) if prunable else 0.0
        k_intervals = max(1, self.horizon // c.interval_epochs)
        j = min(self.intervals_done, k_intervals)
        return {root: max(0, round(share * n * j / k_intervals) - (n - groups[root].size)) for root, n in sizes.items()}

    # ------------------------------------------------------------------ hooks
    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        self.steps_done = max(self.steps_done, int(step) + 1)

    def end_of_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        """At a milestone: score, remove, then ``W^(t-1) <- W^(t)`` (Algorithm 1, lines 8-24); else nothing."""
        if (int(epoch) + 1) % self.config.interval_epochs != 0 or int(epoch) + 1 > self.horizon:
            return None
        t0 = time.perf_counter()
        self.score()
        self.intervals_done += 1
        delta = self._choose()
        self._live = {}
        self._slice_to_kept(delta)
        event = self.remove(delta, optimizer, step=self.steps_done, dead=0, final=False, t0=t0)
        self.last_removed = delta.removed_channels
        self.prev = self._snapshot()
        return event

    def metrics(self, step: int) -> dict[str, Any]:
        """The last milestone's scores (None before the first): max and mean DNR, mean R, largest per-layer D_max."""
        r = self.reactivation()
        all_s = torch.cat(list(self.scores.values())) if self.scores else torch.zeros(0)
        all_r = torch.cat(list(r.values())) if r else torch.zeros(0)
        return {"dnr_max": float(all_s.max()) if all_s.numel() else None,
                "dnr_mean": float(all_s.mean()) if all_s.numel() else None,
                "dnr_mean_R": float(all_r.mean()) if all_r.numel() else None,
                "dnr_kl_max": max(self.d_max.values()) if self.d_max else None, "removals": self.removals}

    def describe(self) -> dict[str, Any]:
        c = self.config
        rule = f"target_sparsity={c.target_sparsity:g}" if c.target_sparsity is not None else f"tau={c.tau:g}"
        return {**super().describe(), "criterion": f"dnr:{rule}"}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": self.config.to_dict(), **self._base_state(),
                "d_max": dict(self.d_max), "prev": {k: v.clone() for k, v in self.prev.items()},
                "scores": {k: v.clone() for k, v in self.scores.items()},
                "max_dnr": {k: v.clone() for k, v in self.max_dnr.items()},
                "intervals_done": self.intervals_done, "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_version(state, STATE_VERSION, "DNR")
        self._load_base_state(state)
        self.d_max = {str(k): float(v) for k, v in state.get("d_max", {}).items()}
        self.prev = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.get("prev", {}).items()}
        self.scores = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.get("scores", {}).items()}
        self.max_dnr = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.get("max_dnr", {}).items()}
        self.intervals_done = int(state.get("intervals_done", 0))
