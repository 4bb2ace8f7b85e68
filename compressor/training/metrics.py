"""What a training run shows and records: ``metrics.jsonl``, optional TensorBoard, end-of-run plots.

``metrics.jsonl`` has one JSON object per line, each with a ``kind``:

- ``interval`` every ``train.log_every`` steps: step, epoch, loss, accuracy (of those steps), lr,
  lambda, sigma, live neurons (total and per group), params, step_ms (mean wall time per step)
- ``removal``  each time DemP removes neurons: step, removed, live, total, seconds
- ``epoch``    after each epoch: train loss/accuracy, validation (``data.val_samples``) and test loss/accuracy, live neurons, params, MACs
  (counted analytically for Conv/Linear layers with forward hooks), epoch seconds
- ``final``    once at the end: the compact model's test accuracy, neurons/params/MACs before & after

Nothing here imports :mod:`exporters` (the library must not). MACs are multiply-accumulates: a
convolution contributes out_elements · in_channels/groups · kernel elements, a Linear layer
out_elements · in_features.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


# ---------------------------------------------------------------------------- counting


def count_params(model: nn.Module) -> int:
    """Number of parameters (elements) of the model."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Iterable[int], *, device: torch.device | str | None = None) -> int:
    """Multiply-accumulates of one forward pass on one sample, for Conv*d and Linear layers.

    Runs the model once in eval mode on zeros (no random numbers are drawn, so counting does not
    perturb a seeded run) and restores the previous train/eval mode.
    """
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    total = 0

    def conv_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kernel = math.prod(module.kernel_size)
        per_out = (module.in_channels // module.groups) * kernel
        total += int(output[0].numel()) * per_out

    def linear_hook(module: nn.Linear, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += int(output[0].numel()) * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((1, *tuple(input_shape)), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


# ---------------------------------------------------------------------------- the log


def _clean(value: Any) -> Any:
    """JSON-safe copy: tensors to numbers, NaN/inf to strings (JSON has no NaN)."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsLogger:
    """Appends records to ``metrics.jsonl`` (flushed per record, fsync'ed at checkpoints) and mirrors scalars to
    TensorBoard when the ``tensorboard`` package is importable.

    On resume, :meth:`truncate` cuts the file back to the byte offset stored in the checkpoint, so
    records written after the checkpoint (and then lost with the process) are not duplicated.
    """

    def __init__(self, out_dir: str | os.PathLike, *, tensorboard: bool = True, resume_offset: int | None = None):
        self.path = Path(out_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_offset is not None:
            self.truncate(resume_offset)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
            except ImportError:
                log.debug("tensorboard not installed; metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def truncate(self, offset: int) -> None:
        if self.path.exists():
            with open(self.path, "r+b") as fh:
                fh.truncate(min(offset, self.path.stat().st_size))

    def offset(self) -> int:
        """Byte size of the log after flushing (stored in checkpoints)."""
        self._fh.flush()
        return self._fh.tell()

    def write(self, record: dict[str, Any]) -> None:
        record = _clean(record)
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()  # visible to `tail -f` right away; fsync'ed at checkpoints
        if self._tb is not None:
            step = int(record.get("step", 0))
            kind = record.get("kind", "")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (or of ``DIR/metrics.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------- plots


def make_plots(records: list[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """End-of-run figures (matplotlib Agg): live neurons, accuracy, and the lambda/sigma/lr schedules
    against the optimizer step. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..fileio import atomic_write_with

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    interval = [r for r in records if r.get("kind") == "interval"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        written.append(path)

    def num(r: dict[str, Any], key: str) -> float | None:
        v = r.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    if interval or epochs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        pts = [(r["step"], num(r, "live_total")) for r in interval + epochs if num(r, "live_total") is not None]
        pts.sort()
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:red")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("live neurons")
        ax.set_title("Live neurons during training")
        ax.grid(alpha=0.3)
        save(fig, "live_neurons.png")

        fig, ax = plt.subplots(figsize=(6, 3.5))
        tr = [(r["step"], num(r, "accuracy")) for r in interval if num(r, "accuracy") is not None]
        if tr:
            ax.plot([p[0] for p in tr], [100 * p[1] for p in tr], label="train (interval)", alpha=0.6)
        for key, label in (("val_accuracy", "validation (epoch)"), ("test_accuracy", "test (epoch)")):
            pts = [(r["step"], num(r, key)) for r in epochs if num(r, key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "accuracy.png")

        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        for ax, key, label in zip(axes, ("lambda", "sigma", "lr"), ("lambda (regularization)", "sigma (noise)", "learning rate")):
            pts = [(r["step"], num(r, key)) for r in interval if num(r, key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts])
            ax.set_title(label)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
        save(fig, "schedules.png")
    return written
