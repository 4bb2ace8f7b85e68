"""How a report is shown: ``report.md``, the PNG plots and the compact terminal summary.

Every figure is read from the report (:mod:`exporters.report`), so the console, ``report.md`` and
``report.json`` print the same numbers the same way.
"""

from __future__ import annotations

import os
from numbers import Real
from pathlib import Path
from typing import Any, Mapping, Sequence

from compressor.plotting import pyplot, save_figure
from compressor.pruned import PLOT_CHANNELS, PLOT_LATENCY

__all__ = ["render_markdown", "plot_channels", "plot_latency", "format_summary", "speed_verdicts", "is_int", "is_number"]



def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number that is neither a bool nor NaN."""
    return isinstance(value, Real) and not isinstance(value, bool) and value == value


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
    if is_number(after) and is_number(before) and before:
        return f"{after / before:.3f}"
    return "–"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |")
    return lines


def speed_verdicts(report: Mapping[str, Any]) -> list[str]:
    """One line per measured (runtime, device, batch): how much faster — or slower — the compact model
    is than the dense one at the median. The console, ``report.md`` and the terminal summary print these."""
    lines = []
    for c in report.get("latency_comparison") or []:
        ratio = c.get("latency_ratio")
        if not is_number(ratio) or ratio <= 0:
            continue
        if ratio <= 1.0:
            verdict = f"compact is {1 / ratio:.2f}x faster than dense"
        else:
            verdict = f"WARNING: compact is {ratio:.2f}x SLOWER than dense"
        line = (f"{verdict} on {c['runtime']} {c['device']} at batch {c['batch']} (p50 {c['baseline_p50_ms']:.3f} -> "
                f"{c['variant_p50_ms']:.3f} ms, {report.get('environment', {}).get('threads', '?')} thread(s))")
        if not c.get("reliable", True):
            line += f" -- UNRELIABLE: {'; '.join(c.get('notes') or [])}"
        lines.append(line)
    return lines


def removal_error_lines(pruning: Mapping[str, Any]) -> list[str]:
    """One line per training method whose lossy removals changed the outputs (``removal_error``)."""
    lines = []
    for m in pruning.get("methods") or []:
        err = m.get("removal_error") if isinstance(m, Mapping) else None
        if err:
            deadline = (m.get("budget") or {}).get("closed_step") is not None
            how = ("its budget's deadline (live neurons closest to dead)" if deadline else
                   "a lossy criterion (`{}`)".format(m.get("criterion")) if not m.get("lossless") else "a lossy removal")
            lines.append(f"{m.get('method')} removed neurons by {how}: the largest "
                         f"change of the outputs at a removal was {err['max_abs_diff']:.3g} ({err['rel_diff']:.2%} of "
                         f"the output scale) on {err['samples']} measurement samples, over {err['removals']} removals")
    return lines


#: What a budget's share counts, in words (``budget.kind`` of a method's report entry).
BUDGET_KINDS = {"neuron_sparsity": "of the neurons", "macs_removed": "of the MACs", "params_removed": "of the parameters"}


def _budget_breakdown(b: Mapping[str, Any]) -> str:
    """Where a budget's share came from: lossless removal, deaths under the penalty, the deadline's cut."""
    d = b.get("breakdown") or {}
    if not is_number(d.get("final")):
        return ""
    parts = []
    if is_number(d.get("lossless")) and d["lossless"] > 0:
        parts.append(f"{100 * d['lossless']:.1f}% lossless removal of dead neurons before training")
    parts.append(f"{100 * d.get('died', 0.0):.1f}% neurons that died under the penalty (removed losslessly)")
    if d.get("cut_neurons"):
        err = d.get("cut_error") or {}
        change = f"; output change {100 * err['rel_diff']:.1f}% of the output scale" if is_number(err.get("rel_diff")) else ""
        parts.append(f"{100 * d['cut']:.1f}% a forced cut of {d['cut_neurons']} live neurons at the deadline "
                     f"(lossy{change})")
    return f"{100 * d['final']:.1f}% removed = " + " + ".join(parts)


def budget_lines(pruning: Mapping[str, Any]) -> list[str]:
    """One line per training method with a budget (DemP's target mode, beyond the papers): asked, reached,
    how (λ alone, or λ and the deadline's cut), and where the share came from."""
    lines = []
    for m in pruning.get("methods") or []:
        b = m.get("budget") if isinstance(m, Mapping) else None
        if not b or not is_number(b.get("target")):
            continue
        what = BUDGET_KINDS.get(b.get("kind"), "of the neurons")
        head = f"{m.get('method')} budget (beyond the papers): {100 * b['target']:.1f}% {what} asked"
        if b.get("closed_step") is not None:
            how = (f"lambda reached {100 * b['closed_from']:.1f}% by the deadline (step {b['closed_step']}), then the "
                   f"{b.get('closed_neurons', 0)} live neurons closest to dead were cut to close the gap")
        elif b.get("reached_step") is not None:
            how = f"reached at step {b['reached_step']}"
        else:
            measured = b.get("measured")
            how = f"not reached ({'-' if measured is None else f'{100 * measured:.1f}%'} at the last measurement)"
        breakdown = _budget_breakdown(b)
        lines.append(f"{head}; {how}" + (f". {breakdown}" if breakdown else ""))
        cost, select = m.get("cost_aware"), m.get("select")
        how = [f"only on the neurons the budget still needs (select: budget)" if isinstance(select, Mapping) else "",
               f"weighted by the {cost.get('cost')} each neuron costs (cost-aware)" if isinstance(cost, Mapping) else ""]
        if any(how):
            lines.append(f"{m.get('method')} penalty " + " and ".join(h for h in how if h) + ", beyond the papers")
    return lines


def _header(report: Mapping[str, Any]) -> list[str]:
    source, pruning, tool = report.get("source", {}), report.get("pruning", {}), report.get("tool", {})
    desc = []
    if source.get("arch"):
        desc.append(f"architecture `{source['arch']}`")
    if source.get("checkpoint"):
        desc.append(f"checkpoint `{source['checkpoint']}`")
    if source.get("sha256"):
        desc.append(f"sha256 `{str(source['sha256'])[:16]}…`")
    if pruning.get("method") and pruning.get("method") != "compress":
        desc.append(f"method `{pruning['method']}`")
    if pruning.get("criterion") is not None:
        crit = pruning["criterion"]
        desc.append(f"criterion `{crit.get('name', crit) if isinstance(crit, Mapping) else crit}`")
    verdicts = [f"**{v}**" for v in speed_verdicts(report)]
    verdicts += [f"**{line}**" for line in removal_error_lines(pruning)] + budget_lines(pruning)
    return ["# demp compression report", "", *verdicts, *([""] if verdicts else []), (", ".join(desc) + ". ") if desc else "",
            f"demp {tool.get('version', '?')}, torch {tool.get('torch', '?')}, onnx {tool.get('onnx', '?')}, "
            f"onnxruntime {tool.get('onnxruntime', '?')}. MACs are multiply-accumulates per sample "
            "(FLOPs = 2 x MACs)."]


def _model_section(report: Mapping[str, Any]) -> list[str]:
    model, pruning = report.get("model", {}), report.get("pruning", {})
    rows = [
        ["parameters", model.get("params_before"), model.get("params_after"),
         _ratio(model.get("params_after"), model.get("params_before"))],
        ["MACs / sample", model.get("macs_before"), model.get("macs_after"),
         _ratio(model.get("macs_after"), model.get("macs_before"))],
    ]
    if is_int(pruning.get("neurons_before")):
        rows.append(["neurons (channels in groups)", pruning.get("neurons_before"), pruning.get("neurons_after"),
                     _ratio(pruning.get("neurons_after"), pruning.get("neurons_before"))])
    lines = ["## Model", ""] + _table(["", "dense", "pruned", "ratio"], rows)
    if model.get("mac_counter"):
        lines += ["", f"MACs counted with {model['mac_counter']}."]
    if model.get("mac_unavailable"):
        lines += ["", f"> MACs unavailable: {model['mac_unavailable']}"]
    for warning in model.get("mac_warnings", []) or []:
        lines += ["", f"> MAC count warning: {warning}"]
    return lines


def _groups_section(report: Mapping[str, Any], images: Sequence[str]) -> list[str]:
    groups = (report.get("pruning") or {}).get("groups") or []
    lines = ["## Channels per group", ""]
    if groups:
        lines += _table(["group root", "before", "after", "removed"],
                        [[f"`{g.get('root')}`", g.get("before"), g.get("after"),
                          (g.get("before", 0) or 0) - (g.get("after", 0) or 0)] for g in groups])
    else:
        lines.append("No coupling groups were recorded.")
    blocked = [g for g in groups if g.get("blocked")]
    if blocked:
        lines += ["", f"### Blocked groups ({len(blocked)}, kept whole)", "",
                  "Pass `--ignore NAME` to keep a layer whole yourself; a group blocked because its removal broke "
                  "the model was found by checking the removals on a copy, and the rest was compressed.", ""]
        lines += [f"- `{g.get('root')}`: {g['blocked']}" for g in blocked]
    if PLOT_CHANNELS in images:
        lines += ["", f"![channels per group]({PLOT_CHANNELS})"]
    return lines


def _width_section(report: Mapping[str, Any]) -> list[str]:
    policy = report.get("width_policy")
    if not policy:
        return []
    lines = ["## Width policy", ""]
    if policy.get("note"):
        lines += [f"Chosen: `{policy['chosen']}` — {policy['note']}.", ""]
    else:
        lines += [f"Chosen: `{policy['chosen']}`, the candidate whose slowest batch ran fastest against the dense "
                  f"model on {policy['runtime']} {policy['device']} ({policy['threads']} thread(s)); dense counts "
                  "as 1.0, so a compact candidate is kept only when it measured faster at every batch.", ""]
        batches = [str(b) for b in policy.get("batch_sizes", [])]
        lines += _table(["candidate", "round to", "removed", "MACs", *[f"ratio @ batch {b}" for b in batches], "chosen"],
                        [[f"`{c['label']}`", c["round_to"], c["removed"], c["macs"],
                          *[(c.get("latency_ratio") or {}).get(b) for b in batches], "yes" if c["chosen"] else ""]
                         for c in policy.get("candidates", [])])
        lines.append("")
    lines += _table(["group root", "before", "exact", "chosen"],
                    [[f"`{g['root']}`", g["before"], g["exact"], g["chosen"]] for g in policy.get("groups", [])])
    return lines


def _parity_section(report: Mapping[str, Any]) -> list[str]:
    parity = report.get("parity", {})
    if not parity:
        return ["## Parity", "", "Not checked."]
    return ["## Parity", ""] + _table(["check", "value"], [[k, ", ".join(map(str, v)) if isinstance(v, list) else v]
                                                           for k, v in parity.items() if not isinstance(v, dict)])


def _export_section(report: Mapping[str, Any]) -> list[str]:
    export = report.get("export")
    if not export:
        return []
    keys = ("file", "exporter", "requested_exporter", "opset", "dynamic_batch", "bytes", "external_data",
            "simplified", "seconds", "fallback_reason")
    return ["## ONNX export", ""] + _table(["", "value"], [[k, export.get(k)] for k in keys if k in export])


def _latency_section(report: Mapping[str, Any], images: Sequence[str]) -> list[str]:
    latency = report.get("latency") or []
    if not latency:
        return ["## Latency", "", "Not measured."]
    lines = ["## Latency", ""]
    lines += _table(["runtime", "device", "variant", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s",
                     "threads", "iters"],
                    [[e.get("runtime"), e.get("device"), e.get("variant"), e.get("batch"), e.get("p50_ms"),
                      e.get("p90_ms"), e.get("p99_ms"), e.get("mean_ms"), e.get("throughput"), e.get("threads"),
                      e.get("iters")] for e in latency])
    comps = report.get("latency_comparison") or []
    if comps:
        lines += ["", "Dense versus pruned (p50; speedup efficiency = MAC ratio / latency ratio, 1.0 means "
                      "latency fell as much as the arithmetic):", ""]
        lines += _table(["runtime", "device", "batch", "latency ratio", "MAC ratio", "speedup", "efficiency", "reliable"],
                        [[c.get("runtime"), c.get("device"), c.get("batch"), c.get("latency_ratio"),
                          c.get("mac_ratio"), c.get("speedup"), c.get("speedup_efficiency"),
                          "yes" if c.get("reliable", True) else "NO: " + "; ".join(c.get("notes") or [])]
                         for c in comps])
    if PLOT_LATENCY in images:
        lines += ["", f"![latency versus batch size]({PLOT_LATENCY})"]
    return lines


def _modules_section(report: Mapping[str, Any]) -> list[str]:
    modules = report.get("modules") or []
    if not modules:
        return []
    return ["## MACs per module", ""] + _table(
        ["module", "MACs dense", "MACs pruned", "ratio", "params dense", "params pruned"],
        [[f"`{m.get('name') or '(total)'}`", m.get("macs_before"), m.get("macs_after"),
          _ratio(m.get("macs_after"), m.get("macs_before")), m.get("params_before"), m.get("params_after")]
         for m in modules])


def _environment_section(report: Mapping[str, Any]) -> list[str]:
    env = report.get("environment")
    if not env:
        return []
    gpu = env.get("gpu") or {}
    rows = [["CPU", env.get("cpu_model")],
            ["cores (logical / physical)", f"{env.get('logical_cores')} / {env.get('physical_cores')}"],
            ["threads", env.get("threads")],
            ["GPU", f"{gpu.get('name')} (driver {gpu.get('driver')})" if gpu else "none"], ["date", env.get("date")]]
    rows += [[name, version] for name, version in (env.get("versions") or {}).items()]
    return ["## Environment", ""] + _table(["", "value"], rows)


def render_markdown(report: Mapping[str, Any], *, images: Sequence[str] = ()) -> str:
    """``report.md``: model summary, channels per group, parity, export, latency, environment."""
    sections = [_header(report), _model_section(report), _groups_section(report, images), _width_section(report),
                _parity_section(report),
                _export_section(report), _latency_section(report, images), _modules_section(report),
                _environment_section(report)]
    lines: list[str] = []
    for section in sections:
        if section:
            lines += section + [""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------- plots
def plot_channels(report: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Horizontal bars: channels per coupling group before (light) and after (dark). None if no groups."""
    groups = (report.get("pruning") or {}).get("groups") or []
    if not groups:
        return None
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_latency(report: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """p50 latency versus batch size, one line per (runtime, variant). None without latency data."""
    latency = report.get("latency") or []
    if not latency:
        return None
    plt = pyplot()
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
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------- terminal
def format_summary(report: Mapping[str, Any]) -> str:
    """A compact terminal summary: the speed verdicts first, then size, MACs, parity and p50 latency."""
    model = report.get("model", {})
    pruning = report.get("pruning", {})
    lines = speed_verdicts(report) + removal_error_lines(pruning) + budget_lines(pruning)
    lines += [""] if lines else []
    lines += [f"{'':<22} {'dense':>14} {'pruned':>14} {'ratio':>7}"]
    lines.append(f"{'parameters':<22} {_fmt(model.get('params_before')):>14} {_fmt(model.get('params_after')):>14} "
                 f"{_ratio(model.get('params_after'), model.get('params_before')):>7}")
    lines.append(f"{'MACs / sample':<22} {_fmt(model.get('macs_before')):>14} {_fmt(model.get('macs_after')):>14} "
                 f"{_ratio(model.get('macs_after'), model.get('macs_before')):>7}")
    if is_int(pruning.get("neurons_before")):
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
                         f"{_fmt(c.get('speedup_efficiency'), 2):>5}" + ("" if c.get("reliable", True) else " UNRELIABLE"))
    elif report.get("latency"):
        lines.append("")
        for e in report["latency"]:
            lines.append(f"{e['runtime']:<14} {e['device']:<4} batch {e['batch']:>4} {e['variant']:<8} "
                         f"p50 {e['p50_ms']:.3f} ms  p99 {e['p99_ms']:.3f} ms")
    return "\n".join(lines)
