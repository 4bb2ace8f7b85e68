"""`demp demo`: trains, removes dead neurons, exports ONNX, benchmarks and summarizes, with no input."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.cli import main


def _neurons(stdout: str) -> tuple[int, int]:
    match = re.search(r"neurons: (\d+) -> (\d+)", stdout)
    assert match, stdout
    return int(match.group(1)), int(match.group(2))


def test_short_demo_trains_prunes_exports_and_reports(tmp_path: Path, capsys, monkeypatch):
    from compressor.cli import train as training_cli

    # Time one latency batch size instead of two (the benchmark dominates a 2-epoch demo).
    assert "batch_sizes: [1, 32]" in training_cli.DEMO_RECIPE
    monkeypatch.setattr(training_cli, "DEMO_RECIPE", training_cli.DEMO_RECIPE.replace("batch_sizes: [1, 32]",
                                                                                    "batch_sizes: [1]"))
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert main(["demo", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert torch.get_num_threads() == threads, "the demo restores the caller's thread count"
    stdout = capsys.readouterr().out
    before, after = _neurons(stdout)
    assert before == 96 and after < before, "the demo's settings kill neurons within two epochs"
    assert "dense on onnxruntime cpu at batch 1" in stdout and "dense on torch cpu at batch 1" in stdout
    assert "test accuracy" in stdout and str(out / "model") in stdout

    model_dir = out / "model"
    report = json.loads((model_dir / "report.json").read_text())
    assert report["schema"] == "demp.report/1"
    assert report["pruning"]["neurons_after"] == after and report["source"]["method"] == "demp"
    assert report["model"]["params_after"] < report["model"]["params_before"]
    assert {e["variant"] for e in report["latency"]} == {"dense", "pruned", "dense (A/A)"}
    assert report["parity"]["torch_max_abs_diff"] == 0.0, "DemP's final removal is lossless"

    # The exported ONNX model computes what the compact PyTorch model computes.
    import onnxruntime as ort

    from compressor.data import load_data
    from compressor.pruned import load_pruned

    x = torch.stack([load_data("digits").test[i][0] for i in range(16)])
    compact = load_pruned(model_dir)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, compact(x).numpy(), rtol=1e-4, atol=1e-5)
    assert (out / "metrics.jsonl").is_file() and (out / "plots" / "live_neurons.png").is_file()

    # A second run does not overwrite the first without --overwrite.
    assert main(["demo", "--out", str(out), "--epochs", "1", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (model_dir / "model.onnx").is_file()


@pytest.mark.slow
def test_full_demo_kills_most_neurons_and_keeps_accuracy(tmp_path: Path, capsys):
    started = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    seconds = time.perf_counter() - started
    stdout = capsys.readouterr().out
    before, after = _neurons(stdout)
    summary = json.loads((tmp_path / "demo" / "train_summary.json").read_text())
    assert after <= before // 2, "at least half of the neurons are removed"
    assert summary["test_accuracy"] >= 0.97
    assert seconds < 180, f"the demo should take about a minute, took {seconds:.0f}s"
