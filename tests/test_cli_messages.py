"""What the command line says, and how it ends (issue 23): progress bars only on a terminal and never with
--no-progress, plain progress lines in logs, one neuron count for inspect and compress, a compressed folder
that refuses options it would ignore, and the exit-code rule of compressor/errors.py (2: fix the command line
or an input file; 1: a failure during the work; 130: interrupted)."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from compressor.cli import main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _stderr_on_a_terminal(argv: list, monkeypatch) -> str:
    """Run ``demp ARGV`` with stderr on a pseudo-terminal (as in an interactive shell); what it wrote there."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns, as a terminal has
    os.set_blocking(master, False)
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        code = main([str(a) for a in argv])
        terminal.flush()
    monkeypatch.undo()
    chunks = []
    try:
        while chunk := os.read(master, 65536):
            chunks.append(chunk)
    except (BlockingIOError, OSError):  # all read
        pass
    os.close(master)
    assert code == 0
    return b"".join(chunks).decode(errors="replace")


def test_a_progress_bar_only_on_a_terminal_and_never_with_no_progress(monkeypatch, capsys) -> None:
    argv = ["inspect", "--arch", "cnn", "--calib-samples", 256]
    assert "calibration:" in _stderr_on_a_terminal(argv, monkeypatch)  # a terminal shows the bar
    assert "calibration:" not in _stderr_on_a_terminal([*argv, "--no-progress"], monkeypatch)
    code, _, err = run(argv, capsys)  # stderr a pipe or a file: no bar drawn into the log
    assert code == 0 and "\r" not in err and "%|" not in err


def test_train_logs_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, caplog, monkeypatch) -> None:
    from compressor import progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)  # every step; 30 s by default
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: demp\nmodel: {arch: mlp, kwargs: {widths: [32]}}\ndata: {spec: digits, batch_size: 64}\n"
                      "train: {epochs: 1, log_every: 5}\ndemp: {target: weights, interval: 10, death_samples: 128}\n")
    with caplog.at_level(logging.INFO):
        code, _, err = run(["train", "--recipe", recipe, "--out", tmp_path / "run", "--no-export"], capsys)
    assert code == 0, err
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1: ")]
    assert any(re.fullmatch(r"epoch 1/1: \d+ of \d+ steps \(\d+%\), [\d.e+]+ steps/s, loss=[\d.]+ acc=[\d.]+% .*", line)
               for line in lines), lines
    assert "\r" not in err


def test_inspect_and_compress_count_the_same_neurons(planted_checkpoint, tmp_path, capsys) -> None:
    code, out, err = run(["inspect", planted_checkpoint, "--arch", "cnn", "--calib-samples", 256, "--no-progress"],
                         capsys)
    assert code == 0, err
    inspected = re.search(r"(\d+) of (\d+) neurons removable", out)
    assert inspected and inspected.group(2) == "96"  # 32 + 64 hidden channels; the 10 outputs are not neurons
    assert "not counted as neurons (as in demp compress): classifier (10)" in out
    code, out, err = run(["compress", planted_checkpoint, "--arch", "cnn", "--calib-samples", 256, "--no-export",
                          "--round-to", 1, "--out", tmp_path / "slim", "--no-progress"], capsys)
    assert code == 0, err
    assert f"removed {inspected.group(1)} of 96 neurons" in out


def test_a_compressed_folder_refuses_a_model_file_and_data_of_another_shape(planted_checkpoint, tmp_path,
                                                                           capsys) -> None:
    slim = tmp_path / "slim"
    assert run(["compress", planted_checkpoint, "--arch", "cnn", "--no-export", "--out", slim, "--no-progress"],
               capsys)[0] == 0
    (tmp_path / "net.py").write_text("from torch import nn\ndef build():\n    return nn.Linear(64, 10)\n")
    code, _, err = run(["inspect", slim, "--model-file", f"{tmp_path / 'net.py'}:build"], capsys)
    assert code == 2 and f"{slim} is a compressed demp folder" in err and "--model-file would not be used" in err
    code, _, err = run(["inspect", slim, "--arch", "resnet18"], capsys)
    assert code == 2 and "--arch resnet18 would not be used" in err
    np.savez(tmp_path / "mnist-like.npz", x=np.zeros((16, 28, 28), np.uint8), y=np.arange(16) % 10)
    code, _, err = run(["inspect", slim, "--data", f"npz:{tmp_path / 'mnist-like.npz'}"], capsys)
    assert code == 2 and "was compressed at input shape (1, 8, 8)" in err and "samples of shape (1, 28, 28)" in err
    assert run(["inspect", slim, "--arch", "cnn", "--calib-samples", 64, "--no-progress"], capsys)[0] == 0  # its own


