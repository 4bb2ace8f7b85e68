"""End-of-run training plots: live neurons, accuracy, and the lambda/sigma/lr schedules against the step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..plotting import pyplot, save_figure

__all__ = ["make_plots"]


def _num(r: dict[str, Any], key: str) -> float | None:
    v = r.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _points(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return sorted((r["step"], _num(r, key)) for r in records if _num(r, key) is not None)  # type: ignore[misc]


def _axes(ax: Any, ylabel: str, title: str) -> None:
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _live_neurons(interval: list[dict[str, Any]], epochs: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    pts = _points(interval + epochs, "live_total")
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:red")
    _axes(ax, "live neurons", "Live neurons during training")
    return save_figure(fig, path)


def _accuracy(interval: list[dict[str, Any]], epochs: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    train = _points(interval, "accuracy")
    if train:
        ax.plot([p[0] for p in train], [100 * p[1] for p in train], label="train (interval)", alpha=0.6)
    for key, label in (("val_accuracy", "validation (epoch)"), ("test_accuracy", "test (epoch)")):
        pts = _points(epochs, key)
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=label)
    _axes(ax, "accuracy (%)", "Accuracy")
    ax.legend()
    return save_figure(fig, path)


def _schedules(interval: list[dict[str, Any]], path: Path) -> Path:
    fig, axes = pyplot().subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(axes, ("lambda", "sigma", "lr"),
                              ("lambda (regularization)", "sigma (noise)", "learning rate"), strict=True):
        pts = _points(interval, key)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts])
        _axes(ax, "", label)
    return save_figure(fig, path)


def make_plots(records: list[dict[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """``live_neurons.png``, ``accuracy.png`` and ``schedules.png`` from the records of
    ``metrics.jsonl``; returns the files written (none without interval or epoch records)."""
    out_dir = Path(out_dir)
    interval = [r for r in records if r.get("kind") == "interval"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not interval and not epochs:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_live_neurons(interval, epochs, out_dir / "live_neurons.png"),
            _accuracy(interval, epochs, out_dir / "accuracy.png"), _schedules(interval, out_dir / "schedules.png")]
