"""`demp compress` on the small calibration files real users have: the calibration request is honoured,
the held-out check uses what is left (or is skipped, and says so), the batch size fits the set, and the
data's own image size and a model file's INPUT_SHAPE are never silently overridden."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compressor.cli import main


@pytest.fixture()
def checkpoint(planted_checkpoint: Path) -> Path:
    return planted_checkpoint


def npz(folder: Path, n: int, side: int = 8) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:n, None] / 16.0).astype(np.float32)
    if side != 8:
        x = np.repeat(np.repeat(x, side // 8, axis=2), side // 8, axis=3)
    path = folder / f"calib{n}.npz"
    np.savez(path, x=x, y=digits.target[:n])
    return path


def compress(ckpt: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["compress", str(ckpt), "--arch", "cnn", "--data", f"npz:{data}", "--out", str(out), "--no-export",
                 *extra])


@pytest.mark.parametrize("n,calib,expected", [(48, 48, (48, 0)), (60, 48, (48, 12)), (8, 1024, (8, 0)),
                                              (32, 16, (16, 16))])
def test_small_calibration_files_are_used_as_asked(checkpoint, tmp_path, capsys, caplog, n, calib, expected) -> None:
    out = tmp_path / "slim"
    assert compress(checkpoint, npz(tmp_path, n), out, "--calib-samples", str(calib)) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert (report["pruning"]["calib_samples"], report["pruning"]["heldout_samples"]) == expected
    stdout = capsys.readouterr().out
    if expected[1] == 0:
        assert "no held-out samples were left" in report["parity"]["heldout_skipped"]
        assert "note: no held-out samples were left" in stdout
    else:
        assert "heldout" in report["parity"]["torch"] and "heldout_skipped" not in report["parity"]
    assert "calibration samples: a channel that is zero on all of them may still fire" in caplog.text


def test_an_input_size_against_the_data_names_both_sizes(checkpoint, tmp_path, capsys) -> None:
    data = npz(tmp_path, 64, side=32)
    assert compress(checkpoint, data, tmp_path / "out", "--input-size", "16") == 2
    err = capsys.readouterr().err
    assert f"--input-size 16 but the images of --data npz:{data} are 32x32" in err and "pass 32" in err
    assert not (tmp_path / "out").exists()


def test_a_model_files_input_shape_must_match_the_data(tmp_path, capsys) -> None:
    model_file = tmp_path / "net.py"
    model_file.write_text(textwrap.dedent("""
        from torch import nn
        INPUT_SHAPE = (1, 28, 28)
        def build(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, num_classes))
    """))
    assert main(["compress", "--model-file", f"{model_file}:build", "--out", str(tmp_path / "o"), "--no-export"]) == 2
    err = capsys.readouterr().err
    assert "declares INPUT_SHAPE (1, 28, 28) but --data digits (the default" in err and "(1, 8, 8)" in err


def test_the_default_data_is_named_when_the_shape_does_not_fit(tmp_path, capsys) -> None:
    assert main(["compress", "--arch", "resnet18", "--out", str(tmp_path / "o"), "--no-export"]) == 2
    err = capsys.readouterr().err
    assert "(1, 8, 8)" in err and "comes from --data digits (the default" in err


def test_a_failing_factory_shows_its_file_and_line(tmp_path, capsys) -> None:
    model_file = tmp_path / "broken.py"
    model_file.write_text("from torch import nn\n\n\ndef build(num_classes=10):\n    width = 0\n"
                          "    return nn.Linear(64, num_classes // width)\n")
    assert main(["compress", "--model-file", f"{model_file}:build", "--out", str(tmp_path / "o"), "--no-export"]) == 2
    err = capsys.readouterr().err
    assert f"{model_file}:build" in err and "at line 6" in err and "ZeroDivisionError" in err


def test_a_mac_count_that_fails_never_fails_the_compression(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    import exporters.pipeline
    from compressor.errors import DempError

    def fail(*args, **kwargs):
        raise DempError("cannot count MACs of Net (its forward pass failed under FlopCounterMode)")

    monkeypatch.setattr(exporters.pipeline, "compare_macs", fail)
    out = tmp_path / "slim"
    assert main(["compress", str(checkpoint), "--arch", "cnn", "--out", str(out), "--round-to", "1", "--no-bench"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["macs_before"] is None and "forward pass failed" in report["model"]["mac_unavailable"]
    assert report["model"]["params_after"] < report["model"]["params_before"]
    assert "MACs unavailable" in (out / "report.md").read_text() and (out / "model.onnx").is_file()
