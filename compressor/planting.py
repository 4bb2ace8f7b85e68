"""Plant dead channels at known positions: for tests, benchmarks and sweeps of the analyzer.

Setting a normalization layer's bias to a large negative value (default -1e3) before a ReLU-like
activation makes that channel exactly zero for every input. The analyzer must then find and remove
exactly those channels with outputs unchanged; planting is how the coverage sweep and the latency
benchmarks create "half of every group is dead" models without training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .graph import DependencyAnalyzer

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def plant_dead_channels(
    model: nn.Module,
    analyzer: DependencyAnalyzer,
    *,
    fraction: float | None = None,
    channels: Sequence[int] = (),
    max_groups: int | None = None,
    value: float = -1e3,
) -> dict[str, list[int]]:
    """Kill channels of prunable groups; returns ``{group root: planted root channel indices}``.

    Either ``channels`` (fixed root indices) or ``fraction`` (that share of every group, evenly
    spaced, always leaving at least one channel) selects what to kill. Every BatchNorm (or, without
    one, every Conv/Linear bias) on the producing side of the group gets ``value`` at those channels.
    """
    planted: dict[str, list[int]] = {}
    groups = analyzer.prunable_groups[:max_groups] if max_groups else analyzer.prunable_groups
    for group in groups:
        if fraction is not None:
            n = min(int(group.size * fraction), group.size - group.min_channels)
            chosen = sorted(set(torch.linspace(0, group.size - 1, max(n, 0)).round().long().tolist())) if n > 0 else []
        else:
            chosen = [c for c in channels if c < group.size - 1]
        if not chosen:
            continue
        params = analyzer.channel_params(group.root)
        norm_biases = [p for p in params if p[0].endswith(".bias")
                       and isinstance(model.get_submodule(p[0].rsplit(".", 1)[0]), _NORM_TYPES)]
        targets = norm_biases or [p for p in params if p[0].endswith(".bias")]
        if not targets:
            continue
        for name, dim, idxs, root_idxs in targets:
            tensor = model.get_parameter(name)
            where = {r: i for i, r in zip(idxs, root_idxs, strict=True)}
            for c in chosen:
                if c in where:
                    tensor.select(dim, where[c]).fill_(value)
        planted[group.root] = chosen
    return planted
