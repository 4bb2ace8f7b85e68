"""The shared end of ``demp compress`` and ``demp train``: MACs, ONNX export, parity, latency, report.

:func:`finalize` takes the dense and the pruned model plus real samples, and completes the report the
caller started with :func:`exporters.report.compress_report` or :func:`exporters.report.training_report`
(``source``, ``pruning``, part of ``model`` / ``parity``):

1. ``model``: parameters and MACs per sample, dense versus pruned, and a per-module table (``modules``);
2. ``parity``: PyTorch dense versus pruned (unless the caller already measured it);
3. ``export``: ``model.onnx`` from the pruned model, checked with onnxruntime on the calibration and
   held-out samples at several batch sizes (``parity.onnx_*``; a mismatch raises VerificationError);
4. ``latency``: dense versus pruned, interleaved, for the requested runtimes and batch sizes, with the
   latency ratio next to the MAC ratio (``latency_comparison``) and the ``environment``;
5. writes ``report.json`` (validated against ``demp.report/1``), ``report.md`` and the plots.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.counting import compare_macs, count_params, neuron_sparsity
from compressor.errors import DempError, OutputExistsError, UsageError
from compressor.fileio import jsonable
from compressor.model_outputs import compare_outputs, run_model
from compressor.pruned import INT8_ONNX_FILE, ONNX_FILE, REPORT_JSON, REPORT_MD

from .env import collect_environment
from .latency import DEFAULT_THREADS, QUICK_MAX_S, QUICK_MIN_S, BenchConfig, Variant, benchmark
from .onnx import DEFAULT_OPSET, export_onnx
from .ort import available_providers, check_parity
from .quantize import QuantizeConfig, int8_speedups, quantize_and_check
from .report import REPORT_SCHEMA, tool_section, validate_report, write_report
from .runtimes import Runtime, runtimes_named

log = logging.getLogger(__name__)

#: Samples of calibration / held-out data used for the ONNX parity check (enough to be meaningful,
#: few enough that ``demp compress`` stays quick on large inputs).
PARITY_SAMPLES = 256
MODULE_TABLE_DEPTH = 2


@dataclass(frozen=True)
class ExportOptions:
    """How :func:`finalize` writes ``model.onnx`` (see :func:`exporters.onnx.export_onnx`); the dense ONNX
    file made only for timing uses the same opset and exporter."""

    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    exporter: str = "auto"  # auto, dynamo or torchscript


@dataclass(frozen=True)
class BenchOptions:
    """What :func:`finalize` times, dense versus pruned: ``min_time_s`` per variant and batch size at least
    (at most :data:`QUICK_MAX_S` unless ``min_time_s`` is longer). With ``run=False`` nothing is timed;
    ``device`` and ``threads`` still describe the machine (the report's environment, the int8 check)."""

    batch_sizes: tuple[int, ...] = (1, 8)
    device: str = "cpu"
    runtimes: tuple[str, ...] = ("torch", "onnxruntime")
    threads: int | None = DEFAULT_THREADS
    min_time_s: float = QUICK_MIN_S
    min_iters: int = 10
    warmup: int = 2
    run: bool = True


def finalize(
    out_dir: str | os.PathLike, *, dense: nn.Module, pruned: nn.Module, calib_x: torch.Tensor,
    heldout_x: torch.Tensor | None, report: Mapping[str, Any], export: ExportOptions | None = ExportOptions(),
    bench: BenchOptions = BenchOptions(), quantize: QuantizeConfig | None = None,
    heldout_y: torch.Tensor | None = None, atol_rel: float = 1e-4, plots: bool = True, overwrite: bool = False,
) -> dict[str, Any]:
    """Complete ``report`` for the models in ``out_dir``, write the artefacts, return the report.

    ``calib_x`` / ``heldout_x`` are tensors of real samples (``heldout_x`` may be None). ``export``
    (None: no export) writes ``out_dir/model.onnx`` and checks it against ``pruned`` with onnxruntime
    (relative tolerance ``atol_rel``); ``bench`` says what is timed, dense versus pruned (the ONNX runtimes
    need the export). Existing ``model.onnx`` / report files are replaced only with ``overwrite``. The
    models are not modified; export and parity run on CPU copies. ``quantize`` adds ``model.int8.onnx``
    if it passes its check on ``heldout_x`` (labels ``heldout_y``), times it too, fills ``quantization``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(calib_x, torch.Tensor) or calib_x.dim() < 2 or calib_x.shape[0] < 1:
        raise UsageError("finalize needs calib_x: a tensor of at least one real sample, shaped (N, *input_shape)")
    if quantize is not None and export is None:
        raise UsageError("--quantize int8 quantizes the exported model.onnx; drop --no-export")
    if not overwrite:
        clash = [p for p in (out / ONNX_FILE, out / REPORT_JSON, out / REPORT_MD, out / INT8_ONNX_FILE) if p.exists()]
        if clash:
            raise OutputExistsError(f"{', '.join(map(str, clash))} already exist(s) in {out}; pass --overwrite to "
                                    "replace")
    samples = calib_x.detach().cpu()
    held = heldout_x.detach().cpu() if isinstance(heldout_x, torch.Tensor) and heldout_x.shape[0] else None
    parity_x = _parity_samples(samples, held)
    rep = _start(report)
    dense_cpu, pruned_cpu = _cpu_eval_copy(dense), _cpu_eval_copy(pruned)
    rep.update(_model_sections(rep, dense_cpu, pruned_cpu, samples[:1]))
    if "torch_max_abs_diff" not in rep["parity"]:  # unless the caller measured it already
        rep["parity"].update(_torch_parity(dense_cpu, pruned_cpu, parity_x))
    onnx_path = out / ONNX_FILE
    rep["export"] = None
    if export is not None:
        info = export_onnx(pruned_cpu, samples[:2], onnx_path, opset=export.opset, dynamic_batch=export.dynamic_batch,
                           metadata=_metadata(out, rep), exporter=export.exporter, overwrite=overwrite)
        rep["export"] = {**info.to_dict(), "path": ONNX_FILE}
        rep["parity"].update(check_parity(onnx_path, pruned_cpu, parity_x, atol_rel=atol_rel).to_dict())
    int8_path = None
    if quantize is not None:  # model.int8.onnx, only when it agrees with model.onnx on the held-out samples
        rep["quantization"] = quantize_and_check(onnx_path, out / INT8_ONNX_FILE, samples, held, heldout_y, quantize,
                                                 device=bench.device, overwrite=overwrite)
        int8_path = out / INT8_ONNX_FILE if rep["quantization"]["shipped"] else None
    if bench.run:  # dense versus pruned (and int8), interleaved
        rep.update(_bench(dense_cpu, pruned_cpu, onnx_path if export is not None else None, rep,
                          tuple(samples.shape[1:]), bench, export or ExportOptions(), int8_onnx=int8_path))
        if int8_path is not None:
            rep["quantization"]["latency"] = int8_speedups(rep["latency"], rep["latency_comparison"])
    else:
        rep["environment"] = collect_environment(threads=bench.threads)
    validate_report(rep)
    write_report(rep, out, plots=plots, overwrite=True)
    return json.loads(json.dumps(jsonable(rep), default=str))


def _start(report: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the caller's report with the schema, the tool section and empty measured sections."""
    rep: dict[str, Any] = copy.deepcopy(dict(report))
    rep["schema"] = REPORT_SCHEMA
    rep["tool"] = tool_section(rep.get("tool"))
    for key in ("source", "pruning", "parity"):
        rep.setdefault(key, {})
    rep["latency"] = []
    return rep


def _model_sections(rep: Mapping[str, Any], dense: nn.Module, pruned: nn.Module,
                    example: torch.Tensor) -> dict[str, Any]:
    """``model`` (parameters and MACs, dense versus pruned) and the per-module ``modules`` table.

    A MAC count that no counter can make is reported as unavailable, with the reason: a report
    figure never fails a compression.
    """
    try:
        macs = compare_macs(dense, pruned, example)
    except DempError as exc:
        log.warning("MACs are not in the report: %s", exc)
        model = {"params_before": count_params(dense), "params_after": count_params(pruned), "macs_before": None,
                 "macs_after": None, "mac_ratio": None, "mac_unavailable": str(exc)}
        return {"model": {**dict(rep.get("model") or {}), **model}, "modules": []}
    for warning in macs.dense.warnings + macs.pruned.warnings:
        log.warning("%s", warning)
    modules = [{"name": r.name, "macs_before": r.macs_before, "macs_after": r.macs_after,
                "params_before": r.params_before, "params_after": r.params_after}
               for r in macs.rows if r.name == "" or r.name.count(".") < MODULE_TABLE_DEPTH]
    return {"model": {**dict(rep.get("model") or {}), **macs.model_section()}, "modules": modules}


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model).cpu().eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _parity_samples(calib: torch.Tensor, heldout: torch.Tensor | None) -> list[torch.Tensor]:
    """Calibration and held-out samples, at most PARITY_SAMPLES of each."""
    parts = [calib[:PARITY_SAMPLES]]
    if heldout is not None:
        parts.append(heldout[:PARITY_SAMPLES])
    return parts


