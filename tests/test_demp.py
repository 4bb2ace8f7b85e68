"""DemP end to end with the real analyzer: lossless dynamic removal, live-only noise, exact resume."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn

from compressor.errors import CheckpointError, UsageError
from compressor.graph import DependencyAnalyzer
from compressor.plan import PruningPlan
from compressor.training.mechanics.regularizers import reference_penalty
from compressor.training.mechanics.schedules import one_cycle
from compressor.training.methods.demp import DemP, DemPConfig


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(self.flat(x))))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.head(self.pool(h).flatten(1))


def data(n_batches: int, seed: int = 0, batch: int = 16) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


DEATH = data(2, seed=99, batch=32)  # the held-aside death-measurement set
EXAMPLE = DEATH[0][0][:2]


def mlp(seed: int = 0, dead: tuple[int, ...] = (0, 3, 7)) -> MLP:
    torch.manual_seed(seed)
    net = MLP()
    with torch.no_grad():
        net.fc1.bias[list(dead)] = -1e3  # inputs in [0, 1]: these neurons never fire
    return net


def cnn(seed: int = 0, dead: tuple[int, ...] = (2, 5)) -> CNN:
    torch.manual_seed(seed)
    net = CNN()
    with torch.no_grad():
        net.bn1.bias[list(dead)] = -1e3
    return net


def step_once(net: nn.Module, opt: torch.optim.Optimizer, demp: DemP, step: int, batch: tuple[Tensor, Tensor]):
    x, y = batch
    loss = nn.functional.cross_entropy(net(x), y) + demp.penalty(step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return demp.after_step(step, opt)


def dead_at_measurement(net: nn.Module, layer: str) -> set[int]:
    """Input channels of ``layer`` that are zero on the whole death set (ground truth, no DemP code)."""
    seen: list[Tensor] = []
    handle = net.get_submodule(layer).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    was = net.training
    net.eval()
    with torch.no_grad():
        for x, _ in DEATH:
            net(x)
    net.train(was)
    handle.remove()
    acts = torch.cat([s.transpose(0, 1).reshape(s.shape[1], -1) for s in seen], dim=1)
    return set((acts.abs().amax(dim=1) == 0).nonzero().flatten().tolist())


# ---------------------------------------------------------------------------------- removal
def test_dynamic_removal_is_lossless_and_the_optimizer_keeps_working() -> None:
    net = mlp()
    cfg = DemPConfig(peak=1e-3, target="weights", regularizer="l2", noise=0.0, interval=3)
    demp = DemP(net, cfg, example_inputs=EXAMPLE, death_loader=DEATH, total_steps=9)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    assert demp.total_neurons == 32 + 16  # the classifier's outputs are not neurons
    batches = data(9)
    probe = DEATH[1][0]
    for step in range(2):
        assert step_once(net, opt, demp, step, batches[step]) is None
    # the third step triggers the measurement: compare outputs around it
    x, y = batches[2]
    loss = nn.functional.cross_entropy(net(x), y) + demp.penalty(2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    truly_dead = dead_at_measurement(net, "fc2")  # fc1's neurons, read by fc2
    dead_fc2 = dead_at_measurement(net, "head")
    assert {0, 3, 7} <= truly_dead
    net.eval()
    before = net(probe).detach()
    event = demp.after_step(2, opt)
    after = net(probe).detach()
    net.train()
    assert event is not None and event.applied and event.step == 3
    assert event.removed == len(truly_dead) + len(dead_fc2)
    assert net.fc1.out_features == 32 - len(truly_dead) and net.fc2.in_features == net.fc1.out_features
    assert torch.allclose(before, after, rtol=0, atol=1e-5)
    assert demp.plan.group("fc1").removed == sorted(truly_dead)
    assert sorted(demp.plan.group("fc2").removed if dead_fc2 else []) == sorted(dead_fc2)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in net.parameters()]
    snapshot = [p.detach().clone() for p in net.parameters()]
    for step in range(3, 9):
        step_once(net, opt, demp, step, batches[step])
    assert all(not torch.equal(a, b.detach()) for a, b in zip(snapshot, net.parameters(), strict=True))
    assert demp.regularizer.params[0] is net.fc1.weight  # the penalty follows the new parameters


class LeakyMLP(nn.Module):
    """fc1 -> Leaky ReLU -> head; fc1 units 1 and 5 have a large negative bias: only negative outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(64, 12)
        self.head = nn.Linear(12, 10)
        with torch.no_grad():
            self.fc1.bias[[1, 5]] = -50.0

    def forward(self, x: Tensor) -> Tensor:
        return self.head(nn.functional.leaky_relu(self.fc1(self.flat(x)), 0.01))


