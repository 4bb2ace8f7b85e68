"""Coupling groups from torch-pruning's DependencyGraph and removal decisions on activity statistics.

A *group* is the set of (layer, dimension) slices that must lose the same channel together: a
residual stream couples every block's last BatchNorm with the stem and every reader of the stream;
``torch.cat`` maps channel offsets; Flatten -> Linear maps strides. Torch-pruning finds these groups;
this module adds what it does not do:

- **Decisions at every consumer.** A root channel is removable only if the criterion holds at the
  input of *every* Conv/Linear that reads it (each group item's ``idxs``/``root_idxs`` maps the
  consumer's input channel back to the root's numbering). A channel no consumer reads is kept.
- **Blocked groups, with a reason.** Groups whose channels reach the model output (the classifier),
  pass through channel-mixing normalization (LayerNorm, GroupNorm: ViT / ConvNeXt residual streams),
  enter layers whose inputs are not measured (MultiheadAttention, LSTM, Embedding) or touch an
  ignored layer are never pruned; ``groups[i].blocked`` says why.
- **Frozen parameters** (``requires_grad=False``) hide groups during tracing: everything is made
  trainable while tracing and restored after, with the model's train/eval mode.

Applying a plan is :mod:`.apply`; every reach into torch-pruning's internals is :mod:`.tp_compat`.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning import ops as tp_ops

from ..activity import CONSUMER_TYPES, ActivityStats, ChannelStats
from ..criteria import Criterion
from ..defaults import ANALYZER_TIME_BUDGET
from ..errors import CheckpointError, DempError, UsageError
from ..plan import GroupRemoval, PruningPlan
from .apply import Action, ApplyResult, apply_actions, expand_group, merge_actions
from .tp_compat import (
    AnalyzerTimeout,
    IndexBudget,
    IndexExplosion,
    bounded_index_mappings,
    channel_padding,
    check_version,
    failed_construct,
    trace_failure,
)

log = logging.getLogger(__name__)

__all__ = ["DependencyAnalyzer", "ChannelGroup", "GroupItem", "ANALYZER_TIME_BUDGET"]

OPT = tp_ops.OPTYPE
# node types whose parameters/buffers are sliced per channel (safe to shrink)
_LAYER_TYPES = (nn.Linear, nn.modules.conv._ConvNd)  # layers whose weight reads channels on dim 1
_PER_CHANNEL_TYPES = {OPT.CONV, OPT.LINEAR, OPT.BN, OPT.DEPTHWISE_CONV, OPT.PRELU, OPT.IN, OPT.PARAMETER}
#: Autograd ops that multiply two activations (attention scores, attention-weighted values) of any
#: implementation: torch.matmul/@ on batched tensors, baddbmm, einsum, scaled_dot_product_attention.
#: torch-pruning treats them as elementwise and couples the channels on both sides.
_ATTENTION_OPS = re.compile(r"(Bmm|Baddbmm|Einsum|ScaledDotProduct\w*Attention\w*|_?EfficientAttention)Backward\d*")
_UNMEASURED_TYPES = {OPT.MHA: "MultiheadAttention", OPT.LSTM: "LSTM", OPT.EMBED: "Embedding",
                     OPT.CUSTOMIZED: "customized layer"}


@dataclass
class GroupItem:
    """One coupled slice: ``module`` (name) loses ``idxs`` when the root loses ``root_idxs``."""

    module: str
    kind: str  # torch-pruning node type, e.g. CONV, BN, LINEAR, CONCAT
    action: str  # handler, e.g. ConvPruner.prune_in_channels
    idxs: list[int]
    root_idxs: list[int]


@dataclass
class ChannelGroup:
    """A coupling group in the numbering of its root layer's output channels."""

    root: str
    size: int
    items: list[GroupItem]
    blocked: str | None = None
    consumers: list[tuple[str, Tensor, Tensor]] = field(default_factory=list)  # (layer, idxs, root_idxs)
    min_channels: int = 1

    @property
    def members(self) -> list[str]:
        seen: dict[str, None] = {}
        for it in self.items:
            if it.kind not in ("ELEMENTWISE", "RESHAPE", "CONCAT", "SPLIT", "SLICE", "EXPAND", "UNBIND"):
                seen.setdefault(it.module, None)
        return list(seen)

    def details(self) -> str:
        """A readable multi-line description (like torch-pruning's ``Group.details()``)."""
        head = f"group {self.root} ({self.size} channels)" + (f" BLOCKED: {self.blocked}" if self.blocked else "")
        lines = [head]
        for it in self.items:
            lines.append(f"  {it.kind:<14} {it.module:<45} {it.action}")
        return "\n".join(lines)


