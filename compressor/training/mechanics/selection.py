"""DemP's ``select: budget``: the penalty only on the neurons a budget still needs to lose (beyond the papers).

The papers' penalty pulls every regularized tensor towards zero; in a short fine-tune of a converged
network that pull degrades every neuron while only some of them die (docs/demp.md §9: with the pull on
every scale the fine-tuned ResNet-20 ended 11 points below the fine-tuned dense model at half the
MACs, against 7 with the pull on the chosen neurons only). Growing-regularization
pruning (Wang et al. 2021, "Neural Pruning via Growing Regularization", arXiv:2012.09243) penalizes
only the weights chosen for removal. ``select: budget`` does that inside DemP's mechanism: at every
death measurement the live neurons with the smallest ``|γ| / w`` (the BatchNorm scale — network
slimming's importance — over the group's cost weight of :mod:`.costs`, so expensive neurons go
first) are chosen, the fewest whose removal would reach the budget, and only they are penalized:

    λ · w · (|γ_i| + max(β_i, 0))

The ``|γ|`` term silences the neuron and the ``max(β, 0)`` term (a "coup de grâce" on the shift, after
the CDG regularizers of the first DemP paper) pushes its constant output below zero, so that the ReLU
makes it exactly dead: it is then removed losslessly, as every DemP death is. (Pushing β further,
to -1, killed more of the chosen neurons before the deadline but cost 1 point of validation accuracy
on the CIFAR ResNet-20: docs/demp.md §9.) The choice is made
again at every measurement (as γ shrink, the chosen ones stay chosen); neurons that are not chosen
feel no penalty at all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BudgetSelection", "rank_by_scale"]

ChannelParams = dict[str, list[tuple[str, int, list[int], list[int]]]]


def rank_by_scale(model: nn.Module, channel_params: ChannelParams, groups: dict[str, Any], live: dict[str, Tensor],
                  weights: dict[str, float], regularized: list[str]) -> list[tuple[float, str, int]]:
    """``(|γ| / w, root, channel)`` of every live channel of ``groups`` whose scale γ is a regularized
    tensor, smallest first: the order :class:`BudgetSelection` chooses in (expensive and weak first)."""
    params = dict(model.named_parameters())
    ranked: list[tuple[float, str, int]] = []
    for root, g in groups.items():
        alive = live.get(root, torch.ones(g.size, dtype=torch.bool))
        weight = max(weights.get(root, 1.0), 1e-12)
        for name, dim, idxs, root_idxs in channel_params.get(root, []):
            if name.endswith(".weight") and dim == 0 and name in regularized and name in params:
                gamma = params[name].detach().abs().cpu()
                ranked += [(float(gamma[i]) / weight, root, r)
                           for i, r in zip(idxs, root_idxs, strict=True) if alive[r]]
                break
    return sorted(ranked)


class BudgetSelection:
    """The chosen neurons' penalty terms: (γ, β, per-channel weight) per normalization layer."""

    def __init__(self) -> None:
        self.terms: list[tuple[Tensor, Tensor | None, Tensor]] = []
        self.chosen = 0

    def refresh(self, model: nn.Module, channel_params: ChannelParams,
                chosen: dict[str, list[int]], weights: dict[str, float]) -> None:
        """Penalize the channels ``chosen[root]`` (root numbering) of every group with the group's weight.

        ``channel_params[root]`` lists the group's parameter slices (:meth:`DependencyAnalyzer.channel_params`);
        the normalization layers among them carry the penalty.
        """
        params = dict(model.named_parameters())
        masks: dict[str, Tensor] = {}
        for root, idxs in chosen.items():
            picked = set(idxs)
            for name, dim, p_idx, root_idx in channel_params.get(root, []):
                module_name, _, leaf = name.rpartition(".")
                module = model.get_submodule(module_name) if module_name else model
                if leaf != "weight" or dim != 0 or not isinstance(module, _NORMS) or name not in params:
                    continue
                mask = masks.setdefault(name, torch.zeros_like(params[name], requires_grad=False))
                for i, r in zip(p_idx, root_idx, strict=True):
                    if r in picked:
                        mask[i] = weights.get(root, 1.0)
        self.terms = []
        for name, mask in masks.items():
            bias = params.get(name[: -len("weight")] + "bias")
            self.terms.append((params[name], bias, mask.detach()))
        self.chosen = sum(len(v) for v in chosen.values())

    def clear(self) -> None:
        self.terms, self.chosen = [], 0

    def __call__(self, scale: float) -> Tensor:
        """``scale · Σ w (|γ| + max(β, 0))`` over the chosen channels (0 when none is chosen)."""
        if not self.terms or scale == 0.0:
            device = self.terms[0][0].device if self.terms else None
            return torch.zeros((), device=device)
        total = sum((w * g.abs()).sum() + ((w * b.clamp(min=0)).sum() if b is not None else 0.0)
                    for g, b, w in self.terms)
        return total * scale  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "layers": len(self.terms)}


_NORMS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