def test_saturated_criterion_removes_only_negative_units_and_reports_the_error() -> None:
    """Paper 000 §5: Leaky ReLU units "with only negative activation" are removed with the saturated
    criterion; the removal is lossy and its output change on the death samples is reported."""
    for criterion, expect in (("dead", 0), ("saturated", 2)):
        net = LeakyMLP()
        demp = DemP(net, DemPConfig(criterion=criterion, target="weights", noise=0.0, interval=1, peak=0.0),
                    example_inputs=EXAMPLE, death_loader=DEATH, total_steps=4)
        probe = torch.cat([x for x, _ in DEATH])
        before = net(probe).detach()
        event = demp.finalize(None)
        after = net(probe).detach()
        assert event.removed == expect and net.fc1.out_features == 12 - expect
        if criterion == "dead":
            assert event.error is None and "removal_error" not in demp.describe()
            continue
        assert demp.plan.group("fc1").removed == [1, 5]
        true_change = float((before - after).abs().max())
        assert 0 < true_change and event.error["max_abs_diff"] == pytest.approx(true_change, rel=1e-5)
        assert event.error["samples"] == 64 and event.to_dict()["error"] == event.error
        described = demp.describe()
        assert described["criterion"] == "saturated" and described["lossless"] is False
        assert described["removal_error"]["max_abs_diff"] == pytest.approx(true_change, rel=1e-5)


def test_cnn_two_removals_compose_into_one_plan_in_original_numbering() -> None:
    net = cnn()
    cfg = DemPConfig(peak=1e-3, noise=1e-4, interval=2)
    demp = DemP(net, cfg, example_inputs=EXAMPLE, death_loader=DEATH, total_steps=8)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
    batches = data(8)
    events = []
    for step in range(8):
        if step == 3:  # channel 6 of the *original* numbering dies mid-training
            with torch.no_grad():
                kept = demp.plan.group("conv1").kept
                net.bn1.bias[kept.index(6)] = -1e3
        event = step_once(net, opt, demp, step, batches[step])
        if event is not None:
            events.append(event)
    assert [e.step for e in events] == [2, 4, 6, 8]
    first = events[0].plan_delta.group("conv1")
    assert first is not None and {2, 5} <= set(first.removed)
    assert {2, 5, 6} <= set(demp.plan.group("conv1").removed)
    assert demp.plan.group("conv1").size == 8
    # replaying the composed plan on a fresh model gives the same architecture and function
    fresh = cnn(seed=1)
    DependencyAnalyzer(fresh, EXAMPLE).apply(demp.plan)
    fresh.load_state_dict(net.state_dict())
    net.eval(), fresh.eval()
    assert torch.equal(net(DEATH[0][0]), fresh(DEATH[0][0]))
    assert demp.regularizer.params[0] is net.bn1.weight  # norm_scale target re-collected


def test_final_only_measures_but_removes_once_at_the_end() -> None:
    net = mlp()
    cfg = DemPConfig(peak=0.0, noise=0.0, interval=2, final_only=True)
    demp = DemP(net, cfg, example_inputs=EXAMPLE, death_loader=DEATH, total_steps=6)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    events = [step_once(net, opt, demp, s, b) for s, b in enumerate(data(6))]
    measured = [e for e in events if e is not None]
    assert len(measured) == 3 and all(not e.applied and e.removed == 0 and e.dead >= 3 for e in measured)
    assert net.fc1.out_features == 32 and demp.plan.is_empty()
    assert sum(demp.live_neurons().values()) == 48 - measured[-1].dead
    final = demp.finalize(opt)
    assert final is not None and final.final and final.applied and final.removed == measured[-1].dead
    assert net.fc1.out_features == 32 - len(demp.plan.group("fc1").removed)
    step_once(net, opt, demp, 6, data(1, seed=7)[0])  # the optimizer still works after the final removal


