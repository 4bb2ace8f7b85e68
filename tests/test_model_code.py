"""A model built from a user's --model-file travels with its code: the compressed folder keeps a copy
(hash-checked) and loads from it, so moving the original file or the folder breaks nothing."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

import compressor
from compressor.cli import main
from compressor.errors import CheckpointError

NET = textwrap.dedent("""
    from torch import nn

    INPUT_SHAPE = (1, 8, 8)


    def build(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))
""")


@pytest.fixture()
def slim(tmp_path: Path) -> Path:
    source = tmp_path / "src" / "net.py"
    source.parent.mkdir()
    source.write_text(NET)
    torch.manual_seed(0)
    model = compressor.load_model(None, model_file=f"{source}:build")
    with torch.no_grad():
        model[1].bias[:8] = -1e3  # eight hidden units never fire
    torch.save(model.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "slim"
    assert main(["compress", str(tmp_path / "net.pt"), "--model-file", f"{source}:build", "--out", str(out),
                 "--no-export"]) == 0
    return out


def test_the_model_file_is_copied_and_recorded(slim: Path) -> None:
    plan = json.loads((slim / "plan.json").read_text())
    assert plan["model"]["model_file"] == "code/net.py:build"
    assert (slim / "code" / "net.py").read_text() == NET
    assert len(plan["source"]["model_file_sha256"]) == 64 and plan["source"]["model_file_origin"].endswith("net.py")


def test_moving_the_source_or_the_folder_breaks_nothing(slim: Path, tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "src")
    moved = shutil.move(str(slim), str(tmp_path / "elsewhere"))
    model = compressor.load_pruned(moved)
    assert model[1].out_features == 24 and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert main(["bench", moved, "--runtimes", "torch", "--batch-sizes", "1", "--min-iters", "2", "--min-time",
                 "0.01", "--warmup", "0"]) == 0


def test_a_changed_copy_is_refused(slim: Path) -> None:
    (slim / "code" / "net.py").write_text(NET.replace("32", "33"))
    with pytest.raises(CheckpointError, match="changed since the model was compressed"):
        compressor.load_pruned(slim)


def test_help_says_the_code_runs_when_loading(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    assert "loading the output runs it again" in " ".join(capsys.readouterr().out.split())
