"""The compression report ``report.json`` (schema ``demp.report/1``): built here from the result of a
compression or a training run, validated, and written with ``report.md`` and the plots
(:mod:`exporters.render`).

``report.json`` keys (required ones marked *)::

    schema*    "demp.report/1"
    tool*      {"version"*, "torch", "onnx", "onnxruntime", ...}
    source*    {"checkpoint", "sha256", "arch", ...}
    pruning*   {"method", "criterion", "lossless", "calib_samples", "neurons_before", "neurons_after",
                "methods": [{"method", "criterion", "lossless", "samples", ...}]   (training runs)
                "groups": [{"root"*, "before"*, "after"*, "removed"}]}
    model*     {"params_before"*, "params_after"*, "macs_before"*, "macs_after"*, "mac_ratio", "mac_counter", ...}
               (MACs are null, with ``mac_unavailable`` giving the reason, when no counter could count them)
    parity*    {"torch_max_abs_diff", "onnx_max_abs_diff", "onnx_rel_diff", "top1_agreement", "samples", ...}
    latency*   [{"runtime"*, "device"*, "variant"*, "batch"*, "p50_ms"*, "p90_ms"*, "p99_ms"*, "threads"*, ...}]
    latency_comparison  [{"runtime", "device", "batch", "latency_ratio", "mac_ratio", "speedup_efficiency", ...}]
    export     {"exporter", "opset", "file", "bytes", ...}
    environment {"cpu_model", "logical_cores", "threads", "gpu", "versions", ...}
    modules    [{"name", "macs_before", "macs_after", "params_before", "params_after"}]
    training   the run's ``train_summary.json`` figures (training runs)
    quantization  (``--quantize int8``) {"mode"*, "shipped"*, "file", "reason", "settings", "excluded": [{"node",
                "op_type", "reason"}], "float_ops": {op: {"count", "reason"}}, "agreement": {"samples",
                "top1_agreement", "disagreement", "max_abs_diff", "rel_diff", "accuracy_float", "accuracy_int8"},
                "bytes": {"float", "int8"}, "latency": [{"runtime", "device", "batch", "dense_p50_ms",
                "compact_p50_ms", "int8_p50_ms", "int8_vs_dense", "int8_vs_compact", "reliable"}], "gpu"}

MACs are multiply-accumulates per sample, counted by :func:`compressor.counting.count_macs` (the same
counter as ``train_summary.json``); FLOPs = 2 x MACs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compressor.compression import CompressResult
from compressor.counting import count_params
from compressor.errors import DempError, OutputExistsError
from compressor.fileio import atomic_write_json, atomic_write_text
from compressor.pruned import PLOT_CHANNELS, PLOT_LATENCY, REPORT_JSON, REPORT_MD
from compressor.training.finish import TrainResult

from .env import package_versions
from .render import (
    is_int,
    is_number,
    plot_channels,
    plot_latency,
    render_markdown,
)

__all__ = ["REPORT_SCHEMA", "ReportError", "report_problems", "validate_report", "tool_section", "compress_report",
           "training_report", "write_report"]

REPORT_SCHEMA = "demp.report/1"
REQUIRED_SECTIONS: dict[str, type] = {
    "tool": dict, "source": dict, "pruning": dict, "model": dict, "parity": dict, "latency": list,
}
MODEL_KEYS = ("params_before", "params_after", "macs_before", "macs_after")
LATENCY_KEYS: dict[str, str] = {
    "runtime": "string", "device": "string", "variant": "string", "batch": "integer", "p50_ms": "number",
    "p90_ms": "number", "p99_ms": "number", "threads": "integer",
}


class ReportError(DempError):
    """A report does not follow the ``demp.report/1`` schema."""


# ----------------------------------------------------------------------------------------- validation
def _section_problems(report: Mapping[str, Any]) -> list[str]:
    problems = []
    if report.get("schema") != REPORT_SCHEMA:
        problems.append(f"schema must be {REPORT_SCHEMA!r}, found {report.get('schema')!r}")
    for key, kind in REQUIRED_SECTIONS.items():
        if key not in report:
            problems.append(f"missing section {key!r}")
        elif not isinstance(report[key], kind):
            problems.append(f"section {key!r} must be a {'list' if kind is list else 'object'}, "
                            f"not {type(report[key]).__name__}")
    for key in ("latency_comparison", "modules"):
        if key in report and not isinstance(report[key], list):
            problems.append(f"{key} must be a list")
    for key in ("export", "environment"):
        if key in report and report[key] is not None and not isinstance(report[key], Mapping):
            problems.append(f"{key} must be an object or null")
    tool = report.get("tool")
    if isinstance(tool, Mapping) and not isinstance(tool.get("version"), str):
        problems.append("tool.version must be a string")
    return problems


def _number_problems(report: Mapping[str, Any]) -> list[str]:
    problems = []
    model = report.get("model")
    if isinstance(model, Mapping):
        for key in MODEL_KEYS:
            value = model.get(key)
            if value is None and key.startswith("macs") and model.get("mac_unavailable"):
                continue  # a count no counter could make, with its reason
            if not is_int(value) or value < 0:
                problems.append(f"model.{key} must be a non-negative integer, found {value!r}")
    parity = report.get("parity")
    if isinstance(parity, Mapping):
        for key, value in parity.items():
            if key.endswith(("_diff", "_agreement")) and value is not None and not is_number(value):
                problems.append(f"parity.{key} must be a number or null, found {value!r}")
    return problems


def _group_problems(groups: Any) -> list[str]:
    if not isinstance(groups, list):
        return ["pruning.groups must be a list"]
    problems = []
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping):
            problems.append(f"pruning.groups[{i}] must be an object")
            continue
        if not isinstance(group.get("root"), str):
            problems.append(f"pruning.groups[{i}].root must be a string")
        for key in ("before", "after"):
            if not is_int(count := group.get(key)) or count < 0:
                problems.append(f"pruning.groups[{i}].{key} must be a non-negative integer")
        if is_int(group.get("before")) and is_int(group.get("after")) and group["after"] > group["before"]:
            problems.append(f"pruning.groups[{i}] has more channels after ({group['after']}) than before "
                            f"({group['before']})")
    return problems


def _latency_problems(latency: Any) -> list[str]:
    if not isinstance(latency, list):
        return []
    checks = {"integer": is_int, "number": is_number, "string": lambda v: isinstance(v, str)}
    problems = []
    for i, entry in enumerate(latency):
        if not isinstance(entry, Mapping):
            problems.append(f"latency[{i}] must be an object")
            continue
        for key, kind in LATENCY_KEYS.items():
            if not checks[kind](entry.get(key)):
                problems.append(f"latency[{i}].{key} must be {'an' if kind == 'integer' else 'a'} {kind}, "
                                f"found {entry.get(key)!r}")
        if is_int(entry.get("batch")) and entry["batch"] < 1:
            problems.append(f"latency[{i}].batch must be >= 1")
        p = [entry.get(k) for k in ("p50_ms", "p90_ms", "p99_ms")]
        numbers = [v for v in p if is_number(v)]
        if len(numbers) == 3 and not (0 <= numbers[0] <= numbers[1] <= numbers[2]):
            problems.append(f"latency[{i}] percentiles must satisfy 0 <= p50 <= p90 <= p99, found {p}")
    return problems


def report_problems(report: Any) -> list[str]:
    """Every way ``report`` departs from the schema (empty when it is valid)."""
    if not isinstance(report, Mapping):
        return [f"report must be a JSON object, not {type(report).__name__}"]
    problems = _section_problems(report) + _number_problems(report)
    pruning = report.get("pruning")
    if isinstance(pruning, Mapping) and "groups" in pruning:
        problems += _group_problems(pruning["groups"])
    return problems + _latency_problems(report.get("latency")) + _quantization_problems(report.get("quantization"))


def _quantization_problems(section: Any) -> list[str]:
    """The ``quantization`` section (optional): mode, whether it shipped (with its file, or the reason
    not), agreement figures that are numbers."""
    if section is None:
        return []
    if not isinstance(section, Mapping):
        return ["quantization must be an object or null"]
    problems = [] if isinstance(section.get("mode"), str) else ["quantization.mode must be a string"]
    if not isinstance(section.get("shipped"), bool):
        problems.append("quantization.shipped must be true or false")
    elif section["shipped"] and not isinstance(section.get("file"), str):
        problems.append("quantization.file must name the int8 file when it shipped")
    elif not section["shipped"] and not isinstance(section.get("reason"), str):
        problems.append("quantization.reason must say why the int8 file did not ship")
    for key, value in (section.get("agreement") or {}).items():
        if key != "samples" and value is not None and not is_number(value):
            problems.append(f"quantization.agreement.{key} must be a number or null, found {value!r}")
    return problems


def validate_report(report: Any) -> Mapping[str, Any]:
    """Return ``report`` unchanged if it follows ``demp.report/1``; raise :class:`ReportError` listing
    every problem otherwise."""
    problems = report_problems(report)
    if problems:
        raise ReportError("invalid report: " + "; ".join(problems))
    return report


# ----------------------------------------------------------------------------------------- building
def tool_section(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``tool``: demp's version and the libraries that shape the result."""
    versions = package_versions()
    section: dict[str, Any] = {"version": versions.get("demp", "unknown")}
    section.update({k: versions.get(k) for k in ("torch", "onnx", "onnxruntime", "torchvision", "fvcore", "python")})
    section.update(extra or {})
    return section


