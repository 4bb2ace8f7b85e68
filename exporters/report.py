"""The compression report: ``report.json`` (schema ``demp.report/1``), ``report.md``, PNG plots, and
a compact terminal summary.

``report.json`` keys (required ones marked *)::

    schema*    "demp.report/1"
    tool*      {"version"*, "torch", "onnx", "onnxruntime", ...}
    source*    {"checkpoint", "sha256", "arch", ...}
    pruning*   {"criterion", "neurons_before", "neurons_after",
                "groups": [{"root"*, "before"*, "after"*, "removed"}]}
    model*     {"params_before"*, "params_after"*, "macs_before"*, "macs_after"*, "mac_ratio", ...}  (MACs per sample)
    parity*    {"torch_max_abs_diff", "onnx_max_abs_diff", "onnx_rel_diff", "top1_agreement", "samples", ...}
    latency*   [{"runtime"*, "device"*, "variant"*, "batch"*, "p50_ms"*, "p90_ms"*, "p99_ms"*, "threads"*, ...}]
    latency_comparison  [{"runtime", "device", "batch", "latency_ratio", "mac_ratio", "speedup_efficiency", ...}]
    export     {"exporter", "opset", "file", "bytes", ...}
    environment {"cpu_model", "logical_cores", "threads", "gpu", "versions", ...}
    modules    [{"name", "macs_before", "macs_after", "params_before", "params_after"}]

MACs are multiply-accumulates (fvcore counts a fused multiply-add as one); FLOPs = 2 x MACs.
"""

from __future__ import annotations

import math
import os
from numbers import Real
from pathlib import Path
from typing import Any, Mapping, Sequence

from compressor.errors import DempError
from compressor.fileio import atomic_write_json, atomic_write_text, atomic_write_with

REPORT_SCHEMA = "demp.report/1"
REQUIRED_SECTIONS: dict[str, type] = {
    "tool": dict, "source": dict, "pruning": dict, "model": dict, "parity": dict, "latency": list,
}
MODEL_KEYS = ("params_before", "params_after", "macs_before", "macs_after")
LATENCY_KEYS: dict[str, Any] = {
    "runtime": str, "device": str, "variant": str, "batch": int, "p50_ms": Real, "p90_ms": Real, "p99_ms": Real,
    "threads": int,
}
PLOT_CHANNELS = "channels.png"
PLOT_LATENCY = "latency.png"


class ReportError(DempError):
    """A report does not follow the ``demp.report/1`` schema."""


# ----------------------------------------------------------------------------------------- validation
def report_problems(report: Any) -> list[str]:
    """Every way ``report`` departs from the schema (empty when it is valid)."""
    problems: list[str] = []
    if not isinstance(report, Mapping):
        return [f"report must be a JSON object, not {type(report).__name__}"]
    if report.get("schema") != REPORT_SCHEMA:
        problems.append(f"schema must be {REPORT_SCHEMA!r}, found {report.get('schema')!r}")
    for key, kind in REQUIRED_SECTIONS.items():
        if key not in report:
            problems.append(f"missing section {key!r}")
        elif not isinstance(report[key], kind):
            problems.append(f"section {key!r} must be a {'list' if kind is list else 'object'}, "
                            f"not {type(report[key]).__name__}")
    tool = report.get("tool")
    if isinstance(tool, Mapping) and not isinstance(tool.get("version"), str):
        problems.append("tool.version must be a string")
    model = report.get("model")
    if isinstance(model, Mapping):
        for key in MODEL_KEYS:
            value = model.get(key)
            if not _is_int(value) or value < 0:
                problems.append(f"model.{key} must be a non-negative integer, found {value!r}")
    parity = report.get("parity")
    if isinstance(parity, Mapping):
        for key, value in parity.items():
            if key.endswith(("_diff", "_agreement")) and value is not None and not _is_number(value):
                problems.append(f"parity.{key} must be a number or null, found {value!r}")
    pruning = report.get("pruning")
    if isinstance(pruning, Mapping) and "groups" in pruning:
        groups = pruning["groups"]
        if not isinstance(groups, list):
            problems.append("pruning.groups must be a list")
        else:
            for i, group in enumerate(groups):
                if not isinstance(group, Mapping):
                    problems.append(f"pruning.groups[{i}] must be an object")
                    continue
                if not isinstance(group.get("root"), str):
                    problems.append(f"pruning.groups[{i}].root must be a string")
                for key in ("before", "after"):
                    if not _is_int(group.get(key)) or group.get(key) < 0:
                        problems.append(f"pruning.groups[{i}].{key} must be a non-negative integer")
                if _is_int(group.get("before")) and _is_int(group.get("after")) and group["after"] > group["before"]:
                    problems.append(f"pruning.groups[{i}] has more channels after ({group['after']}) than before ({group['before']})")
    latency = report.get("latency")
    if isinstance(latency, list):
        for i, entry in enumerate(latency):
            if not isinstance(entry, Mapping):
                problems.append(f"latency[{i}] must be an object")
                continue
            for key, kind in LATENCY_KEYS.items():
                value = entry.get(key)
                ok = _is_int(value) if kind is int else _is_number(value) if kind is Real else isinstance(value, kind)
                if not ok:
                    problems.append(f"latency[{i}].{key} must be {'an integer' if kind is int else 'a number' if kind is Real else 'a string'}, found {value!r}")
            if _is_int(entry.get("batch")) and entry["batch"] < 1:
                problems.append(f"latency[{i}].batch must be >= 1")
            p = [entry.get(k) for k in ("p50_ms", "p90_ms", "p99_ms")]
            if all(_is_number(v) for v in p) and not (0 <= p[0] <= p[1] <= p[2]):
                problems.append(f"latency[{i}] percentiles must satisfy 0 <= p50 <= p90 <= p99, found {p}")
    for key in ("latency_comparison", "modules"):
        if key in report and not isinstance(report[key], list):
            problems.append(f"{key} must be a list")
    for key in ("export", "environment"):
        if key in report and report[key] is not None and not isinstance(report[key], Mapping):
            problems.append(f"{key} must be an object or null")
    return problems


