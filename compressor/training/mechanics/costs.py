"""What one neuron of each coupling group costs: the weights of DemP's cost-aware penalty.

Beyond the papers. DemP's papers put the same λ on every regularized tensor, so the neurons that die
first are the ones the loss needs least, wherever they are: on a CIFAR ResNet those are the late,
narrow-resolution channels, which cost the fewest MACs (BENCHMARKS.md §8.2: at 50% of the neurons
DemP kept 0.40x of the MACs where importance pruning kept 0.23-0.31x). MorphNet (Gordon et al. 2018,
"MorphNet: Fast & Simple Resource-Constrained Structure Learning of Deep Networks", arXiv:1711.06798)
weights each neuron's sparsity penalty by the resource it costs; :func:`neuron_costs` gives that
weight for the resource a budget names:

- ``macs``: the multiply-accumulates one channel of the group costs per sample, summed over every
  Conv/Linear that produces it (its output slice) and every one that reads it (its input slice), from
  the same per-module fvcore count as every report (:func:`compressor.counting.count_macs`);
- ``params``: the parameters of every slice the channel owns or is read through (normalization and
  biases included);
- ``uniform``: 1 for every neuron (the papers).

:func:`tensor_weights` turns the group costs into one weight per regularized tensor (each tensor
belongs to the group of its dim-0 channels), normalized so that the neuron-weighted mean over the
prunable groups is 1: ``peak`` keeps its meaning, and the penalty is only redistributed, towards the
neurons whose removal saves the most. Tensors of blocked groups (the classifier, residual streams a
shortcut ties) get weight 0 under a cost: pushing what can never be removed only costs accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ...counting import count_macs
from ...graph import DependencyAnalyzer

__all__ = ["COSTS", "neuron_costs", "group_weights", "tensor_weights", "describe_costs"]

#: The cost a penalty may be weighted by (``uniform``: the papers' unweighted penalty).
COSTS = ("uniform", "macs", "params")


def _slices(analyzer: DependencyAnalyzer, root: str) -> list[tuple[str, int, float]]:
    """(parameter name, dim, slices per root channel) of every parameter the group's channels own or are
    read through."""
    out = []
    for name, dim, idxs, root_idxs in [*analyzer.channel_params(root), *analyzer.consumer_params(root)]:
        if root_idxs:
            out.append((name, int(dim), len(idxs) / len(root_idxs)))
    return out


def neuron_costs(model: nn.Module, analyzer: DependencyAnalyzer, example_inputs: Tensor | Sequence[Tensor],
                 kind: str) -> dict[str, float]:
    """Cost of one channel of every unblocked neuron group (root -> MACs or parameters per channel)."""
    if kind not in COSTS:
        raise ValueError(f"unknown cost {kind!r}; choose one of {', '.join(COSTS)}")
    groups = [g for g in analyzer.neuron_groups if g.blocked is None]
    if kind == "uniform":
        return {g.root: 1.0 for g in groups}
    params = dict(model.named_parameters())
    by_module: dict[str, int] = {}
    if kind == "macs":
        if not isinstance(example_inputs, Tensor):
            raise TypeError("MAC costs need the example inputs as one tensor")
        by_module = count_macs(model, example_inputs[:1]).by_module
    costs: dict[str, float] = {}
    for g in groups:
        total, seen = 0.0, set()
        for name, dim, per_channel in _slices(analyzer, g.root):
            p = params.get(name)
            if p is None or (name, dim) in seen or p.dim() <= dim:
                continue
            seen.add((name, dim))
            if kind == "params":
                total += p.numel() / p.shape[dim] * per_channel
            elif name.endswith(".weight") and isinstance(model.get_submodule(name.rpartition(".")[0]),
                                                         (nn.Linear, nn.modules.conv._ConvNd)):
                total += by_module.get(name.rpartition(".")[0], 0) / p.shape[dim] * per_channel
        costs[g.root] = total
    return costs


def group_weights(analyzer: DependencyAnalyzer, costs: dict[str, float]) -> dict[str, float]:
    """Per group of ``costs``: the cost of one of its neurons over the mean cost of a prunable neuron
    (so the neuron-weighted mean of the weights is 1)."""
    sizes = {g.root: g.size for g in analyzer.neuron_groups if g.root in costs}
    neurons = sum(sizes.values())
    mean = sum(costs[r] * n for r, n in sizes.items()) / neurons if neurons else 0.0
    return {r: costs[r] / mean if mean > 0 else 0.0 for r in sizes}


def tensor_weights(analyzer: DependencyAnalyzer, costs: dict[str, float], names: Sequence[str]) -> list[float]:
    """One penalty weight per tensor of ``names``: its group's :func:`group_weights` entry.

    A tensor belongs to the group of its dim-0 channels; one outside every unblocked group gets 0.
    """
    weights = group_weights(analyzer, costs)
    owner: dict[str, str] = {}
    for root in weights:
        for name, dim, _, _ in analyzer.channel_params(root):
            if dim == 0:
                owner.setdefault(name, root)
    return [weights[owner[n]] if n in owner else 0.0 for n in names]


def describe_costs(analyzer: DependencyAnalyzer, costs: dict[str, float]) -> list[dict[str, Any]]:
    """Per group: its size, the cost of one of its neurons and its weight (for the report)."""
    sizes = {g.root: g.size for g in analyzer.neuron_groups}
    return [{"root": r, "channels": sizes[r], "cost": costs[r], "weight": w}
            for r, w in group_weights(analyzer, costs).items()]
