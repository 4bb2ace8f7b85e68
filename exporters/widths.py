"""The width policy of ``demp compress --round-to auto``: measure where a measurement can decide.

Removing channels only pays when the runtime's kernels run the new widths fast: odd widths (31, 60,
83) can make a compact model *slower* than the dense one in ONNX Runtime, whose CPU convolutions work
in blocks of 8 or 16 channels. The policy builds the candidates the lossless decision allows — the
exact widths, the widths rounded up to multiples of 8, 16 and 32 (keeping a few more dead channels,
never a live one), and the dense model itself — exports each with the same exporter and times them
interleaved on the runtime the report measures (one thread unless told otherwise, at every batch size
of the report), with an A/A copy of dense whose difference from dense is the noise floor.

* A removal that saves less than :data:`~exporters.latency.MIN_NOISE_FLOOR` of the MACs is not
  timed (no measurement could tell it from dense): the static rule (:func:`static_choice`) decides.
* Timings marked unreliable (a busy machine, p90 far above p50, a speedup beyond the arithmetic)
  never discard a removal: the static rule decides, and the report says so.
* Reliable timings keep the candidate whose slowest batch ran fastest against dense; candidates within
  the noise floor of it are tied and the static rule's choice wins a tie. The dense widths are kept
  only when every compact candidate ran slower than dense by more than the noise floor; the report
  says so loudly.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compressor.compression import CompressResult, calibration_inputs, verify_deferred
from compressor.counting import count_macs
from compressor.errors import DempError

from .latency import DEFAULT_THREADS, MIN_NOISE_FLOOR, QUICK_MAX_S, QUICK_MIN_S, BenchConfig, Variant, benchmark
from .onnx import export_onnx
from .ort import available_providers
from .runtimes import REGISTRY, get_runtime

log = logging.getLogger(__name__)

__all__ = ["MULTIPLES", "WidthCandidate", "choose_widths", "static_choice", "untimed_policy", "NO_REMOVAL",
           "STATIC_RULE", "UNTIMED_MULTIPLE"]

#: Width roundings tried besides the exact widths.
MULTIPLES = (8, 16, 32)
#: A rounding above every width: the dense candidate (no channel removed).
NO_REMOVAL = 1 << 30
#: The rounding used when nothing can be timed (no export): kernel-friendly widths, not measured.
UNTIMED_MULTIPLE = 8
#: How :func:`static_choice` decides, in the words the report uses.
STATIC_RULE = "static rule: widths rounded up to multiples of 8 when that still removes channels, else the exact widths"


@dataclass
class WidthCandidate:
    """One way to remove the dead channels, and how it ran against the dense model."""

    label: str  # "exact", "x8", "x16", "x32" or "dense"
    round_to: int
    result: CompressResult
    macs: int
    ratios: dict[int, float]  # batch -> p50 / dense p50 (1.0 for dense)
    floor: float = MIN_NOISE_FLOOR  # the largest noise floor of its comparisons
    notes: tuple[str, ...] = ()  # why its comparisons were unreliable (empty: they were not)

    @property
    def worst(self) -> float:
        return max(self.ratios.values()) if self.ratios else float("inf")

    def to_dict(self, chosen: bool) -> dict[str, Any]:
        return {"label": self.label, "round_to": None if self.round_to == NO_REMOVAL else self.round_to,
                "removed": self.result.removed, "macs": self.macs,
                "latency_ratio": {str(b): r for b, r in sorted(self.ratios.items())}, "worst": self.worst,
                "noise_floor": self.floor if self.ratios else None, "unreliable": list(self.notes), "chosen": chosen}


def _candidates(exact: CompressResult, rewidth: Callable[..., CompressResult]) -> list[WidthCandidate]:
    """The exact widths, each distinct rounding, and dense; equal plans are built once, and a rounding that
    removes nothing is the dense candidate."""
    shape = tuple(calibration_inputs(exact).shape[1:])
    out: dict[str, WidthCandidate] = {}
    for label, round_to in [("exact", 1), *((f"x{m}", m) for m in MULTIPLES), ("dense", NO_REMOVAL)]:
        result = exact if round_to == 1 else rewidth(round_to, verify=False)  # the kept one is verified
        if result.removed == 0:
            label, round_to = "dense", NO_REMOVAL
        key = result.plan.removal_hash()
        if key in out:
            log.debug("width candidate %s equals %s", label, out[key].label)
            continue
        out[key] = WidthCandidate(label, round_to, result, count_macs(result.model, shape).total_macs, {})
    return list(out.values())


def static_choice(candidates: Sequence[WidthCandidate]) -> WidthCandidate:
    """The documented rule for when timing cannot decide: the widths rounded up to multiples of 8, which
    the CPU and GPU kernels of both runtimes run at full speed (the MNIST CNN's odd exact widths took
    1.35x / 1.72x the dense time in onnxruntime at batch 1 / 8, BENCHMARKS.md §3b), when that rounding
    still removes something; otherwise the exact widths. Never the dense widths."""
    by_label = {c.label: c for c in candidates}
    return by_label.get("x8") or by_label["exact"]


def timing_runtime(device: str) -> str:
    """The runtime the width candidates are timed on: onnxruntime, where the compact file is shipped to,
    unless onnxruntime lacks the execution provider ``device`` needs (then PyTorch on that device)."""
    ort = REGISTRY["onnxruntime"]
    needed = ort.needs_provider(device)
    return ort.name if needed is None or needed in available_providers() else REGISTRY["torch"].name


def choose_widths(exact: CompressResult, rewidth: Callable[..., CompressResult], *, batch_sizes: Sequence[int],
                  threads: int | None = DEFAULT_THREADS, runtime: str = "onnxruntime", device: str = "cpu",
                  exporter: str = "auto", opset: int = 18, min_time_s: float = QUICK_MIN_S,
                  max_time_s: float = QUICK_MAX_S,
                  progress: Callable[[str], None] | None = None) -> tuple[CompressResult, dict[str, Any]]:
    """The chosen candidate (see the module docstring) and the ``width_policy`` section of the report."""
    candidates = _candidates(exact, rewidth)
    static = static_choice(candidates)
    saving = 1 - candidates[0].macs / next(c for c in candidates if c.label == "dense").macs
    say = progress or (lambda _msg: None)
    if saving < MIN_NOISE_FLOOR:
        note = (f"not timed: the removal saves {saving:.1%} of the MACs, less than the {MIN_NOISE_FLOOR:.0%} a "
                f"measurement can tell from noise; {STATIC_RULE}")
        return verify_deferred(static.result), _section(exact, candidates, static, runtime, device, None, None, note)
    config = BenchConfig(batch_sizes=tuple(int(b) for b in batch_sizes), runtimes=(runtime,), device=device,
                         threads=threads, warmup=2, min_iters=10, min_time_s=min_time_s, max_time_s=max_time_s)
    timed = len(candidates) + 1  # and the A/A copy of dense
    say(f"choosing widths: timing {', '.join(c.label for c in candidates)} and an A/A copy of dense on {runtime} "
        f"{device} (batch {', '.join(map(str, config.batch_sizes))}, {threads} thread(s)): "
        f"up to {timed * len(config.batch_sizes) * max_time_s:.0f} s, or {config.min_iters} runs of each")
    bench = _time_candidates(candidates, config, exporter, opset, say)
    for c in candidates:
        comps = [cmp for cmp in bench.comparisons if cmp.variant == c.label]
        c.ratios = {int(b): 1.0 for b in config.batch_sizes} if c.label == "dense" else {
            cmp.batch: cmp.latency_ratio for cmp in comps}
        c.floor = max((cmp.noise_floor for cmp in comps), default=MIN_NOISE_FLOOR)
        c.notes = tuple(dict.fromkeys(note for cmp in comps for note in cmp.notes))
    unreliable = sorted({note for cmp in bench.comparisons for note in cmp.notes})
    if unreliable:
        more = f", and {len(unreliable) - 1} more reason(s) in report.json" if len(unreliable) > 1 else ""
        note = f"the timings were unreliable ({unreliable[0]}{more}); {STATIC_RULE}"
        return verify_deferred(static.result), _section(exact, candidates, static, runtime, device, bench, False,
                                                        note)
    best = _timed_choice(candidates, static)
    if best.label == "dense":
        log.warning("no removal pays on %s %s: every compact candidate ran slower than the dense model by more than "
                    "the noise floor, so the dense widths are kept (see the report's width policy)", runtime, device)
    return verify_deferred(best.result), _section(exact, candidates, best, runtime, device, bench, True, None)


def _time_candidates(candidates: Sequence[WidthCandidate], config: BenchConfig, exporter: str, opset: int,
                     say: Callable[[str], None]) -> Any:
    """Export each candidate (for onnxruntime) and time them all against dense, interleaved."""
    shape = tuple(calibration_inputs(candidates[0].result).shape[1:])
    runtime = get_runtime(config.runtimes[0])
    with tempfile.TemporaryDirectory(prefix="demp-widths-") as tmp:
        variants = []
        for c in candidates:
            model = c.result.model.eval()
            if runtime.takes_onnx:
                cpu_copy = copy.deepcopy(model).cpu()  # the candidate stays on its device for verification
                exporter = _export_for_timing(cpu_copy, shape, Path(tmp) / f"{c.label}.onnx", opset, exporter)
                variants.append(Variant(c.label, None, str(Path(tmp) / f"{c.label}.onnx"), c.macs))
            else:
                variants.append(Variant(c.label, model, None, c.macs))
        return benchmark(variants, shape, config, progress=lambda msg: say(f"timing {msg}"))


def _export_for_timing(model: torch.nn.Module, shape: tuple[int, ...], path: Path, opset: int, exporter: str) -> str:
    """Export one candidate for timing and return the exporter the next candidates should use.

    With ``--exporter auto`` the candidates go through the TorchScript exporter, 30x faster than the
    ``torch.export``-based one (0.06 s against 2 s for the MNIST CNN) and equivalent once onnxruntime has
    fused the graph; every candidate uses the same exporter, and the shipped file is exported (and timed
    again against dense) with the requested one. Where TorchScript cannot export the model, ``auto``.
    """
    if exporter == "auto":
        try:
            export_onnx(model, torch.zeros((2, *shape)), path, opset=opset, exporter="torchscript")
            return "torchscript"
        except DempError as exc:
            log.debug("the TorchScript exporter failed for the width candidates (%s); using auto", exc)
    export_onnx(model, torch.zeros((2, *shape)), path, opset=opset, exporter=exporter, overwrite=True)
    return exporter


def _timed_choice(candidates: Sequence[WidthCandidate], static: WidthCandidate) -> WidthCandidate:
    """From reliable timings: dense only when every compact candidate ran slower than dense by more than
    its noise floor; otherwise the candidate whose slowest batch was fastest, where candidates within the
    noise floor of it count as tied and the static rule's choice wins a tie."""
    compact = [c for c in candidates if c.label != "dense"]
    best = min(compact, key=lambda c: (c.worst, c.macs))
    if best.worst > 1 + best.floor:
        return next(c for c in candidates if c.label == "dense")
    tied = [c for c in compact if c.worst <= best.worst + c.floor]
    return static if static in tied else min(tied, key=lambda c: (c.macs, c.worst))


