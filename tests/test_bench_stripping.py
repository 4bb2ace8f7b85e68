"""tools/bench_stripping.py: its dead-neuron and %A measurement, and a real ``--quick`` run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "bench_stripping.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_stripping", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _mlp(widths):
    from compressor.models import MLP

    return MLP(4, 3, widths, "relu")


def test_dead_masks_and_active_fraction_count_what_they_should():
    bench = _load()
    model = _mlp([5, 3])
    first, second = model.features[0], model.features[2]
    with torch.no_grad():
        first.weight[1].zero_()
        first.bias[1] = -1.0  # neuron 1 of layer 1 outputs 0 on every input: dead
        second.weight[2].zero_()
        second.bias[2] = -1.0  # neuron 2 of layer 2: dead
        first.weight[0, :2] = 0.0  # two "stripped" weights of a live neuron
    first.bias.data[[0, 2, 3, 4]] = 10.0  # keep the other neurons alive on positive inputs
    second.bias.data[[0, 1]] = 10.0
    data = torch.utils.data.TensorDataset(torch.rand(20, 4), torch.zeros(20, dtype=torch.long))
    dead = bench.dead_masks(model, data, batch_size=7)
    assert [d.nonzero().flatten().tolist() for d in dead] == [[1], [2]]
    frac, stripped = bench.active_fraction(model, dead)
    total = 5 * 4 + 3 * 5 + 3 * 3  # incoming and outgoing weights of the hidden neurons (3 classes)
    assert stripped == 4 + 5 + 2  # zeroed weights on hidden rows: the two dead rows and two of live neuron 0
    # inactive: layer 1's dead row (4) and the two zeros of neuron 0; layer 2's dead row (5) and the column
    # reading layer 1's dead neuron (3, one shared with the row); the classifier's column reading it (3)
    assert frac == pytest.approx((total - (4 + 2) - (5 + 3 - 1) - 3) / total)


def test_quick_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "bench_stripping.json").read_text())
    runs = report["runs"]
    assert sorted(r["method"] for r in runs) == ["none", "stripping"]
    for r in runs:
        assert r["hidden_neurons"] == 2 * 32
        assert 0 <= r["dead_neurons"] <= r["hidden_neurons"]
        assert sum(r["dead_per_layer"]) == r["dead_neurons"]
        assert 0.0 <= r["active_params"] <= 1.0
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["train_seconds"] > 0
    strip = next(r for r in runs if r["method"] == "stripping")
    plain = next(r for r in runs if r["method"] == "none")
    # the library's own %A for the stripping run also counts only stripped + dead-neuron weights as inactive
    assert strip["library_active_params"] is not None
    # the plain run strips nothing: its %A comes from the dead neurons alone
    assert plain["stripped_weights"] == 0
    d1, d2 = plain["dead_per_layer"]  # 8x8 digits: 64 inputs, 10 classes; in and out weights of dead neurons
    dead_weights = d1 * 64 + (d1 * 32 + d2 * 32 - d1 * d2) + d2 * 10
    assert plain["active_params"] == pytest.approx(1 - dead_weights / (32 * 64 + 32 * 32 + 10 * 32))
    md = (out / "bench_stripping.md").read_text()
    assert "| 2 x 32 | 64 |" in md and "--quick" in md
    assert len(report["summary"]) == 2 and len(report["trend"]) == 1


def test_bad_option_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--depths", "two", "--out", str(tmp_path / "x")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "comma-separated list of integers" in proc.stderr and "Traceback" not in proc.stderr