def compress_report(result: CompressResult) -> dict[str, Any]:
    """The ``source``, ``pruning``, ``model`` and ``parity`` sections of a compression (the measured
    sections are added by :func:`exporters.pipeline.finalize`)."""
    crit, v = result.criterion, result.verification
    checks = [x for x in v.values() if isinstance(x, dict)]
    calib = int(result.calib_inputs.shape[0]) if result.calib_inputs is not None else 0
    held = int(result.heldout_inputs.shape[0]) if result.heldout_inputs is not None else 0
    return {
        "source": dict(result.source),
        "pruning": {
            **crit.to_dict(), "criterion": crit.spec(), "method": "compress", "calib_samples": calib,
            "heldout_samples": held, "neurons_before": result.neurons_before, "neurons_after": result.neurons_after,
            "prunable_neurons": result.prunable_neurons, "removed": result.removed,
            "ignore": list(result.options["ignore"]), "min_channels": result.options["min_channels"],
            "round_to": result.options["round_to"], "groups": result.groups,
            "timings": {k: round(t, 4) for k, t in result.timings.items()},
        },
        "model": {"params_before": count_params(result.dense), "params_after": count_params(result.model)},
        "parity": {
            "torch_max_abs_diff": max(x["max_abs_diff"] for x in checks), "torch_rel_diff": v["max_rel_diff"],
            "top1_agreement": min((x.get("top1_agreement", 1.0) for x in checks), default=1.0),
            "samples": calib + held, "torch": v,
            **({"heldout_skipped": v["heldout_skipped"]} if "heldout_skipped" in v else {}),
        },
    }


