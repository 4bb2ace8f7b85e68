"""What the comparison tools share: mean and spread over seeds, and a ``main`` that prints a demp error
(bad data, a missing checkpoint) as one line with its exit code instead of a traceback."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_comparison(compare: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run ``compare(args)``; a :class:`~compressor.errors.DempError` becomes ``error: ...`` and its exit code."""
    from compressor.errors import DempError

    try:
        compare(args)
    except DempError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    print(f"wrote {Path(args.out) / 'results.md'}")
    return 0
