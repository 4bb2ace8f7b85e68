"""The width policy of ``demp compress --round-to auto``: measure, do not guess.

Removing channels only pays when the runtime's kernels run the new widths fast: odd widths (31, 60,
83) can make a compact model *slower* than the dense one in ONNX Runtime, whose CPU convolutions work
in blocks of 8 or 16 channels. The policy therefore builds the candidates the lossless decision allows
— the exact widths, the widths rounded up to multiples of 8, 16 and 32 (keeping a few more dead
channels, never a live one), and the dense model itself — exports each with the same exporter, times
them interleaved on the runtime the report measures (one thread unless told otherwise, at every batch
size of the report), and keeps the candidate whose slowest batch is fastest relative to dense. The
dense model counts as a candidate with ratio 1, so the shipped model is never slower than the dense
one on the runtime it was measured on; when no removal pays, nothing is removed and the report says
so loudly.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from compressor.compression import CompressResult
from compressor.measure import count_macs

from .latency import DEFAULT_THREADS, BenchConfig, Variant, benchmark
from .onnx import export_onnx

log = logging.getLogger(__name__)

__all__ = ["MULTIPLES", "WidthCandidate", "choose_widths", "untimed_policy", "NO_REMOVAL", "UNTIMED_MULTIPLE"]

#: Width roundings tried besides the exact widths.
MULTIPLES = (8, 16, 32)
#: A rounding above every width: the dense candidate (no channel removed).
NO_REMOVAL = 1 << 30
#: The rounding used when nothing can be timed (no export): kernel-friendly widths, not measured.
UNTIMED_MULTIPLE = 8


@dataclass
class WidthCandidate:
    """One way to remove the dead channels, and how it ran against the dense model."""

    label: str  # "exact", "x8", "x16", "x32" or "dense"
    round_to: int
    result: CompressResult
    macs: int
    ratios: dict[int, float]  # batch -> p50 / dense p50 (1.0 for dense)

    @property
    def worst(self) -> float:
        return max(self.ratios.values()) if self.ratios else float("inf")

    def to_dict(self, chosen: bool) -> dict[str, Any]:
        return {"label": self.label, "round_to": None if self.round_to == NO_REMOVAL else self.round_to,
                "removed": self.result.removed, "macs": self.macs,
                "latency_ratio": {str(b): r for b, r in sorted(self.ratios.items())}, "worst": self.worst,
                "chosen": chosen}


def _candidates(exact: CompressResult, rewidth: Callable[[int], CompressResult]) -> list[WidthCandidate]:
    """The exact widths, each distinct rounding, and dense; equal plans are built once, and a rounding that
    removes nothing is the dense candidate."""
    shape = tuple(exact.calib_inputs.shape[1:])
    out: dict[str, WidthCandidate] = {}
    for label, round_to in [("exact", 1), *((f"x{m}", m) for m in MULTIPLES), ("dense", NO_REMOVAL)]:
        result = exact if round_to == 1 else rewidth(round_to)
        if result.removed == 0:
            label, round_to = "dense", NO_REMOVAL
        key = result.plan.removal_hash()
        if key in out:
            log.debug("width candidate %s equals %s", label, out[key].label)
            continue
        out[key] = WidthCandidate(label, round_to, result, count_macs(result.model, shape).total_macs, {})
    return list(out.values())


def choose_widths(exact: CompressResult, rewidth: Callable[[int], CompressResult], *, batch_sizes: Sequence[int],
                  threads: int | None = DEFAULT_THREADS, runtime: str = "onnxruntime", device: str = "cpu",
                  exporter: str = "auto", opset: int = 18, min_time_s: float = 0.5,
                  progress: Callable[[str], None] | None = None) -> tuple[CompressResult, dict[str, Any]]:
    """The fastest candidate (see the module docstring) and the ``width_policy`` section of the report."""
    candidates = _candidates(exact, rewidth)
    shape = tuple(exact.calib_inputs.shape[1:])
    config = BenchConfig(batch_sizes=tuple(int(b) for b in batch_sizes), runtimes=(runtime,), device=device,
                         threads=threads, warmup=2, min_iters=10, min_time_s=min_time_s)
    say = progress or (lambda _msg: None)
    say(f"choosing widths: timing {', '.join(c.label for c in candidates)} on {runtime} {device} "
        f"(batch {', '.join(map(str, config.batch_sizes))}, {threads} thread(s))...")
    with tempfile.TemporaryDirectory(prefix="demp-widths-") as tmp:
        variants = []
        for c in candidates:
            model = c.result.model.eval()
            if runtime.startswith("onnxruntime"):
                cpu_copy = copy.deepcopy(model).cpu()  # the candidate stays on its device for verification
                path = export_onnx(cpu_copy, torch.zeros((2, *shape)), Path(tmp) / f"{c.label}.onnx", opset=opset,
                                   exporter=exporter).path
                variants.append(Variant(c.label, None, path, c.macs))
            else:
                variants.append(Variant(c.label, model, None, c.macs))
        bench = benchmark(variants, shape, config, progress=lambda msg: say(f"timing {msg}"))
    for c in candidates:
        c.ratios = {int(b): 1.0 for b in config.batch_sizes} if c.label == "dense" else {
            cmp.batch: cmp.latency_ratio for cmp in bench.comparisons if cmp.variant == c.label}
    best = min(candidates, key=lambda c: (c.worst, c.macs))  # dense is 1.0: a compact one must be faster
    if best.label == "dense":
        log.warning("no removal pays on %s %s: every compact candidate ran slower than the dense model, so the "
                    "dense widths are kept (see the report's width policy)", runtime, device)
    section = {
        "policy": "auto", "runtime": runtime, "device": device, "threads": bench.config["threads"],
        "batch_sizes": list(config.batch_sizes), "chosen": best.label,
        "candidates": [c.to_dict(c is best) for c in candidates],
        "groups": _group_widths(exact, best.result),
        "reliable": all(cmp.reliable for cmp in bench.comparisons),
    }
    return best.result, section


def _group_widths(exact: CompressResult, chosen: CompressResult) -> list[dict[str, Any]]:
    """Per coupling group with dead channels: the width before, with exact removal, and as chosen."""
    chosen_after = {g["root"]: g["after"] for g in chosen.groups}
    return [{"root": g["root"], "before": g["before"], "exact": g["after"], "chosen": chosen_after.get(g["root"])}
            for g in exact.groups if g["removed"]]


def untimed_policy(exact: CompressResult, chosen: CompressResult) -> dict[str, Any]:
    """The ``width_policy`` section when nothing was timed: widths rounded to :data:`UNTIMED_MULTIPLE`."""
    return {"policy": "auto", "runtime": None, "device": None, "threads": None, "batch_sizes": [],
            "chosen": f"x{UNTIMED_MULTIPLE}", "candidates": [], "groups": _group_widths(exact, chosen),
            "reliable": None, "note": f"not timed (no ONNX export): widths kept multiples of {UNTIMED_MULTIPLE}"}
