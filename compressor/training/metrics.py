"""What a training run records: ``metrics.jsonl`` (and TensorBoard when it is installed).

``metrics.jsonl`` has one JSON object per line, each with a ``kind``:

- ``interval`` every ``train.log_every`` steps: step, epoch, loss, accuracy (of those steps), lr,
  lambda, sigma, live neurons (total and per group), params, step_ms (mean wall time per step)
- ``removal``  each time a method measures death or removes neurons: step, removed, live, total, seconds
- ``epoch``    after each epoch: train loss/accuracy, validation (``data.val_samples``) and test
  loss/accuracy, live neurons, params, MACs (:func:`compressor.counting.count_macs`, the same counter as
  ``report.json``), epoch seconds
- ``final``    once at the end: the compact model's test accuracy, neurons/params/MACs before & after

NaN and inf are written as the strings ``"nan"`` / ``"inf"`` (JSON has no NaN). The end-of-run plots
are :mod:`.plots`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..fileio import jsonable

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class NullMetrics:
    """The metrics logger of ranks other than 0 (only rank 0 writes ``metrics.jsonl``)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def sync(self) -> None:
        pass

    def offset(self) -> int:
        return 0

    def close(self) -> None:
        pass


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
                from torch.utils.tensorboard import (
                    SummaryWriter,  # needs the optional tensorboard package
                )
            except ImportError:
                log.debug("tensorboard not installed; metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / TENSORBOARD_DIR))

    def truncate(self, offset: int) -> None:
        if self.path.exists():
            with open(self.path, "r+b") as fh:
                fh.truncate(min(offset, self.path.stat().st_size))

    def offset(self) -> int:
        """Byte size of the log after flushing (stored in checkpoints)."""
        self._fh.flush()
        return self._fh.tell()

    def write(self, record: dict[str, Any]) -> None:
        record = jsonable(record, nonfinite=str)
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
