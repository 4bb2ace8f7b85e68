"""Checkpoints and resume: a killed, interrupted or disk-full run continues exactly as if it had never
stopped; NaN losses and mismatched recipes are refused clearly."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from compressor.errors import CheckpointError, UsageError
from compressor.training import run_checkpoints
from compressor.training.config import load_recipe
from compressor.training.metrics import read_metrics
from compressor.training.records import without_timing
from compressor.training.trainer import TrainingDiverged, TrainingInterrupted, train

STOP_STEP = 60  # inside epoch 2 (44 steps per epoch with 1437 training digits and batch 32)



def recipe_dict() -> dict:
    return {
        "method": "demp",
        "model": {"arch": "mlp", "kwargs": {"widths": [64, 64]}},
        "data": {"spec": "digits", "batch_size": 32},
        "train": {"epochs": 3, "lr": 1e-2, "lr_schedule": "cosine", "log_every": 10, "checkpoint_keep": 2},
        "demp": {"regularizer": "lasso", "target": "weights", "peak": 3e-3, "noise": 1e-3, "interval": 15,
                 "death_samples": 256},
    }




@pytest.fixture(scope="module")
def digits():
    from compressor.data import load_data

    return load_data("digits")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(load_recipe(recipe_dict()), out, progress=False, data=digits, plots=False)
    assert result.plan.removed_channels > 0, "the reference run must exercise plan replay on resume"
    return out, result


def assert_same_run(out: Path, result, reference) -> None:
    ref_out, ref = reference
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(ref_out))
    assert result.plan.removal_hash() == ref.plan.removal_hash()
    ref_state, state = ref.model.state_dict(), result.model.state_dict()
    assert ref_state.keys() == state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], state[key]), key


def _child_script(recipe: Path, out: Path, mark: Path, go: Path) -> str:
    """A real `demp train` process that pauses inside epoch 2 (after the first checkpoint) until told."""
    return textwrap.dedent(f"""
        import os, sys, time
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # same float reduction order as the reference run
        from compressor.training.methods import demp as dm
        original = dm.DemP.after_step
        def after_step(self, step, optimizer):
            event = original(self, step, optimizer)
            if step == {STOP_STEP}:
                open({str(mark)!r}, "w").close()
                deadline = time.time() + 60
                while not os.path.exists({str(go)!r}) and time.time() < deadline:
                    time.sleep(0.02)
            return event
        dm.DemP.after_step = after_step
        from compressor.cli import main
        sys.exit(main(["train", "--recipe", {str(recipe)!r}, "--out", {str(out)!r}, "--no-export", "--no-progress"]))
    """)


def _start_child(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path, Path]:
    recipe = load_recipe(recipe_dict()).save(tmp_path / "recipe.yaml")
    out, mark, go = tmp_path / "run", tmp_path / "paused", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", _child_script(recipe, out, mark, go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not mark.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training process ended early: {proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("training process did not reach the pause point")
        time.sleep(0.02)
    return proc, out, go, recipe


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path, reference, digits):
    proc, out, _go, recipe_path = _start_child(tmp_path)
    assert (out / "checkpoints" / "latest.json").is_file(), "the first epoch's checkpoint exists"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # The killed run left interval records of epoch 2 behind: resume must drop them, not duplicate them.
    assert max(r["step"] for r in read_metrics(out)) > 44
    result = train(load_recipe(recipe_path), out, resume=True, progress=False, data=digits, plots=False)
    assert_same_run(out, result, reference)


@pytest.mark.slow  # the in-process SIGINT test below covers the same code path in the default run
def test_sigterm_checkpoints_mid_epoch_and_resume_equals_uninterrupted_run(tmp_path: Path, reference, digits):
    proc, out, go, recipe_path = _start_child(tmp_path)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    go.touch()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stdout and "--resume" in stdout and "Traceback" not in stderr
    latest = run_checkpoints.latest_checkpoint(out / "checkpoints")
    assert latest.name == f"ckpt-e0001-s{STOP_STEP + 1:08d}", "a mid-epoch checkpoint at the safe point"
    result = train(load_recipe(recipe_path), out, resume=True, progress=False, data=digits, plots=False)
    assert_same_run(out, result, reference)


def test_sigint_in_process_writes_checkpoint_and_resumes(tmp_path: Path, reference, digits, monkeypatch):
    _interrupt_at(100, monkeypatch)
    recipe = load_recipe(recipe_dict())
    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, tmp_path / "run", progress=False, data=digits, plots=False)
    assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"
    result = train(recipe, tmp_path / "run", resume=True, progress=False, data=digits, plots=False)
    assert_same_run(tmp_path / "run", result, reference)


def _interrupt_at(step: int, monkeypatch) -> None:
    """Make the next run stop with a SIGINT after optimizer step ``step`` (what Ctrl-C does)."""
    from compressor.training.methods import demp as dm

    original = dm.DemP.after_step

    def after_step(self, at, optimizer):
        event = original(self, at, optimizer)
        if at == step:
            monkeypatch.setattr(dm.DemP, "after_step", original)
            os.kill(os.getpid(), signal.SIGINT)
        return event

    monkeypatch.setattr(dm.DemP, "after_step", after_step)


def test_a_checkpoint_of_the_earlier_layout_still_resumes(tmp_path: Path, reference, digits, monkeypatch):
    """Checkpoints written before every method's state moved under ``methods`` kept DemP's state under
    a top-level ``demp`` key; resuming one continues exactly."""
    recipe = load_recipe(recipe_dict())
    _interrupt_at(100, monkeypatch)
    with pytest.raises(TrainingInterrupted):
        train(recipe, tmp_path / "run", progress=False, data=digits, plots=False)
    latest = run_checkpoints.latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = torch.load(latest / "state.pt", weights_only=True)
    state["demp"] = state["methods"].pop("demp")
    torch.save(state, latest / "state.pt")
    result = train(recipe, tmp_path / "run", resume=True, progress=False, data=digits, plots=False)
    assert_same_run(tmp_path / "run", result, reference)


def test_disk_full_keeps_previous_checkpoint_and_resume_completes(tmp_path: Path, reference, digits, monkeypatch):
    real = run_checkpoints._save_tensors
    calls = {"n": 0}

    def failing(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint: half a file, then ENOSPC
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path)

    monkeypatch.setattr(run_checkpoints, "_save_tensors", failing)
    out = tmp_path / "run"
    recipe = load_recipe(recipe_dict())
    with pytest.raises(CheckpointError) as info:
        train(recipe, out, progress=False, data=digits, plots=False)
    message = str(info.value)
    assert "disk is full" in message and "ckpt-e0001-s00000044" in message and "intact" in message
    ckpt_dir = out / "checkpoints"
    assert [p.name for p in ckpt_dir.iterdir() if p.is_dir()] == ["ckpt-e0001-s00000044"], "no partial checkpoint left"
    assert json.loads((ckpt_dir / "latest.json").read_text())["checkpoint"] == "ckpt-e0001-s00000044"
    assert run_checkpoints.load_checkpoint(ckpt_dir / "ckpt-e0001-s00000044").step == 44

    monkeypatch.setattr(run_checkpoints, "_save_tensors", real)  # space freed
    result = train(recipe, out, resume=True, progress=False, data=digits, plots=False)
    assert_same_run(out, result, reference)


def test_checkpoint_holds_no_pickled_code(reference):
    out, _ = reference
    latest = run_checkpoints.latest_checkpoint(out / "checkpoints")
    state = torch.load(latest / "state.pt", weights_only=True)  # would fail on any pickled object
    assert set(state) == {"optimizer", "lr_schedule", "methods", "rng", "loop"}
    assert set(state["methods"]) == {"demp"}, "every method's state is under 'methods', DemP's too"
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["complete"] and meta["epoch"] == 3 and meta["recipe"]["demp"]["peak"] == 3e-3


def test_resume_refuses_a_different_recipe(reference, capsys):
    out, _ = reference
    changed = load_recipe(recipe_dict(), ["demp.peak=0.01", "train.lr=0.02"])
    with pytest.raises(UsageError) as info:
        train(changed, out, resume=True, progress=False)
    message = str(info.value)
    assert "demp.peak" in message and "train.lr" in message and "recipe.yaml" in message

    from compressor.cli import main

    code = main(["train", "--resume", str(out), "--set", "train.epochs=5", "--no-export", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "train.epochs: 3 in the run, 5 now" in err


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(load_recipe(recipe_dict()), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(load_recipe(recipe_dict()), tmp_path / "missing", resume=True, progress=False)


class _NanAfter(torch.utils.data.Dataset):
    """Returns NaN inputs once ``clean`` items have been read (a diverging input pipeline)."""

    def __init__(self, base, clean: int):
        self.base, self.clean, self.reads = base, clean, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        x, y = self.base[i]
        return (torch.full_like(x, float("nan")) if self.reads > self.clean else x), y


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, digits):
    bundle = dataclasses.replace(digits, train=_NanAfter(digits.train, clean=44 * 32 + 320))
    recipe = load_recipe(recipe_dict(), ["method=none"])
    with pytest.raises(TrainingDiverged) as info:
        train(recipe, tmp_path / "run", progress=False, data=bundle, plots=False)
    message = str(info.value)
    assert "nan" in message.lower() and "epoch 2" in message and "ckpt-e0001-s00000044" in message
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpt_dir.iterdir() if p.is_dir()] == ["ckpt-e0001-s00000044"]
    weights = run_checkpoints.load_checkpoint(ckpt_dir / "ckpt-e0001-s00000044").weights
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