def validate_report(report: Any) -> Mapping[str, Any]:
    """Return ``report`` unchanged if it follows ``demp.report/1``; raise :class:`ReportError` listing
    every problem otherwise."""
    problems = report_problems(report)
    if problems:
        raise ReportError("invalid report: " + "; ".join(problems))
    return report


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not (isinstance(value, float) and math.isnan(value))


# ----------------------------------------------------------------------------------------- building
def tool_section(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``tool``: demp's version and the libraries that shape the result."""
    from .env import package_versions

    versions = package_versions()
    section: dict[str, Any] = {
        "version": versions.get("demp", "unknown"),
        "torch": versions.get("torch"),
        "onnx": versions.get("onnx"),
        "onnxruntime": versions.get("onnxruntime"),
        "torchvision": versions.get("torchvision"),
        "fvcore": versions.get("fvcore"),
        "python": versions.get("python"),
    }
    section.update(extra or {})
    return section


def empty_report() -> dict[str, Any]:
    """A skeleton report with every required section present and empty."""
    return {
        "schema": REPORT_SCHEMA,
        "tool": tool_section(),
        "source": {},
        "pruning": {"groups": []},
        "model": {k: 0 for k in MODEL_KEYS},
        "parity": {},
        "latency": [],
    }


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, *, plots: bool = True,
                 overwrite: bool = False) -> dict[str, Path]:
    """Validate ``report`` and write ``report.json``, ``report.md`` and the plots into ``out_dir``.

    Returns the written paths by kind. Existing files are replaced only with ``overwrite``.
    """
    from compressor.errors import OutputExistsError

    validate_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = {"json": out / "report.json", "md": out / "report.md"}
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
    written["json"] = atomic_write_json(targets["json"], _jsonable(report))
    images = [p.name for k, p in written.items() if k.endswith("_plot")]
    written["md"] = atomic_write_text(targets["md"], render_markdown(report, images=images))
    return written


