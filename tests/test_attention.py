"""Attention of any implementation (a matmul between activations, scaled_dot_product_attention) is
recognized from the graph's structure: its projections are kept whole, so exactly-zero value channels
never take live query/key channels with them, and removal elsewhere stays exact even with sharpened
attention, where a wrong removal cannot pass the numerical check by luck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressor
from compressor.graph import DependencyAnalyzer


class Block(nn.Module):
    """A hand-written pre-norm-free transformer block (the way Hugging Face models write attention):
    q/k/v/o projections, heads by view/transpose, softmax(q k^T) v or scaled_dot_product_attention,
    then a ReLU MLP; embedding and head Linear layers around it."""

    def __init__(self, sdpa: bool, d: int = 16, heads: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.sdpa, self.heads = sdpa, heads
        self.embed = nn.Linear(8, d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.head = nn.Linear(d, 3)
        with torch.no_grad():
            self.q.weight.mul_(20.0)  # sharpened attention: a live q/k channel removed changes outputs a lot
            self.k.weight.mul_(20.0)
            self.v.weight[:4] = 0.0  # value channels 0-3 are exactly zero for every input
            self.v.bias[:4] = 0.0
            self.fc1.bias[::4] = -1e3  # every 4th MLP unit is dead after the ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, t, c = x.shape
        split = lambda z: z.view(b, t, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, c))
        x = x + self.fc2(F.relu(self.fc1(x)))
        return self.head(x.mean(1))


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul-softmax", "scaled_dot_product_attention"])
def test_attention_projections_are_kept_whole_and_the_mlp_is_pruned_exactly(sdpa: bool) -> None:
    torch.manual_seed(0)
    model = Block(sdpa).eval()
    analyzer = DependencyAnalyzer(model, torch.randn(1, 5, 8))
    value = analyzer.group("v")
    assert value.blocked and value.blocked.startswith("attention: a product of activations")
    assert {"q", "k", "v"} <= set(value.members)  # torch-pruning couples them: all kept whole
    calib = [torch.randn(16, 5, 8) for _ in range(4)]
    x = torch.randn(32, 5, 8)
    result = compressor.compress(model, calib, heldout=x, progress=False)
    groups = {g["root"]: g for g in result.groups}
    assert groups["fc1"]["after"] == 24  # the 8 dead MLP units, exactly
    assert all(result.model.get_submodule(n).out_features == 16 for n in ("q", "k", "v"))
    with torch.no_grad():
        assert (result.model(x) - model(x)).abs().max().item() <= 1e-5 * model(x).abs().max().item()
    assert result.verification["passed"] is True
