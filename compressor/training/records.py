"""The records a run writes to ``metrics.jsonl``, and the running sums they are made of.

Every figure comes from one definition: neuron counts from the plan owner, parameters and MACs from
:mod:`compressor.counting`, and each method's own fields from its ``metrics(step)``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .methods import RemovalEvent
from .run import Run

__all__ = ["LossMeter", "method_fields", "interval_record", "epoch_record", "event_record", "live_fields"]


class LossMeter:
    """Loss, correct predictions and samples accumulated over steps, as device tensors (one host sync
    per read on CUDA). ``state(prefix)`` / ``from_state`` keep it across a mid-epoch checkpoint."""

    def __init__(self, device: torch.device, state: dict[str, Any] | None = None, prefix: str = "") -> None:
        state = state or {}
        self.loss = torch.tensor(float(state.get(f"{prefix}loss", 0.0)), dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(state.get(f"{prefix}correct", 0)), dtype=torch.int64, device=device)
        self.seen = int(state.get(f"{prefix}seen", 0))
        self.steps = int(state.get(f"{prefix}steps", 0))
        self.seconds = 0.0

    @torch.no_grad()
    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int, seconds: float) -> None:
        self.loss += loss.detach().double() * n
        self.correct += correct
        self.seen += n
        self.steps += 1
        self.seconds += seconds

    def mean_loss(self) -> float:
        return self.loss.item() / max(self.seen, 1)

    def accuracy(self) -> float:
        return self.correct.item() / max(self.seen, 1)

    def reset(self) -> None:
        self.loss.zero_()
        self.correct.zero_()
        self.seen = self.steps = 0
        self.seconds = 0.0

    def state(self, prefix: str, *, steps: bool) -> dict[str, Any]:
        out: dict[str, Any] = {f"{prefix}loss": self.loss.item(), f"{prefix}correct": int(self.correct.item()),
                               f"{prefix}seen": self.seen}
        if steps:
            out[f"{prefix}steps"] = self.steps
        return out


def method_fields(run: Run, record: dict[str, Any], step: int) -> dict[str, Any]:
    """Add every method's ``metrics(step)`` fields the record does not already have."""
    for m in run.methods:
        for key, value in m.metrics(step).items():
            if key in ("neurons_total", "neuron_sparsity"):
                continue  # the run's own counts
            record.setdefault(key, value)
    return record


def live_fields(run: Run) -> dict[str, Any]:
    """Live neurons now (the plan owner's last measurement) over the original model's neurons."""
    live, total = run.live()
    return {"live_total": live, "neurons_total": total,
            "live_fraction": (live / total) if live is not None and total else None}


def interval_record(run: Run, *, epoch: int, step: int, lr: float, meter: LossMeter) -> dict[str, Any]:
    """The ``interval`` record: the mean loss and accuracy of the steps since the last one."""
    rec: dict[str, Any] = {"kind": "interval", "epoch": epoch + 1, "step": step, "loss": meter.mean_loss(),
                           "accuracy": meter.accuracy(), "lr": lr, **live_fields(run), "params": run.params(),
                           "step_ms": 1000 * meter.seconds / max(meter.steps, 1)}
    if run.owner is not None:
        rec["live_per_layer"] = run.live_per_layer()
    return method_fields(run, rec, step)


def epoch_record(run: Run, *, epoch: int, step: int, train: LossMeter, val: tuple[float | None, float | None],
                 test: tuple[float | None, float | None], started: float) -> dict[str, Any]:
    """The ``epoch`` record: training, validation and test figures and the model's size after the epoch."""
    rec = {
        "kind": "epoch", "epoch": epoch + 1, "step": step,
        "train_loss": train.mean_loss(), "train_accuracy": train.accuracy(),
        "val_loss": val[0], "val_accuracy": val[1], "test_loss": test[0], "test_accuracy": test[1],
        "lr": run.schedule.cfg.lr * run.schedule.last_factor, **live_fields(run),
        "live_per_layer": run.live_per_layer(), "params": run.params(), "macs": run.macs(),
        "epoch_seconds": time.perf_counter() - started,
    }
    return method_fields(run, rec, step)


#: Fields of the records that measure wall-clock: they differ between otherwise identical runs (a resumed
#: run reproduces every other field exactly).
TIMING_FIELDS = ("step_ms", "epoch_seconds", "seconds", "train_seconds", "train_step_seconds",
                 "dense_step_seconds_est", "train_speedup_est")


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` without their :data:`TIMING_FIELDS`."""
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def event_record(event: RemovalEvent, epoch: int | None = None) -> dict[str, Any]:
    """The ``removal`` record of one measurement or removal."""
    rec = {"kind": "removal", **({"epoch": epoch + 1} if epoch is not None else {}), **event.to_dict()}
    rec.pop("groups", None)
    return rec
