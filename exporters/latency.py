"""Honest latency benchmarks: dense versus compact, interleaved, with percentiles and the environment.

For every (runtime, batch size) the variants (normally ``dense`` and ``pruned``) are measured
**round-robin in small chunks** — a few iterations of one, then of the other, and so on — so that
machine noise (other processes on a shared CPU, frequency scaling, thermal state) hits both alike.
Each variant gets a warm-up, then at least ``min_iters`` iterations **and** at least ``min_time_s``
seconds of measured time. Every iteration is timed on its own:

* ``torch`` / ``torch-compile`` on CPU: ``time.perf_counter`` around the call, in ``inference_mode``;
* ``torch`` / ``torch-compile`` on CUDA: CUDA events around each call, synchronized per chunk;
* ``onnxruntime``: an ``InferenceSession`` with the CPU execution provider (``--device cpu``), or
  the CUDA EP with IO binding (input and output stay on the GPU, ``--device cuda``);
* ``onnxruntime-trt``: the TensorRT EP (CUDA only, when installed).

Each runtime is one object of :mod:`exporters.runtimes` (what it takes, its devices and providers, how it
prepares and runs a variant); this module only asks them.

Results carry p50 / p90 / p99 / mean / std (milliseconds per batch), throughput (samples / s), the
thread count, and — when MACs are known — the latency ratio next to the MAC ratio and the
*speedup efficiency* = MAC ratio / latency ratio (1.0: latency fell exactly as much as the arithmetic).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.errors import UsageError

from .defaults import DEFAULT_THREADS, RUNTIMES  # re-exported: the CLI's parsers read them without torch
from .env import collect_environment
from .ort import available_providers
from .runtimes import REGISTRY, Prepared, Runtime, runtimes_named
from .timing import measure_interleaved, prepare, thread_count

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
SCHEDULE_KEEP = 24  # turns of the round-robin order kept in results (the pattern repeats)
#: A measurement is unreliable when p90 exceeds p50 by this factor (the machine was busy) ...
SPREAD_LIMIT = 1.5
#: ... when latency fell this much more than the arithmetic (speedup efficiency above it) ...
EFFICIENCY_LIMIT = 1.25
#: ... or when a larger batch ran faster than a smaller one by more than this share ...
BATCH_SCALING_SLACK = 0.05
#: ... or when the timing thread got less than this share of a CPU (other processes took the core).
BUSY_CPU_SHARE = 0.85
#: The second copy of the baseline timed in every measurement: how much two runs of the *same* model
#: differ there is the measurement's noise floor.
AA_VARIANT = "dense (A/A)"
#: The smallest noise floor: a difference below it is never called a speedup or a slowdown.
MIN_NOISE_FLOOR = 0.03
#: Adaptive stop: after ``MIN_TURNS`` turns each, a measurement stops once every variant's latency ratio
#: (mean of the per-turn log ratios, +- ``SETTLE_Z`` standard errors) lies clearly inside or outside the
#: noise floor, or is known to within ``SETTLE_PRECISION``.
MIN_TURNS = 5
SETTLE_Z = 2.0
SETTLE_PRECISION = 0.02
#: The timing effort of ``demp compress`` and ``demp train`` (per variant and batch size): at least
#: ``QUICK_MIN_S`` seconds and :data:`MIN_TURNS` turns, then until the verdicts settle, at most
#: ``QUICK_MAX_S`` seconds. A 0.1 ms model settles in a fraction of a second; ``demp bench`` measures
#: longer by default (``--min-time``).
QUICK_MIN_S = 0.05
QUICK_MAX_S = 0.5


@dataclass
class BenchConfig:
    """What to measure and for how long.

    ``threads`` is the intra-op thread count of both runtimes (:data:`DEFAULT_THREADS` by default);
    ``None`` keeps PyTorch's current count and gives onnxruntime the same. It is recorded either way.
    """

    batch_sizes: tuple[int, ...] = (1, 8)
    runtimes: tuple[str, ...] = ("torch", "onnxruntime")
    device: str = "cpu"
    threads: int | None = DEFAULT_THREADS
    warmup: int = 5
    min_iters: int = 20
    min_time_s: float = 1.0
    max_time_s: float | None = None  # per variant and batch; None: 4 x min_time_s (at least 1 s)
    noise_pair: bool = True  # time a second copy of the baseline: the A/A noise floor
    chunk: int = 3  # at least this many iterations per round-robin turn ...
    chunk_s: float = 0.02  # ... and about this much time per turn (so fast models do not thrash)
    seed: int = 0
    baseline: str = "dense"  # variant the others are compared with

    def validate(self) -> None:
        """Raise :class:`UsageError` for options that cannot work on this machine."""
        if self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if not self.runtimes:
            raise UsageError(f"no runtime given; choose from {', '.join(RUNTIMES)}")
        runtimes = runtimes_named(self.runtimes)
        if len(set(self.runtimes)) != len(self.runtimes):
            raise UsageError(f"runtime listed twice in {','.join(self.runtimes)}")
        if not self.batch_sizes:
            raise UsageError("no batch size given; pass e.g. --batch-sizes 1,8")
        for batch in self.batch_sizes:
            if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
                raise UsageError(f"batch size {batch!r} is invalid; batch sizes must be integers >= 1, e.g. "
                                 "--batch-sizes 1,8")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UsageError(f"--threads {self.threads!r} is invalid; give a positive integer")
        if self.warmup < 0 or self.min_iters < 1 or self.min_time_s < 0 or self.chunk < 1 or self.chunk_s < 0:
            raise UsageError("--warmup must be >= 0, --min-iters >= 1, --min-time >= 0")
        if self.max_time_s is not None and self.max_time_s < self.min_time_s:
            raise UsageError(f"--max-time {self.max_time_s} is below --min-time {self.min_time_s}")
        for runtime in runtimes:
            runtime.check_device(self.device)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA GPU is available to PyTorch; use --device cpu")
        needed = [(r, p) for r in runtimes if (p := r.needs_provider(self.device)) is not None]
        available = available_providers() if needed else []
        for runtime, provider in needed:
            if provider not in available:
                raise UsageError(runtime.missing_provider_message(provider))

    @property
    def time_cap_s(self) -> float:
        """The most seconds measured per variant and batch (the adaptive stop ends most sooner)."""
        return self.max_time_s if self.max_time_s is not None else max(4 * self.min_time_s, 1.0)


@dataclass
class Variant:
    """One model to time: an ``nn.Module`` for the torch runtimes, an ONNX file for onnxruntime."""

    name: str
    model: nn.Module | None = None
    onnx_path: str | None = None
    macs: int | None = None  # per sample; for the MAC ratio


@dataclass
class LatencyResult:
    """Timing of one (runtime, device, variant, batch)."""

    runtime: str
    device: str
    variant: str
    batch: int
    threads: int
    iters: int
    measured_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples per second at the median latency
    macs: int | None = None
    provider: str | None = None
    cpu_share: float | None = None  # CPU time of the timing thread / wall time (None on CUDA)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def busy(self) -> bool:
        """Other processes took the CPU while this was timed: the absolute figure is not this model's."""
        return self.cpu_share is not None and self.cpu_share < BUSY_CPU_SHARE


