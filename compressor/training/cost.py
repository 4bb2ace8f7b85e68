"""What training cost: MACs integrated over the steps as the model shrinks, and step wall-clock.

DemP removes neurons *during* training, so later steps are cheaper (paper ``000``'s "training
FLOPs"). :class:`TrainingCost` adds, for every optimizer step, ``FORWARD_BACKWARD`` times the model's
forward MACs per sample (the count every report uses) times the samples of the step, next to what the
same steps cost on the dense model; and it times the steps.

Wall-clock against dense training is an *estimate* that needs no second run: the median time of the
optimizer steps taken while the model was still dense (the first ``WARMUP_STEPS`` skipped, at most
``MAX_DENSE_SAMPLES`` kept), times the number of steps. The steps before the first removal run the
same model and data loading as dense training; DemP's own per-step bookkeeping is a few percent
(``BENCHMARKS.md`` §4). Step times include data loading and the removals themselves, not evaluation
or checkpoints. It is noisy on a shared machine: a plain MNIST run without removals (true ratio 1)
read 1.11x, because its first steps ran slower than its later ones.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainingCost", "FORWARD_BACKWARD"]

#: Training MACs of one sample = this x forward MACs (the backward pass costs about twice the forward).
FORWARD_BACKWARD = 3
WARMUP_STEPS = 5
MAX_DENSE_SAMPLES = 200


@dataclass
class TrainingCost:
    """Accumulated over the run (and saved in its checkpoints, so a resumed run keeps counting)."""

    macs: float = 0.0  # training MACs of the steps taken (this rank's samples)
    dense_macs: float = 0.0  # the same steps on the dense model
    step_seconds: float = 0.0
    steps: int = 0
    dense_step_times: list[float] = field(default_factory=list)
    dense_steps_seen: int = 0

    def add_step(self, macs_per_sample: int | None, dense_macs_per_sample: int | None, samples: int,
                 seconds: float, *, dense: bool) -> None:
        """One optimizer step of ``samples`` samples on a model of ``macs_per_sample`` forward MACs."""
        if macs_per_sample is not None and dense_macs_per_sample is not None:
            self.macs += FORWARD_BACKWARD * macs_per_sample * samples
            self.dense_macs += FORWARD_BACKWARD * dense_macs_per_sample * samples
        self.step_seconds += seconds
        self.steps += 1
        if dense:
            self.dense_steps_seen += 1
            if self.dense_steps_seen > WARMUP_STEPS and len(self.dense_step_times) < MAX_DENSE_SAMPLES:
                self.dense_step_times.append(float(seconds))

    def summary(self, world_size: int = 1) -> dict[str, Any]:
        """The ``train_*`` fields of the summary (MACs over all ranks)."""
        est = statistics.median(self.dense_step_times) * self.steps if self.dense_step_times else None
        return {
            "train_macs": int(self.macs * world_size) if self.dense_macs else None,
            "train_macs_dense": int(self.dense_macs * world_size) if self.dense_macs else None,
            "train_macs_ratio": self.macs / self.dense_macs if self.dense_macs else None,
            "train_step_seconds": self.step_seconds,
            "dense_step_seconds_est": est,
            "train_speedup_est": est / self.step_seconds if est and self.step_seconds > 0 else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "dense_macs": self.dense_macs, "step_seconds": self.step_seconds,
                "steps": self.steps, "dense_step_times": list(self.dense_step_times),
                "dense_steps_seen": self.dense_steps_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, list(value) if isinstance(value, list) else value)
