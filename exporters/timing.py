"""Running one model again and again and timing it: warm-up, interleaved round-robin turns, and the
thread count; each runtime (:mod:`exporters.runtimes`) prepares and runs its variants.
:mod:`exporters.latency` decides what is measured and compares the results."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compressor.errors import DempError

from .runners import Runner
from .runtimes import Prepared, Runtime

__all__ = ["Interleaved", "Settled", "prepare", "measure_interleaved", "thread_count"]


def prepare(variants: Sequence[Any], runtime: Runtime, device: str, threads: int) -> dict[str, Prepared]:
    """Per variant name: the variant ready to run on ``runtime`` (a model on the device, or a session)."""
    return {v.name: runtime.prepare(v, device, threads) for v in variants}


def _input(batch: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=gen)


@dataclass
class Interleaved:
    """One interleaved measurement at one batch size.

    ``times``: every iteration's time (ms) per variant; ``turns``: the median of each round-robin turn per
    variant (turn ``t`` of every variant ran back to back, so they saw the same machine); ``order``: the
    variants' turns in the order they ran; ``cpu_share``: the CPU time the timing thread got over the wall
    time of the timed calls (near 1.0 on a quiet CPU; well below it when other processes took the core;
    None on CUDA, where the host thread waits for the GPU).
    """

    times: dict[str, list[float]]
    turns: dict[str, list[float]]
    order: list[str]
    cpu_share: float | None


#: Decides from the per-turn medians so far (variant -> list) and the timing thread's CPU share so far
#: whether the measurement can stop.
Settled = Callable[[dict[str, list[float]], "float | None"], bool]


def measure_interleaved(variants: Sequence[Any], prepared: dict[str, Prepared], runtime: Runtime,
                        config: Any, batch: int, shape: tuple[int, ...],
                        settled: Settled | None = None) -> Interleaved:
    """Warm up each variant, then run them round-robin, one turn each per round (the same number of
    iterations for all: at least ``chunk``, about ``chunk_s`` seconds of the slowest variant), until
    every variant has ``min_iters`` iterations and ``min_time_s`` seconds of measured time, and then
    until ``settled`` (when given) says the comparison is clear or a variant has ``time_cap_s``
    seconds of measured time."""
    x = _input(batch, shape, config.seed)
    runners = {v.name: runtime.runner(prepared[v.name], config.device, x) for v in variants}
    out = Interleaved({v.name: [] for v in variants}, {v.name: [] for v in variants}, [], None)
    cpu = wall = 0.0
    try:
        # equal turns for all variants: each round compares like with like
        per_turn = min(_warm_up(runners[v.name], v.name, runtime, config, batch) for v in variants)
        cap = getattr(config, "time_cap_s", None)

        def enough(name: str) -> bool:
            return len(out.times[name]) >= config.min_iters and sum(out.times[name]) / 1e3 >= config.min_time_s

        def capped() -> bool:
            return cap is not None and any(sum(out.times[v.name]) / 1e3 >= cap for v in variants)

        while True:
            share = cpu / wall if wall > 0 and config.device != "cuda" else None
            if all(enough(v.name) for v in variants) and (capped() or settled is None or settled(out.turns, share)):
                break
            for v in variants:
                c0, w0 = time.thread_time(), time.perf_counter()
                chunk = runners[v.name].run(per_turn)
                cpu, wall = cpu + time.thread_time() - c0, wall + time.perf_counter() - w0
                out.times[v.name].extend(chunk)
                out.turns[v.name].append(float(np.median(chunk)))
                out.order.append(v.name)
    finally:
        for runner in runners.values():
            runner.close()
    out.cpu_share = None if config.device == "cuda" or wall <= 0 else min(cpu / wall, 1.0)
    return out


def _warm_up(runner: Runner, name: str, runtime: Runtime, config: Any, batch: int) -> int:
    """Run the warm-up iterations; return the iterations per turn (about ``chunk_s`` seconds, at least
    ``chunk``, at most 1000)."""
    try:
        warm = runner.run(max(config.warmup, 1))
    except Exception as exc:  # compile / runtime failures of user models come in many types
        raise DempError(
            f"{runtime.name} failed to run {name} at batch {batch} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); drop {runtime.name} from --runtimes"
        ) from None
    per_iter_s = max(float(np.median(warm[-3:])) / 1e3, 1e-6)
    return int(min(1000, max(config.chunk, math.ceil(config.chunk_s / per_iter_s))))


@contextlib.contextmanager
def thread_count(threads: int | None) -> Iterator[int]:
    """Set PyTorch's intra-op threads for the benchmark (restored afterwards); yield the count used."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


