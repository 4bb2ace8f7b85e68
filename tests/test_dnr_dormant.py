"""DNR-Pruning (entropy, KL, score on hand-computed cases; target sparsity) and training-time dormant pruning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compressor.errors import UsageError
from compressor.training.config import load_recipe
from compressor.training.methods.dnr import (
    DNRConfig,
    DNRPruning,
    dnr_score,
    entropy,
    kl_divergence,
    weight_distribution,
)
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
    s = dnr_score(torch.tensor([H_PREV], **f64), torch.tensor([H_T], **f64), torch.tensor([KL], **f64),
                  2 * KL, 2.0, 0.5, eps)
    assert s.item() == pytest.approx(2.0 * (H_PREV - H_T) / H_PREV + 0.5 * 0.5, abs=1e-9)
    assert weight_distribution(torch.zeros(1, 4)).tolist() == [[0.25] * 4]  # a zero row: uniform


def _net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]]))
    return net


def test_dnr_scores_against_the_weights_before_training_and_prunes_above_tau():
    """Algorithm 1: W^(t-1) is taken before training (line 2); scores exist only at milestones."""
    net = _net()
    d = DNRPruning(net, DNRConfig(tau=1.2, interval_epochs=2), example_inputs=torch.zeros(2, 3), epochs=4)
    assert torch.equal(d.prev["0.weight"], net[0].weight.detach().abs().double())
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, -3.0, 0.0])  # row 1 unchanged: DNR 0
    assert d.end_of_epoch(0, None) is None and d.scores == {}  # not a milestone: nothing scored
    assert torch.equal(d.prev["0.weight"][0], torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))
    event = d.end_of_epoch(1, None)  # PI = 2: scored against the initial weights, then pruned
    # row 0 scores (H_PREV - H_T) / H_PREV + 1 (D_max is this layer's largest KL, this one) > tau 1.2
    assert d.d_max["0"] == pytest.approx(KL, abs=1e-9)
    assert event is not None and event.removed == 1
    assert net[0].weight.shape == (1, 3) and torch.equal(net[0].weight[0], torch.tensor([1.0, 1.0, 1.0]))
    assert d.plan.groups[0].removed == [0]
    assert torch.equal(d.prev["0.weight"], net[0].weight.detach().abs().double()), "W^(t-1) <- W^(t) after pruning"
    assert d.scores["0"].shape == (1,), "the scores follow the removal"


def test_dnr_previous_weights_move_only_at_milestones():
    """Between milestones the weights may drift back; the next milestone still compares with the last one."""
    net = _net()
    d = DNRPruning(net, DNRConfig(tau=10.0, interval_epochs=3), example_inputs=torch.zeros(2, 3), epochs=6)
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, -3.0, 0.0])
    for epoch in range(3):
        d.end_of_epoch(epoch, None)
    assert d.scores["0"][0].item() == pytest.approx((H_PREV - H_T) / H_PREV + 1.0, abs=1e-9)
    with torch.no_grad():  # drift away at epoch 4, back at epoch 5: the milestone at 6 sees no change
        net[0].weight[0] = torch.tensor([5.0, 0.1, 0.1])
        d.end_of_epoch(3, None)
        net[0].weight[0] = torch.tensor([1.0, -3.0, 0.0])
        d.end_of_epoch(4, None)
    d.end_of_epoch(5, None)
    assert d.scores["0"].abs().max().item() == pytest.approx(0.0, abs=1e-9)


def test_dnr_d_max_is_per_layer():
    """Algorithm 1, line 16: D_max = max_j KL over the layer's neurons, so each layer's top KL term is β."""
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 2.0]]))
    d = DNRPruning(net, DNRConfig(alpha=0.0, beta=1.0, tau=10.0, interval_epochs=1), example_inputs=torch.zeros(2, 3),
                   epochs=2)
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, -3.0, 0.0])  # a large change in layer 0
        net[2].weight[1] = torch.tensor([1.0, 1.1])  # a small one in layer 2
    d.end_of_epoch(0, None)
    assert d.d_max["0"] > 10 * d.d_max["2"] > 0
    assert d.scores["0"].max().item() == pytest.approx(1.0, abs=1e-9)
    assert d.scores["2"].max().item() == pytest.approx(1.0, abs=1e-9), "a global D_max would give layer 2 << 1"


def test_dnr_score_and_reactivation_values():
    net = _net()
    d = DNRPruning(net, DNRConfig(tau=10.0, interval_epochs=1), example_inputs=torch.zeros(2, 3), epochs=5)
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, -3.0, 0.0])
    d.end_of_epoch(0, None)
    s = d.scores["0"]
    assert s[0].item() == pytest.approx((H_PREV - H_T) / H_PREV + 1.0, abs=1e-9)
    assert s[1].item() == pytest.approx(0.0, abs=1e-9)
    r = d.reactivation()["0"]
    assert r[0].item() == pytest.approx(0.0, abs=1e-9)
    d.end_of_epoch(1, None)  # nothing changed: DNR 0 now, max_t DNR stays -> R = 1 for neuron 0
    assert d.reactivation()["0"][0].item() == pytest.approx(1.0, abs=1e-9)
    assert d.metrics(0)["dnr_kl_max"] == pytest.approx(0.0, abs=1e-9)


def test_dnr_reactivation_potential_stays_in_0_1():
    """Definition 3.4: R in [0, 1], also for a negative DNR (entropy increase) and a max_t DNR near or below 0."""
    net = _net()
    d = DNRPruning(net, DNRConfig(tau=10.0, interval_epochs=1), example_inputs=torch.zeros(2, 3), epochs=3)
    d.scores = {"0": torch.tensor([-0.5, 0.2], dtype=torch.float64)}
    d.max_dnr = {"0": torch.tensor([1e-13, 0.4], dtype=torch.float64)}  # a max near 0 once gave R = -2.8e9 ...
    r = d.reactivation()["0"]
    assert r.tolist() == pytest.approx([1.0, 0.5])
    d.max_dnr = {"0": torch.tensor([-0.5, 0.2], dtype=torch.float64)}  # never positive: full potential
    assert d.reactivation()["0"].tolist() == pytest.approx([1.0, 0.0], abs=1e-9)
    # and through a real milestone: an entropy increase alone (β = 0) gives DNR < 0, and R = 1
    d = DNRPruning(net, DNRConfig(beta=0.0, tau=10.0, interval_epochs=1), example_inputs=torch.zeros(2, 3), epochs=3)
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, 1.0, 1.0])  # [1, 1, 2] -> uniform: H rises
    d.end_of_epoch(0, None)
    assert d.scores["0"][0].item() == pytest.approx((H_PREV - math.log2(3)) / H_PREV, abs=1e-9) and d.scores["0"][0] < 0
    assert d.reactivation()["0"][0].item() == 1.0 and 0.0 <= d.metrics(0)["dnr_mean_R"] <= 1.0


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
    # W^(t-1) is the initial weights, so the first milestone (epoch 1) is scored: 16 neurons each epoch
    assert live == [112, 96, 80, 64]
    linears = [m for m in run.model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears[:-1]] == [32, 32], "every layer gives up the same share"


def test_dnr_stop_epoch_reaches_the_target_early_and_leaves_epochs_to_recover(tmp_path, digits):
    raw = _raw("dnr", {"interval_epochs": 1, "target_sparsity": 0.5, "stop_epoch": 3})
    raw["train"]["epochs"] = 5
    run = train(load_recipe(raw), tmp_path / "dnr", progress=False, plots=False, tensorboard=False, data=digits,
                save_model=False)
    live = [h["live_total"] for h in run.history]
    # K = 3 milestones, each of the two 64-neuron layers loses round(32 * j / 3): the target at epoch 3, then none
    assert live == [128 - 2 * round(32 / 3), 128 - 2 * round(64 / 3), 64, 64, 64]
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
