"""Compress a trained model: measure, decide, remove through coupled layers, verify.

``compress(model, calib_loader)`` never modifies ``model``: it prunes a copy and returns both, the
plan (in the original numbering, composed onto an earlier plan when the model was compressed before),
the statistics and the verification figures. With a lossless criterion (``dead`` at eps 0) any output
difference above ``tolerance`` of the output scale on the calibration samples, and for any criterion a
pruned model that no longer runs, starts a search for the groups responsible (:mod:`.culprits`): they
are blocked, with the reason in the group table and the report, and the rest is compressed; only when
nothing can be kept does compression fail. The report of a compression is built by :mod:`exporters.report`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from .activity import ActivityStats, batch_input, collect_activity
from .criteria import Criterion, parse_criterion
from .culprits import find_culprits
from .defaults import ANALYZER_TIME_BUDGET
from .errors import DataError, VerificationError
from .graph import DependencyAnalyzer
from .graph.apply import apply_actions, merge_actions
from .graph.tp_compat import version as torch_pruning_version
from .inputs import KeywordInputs, ModelInputs, concat_inputs
from .model_outputs import compare_outputs, run_model
from .plan import PruningPlan

log = logging.getLogger(__name__)

__all__ = ["compress", "rewidth", "verify_deferred", "calibration_inputs", "CompressResult", "group_table",
           "HELDOUT_SKIPPED"]

#: The note a verification carries when no sample was left for the held-out check.
HELDOUT_SKIPPED = ("no held-out samples were left: the outputs were checked on the calibration samples only, where "
                   "removing channels dead on them is exact by construction; keep samples back (--calib-samples "
                   "below the size of the data) to check inputs the decision did not see")


@dataclass
class CompressResult:
    """The pruned model and everything needed to save, report and export it.

    ``groups`` has one entry per coupling group (``root``, ``before``, ``after``, ``removed``,
    ``members`` and, for a blocked group, ``blocked``); ``options`` the decision options (``ignore``,
    ``min_channels``, ``round_to``, ``tolerance``); ``verification`` the parity on the calibration
    and held-out samples (see :func:`compress`).
    """

    model: nn.Module
    dense: nn.Module
    plan: PruningPlan
    stats: ActivityStats
    criterion: Criterion
    verification: dict[str, Any]
    groups: list[dict[str, Any]]
    options: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    analyzer_summary: str = ""
    example_inputs: ModelInputs | None = None
    calib_inputs: ModelInputs | None = None
    heldout_inputs: ModelInputs | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def neurons_before(self) -> int:
        """Channels of every coupling group that holds neurons, before removal."""
        return sum(g["before"] for g in self.groups if g.get("neurons"))

    @property
    def neurons_after(self) -> int:
        return sum(g["after"] for g in self.groups if g.get("neurons"))

    @property
    def removed(self) -> int:
        """Channels this compression removed (the plan may also hold an earlier compression's)."""
        return sum(len(g["removed"]) for g in self.groups)

    @property
    def prunable_neurons(self) -> int:
        return sum(g["before"] for g in self.groups if g.get("neurons") and not g.get("blocked"))


def _stack_inputs(batches: Iterable[Any], limit: int | None = None) -> ModelInputs:
    xs: list[ModelInputs] = []
    n = 0
    for batch in batches:
        x = batch_input(batch)
        xs.append(x)
        n += x.shape[0]
        if limit is not None and n >= limit:
            break
    if not xs:
        raise DataError("the data set is empty: no samples to measure or verify on")
    out = concat_inputs(xs)
    return out[:limit] if limit is not None else out


def compress(
    model: nn.Module,
    calib_loader: Iterable[Any],
    *,
    criterion: str | Criterion = "dead",
    heldout: Iterable[Any] | ModelInputs | None = None,
    ignore: Sequence[str] = (),
    min_channels: int = 1,
    round_to: int = 1,
    tolerance: float = 1e-4,
    progress: bool = True,
    source: dict[str, Any] | None = None,
    analyzer_budget: float = ANALYZER_TIME_BUDGET,
) -> CompressResult:
    """Find the channels ``criterion`` marks removable at every consumer, remove them, verify.

    ``calib_loader`` yields tensors or (inputs, targets) batches used for decisions; ``heldout`` is a
    batch (or loader) never used for decisions, on which the pruned model is checked too;
    ``analyzer_budget``: seconds the analyzer may spend mapping groups (those left are blocked).
    """
    crit = parse_criterion(criterion)
    timings: dict[str, float] = {}
    dense = model
    was_training = dense.training
    dense.eval()
    calib_x = _stack_inputs(calib_loader)
    pruned = copy.deepcopy(dense)
    t0 = time.perf_counter()
    analyzer = DependencyAnalyzer(pruned, calib_x[:1].to(next(dense.parameters()).device), ignore=ignore,
                                  min_channels=min_channels, round_to=round_to, time_budget=analyzer_budget)
    timings["graph_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch_size = max(1, getattr(calib_loader, "batch_size", None) or 64)
    stats = collect_activity(pruned, [calib_x[i:i + batch_size] for i in range(0, calib_x.shape[0], batch_size)],
                             layers=analyzer.consumer_names or None, progress=progress, desc="calibration",
                             record_outputs=True, fields=crit.fields)
    timings["stats_s"] = time.perf_counter() - t0
    heldout_x = None if heldout is None else heldout if isinstance(heldout, (Tensor, KeywordInputs)) else \
        _stack_inputs(heldout)
    try:
        return _decide(dense, pruned, analyzer, stats, crit, calib_x, heldout_x, timings=timings, tolerance=tolerance,
                       options={"ignore": list(ignore), "min_channels": min_channels, "round_to": round_to,
                                "tolerance": tolerance, "analyzer_budget": analyzer_budget}, source=source)
    finally:
        dense.train(was_training)


def rewidth(result: CompressResult, round_to: int, *, verify: bool = True) -> CompressResult:
    """The same decision with another width rounding, from the statistics ``result`` already measured
    (no new pass over the data): a fresh copy of the dense model keeps extra dead channels so that every
    width is a multiple of ``round_to`` (a ``round_to`` above every width keeps them all: no removal).

    ``verify=False`` defers the parity check (a candidate that may not be kept: it keeps a superset of
    ``result``'s channels, which passed); :func:`verify_deferred` runs it on the one that is kept."""
    calib_x = calibration_inputs(result)
    pruned = copy.deepcopy(result.dense)
    t0 = time.perf_counter()
    opts = {**result.options, "round_to": int(round_to)}
    analyzer = DependencyAnalyzer(pruned, calib_x[:1].to(next(pruned.parameters()).device),
                                  ignore=opts["ignore"], min_channels=opts["min_channels"], round_to=opts["round_to"],
                                  time_budget=opts.get("analyzer_budget", ANALYZER_TIME_BUDGET))
    timings = {"graph_s": time.perf_counter() - t0, "stats_s": 0.0}
    return _decide(result.dense, pruned, analyzer, result.stats, result.criterion, calib_x,
                   result.heldout_inputs, timings=timings, tolerance=opts["tolerance"], options=opts,
                   source=result.source, verify=verify)


def calibration_inputs(result: CompressResult) -> ModelInputs:
    """The calibration inputs ``result`` was decided on (for :func:`rewidth` and the width policy)."""
    if result.calib_inputs is None:
        raise ValueError("this result has no calibration inputs (a CompressResult from compress() keeps them)")
    return result.calib_inputs


def verify_deferred(result: CompressResult) -> CompressResult:
    """Run the parity check :func:`rewidth` deferred (a no-op when it ran); raise
    :class:`VerificationError` when a lossless removal changed the outputs."""
    if not result.verification.get("deferred"):
        return result
    tolerance = result.verification["tolerance"]
    result.verification = _verify(result.dense, result.model, result.criterion, torch.cat(result.stats.outputs),
                                  calibration_inputs(result), result.heldout_inputs, tolerance)
    if result.criterion.lossless and not result.verification["passed"]:
        raise VerificationError(
            f"the widths rounded to {result.options['round_to']} changed the outputs by "
            f"{result.verification['calibration']['rel_diff']:.3g} of their scale; rerun with --round-to 1 and "
            "please report the model")
    return result


def _decide(dense: nn.Module, pruned: nn.Module, analyzer: DependencyAnalyzer, stats: ActivityStats, crit: Criterion,
            calib_x: ModelInputs, heldout_x: ModelInputs | None, *, timings: dict[str, float], tolerance: float,
            options: dict[str, Any], source: dict[str, Any] | None, verify: bool = True) -> CompressResult:
    """Decide on ``stats``, remove from ``pruned`` (a copy of ``dense``), verify (unless deferred), and
    package the result."""
    t0 = time.perf_counter()
    plan = analyzer.decide(stats, crit)
    actions = analyzer.actions(plan)
    roots = [g.root for g in plan.groups if g.removed]
    dense_out = torch.cat(stats.outputs)
    failure = None
    try:
        analyzer.apply(plan, track_indices=False)
        timings["decide_apply_s"] = time.perf_counter() - t0
        verification: dict[str, Any] = {"criterion": crit.spec(), "lossless": crit.lossless, "tolerance": tolerance,
                                        "deferred": True}
        if verify:
            verification = _verify(dense, pruned, crit, dense_out, calib_x, heldout_x, tolerance)
        if verify and crit.lossless and verification["calibration"]["rel_diff"] > tolerance:
            failure = f"the outputs changed by {verification['calibration']['rel_diff']:.3g} of their scale"
    except Exception as exc:  # noqa: BLE001 - a pruned model that no longer runs: find the groups responsible
        failure = f"the pruned model failed ({type(exc).__name__}: {str(exc).strip()[:200]})"
    blocked: dict[str, str] = {}
    if failure is not None:  # apply, verify, and keep what is safe
        log.info("%s; searching for the group removals responsible", failure)
        blocked = find_culprits(dense, roots, actions, calib_x, tolerance=tolerance if crit.lossless else None,
                                progress=log.info)
        kept = [g for g in plan.groups if g.root not in blocked]
        if not blocked or not any(g.removed for g in kept):
            raise VerificationError(_nothing_kept_message(failure, blocked))
        plan = PruningPlan(groups=kept, criterion=plan.criterion)
        pruned = copy.deepcopy(dense)
        apply_actions(pruned, merge_actions([a for r, a in zip(roots, actions, strict=True) if r not in blocked]),
                      removed=plan.removed_channels, track_indices=False)
        timings["decide_apply_s"] = time.perf_counter() - t0
        verification = _verify(dense, pruned, crit, dense_out, calib_x, heldout_x, tolerance)
        if crit.lossless and verification["calibration"]["rel_diff"] > tolerance:  # checked on fewer samples
            raise VerificationError(
                f"lossless removal failed ({failure}); with {', '.join(blocked)} blocked the rest still changes the "
                f"outputs on the calibration samples by {verification['calibration']['rel_diff']:.3g} of their scale. "
                "Rerun with --ignore for the layers named, and please report the model")
        for root, reason in blocked.items():
            log.warning("blocked group %s: %s", root, reason)
    timings["analyzer_s"] = timings["graph_s"] + timings["decide_apply_s"]
    groups = group_table(analyzer, plan, blocked)
    plan = _final_plan(dense, pruned, plan, crit, calib_x, source)
    return CompressResult(
        model=pruned, dense=dense, plan=plan, stats=stats, criterion=crit, verification=verification,
        groups=groups, options=options, source=dict(source or {}), analyzer_summary=analyzer.summary(),
        example_inputs=calib_x[:1], calib_inputs=calib_x, heldout_inputs=heldout_x, timings=timings,
    )


def _verify(dense: nn.Module, pruned: nn.Module, crit: Criterion, dense_calib_out: Tensor, calib_x: ModelInputs,
            heldout_x: ModelInputs | None, tolerance: float) -> dict[str, Any]:
    """Parity on the calibration samples (the decision saw them: a difference is a bug for a lossless
    criterion) and on held-out samples (a channel dead on the calibration set may fire there)."""
    verification: dict[str, Any] = {"criterion": crit.spec(), "lossless": crit.lossless, "tolerance": tolerance}
    verification["calibration"] = compare_outputs(dense_calib_out, run_model(pruned, calib_x))
    if heldout_x is not None and heldout_x.shape[0]:
        verification["heldout"] = compare_outputs(run_model(dense, heldout_x), run_model(pruned, heldout_x))
    else:
        verification["heldout_skipped"] = HELDOUT_SKIPPED
    checks = [v for v in verification.values() if isinstance(v, dict)]
    verification["max_rel_diff"] = max(v["rel_diff"] for v in checks)
    verification["passed"] = (verification["calibration"]["rel_diff"] <= tolerance) if crit.lossless else None
    if crit.lossless and "heldout" in verification and verification["heldout"]["rel_diff"] > tolerance:
        log.warning("held-out outputs differ by %.3g of the output scale: some channels dead on the %d "
                    "calibration samples are active on held-out data; use more --calib-samples",
                    verification["heldout"]["rel_diff"], calib_x.shape[0])
    return verification


def _final_plan(dense: nn.Module, pruned: nn.Module, plan: PruningPlan, crit: Criterion, calib_x: ModelInputs,
                source: dict[str, Any] | None) -> PruningPlan:
    """The plan to save: composed onto an earlier plan (original numbering), with spec, shape, versions."""
    prior = getattr(dense, "demp_plan", None)
    if isinstance(prior, PruningPlan):  # the model was compressed before: one plan, original numbering
        plan = prior.compose(plan)
        pruned.demp_plan = plan  # type: ignore[assignment]  # demp's attribute on the module
    plan.criterion = crit.to_dict()
    plan.input_shape = list(calib_x.shape[1:]) if isinstance(calib_x, Tensor) else None  # keyword inputs: none
    spec = getattr(dense, "demp_spec", None)
    if spec is not None:
        plan.model = spec.to_dict()
        pruned.demp_spec = spec
    plan.source = dict(source or {})
    plan.versions = {"demp": __version__, "torch": torch.__version__, "torch_pruning": torch_pruning_version()}
    return plan


def group_table(analyzer: DependencyAnalyzer, plan: PruningPlan,
                blocked: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One entry per coupling group: channels before/after, removed indices, members, blocked reason
    (the analyzer's, or ``blocked``'s: groups whose removal broke the model), and whether its channels
    count as neurons (read by some Conv/Linear, not the model's outputs)."""
    removals = {g.root: g for g in plan.groups}
    neuron_roots = {g.root for g in analyzer.neuron_groups}
    blocked = blocked or {}
    out = []
    for g in analyzer.groups:
        r = removals.get(g.root)
        entry: dict[str, Any] = {"root": g.root, "before": g.size, "after": r.after if r else g.size,
                                 "removed": r.removed if r else [], "members": g.members,
                                 "neurons": g.root in neuron_roots}
        reason = g.blocked or blocked.get(g.root)
        if reason:
            entry["blocked"] = reason
        out.append(entry)
    return out


def _nothing_kept_message(failure: str, blocked: dict[str, str]) -> str:
    """Why compression kept nothing: every group whose removal breaks the model, with its reason."""
    if not blocked:
        return (f"lossless removal failed ({failure}) and no single group or combination of groups reproduces it on "
                f"the first calibration samples; rerun with --ignore LAYER for the layers named in the error, and "
                "please report the model")
    lines = "; ".join(f"{root}: {reason}" for root, reason in blocked.items())
    return (f"no removal could be kept: {failure}, and every group with dead channels breaks the model when "
            f"removed ({lines}). Rerun with --ignore {next(iter(blocked))} (and the others named) to keep those "
            "layers whole")
