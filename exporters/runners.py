"""The loops that time one prepared variant: PyTorch calls (``perf_counter`` on CPU, CUDA events on a
GPU) and onnxruntime sessions (IO binding on CUDA). :mod:`.runtimes` creates them when something is timed,
so that its registry stays importable without torch."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Runner", "TorchRunner", "OrtRunner"]


class Runner:
    """Runs one prepared variant at one batch size; ``run(n)`` returns n per-iteration times in ms."""

    def run(self, n: int) -> list[float]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release what the runner holds (nothing by default)."""


class TorchRunner(Runner):
    """``perf_counter`` around each call on CPU; CUDA events around each call, synchronized per turn."""

    def __init__(self, model: nn.Module, x: torch.Tensor, device: str) -> None:
        self.model, self.x, self.cuda = model, x, device == "cuda"

    def run(self, n: int) -> list[float]:
        times = []
        with torch.inference_mode():
            if self.cuda:
                events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                          for _ in range(n)]
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


class OrtRunner(Runner):
    """An onnxruntime session; on CUDA with IO binding (input and outputs stay on the GPU)."""

    def __init__(self, session: Any, x: np.ndarray, device: str) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
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
