"""Importance baselines (method: baseline): which neurons go, how many, seeding, and a digits run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.errors import UsageError
from compressor.training.config import load_recipe
from compressor.training.methods.baseline import BaselineConfig, BaselinePruning
from compressor.training.records import without_timing
from compressor.training.trainer import train

SCALES = [5.0, 1.0, 4.0, 2.0, 6.0, 3.0]  # row i of the hidden layer is SCALES[i] * ones


def _known_mlp() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(SCALES)[:, None].expand(6, 4))
        net[0].bias.zero_()
        net[2].weight.fill_(1.0)  # every consumer column has the same norm
    return net


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def test_magnitude_l1_removes_the_lowest_norm_neurons_and_slices_adam_state():
    net = _known_mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    b = BaselinePruning(net, BaselineConfig(importance="magnitude-l1", target_sparsity=0.5, at_epoch=1),
                        example_inputs=torch.zeros(2, 4), epochs=2)
    assert b.end_of_epoch(0, opt).removed == 3
    assert b.plan.groups[0].removed == [1, 3, 5]  # scales 1, 2, 3
    assert net[0].weight[:, 0].tolist() == pytest.approx([5.0, 4.0, 6.0], abs=0.01) and net[2].weight.shape == (3, 3)
    assert opt.state[net[0].weight]["exp_avg"].shape == (3, 4)
    assert b.end_of_epoch(1, opt) is None  # oneshot: once only


@pytest.mark.parametrize("importance", ["magnitude-l2", "taylor", "random"])
def test_target_sparsity_is_reached_exactly_over_iterative_prunings(importance):
    net = _mlp()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    cfg = BaselineConfig(importance=importance, target_sparsity=0.35, schedule="iterative", steps=3, at_epoch=2,
                         taylor_batches=2)
    b = BaselinePruning(net, cfg, example_inputs=torch.zeros(2, 4), loader=data, epochs=4)
    assert b.total_neurons == 18
    assert b.end_of_epoch(0, None) is None
    removed = [b.end_of_epoch(e, None).removed for e in (1, 2, 3)]
    assert removed == [2, 2, 2]  # round(0.35 * 18 * j / 3) = 2, 4, 6
    assert net[0].out_features + net[2].out_features == 12
    assert all(p.grad is None for p in net.parameters()), "taylor's gradients are cleared"


def test_random_importance_is_seeded():
    def removed(seed: int) -> list:
        net = _mlp()
        b = BaselinePruning(net, BaselineConfig(importance="random", target_sparsity=0.5), seed=seed,
                            example_inputs=torch.zeros(2, 4))
        b.end_of_epoch(0, None)
        return [(g.root, g.removed) for g in b.plan.groups]

    assert removed(3) == removed(3)
    assert removed(3) != removed(4)


def test_bn_scale_removes_the_smallest_gammas_and_min_channels_holds():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -0.1, 2.0, 0.2]))
    b = BaselinePruning(net.eval(), BaselineConfig(importance="bn-scale", target_sparsity=0.5),
                        example_inputs=torch.zeros(1, 1, 8, 8))
    b.end_of_epoch(0, None)
    assert b.plan.groups[0].removed == [1, 3] and net[1].weight.tolist() == pytest.approx([0.5, 2.0])
    net2 = _known_mlp()
    b2 = BaselinePruning(net2, BaselineConfig(target_sparsity=0.9, min_channels=2), example_inputs=torch.zeros(1, 4))
    assert b2.end_of_epoch(0, None).removed == 4 and net2[0].out_features == 2


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="baseline.importance"):
        BaselineConfig(importance="l1").validate()
    with pytest.raises(UsageError, match="train.epochs"):
        BaselinePruning(_mlp(), BaselineConfig(at_epoch=3), example_inputs=torch.zeros(1, 4), epochs=2)


def test_digits_cnn_run_with_a_baseline(tmp_path):
    from compressor.data import load_data

    raw = {"method": "baseline", "model": {"arch": "cnn"}, "data": {"spec": "digits", "batch_size": 64},
           "train": {"epochs": 2, "lr": 5e-3, "log_every": 50, "seed": 0},
           "baseline": {"importance": "taylor", "target_sparsity": 0.5, "at_epoch": 1, "samples": 128}}
    run = train(load_recipe(raw), tmp_path / "b", progress=False, plots=False, tensorboard=False,
                data=load_data("digits"), save_model=False)
    s = run.summary
    assert s["neurons_before"] == 96 and s["neuron_sparsity"] == pytest.approx(0.5)
    assert run.history[0]["live_total"] == 48 and s["params_after"] < s["params_before"]
    assert run.plan.criterion["name"] == "baseline" and s["test_accuracy"] > 0.8


# ---------------------------------------------------------------- resume mid-run

def _iterative_recipe():
    return load_recipe({
        "method": "baseline", "model": {"arch": "mlp", "kwargs": {"widths": [64, 64]}},
        "data": {"spec": "digits", "batch_size": 32},
        "train": {"epochs": 4, "lr": 1e-2, "lr_schedule": "cosine", "log_every": 10, "seed": 0},
        "baseline": {"importance": "taylor", "target_sparsity": 0.5, "schedule": "iterative", "steps": 3,
                     "at_epoch": 1, "samples": 128, "taylor_batches": 2},
    })


def test_iterative_baseline_interrupted_mid_run_resumes_like_the_uninterrupted_run(tmp_path, monkeypatch):
    """SIGINT inside epoch 2 (after the first of three prunings, 44 steps per epoch): the resumed run
    makes the remaining prunings and ends with the same metrics, plan and weights."""
    import os
    import signal

    from compressor.data import load_data
    from compressor.training.metrics import read_metrics
    from compressor.training.run_checkpoints import latest_checkpoint
    from compressor.training.trainer import TrainingInterrupted

    digits = load_data("digits")
    kw = dict(progress=False, plots=False, tensorboard=False, data=digits, save_model=False)
    ref = train(_iterative_recipe(), tmp_path / "ref", **kw)
    assert [r["removed"] for r in read_metrics(tmp_path / "ref") if r["kind"] == "removal"] == [21, 22, 21]  # 64 of 128

    original = BaselinePruning.after_step

    def after_step(self, step, optimizer):
        out = original(self, step, optimizer)
        if step == 60:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
        return out

    monkeypatch.setattr(BaselinePruning, "after_step", after_step)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(_iterative_recipe(), run, **kw)
    assert latest_checkpoint(run / "checkpoints").name == "ckpt-e0001-s00000061"  # mid-epoch, one pruning done
    monkeypatch.setattr(BaselinePruning, "after_step", original)
    resumed = train(_iterative_recipe(), run, resume=True, **kw)

    assert without_timing(read_metrics(run)) == without_timing(read_metrics(tmp_path / "ref"))
    assert resumed.plan.removal_hash() == ref.plan.removal_hash()
    ref_state, state = ref.model.state_dict(), resumed.model.state_dict()
    assert ref_state.keys() == state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], state[key]), key
