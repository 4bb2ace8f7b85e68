"""The training loop: schedules, optimizers, plain and DemP training on real data, outputs, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.counting import count_macs
from compressor.errors import DataError, UsageError
from compressor.training.config import TrainConfig, load_recipe
from compressor.training.metrics import read_metrics
from compressor.training.optim import LRSchedule, build_optimizer
from compressor.training.trainer import train


def small_recipe(**sections):
    """A tiny MLP on the bundled digits: about a second per epoch on one CPU core."""
    raw = {
        "method": "demp",
        "model": {"arch": "mlp", "kwargs": {"widths": [64, 64]}},
        "data": {"spec": "digits", "batch_size": 32},
        "train": {"epochs": 3, "lr": 1e-2, "lr_schedule": "cosine", "log_every": 10},
        "demp": {"regularizer": "lasso", "target": "weights", "peak": 3e-3, "interval": 15, "death_samples": 256},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return load_recipe(raw)


@pytest.fixture(scope="module")
def digits():
    from compressor.data import load_data

    return load_data("digits")


# ---------------------------------------------------------------------------- schedules / optimizers


def _factors(cfg: TrainConfig, spe: int, total: int) -> list[float]:
    sched = LRSchedule(cfg, spe, total)
    return [sched.factor(t) for t in range(total)]


def test_step_and_multistep_schedules_decay_at_epoch_boundaries():
    f = _factors(TrainConfig(epochs=5, lr_schedule="step", step_size=2, gamma=0.5), 10, 50)
    assert f[19] == 1.0 and f[20] == 0.5 and f[39] == 0.5 and f[40] == 0.25
    f = _factors(TrainConfig(epochs=5, lr_schedule="multistep", milestones=[1, 3], gamma=0.1), 10, 50)
    assert f[9] == 1.0 and f[10] == pytest.approx(0.1) and f[29] == pytest.approx(0.1) and f[30] == pytest.approx(0.01)


def test_cosine_schedule_and_warmup():
    f = _factors(TrainConfig(epochs=4, lr_schedule="cosine", min_lr_factor=0.1), 25, 100)
    assert f[0] == 1.0 and f[50] == pytest.approx(0.55) and f[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(f, f[1:], strict=False))
    w = _factors(TrainConfig(epochs=4, lr_schedule="cosine", warmup_epochs=1), 25, 100)
    assert all(a < b for a, b in zip(w[:25], w[1:26], strict=True)), "linear warm-up rises"
    assert w[0] == pytest.approx(1 / 26) and w[25] == 1.0
    assert all(a >= b for a, b in zip(w[25:], w[26:], strict=False)), "then cosine decays over the remaining steps"


def test_one_cycle_matches_torch_onecycle():
    cfg = TrainConfig(epochs=3, lr=0.05, lr_schedule="one_cycle", pct_start=0.25, div_factor=10, final_div_factor=100)
    total = 60
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25, div_factor=10,
                                              final_div_factor=100, cycle_momentum=False)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    ours = [cfg.lr * f for f in _factors(cfg, 20, total)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_build_optimizer_variants():
    params = [nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer(TrainConfig(optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-4), params)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 1e-4
    adamw = build_optimizer(TrainConfig(optimizer="adamw", betas=[0.8, 0.99], adam_eps=1e-6), params)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.8, 0.99) and adamw.defaults["eps"] == 1e-6
    assert type(build_optimizer(TrainConfig(optimizer="adam"), params)) is torch.optim.Adam


def test_count_macs_counts_convolutions_exactly_and_pooling_per_input():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    model.train()
    convs_and_linear = 8 * 8 * 8 * 3 * 9 + 8 * 8 * 8 * 4 * 9 + 10 * 8
    pooling = 8 * 8 * 8  # adaptive average pooling: one per input element (fvcore's convention)
    assert count_macs(model, (3, 8, 8)).total_macs == convs_and_linear + pooling
    assert model.training, "counting restores the train mode"


# ---------------------------------------------------------------------------- real training runs


def test_plain_training_learns_and_writes_everything(tmp_path: Path, digits):
    recipe = small_recipe(method="none", train={"epochs": 3, "checkpoint_keep": 2, "optimizer": "sgd", "lr": 0.05,
                                                "momentum": 0.9, "nesterov": True, "label_smoothing": 0.1})
    result = train(recipe, tmp_path / "run", progress=False, data=digits)
    s = result.summary
    assert s["test_accuracy"] > 0.85
    assert s["params_before"] == s["params_after"] and result.plan.is_empty()
    out = tmp_path / "run"
    records = read_metrics(out)
    kinds = [r["kind"] for r in records]
    assert kinds.count("epoch") == 3 and kinds[-1] == "final" and "interval" in kinds
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(r["macs"] == s["macs_before"] and r["params"] == s["params_before"] for r in epochs)
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == [
        "ckpt-e0002-s00000088", "ckpt-e0003-s00000132"], "the last two epoch checkpoints are kept"
    assert load_recipe(out / "recipe.yaml") == recipe
    assert {p.name for p in (out / "plots").iterdir()} >= {"live_neurons.png", "accuracy.png", "schedules.png"}
    assert json.loads((out / "train_summary.json").read_text())["test_accuracy"] == s["test_accuracy"]

    from compressor.pruned import load_pruned

    loaded = load_pruned(out / "model")
    x = torch.stack([digits.test[i][0] for i in range(32)])
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


def test_demp_training_removes_dead_neurons_losslessly(tmp_path: Path, digits):
    recipe = small_recipe(train={"epochs": 3, "warmup_epochs": 0.5})
    result = train(recipe, tmp_path / "run", progress=False, data=digits)
    s = result.summary
    assert s["neurons_before"] == 128
    assert s["neurons_after"] < s["neurons_before"] and s["params_after"] < s["params_before"]
    assert s["macs_after"] < s["macs_before"]
    assert s["test_accuracy"] > 0.85
    assert s["final_removal_parity"]["max_abs_diff"] == 0.0, "removing dead ReLU neurons is exact"
    assert result.plan.removed_channels == s["neurons_before"] - s["neurons_after"]
    assert result.plan.model["arch"] == "mlp"

    records = read_metrics(tmp_path / "run")
    intervals = [r for r in records if r["kind"] == "interval"]
    assert all("lambda" in r and "sigma" in r and "live_total" in r and r["step_ms"] > 0 for r in intervals)
    lambdas = [r["lambda"] for r in intervals]
    assert max(lambdas) == pytest.approx(3e-3, rel=0.05) and lambdas[-1] < lambdas[0], "one-cycle lambda"
    removals = [r for r in records if r["kind"] == "removal"]
    assert len(removals) == 132 // 15 + 1, "a measurement every 15 steps plus the final one"
    assert sum(r["removed"] for r in removals) == result.plan.removed_channels
    live = [r["live_total"] for r in intervals]
    assert all(a >= b for a, b in zip(live, live[1:], strict=False)), "removed neurons never come back"
    params = [r["params"] for r in intervals]
    assert params[-1] < params[0], "the model shrinks during training, not only at the end"

    from compressor.pruned import load_pruned

    loaded = load_pruned(tmp_path / "run" / "model")
    x = torch.stack([digits.test[i][0] for i in range(64)])
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    assert sum(p.numel() for p in loaded.parameters()) == s["params_after"]


def test_output_directory_is_not_overwritten(tmp_path: Path, digits):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(UsageError, match="--overwrite"):
        train(small_recipe(), out, progress=False, data=digits)
    assert (out / "keep.txt").read_text() == "user file"


def test_missing_dataset_is_a_clear_error(tmp_path: Path, capsys):
    from compressor.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {arch: resnet18-cifar}\ntrain: {epochs: 1}\n")
    code = main(["train", "--recipe", str(recipe), "--data", f"cifar10:{tmp_path / 'no-such-dir'}",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-dir" in err and "Traceback" not in err  # an input to fix: exit code 2
    assert not (tmp_path / "out").exists(), "nothing is created for a run that cannot start"
    with pytest.raises(DataError):
        from compressor.data import load_data

        load_data(f"cifar10:{tmp_path / 'no-such-dir'}")


def test_unknown_architecture_is_a_clear_error(tmp_path: Path, digits):
    with pytest.raises(UsageError, match="unknown architecture"):
        train(small_recipe(model={"arch": "resnet19"}), tmp_path / "run", progress=False, data=digits)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_training(tmp_path: Path, digits):
    recipe = small_recipe(train={"epochs": 2, "device": "cuda", "bf16": True})
    result = train(recipe, tmp_path / "run", progress=False, data=digits)
    assert result.summary["test_accuracy"] > 0.8
    assert math.isfinite(result.summary["test_loss"])
    assert result.summary["neurons_after"] <= result.summary["neurons_before"]


def test_validation_split_is_held_out_from_training_and_hosts_the_death_samples(tmp_path: Path, digits):
    from torch.utils.data import Subset

    from compressor.training.splits import TrainingSplits
    from compressor.training.trainer import Trainer

    n_train = len(digits.train)
    recipe = small_recipe(data={"val_samples": 300}, train={"epochs": 1},
                          demp={"death_samples": 200, "interval": 10})
    trainer = Trainer(recipe, tmp_path / "val", progress=False, plots=False, tensorboard=False, data=digits,
                      save_model=False)
    result = trainer.fit()
    train_split = result.data.train
    assert isinstance(train_split, Subset) and len(train_split) == n_train - 300
    splits = TrainingSplits(recipe, digits)  # the same seed: the same split as the run's
    val = set(splits.val_idx)
    assert len(val) == 300 and val.isdisjoint(train_split.indices)
    death = splits.measurement(200)
    assert len(death) == 200 and set(death.indices) <= val and splits.measurement_samples(200) == 200
    # one epoch over the remaining samples only: (1437 - 300) // 32 steps
    assert result.summary["step"] == (n_train - 300) // 32
    epoch = [h for h in result.history if h["kind"] == "epoch"][-1]
    assert 0.0 <= epoch["val_accuracy"] <= 1.0 and epoch["val_loss"] > 0
    assert result.summary["val_accuracy"] is not None


def test_validation_split_larger_than_the_training_split_is_a_clear_error(tmp_path: Path, digits):
    with pytest.raises(UsageError,
                       match=r"data.val_samples = 5000 leaves no training samples.*--set data.val_samples="):
        train(small_recipe(data={"val_samples": 5000}), tmp_path / "big", progress=False, data=digits)
    assert not (tmp_path / "big").exists()
    with pytest.raises(UsageError, match="data.val_samples"):
        small_recipe(data={"val_samples": -1})


def test_a_fraction_of_an_epoch_trains_that_share_of_the_steps(tmp_path: Path, digits):
    from compressor.training.splits import steps_per_epoch

    recipe = small_recipe(method="none", train={"epochs": 1.5})
    result = train(recipe, tmp_path / "run", progress=False, data=digits, plots=False, tensorboard=False)
    spe = steps_per_epoch(len(digits.train), 32, True)
    epochs = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == [spe, round(1.5 * spe)]  # the second epoch stops half-way
    assert result.summary["step"] == round(1.5 * spe)
    tiny = train(small_recipe(method="none", train={"epochs": 0.01}), tmp_path / "tiny", progress=False,
                 data=digits, plots=False, tensorboard=False)
    assert tiny.summary["step"] == 1  # at least one step
