"""Schedules for DemP's regularization strength λ_t and noise level σ_t.

All schedules are plain functions of the step index ``t`` (0-based: ``t`` is the number of optimizer
steps already taken) and a *span* ``span_steps`` S — the number of steps over which the schedule
runs (DemP's default: 0.85 of training, ``docs/demp.md``). They return Python floats, so calling one
per step costs nothing measurable.

- :func:`one_cycle` — optax's ``cosine_onecycle_schedule``, which the DemP authors use for λ and σ
  (paper 002): cosine warm-up from ``peak/div_factor`` to ``peak`` over the first
  ``floor(pct_start·S)`` steps, cosine decay to ``peak/(div_factor·final_div_factor)`` at S, flat after.
- :func:`constant` — ``peak`` for ``t < S``, then 0 (the regularization is switched off after the span,
  like the authors' ``reg_param_span``).
- :func:`linear` — linear decay from ``peak`` at t = 0 to 0 at t = S, then 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["one_cycle", "constant", "linear", "SCHEDULES", "get_schedule"]


def _check(peak: float, span_steps: int) -> None:
    if peak < 0 or not math.isfinite(peak):
        raise ValueError(f"schedule peak must be a finite number >= 0, got {peak}")
    if int(span_steps) < 1:
        raise ValueError(f"schedule span must be at least 1 step, got {span_steps}")


def _cosine(start: float, end: float, frac: float) -> float:
    """Cosine interpolation from ``start`` (frac=0) to ``end`` (frac=1), as optax does."""
    return end + (start - end) * (1.0 + math.cos(math.pi * frac)) / 2.0


def one_cycle(
    t: int,
    peak: float,
    span_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """optax ``cosine_onecycle_schedule(span_steps, peak, pct_start, div_factor, final_div_factor)`` at step ``t``.

    With b = floor(pct_start·S), s = peak/div_factor and e = s/final_div_factor (= peak/2.5e5 for the
    defaults):

    - t < b:      λ = s + (peak − s)·(1 − cos(π·t/b))/2       (rises from s to peak)
    - b ≤ t < S:  λ = e + (peak − e)·(1 + cos(π·(t−b)/(S−b)))/2 (falls from peak to e)
    - t ≥ S:      λ = e

    The first line is the one-cycle warm-up ``peak + (s − peak)·(1 + cos(π·t/b))/2`` rewritten.
    """
    _check(peak, span_steps)
    if not 0.0 <= pct_start <= 1.0:
        raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
    if div_factor <= 0 or final_div_factor <= 0:
        raise ValueError("div_factor and final_div_factor must be > 0")
    span = int(span_steps)
    b = int(pct_start * span)
    start = peak / div_factor
    end = start / final_div_factor
    t = max(int(t), 0)
    if t < b:
        return _cosine(start, peak, t / b)
    if t < span:
        return _cosine(peak, end, (t - b) / (span - b))
    return end


def constant(t: int, peak: float, span_steps: int) -> float:
    """``peak`` for ``0 <= t < span_steps``, 0 afterwards."""
    _check(peak, span_steps)
    return float(peak) if int(t) < int(span_steps) else 0.0


def linear(t: int, peak: float, span_steps: int) -> float:
    """Linear decay from ``peak`` at t = 0 to 0 at ``t = span_steps``; 0 afterwards."""
    _check(peak, span_steps)
    t = max(int(t), 0)
    span = int(span_steps)
    if t >= span:
        return 0.0
    return float(peak) * (1.0 - t / span)


SCHEDULES: dict[str, Callable[..., float]] = {"one_cycle": one_cycle, "constant": constant, "linear": linear}


def get_schedule(
    name: str,
    peak: float,
    span_steps: int,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Callable[[int], float]:
    """Return ``f(t) -> float`` for the named schedule with its parameters bound (validated once)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if name == "one_cycle":
        one_cycle(0, peak, span_steps, pct_start, div_factor, final_div_factor)  # validate now, not at step 0

        def schedule(t: int) -> float:
            return one_cycle(t, peak, span_steps, pct_start, div_factor, final_div_factor)

        return schedule
    fn = SCHEDULES[name]
    fn(0, peak, span_steps)

    def bound(t: int) -> float:
        return fn(t, peak, span_steps)

    return bound
