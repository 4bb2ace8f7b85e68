"""DNR-Pruning: prune neurons by their Dying Neuron Reactivation score (paper 001).

**No runnable reference implementation exists** (the authors' repository has empty or broken
functions); this module follows the paper text. Choices made where the text leaves room:

- *The distribution*: the neuron's incoming weights are the row ``W[c]`` (all fan-in elements,
  flattened; for a convolution ``in_channels x kH x kW``) of the layer that produces the neuron (the
  coupling group's root). ``p = |w| / Σ|w|`` (the paper's normalized magnitude; an all-zero row is the
  uniform distribution).
- ``H(W^t) = -Σ p log2(p + ε)``; ``ΔH = H(W^(t-1)) - H(W^t)``;
  ``KL(W^t || W^(t-1)) = Σ p_t ln(p_t / (p_(t-1) + ε))`` (natural log, as written);
  ``DNR = α·ΔH / (H(W^(t-1)) + ε) + β·KL / (D_max + ε)`` with ``D_max`` the largest KL of any neuron
  seen so far (this epoch included).
- Scores are computed once per epoch (from the second epoch on: the first has no previous weights).
  The previous weights are kept as ``|W|`` tensors and sliced with the analyzer's index maps when
  neurons (rows) or their inputs (columns) are removed.
- Every ``interval_epochs`` (PI) epochs up to ``stop_epoch`` (default: the last epoch; an earlier
  one leaves epochs to recover): with ``target_sparsity`` S, the highest-DNR neurons are
  removed so that after the j-th of the K = stop_epoch // PI intervals ``round(S·N·j/K)`` of the N
  original neurons are gone (the same share each interval; an interval without scores is caught up
  later); without it, every neuron with ``DNR > tau``. Groups keep ``min_channels`` channels; blocked
  groups (classifier, LayerNorm streams, ...) are never pruned.
- The reactivation potential ``R = 1 - DNR / (max_t DNR + ε)`` (``max_t`` per neuron over the epochs)
  is reported as a diagnostic (``dnr_mean_R``).
- Under DDP the scores come from the weights, which DDP keeps identical on every rank; rank 0's scores
  and ``D_max`` are broadcast all the same (:meth:`AnalyzerPruner.agreed_scores`), so every rank ranks
  the neurons by the same numbers and removes the same ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from ...errors import UsageError
from ...graph import ApplyResult
from ...plan import PruningPlan
from .. import distributed as dist_util
from .base import AnalyzerPruner, MethodContext, RemovalEvent

__all__ = ["DNRConfig", "DNRPruning", "weight_distribution", "entropy", "kl_divergence", "dnr_score"]

STATE_VERSION = 1
_D_MAX_KEY = "\0d_max"  # rides along with the broadcast scores (no module is named like this)


@dataclass
class DNRConfig:
    """Options of ``method: dnr``."""

    alpha: float = field(default=1.0, metadata={"help": "weight of the relative entropy change"})
    beta: float = field(default=1.0, metadata={"help": "weight of the normalized KL divergence"})
    tau: float = field(default=0.5, metadata={"help": "without target_sparsity: prune neurons with DNR > tau"})
    interval_epochs: int = field(default=10, metadata={"help": "prune every PI epochs (paper: 10-15 best)"})
    stop_epoch: int | None = field(default=None, metadata={"help": "prune at no epoch after this one (1-based): with target_sparsity the target is reached there and the remaining epochs recover (null: the last epoch)"})
    target_sparsity: float | None = field(default=None, metadata={"help": "fraction of neurons to remove by the end, the same share each interval, highest DNR first (null: use tau)"})
    eps: float = field(default=1e-12, metadata={"help": "epsilon of the entropy, KL and score formulas"})
    min_channels: int = field(default=1, metadata={"help": "keep at least this many channels per group"})
    ignore: list[str] = field(default_factory=list, metadata={"help": "layer names never pruned"})

    def validate(self) -> None:
        for name in ("alpha", "beta", "tau"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise UsageError(f"dnr.{name} = {v!r} is invalid: expected a finite number")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < 1):
            raise UsageError(f"dnr.eps = {self.eps!r} is invalid: expected 0 < eps < 1")
        if self.target_sparsity is not None and not 0 < self.target_sparsity < 1:
            raise UsageError(f"dnr.target_sparsity = {self.target_sparsity!r} is invalid: expected 0 < S < 1 or null")
        for name in ("interval_epochs", "min_channels"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise UsageError(f"dnr.{name} = {v!r} is invalid: expected an integer >= 1")
        if self.stop_epoch is not None and (int(self.stop_epoch) != self.stop_epoch or self.stop_epoch < 1):
            raise UsageError(f"dnr.stop_epoch = {self.stop_epoch!r} is invalid: expected an integer >= 1 or null")

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
    """``Σ p_t ln(p_t / (p_prev + ε))`` per row (terms with p_t = 0 contribute 0)."""
    ratio = torch.where(p_t > 0, p_t / (p_prev + eps), torch.ones_like(p_t))
    return (p_t * torch.log(ratio)).sum(dim=1)


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
        self.d_max = 0.0
        self.prev: dict[str, Tensor] = {}  # root weight name -> |W| at the previous epoch
        self.scores: dict[str, Tensor] = {}  # group root -> DNR of this epoch (current numbering)
        self.max_dnr: dict[str, Tensor] = {}  # group root -> max_t DNR per neuron
        self.intervals_done = 0
        self.last_removed = 0
        self.add_apply_listener(self._slice_state)

    @classmethod
    def build(cls, config: DNRConfig, ctx: MethodContext) -> "DNRPruning":
        return cls(ctx.model, config, example_inputs=ctx.example_inputs, epochs=ctx.epochs)

    # ------------------------------------------------------------------ structure
    def _groups(self) -> list[Any]:
        """Prunable neuron groups whose root is a Conv/Linear layer."""
        out = []
        for g in self.analyzer.neuron_groups:
            if g.blocked is not None:
                continue
            try:
                module = self.model.get_submodule(g.root)
            except AttributeError:
                continue
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.weight.shape[0] == g.size:
                out.append(g)
        return out

    def _slice_state(self, result: ApplyResult) -> None:
        for name, prev in list(self.prev.items()):
            idx = result.index_maps.get(name)
            if idx is not None:
                self.prev[name] = prev.reshape(-1)[idx].view(result.new_params[name].shape)
        self.scores, self.max_dnr = {}, {}  # per-neuron tensors: recomputed from the next epoch on

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self) -> dict[str, Tensor]:
        """Update the DNR scores from the weights now and at the previous call; returns them per root."""
        c = self.config
        params = dict(self.model.named_parameters())
        pending: list[tuple[str, Tensor, Tensor, Tensor]] = []
        new_prev: dict[str, Tensor] = {}
        for g in self._groups():
            name = f"{g.root}.weight"
            w = params[name].detach().reshape(g.size, -1).cpu()
            prev = self.prev.get(name)
            new_prev[name] = w.abs().double().reshape(params[name].shape).clone()
            if prev is None or prev.shape != params[name].shape:
                continue
            p_t = weight_distribution(w)
            p_prev = weight_distribution(prev.reshape(g.size, -1))
            h_t, h_prev = entropy(p_t, c.eps), entropy(p_prev, c.eps)
            kl = kl_divergence(p_t, p_prev, c.eps)
            pending.append((g.root, h_prev, h_t, kl))
        if pending:
            self.d_max = max(self.d_max, max(float(kl.max()) for *_, kl in pending))
        scores = {root: dnr_score(h_prev, h_t, kl, self.d_max, c.alpha, c.beta, c.eps)
                  for root, h_prev, h_t, kl in pending}
        if dist_util.active():  # every rank decides from rank 0's numbers
            agreed = self.agreed_scores({**scores, _D_MAX_KEY: torch.tensor([self.d_max], dtype=torch.float64)})
            self.d_max = float(agreed.pop(_D_MAX_KEY)[0])
            scores = agreed
        for root, s in scores.items():
            best = self.max_dnr.get(root)
            self.max_dnr[root] = s.clone() if best is None or best.shape != s.shape else torch.maximum(best, s)
        self.prev = new_prev
        self.scores = scores
        return scores

    def reactivation(self) -> dict[str, Tensor]:
        """``R = 1 - DNR / (max_t DNR + ε)`` per root (the latest scores)."""
        return {r: 1 - s / (self.max_dnr[r] + self.config.eps) for r, s in self.scores.items() if r in self.max_dnr}

    def _choose(self) -> PruningPlan:
        c = self.config
        groups = {g.root: g for g in self._groups()}
        candidates: list[tuple[float, str, int]] = []
        for root, s in self.scores.items():
            if root in groups and s.numel() == groups[root].size:
                candidates += [(float(v), root, i) for i, v in enumerate(s.tolist())]
        if c.target_sparsity is not None:
            k_intervals = max(1, self.horizon // c.interval_epochs)
            j = min(self.intervals_done, k_intervals)
            goal = round(c.target_sparsity * self.total_neurons * j / k_intervals)
            removed = self.total_neurons - sum(self.present_neurons().values())
            budget = max(0, goal - removed)
        else:
            candidates = [x for x in candidates if x[0] > c.tau]
            budget = len(candidates)
        candidates.sort(key=lambda x: (-x[0], x[1], x[2]))
        return self.plan_from_ranking(candidates, budget, groups)

    # ------------------------------------------------------------------ hooks
    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        self.steps_done = max(self.steps_done, int(step) + 1)

    def end_of_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        t0 = time.perf_counter()
        self.score()
        if (int(epoch) + 1) % self.config.interval_epochs != 0 or int(epoch) + 1 > self.horizon:
            return None
        self.intervals_done += 1
        delta = self._choose()
        self._live = {}
        event = self.remove(delta, optimizer, step=self.steps_done, dead=0, final=False, t0=t0)
        self.last_removed = delta.removed_channels
        return event

    def metrics(self, step: int) -> dict[str, Any]:
        r = self.reactivation()
        all_s = torch.cat(list(self.scores.values())) if self.scores else torch.zeros(0)
        all_r = torch.cat(list(r.values())) if r else torch.zeros(0)
        return {"dnr_max": float(all_s.max()) if all_s.numel() else None,
                "dnr_mean": float(all_s.mean()) if all_s.numel() else None,
                "dnr_mean_R": float(all_r.mean()) if all_r.numel() else None,
                "dnr_kl_max": self.d_max, "removals": self.removals}

    def describe(self) -> dict[str, Any]:
        c = self.config
        rule = f"target_sparsity={c.target_sparsity:g}" if c.target_sparsity is not None else f"tau={c.tau:g}"
        return {**super().describe(), "criterion": f"dnr:{rule}"}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": self.config.to_dict(), **self._base_state(),
                "d_max": self.d_max, "prev": {k: v.clone() for k, v in self.prev.items()},
                "scores": {k: v.clone() for k, v in self.scores.items()},
                "max_dnr": {k: v.clone() for k, v in self.max_dnr.items()},
                "intervals_done": self.intervals_done, "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_version(state, STATE_VERSION, "DNR")
        self._load_base_state(state)
        self.d_max = float(state.get("d_max", 0.0))
        self.prev = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.get("prev", {}).items()}
        self.scores = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.get("scores", {}).items()}
        self.max_dnr = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.get("max_dnr", {}).items()}
        self.intervals_done = int(state.get("intervals_done", 0))
