"""The analyzer removes exactly the channels dead at every consumer, losslessly, through coupling."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from compressor.activity import collect_activity
from compressor.criteria import Criterion, Dead, Dormant, Saturated, parse_criterion
from compressor.errors import UsageError
from compressor.graph import DependencyAnalyzer
from compressor.plan import GroupRemoval, PruningPlan
from compressor.planting import plant_dead_channels


def _prune(model: nn.Module, x: torch.Tensor, criterion: Criterion | None = None, **kw):
    analyzer = DependencyAnalyzer(model, x, **kw)
    stats = collect_activity(model, [x], layers=analyzer.consumer_names, progress=False)
    plan = analyzer.decide(stats, criterion or Dead())
    return analyzer, stats, plan


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "densenet121"])
def test_planted_dead_channels_removed_losslessly(arch: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=10).eval()
    x = torch.randn(8, 3, 64, 64)
    analyzer = DependencyAnalyzer(model, x)
    planted = plant_dead_channels(model, analyzer, channels=(0, 3), max_groups=4)
    assert planted, "nothing was planted"
    dense = copy.deepcopy(model)
    stats = collect_activity(model, [x], layers=analyzer.consumer_names, progress=False)
    plan = analyzer.decide(stats, Dead())
    removed = {g.root: set(g.removed) for g in plan.groups}
    # every planted channel whose readers all see zeros must be removed
    effective = 0
    for root, chans in planted.items():
        dead_mask = analyzer.removable_channels(analyzer.group(root), stats, Dead())
        for c in chans:
            if dead_mask[c]:
                effective += 1
                assert c in removed.get(root, set()), f"planted dead channel {root}[{c}] was kept"
    assert effective >= 2
    # the planted channels alone are dead on every input: removing them keeps outputs on new data too
    planted_only = PruningPlan(groups=[
        GroupRemoval(g.root, g.size, [c for c in g.removed if c in planted.get(g.root, ())], g.members)
        for g in plan.groups if any(c in planted.get(g.root, ()) for c in g.removed)])
    assert planted_only.removed_channels == effective
    held_model = copy.deepcopy(dense)
    DependencyAnalyzer(held_model, x).apply(planted_only)
    result = analyzer.apply(plan)
    assert result.removed == plan.removed_channels > 0
    x2 = torch.randn(4, 3, 64, 64)  # data never used for decisions
    with torch.no_grad():
        assert torch.allclose(dense(x), model(x), atol=1e-4, rtol=0), "lossless on the decision samples"
        ref, out = dense(x2), held_model(x2)
    assert out.shape == ref.shape == (4, 10)
    assert torch.allclose(ref, out, atol=1e-4 * float(ref.abs().max()), rtol=0), "planted removal lossy on new data"
    assert sum(p.numel() for p in held_model.parameters()) < sum(p.numel() for p in dense.parameters())


def test_classifier_outputs_never_pruned_and_min_channels_kept() -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].bias.fill_(-1e3)  # every hidden unit of the first layer dead
        model[4].bias.fill_(-1e3)  # the classifier "dead" too: still never pruned
    x = torch.randn(16, 6)
    analyzer, stats, plan = _prune(model, x)
    blocked = {g.root: g.blocked for g in analyzer.groups}
    assert blocked["4"] and "output" in blocked["4"]
    assert plan.group("0").after == 1  # --min-channels 1 keeps one dead channel
    analyzer.apply(plan)
    assert model[4].out_features == 3
    assert model[0].out_features == 1 and model[2].in_features == 1


def test_round_to_keeps_dead_channels_but_never_removes_live_ones() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias[:11] = -1e3  # 11 dead, 5 live
    x = torch.randn(32, 4)
    analyzer, _, plan = _prune(model, x, round_to=4)
    g = plan.group("0")
    assert g.after == 8 and set(g.removed) <= set(range(11))
    live = set(range(11, 16))
    assert not live & set(g.removed)


def test_ignore_blocks_group_and_unknown_name_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias[:4] = -1e3
    x = torch.randn(8, 4)
    analyzer, _, plan = _prune(model, x, ignore=["0"])
    assert plan.is_empty() and "ignored" in analyzer.group("0").blocked
    with pytest.raises(UsageError, match="did you mean"):
        DependencyAnalyzer(model, x, ignore=["20"])


def test_frozen_parameters_and_training_mode_are_restored() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    analyzer = DependencyAnalyzer(model, x)
    # without the guard torch-pruning finds far fewer groups when parameters are frozen
    assert len(analyzer.groups) == 13
    assert model.training
    model.eval()
    planted = plant_dead_channels(model, analyzer, channels=(1,), max_groups=3)
    stats = collect_activity(model, [x], layers=analyzer.consumer_names, progress=False)
    plan = analyzer.decide(stats, Dead())
    model.train()
    analyzer.apply(plan)
    assert model.training
    assert planted
    assert all(not p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())


def test_vit_stream_is_blocked_and_mlp_hidden_units_are_removed() -> None:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    with torch.no_grad():
        model.encoder.layers[0].mlp[0].bias[:10] = -1e3  # GELU(-1e3) == 0 exactly
    x = torch.randn(4, 3, 32, 32)
    dense = copy.deepcopy(model)
    analyzer, _, plan = _prune(model, x)
    stream = [g for g in analyzer.groups if "LayerNorm" in (g.blocked or "")]
    assert stream, "the residual stream must be blocked by its LayerNorms"
    mlp = plan.group("encoder.layers.encoder_layer_0.mlp.0")
    assert mlp is not None and set(range(10)) <= set(mlp.removed)
    analyzer.apply(plan)
    assert model.encoder.layers[0].mlp[0].out_features == 64 - len(mlp.removed)
    assert model.encoder.layers[0].self_attention.num_heads == 2
    with torch.no_grad():
        assert torch.allclose(dense(x), model(x), atol=1e-5)


def test_index_maps_slice_any_state_exactly() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    analyzer = DependencyAnalyzer(model, x)
    plant_dead_channels(model, analyzer, channels=(2, 5))
    old = {k: v.clone() for k, v in model.state_dict().items()}
    stats = collect_activity(model, [x], layers=analyzer.consumer_names, progress=False)
    result = analyzer.apply(analyzer.decide(stats, Dead()))
    new = model.state_dict()
    assert result.index_maps
    for name, idx in result.index_maps.items():
        assert torch.equal(old[name].flatten()[idx].view(new[name].shape), new[name])
    assert set(result.new_params) == set(result.old_params)
    with pytest.raises(RuntimeError, match="stale"):
        analyzer.decide(stats, Dead())


def test_lossy_criteria_select_near_dead_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.01), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias[:3] = -50.0  # never positive: saturated, but not exactly zero
        model[0].weight[3] *= 1e-4  # tiny activity: dormant
    x = torch.randn(64, 4)
    _, _, plan = _prune(model, x, criterion=Dead())
    assert plan.is_empty()
    _, _, plan = _prune(model, x, criterion=Saturated())
    assert set(plan.group("0").removed) >= {0, 1, 2}
    _, _, plan = _prune(model, x, criterion=Dormant(0.1))
    assert 3 in plan.group("0").removed


@pytest.mark.parametrize("spec,expected", [("dead", Dead()), ("dead:0.5", Dead(0.5)),
                                           ("saturated", Saturated()), ("dormant:0.1", Dormant(0.1))])
def test_parse_criterion(spec, expected) -> None:
    assert parse_criterion(spec) == expected


@pytest.mark.parametrize("bad", ["deadish", "dormant:x", "dead:-1"])
def test_parse_criterion_rejects_bad_specs(bad) -> None:
    with pytest.raises(UsageError):
        parse_criterion(bad)


def test_plan_from_another_model_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    analyzer = DependencyAnalyzer(model, torch.randn(1, 4))
    from compressor.errors import CheckpointError

    with pytest.raises(CheckpointError, match="another model"):
        analyzer.apply(PruningPlan(groups=[GroupRemoval("features.0", 8, [1])]))
    with pytest.raises(CheckpointError, match="expects 16"):
        analyzer.apply(PruningPlan(groups=[GroupRemoval("0", 16, [1])]))


def test_flatten_to_linear_channel_is_dead_only_if_every_feature_is() -> None:
    """A channel flattened into H*W Linear features is removable only if all of them are zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.ones(1, 1, 4, 4)
    x[0, 0, 3, 3] = -1.0  # the last position of the flattened channel is the only zero one
    with torch.no_grad():
        model[0].bias[0] = -1e3  # channel 0: dead everywhere
        model[0].weight[1].zero_()  # channel 1 copies relu(x): non-zero at every position but the last
        model[0].bias[1] = 0.0
        model[0].weight[1, 0, 1, 1] = 1.0
    dense = copy.deepcopy(model)
    analyzer, stats, plan = _prune(model, x)
    removed = set(plan.group("0").removed)
    assert 0 in removed
    assert 1 not in removed  # 15 of its 16 features are non-zero
    analyzer.apply(plan)
    with torch.no_grad():
        assert torch.allclose(dense(x), model(x), atol=1e-6)
