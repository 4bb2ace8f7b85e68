"""Faster by default and honest timing: the width policy keeps the fastest candidate (and dense when no
removal pays), unstable measurements are repeated and then marked, and a compression that removes
nothing says so at once and skips the timing. Timing itself is never asserted (BENCHMARKS.md measures
it); the policy and the checks are tested on given measurements."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

import compressor
from compressor.cli import main
from compressor.compression import rewidth
from compressor.graph import DependencyAnalyzer
from compressor.planting import plant_dead_channels
from exporters import latency, widths
from exporters.latency import BenchConfig, BenchResult, Comparison, LatencyResult, Variant, format_table
from exporters.render import speed_verdicts


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """A digits CNN (32 + 64 channels) with 5 and 9 dead channels: exact widths 27 and 55."""
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).eval()
    analyzer = DependencyAnalyzer(model, torch.zeros(1, 1, 8, 8))
    plant_dead_channels(model, analyzer, channels=(0, 3, 7, 11, 20))
    with torch.no_grad():
        model.features[5].bias[[1, 5, 9, 13]] = -1e3
    data = compressor.load_data("digits")
    loader = torch.utils.data.DataLoader(data.train, batch_size=64)
    return compressor.compress(model, loader, progress=False)


def fake_benchmark(ratios: dict[str, dict[int, float]]):
    """A benchmark() that reports the given p50 ratios against dense (and no timing at all)."""

    def run(variants, shape, config, progress=None):
        comps = [Comparison("onnxruntime", "cpu", b, v.name, "dense", 1.0, r, r, None, 1 / r, None)
                 for v in variants if v.name != "dense" for b, r in ratios[v.name].items()]
        return BenchResult([], comps, {}, {"threads": 1})

    return run


def test_the_policy_keeps_the_candidate_whose_slowest_batch_is_fastest(exact, monkeypatch) -> None:
    assert sorted(g["after"] for g in exact.groups if g["removed"]) == [27, 55]
    monkeypatch.setattr(widths, "benchmark", fake_benchmark({"exact": {1: 1.30, 8: 1.80}, "x8": {1: 0.95, 8: 0.70}}))
    chosen, policy = widths.choose_widths(exact, partial(rewidth, exact), batch_sizes=(1, 8))
    # x16 and x32 keep every channel of these groups: they are the dense candidate, built and timed once
    assert [c["label"] for c in policy["candidates"]] == ["exact", "x8", "dense"] and policy["chosen"] == "x8"
    assert sorted((g["exact"], g["chosen"]) for g in policy["groups"]) == [(27, 32), (55, 56)]
    assert chosen.plan.removal_hash() == rewidth(exact, 8).plan.removal_hash()
    assert chosen.verification["passed"], "a rounded candidate keeps only dead channels: still lossless"


def test_when_no_removal_pays_the_dense_widths_are_kept(exact, monkeypatch, caplog) -> None:
    monkeypatch.setattr(widths, "benchmark", fake_benchmark(
        {name: {1: 1.05, 8: 1.2} for name in ("exact", "x8")}))
    chosen, policy = widths.choose_widths(exact, partial(rewidth, exact), batch_sizes=(1, 8))
    assert policy["chosen"] == "dense" and chosen.removed == 0 and chosen.plan.is_empty()
    assert "no removal pays" in caplog.text


def _result(variant: str, batch: int, p50: float, p90: float | None = None) -> LatencyResult:
    p90 = p90 if p90 is not None else p50 * 1.05
    return LatencyResult("onnxruntime", "cpu", variant, batch, 1, 20, 1.0, p50, p90, p90, p50, 0.0, p50, p90,
                         batch / p50)


def test_unreliable_measurements_are_named() -> None:
    busy = [_result("dense", 1, 1.0, p90=2.5), _result("pruned", 1, 0.5)]
    comp = latency.compare(busy, [Variant("dense", macs=100), Variant("pruned", macs=50)])[0]
    assert any("p90 is 2.5x p50" in r for r in latency.unreliable_reasons(busy, comp))
    impossible = [_result("dense", 1, 12.0), _result("pruned", 1, 0.032)]
    comp = latency.compare(impossible, [Variant("dense", macs=100), Variant("pruned", macs=60)])[0]
    assert any("more than the MACs" in r for r in latency.unreliable_reasons(impossible, comp))
    scaling = [_result("dense", 1, 1.0), _result("dense", 8, 0.5), _result("pruned", 1, 0.8), _result("pruned", 8, 3.0)]
    comp = [c for c in latency.compare(scaling, [Variant("dense"), Variant("pruned")]) if c.batch == 8][0]
    assert any("batch 8 ran faster than batch 1" in r for r in latency.unreliable_reasons(scaling, comp))
    steady = [_result("dense", 1, 1.0), _result("pruned", 1, 0.6)]
    assert latency.unreliable_reasons(steady, latency.compare(steady, [Variant("dense", macs=100),
                                                                       Variant("pruned", macs=55)])[0]) == []


@pytest.mark.parametrize("settles", [True, False])
def test_an_unstable_measurement_is_repeated_once_then_marked(monkeypatch, settles) -> None:
    calls = []

    def measure(variants, prepared, runtime, config, batch, shape):
        calls.append(batch)
        noisy = len(calls) == 1 or not settles
        times = {"dense": [1.0] * 9 + [5.0] * 3 if noisy else [1.0] * 12, "pruned": [0.6] * 12}
        return times, ["dense", "pruned"]

    monkeypatch.setattr(latency, "measure_interleaved", measure)
    monkeypatch.setattr(latency, "prepare", lambda variants, runtime, device, threads: {
        v.name: {"provider": "CPUExecutionProvider"} for v in variants})
    config = BenchConfig(batch_sizes=(1,), runtimes=("onnxruntime",), threads=1)
    result = latency.benchmark([Variant("dense", onnx_path="d.onnx", macs=100), Variant("pruned", onnx_path="p.onnx",
                                                                                       macs=55)], (4,), config)
    assert calls == [1, 1], "measured again once"
    comp = result.comparisons[0]
    assert comp.reliable is settles
    if not settles:
        assert "busy" in comp.notes[0] and "UNRELIABLE" in format_table(result)
        report = {"latency_comparison": [comp.to_dict()], "environment": {"threads": 1}}
        assert "UNRELIABLE" in speed_verdicts(report)[0]


def test_a_slower_compact_model_is_a_warning_in_the_first_lines() -> None:
    report = {"latency_comparison": [{"runtime": "onnxruntime", "device": "cpu", "batch": 8, "latency_ratio": 1.8,
                                      "baseline_p50_ms": 1.0, "variant_p50_ms": 1.8}], "environment": {"threads": 1}}
    assert speed_verdicts(report) == ["WARNING: compact is 1.80x SLOWER than dense on onnxruntime cpu at batch 8 "
                                      "(p50 1.000 -> 1.800 ms, 1 thread(s))"]


def test_a_compression_that_removes_nothing_says_so_at_once_and_skips_the_timing(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).eval()
    with torch.no_grad():
        for bn in (model.features[1], model.features[5]):
            bn.bias.fill_(5.0)  # every channel fires on every input
    torch.save(model.state_dict(), tmp_path / "alive.pt")
    out = tmp_path / "slim"
    assert main(["compress", str(tmp_path / "alive.pt"), "--arch", "cnn", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("nothing to remove") and "--criterion saturated:EPS or dormant:TAU" in stdout
    assert "--target-macs 0.5" in stdout and "pass --bench to time it anyway" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["latency"] == [] and "width_policy" not in report and (out / "model.onnx").is_file()
