"""DemP's budget from a checkpoint: the cost-aware penalty, and every output telling the truth about how
the budget was reached (lossless flag, removed share, the breakdown, beyond-the-papers labels)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.graph import DependencyAnalyzer
from compressor.training.mechanics.costs import neuron_costs, tensor_weights
from compressor.training.mechanics.regularizers import penalty, reference_penalty
from compressor.training.methods.demp import DemP, DemPConfig


class TwoStage(nn.Module):
    """Two 1x1 conv stages, the first at 8x8 and the second at 4x4: a neuron of stage 1 costs 4x one of stage 2."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 4, 1)
        self.c = nn.Conv2d(4, 8, 1)
        self.bn_c = nn.BatchNorm2d(8)
        self.d = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(torch.relu(self.bn_a(self.a(x))))
        x = nn.functional.max_pool2d(x, 2)
        x = self.d(torch.relu(self.bn_c(self.c(x))))
        return self.fc(x.mean((2, 3)))


def test_the_cost_aware_penalty_pushes_a_neuron_by_what_it_costs() -> None:
    torch.manual_seed(0)
    model = TwoStage().eval()
    x = torch.randn(2, 4, 8, 8)
    analyzer = DependencyAnalyzer(model, x)
    costs = neuron_costs(model, analyzer, x, "macs")
    # stage 1: 64 positions x 4 inputs (producer a) + 64 x 4 outputs (consumer b); stage 2 the same at 16 positions
    assert costs["a"] == pytest.approx(512) and costs["c"] == pytest.approx(128)
    names = ["bn_a.weight", "bn_c.weight", "fc.weight"]
    weights = tensor_weights(analyzer, costs, names)
    assert weights[0] / weights[1] == pytest.approx(4.0) and weights[2] == 0.0  # the classifier cannot be removed
    sizes = {g.root: g.size for g in analyzer.neuron_groups if g.root in costs}
    producers = [f"{root}.weight" for root in sizes]  # one tensor per prunable group: its producing conv
    per_group = tensor_weights(analyzer, costs, producers)
    mean = sum(w * sizes[root] for w, root in zip(per_group, sizes, strict=True)) / sum(sizes.values())
    assert mean == pytest.approx(1.0)  # only redistributed over the neurons: peak keeps its meaning
    # the penalty's gradient on each BatchNorm scale is its weight: a stage-1 gamma is pushed 4x harder
    params = [model.bn_a.weight, model.bn_c.weight]
    penalty("lasso", params, 0.5, weights[:2]).backward()
    assert model.bn_a.weight.grad.abs().mean() / model.bn_c.weight.grad.abs().mean() == pytest.approx(4.0)
    assert penalty("lasso", params, 0.5, weights[:2]).item() == pytest.approx(
        0.5 * reference_penalty("lasso", params, weights[:2]).item())


def test_demp_weights_its_penalty_by_cost_and_refreshes_after_a_removal() -> None:
    torch.manual_seed(0)
    model = TwoStage()
    with torch.no_grad():
        model.bn_c.bias[:4] = -1e3  # four stage-2 neurons never fire
    death = [(torch.randn(16, 4, 8, 8), None)]
    cfg = DemPConfig(regularizer="lasso", target="norm_scale", peak=1e-2, noise=0.0, interval=5, cost="macs")
    demp = DemP(model, cfg, example_inputs=death[0][0][:2], death_loader=death, total_steps=100)
    w = dict(zip(demp.regularizer.names, demp.regularizer.weights, strict=True))
    assert w["bn_a.weight"] / w["bn_c.weight"] == pytest.approx(4.0)
    demp.after_step(4, None)  # removes the 4 dead: the regularized tensors are new objects, weighted again
    assert model.bn_c.weight.numel() <= 4 and len(demp.regularizer.weights) == len(demp.regularizer.params)
    described = demp.describe()["cost_aware"]
    assert described["beyond_papers"] and {g["root"] for g in described["groups"]} >= {"a", "c"}
    uniform = DemP(TwoStage(), DemPConfig(regularizer="lasso", target="norm_scale", peak=1e-2),
                   example_inputs=death[0][0][:2], death_loader=death, total_steps=100)
    assert uniform.regularizer.weights is None and "cost_aware" not in uniform.describe()  # the papers' penalty


def _mlp(hidden: int = 12, dead: int = 6) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    with torch.no_grad():
        net[1].bias[:dead] = -1e3
    return net


def test_a_forced_cut_makes_the_run_lossy_in_every_output() -> None:
    """Audit: after the deadline cut live neurons, describe() (train_summary.json, report.json) said lossless."""
    death = [(torch.rand(64, 1, 4, 4), None)]
    cfg = DemPConfig(regularizer="lasso", target="weights", peak=1e-9, noise=0.0, interval=5, target_sparsity=0.75)
    demp = DemP(_mlp(), cfg, example_inputs=death[0][0][:2], death_loader=death, total_steps=20)
    demp.after_step(4, None)
    assert demp.describe()["lossless"] is True  # only dead neurons so far
    demp.after_step(9, None)  # the deadline cuts live ones
    assert demp.budget.closed_neurons > 0 and demp.describe()["lossless"] is False
    restored = DemP(_mlp(), cfg, example_inputs=death[0][0][:2], death_loader=death, total_steps=20)
    restored.load_state_dict(demp.state_dict())
    assert restored.describe()["lossless"] is False  # and after a resume


