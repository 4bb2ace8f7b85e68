"""int8 quantization of the compact model (``--quantize int8``): real onnxruntime sessions on small models.

The file is quantized with onnxruntime's static QDQ quantizer, checked against the float file on held-out
samples never used for calibration, refused when it disagrees too often (a model made to quantize badly),
timed with dense and compact in one interleaved measurement, reported, and found again by ``demp bench``
and ``demp export``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import compressor
from compressor.cli import main
from compressor.errors import OutputExistsError, UsageError
from compressor.graph import DependencyAnalyzer
from compressor.planting import plant_dead_channels
from exporters.onnx import export_onnx
from exporters.ort import read_onnx_metadata
from exporters.pipeline import BenchOptions, ExportOptions, finalize
from exporters.quantize import (
    OUTPUT_LAYER_REASON,
    QUANTIZE_MODES,
    QuantizeConfig,
    check_int8,
    check_provider,
    int8_path_for,
    int8_speedups,
    quantize_and_check,
    quantize_int8,
)
from exporters.render import format_summary, int8_speed_lines, render_markdown
from exporters.report import ReportError, compress_report, report_problems, validate_report

BAD_MODEL_FILE = '''"""A model that quantizes badly: one hidden unit is a constant 1e4 that nothing reads, so the 8-bit
scale of the hidden activations is 1e4 / 255 and every unit the output does read rounds to 0 or 39."""
from torch import nn

INPUT_SHAPE = (1, 8, 8)


def build(num_classes=10):
    import torch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))
    with torch.no_grad():
        model[1].weight[0].zero_()
        model[1].bias[0] = 1e4
        model[3].weight[:, 0] = 0.0
    return model
'''


def _bad_model(tmp: Path) -> tuple[nn.Module, Path]:
    (tmp / "bad.py").write_text(BAD_MODEL_FILE)
    namespace: dict = {}
    exec(compile(BAD_MODEL_FILE, str(tmp / "bad.py"), "exec"), namespace)  # noqa: S102 - the test's own code
    return namespace["build"]().eval(), tmp / "bad.py"


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 5) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    """Scikit-learn's digits as tensors: (train x, train y, test x, test y)."""
    data = compressor.load_data("digits")
    stack = lambda part: (torch.stack([part[i][0] for i in range(len(part))]),  # noqa: E731
                          torch.tensor([int(part[i][1]) for i in range(len(part))]))
    return (*stack(data.train), *stack(data.test))


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """The digits CNN trained for a second (99% on the test split), its float ONNX file."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = _train(compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))), x, y)
    path = export_onnx(model, x[:2], tmp_path_factory.mktemp("float") / "model.onnx", exporter="torchscript").path
    return model, Path(path)


@pytest.fixture(scope="module")
def planted_trained_ckpt(digits, tmp_path_factory) -> Path:
    """A trained digits CNN with half of every group planted dead, as a plain state dict."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = _train(compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))), x, y)
    plant_dead_channels(model, DependencyAnalyzer(model, torch.zeros(1, 1, 8, 8)), fraction=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "cnn.pt"
    torch.save(model.state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------- the module
def test_int8_file_is_quantized_checked_and_labelled(trained, digits, tmp_path: Path) -> None:
    _, float_onnx = trained
    x = digits[0]
    info = quantize_int8(float_onnx, tmp_path / "model.int8.onnx", x, QuantizeConfig(calib_samples=128))
    proto = onnx.load(info.path)
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert info.calib_samples == 128 and info.settings["activation_type"] == "uint8"
    assert info.settings["weight_type"] == "int8" and info.settings["per_channel"] and info.settings["format"] == "QDQ"
    assert [e["op_type"] for e in info.excluded] == ["Gemm"] and info.excluded[0]["reason"] == OUTPUT_LAYER_REASON
    meta = read_onnx_metadata(info.path)
    assert meta["demp.quantization"] == "int8" and meta["demp.quant_calib_samples"] == "128"
    assert meta["demp.float_sha256"] == hashlib.sha256(float_onnx.read_bytes()).hexdigest()
    assert meta["demp.dynamic_batch"] == "true"  # copied from the float file
    assert info.bytes < info.float_bytes and not list(tmp_path.glob(".*"))  # no staging left behind


def test_agreement_is_measured_on_heldout_samples_with_labels(trained, digits, tmp_path: Path) -> None:
    model, float_onnx = trained
    x, _, test_x, test_y = digits
    int8 = quantize_int8(float_onnx, tmp_path / "m.int8.onnx", x).path
    agreement = check_int8(float_onnx, int8, test_x, test_y)
    assert agreement.samples == len(test_x) == agreement.labels
    assert agreement.top1_agreement >= 0.99 and agreement.disagreement == pytest.approx(1 - agreement.top1_agreement)
    with torch.inference_mode():
        torch_accuracy = float((model(test_x).argmax(1) == test_y).float().mean())
    assert agreement.accuracy_float == pytest.approx(torch_accuracy, abs=0.5 / len(test_y)) and torch_accuracy > 0.9
    assert abs(agreement.accuracy_int8 - agreement.accuracy_float) <= 0.01
    assert 0 < agreement.rel_diff < 0.1 and agreement.max_abs_diff == pytest.approx(agreement.rel_diff *
                                                                                  agreement.max_abs_output)
    assert check_int8(float_onnx, int8, test_x).accuracy_int8 is None  # no labels, no accuracy


def test_a_model_that_quantizes_badly_is_refused_and_the_float_model_kept(digits, tmp_path: Path) -> None:
    x, _, test_x, _ = digits
    model, _ = _bad_model(tmp_path)
    float_onnx = Path(export_onnx(model, x[:2], tmp_path / "model.onnx", exporter="torchscript").path)
    before = float_onnx.read_bytes()
    target = int8_path_for(float_onnx)
    target.write_bytes(b"an int8 file of the float model being replaced")
    section = quantize_and_check(float_onnx, target, x, test_x, None, QuantizeConfig(), overwrite=True)
    assert section["shipped"] is False and section["file"] is None
    assert section["agreement"]["disagreement"] > 0.01 and "held-out samples" in section["reason"]
    assert "--quantize-exclude" in section["reason"]
    assert not target.exists() and float_onnx.read_bytes() == before  # the stale int8 file went, the float stayed
    assert not list(tmp_path.glob(".model.int8*"))


def test_exclusions_by_module_name_and_operator_type(trained, digits, tmp_path: Path) -> None:
    _, float_onnx = trained
    x = digits[0]
    info = quantize_int8(float_onnx, tmp_path / "a.onnx", x[:32], QuantizeConfig(exclude=("features.0",)))
    user = [e for e in info.excluded if e["reason"].startswith("--quantize-exclude")]
    assert [e["op_type"] for e in user] == ["Conv"] and user[0]["node"].startswith("/features/features.0/")
    info = quantize_int8(float_onnx, tmp_path / "b.onnx", x[:32], QuantizeConfig(exclude=("Conv",)))
    proto = onnx.load(info.path)
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and all(producers.get(n.input[1]) != "DequantizeLinear" for n in convs)  # float weights
    with pytest.raises(UsageError, match="no operator of the ONNX model matches.*Conv"):
        quantize_int8(float_onnx, tmp_path / "c.onnx", x[:32], QuantizeConfig(exclude=("no_such_layer",)))


def test_outputs_are_never_replaced_without_overwrite_and_settings_are_checked(trained, digits, tmp_path) -> None:
    _, float_onnx = trained
    x, _, test_x, _ = digits
    target = tmp_path / "model.int8.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        quantize_int8(float_onnx, target, x)
    with pytest.raises(OutputExistsError):
        quantize_and_check(float_onnx, target, x, test_x)
    assert target.read_bytes() == b"keep me"
    for bad in (QuantizeConfig(mode="int4"), QuantizeConfig(max_disagreement=2.0), QuantizeConfig(calib_samples=0)):
        with pytest.raises(UsageError):
            bad.validate()
    section = quantize_and_check(float_onnx, tmp_path / "n.int8.onnx", x, None)
    assert section["shipped"] is False and "no held-out samples" in section["reason"]


def test_gpu_check_says_why_it_was_not_run(trained, digits) -> None:
    _, float_onnx = trained
    assert check_provider(float_onnx, "cpu", digits[0][:2]) == {
        "run": False, "note": "not run: --device cpu (pass --device cuda on a machine with a GPU)"}
    result = check_provider(float_onnx, "cuda", digits[0][:2])
    if not result["run"]:
        assert "CUDAExecutionProvider" in result["note"]


def test_int8_speedups_pair_the_three_variants_of_one_measurement() -> None:
    latency = [{"runtime": "onnxruntime", "device": "cpu", "batch": b, "variant": v, "p50_ms": ms}
               for b, scale in ((1, 1.0), (8, 8.0)) for v, ms in (("dense", 10.0 * scale), ("pruned", 4.0 * scale),
                                                                  ("int8", 2.0 * scale), ("dense (A/A)", 10.0 * scale))]
    latency.append({"runtime": "torch", "device": "cpu", "batch": 1, "variant": "dense", "p50_ms": 9.0})
    comparisons = [{"runtime": "onnxruntime", "device": "cpu", "batch": 8, "variant": "int8", "reliable": False}]
    rows = int8_speedups(latency, comparisons)
    assert [(r["batch"], r["int8_vs_dense"], r["int8_vs_compact"], r["compact_vs_dense"], r["reliable"])
            for r in rows] == [(1, 5.0, 2.0, 2.5, True), (8, 5.0, 2.0, 2.5, False)]


def test_int8_against_compact_follows_the_timing_rules() -> None:
    """Within the measurement's noise floor: no measurable difference; unreliable: no claim either way."""
    latency = [{"runtime": "onnxruntime", "device": "cpu", "batch": b, "variant": v, "p50_ms": ms}
               for b in (1, 8) for v, ms in (("dense", 10.0), ("pruned", 4.0), ("int8", 3.9))]
    comparisons = [{"runtime": "onnxruntime", "device": "cpu", "batch": b, "variant": v, "noise_floor": 0.05,
                    "reliable": b == 1} for b in (1, 8) for v in ("pruned", "int8")]
    rows = int8_speedups(latency, comparisons)
    assert [r["within_noise"] for r in rows] == [True, True] and rows[0]["noise_floor"] == 0.05
    quiet, busy = int8_speed_lines(rows)
    assert quiet.startswith("no measurable difference between int8 compact and compact fp32 on onnxruntime cpu at "
                            "batch 1") and "noise floor +-5%" in quiet
    assert busy.startswith("UNRELIABLE: int8 compact took 0.97x the time of compact fp32")
    assert not any("faster" in line or "SLOWER" in line for line in (quiet, busy))


# ----------------------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def finalized_int8(planted_trained_ckpt, digits, tmp_path_factory):
    """A trained, planted CNN compressed, saved and finalized with ``quantize``; labels for the held-out check."""
    x, _, test_x, test_y = digits
    model = compressor.load_model("cnn", checkpoint=str(planted_trained_ckpt))
    result = compressor.compress(model, [x[:256], x[256:512]], heldout=test_x[:200], progress=False,
                                 source={"arch": "cnn"})
    out = tmp_path_factory.mktemp("finalize") / "slim"
    compressor.save_pruned(result, out)
    report = finalize(out, dense=result.dense, pruned=result.model, calib_x=result.calib_inputs,
                      heldout_x=result.heldout_inputs, report=compress_report(result),
                      export=ExportOptions(exporter="torchscript"),
                      bench=BenchOptions(batch_sizes=(1, 4), min_time_s=0.02, min_iters=3, warmup=1),
                      quantize=QuantizeConfig(), heldout_y=test_y[:200])
    return out, report


def test_finalize_ships_int8_and_times_all_three_together(finalized_int8) -> None:
    out, report = finalized_int8
    q = report["quantization"]
    assert q["shipped"] and q["file"] == "model.int8.onnx" and (out / "model.int8.onnx").is_file()
    assert q["heldout_samples"] == 200 and q["agreement"]["samples"] == 200 and q["agreement"]["labels"] == 200
    assert q["agreement"]["top1_agreement"] >= 0.99 and q["bytes"]["int8"] == (out / "model.int8.onnx").stat().st_size
    assert q["excluded"] and q["settings"]["max_disagreement"] == 0.01 and q["gpu"]["run"] is False
    variants = {(e["runtime"], e["variant"]) for e in report["latency"]}
    assert ("onnxruntime", "int8") in variants and ("torch", "int8") not in variants  # ONNX only
    assert [r["batch"] for r in q["latency"]] == [1, 4]
    for r in q["latency"]:
        assert r["int8_vs_compact"] == pytest.approx(r["compact_p50_ms"] / r["int8_p50_ms"])
    validate_report(report)
    assert json.loads((out / "report.json").read_text())["quantization"] == q


def test_report_shows_the_int8_verdicts_first_and_a_quantization_section(finalized_int8) -> None:
    out, report = finalized_int8
    md = (out / "report.md").read_text()
    head = md.split("## Model")[0]
    lines = head.splitlines()
    # The verdict's wording depends on the timing (faster, no measurable difference, UNRELIABLE when the machine
    # was busy); every form names the two variants and where they were compared.
    assert any("int8 compact" in line and "dense on onnxruntime cpu at batch 4" in line for line in lines)
    assert any("int8 compact" in line and "compact fp32 on onnxruntime cpu at batch 1" in line for line in lines)
    assert "int8: model.int8.onnx" in head
    section = md.split("## Quantization")[1].split("\n## ")[0]
    assert "Kept in float" in section and "Gemm" in section and "top1_agreement" in section
    assert "int8 vs compact" in section and "bytes float / int8" in section and "GPU: not run" in section
    assert "int8: model.int8.onnx" in format_summary(report)
    refused = {**report, "quantization": {**report["quantization"], "shipped": False, "file": None,
                                          "reason": "its top-1 class differs on 5.0% of 200 held-out samples"}}
    assert "WARNING: the int8 model was NOT shipped: its top-1 class differs" in render_markdown(refused)


def test_the_quantization_section_is_validated(finalized_int8) -> None:
    _, report = finalized_int8
    assert report_problems({**report, "quantization": None}) == []
    for bad, message in (({"mode": "int8"}, "shipped"), ({"mode": "int8", "shipped": True}, "file"),
                         ({"mode": "int8", "shipped": False}, "reason"),
                         ({"mode": "int8", "shipped": True, "file": "f", "agreement": {"rel_diff": "x"}}, "rel_diff"),
                         ([], "object")):
        with pytest.raises(ReportError, match=message):
            validate_report({**report, "quantization": bad})


# ----------------------------------------------------------------------------------------- the command line
def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compress_quantize_then_reload_bench_and_export_find_the_int8_file(planted_trained_ckpt, tmp_path,
                                                                         capsys) -> None:
    out = tmp_path / "slim"
    code, stdout, err = _run(["compress", planted_trained_ckpt, "--arch", "cnn", "--data", "digits", "--calib-samples",
                              256, "--heldout-samples", 128, "--round-to", 8, "--bench-batch-sizes", 1, "--out", out,
                              "--no-progress", "--quantize", "int8"], capsys)
    assert code == 0, err
    assert (out / "model.int8.onnx").is_file() and "int8: model.int8.onnx" in stdout
    assert "compact fp32 on onnxruntime cpu at batch 1" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["quantization"]["shipped"] and report["quantization"]["agreement"]["labels"] == 128
    assert compressor.load_pruned(out) is not None  # the folder still loads
    code, stdout, err = _run(["bench", out, "--runtimes", "onnxruntime", "--batch-sizes", 1, "--min-time", 0.02,
                              "--min-iters", 3, "--warmup", 1], capsys)
    assert code == 0, err
    assert "int8 compact" in stdout and "compact fp32 on onnxruntime cpu at batch 1" in stdout
    first = (out / "model.int8.onnx").stat().st_mtime_ns
    code, stdout, err = _run(["export", out, "--quantize", "int8", "--data", "digits", "--overwrite",
                              "--exporter", "torchscript"], capsys)
    assert code == 0, err
    assert "int8: model.int8.onnx" in stdout and (out / "model.int8.onnx").stat().st_mtime_ns != first
    again = json.loads((out / "report.json").read_text())["quantization"]
    assert again["heldout_samples"] == 128 and again["calib_samples"] == 256  # the split compress made
    code, _, err = _run(["export", out, "--quantize", "int8", "--overwrite"], capsys)
    assert code == 2 and "--data" in err


def test_compress_refuses_a_badly_quantizing_model_loudly_and_keeps_the_float_one(tmp_path, capsys) -> None:
    model, model_file = _bad_model(tmp_path)
    torch.save(model.state_dict(), tmp_path / "bad.pt")
    out = tmp_path / "bad-slim"
    code, stdout, err = _run(["compress", tmp_path / "bad.pt", "--model-file", f"{model_file}:build", "--data",
                              "digits", "--calib-samples", 256, "--heldout-samples", 128, "--out", out,
                              "--no-progress", "--no-bench", "--quantize", "int8"], capsys)
    assert code == 0, err
    assert "WARNING: the int8 model was NOT shipped" in stdout and "--quantize-max-disagreement" in stdout
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert q["shipped"] is False and q["agreement"]["disagreement"] > 0.01
    assert "NOT shipped" in (out / "report.md").read_text().split("## Model")[0]


def test_quantize_needs_an_export(planted_trained_ckpt, tmp_path, capsys) -> None:
    code, _, err = _run(["compress", planted_trained_ckpt, "--arch", "cnn", "--out", tmp_path / "x", "--no-export",
                         "--quantize", "int8"], capsys)
    assert code == 2 and "--no-export" in err
    code, _, err = _run(["compress", planted_trained_ckpt, "--arch", "cnn", "--out", tmp_path / "y", "--quantize",
                         "int8", "--quantize-max-disagreement", 5], capsys)
    assert code == 2 and "fraction" in err


# ----------------------------------------------------------------------------------------- real data
MNIST_MODEL = '''from torch import nn

INPUT_SHAPE = (1, 28, 28)


def build(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(),
                         nn.Linear(128, num_classes))
'''


def test_the_real_mnist_cnn_keeps_its_accuracy_in_int8(shared_data: Path, tmp_path: Path, capsys) -> None:
    """The trained MNIST CNN of ../shared/data: int8 within 0.5 points of fp32 on 2,000 real test images."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (shared_data / "mnist" / "MNIST" / "raw").glob("*.gz"):
        with gzip.open(gz, "rb") as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    (tmp_path / "net.py").write_text(MNIST_MODEL)
    state = torch.load(shared_data / "weights" / "mnist-cnn-ccexam.pth", map_location="cpu", weights_only=True)
    names = {"features.0": "0", "features.3": "3", "classifier.0": "7", "classifier.2": "9"}
    torch.save({f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in state.items()}, tmp_path / "m.pt")
    out = tmp_path / "slim"
    code, stdout, err = _run(["compress", tmp_path / "m.pt", "--model-file", f"{tmp_path / 'net.py'}:build", "--data",
                              f"mnist:{tmp_path / 'mnist'}", "--calib-samples", 512, "--round-to", 8, "--no-bench",
                              "--out", out, "--no-progress", "--quantize", "int8"], capsys)
    assert code == 0, err
    q = json.loads((out / "report.json").read_text())["quantization"]
    assert q["shipped"], q["reason"]
    test = compressor.load_data(f"mnist:{tmp_path / 'mnist'}").test
    x = torch.stack([test[i][0] for i in range(2000)])
    y = torch.tensor([int(test[i][1]) for i in range(2000)])
    agreement = check_int8(out / "model.onnx", out / "model.int8.onnx", x, y)
    assert agreement.accuracy_float > 0.98
    assert abs(agreement.accuracy_int8 - agreement.accuracy_float) <= 0.005 and agreement.top1_agreement >= 0.99


# ----------------------------------------------------------------------------------------- demp train
def test_train_quantize_ships_int8_checked_on_held_out_training_samples(tmp_path, capsys) -> None:
    """``demp train --quantize int8`` (the shorthands of ``export.quantize*``): the trained compact model gets
    its int8 file, calibrated and checked on disjoint training samples with labels, and the report says so."""
    from compressor.training.config import load_recipe

    recipe = load_recipe({"method": "baseline", "model": {"arch": "cnn", "kwargs": {"channels": [16, 32]}},
                          "data": {"spec": "digits", "batch_size": 64}, "train": {"epochs": 2, "lr": 3e-2},
                          "baseline": {"importance": "bn-scale", "target_sparsity": 0.25},
                          "export": {"latency": False}})
    path = recipe.save(tmp_path / "recipe.yaml")
    run = tmp_path / "run"
    code, stdout, err = _run(["train", "--recipe", path, "--out", run, "--no-progress", "--quantize", "int8",
                              "--quantize-max-disagreement", "0.5", "--quantize-exclude", "Gemm"], capsys)
    assert code == 0, err
    report = json.loads((run / "model" / "report.json").read_text())
    q = report["quantization"]
    assert q["shipped"] and (run / "model" / "model.int8.onnx").is_file(), q.get("reason")
    assert q["settings"]["max_disagreement"] == 0.5 and q["settings"]["exclude"] == ["Gemm"]
    assert q["calib_samples"] == 256 and q["heldout_samples"] == 256 and q["agreement"]["labels"] == 256
    assert "int8: model.int8.onnx" in stdout
    saved = load_recipe(run / "recipe.yaml")
    assert saved.export.quantize == "int8" and saved.export.quantize_exclude == ["Gemm"]
    # int8 needs the exported model.onnx: refused before any training
    code, _, err = _run(["train", "--recipe", path, "--out", tmp_path / "run2", "--quantize", "int8",
                         "--no-export"], capsys)
    assert code == 2 and "drop --no-export" in err and not (tmp_path / "run2").exists()


def test_the_recipe_quantize_settings_are_the_quantizers() -> None:
    """``compressor`` may not import ``exporters``: the recipe repeats the modes and the default, kept equal here."""
    import dataclasses

    from compressor.training.config import ExportConfig

    e = ExportConfig()
    assert e.quantize is None and e.quantize_max_disagreement == QuantizeConfig().max_disagreement
    field = next(f for f in dataclasses.fields(ExportConfig) if f.name == "quantize")
    assert field.metadata["bounds"].choices == QUANTIZE_MODES
