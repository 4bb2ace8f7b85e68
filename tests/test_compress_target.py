"""``demp compress --target-macs``: from a real trained checkpoint to a budget in one command (and from Python)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compressor.cli import main
from compressor.errors import UsageError

RESNET20 = "weights/akamaster-resnet20-12fca82f.th"


def _args(shared_data: Path, cifar_subset_root: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", str(shared_data / RESNET20), "--arch", "resnet20-cifar-a", "--data",
            f"imagefolder:{cifar_subset_root}", "--calib-samples", "512", "--heldout-samples", "128",
            "--no-bench", "--no-progress", "--out", str(out), "--set", "demp.death_samples=256", *extra]


def test_a_real_checkpoint_lands_its_mac_target_with_an_exact_onnx_and_an_honest_report(
        shared_data: Path, cifar_subset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r20-half"
    # 0.2 of an epoch of the 5,000-image subset: 8 steps, so the deadline (half of them) cuts to the target
    assert main(_args(shared_data, cifar_subset_root, out, "--target-macs", "0.5", "--finetune-epochs", "0.2")) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "model" / "report.json").read_text())
    model = report["model"]
    ratio = model["macs_after"] / model["macs_before"]
    assert 0.48 <= ratio <= 0.5  # the target, within 0.02 (never above it)
    assert model["macs_before"] == 41_017_984  # the dense option-A ResNet-20 (fvcore)
    parity = report["parity"]
    # the ONNX file is the compact model
    assert parity["onnx_rel_diff"] <= 1e-4 and parity["onnx_top1_agreement"] == 1.0
    (demp,) = [m for m in report["pruning"]["methods"] if m["method"] == "demp"]
    budget = demp["budget"]
    d = budget["breakdown"]
    assert d["lossless"] == pytest.approx(0.05, abs=0.01)  # 13 dead channels of the published checkpoint
    assert d["lossless"] + d["died"] + d["cut"] == pytest.approx(d["final"])
    assert d["final"] == pytest.approx(1 - ratio, abs=1e-6)
    assert report["pruning"]["lossless"] is (d["cut_neurons"] == 0) and demp["lossless"] is (d["cut_neurons"] == 0)
    summary = json.loads((out / "train_summary.json").read_text())
    assert [m["lossless"] for m in summary["methods"] if m["method"] == "demp"] == [demp["lossless"]]
    line = next(s for s in printed.splitlines() if "budget (beyond the papers)" in s)
    assert line.strip() in (out / "model" / "report.md").read_text()  # one wording in console and report.md
    assert "lossless removal takes 5.0% of the MACs (13 dead neurons)" in printed
    again = __import__("compressor").load_pruned(out / "model")
    assert sum(p.numel() for p in again.parameters()) == model["params_after"]


def test_a_target_is_refused_when_it_is_not_a_fraction_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "never"
    for bad in (["--target-macs", "1.5"], ["--target-macs", "0.5", "--target-params", "0.5"],
                ["--finetune-epochs", "1"]):
        assert main(["compress", "--arch", "cnn", "--out", str(out), *bad]) == 2
    assert not out.exists()


def test_a_compressed_folder_is_refused_as_the_start_of_a_fine_tune(planted_checkpoint: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    slim = tmp_path / "slim"
    assert main(["compress", str(planted_checkpoint), "--arch", "cnn", "--no-export", "--out", str(slim)]) == 0
    capsys.readouterr()
    assert main(["compress", str(slim), "--target-macs", "0.1", "--out", str(tmp_path / "ft")]) == 2
    assert "compressed demp folder" in capsys.readouterr().err and not (tmp_path / "ft").exists()


def test_python_one_call_on_a_model_its_data_and_a_target(tmp_path: Path) -> None:
    import compressor

    torch.manual_seed(0)
    model = compressor.load_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    data = compressor.load_data("digits")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compressor.compress_to_target(model, data, tmp_path / "run", target_macs=0.6, epochs=0.5, progress=False,
                                plots=False, tensorboard=False)
    assert result.summary["macs_after"] / result.summary["macs_before"] <= 0.6 + 1e-9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    assert (tmp_path / "run" / "model" / "plan.json").is_file()
    by_spec = compressor.compress_to_target(model, "digits", tmp_path / "spec", target_sparsity=0.5, epochs=0.5,
                                            progress=False, plots=False, tensorboard=False)
    assert by_spec.summary["neuron_sparsity"] >= 0.5 and by_spec.recipe.train.augment  # loaded with augmentation
    with pytest.raises(UsageError, match="exactly one"):
        compressor.compress_to_target(model, data, tmp_path / "x", target_macs=0.5, target_params=0.5)


def test_an_interrupted_fine_tune_resumes_and_protects_its_inputs(planted_checkpoint: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from compressor.training.methods import demp as dm

    out = tmp_path / "ft"
    args = ["compress", str(planted_checkpoint), "--arch", "cnn", "--data", "digits", "--target-macs", "0.2",
            "--finetune-epochs", "2", "--no-export", "--no-progress", "--out", str(out)]
    original = dm.DemP.after_step

    def after_step(self, at, optimizer):  # Ctrl-C after the 15th step (of 22)
        event = original(self, at, optimizer)
        if at == 14:
            monkeypatch.setattr(dm.DemP, "after_step", original)
            os.kill(os.getpid(), signal.SIGINT)
        return event

    monkeypatch.setattr(dm.DemP, "after_step", after_step)
    assert main(args) == 130
    assert not (out / "model").exists() and any((out / "checkpoints").iterdir())
    assert main(["compress", "--resume", str(out), "--no-export", "--no-progress"]) == 0
    assert (out / "model" / "plan.json").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["macs_after"] / summary["macs_before"] <= 0.2 + 1e-9 and (out / "model" / "plan.json").is_file()
    (out / "notes.txt").write_text("mine")  # a file demp did not write: --overwrite refuses the folder
    assert main([*args, "--overwrite"]) == 2 and (out / "notes.txt").read_text() == "mine"


def test_a_fine_tune_to_a_target_ships_int8_of_the_fine_tuned_model(tmp_path: Path, capsys) -> None:
    """``--quantize int8`` with ``--target-*``: the fine-tuned compact model is quantized and checked."""
    out = tmp_path / "ft"
    args = ["compress", "--arch", "cnn", "--data", "digits", "--target-macs", "0.6", "--finetune-epochs", "0.5",
            "--no-bench", "--no-progress", "--quantize", "int8", "--quantize-max-disagreement", "1"]
    assert main([*args, "--no-export", "--out", str(out)]) == 2  # int8 needs model.onnx: refused before any work
    assert "drop --no-export" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuning with DemP" in printed  # the path under test, not lossless removal alone
    q = json.loads((out / "model" / "report.json").read_text())["quantization"]
    assert q["shipped"] and (out / "model" / "model.int8.onnx").is_file() and "int8: model.int8.onnx" in printed
    assert q["settings"]["max_disagreement"] == 1 and q["heldout_samples"] > 0
