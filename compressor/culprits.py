"""Find the group removals that break a model, so that compression keeps everything else.

A removal plan is a set of independent group removals (one per coupling group). When the pruned
model no longer runs (a ``torch.split`` with constant sizes, a ``groups=`` read from a buffer's shape
at construction time, a partial residual) or, for a lossless criterion, its outputs change, the
groups responsible are found by **bisection**: a subset of removals is applied to a fresh copy of the
dense model and checked on a few calibration samples; a failing subset is halved until single groups
remain. With ``c`` culprits among ``n`` groups that costs about ``2 c log2 n`` checks instead of ``n``
(a 200-group model with 3 bad groups: about 50). Failures that only appear in combination (each half
passes, the whole fails) fall back to adding groups one at a time, keeping those that still pass.

Each culprit comes with a reason a user can act on: the construct, in words, recognized from the
error (:func:`explain_failure`), and the module (the group's root). Compression blocks those groups,
records the reason in the report, and compresses the rest.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .graph.apply import Action, execute_actions, merge_actions
from .inputs import ModelInputs
from .model_outputs import compare_outputs, run_model

__all__ = ["find_culprits", "explain_failure", "CHECK_SAMPLES"]

#: Calibration samples each trial runs on (enough to see a shape error or an output change).
CHECK_SAMPLES = 16

#: Error-message patterns of the constructs that keep channel counts as Python constants, in words.
_CONSTRUCTS: tuple[tuple[str, str], ...] = (
    (r"split_sizes|split_with_sizes", "a torch.split with constant sizes (its sizes do not follow the pruned "
                                      "channels)"),
    (r"groups=(?!1,)\d+", "a convolution whose groups= is a constant (set from a channel count at construction "
                          "time, e.g. a blur pool's filter buffer)"),
    (r"shape '\[.*\]' is invalid for input|view size is not compatible|cannot reshape",
     "a view/reshape with constant channel sizes"),
    (r"weight should contain \d+ elements", "a weight-standardized convolution (ScaledStdConv2d, NF-Nets) whose "
                                           "per-channel gain is not pruned with its weight"),
    (r"normalized_shape", "a LayerNorm whose normalized_shape is a constant (e.g. gMLP's spatial gating unit): "
                          "its channels cannot follow a removal"),
    (r"must match the size of tensor|The size of tensor a", "an elementwise operation between channels pruned "
                                                           "differently (e.g. a partial residual or a "
                                                           "constant-sized buffer)"),
    (r"expected input.*to have \d+ channels|size mismatch|mat1 and mat2 shapes",
     "a layer whose input no longer matches the pruned channels (its size is a constant, or a split/chunk or "
     "partial channel operation was mapped wrongly)"),
)


def explain_failure(exc: BaseException) -> str:
    """The construct behind a forward-pass error, in words, with the error's first line."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for pattern, construct in _CONSTRUCTS:
        if re.search(pattern, message):
            return f"{construct}: the pruned model fails ({type(exc).__name__}: {message[:200]})"
    return f"the pruned model fails ({type(exc).__name__}: {message[:200]})"


def _check(dense: nn.Module, actions: list[Action], inputs: ModelInputs, reference: Tensor,
           tolerance: float | None) -> str | None:
    """Apply ``actions`` to a fresh copy of ``dense``; the reason it fails, or None."""
    trial = copy.deepcopy(dense)
    try:
        with torch.no_grad():
            execute_actions(trial, actions)
        out = run_model(trial, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the pruned model is the finding
        return explain_failure(exc)
    if tolerance is None:
        return None
    diff = compare_outputs(reference, out)["rel_diff"] if out.shape == reference.shape else float("inf")
    if diff > tolerance:
        return (f"removing these channels changes the outputs (relative difference {diff:.3g} > {tolerance:g}): "
                "an operation between this layer and its readers mixes channels in a way the analyzer does not "
                "model (e.g. attention, or a channel-wise constant)")
    return None


def find_culprits(dense: nn.Module, roots: Sequence[str], actions: Sequence[list[Action]], inputs: ModelInputs, *,
                  tolerance: float | None, progress: Callable[[str], None] | None = None) -> dict[str, str]:
    """The groups (by root) whose removal breaks ``dense``, each with the reason.

    ``actions[i]`` removes group ``roots[i]`` (expanded on the unmodified graph, so any subset can be
    applied to a fresh copy); ``tolerance``: the largest relative output change allowed (None: only a
    failing forward pass counts, for lossy criteria). After the culprits are blocked the rest is
    checked together once more; groups that fail only in combination are found one at a time.
    """
    inputs = inputs[:CHECK_SAMPLES]
    reference = run_model(dense, inputs)
    by_root = dict(zip(roots, actions, strict=True))
    checks = 0

    def check(subset: Sequence[str]) -> str | None:
        nonlocal checks
        checks += 1
        return _check(dense, merge_actions([by_root[r] for r in subset]), inputs, reference, tolerance)

    def search(subset: Sequence[str], reason: str | None) -> dict[str, str]:
        if reason is None:
            return {}
        if len(subset) == 1:
            return {subset[0]: reason}
        half = len(subset) // 2
        left, right = subset[:half], subset[half:]
        return {**search(left, check(left)), **search(right, check(right))}

    found = search(list(roots), check(list(roots)))
    rest = [r for r in roots if r not in found]
    if rest and check(rest) is not None:  # failures of a combination only: keep groups one at a time
        kept: list[str] = []
        for root in rest:
            reason = check([*kept, root])
            if reason is None:
                kept.append(root)
            else:
                found[root] = f"{reason} (together with other removals)"
    if progress is not None:
        progress(f"culprit search: {len(found)} of {len(roots)} group removals break the model ({checks} checks)")
    return found
