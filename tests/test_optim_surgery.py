"""Optimizer-state surgery: state sliced exactly, training continues exactly, LR schedulers keep working.

The removals here are made by hand (new ``nn.Parameter`` objects and flat index maps, as
``DependencyAnalyzer.apply`` returns them), so these tests do not depend on the graph code;
``tests/test_demp.py`` covers the same path through the real analyzer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from compressor.errors import UsageError
from compressor.training.mechanics.optim_surgery import slice_optimizer_state

DEAD = [1, 4]  # hidden channels of conv1 made dead (bias -1e3)


@dataclass
class HandApply:
    index_maps: dict[str, Tensor]
    old_params: dict[str, nn.Parameter]
    new_params: dict[str, nn.Parameter]


class Net(nn.Module):
    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net().double()
    with torch.no_grad():
        net.conv1.bias[DEAD] = -1e3  # inputs are in [0, 1]: these channels output exact zeros
    return net


def batches(n: int, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(8, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def train(net: nn.Module, opt: torch.optim.Optimizer, data: list[tuple[Tensor, Tensor]],
          sched: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    for x, y in data:
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()


def remove_hidden(net: Net, dead: list[int]) -> tuple[HandApply, list[int]]:
    """Remove conv1 output channels ``dead`` (and conv2's matching inputs) in place, like the analyzer."""
    keep = [i for i in range(net.conv1.out_channels) if i not in dead]
    old = dict(net.named_parameters())
    ids = {n: torch.arange(p.numel()).view(p.shape) for n, p in old.items()}
    slices = {
        "conv1.weight": lambda t: t[keep],
        "conv1.bias": lambda t: t[keep],
        "conv2.weight": lambda t: t[:, keep],
    }
    index_maps = {}
    for name, fn in slices.items():
        index_maps[name] = fn(ids[name]).reshape(-1)
        module_name, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(module_name), leaf, nn.Parameter(fn(old[name].detach()).clone()))
    net.conv1.out_channels = net.conv2.in_channels = len(keep)
    return HandApply(index_maps, old, dict(net.named_parameters())), keep


