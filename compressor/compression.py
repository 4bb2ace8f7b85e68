"""Compress a trained model: measure, decide, remove through coupled layers, verify.

``compress(model, calib_loader)`` never modifies ``model``: it prunes a copy and returns both, the
plan, the statistics, the verification figures and the ``pruning``/``model``/``parity`` sections of
the report. With a lossless criterion (``dead`` at eps 0) any output difference above ``tolerance``
of the output scale is a bug, and the error names the group(s) responsible.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from .activity import ActivityStats, batch_input, collect_activity, output_tensor
from .criteria import Criterion, parse_criterion
from .errors import DataError, VerificationError
from .graph import DependencyAnalyzer
from .plan import PruningPlan

log = logging.getLogger(__name__)


@dataclass
class CompressResult:
    """The pruned model and everything needed to save, report and export it."""

    model: nn.Module
    dense: nn.Module
    plan: PruningPlan
    stats: ActivityStats
    verification: dict[str, Any]
    report: dict[str, Any]
    analyzer_summary: str = ""
    example_inputs: Tensor | None = None
    calib_inputs: Tensor | None = None
    heldout_inputs: Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compare_outputs(reference: Tensor, candidate: Tensor) -> dict[str, float]:
    """Max abs diff, diff relative to the reference's output scale (max |y|), top-1 agreement."""
    reference, candidate = reference.float(), candidate.float()
    diff = (reference - candidate).abs()
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    max_abs = float(diff.max()) if diff.numel() else 0.0
    result = {
        "max_abs_diff": max_abs,
        "rel_diff": max_abs / scale if scale > 0 else max_abs,
        "output_scale": scale,
        "samples": int(reference.shape[0]) if reference.dim() else 1,
    }
    if reference.dim() == 2 and reference.shape[1] > 1:
        result["top1_agreement"] = float((reference.argmax(1) == candidate.argmax(1)).float().mean())
    return result


