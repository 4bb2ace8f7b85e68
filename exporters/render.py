"""How a report is shown: ``report.md``, the PNG plots and the compact terminal summary.

Every figure is read from the report (:mod:`exporters.report`), so the console, ``report.md`` and
``report.json`` print the same numbers the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any, TypeGuard

from compressor.plotting import pyplot, save_figure
from compressor.pruned import PLOT_CHANNELS, PLOT_LATENCY

__all__ = ["render_markdown", "plot_channels", "plot_latency", "format_summary", "speed_verdicts", "quantization_lines",
           "int8_speed_lines", "is_int", "is_number"]



def is_int(value: Any) -> TypeGuard[int]:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[float]:
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


#: How the console and the reports name a benchmark variant (others by their own name).
VARIANT_LABELS = {"pruned": "compact", "int8": "int8 compact"}


def speed_verdicts(report: Mapping[str, Any]) -> list[str]:
    """The timing verdicts, for the console, ``report.md`` and the terminal summary alike: first a
    warning when other processes took the CPU while timing, then one line per measured (runtime,
    device, batch): faster, SLOWER, no measurable difference (within the noise floor: two runs of the
    same model differed as much in the same measurement), or UNRELIABLE (no claim: the reasons)."""
    lines = []
    load = report.get("machine_load") or {}
    if load.get("busy"):
        lines.append(f"WARNING: the machine was busy while timing (the timing thread got {load['cpu_share']:.0%} of "
                     "a CPU): the latencies are not this model's; run again on a quiet machine")
    threads = (report.get("environment") or {}).get("threads", "?")
    for c in report.get("latency_comparison") or []:
        ratio = c.get("latency_ratio")
        if not is_number(ratio) or ratio <= 0:
            continue
        name = VARIANT_LABELS.get(c.get("variant", "pruned"), c.get("variant"))
        floor = c.get("noise_floor")
        where = f"on {c['runtime']} {c['device']} at batch {c['batch']}"
        numbers = (f"p50 {c['baseline_p50_ms']:.3f} -> {c['variant_p50_ms']:.3f} ms, {threads} thread(s)"
                   + (f", noise floor +-{floor:.0%}" if is_number(floor) else ""))
        lines.append(_verdict(name, "dense", ratio, where, numbers, reliable=c.get("reliable", True),
                              within=bool(c.get("within_noise")), why="; ".join(c.get("notes") or [])))
    return lines


def _verdict(name: str, base: str, ratio: float, where: str, numbers: str, *, reliable: bool, within: bool,
             why: str) -> str:
    """One timing verdict: ``ratio`` is ``name``'s p50 over ``base``'s. Unreliable: no claim either way."""
    if not reliable:
        return f"UNRELIABLE: {name} took {ratio:.2f}x the time of {base} {where} ({numbers}): {why}"
    if within:
        return f"no measurable difference between {name} and {base} {where} ({ratio:.2f}x the time; {numbers})"
    if ratio <= 1.0:
        return f"{name} is {1 / ratio:.2f}x faster than {base} {where} ({numbers})"
    return f"WARNING: {name} is {ratio:.2f}x SLOWER than {base} {where} ({numbers})"


def removal_error_lines(pruning: Mapping[str, Any]) -> list[str]:
    """One line per training method whose lossy removals changed the outputs (``removal_error``)."""
    lines = []
    for m in pruning.get("methods") or []:
        err = m.get("removal_error") if isinstance(m, Mapping) else None
        if err:
            deadline = (m.get("budget") or {}).get("closed_step") is not None
            how = ("its budget's deadline (live neurons closest to dead)" if deadline else
                   "a lossy criterion (`{}`)".format(m.get("criterion")) if not m.get("lossless")
                   else "a lossy removal")
            lines.append(f"{m.get('method')} removed neurons by {how}: the largest "
                         f"change of the outputs at a removal was {err['max_abs_diff']:.3g} ({err['rel_diff']:.2%} of "
                         f"the output scale) on {err['samples']} measurement samples, over {err['removals']} removals")
    return lines


#: What a budget's share counts, in words (``budget.kind`` of a method's report entry).
BUDGET_KINDS = {"neuron_sparsity": "of the neurons", "macs_removed": "of the MACs",
                "params_removed": "of the parameters"}


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
        change = (f"; output change {100 * err['rel_diff']:.1f}% of the output scale"
                  if is_number(err.get("rel_diff")) else "")
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
        parts = ["only on the neurons the budget still needs (select: budget)"
                 if isinstance(select, Mapping) else "",
                 f"weighted by the {cost.get('cost')} each neuron costs (cost-aware)"
                 if isinstance(cost, Mapping) else ""]
        if any(parts):
            lines.append(f"{m.get('method')} penalty " + " and ".join(h for h in parts if h) + ", beyond the papers")
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
    verdicts = [f"**{v}**" for v in speed_verdicts(report) + quantization_lines(report)]
    policy = report.get("width_policy") or {}
    if policy.get("reliable") is False:
        verdicts.append(f"**widths: `{policy['chosen']}`, {policy.get('note')}**")
    verdicts += [f"**{line}**" for line in removal_error_lines(pruning)] + budget_lines(pruning)
    return ["# demp compression report", "", *verdicts, *([""] if verdicts else []),
            (", ".join(desc) + ". ") if desc else "",
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
        lines += [f"Chosen: `{policy['chosen']}`, by the {policy.get('decided_by', 'static rule')}: {policy['note']}.",
                  ""]
    else:
        lines += [f"Chosen: `{policy['chosen']}`, by timing on {policy['runtime']} {policy['device']} "
                  f"({policy['threads']} thread(s)): the candidate whose slowest batch ran fastest against dense, "
                  "where candidates within the noise floor of it are tied (the static rule's choice wins a tie); "
                  "dense is kept only when every compact candidate ran slower by more than the noise floor.", ""]
    if policy.get("candidates"):
        batches = [str(b) for b in policy.get("batch_sizes", [])]
        lines += _table(["candidate", "round to", "removed", "MACs", *[f"ratio @ batch {b}" for b in batches],
                         "noise floor", "chosen"],
                        [[f"`{c['label']}`", c["round_to"], c["removed"], c["macs"],
                          *[(c.get("latency_ratio") or {}).get(b) for b in batches], c.get("noise_floor"),
                          "yes" if c["chosen"] else ""]
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


def quantization_lines(report: Mapping[str, Any]) -> list[str]:
    """The int8 headline (console, ``report.md``, terminal summary): shipped with its agreement and its
    speed against the float compact model, or a WARNING that it was not shipped and why."""
    q = report.get("quantization")
    if not q:
        return []
    if not q.get("shipped"):
        return [f"WARNING: the {q.get('mode')} model was NOT shipped: {q.get('reason')}; the float model.onnx is the "
                "output"]
    a, size = q.get("agreement") or {}, q.get("bytes") or {}
    line = (f"{q['mode']}: {q['file']} ({(size.get('int8') or 0) / 1e6:.2f} MB, "
            f"{_ratio(size.get('float'), size.get('int8'))}x smaller than model.onnx)")
    if is_number(a.get("top1_agreement")):
        line += (f"; top-1 agreement with the float compact model {a['top1_agreement']:.2%} on {a['samples']} "
                 "held-out samples")
    line += f", largest output change {a.get('rel_diff', 0):.2%} of the output scale"
    if is_number(a.get("accuracy_int8")):
        line += (f"; accuracy {a['accuracy_float']:.2%} (float) -> {a['accuracy_int8']:.2%} (int8) on {a['labels']} "
                 "labelled samples")
    return [line] + int8_speed_lines(q.get("latency") or [])


def int8_speed_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """int8 compact against compact fp32, one line per timed (runtime, device, batch)
    (:func:`exporters.quantize.int8_speedups`), by the rules of :func:`speed_verdicts`."""
    return [_verdict("int8 compact", "compact fp32", 1 / r["int8_vs_compact"],
                     f"on {r['runtime']} {r['device']} at batch {r['batch']}",
                     f"p50 {r['compact_p50_ms']:.3f} -> {r['int8_p50_ms']:.3f} ms, "
                     f"noise floor +-{r['noise_floor']:.0%}",
                     reliable=r.get("reliable", True), within=r["within_noise"], why="see the latency table")
            for r in rows]


def _quantization_section(report: Mapping[str, Any]) -> list[str]:
    """``report.md``: settings, operators kept in float and why, agreement, sizes, three-way latency, GPU."""
    q = report.get("quantization")
    if not q:
        return []
    s, a, gpu = q.get("settings") or {}, q.get("agreement") or {}, q.get("gpu") or {}
    lines = ["## Quantization", "", f"{q.get('mode')}: " + (f"`{q.get('file')}` shipped." if q.get("shipped")
                                                             else f"NOT shipped: {q.get('reason')}."), ""]
    rows = [[k, v] for k, v in s.items()] + [["calibration samples", q.get("calib_samples")],
                                             ["held-out samples", q.get("heldout_samples")],
                                             ["bytes float / int8", f"{_fmt((q.get('bytes') or {}).get('float'))} / "
                                                                    f"{_fmt((q.get('bytes') or {}).get('int8'))}"]]
    lines += _table(["setting", "value"], rows) + ["", "Agreement with the float compact model (held-out samples):", ""]
    lines += _table(["check", "value"], [[k, v] for k, v in a.items()]) if a else ["Not checked."]
    kept = [[f"`{e['node']}`", e["op_type"], e["reason"]] for e in q.get("excluded") or []]
    kept += [[f"{v['count']} x", op, v["reason"]] for op, v in (q.get("float_ops") or {}).items()]
    lines += ["", "Kept in float:", ""] + (_table(["node", "operator", "why"], kept) if kept else ["nothing"])
    if q.get("latency"):
        lines += ["", "Dense fp32 vs compact fp32 vs compact int8 (one interleaved measurement, p50 ms):", ""]
        lines += _table(["runtime", "device", "batch", "dense", "compact", "int8", "compact vs dense",
                         "int8 vs dense", "int8 vs compact", "reliable"],
                        [[r["runtime"], r["device"], r["batch"], r["dense_p50_ms"], r["compact_p50_ms"],
                          r["int8_p50_ms"], f"{r['compact_vs_dense']:.2f}x", f"{r['int8_vs_dense']:.2f}x",
                          f"{r['int8_vs_compact']:.2f}x", "yes" if r.get("reliable", True) else "NO"]
                         for r in q["latency"]])
    return lines + ["", "GPU: " + " ".join(str(gpu[k]) for k in ("provider", "note") if gpu.get(k))]


def _latency_section(report: Mapping[str, Any], images: Sequence[str]) -> list[str]:
    latency = report.get("latency") or []
    if not latency:
        return ["## Latency", "", "Not measured."]
    lines = ["## Latency", "", "Interleaved round-robin; `dense (A/A)` is a second copy of dense timed alongside, "
             "and how much it differs from dense is each comparison's noise floor. CPU share: the CPU time the "
             "timing thread got over the wall time (below 85%: other processes took the CPU).", ""]
    lines += _table(["runtime", "device", "variant", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s",
                     "threads", "iters", "CPU share"],
                    [[e.get("runtime"), e.get("device"), e.get("variant"), e.get("batch"), e.get("p50_ms"),
                      e.get("p90_ms"), e.get("p99_ms"), e.get("mean_ms"), e.get("throughput"), e.get("threads"),
                      e.get("iters"), "-" if e.get("cpu_share") is None else f"{e['cpu_share']:.0%}"]
                     for e in latency])
    comps = report.get("latency_comparison") or []
    if comps:
        lines += ["", "Dense versus pruned (p50; speedup efficiency = MAC ratio / latency ratio, 1.0 means "
                      "latency fell as much as the arithmetic):", ""]
        lines += _table(["runtime", "device", "batch", "variant", "latency ratio", "MAC ratio", "speedup", "efficiency",
                         "noise floor", "reliable"],
                        [[c.get("runtime"), c.get("device"), c.get("batch"),
                          VARIANT_LABELS.get(c.get("variant"), c.get("variant")), c.get("latency_ratio"),
                          c.get("mac_ratio"), c.get("speedup"), c.get("speedup_efficiency"),
                          "-" if c.get("noise_floor") is None else f"+-{c['noise_floor']:.0%}"
                          + (" (within)" if c.get("within_noise") else ""),
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
                _export_section(report), _quantization_section(report), _latency_section(report, images),
                _modules_section(report), _environment_section(report)]
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
        style = {"dense": "-", "int8": ":"}.get(variant, "--")
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
    lines = speed_verdicts(report) + quantization_lines(report) + removal_error_lines(pruning) + budget_lines(pruning)
    lines += [""] if lines else []
    lines += [f"{'':<22} {'dense':>14} {'pruned':>14} {'ratio':>7}"]
    lines.append(f"{'parameters':<22} {_fmt(model.get('params_before')):>14} {_fmt(model.get('params_after')):>14} "
                 f"{_ratio(model.get('params_after'), model.get('params_before')):>7}")
    lines.append(f"{'MACs / sample':<22} {_fmt(model.get('macs_before')):>14} {_fmt(model.get('macs_after')):>14} "
                 f"{_ratio(model.get('macs_after'), model.get('macs_before')):>7}")
    if is_int(pruning.get("neurons_before")):
        lines.append(f"{'neurons':<22} {_fmt(pruning.get('neurons_before')):>14} "
                     f"{_fmt(pruning.get('neurons_after')):>14} "
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
                     f"{'MAC ratio':>9} {'eff':>5} {'floor':>6}")
        for c in comps:
            floor = "-" if c.get("noise_floor") is None else f"+-{c['noise_floor']:.0%}"
            lines.append(f"{c['runtime']:<14} {c['device']:<4} {c['batch']:>5} {c['baseline_p50_ms']:>8.3f}ms "
                         f"{c['variant_p50_ms']:>9.3f}ms {c['latency_ratio']:>9.3f} {_fmt(c.get('mac_ratio')):>9} "
                         f"{_fmt(c.get('speedup_efficiency'), 2):>5} {floor:>6}"
                         + ("" if c.get("reliable", True) else " UNRELIABLE"))
    elif report.get("latency"):
        lines.append("")
        for e in report["latency"]:
            lines.append(f"{e['runtime']:<14} {e['device']:<4} batch {e['batch']:>4} {e['variant']:<8} "
                         f"p50 {e['p50_ms']:.3f} ms  p99 {e['p99_ms']:.3f} ms")
    return "\n".join(lines)
