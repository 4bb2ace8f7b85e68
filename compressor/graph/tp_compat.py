"""Every place demp reaches into torch-pruning's internals, each scoped and checked.

torch-pruning (pinned to ``torch-pruning>=1.6,<1.7``, the releases in :data:`VERIFIED_VERSIONS`) is
used through its public ``DependencyGraph`` API, plus three internal behaviours demp must change or
guard while it works; each lives here, is undone on exit, and has a test (``tests/test_tp_compat.py``):

1. :func:`bounded_index_mappings` — torch-pruning's ``*IndexMapping.__call__`` builds index lists;
   chained Flatten / reshape / split mappings (Swin's patch merging, MaxViT's window partitions)
   multiply them until memory runs out. Inside the context every mapping charges an
   :class:`IndexBudget` and raises :class:`IndexExplosion` instead. The context also makes
   ``index_mapping.update_index_mapping`` a no-op: ``get_pruning_group`` recomputes every concat /
   split / flatten mapping of the whole graph on each call, although the graph does not change while
   groups are expanded (``build_dependency`` computed them), which makes group enumeration quadratic
   in the number of groups (DenseNet). It also bounds one group's growth: torch-pruning re-adds a
   layer whenever it arrives with another index list, and a partial residual
   (``cat([x[:, :c] + shortcut, x[:, c:]])``, ReXNet) makes the lists shift forever, each addition
   scanning the whole group (quadratic: 12,000 items after 23 s, still growing). Past
   :data:`MAX_GROUP_ITEMS` items, or past the analyzer's deadline (:class:`IndexBudget`), adding
   raises :class:`IndexExplosion` / :class:`AnalyzerTimeout` and the analyzer blocks the group(s).
2. :func:`pruning_dim` — torch-pruning's pruning functions are shared singletons whose
   ``pruning_dim`` attribute selects the dimension they cut; torch-pruning sets it before each call
   and never restores it. demp sets it for one call and restores the previous value.
3. :func:`trace_failure` — names the construct torch-pruning failed on, from the name of its
   innermost ``update_*_index_mapping`` frame.
4. :func:`channel_padding` — torch-pruning treats ``F.pad`` as element-wise, also when it pads the
   channel dimension (the option-A shortcut of the CIFAR ResNets); this reads the pad from the autograd
   node so the analyzer can block such groups.

The patches of (1) replace class and module attributes, which every thread of the process sees while
the context is open; a process-wide lock keeps two contexts from interleaving.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch_pruning as tp
from torch_pruning.dependency import group as _group
from torch_pruning.dependency import index_mapping as _index_mapping

from ..errors import DempError

__all__ = ["VERIFIED_VERSIONS", "version", "check_version", "IndexBudget", "IndexExplosion", "AnalyzerTimeout",
           "bounded_index_mappings", "pruning_dim", "trace_failure", "failed_construct", "MAX_MAPPED_INDICES",
           "MAX_GROUP_INDICES", "MAX_GROUP_ITEMS"]

#: torch-pruning releases (major.minor) whose internals this module was checked against.
VERIFIED_VERSIONS = ("1.6",)
MAX_MAPPED_INDICES = 100_000  # one mapping's output (VGG-16's flatten at 224 px: 25,088)
MAX_GROUP_INDICES = 300_000  # all mappings while expanding one group
MAX_GROUP_ITEMS = 3_000  # layer entries of one group (a ViT-L residual stream has about 150; ReXNet diverges)

_LOCK = threading.RLock()


def _mapping_classes() -> list[type]:
    return [c for n, c in vars(_index_mapping).items() if isinstance(c, type) and n.endswith("IndexMapping")]


def version() -> str:
    """The installed torch-pruning version (recorded in every plan)."""
    return str(getattr(tp, "__version__", "unknown"))


def check_version() -> None:
    """Refuse a torch-pruning whose internals differ from what the patches here expect."""
    installed = version()
    major_minor = ".".join(installed.split(".")[:2])
    missing = [name for name, ok in (
        ("index_mapping.update_index_mapping", callable(getattr(_index_mapping, "update_index_mapping", None))),
        ("index_mapping.*IndexMapping classes", bool(_mapping_classes())),
        ("DependencyGraph.get_pruning_group", hasattr(tp.DependencyGraph, "get_pruning_group")),
        ("dependency.group.Group.add_dep", callable(getattr(_group.Group, "add_dep", None))),
    ) if not ok]
    if missing or major_minor not in VERIFIED_VERSIONS:
        raise DempError(
            f"torch-pruning {installed} is not supported (demp is verified with {', '.join(VERIFIED_VERSIONS)}"
            + (f"; missing internals: {', '.join(missing)}" if missing else "")
            + "); install a supported release: pip install 'torch-pruning>=1.6,<1.7'"
        )


class IndexExplosion(Exception):
    """An index mapping produced more indices than the budget allows (the group is blocked)."""


class AnalyzerTimeout(Exception):
    """The analyzer's time budget ran out while a group was expanded (this and the remaining groups are blocked)."""