@dataclass
class Comparison:
    """A variant against the baseline at one (runtime, device, batch)."""

    runtime: str
    device: str
    batch: int
    variant: str
    baseline: str
    baseline_p50_ms: float
    variant_p50_ms: float
    latency_ratio: float  # variant p50 / baseline p50
    mac_ratio: float | None  # variant MACs / baseline MACs
    speedup: float  # baseline p50 / variant p50
    speedup_efficiency: float | None  # mac_ratio / latency_ratio (1.0 = latency fell as much as MACs)
    reliable: bool = True  # False: the measurement failed a check even when repeated (see ``notes``)
    notes: list[str] = field(default_factory=list)
    noise_floor: float = MIN_NOISE_FLOOR  # |A/A ratio - 1|, at least MIN_NOISE_FLOOR
    aa_ratio: float | None = None  # the baseline's second copy / the baseline (None: no A/A pair timed)

    @property
    def within_noise(self) -> bool:
        """The difference is no larger than two runs of the same model differ: no measurable difference."""
        return abs(self.latency_ratio - 1.0) <= self.noise_floor

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_noise": self.within_noise}


@dataclass
class BenchResult:
    results: list[LatencyResult]
    comparisons: list[Comparison]
    environment: dict[str, Any]
    config: dict[str, Any]
    schedule: list[dict[str, Any]] = field(default_factory=list)  # per (runtime, batch): variant order of turns

    @property
    def machine_load(self) -> dict[str, Any]:
        """Whether other processes took the CPU while timing (see :func:`machine_load`)."""
        return machine_load(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": dict(self.config),
            "environment": dict(self.environment),
            "latency": [r.to_dict() for r in self.results],
            "comparison": [c.to_dict() for c in self.comparisons],
            "schedule": list(self.schedule),
            "machine_load": self.machine_load,
        }