@pytest.mark.parametrize("command", ["train", "compress"])
def test_resume_names_a_missing_folder(command, tmp_path, capsys) -> None:
    code, _, err = run([command, "--resume", tmp_path / "no-such-run"], capsys)
    assert code == 2 and f"--resume {tmp_path / 'no-such-run'}: the folder does not exist" in err
    assert "recipe" not in err


def test_a_misspelt_data_set_gets_a_did_you_mean(capsys) -> None:
    code, _, err = run(["compress", "--arch", "cnn", "--data", "minst:/data/mnist", "--no-export"], capsys)
    assert code == 2 and "did you mean mnist:/data/mnist?" in err


def _diverging_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "diverge.yaml"
    recipe.write_text("method: baseline\nmodel: {arch: mlp, kwargs: {widths: [32]}}\ndata: {spec: digits}\n"
                      "train: {epochs: 1, lr: 1.0e+12, optimizer: sgd}\n")
    return recipe


@pytest.mark.parametrize("case,argv,code,message", [
    ("an unknown option", ["compress", "--arch", "cnn", "--no-such-option"], 2, "unrecognized arguments"),
    ("a bad option value", ["compress", "--arch", "cnn", "--calib-samples", "0"], 2, "--calib-samples must be >= 1"),
    ("a missing checkpoint", ["compress", "{tmp}/nope.pt", "--arch", "cnn"], 2, "does not exist"),
    ("a file that is not a checkpoint", ["compress", "{tmp}/notes.pt", "--arch", "cnn"], 2, "is not a checkpoint"),
    ("a missing data folder", ["compress", "--arch", "cnn", "--data", "cifar10:{tmp}/cifar"], 2, "cifar-10-batches-py"),
    ("a model file that fails", ["compress", "--model-file", "{tmp}/broken.py:build"], 2, "ValueError: boom"),
    ("a missing recipe", ["train", "--recipe", "{tmp}/nope.yaml", "--out", "{tmp}/run"], 2, "nope.yaml"),
    ("an existing output folder", ["train", "--recipe", "{tmp}/diverge.yaml", "--out", "{tmp}"], 2, "--overwrite"),
    ("training that diverges", ["train", "--recipe", "{tmp}/diverge.yaml", "--out", "{tmp}/run", "--no-export"], 1,
     "the training loss became nan"),
])
def test_exit_codes_follow_one_rule(case, argv, code, message, tmp_path, capsys) -> None:
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    (tmp_path / "broken.py").write_text("def build():\n    raise ValueError('boom')\n")
    _diverging_recipe(tmp_path)
    try:
        extra = ["--out", tmp_path / "out", "--no-export"] if argv[0] == "compress" else ["--no-progress"]
        got, _, err = run([a.format(tmp=tmp_path) for a in argv] + extra, capsys)
    except SystemExit as exc:  # argparse's own usage errors
        got, err = exc.code, capsys.readouterr().err
    assert got == code, f"{case}: exit {got}, expected {code}: {err}"
    assert message in err and "Traceback" not in err


def test_normalize_reaches_an_image_folder_in_inspect_and_train(tmp_path, write_pngs, capsys, caplog) -> None:
    import yaml

    write_pngs(tmp_path / "images", {"a": 8, "b": 8})
    folder = f"imagefolder:{tmp_path / 'images'}"
    with caplog.at_level(logging.INFO):
        code, _, err = run(["inspect", "--arch", "cnn", "--data", folder, "--normalize", "0.5/0.25", "--no-progress"],
                           capsys)
    assert code == 0, err
    assert "imagefolder: normalized with 0.5/0.25 statistics, mean (0.5,), std (0.25,)" in caplog.text
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: demp\nmodel: {arch: cnn}\ndata: {batch_size: 8}\ntrain: {epochs: 1}\n")
    code, _, err = run(["train", "--recipe", recipe, "--data", folder, "--normalize", "0.5/0.25", "--out",
                        tmp_path / "run", "--no-export", "--no-progress"], capsys)
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["data"]["normalize"] == "0.5/0.25"