def survivors(net: Net, keep: list[int] | None) -> dict[str, Tensor]:
    """The surviving parameters of a (dense or pruned) net, in the pruned layout."""
    out = {n: p.detach().clone() for n, p in net.named_parameters()}
    if keep is not None:
        out["conv1.weight"] = out["conv1.weight"][keep]
        out["conv1.bias"] = out["conv1.bias"][keep]
        out["conv2.weight"] = out["conv2.weight"][:, keep]
    return out


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw_amsgrad": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2, amsgrad=True),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
}
STATE_KEYS = {"adam": {"exp_avg", "exp_avg_sq", "step"},
              "adamw_amsgrad": {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"},
              "sgd_nesterov": {"momentum_buffer"}}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_sliced_state_equals_original_at_surviving_indices(name: str) -> None:
    net = make_net()
    opt = OPTIMIZERS[name](list(net.parameters()))
    train(net, opt, batches(3))
    before = {n: {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in opt.state[p].items()}
              for n, p in net.named_parameters()}
    fc_state = opt.state[net.fc.weight]
    result, keep = remove_hidden(net, DEAD)
    assert slice_optimizer_state(opt, result) == 3

    params_in_opt = opt.param_groups[0]["params"]
    assert [id(p) for p in params_in_opt] == [id(p) for p in net.parameters()]  # same order, new objects
    assert opt.state[net.fc.weight] is fc_state  # untouched parameters keep their state object
    for n, old in result.old_params.items():
        if old is not result.new_params[n]:
            assert old not in opt.state  # no state left behind for the replaced objects
    for pname, p in net.named_parameters():
        state = opt.state[p]
        assert set(state) == STATE_KEYS[name]
        for key, value in state.items():
            old_value = before[pname][key]
            if key == "step":
                assert torch.equal(value, old_value)
                continue
            assert value.shape == p.shape
            want = {"conv1.weight": lambda t: t[keep], "conv1.bias": lambda t: t[keep],
                    "conv2.weight": lambda t: t[:, keep]}.get(pname, lambda t: t)(old_value)
            assert torch.equal(value, want), (pname, key)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_after_removal_matches_dense_training(name: str) -> None:
    """Dead channels contribute nothing, so the pruned run must equal the dense run on the survivors."""
    data = batches(10)
    dense = make_net()
    dense_opt = OPTIMIZERS[name](list(dense.parameters()))
    pruned = make_net()
    pruned_opt = OPTIMIZERS[name](list(pruned.parameters()))
    train(dense, dense_opt, data[:4])
    train(pruned, pruned_opt, data[:4])
    result, keep = remove_hidden(pruned, DEAD)
    slice_optimizer_state(pruned_opt, result)
    x = data[0][0]
    assert torch.allclose(pruned(x), dense(x), rtol=0, atol=1e-12)  # lossless removal
    at_removal = survivors(pruned, None)
    train(dense, dense_opt, data[4:])
    train(pruned, pruned_opt, data[4:])
    want, got = survivors(dense, keep), survivors(pruned, None)
    for n in want:
        assert torch.allclose(got[n], want[n], rtol=0, atol=1e-9), n
        assert not torch.equal(got[n], at_removal[n]), n  # the new parameter objects were trained


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_matches_a_fresh_model_given_the_sliced_state(name: str) -> None:
    data = batches(8)
    net = make_net()
    opt = OPTIMIZERS[name](list(net.parameters()))
    train(net, opt, data[:3])
    result, _ = remove_hidden(net, DEAD)
    slice_optimizer_state(opt, result)

    fresh = Net(hidden=len(net.conv1.bias)).double()
    fresh.load_state_dict(net.state_dict())
    fresh_opt = OPTIMIZERS[name](list(fresh.parameters()))
    fresh_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # state_dict() shares tensors

    train(net, opt, data[3:])
    train(fresh, fresh_opt, data[3:])
    for (n, a), (_, b) in zip(net.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("sched_name", ["onecycle", "cosine"])
def test_lr_scheduler_keeps_stepping(sched_name: str) -> None:
    def make(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if sched_name == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12)
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)

    data = batches(12)
    ref = make_net()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    ref_sched = make(ref_opt)
    ref_lrs = []
    for x, y in data:
        train(ref, ref_opt, [(x, y)], ref_sched)
        ref_lrs.append(ref_sched.get_last_lr()[0])

    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    sched = make(opt)
    lrs = []
    for i, (x, y) in enumerate(data):
        if i == 5:
            result, keep = remove_hidden(net, DEAD)
            slice_optimizer_state(opt, result)
        train(net, opt, [(x, y)], sched)
        lrs.append(sched.get_last_lr()[0])
        assert opt.param_groups[0]["lr"] == pytest.approx(lrs[-1])
    assert lrs == pytest.approx(ref_lrs, rel=1e-12)
    want = survivors(ref, keep)
    for n, p in net.named_parameters():
        assert torch.allclose(p.detach(), want[n], rtol=0, atol=1e-9), n
    assert "lr" in opt.state_dict()["param_groups"][0]  # state_dict still serializes


def test_unsliceable_state_is_refused_and_the_optimizer_left_intact() -> None:
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    train(net, opt, batches(1))
    opt.state[net.conv2.weight]["row_stats"] = torch.zeros(4)  # like Adafactor's factored moments
    params_before = list(opt.param_groups[0]["params"])
    states_before = {id(p): opt.state[p] for p in params_before}
    result, _ = remove_hidden(net, DEAD)
    with pytest.raises(UsageError, match="cannot be sliced"):
        slice_optimizer_state(opt, result)
    assert opt.param_groups[0]["params"] == params_before
    assert {id(p): opt.state[p] for p in params_before} == states_before


def test_parameters_without_state_are_swapped() -> None:
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)  # no momentum: no state at all
    train(net, opt, batches(1))
    result, _ = remove_hidden(net, DEAD)
    assert slice_optimizer_state(opt, result) == 3
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in net.parameters()]
    train(net, opt, batches(2, seed=5))
