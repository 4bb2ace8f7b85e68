"""Synaptic Stripping (Whitaker & Whitley 2023, paper 003): revive dead ReLU neurons by pruning their
most negative incoming weights, then remove the neurons that stay dead.

For the hidden units of Linear layers (MLPs, the MLP blocks of ViTs), as in the paper; with
``conv: true`` also for convolution channels (an extension beyond the paper: a channel's filter is its
neuron's incoming weights, so the same rule applies to the flattened filter):

1. After each epoch (or every ``interval_steps`` optimizer steps) death is measured on held-aside
   samples (:func:`compressor.activity.collect_activity` at every consumer's input; a neuron is dead
   when its activation is exactly 0 on every sample — the paper's "activation summed over the
   validation set is 0", equivalent for ReLU).
2. For every dead neuron, a ``fraction`` of its *remaining* (not yet stripped) incoming weights is
   masked to zero permanently:

   - ``mode: fraction`` (the paper, default 0.1): the ``ceil(fraction * remaining)`` most negative
     remaining weights, restricted to weights that are < 0 (stripping a positive weight could only
     keep the neuron dead);
   - ``mode: quantile`` (the authors' code, use 0.05): every remaining non-zero weight at or below
     the ``fraction``-quantile of the remaining non-zero weights.

   The bias is never touched. A fully stripped row is skipped.
3. Masks are re-applied after every optimizer step: the masked weights *and* their optimizer state
   (Adam's ``exp_avg``/``exp_avg_sq``, SGD's momentum: every state tensor of the weight's shape) are
   set to exactly 0. Masks are bool tensors in the checkpoint and are sliced with the analyzer's
   ``ApplyResult.index_maps`` when neurons are removed (by this method or by DemP).
4. Per measurement: ``dead_neurons`` (#D) and ``active_params`` (%A, a fraction), after the paper's
   wording: "subtracting the number of parameters connected to all dead neurons and the number of
   parameters pruned from the total number of hidden parameters". *Hidden parameters* are here the
   weights connected to a hidden neuron of the stripped layers: its incoming weights (the rows of the
   layer that produces it) and its outgoing weights (the columns of every Conv/Linear layer that reads
   it, the classifier included); biases excluded. A hidden parameter is active when it is not stripped
   and none of the hidden neurons it connects is dead (:func:`active_parameter_fraction`).
   This does not reproduce the paper's Table I numbers. The baseline %A there is the squared live
   share of the hidden neurons, (1 - #D/(L*N))², to the printed two decimals in 16 of its 18 rows:
   8 x 1024 with #D 6052 gives (2140/8192)² = 6.82%. That is what hidden-to-hidden weights alone give
   under a uniform spread of dead units; it leaves out the input layer (3072 x N on CIFAR-10) and the
   classifier (N x 10). demp's %A counts every weight connected to a hidden neuron (in an MLP, every
   weight of the network, input and output layers included), which gives 12.61% on the Table I
   geometry (3072 inputs, 8 x 1024 hidden, 10 outputs; 757 dead in each of the first four hidden
   layers and 756 in each of the last four). ``tests/test_stripping.py`` checks this figure against
   the function and against this text, docs/training.md and BENCHMARKS.md.
5. :meth:`SynapticStripping.finalize` removes the neurons still dead through the analyzer (lossless);
   the stripped zeros stay in the exported weights (``weight_sparsity``).

Under DDP the statistics are all-reduced, and the masks are broadcast from rank 0 after every
stripping, so every rank holds identical masks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...activity import ActivityStats
from ...criteria import Dead
from ...errors import CheckpointError, UsageError
from ...graph import ApplyResult
from ...plan import PruningPlan
from .. import distributed as dist_util
from ..bounds import bounded, check_bounds, ignore_field
from .base import AnalyzerPruner, MethodContext

__all__ = ["StrippingConfig", "SynapticStripping", "strip_row", "active_parameter_fraction"]

STATE_VERSION = 1
MODES = ("fraction", "quantile")


@dataclass
class StrippingConfig:
    """Synaptic Stripping's options (paper defaults)."""

    fraction: float = bounded(0.1, low=0, low_open=True, high=1,
                              help="share of a dead neuron's remaining incoming weights stripped per measurement "
                                   "(paper 0.1; authors' code 0.05 with mode quantile)")
    mode: str = bounded("fraction", choices=MODES,
                        help="fraction (the most negative ceil(f*n) remaining weights < 0) | quantile (weights <= the "
                             "f-quantile of the remaining non-zero ones)")
    interval_steps: int = bounded(0, integer=True, low=0,
                                  help="strip every N optimizer steps (0: after each epoch, as in the paper)")
    samples: int = bounded(1024, integer=True, low=1,
                           help="held-aside training samples (no augmentation) on which death is measured")
    conv: bool = field(default=False,
                       metadata={"help": "also strip dead convolution channels (a filter's weights are its incoming "
                                         "weights); the paper covers Linear layers only"})
    remove_dead: bool = field(default=True,
                              metadata={"help": "remove the neurons still dead at the end (lossless); method stripping "
                                                "only"})
    ignore: list[str] = ignore_field("layers never stripped nor pruned")

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the option outside its bounds and what it accepts."""
        check_bounds(self, "stripping")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def strip_row(weights: Tensor, mask: Tensor, fraction: float, mode: str = "fraction") -> Tensor:
    """The new mask (True = stripped) of one neuron's incoming weights ``weights`` (1-D).

    Only remaining (unmasked) weights are candidates; see the module docstring for the two modes.
    A fully stripped row (or one with nothing to strip) returns the mask unchanged.
    """
    remaining = (~mask).nonzero().flatten()
    if remaining.numel() == 0:
        return mask.clone()
    vals = weights.detach()[remaining].double().cpu()
    if mode == "fraction":
        k = math.ceil(fraction * remaining.numel())
        order = torch.argsort(vals, stable=True)[:k]
        chosen = order[vals[order] < 0]
    elif mode == "quantile":
        nonzero = vals[vals != 0]
        if nonzero.numel() == 0:
            return mask.clone()
        q = torch.quantile(nonzero, float(fraction))
        chosen = ((vals <= q) & (vals != 0)).nonzero().flatten()
    else:
        raise UsageError(f"stripping mode {mode!r} is invalid: expected {' | '.join(MODES)}")
    out = mask.clone()
    out[remaining[chosen].to(out.device)] = True
    return out


def active_parameter_fraction(hidden: Mapping[str, Tensor], *inactive: Mapping[str, Tensor]) -> float:
    """%A as a fraction: of the parameters marked in ``hidden`` (bool masks per weight tensor), the share
    marked in none of the ``inactive`` masks (attached to a dead neuron, stripped). 1.0 without any."""
    total = active = 0
    for name, mask in hidden.items():
        keep = mask.clone()
        for other in inactive:
            if name in other:
                keep &= ~other[name].to(keep.device)
        total += int(mask.sum())
        active += int(keep.sum())
    return active / total if total else 1.0


class SynapticStripping(AnalyzerPruner):
    """Synaptic Stripping for one model (see the module docstring).

    ``owns_plan`` (True for ``method: stripping``): this method makes the final structural removal
    and owns the run's plan. With DemP (``method: demp+stripping``) DemP removes neurons; pass
    ``owns_plan=False`` and register :meth:`on_structural_removal` with DemP.
    """

    name = "stripping"

    def __init__(self, model: nn.Module, config: StrippingConfig, *, example_inputs: Tensor | Sequence[Tensor],
                 val_loader: Iterable[Any], owns_plan: bool = True, samples: int | None = None) -> None:
        if not isinstance(config, StrippingConfig):
            raise TypeError(f"config must be a StrippingConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.criterion = Dead()
        super().__init__(model, example_inputs=example_inputs, loader=val_loader, criterion=self.criterion.to_dict(),
                         ignore=config.ignore, samples=samples)
        self.owns_plan = bool(owns_plan)
        self.masks: dict[str, Tensor] = {}  # stripped weight name -> bool mask (True = stripped), weight's shape
        params = dict(self.model.named_parameters())
        for name in self._target_weights():
            self.masks[name] = torch.zeros(params[name].shape, dtype=torch.bool, device=params[name].device)
        self.last_dead = 0
        self.measurements = 0
        self.history: list[dict[str, Any]] = []
        self.add_apply_listener(self.on_structural_removal)

    @classmethod
    def build(cls, config: StrippingConfig, ctx: MethodContext) -> SynapticStripping:
        """With another method owning the plan (``demp+stripping``) this one strips and follows its removals."""
        return cls(ctx.model, config, example_inputs=ctx.example_inputs,
                   val_loader=ctx.measurement_loader(config.samples),
                   owns_plan=ctx.plan_owner is None, samples=ctx.measurement_samples(config.samples))

    # ------------------------------------------------------------------ structure
    def _strippable(self, module: nn.Module) -> bool:
        """Linear layers; with ``conv: true`` also (non-transposed) convolutions."""
        if isinstance(module, nn.Linear):
            return True
        return bool(self.config.conv) and isinstance(module, nn.modules.conv._ConvNd) and not module.transposed

    def _target_groups(self) -> list[Any]:
        """Unblocked neuron groups rooted at a stripped layer (hidden MLP units; conv channels with ``conv``).

        A blocked group is never a hidden layer: a transformer's residual stream, for one, has its
        root at a Linear (the last block's second MLP layer) but is read by every LayerNorm and head.
        """
        return self.rooted_groups(lambda module, g: self._strippable(module) and g.root not in self.ignore)

    def _rows(self, group: Any) -> list[tuple[str, list[int], list[int]]]:
        """(weight name, rows, root channels) of the stripped layers holding the group's incoming weights."""
        out = []
        for pname, dim, idxs, root_idxs in self.analyzer.channel_params(group.root):
            owner, _, leaf = pname.rpartition(".")
            if leaf != "weight" or dim != 0:
                continue
            try:
                module = self.model.get_submodule(owner)
            except AttributeError:
                continue
            if self._strippable(module):
                out.append((pname, list(idxs), list(root_idxs)))
        return out

    def _target_weights(self) -> list[str]:
        seen: dict[str, None] = {}
        for g in self._target_groups():
            for name, _, _ in self._rows(g):
                seen.setdefault(name, None)
        return list(seen)

    # ------------------------------------------------------------------ masks
    @torch.no_grad()
    def enforce(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero the masked weights and their optimizer state (every state tensor of the weight's shape)."""
        params = dict(self.model.named_parameters())
        for name, mask in self.masks.items():
            p = params.get(name)
            if p is None or not bool(mask.any()):
                continue
            if mask.device != p.device:
                mask = self.masks[name] = mask.to(p.device)
            p.masked_fill_(mask, 0.0)
            if optimizer is not None:
                for value in optimizer.state.get(p, {}).values():
                    if isinstance(value, Tensor) and value.shape == p.shape:
                        value.masked_fill_(mask, 0)

    def on_structural_removal(self, result: ApplyResult) -> None:
        """Slice the masks with ``result.index_maps`` (any removal: this method's or DemP's)."""
        for name, mask in list(self.masks.items()):
            idx = result.index_maps.get(name)
            if idx is None:
                continue
            new = result.new_params[name]
            self.masks[name] = mask.reshape(-1)[idx.to(mask.device)].view(new.shape)
        super().on_structural_removal(result)

    def _broadcast_masks(self) -> None:
        if not dist_util.active():
            return
        backend = torch.distributed.get_backend()
        for name in sorted(self.masks):
            mask = self.masks[name]
            dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            buf = mask.to(device=dev, dtype=torch.uint8)
            torch.distributed.broadcast(buf, src=0)
            self.masks[name] = buf.bool().to(mask.device)

    # ------------------------------------------------------------------ measurement
    def _measure_dead(self) -> tuple[ActivityStats, dict[str, Tensor]]:
        stats = self.collect(("max_abs",))
        dead = {g.root: self.analyzer.removable_channels(g, stats, self.criterion) for g in self._target_groups()}
        self._live = {root: ~m for root, m in dead.items()}
        self.last_dead = int(sum(int(m.sum()) for m in dead.values()))
        return stats, dead

    def measure(self) -> dict[str, Tensor]:
        """Dead masks (True = dead) per target neuron group root, measured on the held-aside samples."""
        _, dead = self._measure_dead()
        self.measurements += 1
        return dead

    def strip(self, dead: dict[str, Tensor], optimizer: torch.optim.Optimizer | None) -> int:
        """Mask part of every dead neuron's remaining incoming weights; returns weights newly stripped."""
        params = dict(self.model.named_parameters())
        before = self.stripped_weights()
        for g in self._target_groups():
            mask_g = dead.get(g.root)
            if mask_g is None or not bool(mask_g.any()):
                continue
            dead_channels = set(mask_g.nonzero().flatten().tolist())
            for name, idxs, root_idxs in self._rows(g):
                w, mask = params[name], self.masks[name]
                for row, ch in zip(idxs, root_idxs, strict=True):
                    if ch in dead_channels:  # a conv filter is stripped as one flat row of weights
                        mask[row] = strip_row(w[row].reshape(-1), mask[row].reshape(-1), self.config.fraction,
                                              self.config.mode).view_as(mask[row])
        self._broadcast_masks()
        self.enforce(optimizer)
        return self.stripped_weights() - before

    def _measure_and_strip(self, optimizer: torch.optim.Optimizer | None, epoch: int | None) -> None:
        t0 = time.perf_counter()
        dead = self.measure()
        new = self.strip(dead, optimizer)
        rec = {"epoch": epoch, "step": self.steps_done, "dead_neurons": self.last_dead, "stripped_now": new,
               "active_params": self.active_fraction(), "seconds": time.perf_counter() - t0}
        self.history.append(rec)

    # ------------------------------------------------------------------ hooks
    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        self.steps_done = max(self.steps_done, int(step) + 1)
        self.enforce(optimizer)
        n = self.config.interval_steps
        if n and (int(step) + 1) % n == 0:
            self._measure_and_strip(optimizer, None)
        return None

    def end_of_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> None:
        if not self.config.interval_steps:
            self._measure_and_strip(optimizer, epoch + 1)
        return None

    def finalize(self, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """Remove the neurons still dead (``remove_dead`` and this method owns the plan); masks stay."""
        t0 = time.perf_counter()
        self.enforce(optimizer)
        if not (self.owns_plan and self.config.remove_dead):
            self.measure()
            return None
        stats, _ = self._measure_dead()
        roots = {g.root for g in self._target_groups()}
        decided = self.analyzer.decide(stats, self.criterion)
        delta = PruningPlan(groups=[g for g in decided.groups if g.root in roots], criterion=decided.criterion)
        return self.remove(delta, optimizer, step=self.steps_done, dead=self.last_dead, final=True, t0=t0)

    # ------------------------------------------------------------------ metrics
    def stripped_weights(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def hidden_parameters(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(hidden, attached to a dead neuron): bool masks per weight tensor (see the module docstring).

        Hidden: the rows producing and the input slices reading a target neuron group's channels;
        dead: those of the channels dead at the last measurement (none before the first).
        """
        params = dict(self.model.named_parameters())
        hidden: dict[str, Tensor] = {}
        dead: dict[str, Tensor] = {}
        for g in self._target_groups():
            live = self._live.get(g.root)
            rows = [(n, 0, i, r) for n, i, r in self._rows(g)]
            for name, dim, idxs, root_idxs in rows + self.analyzer.consumer_params(g.root):
                p = params[name]
                for masks in (hidden, dead):
                    masks.setdefault(name, torch.zeros(p.shape, dtype=torch.bool, device=p.device))
                at = torch.as_tensor(idxs, dtype=torch.long, device=p.device)
                hidden[name].index_fill_(dim, at, True)
                if live is not None and live.numel() == g.size:
                    is_dead = ~live[torch.as_tensor(root_idxs, dtype=torch.long)].to(p.device)
                    dead[name].index_fill_(dim, at[is_dead], True)
        return hidden, dead

    def active_fraction(self) -> float:
        """%A (as a fraction): hidden parameters neither stripped nor connected to a neuron dead at the last
        measurement, over all hidden parameters (incoming and outgoing weights of the stripped layers' neurons)."""
        hidden, dead = self.hidden_parameters()
        return active_parameter_fraction(hidden, dead, self.masks)

    def weight_sparsity(self) -> float:
        """Stripped weights over all weights of the stripped layers (present in the model)."""
        total = sum(m.numel() for m in self.masks.values())
        return self.stripped_weights() / total if total else 0.0

    def metrics(self, step: int) -> dict[str, Any]:
        return {"dead_neurons": self.last_dead, "active_params": self.active_fraction(),
                "stripped_weights": self.stripped_weights(), "weight_sparsity": self.weight_sparsity()}


    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": self.config.to_dict(), **self._base_state(),
                "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
                "last_dead": self.last_dead, "measurements": self.measurements,
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_version(state, STATE_VERSION, "Synaptic Stripping")
        if self.owns_plan:
            self._load_base_state(state)
        params = dict(self.model.named_parameters())
        masks = {}
        for name, mask in state.get("masks", {}).items():
            p = params.get(name)
            mask = torch.as_tensor(mask, dtype=torch.bool)
            if p is None or tuple(mask.shape) != tuple(p.shape):
                raise CheckpointError(f"stripping mask {name} ({tuple(mask.shape)}) does not fit the model "
                                      f"({None if p is None else tuple(p.shape)}); resume with the run's own recipe")
            masks[name] = mask.to(p.device)
        self.masks = masks
        self.last_dead = int(state.get("last_dead", 0))
        self.measurements = int(state.get("measurements", 0))
        self.history = [dict(h) for h in state.get("history", [])]
        if not self.owns_plan:
            self.steps_done = int(state.get("steps_done", 0))
            self._live = {str(k): torch.as_tensor(v, dtype=torch.bool) for k, v in state.get("live_masks", {}).items()}
            self._analyzer = None
            self._drop_stale_masks()
