"""finalize() end to end on a really compressed model; report schema validation; markdown and plots."""

from __future__ import annotations

import copy
import json

import onnx
import pytest
import torch

import compressor
from compressor.errors import OutputExistsError
from compressor.graph import DependencyAnalyzer
from compressor.planting import plant_dead_channels
from exporters.ort import read_onnx_metadata
from exporters.pipeline import BenchOptions, ExportOptions, finalize
from exporters.render import format_summary, render_markdown
from exporters.report import REPORT_SCHEMA, ReportError, compress_report, report_problems, validate_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finalized(tmp_path_factory):
    """A small CNN with half of every group planted dead, compressed, saved and finalized."""
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).eval()
    plant_dead_channels(model, DependencyAnalyzer(model, torch.zeros(1, 1, 8, 8)), fraction=0.5)
    calib, heldout = torch.randn(96, 1, 8, 8), torch.randn(40, 1, 8, 8)
    result = compressor.compress(model, [calib[:48], calib[48:]], heldout=heldout, progress=False,
                                 source={"arch": "cnn", "sha256": "f" * 64})
    out = tmp_path_factory.mktemp("finalize") / "slim"
    compressor.save_pruned(result, out)
    report = finalize(out, dense=result.dense, pruned=result.model, calib_x=result.calib_inputs,
                      heldout_x=result.heldout_inputs, report=compress_report(result),
                      export=ExportOptions(exporter="torchscript"),
                      bench=BenchOptions(batch_sizes=(1, 4), min_time_s=0.02, min_iters=3, warmup=1))
    return out, report, result


def test_report_is_complete_and_valid(finalized) -> None:
    out, report, result = finalized
    validate_report(report)
    assert report["schema"] == REPORT_SCHEMA
    on_disk = json.loads((out / "report.json").read_text())
    validate_report(on_disk)
    assert on_disk == report
    model = report["model"]
    assert model["params_before"] == sum(p.numel() for p in result.dense.parameters())
    assert model["params_after"] == sum(p.numel() for p in result.model.parameters())
    assert 0 < model["macs_after"] < model["macs_before"]
    assert model["mac_ratio"] == pytest.approx(model["macs_after"] / model["macs_before"])
    assert report["tool"]["version"] == compressor.__version__ and report["tool"]["onnxruntime"]
    assert report["pruning"]["groups"] and report["source"]["sha256"] == "f" * 64
    assert report["modules"][0]["name"] == "" and report["modules"][0]["macs_before"] == model["macs_before"]


def test_onnx_export_and_parity_in_report(finalized) -> None:
    out, report, result = finalized
    export = report["export"]
    assert export["file"] == "model.onnx" and export["opset"] == 18 and export["exporter"] == "torchscript"
    assert export["bytes"] == (out / "model.onnx").stat().st_size
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    parity = report["parity"]
    assert parity["onnx_passed"] is True and parity["onnx_rel_diff"] <= 1e-4
    assert parity["onnx_samples"] == 96 + 40 and len(parity["onnx_batch_sizes"]) >= 2
    assert parity["torch_max_abs_diff"] <= 1e-4 * max(1.0, parity["onnx_max_abs_output"])
    meta = read_onnx_metadata(out / "model.onnx")
    plan = json.loads((out / "plan.json").read_text())
    assert meta["demp.plan_hash"] == plan["plan_hash"]
    assert meta["demp.source_sha256"] == "f" * 64
    pr = report["pruning"]
    assert float(meta["demp.neuron_sparsity"]) == pytest.approx(1 - pr["neurons_after"] / pr["neurons_before"],
                                                                abs=1e-6)
    assert 0 < float(meta["demp.weight_sparsity"]) < 1


def test_latency_dense_vs_pruned_in_report(finalized) -> None:
    _, report, _ = finalized
    keys = {(e["runtime"], e["batch"], e["variant"]) for e in report["latency"]}
    assert keys == {(rt, b, v) for rt in ("torch", "onnxruntime") for b in (1, 4)
                    for v in ("dense", "pruned", "dense (A/A)")}
    assert len(report["latency_comparison"]) == 4
    assert all(c["noise_floor"] >= 0.03 and isinstance(c["within_noise"], bool) for c in report["latency_comparison"])
    assert isinstance(report["machine_load"]["busy"], bool)
    for c in report["latency_comparison"]:
        assert c["mac_ratio"] == pytest.approx(report["model"]["mac_ratio"])
        assert c["speedup_efficiency"] == pytest.approx(c["mac_ratio"] / c["latency_ratio"])
    assert report["environment"]["cpu_model"] and report["environment"]["logical_cores"] >= 1


