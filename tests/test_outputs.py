"""Nothing a user has is ever lost: ``--overwrite`` replaces demp's own outputs only, a failed or
interrupted ``demp compress`` leaves the previous output intact and nothing partial, a file given as
``--out`` is a clear error, and outputs honour the umask so a serving process can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

import compressor
from compressor.cli import main


@pytest.fixture()
def checkpoint(planted_checkpoint: Path) -> Path:
    return planted_checkpoint


def compress(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", str(ckpt), "--arch", "cnn", "--calib-samples", "128", "--heldout-samples", "32",
            "--out", str(out), "--no-export", *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_folder_holding_the_input_checkpoint(checkpoint, tmp_path, capsys) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    ckpt = folder / "r18.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    (folder / "notes.txt").write_text("mine")
    before = snapshot(folder)
    assert main(compress(ckpt, folder, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "r18.pt" in err and "an input of this command" in err and "Traceback" not in err
    assert snapshot(folder) == before


def test_overwrite_refuses_files_demp_did_not_write(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "slim"
    assert main(compress(checkpoint, out)) == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert main(compress(checkpoint, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "demp did not write" in err
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    assert main(compress(checkpoint, out, "--overwrite")) == 0, "demp's own outputs are replaced"


def test_train_overwrite_refuses_the_folder_of_its_own_recipe(tmp_path, capsys) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    recipe = folder / "my.yaml"
    recipe.write_text(yaml.safe_dump({"method": "none", "model": {"arch": "mlp"}, "train": {"epochs": 1}}))
    before = snapshot(folder)
    code = main(["train", "--recipe", str(recipe), "--out", str(folder), "--overwrite", "--no-export",
                 "--no-progress"])
    assert code == 2 and "my.yaml" in capsys.readouterr().err
    assert snapshot(folder) == before


@pytest.mark.parametrize("when", ["while exporting", "on Ctrl-C"])
def test_a_late_failure_keeps_the_previous_output_and_leaves_nothing_partial(checkpoint, tmp_path, capsys,
                                                                             monkeypatch, when) -> None:
    import exporters.pipeline

    out = tmp_path / "slim"
    assert main(compress(checkpoint, out)) == 0
    before = snapshot(out)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt if when == "on Ctrl-C" else compressor.errors.DempError("disk full")

    monkeypatch.setattr(exporters.pipeline, "write_report", fail)  # the very end of the new output
    assert main(compress(checkpoint, out, "--overwrite", "--min-channels", "2")) in (1, 130)
    assert snapshot(out) == before, "the previous output is intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim"], "no staging folder is left behind"
    fresh = tmp_path / "fresh"
    assert main(compress(checkpoint, fresh)) in (1, 130)
    assert not fresh.exists(), "nothing partial: the next run is not refused as 'already exists'"
    monkeypatch.undo()
    assert main(compress(checkpoint, fresh)) == 0


def test_out_naming_an_existing_file_is_a_clear_error(checkpoint, tmp_path, capsys) -> None:
    target = tmp_path / "model.txt"
    target.write_text("mine")
    assert main(compress(checkpoint, target)) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and "Traceback" not in err
    assert target.read_text() == "mine"


def test_outputs_honour_the_umask(checkpoint, tmp_path, capsys) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "slim"
        assert main(compress(checkpoint, out)[:-1] + ["--round-to", "1", "--no-bench"]) == 0  # with the ONNX export
        run = tmp_path / "run"
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"method": "none", "model": {"arch": "mlp"}, "train": {"epochs": 1}}))
        assert main(["train", "--recipe", str(recipe), "--out", str(run), "--no-export", "--no-progress"]) == 0
    finally:
        os.umask(old)
    files = [p for folder in (out, run) for p in folder.rglob("*") if p.is_file()]
    assert {"plan.json", "weights.safetensors", "model.onnx", "report.json", "channels.png", "recipe.yaml",
            "train_summary.json", "state.pt"} <= {p.name for p in files}
    wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files if stat.S_IMODE(p.stat().st_mode) != 0o644}
    assert wrong == {}
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_a_swap_that_fails_half_way_puts_the_previous_output_back(tmp_path, monkeypatch) -> None:
    from compressor import fileio

    target = tmp_path / "slim"
    target.mkdir()
    (target / "plan.json").write_text("previous")
    real_rename = os.rename

    def rename(src, dst):  # the old folder moves aside, then the new one cannot move into place
        if Path(src).name.startswith(fileio.STAGING_PREFIX):
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        with fileio.staged_directory(target) as staging:
            (staging / "plan.json").write_text("new")
    assert (target / "plan.json").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["slim"]  # nothing hidden or partial left beside it