class IndexBudget:
    """Counts the indices torch-pruning's index mappings produce and the items one group gains while it is
    expanded; ``deadline`` (a ``time.perf_counter()`` value, or None) bounds the whole enumeration."""

    def __init__(self, deadline: float | None = None) -> None:
        self.used = 0
        self.items = 0
        self.deadline = deadline

    def reset(self) -> None:
        self.used = 0
        self.items = 0

    def charge(self, n: int) -> None:
        self.used += n
        if n > MAX_MAPPED_INDICES or self.used > MAX_GROUP_INDICES:
            raise IndexExplosion(f"a mapping produced {n:,} indices, {self.used:,} for the group so far")
        self._check_time()

    def charge_item(self) -> None:
        self.items += 1
        if self.items > MAX_GROUP_ITEMS:
            raise IndexExplosion(f"the group grew past {MAX_GROUP_ITEMS:,} layer entries without converging")
        self._check_time()

    def _check_time(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise AnalyzerTimeout("the analyzer's time budget ran out")


def _bounded(original: Callable[..., Any], budget: IndexBudget) -> Callable[..., Any]:
    def call(self: Any, idxs: Any) -> Any:
        if getattr(self, "_stride", None) and not getattr(self, "reverse", False):
            budget.charge(len(idxs) * max(int(self._stride), 1))  # before building the list
        result = original(self, idxs)
        budget.charge(len(result))
        return result

    return call


@contextmanager
def bounded_index_mappings(budget: IndexBudget) -> Iterator[IndexBudget]:
    """Index mappings charge ``budget`` (raising :class:`IndexExplosion`), and the whole-graph mapping
    update of ``get_pruning_group`` is skipped, while the context is open (see the module docstring)."""
    with _LOCK:
        classes = _mapping_classes()
        originals = {c: c.__dict__["__call__"] for c in classes if "__call__" in c.__dict__}
        update = _index_mapping.update_index_mapping
        add_dep = _group.Group.__dict__["add_dep"]

        def counted_add_dep(self: Any, dep: Any, idxs: Any) -> Any:
            budget.charge_item()
            return add_dep(self, dep, idxs)

        try:
            for c, original in originals.items():
                c.__call__ = _bounded(original, budget)  # type: ignore[method-assign]  # patching torch_pruning
            _index_mapping.update_index_mapping = lambda graph: None
            _group.Group.add_dep = counted_add_dep
            yield budget
        finally:
            _group.Group.add_dep = add_dep
            _index_mapping.update_index_mapping = update
            for c, original in originals.items():
                c.__call__ = original  # type: ignore[method-assign]


@contextmanager
def pruning_dim(handler: Any, dim: int) -> Iterator[Any]:
    """Set the shared pruning function's ``pruning_dim`` for one call; restore the previous value."""
    pruner = handler.__self__
    previous = getattr(pruner, "pruning_dim", None)
    pruner.pruning_dim = dim
    try:
        yield handler
    finally:
        pruner.pruning_dim = previous


_CONSTRUCTS = {
    "update_reshape_index_mapping": "a reshape/view that regroups channels (e.g. a channel shuffle)",
    "update_concat_index_mapping": "a torch.cat of inputs whose channel counts cannot be inferred (e.g. slices "
                                   "x[:, :c] concatenated, as in DPN's dual paths)",
    "update_split_index_mapping": "a torch.split/chunk over channels",
    "update_unbind_index_mapping": "a torch.unbind over channels",
    "update_slice_index_mapping": "a slice over channels",
    "update_expand_index_mapping": "an expand over channels",
    "update_flatten_index_mapping": "a flatten feeding a Linear layer",
}


#: The index mappings torch-pruning applies while expanding a group, by class, in words.
_MAPPINGS = {
    "_SplitIndexMapping": "a torch.split/chunk over channels",
    "_ConcatIndexMapping": "a torch.cat over channels",
    "_SliceIndexMapping": "a slice over channels (x[:, a:b])",
    "_FlattenIndexMapping": "a flatten or reshape that merges channels with other dimensions",
    "_GQAIndexMapping": "grouped-query attention's key/value repetition",
}


def failed_construct(exc: BaseException) -> str:
    """The construct torch-pruning failed on, in words, from its innermost frame (a graph update
    function, or the index mapping whose ``__call__`` raised)."""
    tb, frames = exc.__traceback__, []
    while tb is not None:
        if "torch_pruning" in tb.tb_frame.f_code.co_filename:
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        name = frame.f_code.co_name
        if name in _CONSTRUCTS:
            return _CONSTRUCTS[name]
        owner = type(frame.f_locals.get("self")).__name__
        if owner in _MAPPINGS:
            return _MAPPINGS[owner]
    return f"an operation torch-pruning cannot follow (in its {frames[-1].f_code.co_name})" if frames else \
        "an operation torch-pruning cannot follow"


def trace_failure(exc: BaseException) -> str:
    """Name the construct torch-pruning failed on, from the innermost torch_pruning frame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "torch_pruning" in f.filename]
    if frames and frames[-1].name == "_trace" and not any(f.name in _CONSTRUCTS for f in frames):
        return (f"the model's forward pass failed on the example input ({type(exc).__name__}: {exc}); check "
                "that --input-size / the data's sample shape fits this architecture")
    construct = failed_construct(exc)
    near = _layers_near_failure(exc)
    where = f" after layer(s) {', '.join(near)}" if near else ""
    return (f"cannot build the dependency graph of this model: it contains {construct}{where}, which "
            f"torch-pruning cannot map channels through ({type(exc).__name__}: {exc}). The whole graph fails, so "
            "--ignore cannot help: this architecture is not supported for structural removal")


def _layers_near_failure(exc: BaseException, limit: int = 3) -> list[str]:
    """Names of the nearest layers feeding the graph node torch-pruning failed on (from its frame)."""
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        graph = frame.f_locals.get("graph") or frame.f_locals.get("self")
        node = frame.f_locals.get("cat_node") or frame.f_locals.get("node")
        names = getattr(graph, "_module2name", None)
        if node is None or not hasattr(node, "inputs") or not isinstance(names, dict):
            continue
        found: list[str] = []
        queue, seen = list(node.inputs), set()
        while queue and len(found) < limit:
            n = queue.pop(0)
            if id(n) in seen:
                continue
            seen.add(id(n))
            name = names.get(getattr(n, "module", None)) if not isinstance(getattr(n, "module", None), str) else None
            if name:
                found.append(name)
            else:
                queue.extend(getattr(n, "inputs", []))
        return found
    return []


def channel_padding(node: Any) -> str | None:
    """Why no channel may be removed across ``node`` when it is a constant pad of the channel dimension
    (``F.pad(x, (0, 0, 0, 0, p, p))``: option-A shortcuts of the CIFAR ResNets), else None.

    torch-pruning traces ``ConstantPadNd`` as an element-wise op and couples the channels before and after
    it one to one, although the pad shifts them by ``p`` and adds channels no layer produces: it joins two
    residual streams of different widths into one group with wrong index maps. The pad is read from the
    autograd node (``_saved_pad``, ordered from the last dimension backwards) and the tensor's rank from its
    input metadata (a 4-d NCHW tensor where that is unavailable); a spatial pad returns None.
    """
    grad_fn = getattr(node, "grad_fn", None)
    pad = getattr(grad_fn, "_saved_pad", None)
    if grad_fn is None or pad is None or "ConstantPad" not in type(grad_fn).__name__:
        return None
    try:
        rank = len(grad_fn._input_metadata[0].shape)
    except (AttributeError, IndexError, TypeError):  # pragma: no cover - another torch
        rank = 4
    before, after = (tuple(pad[2 * (rank - 2):2 * (rank - 2) + 2]) + (0, 0))[:2]
    if not before and not after:
        return None
    return (f"a zero-padding of the channel dimension (F.pad adding {before} + {after} channels, e.g. an option-A "
            "residual shortcut) ties these channels to a wider tensor at fixed offsets; torch-pruning maps channels "
            "through it one to one, so a removal would cut the wrong channels")
