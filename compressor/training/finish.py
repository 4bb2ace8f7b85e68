"""The end of a training run: the final removal, the final evaluation and the files a run leaves.

:func:`finish_run` lets every method finish (the final removal, checked against the model just before
it on the same samples), evaluates the compact model, writes the ``final`` record, and on rank 0
saves the compact model like ``demp compress`` does (``OUT/model/plan.json`` +
``weights.safetensors``), the plots and ``train_summary.json`` (schema :data:`SUMMARY_SCHEMA`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..counting import neuron_sparsity
from ..data import DataBundle
from ..fileio import atomic_write_json
from ..model_outputs import compare_outputs, run_model
from ..models import ModelSpec
from ..plan import PruningPlan
from ..pruned import save_pruned
from . import distributed as dist_util
from .config import RecipeConfig
from .evaluation import evaluate, sample_inputs
from .methods import RemovalEvent
from .metrics import METRICS_FILE, TENSORBOARD_DIR, read_metrics
from .plots import make_plots
from .records import event_record, live_fields, method_fields
from .run import Run
from .run_checkpoints import CHECKPOINT_DIR
from .splits import TrainingSplits

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "finish_run", "RECIPE_FILE", "MODEL_DIR", "PLOTS_DIR", "SUMMARY_FILE", "SUMMARY_SCHEMA",
           "OUTPUTS"]

RECIPE_FILE = "recipe.yaml"
MODEL_DIR = "model"
PLOTS_DIR = "plots"
SUMMARY_FILE = "train_summary.json"
#: Everything a run writes into its output folder (``--overwrite`` replaces these and nothing else).
OUTPUTS = (RECIPE_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_DIR, PLOTS_DIR, TENSORBOARD_DIR, MODEL_DIR)
#: Version 2: MACs are counted by :func:`compressor.counting.count_macs` (fvcore, as in ``report.json``;
#: version 1, unlabeled, counted Conv/Linear layers only), the methods describe themselves, and
#: ``neurons_after`` / ``neuron_sparsity`` count the neurons left in the model (the removed ratio, as
#: ``report.json`` does; version 1 counted the live ones), with the live count in ``live_after``.
SUMMARY_SCHEMA = "demp.train-summary/2"
PARITY_SAMPLES = 256


@dataclass
class TrainResult:
    """What a finished run returns."""

    model: nn.Module  # the compact trained model (on CPU, eval mode)
    plan: PruningPlan  # composed removals in the original numbering, with the model spec
    recipe: RecipeConfig
    out_dir: Path
    summary: dict[str, Any]  # the ``final`` metrics record (accuracy, neurons/params/MACs before & after)
    history: list[dict[str, Any]] = field(default_factory=list)  # the ``epoch`` records
    compact_dir: Path | None = None  # OUT/model when the compact model was saved
    spec: ModelSpec | None = None
    data: DataBundle | None = None
    methods: list[dict[str, Any]] = field(default_factory=list)  # every method's describe()
    splits: TrainingSplits | None = None  # the run's splits: unaugmented training samples for the int8 check


def _final_removal(run: Run, after_removal: Callable[[Run, list[RemovalEvent]], None]) -> dict[str, Any] | None:
    """Every method's ``finalize`` (the final removal), with the model's outputs compared on the same
    samples just before and after it; None for plain training."""
    if not run.methods:
        return None
    bundle = run.bundle
    parity_x = sample_inputs(bundle.test if bundle.test is not None else bundle.train, PARITY_SAMPLES)
    before = run_model(run.model, parity_x, batch_size=128)
    events = [e for e in (m.finalize(run.optimizer) for m in run.methods) if e is not None]
    for event in events:
        run.metrics.write(event_record(event))
    if events and run.ctx.enabled:
        after_removal(run, events)
    return compare_outputs(before, run_model(run.model, parity_x, batch_size=128)) if parity_x.numel() else None


def _groups(run: Run, plan: PruningPlan) -> list[dict[str, Any]]:
    """Channels per neuron group before and after (groups without removals included)."""
    groups = [{"root": g.root, "before": g.size, "after": g.after, "removed": list(g.removed)} for g in plan.groups]
    owner = run.owner
    if owner is not None:
        in_plan = {g.root for g in plan.groups}
        groups += [{"root": root, "before": n, "after": n, "removed": []}
                   for root, n in owner.present_neurons().items() if root not in in_plan]
    return groups


def final_record(run: Run, parity: dict[str, Any] | None, started: float) -> dict[str, Any]:
    """The ``final`` record: the compact model's accuracy and its size before and after."""
    t = run.recipe.train
    run.model.eval()
    test = (evaluate(run.model, run.test_loader, run.device, bf16=t.bf16) if run.test_loader is not None
            else (None, None))
    val = evaluate(run.model, run.val_loader, run.device, bf16=t.bf16) if run.val_loader is not None else (None, None)
    plan = run.plan()
    live = live_fields(run)
    total = live["neurons_total"]
    present = sum(run.owner.present_neurons().values()) if run.owner is not None else None
    record = {
        "kind": "final", "schema": SUMMARY_SCHEMA, "step": run.total_steps, "epochs": t.epochs,
        "method": run.recipe.method, "val_loss": val[0], "val_accuracy": val[1], "test_loss": test[0],
        "test_accuracy": test[1], "neurons_before": total, "neurons_after": present, "live_after": live["live_total"],
        "neuron_sparsity": neuron_sparsity(total, present),
        "params_before": run.dense["params"], "params_after": run.params(),
        "macs_before": run.dense["macs"], "macs_after": run.macs(), "mac_counter": run.dense.get("mac_counter"),
        "removed_channels": plan.removed_channels, "plan_hash": plan.removal_hash(),
        "final_removal_parity": parity, "groups": _groups(run, plan),
        "methods": [{**m.describe(), "owns_plan": m.owns_plan} for m in run.methods],
        "train_seconds": time.perf_counter() - started, **run.cost.summary(run.ctx.world_size),
    }
    return method_fields(run, record, run.total_steps)


