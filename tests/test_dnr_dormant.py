"""DNR-Pruning (entropy, KL, score on hand-computed cases; target sparsity) and training-time dormant pruning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compressor.errors import UsageError
from compressor.training.config import load_recipe
from compressor.training.methods.dnr import (DNRConfig, DNRPruning, dnr_score, entropy, kl_divergence,
                                     weight_distribution)
from compressor.training.methods.dormant import DormantConfig, DormantPruning
from compressor.training.trainer import train

# hand computation: w_prev = [1, 1, 2] -> p = [1/4, 1/4, 1/2], H = 1.5 bits;
# w_t = [1, -3, 0] -> p = [1/4, 3/4, 0], H = 0.5 + 0.75*log2(4/3);
# KL(p_t || p_prev) = 1/4 ln 1 + 3/4 ln 3 + 0
H_PREV = 1.5
H_T = 0.5 + 0.75 * math.log2(4 / 3)
KL = 0.75 * math.log(3)


def test_entropy_kl_and_score_on_a_hand_computed_case():
    p_prev = weight_distribution(torch.tensor([[1.0, 1.0, 2.0]]))
    p_t = weight_distribution(torch.tensor([[1.0, -3.0, 0.0]]))
    assert p_prev.tolist() == [[0.25, 0.25, 0.5]] and p_t.tolist() == [[0.25, 0.75, 0.0]]
    eps = 1e-12
    assert entropy(p_prev, eps).item() == pytest.approx(H_PREV, abs=1e-9)
    assert entropy(p_t, eps).item() == pytest.approx(H_T, abs=1e-9)
    assert kl_divergence(p_t, p_prev, eps).item() == pytest.approx(KL, abs=1e-9)
    f64 = dict(dtype=torch.float64)
    s = dnr_score(torch.tensor([H_PREV], **f64), torch.tensor([H_T], **f64), torch.tensor([KL], **f64), 2 * KL, 2.0, 0.5,
                  eps)
    assert s.item() == pytest.approx(2.0 * (H_PREV - H_T) / H_PREV + 0.5 * 0.5, abs=1e-9)
    assert weight_distribution(torch.zeros(1, 4)).tolist() == [[0.25] * 4]  # a zero row: uniform


def _net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]]))
    return net


def test_dnr_pruning_scores_the_model_and_prunes_above_tau():
    net = _net()
    d = DNRPruning(net, DNRConfig(tau=1.2, interval_epochs=2), example_inputs=torch.zeros(2, 3), epochs=4)
    assert d.end_of_epoch(0, None) is None and d.scores == {}  # the first epoch has no previous weights
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, -3.0, 0.0])  # row 1 unchanged: DNR 0
    event = d.end_of_epoch(1, None)  # PI = 2: scored, then pruned
    # row 0 scores (H_PREV - H_T) / H_PREV + 1 (D_max is this KL, so the second term is 1) > tau 1.2
    assert d.d_max == pytest.approx(KL, abs=1e-9)
    assert event is not None and event.removed == 1
    assert net[0].weight.shape == (1, 3) and torch.equal(net[0].weight[0], torch.tensor([1.0, 1.0, 1.0]))
    assert d.plan.groups[0].removed == [0]
    assert d.prev["0.weight"].shape == (1, 3), "the previous weights follow the removal"


def test_dnr_score_and_reactivation_values():
    net = _net()
    d = DNRPruning(net, DNRConfig(tau=10.0, interval_epochs=5), example_inputs=torch.zeros(2, 3), epochs=5)
    d.end_of_epoch(0, None)
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, -3.0, 0.0])
    d.end_of_epoch(1, None)
    s = d.scores["0"]
    assert s[0].item() == pytest.approx((H_PREV - H_T) / H_PREV + 1.0, abs=1e-9)
    assert s[1].item() == pytest.approx(0.0, abs=1e-9)
    r = d.reactivation()["0"]
    assert r[0].item() == pytest.approx(0.0, abs=1e-9)
    d.end_of_epoch(2, None)  # nothing changed: DNR 0 now, max_t DNR stays -> R = 1 for neuron 0
    assert d.reactivation()["0"][0].item() == pytest.approx(1.0, abs=1e-9)
    assert d.metrics(0)["dnr_kl_max"] == pytest.approx(KL, abs=1e-9)


@pytest.fixture(scope="module")
def digits():
    from compressor.data import load_data

    return load_data("digits")


def _raw(method: str, section: dict) -> dict:
    return {"method": method, "model": {"arch": "mlp", "kwargs": {"widths": [64, 64]}},
            "data": {"spec": "digits", "batch_size": 32},
            "train": {"epochs": 4, "lr": 1e-2, "lr_schedule": "cosine", "log_every": 50, "seed": 0},
            method: section}


def test_dnr_run_reaches_the_target_sparsity_evenly(tmp_path, digits):
    run = train(load_recipe(_raw("dnr", {"interval_epochs": 1, "target_sparsity": 0.5})), tmp_path / "dnr",
                progress=False, plots=False, tensorboard=False, data=digits, save_model=False)
    assert run.summary["neurons_before"] == 128 and run.summary["neuron_sparsity"] == pytest.approx(0.5)
    live = [h["live_total"] for h in run.history]
    # epoch 1 has no previous weights (caught up at epoch 2), then 16 more per interval
    assert live == [128, 128 - 64 * 2 // 4, 128 - 64 * 3 // 4, 64]
    linears = [m for m in run.model.modules() if isinstance(m, nn.Linear)]
    assert sum(m.out_features for m in linears[:-1]) == 64


def test_dnr_stop_epoch_reaches_the_target_early_and_leaves_epochs_to_recover(tmp_path, digits):
    raw = _raw("dnr", {"interval_epochs": 1, "target_sparsity": 0.5, "stop_epoch": 3})
    raw["train"]["epochs"] = 5
    run = train(load_recipe(raw), tmp_path / "dnr", progress=False, plots=False, tensorboard=False, data=digits,
                save_model=False)
    live = [h["live_total"] for h in run.history]
    # K = 3 intervals: epoch 1 has no scores (caught up at 2), the target is reached at epoch 3, then none
    assert live == [128, 128 - round(64 * 2 / 3), 64, 64, 64]
    with pytest.raises(UsageError, match="stop_epoch = 1 comes before the first pruning"):
        train(load_recipe(_raw("dnr", {"interval_epochs": 2, "stop_epoch": 1})), tmp_path / "bad", progress=False,
              data=digits)


def test_dormant_pruning_removes_the_low_score_neuron():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.rand(6, 4) + 0.1)
        net[0].bias.zero_()
        net[0].weight[3] *= 1e-3  # ReDo score about 1e-3 / mean: dormant at tau 0.1
    x = torch.rand(32, 4)
    kept = net[0].weight[[0, 1, 2, 4, 5]].detach().clone()
    d = DormantPruning(net, DormantConfig(tau=0.1, interval_epochs=2), example_inputs=x[:2], loader=[(x, None)])
    assert d.end_of_epoch(0, None) is None  # PI = 2
    event = d.end_of_epoch(1, None)
    assert event.removed == 1 and d.plan.groups[0].removed == [3]
    assert torch.equal(net[0].weight.detach(), kept)
    assert d.metrics(0)["dormant_neurons"] == 1


def test_dormant_method_prunes_during_a_run(tmp_path, digits):
    run = train(load_recipe(_raw("dormant", {"tau": 0.1, "interval_epochs": 2, "samples": 256})), tmp_path / "dm",
                progress=False, plots=False, tensorboard=False, data=digits, save_model=False)
    assert run.summary["removed_channels"] > 0 and run.plan.criterion["name"] == "dormant"
    assert run.history[0]["live_total"] == 128 > run.history[1]["live_total"]  # pruned at the end of epoch 2
    assert run.summary["test_accuracy"] > 0.8
