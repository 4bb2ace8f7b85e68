"""DemP's λ/σ schedules: the optax cosine one-cycle check values (docs/demp.md), constant, linear."""

from __future__ import annotations

import math

import pytest

from compressor.training.mechanics.schedules import constant, get_schedule, linear, one_cycle

S = 85_000


def test_one_cycle_check_values() -> None:
    assert one_cycle(0, 1.0, S) == pytest.approx(0.04, abs=1e-12)
    assert one_cycle(25_500, 1.0, S) == pytest.approx(1.0, abs=1e-12)
    assert one_cycle(50_000, 1.0, S) == pytest.approx(0.637, abs=5e-4)
    for t in (S, S + 1, 10 * S):
        assert one_cycle(t, 1.0, S) == pytest.approx(4e-6, rel=1e-9)


def test_one_cycle_matches_the_closed_form() -> None:
    b = math.floor(0.3 * S)
    peak = 0.35
    e = peak / 2.5e5
    for t in (1, 100, 12_345, b - 1):
        want = peak + (peak / 25 - peak) * (1 + math.cos(math.pi * t / b)) / 2
        assert one_cycle(t, peak, S) == pytest.approx(want, rel=1e-12)
    for t in (b, b + 1, 60_000, S - 1):
        want = e + (peak - e) * (1 + math.cos(math.pi * (t - b) / (S - b))) / 2
        assert one_cycle(t, peak, S) == pytest.approx(want, rel=1e-12)


def test_one_cycle_end_value_is_peak_over_div_times_final_div() -> None:
    assert one_cycle(200, 2.0, 100, div_factor=10.0, final_div_factor=100.0) == pytest.approx(2.0 / 1000)
    assert one_cycle(0, 2.0, 100, div_factor=10.0, final_div_factor=100.0) == pytest.approx(0.2)


def test_one_cycle_rises_then_falls() -> None:
    values = [one_cycle(t, 1.0, 1000) for t in range(0, 1001, 10)]
    peak_at = values.index(max(values))
    assert peak_at * 10 == 300
    assert all(a <= b for a, b in zip(values[:peak_at], values[1 : peak_at + 1], strict=True))
    assert all(a >= b for a, b in zip(values[peak_at:], values[peak_at + 1 :], strict=False))


def test_one_cycle_tiny_span_does_not_divide_by_zero() -> None:
    assert one_cycle(0, 1.0, 1) == pytest.approx(1.0)  # b = 0: starts at the peak, decays
    assert one_cycle(5, 1.0, 1) == pytest.approx(4e-6)
    assert one_cycle(0, 1.0, 10, pct_start=1.0) == pytest.approx(0.04)
    assert one_cycle(10, 1.0, 10, pct_start=1.0) == pytest.approx(4e-6)


def test_constant_and_linear() -> None:
    assert constant(0, 0.5, 100) == 0.5
    assert constant(99, 0.5, 100) == 0.5
    assert constant(100, 0.5, 100) == 0.0
    assert linear(0, 0.5, 100) == 0.5
    assert linear(50, 0.5, 100) == pytest.approx(0.25)
    assert linear(99, 0.5, 100) == pytest.approx(0.005)
    assert linear(100, 0.5, 100) == 0.0
    assert linear(1000, 0.5, 100) == 0.0


def test_get_schedule_binds_and_validates() -> None:
    f = get_schedule("one_cycle", 1.0, S)
    assert f(25_500) == pytest.approx(1.0)
    assert get_schedule("linear", 2.0, 10)(5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("cosine", 1.0, 10)
    with pytest.raises(ValueError, match="peak"):
        get_schedule("constant", -1.0, 10)
    with pytest.raises(ValueError, match="span"):
        get_schedule("one_cycle", 1.0, 0)