def machine_load(results: Sequence[LatencyResult]) -> dict[str, Any]:
    """``busy``: some measurement's timing thread got less than :data:`BUSY_CPU_SHARE` of a CPU, so its
    absolute latencies are not the model's; ``cpu_share``: the lowest share seen; ``loadavg``: the
    1-minute load average now, for the record (it lags too much to decide on)."""
    shares = [r.cpu_share for r in results if r.cpu_share is not None]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"busy": any(r.busy for r in results), "cpu_share": min(shares) if shares else None,
            "busy_below": BUSY_CPU_SHARE, "loadavg_1min": load, "cores": os.cpu_count()}


# ----------------------------------------------------------------------------------------- benchmark
def benchmark(variants: Sequence[Variant], input_shape: Sequence[int], config: BenchConfig | None = None,
              *, progress: Callable[[str], None] | None = None) -> BenchResult:
    """Time every variant for every runtime and batch size in ``config``, interleaved.

    ``input_shape`` is one sample's shape (no batch dimension). Variants need a ``model`` for the
    torch runtimes and an ``onnx_path`` for the onnxruntime ones; a variant lacking what a runtime
    needs is skipped for that runtime (with a log line), and it is an error if no variant is left.
    With ``config.noise_pair`` a second copy of the baseline (:data:`AA_VARIANT`, its own session) is
    timed alongside: how much it differs from the baseline is each comparison's noise floor.
    """
    config = config or BenchConfig()
    config.validate()
    if not variants:
        raise UsageError("nothing to benchmark: no model variants given")
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or AA_VARIANT in names:
        raise UsageError(f"variant names must be unique and not {AA_VARIANT!r}, got {names}")
    shape = tuple(int(d) for d in input_shape)
    if any(d < 1 for d in shape):
        raise UsageError(f"input shape {shape} must be positive; pass --input-size / --input-shape")

    results: list[LatencyResult] = []
    schedule: list[dict[str, Any]] = []
    with thread_count(config.threads) as threads:
        environment = collect_environment(threads=threads)
        for runtime in runtimes_named(config.runtimes):
            usable = _usable(variants, runtime, config)
            prepared = prepare(usable, runtime, config.device, threads)
            try:
                results += _measure_runtime(usable, prepared, runtime, config, shape, threads, schedule, progress)
            finally:
                prepared.clear()
    comparisons = compare(results, variants, baseline=config.baseline)
    for c in comparisons:
        c.notes = unreliable_reasons(results, c)
        c.reliable = not c.notes
    cfg = asdict(config)
    cfg["batch_sizes"] = [int(b) for b in config.batch_sizes]
    cfg["runtimes"] = list(config.runtimes)
    cfg["threads"] = threads
    cfg["max_time_s"] = config.time_cap_s
    return BenchResult(results=results, comparisons=comparisons, environment=environment, config=cfg,
                       schedule=schedule)