def _torch_parity(dense: nn.Module, pruned: nn.Module, batches: list[torch.Tensor]) -> dict[str, Any]:
    """PyTorch dense versus pruned on the parity samples (the report's ``torch_*`` keys)."""
    x = torch.cat(batches)
    cmp = compare_outputs(run_model(dense, x), run_model(pruned, x))
    return {"torch_max_abs_diff": cmp["max_abs_diff"], "torch_rel_diff": cmp["rel_diff"],
            "top1_agreement": cmp.get("top1_agreement"), "samples": cmp["samples"]}


def _metadata(out: Path, rep: Mapping[str, Any]) -> dict[str, str]:
    """ONNX metadata_props: plan hash, source sha256, neuron and (structural) weight sparsity."""
    meta: dict[str, str] = {}
    plan_file = out / "plan.json"
    if plan_file.is_file():
        try:
            meta["demp.plan_hash"] = str(json.loads(plan_file.read_text()).get("plan_hash", ""))
        except (OSError, json.JSONDecodeError):
            log.warning("could not read %s for the ONNX metadata", plan_file)
    source = rep.get("source") or {}
    if source.get("sha256"):
        meta["demp.source_sha256"] = str(source["sha256"])
    if source.get("arch"):
        meta["demp.arch"] = str(source["arch"])
    pruning = rep.get("pruning") or {}
    sparsity = neuron_sparsity(pruning.get("neurons_before"), pruning.get("neurons_after"))
    if sparsity is not None:
        meta["demp.neuron_sparsity"] = f"{sparsity:.6f}"
    model = rep.get("model") or {}
    if model.get("params_before"):
        meta["demp.weight_sparsity"] = f"{1 - model['params_after'] / model['params_before']:.6f}"
    if model.get("macs_before"):
        meta["demp.mac_ratio"] = f"{model['macs_after'] / model['macs_before']:.6f}"
    return meta


