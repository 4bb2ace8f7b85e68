"""Every method describes itself to the report, and a training run's summary and report agree.

A report names the method the run used and the criterion that removed its neurons (not DemP's for
every method), and ``train_summary.json``, ``report.json`` and the console print one MAC count (one
counter, :func:`compressor.counting.count_macs`) for one model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.training.config import load_recipe
from compressor.training.trainer import train
from exporters.report import training_report


@pytest.fixture(scope="module")
def digits():
    from compressor.data import load_data

    return load_data("digits")


def _recipe(method: str, section: dict, epochs: int = 2):
    return load_recipe({
        "method": method, "model": {"arch": "mlp", "kwargs": {"widths": [32, 32]}},
        "data": {"spec": "digits", "batch_size": 64}, "train": {"epochs": epochs, "lr": 3e-2, "log_every": 50},
        method: section})


#: method, its recipe section, the criterion its report must name, the held-aside samples it measured on
CASES = [
    ("stripping", {"samples": 200}, "dead", 200),
    ("dnr", {"interval_epochs": 1, "target_sparsity": 0.3}, "dnr:target_sparsity=0.3", None),
    ("dormant", {"tau": 0.1, "samples": 150}, "dormant:0.1", 150),
    ("baseline", {"importance": "magnitude-l1", "target_sparsity": 0.25}, "importance:magnitude-l1", None),
    ("baseline", {"importance": "taylor", "target_sparsity": 0.25, "samples": 128}, "importance:taylor", 128),
]


@pytest.mark.parametrize("method,section,criterion,samples", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_the_report_names_the_method_and_its_criterion(tmp_path: Path, digits, method, section, criterion,
                                                       samples) -> None:
    result = train(_recipe(method, section), tmp_path / "run", progress=False, data=digits, plots=False,
                   tensorboard=False)
    pruning = training_report(result)["pruning"]
    assert pruning["method"] == method and pruning["criterion"] == criterion
    assert pruning["calib_samples"] == (samples or 0)
    assert [m["method"] for m in pruning["methods"]] == [method] and pruning["methods"][0]["owns_plan"]
    assert pruning["lossless"] is (method == "stripping")
    assert pruning["removed"] == result.plan.removed_channels
    if method in ("dnr", "baseline", "dormant"):
        assert result.plan.removed_channels > 0, f"{method} removed nothing: the case does not exercise it"
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["schema"] == "demp.train-summary/2" and summary["methods"] == pruning["methods"]


def test_demp_with_stripping_reports_the_plan_owners_criterion(tmp_path: Path, digits) -> None:
    recipe = load_recipe({
        "method": "demp+stripping", "model": {"arch": "mlp", "kwargs": {"widths": [32, 32]}},
        "data": {"spec": "digits", "batch_size": 64}, "train": {"epochs": 1, "lr": 3e-2},
        "demp": {"target": "weights", "peak": 1e-3, "interval": 10, "death_samples": 100, "eps": 0.01},
        "stripping": {"samples": 100}})
    result = train(recipe, tmp_path / "run", progress=False, data=digits, plots=False, tensorboard=False)
    pruning = training_report(result)["pruning"]
    assert pruning["method"] == "demp+stripping" and pruning["criterion"] == "dead:0.01"
    assert pruning["eps"] == 0.01 and pruning["lossless"] is False and pruning["calib_samples"] == 100
    assert [(m["method"], m["owns_plan"]) for m in pruning["methods"]] == [("demp", True), ("stripping", False)]


def _conv_and_linear_macs(recipe) -> int:
    from torch import nn

    from compressor.models import build_model, make_spec

    model = build_model(make_spec("cnn", num_classes=10, input_shape=(1, 8, 8), **recipe.model.kwargs))
    total, size = 0, 8
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += size * size * m.out_channels * m.in_channels * 9
            size //= 2
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def test_summary_report_and_console_give_one_mac_count(tmp_path: Path, capsys) -> None:
    """On a CNN, whose pooling a Conv/Linear-only count would miss."""
    recipe = _recipe("baseline", {"importance": "bn-scale", "target_sparsity": 0.25}, epochs=2)
    recipe.model.arch, recipe.model.kwargs = "cnn", {"channels": [16, 32]}
    recipe.export.latency = False
    path = recipe.save(tmp_path / "recipe.yaml")
    assert main(["train", "--recipe", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    console = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    report = json.loads((tmp_path / "run" / "model" / "report.json").read_text())
    assert summary["macs_after"] < summary["macs_before"], "the run removed neurons"
    for key in ("macs_before", "macs_after", "params_before", "params_after"):
        assert report["model"][key] == summary[key], key
        assert f"{summary[key]:,}" in console, key
    assert report["model"]["mac_counter"] == summary["mac_counter"] == "fvcore"
    for key in ("neurons_before", "neurons_after"):
        assert report["pruning"][key] == summary[key], key
    assert f"neurons: {summary['neurons_before']} -> {summary['neurons_after']}" in console
    assert report["pruning"]["method"] == "baseline" and report["pruning"]["criterion"] == "importance:bn-scale"
    assert report["model"]["macs_before"] > _conv_and_linear_macs(recipe), "pooling is counted, as in report.json"
    assert report["source"]["method"] == "baseline"


def test_neuron_sparsity_is_the_removed_ratio_when_dead_neurons_are_kept(tmp_path: Path, digits) -> None:
    """With round_to 8 some dead neurons stay in the model: they count as present, not as removed."""
    recipe = load_recipe({
        "method": "demp", "model": {"arch": "mlp", "kwargs": {"widths": [64, 64]}},
        "data": {"spec": "digits", "batch_size": 32}, "train": {"epochs": 2, "lr": 3e-2},
        "demp": {"target": "weights", "peak": 3e-2, "interval": 20, "death_samples": 200, "round_to": 8}})
    s = train(recipe, tmp_path / "run", progress=False, data=digits, plots=False, tensorboard=False).summary
    assert s["removed_channels"] > 0
    assert s["neurons_after"] == s["neurons_before"] - s["removed_channels"]
    assert s["neuron_sparsity"] == pytest.approx(s["removed_channels"] / s["neurons_before"])
    assert s["live_after"] <= s["neurons_after"] and all(g["after"] % 8 == 0 for g in s["groups"])


def test_training_cost_integrates_macs_as_the_model_shrinks(tmp_path: Path, digits) -> None:
    """train_macs: 3 x forward MACs x samples per step, summed as DemP removes neurons; plain training
    costs exactly the dense figure; the summary, report.json and the console agree."""
    from compressor.cli.train import training_summary
    from compressor.training.cost import FORWARD_BACKWARD
    from exporters.report import training_report

    raw = {"method": "demp", "model": {"arch": "mlp", "kwargs": {"widths": [64, 64]}},
           "data": {"spec": "digits", "batch_size": 32}, "train": {"epochs": 2, "lr": 3e-2},
           "demp": {"target": "weights", "peak": 3e-2, "interval": 10, "death_samples": 200}}
    demp = train(load_recipe(raw), tmp_path / "demp", progress=False, data=digits, plots=False, tensorboard=False)
    plain = train(load_recipe({**raw, "method": "none"}), tmp_path / "none", progress=False, data=digits, plots=False,
                  tensorboard=False)
    steps_samples = plain.summary["step"] * 32  # drop_last: every step has 32 samples
    p = plain.summary
    assert p["train_macs"] == p["train_macs_dense"] == FORWARD_BACKWARD * p["macs_before"] * steps_samples
    assert p["train_macs_ratio"] == 1.0 and p["train_speedup_est"] is not None
    s = demp.summary
    assert s["removed_channels"] > 0 and s["train_macs_dense"] == p["train_macs_dense"]
    assert s["macs_after"] / s["macs_before"] < s["train_macs_ratio"] < 1.0  # cheaper steps after each removal
    assert training_report(demp)["training"]["train_macs"] == s["train_macs"]
    assert f"{s['train_macs_ratio']:.2f}x of dense training" in training_summary(demp)