def _usable(variants: Sequence[Variant], runtime: Runtime, config: BenchConfig) -> list[Variant]:
    """The variants ``runtime`` can run, plus the A/A copy of the baseline when asked for."""
    usable = [v for v in variants if runtime.supports(v)]
    for v in variants:
        if v not in usable:
            log.debug("skipping %s for %s: it has no %s", v.name, runtime.name, runtime.takes)
    if not usable:
        onnx_runtime = next(r.name for r in REGISTRY.values() if r.takes_onnx)
        raise UsageError(
            f"runtime {runtime.name} has nothing to run: "
            + (f"give a model with an {runtime.takes}" if runtime.takes_onnx
               else f"an .onnx file can only be timed with --runtimes {onnx_runtime}"))
    base = next((v for v in usable if v.name == config.baseline), None)
    if config.noise_pair and base is not None and len(usable) > 1:
        usable.append(dataclasses.replace(base, name=AA_VARIANT))
    return usable


def _measure_runtime(variants: Sequence[Variant], prepared: dict[str, Prepared], runtime: Runtime,
                     config: BenchConfig, shape: tuple[int, ...], threads: int, schedule: list[dict[str, Any]],
                     progress: Callable[[str], None] | None) -> list[LatencyResult]:
    """Every batch size of one runtime; a batch whose measurement fails a check other than a busy
    machine is measured once more (a busy moment usually passes; a loaded machine does not, and is
    reported instead)."""
    by_batch: dict[int, list[LatencyResult]] = {}
    settled = partial(verdicts_settled, baseline=config.baseline) if config.baseline in prepared else None

    def measure(batch: int, again: bool) -> None:
        if progress:
            progress(f"{runtime.name} {config.device} batch {batch}: {', '.join(v.name for v in variants)}"
                     + (" (again: the first measurement was unstable)" if again else ""))
        run = measure_interleaved(variants, prepared, runtime, config, batch, shape, settled=settled)
        schedule.append({"runtime": runtime.name, "batch": batch, "turns": len(run.order),
                         "order": run.order[:SCHEDULE_KEEP], "cpu_share": run.cpu_share})
        by_batch[batch] = [_summarize(run.times[v.name], v, runtime.name, config.device, batch, threads,
                                      prepared[v.name].provider, run.cpu_share) for v in variants]

    for batch in config.batch_sizes:
        measure(int(batch), False)
    flat = [r for rs in by_batch.values() for r in rs]
    repeat = sorted({c.batch for c in compare(flat, variants, baseline=config.baseline)
                    if unreliable_reasons(flat, c) and not any(r.busy for r in by_batch[c.batch])})
    for batch in repeat:
        measure(batch, True)
    return [r for batch in config.batch_sizes for r in by_batch[int(batch)]]


def verdicts_settled(turns: dict[str, list[float]], cpu_share: float | None, *, baseline: str) -> bool:
    """True once the measurement can stop: after :data:`MIN_TURNS` turns, every variant's ratio to the
    baseline (per-turn log ratios, mean +- :data:`SETTLE_Z` standard errors) is clearly inside or
    clearly outside the noise floor, or known to within :data:`SETTLE_PRECISION`; the A/A pair itself
    must be known to within half the floor. A busy machine (``cpu_share`` below :data:`BUSY_CPU_SHARE`)
    stops it too: the measurement will be marked unreliable whatever more time it gets."""
    n = min(len(t) for t in turns.values())
    if n < MIN_TURNS:
        return False
    if cpu_share is not None and cpu_share < BUSY_CPU_SHARE:
        return True
    logs = {name: np.log(np.asarray(t[:n], dtype=np.float64).clip(min=1e-9)) for name, t in turns.items()}

    def spread(name: str) -> tuple[float, float]:
        diff = logs[name] - logs[baseline]
        return abs(float(diff.mean())), SETTLE_Z * float(diff.std(ddof=1)) / math.sqrt(n)

    floor = MIN_NOISE_FLOOR
    if AA_VARIANT in turns:
        aa, aa_err = spread(AA_VARIANT)
        floor = max(floor, aa)
        if aa_err > max(floor / 2, SETTLE_PRECISION):
            return False
    for name in turns:
        if name in (baseline, AA_VARIANT):
            continue
        m, err = spread(name)
        if not (m - err > floor or m + err < floor or err < SETTLE_PRECISION):
            return False
    return True


