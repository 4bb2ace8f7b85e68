"""`demp compress` / `demp inspect` end to end, and every bad input as a clear error with the right exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import compressor
from compressor.cli import main
from compressor.graph import DependencyAnalyzer
from compressor.planting import plant_dead_channels


@pytest.fixture(scope="module")
def planted_ckpt(tmp_path_factory):
    """A small digits CNN with planted dead channels, saved as a plain state dict."""
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).eval()
    planted = plant_dead_channels(model, DependencyAnalyzer(model, torch.zeros(1, 1, 8, 8)), fraction=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "cnn.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    return path, planted


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compress_writes_a_complete_directory(planted_ckpt, tmp_path, capsys) -> None:
    ckpt, planted = planted_ckpt
    out = tmp_path / "slim"
    code, stdout, err = run(["compress", ckpt, "--arch", "cnn", "--data", "digits", "--calib-samples", 256,
                             "--heldout-samples", 64, "--out", out, "--bench-batch-sizes", "1"], capsys)
    assert code == 0, err
    expected = {"plan.json", "weights.safetensors", "model.onnx", "report.json", "report.md"}
    assert expected <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "demp.report/1"
    candidates = {c["label"]: c for c in report["width_policy"]["candidates"]}
    assert candidates["exact"]["removed"] == sum(len(c) for c in planted.values())
    assert report["pruning"]["removed"] == candidates[report["width_policy"]["chosen"]]["removed"]
    assert report["source"]["sha256"] and report["source"]["checkpoint"].endswith("cnn.pt")
    assert report["parity"]["torch_rel_diff"] <= 1e-4 and report["parity"]["onnx_max_abs_diff"] < 1e-3
    assert "removed" in stdout
    # --round-to auto (the default) timed the width candidates and shipped the chosen one
    policy = report["width_policy"]
    assert policy["chosen"] in [c["label"] for c in policy["candidates"]] and policy["runtime"] == "onnxruntime"
    chosen = {g["root"]: g["chosen"] for g in policy["groups"]}
    assert all(g["after"] == chosen[g["root"]] for g in report["pruning"]["groups"] if g["root"] in chosen)
    # the speed verdict comes first, in the report and on the console
    md = (out / "report.md").read_text().splitlines()
    # the verdicts come first (after a busy-machine warning when other processes took the CPU)
    assert any("compact" in line and "dense on onnxruntime cpu at batch 1" in line for line in md[2:5])
    assert any("compact" in line and "dense on " in line for line in stdout.splitlines()[:5])
    again = compressor.load_pruned(out)
    assert again.demp_plan.removed_channels == report["pruning"]["removed"]
    # an existing output directory is refused (usage error, nothing lost) unless --overwrite
    before = (out / "plan.json").read_text()
    code, _, err = run(["compress", ckpt, "--arch", "cnn", "--out", out, "--no-export"], capsys)
    assert code == 2 and "--overwrite" in err and (out / "plan.json").read_text() == before


def test_inspect_counts_dead_channels_without_pruning(planted_ckpt, tmp_path, capsys) -> None:
    ckpt, planted = planted_ckpt
    code, stdout, err = run(["inspect", ckpt, "--arch", "cnn", "--calib-samples", 128, "--json",
                             tmp_path / "s.json"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "s.json").read_text())
    removable = {g["root"]: g["removable"] for g in data["groups"]}
    for root, chans in planted.items():
        assert removable[root] >= len(chans)
    assert "removable under dead" in stdout


def _bad(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    trunc = tmp_path / "trunc.pt"
    torch.save(compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).state_dict(), trunc)
    trunc.write_bytes(trunc.read_bytes()[:300])
    pickled = tmp_path / "module.pt"
    torch.save(compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))), pickled)
    other = tmp_path / "mlp.pt"
    torch.save(compressor.build_model(compressor.ModelSpec("mlp", 10, (1, 8, 8))).state_dict(), other)
    nan = tmp_path / "nan.pt"
    sd = compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).state_dict()
    sd["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, nan)
    return {"text": text, "trunc": trunc, "pickled": pickled, "other": other, "nan": nan}


@pytest.mark.parametrize("case,args,code,message", [
    ("missing", ["{tmp}/nope.pt", "--arch", "cnn"], 2, "not found|does not exist|no such"),
    ("text", ["{text}", "--arch", "cnn"], 2, "is not a checkpoint: expected a PyTorch checkpoint"),
    ("trunc", ["{trunc}", "--arch", "cnn"], 2, "truncated or corrupt"),
    ("pickled", ["{pickled}", "--arch", "cnn"], 2, "--trust-pickle"),
    ("other-arch", ["{other}", "--arch", "cnn"], 2, "features.0.weight|missing"),
    ("nan", ["{nan}", "--arch", "cnn"], 2, "NaN|Inf"),
    ("no-data-root", ["--arch", "cnn", "--data", "cifar10:{tmp}/cifar"], 2, "cifar-10-batches-py"),
    ("unknown-data", ["--arch", "cnn", "--data", "imagenet"], 2, "digits"),
    ("unknown-arch", ["--arch", "resnet_18"], 2, "resnet18"),
    ("input-size-against-the-data", ["--arch", "cnn", "--input-size", "16"], 2,
     "--input-size 16 but the images of --data digits"),
    ("bare-npz-path", ["--arch", "cnn", "--data", "calib.npz"], 2, "did you mean npz:calib.npz"),
    ("bad-criterion", ["--arch", "cnn", "--criterion", "deadish"], 2, "unknown criterion"),
    ("no-arch", [], 2, "--arch is required"),
    ("cuda-without-gpu", ["--arch", "cnn", "--device", "cuda"], 2, "--device cpu"),
])
def test_bad_input_gives_a_clear_error(case, args, code, message, tmp_path, capsys) -> None:
    if case == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    files = _bad(tmp_path)
    argv = ["compress"] + [a.format(tmp=tmp_path, **files) for a in args] + ["--out", tmp_path / "out", "--no-export"]
    got, _, err = run(argv, capsys)
    assert got == code, err
    assert err.startswith("error: ") and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert "weights_only" not in err  # PyTorch's advice to load unsafely is never passed on
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_num_classes_mismatch_is_named(tmp_path, capsys) -> None:
    path = tmp_path / "ten.pt"
    torch.save(compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).state_dict(), path)
    code, _, err = run(["compress", path, "--arch", "cnn", "--num-classes", "7", "--out", tmp_path / "o",
                        "--no-export"], capsys)
    assert code == 2 and "--num-classes" in err


def test_entry_points_work_as_subprocesses(tmp_path) -> None:
    for cmd in (["demp", "--help"], [sys.executable, "-m", "compressor", "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["demp", "compress", "--arch", "cnn", "--criterion", "bogus", "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown criterion" in proc.stderr


def test_every_command_documents_every_option_with_examples_and_defaults(capsys) -> None:
    from compressor.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices
    assert set(commands) == {"compress", "inspect", "train", "demo", "export", "bench"}
    for name, command in commands.items():
        undocumented = [a.dest for a in command._actions if not a.help]
        assert undocumented == [], f"demp {name}: options without help {undocumented}"
        assert command.epilog and command.epilog.startswith("examples:") and f"demp {name}" in command.epilog
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--tolerance TOLERANCE max output difference, relative to the output scale, for lossless criteria "
                  "(default: 0.0001)", "(default: cpu)", "(default: 0)", "--batch-size BATCH_SIZE samples per forward",
                  "--opset OPSET ONNX opset of model.onnx (default: 18)", "--no-progress"):
        assert shown in text, shown