def test_prune_false_never_removes() -> None:
    net = mlp()
    demp = DemP(net, DemPConfig(target="weights", noise=0.0, interval=1, prune=False), example_inputs=EXAMPLE,
                death_loader=DEATH, total_steps=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    event = step_once(net, opt, demp, 0, data(1)[0])
    assert event is not None and event.dead >= 3 and not event.applied
    final = demp.finalize(opt)
    assert not final.applied and net.fc1.out_features == 32 and demp.plan.is_empty()


# ---------------------------------------------------------------------------------- noise
def test_noise_reaches_live_neurons_only_and_ignores_the_learning_rate() -> None:
    net = mlp()
    sigma = 1e-2
    cfg = DemPConfig(peak=0.0, noise=sigma, schedule="constant", span=1.0, interval=1, prune=False)
    demp = DemP(net, cfg, example_inputs=EXAMPLE, death_loader=DEATH, total_steps=10)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: every change below is noise
    batches = data(2)
    step_once(net, opt, demp, 0, batches[0])  # before any measurement all neurons count as live
    dead = dead_at_measurement(net, "fc2")
    dead_fc2 = dead_at_measurement(net, "head")
    assert {0, 3, 7} <= dead and sum(demp.live_neurons().values()) == 48 - len(dead) - len(dead_fc2)
    live = [i for i in range(32) if i not in dead]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    step_once(net, opt, demp, 1, batches[1])
    delta = {n: p.detach() - before[n] for n, p in net.named_parameters()}
    dead_rows = sorted(dead)
    assert torch.count_nonzero(delta["fc1.weight"][dead_rows]) == 0
    assert torch.count_nonzero(delta["fc1.bias"][dead_rows]) == 0
    assert torch.count_nonzero(delta["fc1.weight"][live]) == len(live) * 64
    assert torch.count_nonzero(delta["head.weight"]) == 0 and torch.count_nonzero(delta["head.bias"]) == 0
    noise = delta["fc1.weight"][live].flatten()
    assert noise.std().item() == pytest.approx(sigma, rel=0.1)
    assert abs(noise.mean().item()) < 3 * sigma / len(noise) ** 0.5 + 1e-6


def test_noise_is_reproducible_from_the_seed() -> None:
    finals = []
    for _ in range(2):
        net = mlp()
        demp = DemP(net, DemPConfig(peak=0.0, noise=1e-2, interval=100), example_inputs=EXAMPLE,
                    death_loader=DEATH, total_steps=4, seed=5)
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        for s, b in enumerate(data(3)):
            step_once(net, opt, demp, s, b)
        finals.append(net.fc1.weight.detach().clone())
    assert torch.equal(finals[0], finals[1])


# ---------------------------------------------------------------------------------- penalty / config
def test_penalty_follows_the_one_cycle_schedule() -> None:
    net = cnn()
    demp = DemP(net, DemPConfig(peak=0.5, regularizer="cdg_lasso", target="norm_scale", noise=0.0),
                example_inputs=EXAMPLE, death_loader=DEATH, total_steps=100)
    assert demp.span_steps == 85
    for step in (0, 25, 50, 90):
        lam = one_cycle(step, 0.5, 85)
        assert demp.lam(step) == pytest.approx(lam)
        want = lam * reference_penalty("cdg_lasso", [net.bn1.weight, net.bn2.weight])
        assert demp.penalty(step).item() == pytest.approx(want.item(), rel=1e-6)
    assert DemP(cnn(), DemPConfig(regularizer="none"), example_inputs=EXAMPLE, death_loader=DEATH,
                total_steps=10).penalty(3).item() == 0.0


def test_a_penalty_that_regularizes_nothing_is_refused(tmp_path) -> None:
    """The default target (normalization scales) on a model without normalization layers: refused, not a
    silent no-op; the message names the fix. With the regularizer off or peak 0 there is nothing to refuse."""
    from compressor.data import load_data
    from compressor.training.config import load_recipe
    from compressor.training.trainer import train

    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(UsageError, match="no normalization layer.*Set demp.target: weights"):
        DemP(mlp, DemPConfig(), example_inputs=torch.zeros(2, 4), death_loader=[], total_steps=10)
    for ok in (DemPConfig(regularizer="none"), DemPConfig(peak=0.0), DemPConfig(target="weights")):
        DemP(mlp, ok, example_inputs=torch.zeros(2, 4), death_loader=[], total_steps=10)
    # a budget (demp compress --target-*) selects among normalization scales: the fix names both settings
    with pytest.raises(UsageError, match="could not be reached. Set demp.target: weights and demp.select: all"):
        DemP(mlp, DemPConfig(target_macs=0.5, select="budget"), example_inputs=torch.zeros(2, 4), death_loader=[],
             total_steps=10)
    DemP(mlp, DemPConfig(target_macs=0.5, select="all", target="weights"), example_inputs=torch.zeros(2, 4),
         death_loader=[], total_steps=10)
    recipe = load_recipe({"method": "demp", "model": {"arch": "mlp", "kwargs": {"widths": [16]}},
                          "data": {"spec": "digits"}, "train": {"epochs": 1}})
    with pytest.raises(UsageError, match="would regularize nothing"):
        train(recipe, tmp_path / "run", progress=False, data=load_data("digits"), plots=False, tensorboard=False)


@pytest.mark.parametrize("bad", [{"interval": -1}, {"regularizer": "l1"}, {"target": "bias"}, {"span": 0.0},
                                 {"peak": -1.0}, {"noise": float("nan")}, {"schedule": "cosine"},
                                 {"min_channels": 0}, {"ignore": "head"}])
def test_config_errors_name_the_option(bad: dict) -> None:
    cfg = DemPConfig(**bad)
    with pytest.raises(UsageError, match=f"demp.{next(iter(bad))}"):
        cfg.validate()


def test_recipe_rejects_unknown_demp_keys_with_a_suggestion() -> None:
    from compressor.training.config import recipe_from_dict

    assert recipe_from_dict({"demp": {"peak": 0.1}}).demp.peak == 0.1
    with pytest.raises(UsageError, match="unknown recipe key 'demp.peek'; did you mean 'demp.peak'"):
        recipe_from_dict({"demp": {"peek": 0.1}})


@pytest.mark.parametrize("bad", [{"pct_start": 0.0}, {"pct_start": 1.0}, {"div_factor": 0.5},
                                 {"final_div_factor": 0.0}])
def test_one_validator_for_the_api_and_the_recipe(bad: dict) -> None:
    """DemPConfig and a recipe accept the same one-cycle shapes (there is one validator)."""
    from compressor.training.config import recipe_from_dict

    key = next(iter(bad))
    with pytest.raises(UsageError, match=f"demp.{key}"):
        DemPConfig(**bad).validate()
    with pytest.raises(UsageError, match=f"demp.{key}"):
        recipe_from_dict({"demp": bad})


# ---------------------------------------------------------------------------------- resume
CFG = DemPConfig(peak=1e-2, noise=1e-3, interval=4)
TOTAL = 12


def _run(net: CNN, demp: DemP, opt: torch.optim.Optimizer, start: int, stop: int, device: str = "cpu") -> None:
    batches = [(x.to(device), y.to(device)) for x, y in data(TOTAL, seed=3)]
    for step in range(start, stop):
        if step == 5:  # a death between two removals (original channel 6)
            with torch.no_grad():
                net.bn1.bias[demp.plan.group("conv1").kept.index(6)] = -1e3
        step_once(net, opt, demp, step, batches[step])


NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("flow,device", [("replay_in_demp", "cpu"), ("replay_before_demp", "cpu"),
                                         pytest.param("replay_before_demp", "cuda", marks=NEEDS_CUDA)])
def test_resume_continues_exactly(flow: str, device: str) -> None:
    example = EXAMPLE.to(device)
    death = [(x.to(device), y.to(device)) for x, y in DEATH]
    # uninterrupted reference
    ref = cnn().to(device)
    ref_demp = DemP(ref, CFG, example_inputs=example, death_loader=death, total_steps=TOTAL, seed=7)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    _run(ref, ref_demp, ref_opt, 0, TOTAL, device)
    ref_demp.finalize(ref_opt)

    # interrupted at step 6 (after one removal, with a second one to come), saved, resumed
    net = cnn().to(device)
    demp = DemP(net, CFG, example_inputs=example, death_loader=death, total_steps=TOTAL, seed=7)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    _run(net, demp, opt, 0, 6, device)
    assert not demp.plan.is_empty()
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "demp": demp.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    del net, demp, opt

    net = cnn(seed=123).to(device)  # a fresh, dense model
    if flow == "replay_before_demp":  # what the training loop does
        DependencyAnalyzer(net, example).apply(PruningPlan.from_dict(saved["demp"]["plan"]))
    demp = DemP(net, CFG, example_inputs=example, death_loader=death, total_steps=TOTAL, seed=7)
    demp.load_state_dict(saved["demp"])  # replays the plan itself when the model is dense
    net.load_state_dict(saved["model"])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    opt.load_state_dict(saved["opt"])
    assert demp.total_neurons == ref_demp.total_neurons == 16
    if device == "cuda":
        assert "cuda:0" in saved["demp"]["noise"]["generators"]
    _run(net, demp, opt, 6, TOTAL, device)
    demp.finalize(opt)

    assert demp.plan.removal_hash() == ref_demp.plan.removal_hash()
    assert {2, 5, 6} <= set(demp.plan.group("conv1").removed)
    for (n, a), (_, b) in zip(ref.named_parameters(), net.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    assert demp.live_neurons() == ref_demp.live_neurons()
    assert [e["step"] for e in demp.events] == [e["step"] for e in ref_demp.events]


def test_load_state_dict_rejects_a_foreign_architecture() -> None:
    net = cnn()
    demp = DemP(net, CFG, example_inputs=EXAMPLE, death_loader=DEATH, total_steps=TOTAL)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    _run(net, demp, opt, 0, 4)
    state = demp.state_dict()
    other = cnn()
    other_plan = PruningPlan.from_dict({"schema": "demp.plan/1",
                                        "groups": [{"root": "conv1", "size": 8, "removed": [0]}]})
    DependencyAnalyzer(other, EXAMPLE).apply(other_plan)  # pruned differently: conv1 keeps 7 channels
    fresh = DemP(other, CFG, example_inputs=EXAMPLE, death_loader=DEATH, total_steps=TOTAL)
    with pytest.raises(CheckpointError, match="matches neither"):
        fresh.load_state_dict(state)
    with pytest.raises(CheckpointError, match="version"):
        fresh.load_state_dict({"version": 99})


def test_dead_neurons_kept_by_round_to_get_no_noise() -> None:
    net = mlp(dead=(0, 1, 3, 7, 9, 11, 13))  # with the naturally dead ones: 10 of 32, so 2 must stay
    cfg = DemPConfig(peak=0.0, noise=1e-2, schedule="constant", span=1.0, interval=1, round_to=8)
    assert 8 < len(dead_at_measurement(net, "fc2")) < 16  # precondition: one block of 8 removable
    demp = DemP(net, cfg, example_inputs=EXAMPLE, death_loader=DEATH, total_steps=10)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    batches = data(2)
    event = step_once(net, opt, demp, 0, batches[0])
    assert event is not None and event.applied
    assert net.fc1.out_features % 8 == 0 and net.fc1.out_features < 32
    kept_dead = sorted(dead_at_measurement(net, "fc2"))
    assert kept_dead, "round_to=8 must have kept some dead neurons"
    assert demp.live_neurons()["fc1"] == net.fc1.out_features - len(kept_dead)
    before = net.fc1.weight.detach().clone(), net.fc1.bias.detach().clone()
    step_once(net, opt, demp, 1, batches[1])
    assert torch.equal(net.fc1.weight.detach()[kept_dead], before[0][kept_dead])
    assert torch.equal(net.fc1.bias.detach()[kept_dead], before[1][kept_dead])
    live = [i for i in range(net.fc1.out_features) if i not in kept_dead]
    assert torch.count_nonzero(net.fc1.weight.detach()[live] - before[0][live]) == len(live) * 64


def test_live_noise_state_round_trip_and_zero_sigma_draws_nothing() -> None:
    from compressor.training.mechanics.noise import LiveNoise, NoiseTarget

    def setup(seed: int = 11) -> tuple[nn.Parameter, LiveNoise]:
        p = nn.Parameter(torch.zeros(4, 3))
        mask = torch.zeros(4, 3)
        mask[1:3] = 1  # rows 1 and 2 are live
        noise = LiveNoise(seed=seed)
        noise.set_targets([NoiseTarget(p, mask)])
        return p, noise

    p, noise = setup()
    noise.apply(0.5)
    after_first = p.detach().clone()
    state = noise.state_dict()
    noise.apply(0.0)  # sigma 0 draws nothing: the stream continues as if this step did not exist
    noise.apply(0.5)
    expected = p.detach().clone()
    assert torch.count_nonzero(expected[[0, 3]]) == 0 and torch.count_nonzero(expected[1:3]) == 6
    assert noise.noisy_elements == 6 and noise.total_elements == 12

    q, resumed = setup(seed=999)  # the loaded state wins over the constructor's seed
    with torch.no_grad():
        q.copy_(after_first)
    resumed.load_state_dict(state)
    resumed.apply(0.5)
    assert torch.equal(q.detach(), expected)

    r, other = setup(seed=12)
    other.apply(0.5)
    assert not torch.equal(r.detach(), after_first)
