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
from exporters.render import render_markdown, speed_verdicts
from exporters.runtimes import Prepared
from exporters.timing import Interleaved


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


def fake_benchmark(ratios: dict[str, dict[int, float]], notes: tuple[str, ...] = ()):
    """A benchmark() that reports the given p50 ratios against dense (and no timing at all); ``notes``
    marks every comparison unreliable."""

    def run(variants, shape, config, progress=None):
        comps = [Comparison("onnxruntime", "cpu", b, v.name, "dense", 1.0, r, r, None, 1 / r, None,
                            reliable=not notes, notes=list(notes))
                 for v in variants if v.name != "dense" for b, r in ratios[v.name].items()]
        return BenchResult([], comps, {}, {"threads": 1})

    return run


def test_candidates_within_the_noise_floor_are_tied_and_the_static_rule_breaks_the_tie(exact, monkeypatch) -> None:
    monkeypatch.setattr(widths, "benchmark", fake_benchmark({"exact": {1: 0.80, 8: 0.81}, "x8": {1: 0.82, 8: 0.83}}))
    chosen, policy = widths.choose_widths(exact, partial(rewidth, exact), batch_sizes=(1, 8))
    assert policy["chosen"] == "x8" and policy["decided_by"] == "timing" and policy["reliable"] is True
    monkeypatch.setattr(widths, "benchmark", fake_benchmark({"exact": {1: 0.70, 8: 0.72}, "x8": {1: 0.82, 8: 0.83}}))
    assert widths.choose_widths(exact, partial(rewidth, exact), batch_sizes=(1, 8))[1]["chosen"] == "exact", \
        "beyond the floor the faster one wins"


def test_unreliable_timings_never_discard_the_removal(exact, monkeypatch) -> None:
    """Every candidate measured slower, but on a busy machine: the static rule (multiples of 8) ships the
    removal, and the report says why."""
    monkeypatch.setattr(widths, "benchmark", fake_benchmark({"exact": {1: 1.3, 8: 1.4}, "x8": {1: 1.2, 8: 1.2}},
                                                            notes=("the machine was busy (the timing thread got 60% of "
                                                                   "a CPU)",)))
    chosen, policy = widths.choose_widths(exact, partial(rewidth, exact), batch_sizes=(1, 8))
    assert policy["chosen"] == "x8" and chosen.removed > 0 and policy["decided_by"] == "static rule"
    assert policy["reliable"] is False and "the timings were unreliable (the machine was busy" in policy["note"]
    assert "multiples of 8" in policy["note"]
    markdown = render_markdown({**_minimal_report(), "width_policy": policy})
    assert "**widths: `x8`, the timings were unreliable" in markdown


def test_a_removal_too_small_to_measure_is_not_timed(exact, monkeypatch) -> None:
    def no_timing(*args, **kwargs):
        raise AssertionError("a removal below the noise floor must not be timed")

    monkeypatch.setattr(widths, "benchmark", no_timing)
    monkeypatch.setattr(widths, "MIN_NOISE_FLOOR", 0.99)  # every removal is now "too small"
    chosen, policy = widths.choose_widths(exact, partial(rewidth, exact), batch_sizes=(1, 8))
    assert policy["chosen"] == "x8" and policy["decided_by"] == "static rule" and chosen.removed > 0
    assert policy["note"].startswith("not timed: the removal saves")


def _minimal_report() -> dict:
    return {"schema": "demp.report/1", "tool": {"version": "0"}, "source": {}, "pruning": {}, "model": {},
            "parity": {}, "latency": []}


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


def _interleaved(times: dict[str, list[float]], cpu_share: float | None = 1.0) -> Interleaved:
    return Interleaved(times, {k: list(v) for k, v in times.items()}, list(times), cpu_share)


def _fake_prepare(variants, runtime, device, threads):
    return {v.name: Prepared(None, "CPUExecutionProvider") for v in variants}


@pytest.mark.parametrize("settles", [True, False])
def test_an_unstable_measurement_is_repeated_once_then_marked(monkeypatch, settles) -> None:
    calls = []

    def measure(variants, prepared, runtime, config, batch, shape, settled=None):
        calls.append(batch)
        noisy = len(calls) == 1 or not settles
        times = {"dense": [1.0] * 9 + [5.0] * 3 if noisy else [1.0] * 12, "pruned": [0.6] * 12}
        return _interleaved(times)

    monkeypatch.setattr(latency, "measure_interleaved", measure)
    monkeypatch.setattr(latency, "prepare", _fake_prepare)
    config = BenchConfig(batch_sizes=(1,), runtimes=("onnxruntime",), threads=1, noise_pair=False)
    result = latency.benchmark([Variant("dense", onnx_path="d.onnx", macs=100), Variant("pruned", onnx_path="p.onnx",
                                                                                       macs=55)], (4,), config)
    assert calls == [1, 1], "measured again once"
    comp = result.comparisons[0]
    assert comp.reliable is settles
    if not settles:
        assert "busy" in comp.notes[0] and "UNRELIABLE" in format_table(result)
        report = {"latency_comparison": [comp.to_dict()], "environment": {"threads": 1}}
        assert speed_verdicts(report)[0].startswith("UNRELIABLE: compact took 0.60x the time of dense")