def training_report(result: TrainResult) -> dict[str, Any]:
    """The ``source``, ``pruning``, ``parity``, ``training`` and ``recipe`` sections of a training run.

    The criterion is the one of the method that removed the neurons (the plan owner), in the method's
    own words (``describe()``); every method of the run is listed under ``pruning.methods``.
    """
    recipe, s = result.recipe, result.summary
    owner = next((m for m in result.methods if m.get("owns_plan")), None)
    fp = s.get("final_removal_parity") or {}
    parity = ({"torch_max_abs_diff": fp["max_abs_diff"], "torch_rel_diff": fp.get("rel_diff"),
               "top1_agreement": fp.get("top1_agreement"), "samples": fp["samples"],
               "reference": "the trained model just before the final removal"} if fp else {})
    return {
        "source": {"arch": recipe.model.arch, "data": recipe.data.spec, "recipe": recipe.name, "method": recipe.method,
                   "training_run": str(result.out_dir)},
        "pruning": {
            **(owner or {}).get("params", {}), "method": recipe.method,
            "criterion": owner["criterion"] if owner else "none",
            "lossless": owner["lossless"] if owner else None,
            "calib_samples": (owner or {}).get("samples") or 0, "methods": list(result.methods),
            "neurons_before": s.get("neurons_before"), "neurons_after": s.get("neurons_after"),
            "removed": s.get("removed_channels", 0), "groups": s.get("groups", []),
        },
        "parity": parity,
        "training": {k: v for k, v in s.items() if k not in ("kind", "groups")},
        "recipe": recipe.to_dict(),
    }


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, *, plots: bool = True,
                 overwrite: bool = False) -> dict[str, Path]:
    """Validate ``report`` and write ``report.json``, ``report.md`` and the plots into ``out_dir``.

    Returns the written paths by kind. Existing files are replaced only with ``overwrite``.
    """
    validate_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = {"json": out / REPORT_JSON, "md": out / REPORT_MD}
    if plots:
        targets.update({"channels_plot": out / PLOT_CHANNELS, "latency_plot": out / PLOT_LATENCY})
    if not overwrite:
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise OutputExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    written: dict[str, Path] = {}
    if plots:
        if plot_channels(report, targets["channels_plot"]):
            written["channels_plot"] = targets["channels_plot"]
        if plot_latency(report, targets["latency_plot"]):
            written["latency_plot"] = targets["latency_plot"]
    written["json"] = atomic_write_json(targets["json"], report)
    images = [p.name for k, p in written.items() if k.endswith("_plot")]
    written["md"] = atomic_write_text(targets["md"], render_markdown(report, images=images))
    return written