def _jsonable(value: Any) -> Any:
    """Replace NaN / inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------- markdown
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e6:
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(after: Any, before: Any) -> str:
    if _is_number(after) and _is_number(before) and before:
        return f"{after / before:.3f}"
    return "–"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |")
    return lines


def render_markdown(report: Mapping[str, Any], *, images: Sequence[str] = ()) -> str:
    """``report.md``: model summary, channels per group, parity, export, latency, environment."""
    model = report.get("model", {})
    pruning = report.get("pruning", {})
    source = report.get("source", {})
    tool = report.get("tool", {})
    lines = ["# demp compression report", ""]
    desc = []
    if source.get("arch"):
        desc.append(f"architecture `{source['arch']}`")
    if source.get("checkpoint"):
        desc.append(f"checkpoint `{source['checkpoint']}`")
    if source.get("sha256"):
        desc.append(f"sha256 `{str(source['sha256'])[:16]}…`")
    if pruning.get("criterion") is not None:
        crit = pruning["criterion"]
        desc.append(f"criterion `{crit.get('name', crit) if isinstance(crit, Mapping) else crit}`")
    lines.append((", ".join(desc) + ". ") if desc else "")
    lines.append(f"demp {tool.get('version', '?')}, torch {tool.get('torch', '?')}, onnx {tool.get('onnx', '?')}, "
                 f"onnxruntime {tool.get('onnxruntime', '?')}. MACs are multiply-accumulates per sample "
                 "(FLOPs = 2 x MACs).")
    lines += ["", "## Model", ""]
    rows = [
        ["parameters", model.get("params_before"), model.get("params_after"),
         _ratio(model.get("params_after"), model.get("params_before"))],
        ["MACs / sample", model.get("macs_before"), model.get("macs_after"),
         _ratio(model.get("macs_after"), model.get("macs_before"))],
    ]
    if _is_int(pruning.get("neurons_before")):
        rows.append(["neurons (channels in groups)", pruning.get("neurons_before"), pruning.get("neurons_after"),
                     _ratio(pruning.get("neurons_after"), pruning.get("neurons_before"))])
    lines += _table(["", "dense", "pruned", "ratio"], rows)
    for warning in model.get("mac_warnings", []) or []:
        lines += ["", f"> MAC count warning: {warning}"]

    groups = pruning.get("groups") or []
    lines += ["", "## Channels per group", ""]
    if groups:
        lines += _table(["group root", "before", "after", "removed"],
                        [[f"`{g.get('root')}`", g.get("before"), g.get("after"),
                          (g.get("before", 0) or 0) - (g.get("after", 0) or 0)] for g in groups])
    else:
        lines.append("No coupling groups were recorded.")
    if PLOT_CHANNELS in images:
        lines += ["", f"![channels per group]({PLOT_CHANNELS})"]

    parity = report.get("parity", {})
    lines += ["", "## Parity", ""]
    if parity:
        lines += _table(["check", "value"],
                        [[k, ", ".join(map(str, v)) if isinstance(v, list) else v]
                         for k, v in parity.items() if not isinstance(v, dict)])
    else:
        lines.append("Not checked.")

    export = report.get("export")
    if export:
        lines += ["", "## ONNX export", ""]
        keys = ("file", "exporter", "requested_exporter", "opset", "dynamic_batch", "bytes", "external_data",
                "simplified", "seconds", "fallback_reason")
        lines += _table(["", "value"], [[k, export.get(k)] for k in keys if k in export])

    latency = report.get("latency") or []
    lines += ["", "## Latency", ""]
    if latency:
        lines += _table(["runtime", "device", "variant", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s",
                         "threads", "iters"],
                        [[e.get("runtime"), e.get("device"), e.get("variant"), e.get("batch"), e.get("p50_ms"),
                          e.get("p90_ms"), e.get("p99_ms"), e.get("mean_ms"), e.get("throughput"), e.get("threads"),
                          e.get("iters")] for e in latency])
        comps = report.get("latency_comparison") or []
        if comps:
            lines += ["", "Dense versus pruned (p50; speedup efficiency = MAC ratio / latency ratio, 1.0 means "
                          "latency fell as much as the arithmetic):", ""]
            lines += _table(["runtime", "device", "batch", "latency ratio", "MAC ratio", "speedup", "efficiency"],
                            [[c.get("runtime"), c.get("device"), c.get("batch"), c.get("latency_ratio"),
                              c.get("mac_ratio"), c.get("speedup"), c.get("speedup_efficiency")] for c in comps])
        if PLOT_LATENCY in images:
            lines += ["", f"![latency versus batch size]({PLOT_LATENCY})"]
    else:
        lines.append("Not measured.")

    modules = report.get("modules") or []
    if modules:
        lines += ["", "## MACs per module", ""]
        lines += _table(["module", "MACs dense", "MACs pruned", "ratio", "params dense", "params pruned"],
                        [[f"`{m.get('name') or '(total)'}`", m.get("macs_before"), m.get("macs_after"),
                          _ratio(m.get("macs_after"), m.get("macs_before")), m.get("params_before"),
                          m.get("params_after")] for m in modules])

    env = report.get("environment")
    if env:
        lines += ["", "## Environment", ""]
        gpu = env.get("gpu") or {}
        rows = [["CPU", env.get("cpu_model")], ["cores (logical / physical)",
                                                f"{env.get('logical_cores')} / {env.get('physical_cores')}"],
                ["threads", env.get("threads")], ["GPU", f"{gpu.get('name')} (driver {gpu.get('driver')})" if gpu else "none"],
                ["date", env.get("date")]]
        rows += [[name, version] for name, version in (env.get("versions") or {}).items()]
        lines += _table(["", "value"], rows)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    try:
        return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_channels(report: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Horizontal bars: channels per coupling group before (light) and after (dark). None if no groups."""
    groups = (report.get("pruning") or {}).get("groups") or []
    if not groups:
        return None
    plt = _pyplot()
    names = [str(g.get("root")) for g in groups]
    before = [int(g.get("before", 0)) for g in groups]
    after = [int(g.get("after", 0)) for g in groups]
    height = max(2.5, 0.22 * len(groups) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    pos = list(range(len(groups)))
    ax.barh(pos, before, color="#c6dbef", label="before")
    ax.barh(pos, after, color="#2171b5", label="after")
    ax.set_yticks(pos)
    ax.set_yticklabels(names, fontsize=7 if len(groups) > 30 else 8)
    ax.invert_yaxis()
    ax.set_xlabel("channels")
    ax.set_title("Channels per coupling group", pad=22)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=8)
    return _save(fig, Path(path))