def test_a_busy_machine_is_detected_reported_first_and_not_measured_again(monkeypatch) -> None:
    """The timing thread got 60% of a CPU: every comparison is unreliable, nothing is called faster or
    slower, the first line says the machine was busy, and no time is spent measuring it again."""
    calls = []

    def measure(variants, prepared, runtime, config, batch, shape, settled=None):
        calls.append(batch)
        return _interleaved({v.name: [1.0 if v.name != "pruned" else 1.3] * 12 for v in variants}, cpu_share=0.6)

    monkeypatch.setattr(latency, "measure_interleaved", measure)
    monkeypatch.setattr(latency, "prepare", _fake_prepare)
    config = BenchConfig(batch_sizes=(1, 8), runtimes=("onnxruntime",), threads=1)
    result = latency.benchmark([Variant("dense", onnx_path="d.onnx"), Variant("pruned", onnx_path="p.onnx")], (4,),
                               config)
    assert calls == [1, 8]
    assert result.machine_load["busy"] and result.machine_load["cpu_share"] == 0.6
    assert all(not c.reliable and "the machine was busy (the timing thread got 60% of a CPU)" in c.notes
               for c in result.comparisons)
    data = result.to_dict()
    lines = speed_verdicts({"latency_comparison": data["comparison"], "machine_load": data["machine_load"]})
    assert lines[0].startswith("WARNING: the machine was busy while timing (the timing thread got 60% of a CPU)")
    assert not any("faster" in line or "SLOWER" in line for line in lines)


def test_the_noise_floor_is_the_a_a_pair_difference() -> None:
    rows = [_result("dense", 1, 1.00), _result(latency.AA_VARIANT, 1, 1.06), _result("pruned", 1, 0.95)]
    comp, = latency.compare(rows, [Variant("dense"), Variant("pruned")])
    assert comp.aa_ratio == pytest.approx(1.06) and comp.noise_floor == pytest.approx(0.06)
    assert comp.within_noise and comp.to_dict()["within_noise"] is True
    line, = speed_verdicts({"latency_comparison": [comp.to_dict()]})
    assert line.startswith("no measurable difference between compact and dense on onnxruntime cpu at batch 1")
    assert "noise floor +-6%" in line
    quiet = [_result("dense", 1, 1.00), _result(latency.AA_VARIANT, 1, 1.001), _result("pruned", 1, 0.95)]
    comp, = latency.compare(quiet, [Variant("dense"), Variant("pruned")])
    assert comp.noise_floor == latency.MIN_NOISE_FLOOR and not comp.within_noise
    assert speed_verdicts({"latency_comparison": [comp.to_dict()]})[0].startswith("compact is 1.05x faster")


def test_timing_stops_once_every_verdict_is_clear() -> None:
    settled = partial(latency.verdicts_settled, baseline="dense")
    n = latency.MIN_TURNS
    steady = {"dense": [1.0] * n, latency.AA_VARIANT: [1.0] * n}
    assert not settled({"dense": [1.0] * (n - 1), "pruned": [0.5] * (n - 1)}, 1.0), "too few turns"
    assert settled({**steady, "pruned": [0.5, 0.52, 0.49, 0.51, 0.5]}, 1.0), "clearly faster"
    assert settled({**steady, "pruned": [1.0, 1.005, 0.995, 1.0, 1.0]}, 1.0), "clearly within the floor"
    assert not settled({**steady, "pruned": [0.9, 1.1, 0.92, 1.08, 1.0]}, 1.0), "not clear yet"
    assert settled({**steady, "pruned": [0.9, 1.1, 0.92, 1.08, 1.0]}, 0.5), "a busy machine: no verdict will come"


def test_a_slower_compact_model_is_a_warning_in_the_first_lines() -> None:
    report = {"latency_comparison": [{"runtime": "onnxruntime", "device": "cpu", "batch": 8, "latency_ratio": 1.8,
                                      "baseline_p50_ms": 1.0, "variant_p50_ms": 1.8}], "environment": {"threads": 1}}
    assert speed_verdicts(report) == ["WARNING: compact is 1.80x SLOWER than dense on onnxruntime cpu at batch 8 "
                                      "(p50 1.000 -> 1.800 ms, 1 thread(s))"]
    report["latency_comparison"][0].update(noise_floor=0.05, within_noise=False)
    assert speed_verdicts(report)[0].endswith("(p50 1.000 -> 1.800 ms, 1 thread(s), noise floor +-5%)")


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


def test_an_unchanged_model_is_not_timed_against_itself(tmp_path: Path, monkeypatch, capsys) -> None:
    """Every compact candidate reliably slower: the dense widths are kept, the console says how many dead
    channels were found and how to remove them anyway, and neither compress nor bench times the model
    against itself."""
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).eval()
    plant_dead_channels(model, DependencyAnalyzer(model, torch.zeros(1, 1, 8, 8)), channels=(0, 3, 7, 11, 20))
    torch.save(model.state_dict(), tmp_path / "dead.pt")
    monkeypatch.setattr(widths, "benchmark", fake_benchmark({"exact": {1: 1.3, 8: 1.4}, "x8": {1: 1.2, 8: 1.25}}))
    out = tmp_path / "slim"
    assert main(["compress", str(tmp_path / "dead.pt"), "--arch", "cnn", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["latency"] == [] and report["width_policy"]["chosen"] == "dense"
    found = report["width_policy"]["candidates"][0]["removed"]
    assert found >= 5 and stdout.startswith(f"unchanged: {found} dead channels found, kept because every compact "
                                            "candidate ran slower than dense on onnxruntime cpu (exact 1.40x the time")
    assert "--round-to 1" in stdout and "--target-macs 0.5" in stdout
    assert not any(word in stdout for word in ("faster", "SLOWER", "no measurable"))
    assert main(["bench", str(out), "--runtimes", "onnxruntime", "--batch-sizes", "1", "--min-time", "0.01",
                 "--min-iters", "3", "--warmup", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "unchanged:" in stdout and "timed alone" in stdout
    assert not any(word in stdout for word in ("faster", "SLOWER", "no measurable"))
