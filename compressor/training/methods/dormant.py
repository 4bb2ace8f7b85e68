"""Dormant-neuron pruning during training (ReDo score, Sokar et al. 2023).

Every ``interval_epochs`` epochs (PI) the ReDo score ``s_i = mean|a_i| / mean_k mean|a_k|`` of every
neuron is measured at the inputs of its consumers (:class:`compressor.criteria.Dormant`) on held-aside
training samples, and the neurons that are τ-dormant at *every* consumer are removed structurally
through the DependencyAnalyzer (lossy unless the neuron is exactly dead).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...criteria import Dormant
from ..bounds import bounded, check_bounds, ignore_field, min_channels_field
from .base import AnalyzerPruner, MethodContext, RemovalEvent

__all__ = ["DormantConfig", "DormantPruning"]

STATE_VERSION = 1


@dataclass
class DormantConfig:
    """Options of ``method: dormant``."""

    tau: float = bounded(0.025, low=0, help="a neuron is dormant when its ReDo score <= tau (ReDo: 0.025 or 0.1)")
    interval_epochs: int = bounded(1, integer=True, low=1, help="prune every PI epochs")
    samples: int = bounded(1024, integer=True, low=1,
                           help="held-aside training samples (no augmentation) on which scores are measured")
    min_channels: int = min_channels_field()
    ignore: list[str] = ignore_field()

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the option outside its bounds and what it accepts."""
        check_bounds(self, "dormant")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DormantPruning(AnalyzerPruner):
    """Remove τ-dormant neurons every PI epochs (see the module docstring)."""

    name = "dormant"

    def __init__(self, model: nn.Module, config: DormantConfig, *, example_inputs: Tensor | Sequence[Tensor],
                 loader: Iterable[Any], samples: int | None = None) -> None:
        config.validate()
        self.config = config
        self.criterion = Dormant(float(config.tau))
        super().__init__(model, example_inputs=example_inputs, loader=loader, criterion=self.criterion.to_dict(),
                         ignore=config.ignore, min_channels=config.min_channels, samples=samples)
        self.last_dormant = 0

    @classmethod
    def build(cls, config: DormantConfig, ctx: MethodContext) -> DormantPruning:
        return cls(ctx.model, config, example_inputs=ctx.example_inputs, loader=ctx.measurement_loader(config.samples),
                   samples=ctx.measurement_samples(config.samples))

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        self.steps_done = max(self.steps_done, int(step) + 1)

    def prune(self, optimizer: torch.optim.Optimizer | None, *, final: bool = False) -> RemovalEvent:
        """Measure the scores and remove the dormant neurons now; returns the RemovalEvent."""
        t0 = time.perf_counter()
        stats = self.collect(("sum_abs",))
        self.last_dormant = self.measured_live(stats, self.criterion)
        delta = self.analyzer.decide(stats, self.criterion)
        return self.remove(delta, optimizer, step=self.steps_done, dead=self.last_dormant, final=final, t0=t0)

    def end_of_epoch(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> RemovalEvent | None:
        if (int(epoch) + 1) % self.config.interval_epochs != 0:
            return None
        return self.prune(optimizer)

    def metrics(self, step: int) -> dict[str, Any]:
        return {"dormant_neurons": self.last_dormant, "removals": self.removals}


    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": self.config.to_dict(), **self._base_state(),
                "last_dormant": self.last_dormant}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_version(state, STATE_VERSION, "dormant-pruning")
        self._load_base_state(state)
        self.last_dormant = int(state.get("last_dormant", 0))