@torch.no_grad()
def run_model(model: nn.Module, inputs: Tensor, batch_size: int = 64) -> Tensor:
    """Outputs of ``model`` (eval mode, restored after) on ``inputs``, batched, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        outs = [output_tensor(model(inputs[i:i + batch_size].to(device))).float().cpu()
                for i in range(0, inputs.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def _stack_inputs(batches: Iterable[Any], limit: int | None = None) -> Tensor:
    xs: list[Tensor] = []
    n = 0
    for batch in batches:
        x = batch_input(batch)
        xs.append(x)
        n += x.shape[0]
        if limit is not None and n >= limit:
            break
    if not xs:
        raise DataError("the data set is empty: no samples to measure or verify on")
    out = torch.cat(xs)
    return out[:limit] if limit is not None else out


def compress(
    model: nn.Module,
    calib_loader: Iterable[Any],
    *,
    criterion: str | Criterion = "dead",
    heldout: Iterable[Any] | Tensor | None = None,
    ignore: Sequence[str] = (),
    min_channels: int = 1,
    round_to: int = 1,
    tolerance: float = 1e-4,
    progress: bool = True,
    source: dict[str, Any] | None = None,
) -> CompressResult:
    """Find the channels ``criterion`` marks removable at every consumer, remove them, verify.

    ``calib_loader`` yields tensors or (inputs, targets) batches used for decisions; ``heldout`` is a
    batch (or loader) never used for decisions, on which the pruned model is checked too.
    """
    crit = parse_criterion(criterion)
    timings: dict[str, float] = {}
    dense = model
    was_training = dense.training
    dense.eval()
    calib_x = _stack_inputs(calib_loader)
    pruned = copy.deepcopy(dense)
    device = next(dense.parameters()).device

    t0 = time.perf_counter()
    analyzer = DependencyAnalyzer(pruned, calib_x[:1].to(device), ignore=ignore,
                                  min_channels=min_channels, round_to=round_to)
    timings["graph_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batch_size = max(1, getattr(calib_loader, "batch_size", None) or 64)
    stats = collect_activity(pruned, [calib_x[i:i + batch_size] for i in range(0, calib_x.shape[0], batch_size)],
                             layers=analyzer.consumer_names or None, progress=progress,
                             desc="calibration", record_outputs=True, fields=crit.fields)
    timings["stats_s"] = time.perf_counter() - t0
    dense_calib_out = torch.cat(stats.outputs)

    t0 = time.perf_counter()
    plan = analyzer.decide(stats, crit)
    groups_info = _group_report(analyzer, plan)
    actions = analyzer.actions(plan)
    analyzer.apply(plan, track_indices=False)
    timings["decide_apply_s"] = time.perf_counter() - t0
    timings["analyzer_s"] = timings["graph_s"] + timings["decide_apply_s"]

    # ---- verification: calibration samples and a held-out batch never used for decisions
    verification: dict[str, Any] = {"criterion": crit.spec(), "lossless": crit.lossless, "tolerance": tolerance}
    verification["calibration"] = compare_outputs(dense_calib_out, run_model(pruned, calib_x))
    heldout_x = None
    if heldout is not None:
        heldout_x = heldout if isinstance(heldout, Tensor) else _stack_inputs(heldout)
        verification["heldout"] = compare_outputs(run_model(dense, heldout_x), run_model(pruned, heldout_x))
    worst = max(v["rel_diff"] for k, v in verification.items() if isinstance(v, dict))
    verification["max_rel_diff"] = worst
    calib_diff = verification["calibration"]["rel_diff"]
    # Losslessness is guaranteed on the samples the decision saw: a difference there is a bug. On
    # held-out data a channel that never fired during calibration may fire: that is reported.
    verification["passed"] = (calib_diff <= tolerance) if crit.lossless else None
    if crit.lossless and heldout_x is not None and verification["heldout"]["rel_diff"] > tolerance:
        log.warning("held-out outputs differ by %.3g of the output scale: some channels dead on the %d "
                    "calibration samples are active on held-out data; use more --calib-samples",
                    verification["heldout"]["rel_diff"], calib_x.shape[0])
    if crit.lossless and calib_diff > tolerance:
        culprits = _find_culprits(dense, analyzer, plan, actions, calib_x, tolerance)
        raise VerificationError(
            f"lossless removal changed the outputs on the calibration samples (relative difference "
            f"{calib_diff:.3g} > {tolerance:g}); "
            f"group(s) responsible: {', '.join(culprits) or 'their combination'}. This is a bug in the "
            f"analyzer for this architecture: rerun with --ignore {culprits[0] if culprits else 'LAYER'} "
            "to skip it, and please report the model"
        )
    dense.train(was_training)

    params_before, params_after = count_params(dense), count_params(pruned)
    report = {
        "source": dict(source or {}),
        "pruning": {
            **crit.to_dict(),
            "criterion": crit.spec(),
            "calib_samples": int(calib_x.shape[0]),
            "heldout_samples": int(heldout_x.shape[0]) if heldout_x is not None else 0,
            "neurons_before": sum(g.size for g in analyzer.neuron_groups),
            "neurons_after": sum(g.size for g in analyzer.neuron_groups) - plan.removed_channels,
            "prunable_neurons": sum(g.size for g in analyzer.prunable_groups),
            "removed": plan.removed_channels,
            "ignore": list(ignore),
            "min_channels": min_channels,
            "round_to": round_to,
            "groups": groups_info,
            "timings": {k: round(v, 4) for k, v in timings.items()},
        },
        "model": {"params_before": params_before, "params_after": params_after},
        "parity": {
            "torch_max_abs_diff": max(v["max_abs_diff"] for v in verification.values() if isinstance(v, dict)),
            "torch_rel_diff": worst,
            "top1_agreement": min((v.get("top1_agreement", 1.0) for v in verification.values()
                                   if isinstance(v, dict)), default=1.0),
            "samples": int(calib_x.shape[0]) + (int(heldout_x.shape[0]) if heldout_x is not None else 0),
            "torch": verification,
        },
    }
    prior = getattr(dense, "demp_plan", None)
    if isinstance(prior, PruningPlan):  # the model was compressed before: one plan, original numbering
        plan = prior.compose(plan)
        pruned.demp_plan = plan
    plan.criterion = crit.to_dict()
    plan.input_shape = list(calib_x.shape[1:])
    spec = getattr(dense, "demp_spec", None)
    if spec is not None:
        plan.model = spec.to_dict()
        pruned.demp_spec = spec
    plan.source = dict(source or {})
    plan.versions = _versions()
    return CompressResult(
        model=pruned, dense=dense, plan=plan, stats=stats, verification=verification, report=report,
        analyzer_summary=analyzer.summary(), example_inputs=calib_x[:1], calib_inputs=calib_x,
        heldout_inputs=heldout_x, timings=timings,
    )


def _versions() -> dict[str, str]:
    import torch_pruning

    from . import __version__

    return {"demp": __version__, "torch": torch.__version__, "torch_pruning": torch_pruning.__version__}


def _group_report(analyzer: DependencyAnalyzer, plan: PruningPlan) -> list[dict[str, Any]]:
    removals = {g.root: g for g in plan.groups}
    out = []
    for g in analyzer.groups:
        r = removals.get(g.root)
        entry: dict[str, Any] = {"root": g.root, "before": g.size, "after": r.after if r else g.size,
                                 "removed": r.removed if r else [], "members": g.members}
        if g.blocked:
            entry["blocked"] = g.blocked
        out.append(entry)
    return out


def _find_culprits(dense: nn.Module, analyzer: DependencyAnalyzer, plan: PruningPlan,
                   actions: list[list[Any]], inputs: Tensor, tolerance: float) -> list[str]:
    """Apply each group's removal alone to a fresh copy and report the groups that change outputs."""
    inputs = inputs[:16]
    reference = run_model(dense, inputs)
    roots = [g.root for g in plan.groups if g.removed]
    culprits = []
    for root, acts in zip(roots, actions):
        trial = copy.deepcopy(dense)
        with torch.no_grad():
            DependencyAnalyzer.execute(trial, acts)
        if compare_outputs(reference, run_model(trial, inputs))["rel_diff"] > tolerance:
            culprits.append(root)
    return culprits