def plot_latency(report: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """p50 latency versus batch size, one line per (runtime, variant). None without latency data."""
    latency = report.get("latency") or []
    if not latency:
        return None
    plt = _pyplot()
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for e in latency:
        series.setdefault((e["runtime"], e["device"], e["variant"]), []).append((int(e["batch"]), float(e["p50_ms"])))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    palette = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    colors: dict[tuple[str, str], str] = {}
    for (runtime, device, variant), points in sorted(series.items()):
        points.sort()
        color = colors.setdefault((runtime, device), palette[len(colors) % len(palette)])
        style = "-" if variant == "dense" else "--"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color,
                marker="o" if variant == "dense" else "s", label=f"{runtime} {device} {variant}")
    batches = sorted({int(e["batch"]) for e in latency})
    if len(batches) > 1 and batches[-1] / max(batches[0], 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency (ms per batch)")
    ax.set_title("Latency: dense versus pruned")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------- terminal
def format_summary(report: Mapping[str, Any]) -> str:
    """A compact terminal table: size, MACs, parity, and p50 latency dense versus pruned."""
    model = report.get("model", {})
    pruning = report.get("pruning", {})
    lines = [f"{'':<22} {'dense':>14} {'pruned':>14} {'ratio':>7}"]
    lines.append(f"{'parameters':<22} {_fmt(model.get('params_before')):>14} {_fmt(model.get('params_after')):>14} "
                 f"{_ratio(model.get('params_after'), model.get('params_before')):>7}")
    lines.append(f"{'MACs / sample':<22} {_fmt(model.get('macs_before')):>14} {_fmt(model.get('macs_after')):>14} "
                 f"{_ratio(model.get('macs_after'), model.get('macs_before')):>7}")
    if _is_int(pruning.get("neurons_before")):
        lines.append(f"{'neurons':<22} {_fmt(pruning.get('neurons_before')):>14} {_fmt(pruning.get('neurons_after')):>14} "
                     f"{_ratio(pruning.get('neurons_after'), pruning.get('neurons_before')):>7}")
    parity = report.get("parity", {})
    bits = []
    if parity.get("torch_max_abs_diff") is not None:
        bits.append(f"torch max|diff| {_fmt(parity['torch_max_abs_diff'])}")
    if parity.get("onnx_max_abs_diff") is not None:
        bits.append(f"onnx max|diff| {_fmt(parity['onnx_max_abs_diff'])} (rel {_fmt(parity.get('onnx_rel_diff'))})")
    agreement = parity.get("onnx_top1_agreement", parity.get("top1_agreement"))
    if agreement is not None:
        bits.append(f"top-1 agreement {agreement:.4f}")
    if parity.get("onnx_samples") or parity.get("samples"):
        bits.append(f"{parity.get('onnx_samples') or parity.get('samples')} samples")
    if bits:
        lines.append("parity: " + ", ".join(bits))
    export = report.get("export")
    if export:
        lines.append(f"onnx: {export.get('file')} ({export.get('exporter')} exporter, opset {export.get('opset')}, "
                     f"{(export.get('bytes') or 0) / 1e6:.1f} MB)")
    comps = report.get("latency_comparison") or []
    if comps:
        lines.append("")
        lines.append(f"{'runtime':<14} {'dev':<4} {'batch':>5} {'dense p50':>10} {'pruned p50':>11} {'lat ratio':>9} "
                     f"{'MAC ratio':>9} {'eff':>5}")
        for c in comps:
            lines.append(f"{c['runtime']:<14} {c['device']:<4} {c['batch']:>5} {c['baseline_p50_ms']:>8.3f}ms "
                         f"{c['variant_p50_ms']:>9.3f}ms {c['latency_ratio']:>9.3f} {_fmt(c.get('mac_ratio')):>9} "
                         f"{_fmt(c.get('speedup_efficiency'), 2):>5}")
    elif report.get("latency"):
        lines.append("")
        for e in report["latency"]:
            lines.append(f"{e['runtime']:<14} {e['device']:<4} batch {e['batch']:>4} {e['variant']:<8} "
                         f"p50 {e['p50_ms']:.3f} ms  p99 {e['p99_ms']:.3f} ms")
    return "\n".join(lines)
