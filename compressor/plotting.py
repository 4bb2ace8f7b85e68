"""Headless matplotlib for every figure demp draws: the Agg backend and atomic PNG writing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .fileio import atomic_write_with

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    plt = pyplot()
    try:
        return atomic_write_with(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