def finish_run(run: Run, out_dir: Path, *, started: float, save_model: bool, plots: bool,
               after_removal: Callable[[Run, list[RemovalEvent]], None]) -> TrainResult:
    """The final removal, evaluation and record; rank 0 writes the compact model, plots and summary."""
    parity = _final_removal(run, after_removal)
    final = final_record(run, parity, started)
    run.metrics.write(final)
    run.metrics.sync()
    plan = run.plan()
    _debug_state_hash(run, plan)
    run.model.to("cpu")
    result = TrainResult(model=run.model, plan=plan, recipe=run.recipe, out_dir=out_dir, summary=final,
                         history=list(run.history), compact_dir=out_dir / MODEL_DIR if save_model else None,
                         spec=run.spec, data=run.bundle, methods=final["methods"], splits=run.splits)
    if not run.ctx.is_main:  # rank 0 writes the compact model, plots and summary
        torch.distributed.barrier()
        return result
    if save_model:
        save_pruned(run.model, out_dir / MODEL_DIR, plan=plan, overwrite=True)
    if plots:
        try:
            make_plots(read_metrics(out_dir), out_dir / PLOTS_DIR)
        except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose a finished run
            log.warning("could not draw the training plots: %s", exc)
    atomic_write_json(out_dir / SUMMARY_FILE, {k: v for k, v in final.items() if k != "kind"})
    if run.ctx.enabled:
        torch.distributed.barrier()
    return result


def _debug_state_hash(run: Run, plan: PruningPlan) -> None:
    """With ``DEMP_DEBUG_STATE_HASH_DIR`` set, write ``rank<R>.json`` (final architecture and state hash).

    A test/debugging hook: comparing the files of all ranks proves they ended with the same model and
    the same method state (``methods``: per method, a SHA-256 of every ``state_dict()`` entry — the
    stripping masks, DNR's scores, the plans — without wall-clock fields; ``method_metrics``: each
    method's ``metrics()`` fields, e.g. ``stripped_weights``).
    """
    where = os.environ.get(dist_util.DEBUG_HASH_ENV)
    if not where:
        return
    ctx, model = run.ctx, run.model
    atomic_write_json(Path(where) / f"rank{ctx.rank}.json", {
        "rank": ctx.rank, "world_size": ctx.world_size, "state_hash": dist_util.state_hash(model),
        "plan_hash": plan.removal_hash(), "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "methods": dist_util.method_state_hashes(run.methods),
        "method_metrics": {m.name: {k: v for k, v in m.metrics(0).items()
                                    if v is None or isinstance(v, (bool, int, float, str))} for m in run.methods}})
