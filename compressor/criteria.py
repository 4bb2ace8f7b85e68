"""Criteria: turn a consumer's input statistics into a per-channel "removable" decision.

A coupling group's channel is removed only if its criterion holds at *every* consumer that reads
it (the analyzer combines the per-consumer answers). Criteria:

- ``dead[:EPS]``  max|x| <= eps (default 0). Lossless: every reader receives exact zeros (ReLU).
- ``saturated[:EPS]``  max x <= eps: the unit never leaves its saturated region ("almost dead" for
  Leaky ReLU / GELU / SiLU in the DemP paper). Lossy: the small negative outputs are dropped.
- ``dormant:TAU``  ReDo score mean|x_i| / mean_k mean|x_k| <= tau (Sokar et al. 2023; tau 0.025 or
  0.1 there). Lossy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .activity import ChannelStats
from .errors import UsageError


class Criterion:
    """Base class: ``removable(stats)`` -> bool tensor over the consumer's input channels."""

    name: str = "criterion"
    lossless: bool = False
    fields: tuple[str, ...] = ("max_abs", "max", "sum_abs", "nonzero")

    def removable(self, stats: ChannelStats) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec()

    def spec(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class _Threshold(Criterion):
    """Removable where one statistic (``stat``) is at most ``eps`` at the consumer."""

    eps: float = 0.0
    stat: ClassVar[str] = "max_abs"

    def removable(self, stats: ChannelStats) -> Tensor:
        return getattr(stats, self.stat) <= self.eps

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps, "lossless": self.lossless}

    def spec(self) -> str:
        return self.name if self.eps == 0 else f"{self.name}:{self.eps:g}"


class Dead(_Threshold):
    """max|x| <= eps: lossless at eps 0 (every reader receives exact zeros)."""

    name = "dead"
    stat = "max_abs"
    fields = ("max_abs",)

    @property
    def lossless(self) -> bool:  # type: ignore[override]
        return self.eps == 0.0


class Saturated(_Threshold):
    """max x <= eps: never leaves the saturated region (lossy)."""

    name = "saturated"
    stat = "max"
    lossless = False
    fields = ("max",)


@dataclass(frozen=True)
class Dormant(Criterion):
    tau: float = 0.025
    name = "dormant"
    lossless = False
    fields = ("sum_abs",)

    def scores(self, stats: ChannelStats) -> Tensor:
        mean_abs = stats.mean_abs
        layer_mean = mean_abs.mean()
        if layer_mean <= 0:
            return torch.zeros_like(mean_abs)
        return mean_abs / layer_mean

    def removable(self, stats: ChannelStats) -> Tensor:
        return self.scores(stats) <= self.tau

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tau": self.tau, "lossless": False}

    def spec(self) -> str:
        return f"dormant:{self.tau:g}"


_KINDS = {"dead": Dead, "saturated": Saturated, "dormant": Dormant}


def parse_criterion(spec: str | Criterion) -> Criterion:
    """Parse ``dead``, ``dead:EPS``, ``saturated[:EPS]``, ``dormant:TAU`` (or pass a Criterion through)."""
    if isinstance(spec, Criterion):
        return spec
    name, _, arg = str(spec).strip().partition(":")
    kind = _KINDS.get(name)
    if kind is None:
        raise UsageError(f"unknown criterion {spec!r}; valid: dead[:EPS], saturated[:EPS], dormant:TAU")
    if not arg:
        return kind()
    try:
        value = float(arg)
    except ValueError:
        raise UsageError(f"criterion {spec!r}: {arg!r} is not a number") from None
    if not value >= 0 or value != value:
        raise UsageError(f"criterion {spec!r}: the threshold must be a non-negative number")
    return kind(value)


__all__ = ["Criterion", "Dead", "Saturated", "Dormant", "parse_criterion"]