def _runnable(runtimes: tuple[Runtime, ...], has_onnx: bool, device: str) -> list[Runtime]:
    """The runtimes that can run here: those taking an ONNX file only when one was exported, and only
    when onnxruntime has the execution provider they need on ``device`` (else a warning, not an error)."""
    chosen = [r for r in runtimes if has_onnx or not r.takes_onnx]
    needed = {r.name: p for r in chosen if (p := r.needs_provider(device)) is not None}
    available = set(available_providers()) if needed else set()
    missing = {name: provider for name, provider in needed.items() if provider not in available}
    for name, provider in missing.items():
        log.warning("onnxruntime has no %s here; not timing %s on %s", provider, name, device)
    return [r for r in chosen if r.name not in missing]


def _bench(dense: nn.Module, pruned: nn.Module, onnx_path: Path | None, rep: Mapping[str, Any],
           input_shape: tuple[int, ...], options: BenchOptions, export: ExportOptions,
           int8_onnx: Path | None = None) -> dict[str, Any]:
    """Time dense versus pruned (and ``int8_onnx`` on the onnxruntime runtimes); returns the ``latency``,
    ``latency_comparison`` and ``environment`` sections."""
    dev = "cuda" if str(options.device).startswith("cuda") else "cpu"
    chosen = _runnable(runtimes_named(options.runtimes), onnx_path is not None, dev)
    if not chosen:
        return {"latency": [], "latency_comparison": [], "environment": collect_environment(threads=options.threads)}
    model_section = rep.get("model") or {}
    config = BenchConfig(batch_sizes=tuple(int(b) for b in options.batch_sizes), runtimes=tuple(r.name for r in chosen),
                         device=dev, threads=options.threads, warmup=options.warmup, min_iters=options.min_iters,
                         min_time_s=options.min_time_s, max_time_s=max(options.min_time_s, QUICK_MAX_S))
    with tempfile.TemporaryDirectory(prefix=".demp-bench-", dir=onnx_path.parent if onnx_path else None) as tmp:
        dense_onnx = None
        if any(r.takes_onnx for r in chosen):
            # The dense ONNX is only for timing: same exporter as the pruned file, not kept.
            used = (rep.get("export") or {}).get("exporter", export.exporter)
            dense_onnx = export_onnx(dense, torch.zeros((2, *input_shape)), Path(tmp) / "dense.onnx",
                                     opset=export.opset,
                                     exporter=used if used in ("dynamo", "torchscript") else export.exporter).path
        variants = [
            Variant("dense", dense, dense_onnx, model_section.get("macs_before")),
            Variant("pruned", pruned, str(onnx_path) if onnx_path else None, model_section.get("macs_after")),
        ]
        if int8_onnx is not None:  # no MACs: int8 arithmetic is not float arithmetic, so no efficiency figure
            variants.append(Variant("int8", None, str(int8_onnx), None))
        turns = (len(variants) + 1) * len(config.batch_sizes) * len(chosen)  # and the A/A copy of dense
        log.info("timing %s on %s (batch %s, %s thread(s)): up to %.0f s, or %d runs of each",
                 ", ".join(v.name for v in variants), ", ".join(config.runtimes),
                 ", ".join(map(str, config.batch_sizes)),
                 options.threads, turns * config.time_cap_s, config.min_iters)
        result = benchmark(variants, input_shape, config,
                           progress=lambda msg: log.info("timing %s", msg))
    data = result.to_dict()
    for entry in data["comparison"]:
        for key, value in list(entry.items()):
            if isinstance(value, float) and not math.isfinite(value):
                entry[key] = None
    return {"latency": data["latency"], "latency_comparison": data["comparison"], "environment": data["environment"],
            "latency_config": data["config"], "machine_load": data["machine_load"]}
