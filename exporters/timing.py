"""Running one model again and again and timing it: PyTorch (eager or compiled) and onnxruntime
runners, warm-up, interleaved round-robin turns, and the thread count. :mod:`exporters.latency` decides
what is measured and compares the results."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from compressor.errors import DempError, UsageError

from .ort import load_onnx_session

__all__ = ["ORT_RUNTIMES", "TORCH_RUNTIMES", "Interleaved", "Settled", "prepare", "measure_interleaved", "thread_count"]

ORT_RUNTIMES = ("onnxruntime", "onnxruntime-trt")
TORCH_RUNTIMES = ("torch", "torch-compile")


class _Runner:
    """Runs one variant at one batch size; ``run(n)`` returns n per-iteration times in ms."""

    provider: str | None = None

    def run(self, n: int) -> list[float]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class _TorchRunner(_Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor, device: str) -> None:
        self.model, self.x, self.cuda = model, x, device == "cuda"

    def run(self, n: int) -> list[float]:
        times = []
        with torch.inference_mode():
            if self.cuda:
                events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
                for start, end in events:
                    start.record()
                    self.model(self.x)
                    end.record()
                torch.cuda.synchronize()
                times = [start.elapsed_time(end) for start, end in events]
            else:
                for _ in range(n):
                    t0 = time.perf_counter()
                    self.model(self.x)
                    times.append((time.perf_counter() - t0) * 1e3)
        return times


class _OrtRunner(_Runner):
    def __init__(self, session: Any, x: np.ndarray, device: str) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        self.provider = session.get_providers()[0]
        self.binding = None
        self.feed = {self.input_name: x}
        if device == "cuda":
            import onnxruntime as ort

            self.binding = session.io_binding()
            value = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            self.binding.bind_ortvalue_input(self.input_name, value)
            for name in self.output_names:
                self.binding.bind_output(name, "cuda", 0)
            self._keep = value

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            if self.binding is not None:
                self.session.run_with_iobinding(self.binding)
                self.binding.synchronize_outputs()
            else:
                self.session.run(self.output_names, self.feed)
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def prepare(variants: Sequence[Any], runtime: str, device: str, threads: int) -> dict[str, dict[str, Any]]:
    """Per variant: the callable object to time (a model on the device, or an ORT session)."""
    prepared: dict[str, dict[str, Any]] = {}
    for v in variants:
        if runtime in TORCH_RUNTIMES:
            model = v.model
            assert model is not None
            if device == "cuda" or model.training or runtime == "torch-compile":
                model = copy.deepcopy(model)  # never move or switch the caller's module
            model = model.to(device).eval()
            if runtime == "torch-compile":
                model = torch.compile(model, dynamic=False)
            prepared[v.name] = {"model": model, "provider": None}
        else:
            providers = _providers_for(runtime, device)
            session = load_onnx_session(v.onnx_path, providers=providers, threads=threads)
            if session.get_providers()[0] != providers[0]:
                raise DempError(
                    f"onnxruntime could not start {providers[0]} for {v.onnx_path} (it fell back to "
                    f"{session.get_providers()[0]}); check the GPU libraries or use --device cpu"
                )
            prepared[v.name] = {"session": session, "provider": providers[0]}
    return prepared


def _providers_for(runtime: str, device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if runtime == "onnxruntime-trt":
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _input(batch: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=gen)


def _make_runner(entry: dict[str, Any], runtime: str, device: str, x: torch.Tensor) -> _Runner:
    if runtime in TORCH_RUNTIMES:
        return _TorchRunner(entry["model"], x.to(device), device)
    session = entry["session"]
    shape = session.get_inputs()[0].shape
    if shape and isinstance(shape[0], int) and shape[0] != x.shape[0]:
        raise UsageError(
            f"the ONNX model has a static batch size of {shape[0]} and cannot run batch {x.shape[0]}; "
            f"use --batch-sizes {shape[0]} or re-export with --dynamic-batch"
        )
    return _OrtRunner(session, x.numpy().astype(np.float32), device)


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
    wall_s: float


#: Decides from the per-turn medians so far (variant -> list) and the timing thread's CPU share so far
#: whether the measurement can stop.
Settled = Callable[[dict[str, list[float]], "float | None"], bool]


def measure_interleaved(variants: Sequence[Any], prepared: dict[str, dict[str, Any]], runtime: str,
                        config: Any, batch: int, shape: tuple[int, ...],
                        settled: Settled | None = None) -> Interleaved:
    """Warm up each variant, then run them round-robin, one turn each per round (the same number of
    iterations for all: at least ``chunk``, about ``chunk_s`` seconds of the slowest variant), until
    every variant has ``min_iters`` iterations and ``min_time_s`` seconds of measured time, and then
    until ``settled`` (when given) says the comparison is clear or a variant has ``time_cap_s``
    seconds of measured time."""
    x = _input(batch, shape, config.seed)
    runners = {v.name: _make_runner(prepared[v.name], runtime, config.device, x) for v in variants}
    out = Interleaved({v.name: [] for v in variants}, {v.name: [] for v in variants}, [], None, 0.0)
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
    out.wall_s = wall
    out.cpu_share = None if config.device == "cuda" or wall <= 0 else min(cpu / wall, 1.0)
    return out


def _warm_up(runner: _Runner, name: str, runtime: str, config: Any, batch: int) -> int:
    """Run the warm-up iterations; return the iterations per turn (about ``chunk_s`` seconds, at least
    ``chunk``, at most 1000)."""
    try:
        warm = runner.run(max(config.warmup, 1))
    except Exception as exc:  # compile / runtime failures of user models come in many types
        raise DempError(
            f"{runtime} failed to run {name} at batch {batch} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); drop {runtime} from --runtimes"
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