def test_the_budget_counts_removed_neurons_not_dead_ones_kept_by_round_to() -> None:
    """Audit: with round_to 8 the budget reported 0.5 reached while 0.458 was removed (it counted live neurons)."""
    death = [(torch.rand(64, 1, 4, 4), None)]
    cfg = DemPConfig(regularizer="lasso", target="weights", peak=1e-9, noise=0.0, interval=5, target_sparsity=0.55,
                     round_to=8)
    demp = DemP(_mlp(hidden=32, dead=20), cfg, example_inputs=death[0][0][:2], death_loader=death, total_steps=100)
    demp.after_step(4, None)  # 20 dead, 16 removed (widths kept multiples of 8), 4 dead kept
    present = sum(demp.present_neurons().values())
    assert present == 16 and sum(demp.live_neurons().values()) == 12
    assert demp.budget.last_measured == pytest.approx(0.5)  # removed, not 1 - 12/32 = 0.625
    assert not demp.budget.frozen  # 0.5 < 0.55: not reached


def test_the_breakdown_says_where_the_budget_came_from_the_same_everywhere() -> None:
    from exporters.render import budget_lines

    death = [(torch.rand(64, 1, 4, 4), None)]
    cfg = DemPConfig(regularizer="lasso", target="weights", peak=1e-9, noise=0.0, interval=5, target_sparsity=0.75,
                     remove_at_start=True)
    demp = DemP(_mlp(), cfg, example_inputs=death[0][0][:2], death_loader=death, total_steps=20)
    start = demp.on_train_start(None)
    assert start is not None and start.removed == 6 and demp.budget.lossless_share == pytest.approx(0.5)
    demp.after_step(9, None)  # the deadline: 3 more, live, cut
    demp.finalize(None)
    d = demp.describe()["budget"]["breakdown"]
    assert d["lossless"] == pytest.approx(0.5) and d["cut"] == pytest.approx(0.25) and d["died"] == pytest.approx(0)
    assert d["final"] == pytest.approx(0.75) and d["cut_neurons"] == 3 and d["cut_error"]["rel_diff"] > 0
    (line,) = budget_lines({"methods": [demp.describe()]})
    assert "beyond the papers" in line
    assert "75.0% removed = 50.0% lossless removal of dead neurons before training + 0.0% neurons that died" in line
    assert "25.0% a forced cut of 3 live neurons at the deadline (lossy; output change" in line


def test_the_report_and_console_label_budget_mode_beyond_the_papers() -> None:
    """Audit: report.md and the console never said that budget mode and its deadline are beyond the papers."""
    from compressor.cli.train import training_summary
    from exporters.render import render_markdown

    budget = {"kind": "macs_removed", "target": 0.5, "reached_step": 40, "closed_step": None,
              "breakdown": {"final": 0.51, "lossless": 0.05, "died": 0.46, "cut": 0.0, "cut_neurons": 0,
                            "cut_error": None}}
    methods = [{"method": "demp", "criterion": "dead", "lossless": True, "budget": budget}]
    report = {"schema": "demp.report/1", "pruning": {"methods": methods}, "model": {}, "parity": {}}
    md = render_markdown(report)
    expected = "demp budget (beyond the papers): 50.0% of the MACs asked; reached at step 40. 51.0% removed = 5.0%"
    assert expected in md

    class Result:
        summary = {"epochs": 1, "methods": methods}
        out_dir = compact_dir = "run"

        class recipe:  # noqa: N801 - the attributes training_summary reads
            method = "demp"

            class model:  # noqa: N801
                arch, checkpoint = "cnn", None

            class data:  # noqa: N801
                spec = "digits"

    assert expected in training_summary(Result())


def test_select_budget_penalizes_only_the_cheapest_neurons_the_budget_needs() -> None:
    torch.manual_seed(0)
    model = TwoStage()
    with torch.no_grad():
        model.bn_a.weight.copy_(torch.linspace(0.1, 0.8, 8))
        model.bn_c.weight.copy_(torch.linspace(0.1, 0.8, 8))
    death = [(torch.randn(16, 4, 8, 8), None)]
    cfg = DemPConfig(regularizer="lasso", target="norm_scale", peak=1e-2, noise=0.0, interval=5, cost="macs",
                     select="budget", target_sparsity=0.25)
    demp = DemP(model, cfg, example_inputs=death[0][0][:2], death_loader=death, total_steps=100)
    assert demp.selection.chosen == 6  # a quarter of the 24 neurons (8 + 4 + 8 + 4), from the two groups with a BN
    loss = demp.penalty(50)
    loss.backward()
    chosen_a = int((model.bn_a.weight.grad != 0).sum())
    chosen_c = int((model.bn_c.weight.grad != 0).sum())
    # |gamma| / weight: a stage-1 neuron (4x the cost) is chosen before a stage-2 neuron of 4x smaller |gamma|
    assert chosen_a > chosen_c
    chosen = model.bn_a.weight.grad != 0
    assert chosen[: int(chosen.sum())].all()  # the smallest gammas of the group, not others
    assert model.bn_a.bias.grad is not None  # the shift is pushed below zero too, so the chosen neurons die exactly
    with pytest.raises(Exception, match="demp.select"):
        DemPConfig(select="budget").validate()  # needs a budget