def test_markdown_plots_and_summary(finalized) -> None:
    out, report, _ = finalized
    for name in ("channels.png", "latency.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    md = (out / "report.md").read_text()
    assert "## Channels per group" in md and "| group root | before | after | removed |" in md
    assert "## Parity" in md and "## Latency" in md and "![channels per group](channels.png)" in md
    first = report["pruning"]["groups"][0]
    assert f"`{first['root']}`" in md
    summary = format_summary(report)
    assert f"{report['model']['macs_before']:,}" in summary and "lat ratio" in summary
    assert "onnx max|diff|" in summary


def test_finalize_refuses_existing_outputs(finalized) -> None:
    out, report, result = finalized
    with pytest.raises(OutputExistsError, match="--overwrite"):
        finalize(out, dense=result.dense, pruned=result.model, calib_x=result.calib_inputs, heldout_x=None,
                 report=compress_report(result), bench=BenchOptions(run=False))


def test_finalize_without_export_or_bench(tmp_path, finalized) -> None:
    _, _, result = finalized
    report = finalize(tmp_path, dense=result.dense, pruned=result.model, calib_x=result.calib_inputs[:8],
                      heldout_x=None, report={"source": {}, "pruning": {}}, export=None, bench=BenchOptions(run=False),
                      plots=False)
    validate_report(report)
    assert report["export"] is None and report["latency"] == []
    assert "torch_max_abs_diff" in report["parity"] and report["parity"]["samples"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]


def _valid() -> dict:
    return {
        "schema": REPORT_SCHEMA,
        "tool": {"version": "0.1.0"},
        "source": {},
        "pruning": {"groups": [{"root": "fc1", "before": 8, "after": 5, "removed": [1, 2, 3]}]},
        "model": {"params_before": 10, "params_after": 5, "macs_before": 100, "macs_after": 50},
        "parity": {"onnx_max_abs_diff": 0.0, "top1_agreement": 1.0},
        "latency": [{"runtime": "torch", "device": "cpu", "variant": "dense", "batch": 1, "p50_ms": 1.0,
                     "p90_ms": 2.0, "p99_ms": 3.0, "threads": 2}],
    }


def test_validation_accepts_the_minimal_report() -> None:
    assert report_problems(_valid()) == []


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: r.pop("model"), "missing section 'model'"),
        (lambda r: r.update(schema="demp.report/0"), "schema"),
        (lambda r: r["model"].update(macs_after=1.5), "model.macs_after"),
        (lambda r: r["model"].pop("params_before"), "model.params_before"),
        (lambda r: r.update(latency={}), "section 'latency' must be a list"),
        (lambda r: r["latency"][0].pop("threads"), "latency[0].threads"),
        (lambda r: r["latency"][0].update(p90_ms=0.5), "p50 <= p90 <= p99"),
        (lambda r: r["latency"][0].update(batch=0), "batch must be >= 1"),
        (lambda r: r["pruning"]["groups"][0].update(after=9), "more channels after"),
        (lambda r: r["parity"].update(onnx_max_abs_diff="small"), "parity.onnx_max_abs_diff"),
        (lambda r: r["tool"].pop("version"), "tool.version"),
    ],
)
def test_validation_rejects_broken_reports(breakage, message) -> None:
    report = copy.deepcopy(_valid())
    breakage(report)
    with pytest.raises(ReportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_report(report)


def test_write_report_without_latency_or_groups(tmp_path) -> None:
    report = _valid()
    report["latency"] = []
    report["pruning"]["groups"] = []
    written = write_report(report, tmp_path)
    assert set(written) == {"json", "md"}  # nothing to plot
    assert "Not measured." in render_markdown(report)
    with pytest.raises(OutputExistsError):
        write_report(report, tmp_path)