def _section(exact: CompressResult, candidates: Sequence[WidthCandidate], chosen: WidthCandidate, runtime: str,
             device: str, bench: Any, reliable: bool | None, note: str | None) -> dict[str, Any]:
    """The report's ``width_policy`` section."""
    section = {
        "policy": "auto", "runtime": runtime, "device": device,
        "threads": bench.config["threads"] if bench is not None else None,
        "batch_sizes": sorted(next(c for c in candidates if c.label == "dense").ratios), "chosen": chosen.label,
        "decided_by": "timing" if reliable else "static rule",
        "candidates": [c.to_dict(c is chosen) for c in candidates],
        "groups": _group_widths(exact, chosen.result), "reliable": reliable,
    }
    if note:
        section["note"] = note
    return section


def _group_widths(exact: CompressResult, chosen: CompressResult) -> list[dict[str, Any]]:
    """Per coupling group with dead channels: the width before, with exact removal, and as chosen."""
    chosen_after = {g["root"]: g["after"] for g in chosen.groups}
    return [{"root": g["root"], "before": g["before"], "exact": g["after"], "chosen": chosen_after.get(g["root"])}
            for g in exact.groups if g["removed"]]


def untimed_policy(exact: CompressResult, chosen: CompressResult) -> dict[str, Any]:
    """The ``width_policy`` section when nothing was timed: widths rounded to :data:`UNTIMED_MULTIPLE`."""
    return {"policy": "auto", "runtime": None, "device": None, "threads": None, "batch_sizes": [],
            "chosen": f"x{UNTIMED_MULTIPLE}", "candidates": [], "groups": _group_widths(exact, chosen),
            "reliable": None, "decided_by": "static rule",
            "note": f"not timed (no ONNX export): widths kept multiples of {UNTIMED_MULTIPLE}"}