@contextmanager
def _tracing_guard(model: nn.Module) -> Iterator[None]:
    """Make every parameter trainable and grad enabled while tracing; restore flags and mode after."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))
        model.train(was_training)


def _match(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


class DependencyAnalyzer:
    """Coupling groups of one architecture state, decisions on activity statistics, and removal.

    Build one per architecture state: after :meth:`apply` the analyzer is stale (the model changed)
    and a new one must be built for the next decision.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | Sequence[Tensor],
        *,
        ignore: Sequence[str] = (),
        min_channels: int = 1,
        round_to: int = 1,
        time_budget: float = ANALYZER_TIME_BUDGET,
    ) -> None:
        check_version()
        if min_channels < 1:
            raise UsageError(f"--min-channels must be >= 1 (got {min_channels})")
        if round_to < 1:
            raise UsageError(f"--round-to must be >= 1 (got {round_to})")
        self.model = model
        self.ignore = list(ignore)
        self.min_channels = min_channels
        self.round_to = round_to
        self.time_budget = float(time_budget)
        self._stale = False
        names = {n for n, _ in model.named_modules()}
        unknown = [p for p in self.ignore if p not in names]
        if unknown:
            hints = {u: difflib.get_close_matches(u, names, n=1) for u in unknown}
            raise UsageError("--ignore names no layer of this model: " + ", ".join(
                f"{u}" + (f" (did you mean {h[0]}?)" if h else "") for u, h in hints.items()))
        t0 = time.perf_counter()
        if isinstance(example_inputs, Tensor):
            example_inputs = example_inputs[:1]
        with _tracing_guard(model):
            try:
                self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                                verbose=False)
            except Exception as exc:  # noqa: BLE001 - torch-pruning fails with assorted errors
                raise DempError(trace_failure(exc)) from exc
        self._module_names = {m: n for n, m in model.named_modules()}
        self._output_layers = self._find_output_layers()
        self._tp_groups: dict[str, Any] = {}
        self.groups: list[ChannelGroup] = []
        self._enumerate_groups()
        self._by_root = {g.root: g for g in self.groups}
        self.build_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ structure
    def _enumerate_groups(self) -> None:
        """torch-pruning's ``get_all_groups``, with index explosions turned into blocked groups.

        Chained Flatten/reshape mappings (e.g. Swin's patch merging) make torch-pruning multiply index
        lists until memory runs out; such a group is recorded as blocked instead.
        """
        visited: set[int] = set()
        budget = IndexBudget(deadline=time.perf_counter() + self.time_budget)
        timed_out = False
        with bounded_index_mappings(budget):
            for module in list(self.dg.module2node.keys()):
                if not isinstance(module, CONSUMER_TYPES) or id(module) in visited:
                    continue
                pruner = self.dg.get_pruner_of_module(module)
                if pruner is None or pruner.get_out_channels(module) is None:
                    continue
                size = pruner.get_out_channels(module)
                name = self._module_names.get(module, "?")
                budget.reset()
                if timed_out:
                    self.groups.append(ChannelGroup(name, size, [], f"the analyzer's time budget ({self.time_budget:g} "
                                                    "s) ran out before these channels were mapped; raise it with "
                                                    "--analyzer-budget, or --ignore the layers named in the other "
                                                    "blocked groups"))
                    continue
                try:
                    tp_group = self.dg.get_pruning_group(module, pruner.prune_out_channels, list(range(size)))
                except IndexExplosion as exc:
                    visited.add(id(module))
                    self.groups.append(ChannelGroup(name, size, [], f"torch-pruning cannot map the channels of {name} "
                                                    f"({exc}): a chain of reshapes (e.g. window partitions), or a "
                                                    "partial residual such as cat([x[:, :c] + shortcut, x[:, c:]])"))
                    continue
                except AnalyzerTimeout:
                    timed_out = True
                    log.warning("the analyzer's time budget (%g s) ran out at %s; it and the groups not yet mapped "
                                "are blocked", self.time_budget, name)
                    self.groups.append(ChannelGroup(name, size, [], f"the analyzer's time budget ({self.time_budget:g} "
                                                    f"s) ran out while mapping the channels of {name}"))
                    continue
                except Exception as exc:  # noqa: BLE001 - torch-pruning fails on constructs it cannot map
                    visited.add(id(module))
                    self.groups.append(ChannelGroup(name, size, [], f"torch-pruning cannot map the channels of {name} "
                                                    f"through {failed_construct(exc)} ({type(exc).__name__}: "
                                                    f"{str(exc)[:120]}); they are kept whole"))
                    continue
                for dep, _ in tp_group:
                    if self.dg.is_out_channel_pruning_fn(dep.handler):
                        visited.add(id(dep.target.module))
                group = self._describe(tp_group)
                self.groups.append(group)
                self._tp_groups[group.root] = tp_group

    def _node_name(self, node: Any) -> str:
        module = node.module
        if isinstance(module, nn.Parameter):
            return self.dg._param_to_name.get(module, str(node.name))
        return self._module_names.get(module, str(node.name))

    def _find_output_layers(self) -> set[str]:
        """Conv/Linear layers whose outputs reach the model output without another Conv/Linear."""
        found: set[str] = set()
        stack = [n for n in self.dg.module2node.values() if n.type == OPT.OUTPUT]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            for src in node.inputs:
                if isinstance(src.module, CONSUMER_TYPES):
                    found.add(self._node_name(src))
                else:
                    stack.append(src)
        return found

    def _describe(self, tp_group: Any) -> ChannelGroup:
        root_dep = tp_group[0].dep
        root = self._node_name(root_dep.target)
        size = len(tp_group[0].idxs)
        items: list[GroupItem] = []
        consumers: list[tuple[str, Tensor, Tensor]] = []
        blocked: str | None = None
        min_channels = self.min_channels
        for item in tp_group.items:
            dep = item.dep
            node = dep.target
            name = self._node_name(node)
            handler = dep.handler
            is_in = self.dg.is_in_channel_pruning_fn(handler)
            is_out = self.dg.is_out_channel_pruning_fn(handler)
            items.append(GroupItem(name, node.type.name, getattr(handler, "__qualname__", str(handler)),
                                   list(item.idxs), list(item.root_idxs)))
            if is_in and node.type in (OPT.CONV, OPT.LINEAR) and isinstance(node.module, CONSUMER_TYPES):
                consumers.append((name, torch.as_tensor(item.idxs, dtype=torch.long),
                                  torch.as_tensor(item.root_idxs, dtype=torch.long)))
                if blocked is None:
                    blocked = self._mapping_mismatch(node.module, name, root, item.idxs)
            if node.type == OPT.DEPTHWISE_CONV:
                # a depthwise conv left with one channel turns into an ordinary conv for torch-pruning
                min_channels = max(min_channels, 2)
            if blocked is None:
                blocked = self._block_reason(node, name, is_out)
        if blocked is None and not consumers:
            blocked = "no Conv/Linear layer reads these channels (they reach the output or an unmeasured op)"
        return ChannelGroup(root, size, items, blocked, consumers, min_channels)

    @staticmethod
    def _mapping_mismatch(module: nn.Module, name: str, root: str, idxs: Sequence[int]) -> str | None:
        """Why torch-pruning's channel mapping into consumer ``name`` cannot be right, or None.

        A consumer reads at most its own input channels; torch-pruning maps the readers of a
        ``torch.split`` / ``chunk`` in the wrong order (for ``a, b = x.split([12, 18])`` the reader of
        ``a`` gets root channels 12-29), which shows as indices beyond the consumer's inputs when the
        parts differ in size. (Equal parts hide it: the verification after removal catches that case.)
        """
        inputs = getattr(module, "in_channels", None) or getattr(module, "in_features", None)
        if inputs is None or not len(idxs) or max(idxs) < inputs:
            return None
        return (f"the channels of {root} reach {name} through a split or partial channel operation (e.g. "
                f"torch.split/chunk, Res2Net's scales, a partial convolution) that torch-pruning maps to input "
                f"channel {max(idxs)} of a layer with {inputs}; removal there would cut the wrong channels")

    def _block_reason(self, node: Any, name: str, is_out: bool) -> str | None:
        module = node.module
        if is_out and name in self._output_layers:
            return f"{name} produces the model output (classifier outputs are never pruned)"
        if self.ignore and _match(name, self.ignore):
            return f"{name} is ignored (--ignore)"
        if node.type == OPT.LN:
            return f"LayerNorm {name} normalizes across these channels (removal would not be lossless)"
        if node.type == OPT.GN and module.num_groups != module.num_channels:
            return f"GroupNorm {name} normalizes across channels (removal would not be lossless)"
        if node.type in _UNMEASURED_TYPES:
            return f"{_UNMEASURED_TYPES[node.type]} {name} reads these channels and is not supported"
        if node.type == OPT.ELEMENTWISE and channel_padding(node) is not None:
            return channel_padding(node)
        if node.type == OPT.ELEMENTWISE:
            attention = _ATTENTION_OPS.search(str(getattr(node, "name", "")))
            if attention:
                return (f"attention: a product of activations ({attention.group(0)}) reads these channels, so "
                        "torch-pruning couples query, key and value channels that are not dead together; the "
                        "attention projections (query/key/value/output) are kept whole")
        if node.type == OPT.CONV and getattr(module, "groups", 1) > 1:
            return (f"grouped convolution {name} (groups={module.groups}) reads these channels; removing "
                    "single channels would break its groups")
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return f"transposed convolution {name} is not supported"
        return None

    @property
    def consumer_names(self) -> list[str]:
        """Layers whose input statistics the decisions need (hook these in collect_activity)."""
        seen: dict[str, None] = {}
        for g in self.groups:
            for name, _, _ in g.consumers:
                seen.setdefault(name, None)
        return list(seen)

    @property
    def neuron_groups(self) -> list[ChannelGroup]:
        """Groups whose channels count as neurons: read by some Conv/Linear, not the model's outputs."""
        return [g for g in self.groups if g.consumers and g.root not in self._output_layers]

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.blocked is None]

    def tp_group(self, root: str) -> Any:
        """torch-pruning's own ``Group`` object for the group rooted at ``root`` (importance estimators
        take it); None for a group blocked before torch-pruning could describe it."""
        return self._tp_groups.get(self.group(root).root)

    def group(self, root: str) -> ChannelGroup:
        try:
            return self._by_root[root]
        except KeyError:
            raise CheckpointError(
                f"the plan names a group rooted at {root!r}, which this architecture does not have; "
                "the plan was made for another model"
            ) from None

    # ------------------------------------------------------------------ decisions
    def removable_channels(self, group: ChannelGroup, stats: ActivityStats, criterion: Criterion) -> Tensor:
        """Bool mask over the group's root channels: criterion holds at every consumer that reads it."""
        ok = torch.ones(group.size, dtype=torch.uint8)
        covered = torch.zeros(group.size, dtype=torch.bool)
        for name, idxs, root_idxs in group.consumers:
            if name not in stats:
                raise DempError(f"no activity statistics for layer {name}: it was not called in the forward "
                                "pass (collect statistics with the analyzer's consumer_names)")
            removable = criterion.removable(stats[name])
            if removable.numel() <= int(idxs.max()):
                if group.blocked is not None:  # a mapping the analyzer refused (see _mapping_mismatch): all live
                    return torch.zeros(group.size, dtype=torch.bool)
                raise DempError(f"activity of {name} was measured on {removable.numel()} input channels, but the "
                                f"model now maps channel {int(idxs.max())} into it: the statistics were measured "
                                "before the last removal; measure again")
            # several consumer channels can map to one root channel (Flatten -> Linear maps each channel
            # to H*W features): AND over all of them; plain indexed assignment would keep only the last
            ok.scatter_reduce_(0, root_idxs, removable[idxs].to(torch.uint8), reduce="amin")
            covered[root_idxs] = True
        return ok.bool() & covered

    def channel_scores(self, group: ChannelGroup, stats: ActivityStats,
                       score: Callable[[ChannelStats], Tensor]) -> Tensor:
        """Per root channel of ``group``: the largest ``score`` over every consumer channel that reads it.

        A channel is only as inactive as its most active reader (a Flatten maps one channel to many
        consumer features); channels no consumer reads get +inf (never "least active").
        """
        out = torch.full((group.size,), -torch.inf, dtype=torch.float64)
        for name, idxs, root_idxs in group.consumers:
            values = score(stats[name]).to(torch.float64)
            if values.numel() <= int(idxs.max()):
                raise DempError(f"activity of {name} was measured on {values.numel()} channels but the graph "
                                f"expects more: measure again after the last removal")
            out.scatter_reduce_(0, root_idxs, values[idxs], reduce="amax")
        out[out == -torch.inf] = torch.inf
        return out

    def decide(self, stats: ActivityStats, criterion: Criterion) -> PruningPlan:
        """The removal plan (numbering of the current model) for ``criterion`` on ``stats``."""
        self._check_fresh()
        removals: list[GroupRemoval] = []
        for group in self.prunable_groups:
            removable = self.removable_channels(group, stats, criterion)
            chosen = self._limit(group, removable, stats)
            if chosen:
                removals.append(GroupRemoval(group.root, group.size, chosen, group.members))
        return PruningPlan(groups=removals, criterion=criterion.to_dict())

    def _limit(self, group: ChannelGroup, removable: Tensor, stats: ActivityStats) -> list[int]:
        """Apply --min-channels and --round-to by keeping some removable channels (never a live one)."""
        candidates = removable.nonzero().flatten().tolist()
        keep_at_least = min(group.min_channels, group.size)
        max_remove = group.size - keep_at_least
        if len(candidates) > max_remove:
            candidates = candidates[len(candidates) - max_remove:] if max_remove > 0 else []
        if self.round_to > 1 and candidates:
            after = group.size - len(candidates)
            target = min(group.size, -(-after // self.round_to) * self.round_to)
            extra = target - after
            candidates = candidates[extra:]
        return candidates

    def live_masks(self, stats: ActivityStats, criterion: Criterion) -> dict[str, Tensor]:
        """Per group root: True where the channel is live (the criterion does not hold everywhere)."""
        return {g.root: ~self.removable_channels(g, stats, criterion) for g in self.groups if g.consumers}

    def channel_params(self, root: str) -> list[tuple[str, int, list[int], list[int]]]:
        """Parameter slices that belong to the group's channels on the producing side.

        Returns ``(param_name, dim, idxs_in_param, root_idxs)`` for Conv/Linear weights and biases
        (output side), normalization and PReLU weights, and per-channel unwrapped parameters.
        """
        self.group(root)  # raises for an unknown root
        out: list[tuple[str, int, list[int], list[int]]] = []
        tp_group = self._tp_groups.get(root)
        if tp_group is None:  # blocked before torch-pruning could describe it
            return out
        for item in tp_group.items:
            node = item.dep.target
            if not self.dg.is_out_channel_pruning_fn(item.dep.handler) or node.type not in _PER_CHANNEL_TYPES:
                continue
            name = self._node_name(node)
            if node.type == OPT.PARAMETER:
                out.append((name, node.pruning_dim, list(item.idxs), list(item.root_idxs)))
                continue
            module = node.module
            for pname, p in module.named_parameters(recurse=False):
                if p is None or p.dim() == 0 or (node.type == OPT.PRELU and p.numel() == 1):
                    continue
                out.append((f"{name}.{pname}", 0, list(item.idxs), list(item.root_idxs)))
        return out

    def consumer_params(self, root: str) -> list[tuple[str, int, list[int], list[int]]]:
        """Weight slices that *read* the group's channels: the input side of its Conv/Linear consumers.

        Returns ``(weight_name, dim, idxs_in_param, root_idxs)``; ``dim`` is the weight's input
        dimension (1 for Linear and Conv). A consumer that reads a channel through a flatten has
        several input indices per root channel. Transposed and grouped convolutions are left out (their
        input channels are not a weight dimension of their own).
        """
        self.group(root)
        out: list[tuple[str, int, list[int], list[int]]] = []
        tp_group = self._tp_groups.get(root)
        for item in tp_group.items if tp_group is not None else ():
            node = item.dep.target
            module = node.module
            if not self.dg.is_in_channel_pruning_fn(item.dep.handler) or not isinstance(module, _LAYER_TYPES):
                continue
            if isinstance(module, nn.modules.conv._ConvNd) and (module.transposed or module.groups != 1):
                continue
            out.append((f"{self._node_name(node)}.weight", 1, list(item.idxs), list(item.root_idxs)))
        return out

    # ------------------------------------------------------------------ application
    def _check_fresh(self) -> None:
        if self._stale:
            raise RuntimeError("this DependencyAnalyzer is stale: the model was pruned; build a new one")

    def actions(self, plan: PruningPlan) -> list[list[Action]]:
        """Expand each group removal into concrete per-layer actions (on the unmodified graph)."""
        self._check_fresh()
        per_group: list[list[Action]] = []
        for removal in plan.groups:
            if not removal.removed:
                continue
            group = self.group(removal.root)
            if removal.size != group.size:
                raise CheckpointError(
                    f"group {removal.root}: the plan expects {removal.size} channels, the model has {group.size}; "
                    "the plan was made for another model or another pruning state"
                )
            per_group.append(expand_group(self.dg, self._tp_groups[removal.root], removal.removed, self._node_name))
        return per_group

    def apply(self, plan: PruningPlan, *, track_indices: bool = True) -> ApplyResult:
        """Prune the model in place according to ``plan`` (numbering of the current model).

        With ``track_indices`` every changed tensor's surviving flat indices are returned (for
        optimizer-state slicing) and the pruned values are checked against the originals. The
        analyzer is stale afterwards.
        """
        actions = merge_actions(self.actions(plan))
        result = apply_actions(self.model, actions, removed=plan.removed_channels, track_indices=track_indices)
        self._stale = True
        return result

    # ------------------------------------------------------------------ reading
    def summary(self) -> str:
        lines = [f"{len(self.groups)} groups, {len(self.prunable_groups)} prunable, "
                 f"{sum(g.size for g in self.prunable_groups)} prunable channels"]
        for g in self.groups:
            state = f"blocked: {g.blocked}" if g.blocked else f"{len(g.consumers)} consumers"
            lines.append(f"  {g.root:<40} {g.size:>6}  {state}")
        return "\n".join(lines)
