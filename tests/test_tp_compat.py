"""Every reach into torch-pruning's internals (compressor/graph/tp_compat.py) is scoped, restored and
checked against the installed version."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning.dependency import index_mapping as im
from torch_pruning.pruner import function as tp_function

from compressor.activity import collect_activity
from compressor.criteria import Dead
from compressor.errors import DempError
from compressor.graph import DependencyAnalyzer, tp_compat
from compressor.graph import apply as graph_apply


def _mapping_calls() -> dict[type, object]:
    return {c: c.__dict__["__call__"] for c in tp_compat._mapping_classes() if "__call__" in c.__dict__}


def test_the_installed_torch_pruning_is_a_verified_one() -> None:
    tp_compat.check_version()
    assert ".".join(tp.__version__.split(".")[:2]) in tp_compat.VERIFIED_VERSIONS
    assert tp_compat._mapping_classes(), "torch-pruning's index-mapping classes were found"


def test_an_unverified_torch_pruning_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tp, "__version__", "1.9.0")
    with pytest.raises(DempError, match=r"torch-pruning 1.9.0 is not supported.*pip install 'torch-pruning>=1.6,<1.7'"):
        tp_compat.check_version()
    with pytest.raises(DempError, match="1.9.0"):
        DependencyAnalyzer(nn.Sequential(nn.Linear(2, 2)), torch.zeros(1, 2))


def test_bounded_index_mappings_patch_only_inside_and_restore_after_an_error() -> None:
    from torch_pruning.dependency import group as tp_group

    before_calls, before_update = _mapping_calls(), im.update_index_mapping
    before_add = tp_group.Group.__dict__["add_dep"]
    budget = tp_compat.IndexBudget()
    with pytest.raises(tp_compat.IndexExplosion):
        with tp_compat.bounded_index_mappings(budget):
            assert im.update_index_mapping is not before_update and tp_group.Group.add_dep is not before_add
            assert all(c.__call__ is not f for c, f in before_calls.items())
            im.update_index_mapping(None)  # a no-op inside: no graph needed
            mapping = im._FlattenIndexMapping(stride=tp_compat.MAX_MAPPED_INDICES + 1)
            mapping([_helpers._HybridIndex(idx=0, root_idx=0)])  # charged before the list is built
    assert im.update_index_mapping is before_update and tp_group.Group.__dict__["add_dep"] is before_add
    assert _mapping_calls() == before_calls


def test_a_mapping_within_the_budget_is_unchanged_and_counted() -> None:
    idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in range(3)]
    plain = im._FlattenIndexMapping(stride=4)(idxs)
    budget = tp_compat.IndexBudget()
    with tp_compat.bounded_index_mappings(budget):
        bounded = im._FlattenIndexMapping(stride=4)(idxs)
    assert bounded == plain and len(plain) == 12
    assert budget.used == 12 + 12  # charged once before (3 x 4) and once for the result


def test_pruning_dim_is_set_for_one_call_and_restored() -> None:
    handler = tp_function.prune_parameter_out_channels
    handler.__self__.pruning_dim = 5
    with pytest.raises(RuntimeError):
        with tp_compat.pruning_dim(handler, 1):
            assert handler.__self__.pruning_dim == 1
            raise RuntimeError("inside")
    assert handler.__self__.pruning_dim == 5


class _Scaled(nn.Module):
    """A Linear whose outputs are scaled by an unwrapped parameter (pruned by the shared parameter pruner)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)) * self.scale)


def test_applying_a_plan_leaves_the_shared_pruning_functions_as_it_found_them() -> None:
    torch.manual_seed(0)
    model = _Scaled()
    with torch.no_grad():
        model.fc1.weight[2].zero_()
        model.fc1.bias[2] = -1.0  # unit 2 never fires
    x = torch.randn(16, 4)
    reference = model(x).detach()
    analyzer = DependencyAnalyzer(model, x)
    pruners = (tp_function.prune_parameter_out_channels.__self__, tp_function.prune_linear_out_channels.__self__)
    sentinels = {pruner: 7 + i for i, pruner in enumerate(pruners)}  # one shared object per layer type
    for pruner, value in sentinels.items():
        pruner.pruning_dim = value
    stats = collect_activity(model, [x], layers=analyzer.consumer_names, progress=False)
    plan = analyzer.decide(stats, Dead())
    assert plan.removed_channels == 1
    analyzer.apply(plan)
    assert model.scale.shape == (5,) and model.fc1.out_features == 5
    assert torch.allclose(model(x), reference, atol=1e-6)
    assert {p: p.pruning_dim for p in sentinels} == sentinels


def test_a_layer_whose_channel_count_cannot_be_read_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The range check never skips: an unreadable channel count is an error naming the layer."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    action = graph_apply.Action("0", False, tp_function.prune_linear_out_channels, 0, {1}, is_out=True)
    graph_apply.validate_actions(model, [action])  # readable: fine

    def broken(layer: nn.Module) -> int:
        raise KeyError("no such node")

    monkeypatch.setattr(tp_function.prune_linear_out_channels.__self__, "get_out_channels", broken)
    with pytest.raises(DempError, match=r"cannot tell how many channels 0 \(Linear\) has.*--ignore 0"):
        graph_apply.validate_actions(model, [action])


def test_an_out_of_range_index_is_refused_before_anything_changes() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    action = graph_apply.Action("0", False, tp_function.prune_linear_out_channels, 0, {6}, is_out=True)
    with pytest.raises(DempError, match="index 6 out of range for 0"):
        graph_apply.apply_actions(model, [action], removed=1, track_indices=False)
    assert model[0].out_features == 6
