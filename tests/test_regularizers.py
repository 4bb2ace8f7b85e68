"""DemP regularizers: values and gradients against the plain definitions, targets, refresh after pruning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.training.mechanics.regularizers import Regularizer, collect_params, penalty, reference_penalty

KINDS = ["l2", "lasso", "cdg_l2", "cdg_lasso"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(self.flat(self.pool(torch.relu(self.gn(self.bn(self.conv(x))))))))


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 3, 3, 3), (6,), (4, 6), (4,)]
    ps = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    with torch.no_grad():
        ps[1][:3] = 0.0  # exact zeros: the kink of |p| and max(p, 0)
    return ps


@pytest.mark.parametrize("kind", KINDS)
def test_penalty_value_and_gradient_match_the_definition(kind: str) -> None:
    ps = _params()
    fast = penalty(kind, ps, scale=0.3)
    g_fast = torch.autograd.grad(fast, ps)
    ref = 0.3 * reference_penalty(kind, ps)
    g_ref = torch.autograd.grad(ref, ps)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, b in zip(g_fast, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_penalty_definitions_by_hand() -> None:
    p = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    assert penalty("l2", [p]).item() == pytest.approx(4 + 9)
    assert penalty("lasso", [p]).item() == pytest.approx(5.0)
    assert penalty("cdg_l2", [p]).item() == pytest.approx(9.0)
    assert penalty("cdg_lasso", [p]).item() == pytest.approx(3.0)


def test_cdg_l2_is_the_papers_eq6_and_l2_shares_its_scale() -> None:
    """Paper 000 Eq. 6: CDG-L2 = λ·Σ_{w>0} w² (no ½), so its gradient is 2λw on positive weights; plain L2
    has the same scale (CDG-L2 equals L2 on an all-positive tensor), as in the authors' code."""
    lam = 1e-3
    w = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(penalty("cdg_l2", [w], scale=lam), [w])
    assert torch.allclose(grad, torch.tensor([0.0, 0.0, 2 * lam * 0.5, 2 * lam * 2.0], dtype=torch.float64))
    pos = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert penalty("cdg_l2", [pos], scale=lam).item() == pytest.approx(penalty("l2", [pos], scale=lam).item())
    assert penalty("cdg_l2", [w], scale=lam).item() == pytest.approx(lam * (0.25 + 4.0))


def test_zero_scale_and_none_are_constant_zero() -> None:
    ps = _params()
    assert penalty("l2", ps, scale=0.0).item() == 0.0
    assert not penalty("l2", ps, scale=0.0).requires_grad
    assert penalty("none", ps, scale=1.0).item() == 0.0
    with pytest.raises(ValueError, match="unknown regularizer"):
        penalty("l3", ps)


def test_penalty_is_added_to_the_loss_gradient() -> None:
    """Added to the loss (not decoupled): the optimizer sees grad(loss) + λ·grad(R) (2λw for L2 = Σw²)."""
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    base = net(x).square().mean()
    base.backward()
    g_base = net.weight.grad.clone()
    net.zero_grad()
    reg = Regularizer(net, "l2", "weights")
    (net(x).square().mean() + reg(0.1)).backward()
    assert torch.allclose(net.weight.grad, g_base + 2 * 0.1 * net.weight.detach(), atol=1e-7)
    net.zero_grad()
    net(x).square().mean().backward()
    g_bias_plain = net.bias.grad.clone()
    net.zero_grad()
    (net(x).square().mean() + reg(0.1)).backward()
    assert torch.equal(net.bias.grad, g_bias_plain)  # biases are not regularized


def test_targets_select_the_right_tensors() -> None:
    net = Net()
    names = lambda t: [n for n, _ in collect_params(net, t)]  # noqa: E731
    assert names("weights") == ["conv.weight", "fc.weight"]  # classifier included, biases excluded
    assert names("norm_scale") == ["bn.weight", "gn.weight", "ln.weight"]
    assert names("all") == [n for n, _ in net.named_parameters()]
    net.fc.weight.requires_grad_(False)
    assert names("weights") == ["conv.weight"]
    assert "fc.weight" not in names("all")
    with pytest.raises(ValueError, match="unknown regularization target"):
        collect_params(net, "biases")


def test_norm_without_affine_has_no_scale() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False), nn.LayerNorm(4))
    assert [n for n, _ in collect_params(net, "norm_scale")] == ["2.weight"]


def test_refresh_picks_up_replaced_parameters() -> None:
    net = Net()
    reg = Regularizer(net, "lasso", "norm_scale")
    old = net.bn.weight
    net.bn.weight = nn.Parameter(old.detach()[:5].clone())  # what pruning does: a new, smaller object
    assert reg.params[0] is old
    reg.refresh()
    assert reg.params[0] is net.bn.weight
    assert reg.numel == 5 + 8 + 8
    value = reg(1.0)
    assert value.item() == pytest.approx(sum(p.abs().sum().item() for p in reg.params))