def unreliable_reasons(results: Sequence[LatencyResult], comparison: Comparison) -> list[str]:
    """Why a comparison cannot be trusted (empty when it can): a busy machine (the timing thread got
    too little CPU, or p90 far above p50), a latency that fell more than the arithmetic, or a larger
    batch that ran faster than a smaller one."""
    out = []
    same = [r for r in results if (r.runtime, r.device) == (comparison.runtime, comparison.device)]
    pair = [r for r in same if r.batch == comparison.batch and r.variant in (comparison.variant, comparison.baseline)]
    busy = [r.cpu_share for r in pair if r.busy and r.cpu_share is not None]
    if busy:
        out.append(f"the machine was busy (the timing thread got {min(busy):.0%} of a CPU)")
    for r in pair:
        if not busy and r.p50_ms > 0 and r.p90_ms / r.p50_ms > SPREAD_LIMIT:
            out.append(f"{r.variant}: p90 is {r.p90_ms / r.p50_ms:.1f}x p50 (the machine was busy)")
    eff = comparison.speedup_efficiency
    if eff is not None and eff > EFFICIENCY_LIMIT and not comparison.within_noise:
        out.append(f"latency fell {eff:.2f}x more than the MACs did, which the arithmetic cannot explain")
    for name in (comparison.variant, comparison.baseline):
        this = next((r for r in same if r.variant == name and r.batch == comparison.batch), None)
        for other in same:
            if this is not None and other.variant == name and other.batch < this.batch and \
                    this.p50_ms < other.p50_ms * (1 - BATCH_SCALING_SLACK):
                out.append(f"{name}: batch {this.batch} ran faster than batch {other.batch}")
    return out


def compare(results: Sequence[LatencyResult], variants: Sequence[Variant], *,
            baseline: str = "dense") -> list[Comparison]:
    """Latency ratio, MAC ratio and speedup efficiency of each variant against ``baseline``, with the
    noise floor of the same measurement (from the A/A pair when it was timed)."""
    macs = {v.name: v.macs for v in variants}
    by_key = {(r.runtime, r.device, r.batch, r.variant): r for r in results}
    out = []
    for r in results:
        if r.variant in (baseline, AA_VARIANT):
            continue
        base = by_key.get((r.runtime, r.device, r.batch, baseline))
        if base is None:
            continue
        latency_ratio = r.p50_ms / base.p50_ms if base.p50_ms > 0 else float("nan")
        mac_ratio = None
        if (variant_macs := macs.get(r.variant)) and (baseline_macs := macs.get(baseline)):
            mac_ratio = variant_macs / baseline_macs
        efficiency = mac_ratio / latency_ratio if mac_ratio is not None and latency_ratio > 0 else None
        aa = by_key.get((r.runtime, r.device, r.batch, AA_VARIANT))
        aa_ratio = aa.p50_ms / base.p50_ms if aa is not None and base.p50_ms > 0 else None
        out.append(Comparison(
            runtime=r.runtime, device=r.device, batch=r.batch, variant=r.variant, baseline=baseline,
            baseline_p50_ms=base.p50_ms, variant_p50_ms=r.p50_ms, latency_ratio=latency_ratio,
            mac_ratio=mac_ratio, speedup=(base.p50_ms / r.p50_ms) if r.p50_ms > 0 else float("nan"),
            speedup_efficiency=efficiency, aa_ratio=aa_ratio,
            noise_floor=max(MIN_NOISE_FLOOR, abs(aa_ratio - 1.0)) if aa_ratio is not None else MIN_NOISE_FLOOR,
        ))
    return out


def _summarize(times_ms: list[float], variant: Variant, runtime: str, device: str, batch: int, threads: int,
               provider: str | None, cpu_share: float | None = None) -> LatencyResult:
    arr = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    return LatencyResult(
        runtime=runtime, device=device, variant=variant.name, batch=batch, threads=threads, iters=int(arr.size),
        measured_s=float(arr.sum() / 1e3), p50_ms=p50, p90_ms=p90, p99_ms=p99, mean_ms=float(arr.mean()),
        std_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0, min_ms=float(arr.min()), max_ms=float(arr.max()),
        throughput=batch / (p50 / 1e3) if p50 > 0 else float("inf"), macs=variant.macs, provider=provider,
        cpu_share=cpu_share,
    )


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); anything else is a UsageError naming the bad item."""
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise UsageError(f"batch size {item!r} is not an integer; use e.g. --batch-sizes 1,8,32") from None
        if value < 1:
            raise UsageError(f"batch size {value} is invalid; batch sizes must be >= 1, e.g. --batch-sizes 1,8")
        out.append(value)
    if not out:
        raise UsageError("no batch size given; use e.g. --batch-sizes 1,8,32")
    return tuple(out)


def parse_runtimes(text: str) -> tuple[str, ...]:
    """``"torch,onnxruntime"`` -> ("torch", "onnxruntime"), validating each name."""
    out = tuple(item.strip() for item in str(text).split(",") if item.strip())
    runtimes_named(out)  # each name known
    if not out:
        raise UsageError(f"no runtime given; valid runtimes: {', '.join(RUNTIMES)}")
    return out


def format_table(result: BenchResult | dict[str, Any]) -> str:
    """A compact text table of a benchmark result (latency per variant, then the comparisons)."""
    data = result.to_dict() if isinstance(result, BenchResult) else result
    lines = [f"{'runtime':<16} {'dev':<4} {'batch':>5} {'variant':<11} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
             f"{'samples/s':>10} {'thr':>3} {'cpu':>4}"]
    for r in data.get("latency", []):
        cpu = "-" if r.get("cpu_share") is None else f"{r['cpu_share']:.0%}"
        lines.append(f"{r['runtime']:<16} {r['device']:<4} {r['batch']:>5} {r['variant']:<11} {r['p50_ms']:>9.3f} "
                     f"{r['p90_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['throughput']:>10.1f} {r['threads']:>3} {cpu:>4}")
    comps = data.get("comparison", [])
    if comps:
        lines.append("")
        lines.append(f"{'runtime':<16} {'dev':<4} {'batch':>5} {'variant':<11} {'latency ratio':>13} {'MAC ratio':>9} "
                     f"{'speedup':>7} {'efficiency':>10} {'floor':>6}")
        for c in comps:
            mac = "-" if c.get("mac_ratio") is None else f"{c['mac_ratio']:.3f}"
            eff = "-" if c.get("speedup_efficiency") is None else f"{c['speedup_efficiency']:.2f}"
            floor = "-" if c.get("noise_floor") is None else f"+-{c['noise_floor']:.0%}"
            lines.append(f"{c['runtime']:<16} {c['device']:<4} {c['batch']:>5} {c['variant']:<11} "
                         f"{c['latency_ratio']:>13.3f} {mac:>9} "
                         f"{c['speedup']:>6.2f}x {eff:>10} {floor:>6}"
                         + ("" if c.get("reliable", True) else "  UNRELIABLE"))
            for note in c.get("notes") or []:
                lines.append(f"    unreliable: {note}")
    return "\n".join(lines)

