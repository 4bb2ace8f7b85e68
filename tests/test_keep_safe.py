"""Apply, verify, keep what is safe: a group whose removal breaks the model is found, blocked with a
reason that names the construct and the module, and everything else is still compressed losslessly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressor
from compressor.culprits import explain_failure, find_culprits
from compressor.errors import VerificationError


def _kill(conv: nn.Conv2d, channels: list[int]) -> None:
    """Make ``channels`` of ``conv`` dead after a ReLU: zero weights, negative bias."""
    with torch.no_grad():
        conv.weight[channels] = 0.0
        conv.bias[channels] = -1.0


class BlurPool(nn.Module):
    """An anti-aliasing blur whose ``groups`` is the channel count of a buffer set at construction time."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", torch.ones(channels, 1, 3, 3) / 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filt, padding=1, groups=self.filt.shape[0])


class Constructs(nn.Module):
    """Three paths with dead channels: a blur pool with a constant ``groups``, a split with constant sizes,
    and a plain conv the analyzer handles; their features are concatenated for the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.blur_in = nn.Conv2d(3, 8, 3, padding=1)
        self.blur = BlurPool(8)
        self.blur_out = nn.Conv2d(8, 4, 1)
        self.split_in = nn.Conv2d(3, 8, 3, padding=1)
        self.sizes = [4, 4]
        self.left, self.right = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.plain = nn.Conv2d(3, 8, 3, padding=1)
        self.plain_out = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(16, 5)
        for conv in (self.blur_in, self.split_in, self.plain):
            _kill(conv, [1, 6])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.blur_out(self.blur(F.relu(self.blur_in(x))))
        left, right = torch.split(F.relu(self.split_in(x)), self.sizes, dim=1)
        b = torch.cat([self.left(left), self.right(right)], dim=1)
        c = self.plain_out(F.relu(self.plain(x)))
        return self.head(torch.cat([a, b, c], dim=1).mean((2, 3)))


def _loader() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(8, 3, 12, 12) for _ in range(4)]


def test_groups_that_break_the_model_are_blocked_with_the_construct_and_the_rest_is_compressed() -> None:
    torch.manual_seed(0)
    model = Constructs().eval()
    x = torch.randn(8, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
    result = compressor.compress(model, _loader(), progress=False)
    groups = {g["root"]: g for g in result.groups}
    assert groups["plain"]["removed"] == [1, 6] and groups["plain"]["after"] == 6
    assert "groups= is a constant" in groups["blur_in"]["blocked"] and groups["blur_in"]["after"] == 8
    assert "torch.split with constant sizes" in groups["split_in"]["blocked"] and groups["split_in"]["after"] == 8
    assert result.verification["passed"] is True
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), before, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # the input model is untouched


def test_the_report_lists_each_blocked_group_with_its_reason() -> None:
    from exporters.render import render_markdown
    from exporters.report import compress_report

    result = compressor.compress(Constructs().eval(), _loader(), progress=False)
    report = compress_report(result)
    blocked = {g["root"]: g["blocked"] for g in report["pruning"]["groups"] if g.get("blocked")}
    assert "torch.split with constant sizes" in blocked["split_in"]
    assert "groups= is a constant" in blocked["blur_in"]
    markdown = render_markdown(report)
    assert "### Blocked groups" in markdown and f"- `split_in`: {blocked['split_in']}" in markdown


def test_bisection_finds_several_culprits_in_few_checks() -> None:
    """64 independent 1x1 paths, three of them broken by a constant-size view: exactly those three are
    found, with fewer checks than half the groups (about 2 c log2 n: one check per group would be 64)."""

    class Paths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(3, 4, 1) for _ in range(64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = [c(x) for c in self.convs]
            for i in (2, 9, 41):
                outs[i] = outs[i].view(x.shape[0], 4, -1).mean(-1).view(x.shape[0], 4, 1, 1)
            return torch.cat([o.mean((2, 3)) for o in outs], dim=1)

    import torch_pruning as tp

    from compressor.graph.apply import Action

    model = Paths().eval()
    roots = [f"convs.{i}" for i in range(64)]
    # removing output channel 0 of every conv; the broken paths reshape with a constant 4 channels
    actions = [[Action(r, False, tp.prune_conv_out_channels, 0, {0})] for r in roots]
    messages: list[str] = []
    found = find_culprits(model, roots, actions, torch.randn(4, 3, 5, 5), tolerance=None, progress=messages.append)
    assert set(found) == {"convs.2", "convs.9", "convs.41"}
    assert all("view/reshape with constant channel sizes" in r for r in found.values())
    checks = int(messages[0].split("(")[1].split()[0])
    assert checks < 32


def test_when_nothing_can_be_kept_compression_fails_cleanly_naming_every_group() -> None:
    class SplitOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a, self.b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)
            _kill(self.stem, [0])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p, q = torch.split(F.relu(self.stem(x)), [4, 4], dim=1)
            return torch.cat([self.a(p), self.b(q)], 1).mean((2, 3))

    with pytest.raises(VerificationError, match=r"no removal could be kept.*stem: a torch.split with constant sizes"
                                                r".*--ignore stem"):
        compressor.compress(SplitOnly().eval(), _loader(), progress=False)


@pytest.mark.parametrize("message, construct", [
    ("split_with_sizes expects split_sizes to sum exactly to 72 (input tensor's size at dimension 1), but got "
     "split_sizes=[48, 48]", "torch.split with constant sizes"),
    ("Given groups=64, weight of size [64, 1, 3, 3], expected input[1, 48, 8, 8] to have 64 channels, but got 48 "
     "channels instead", "groups= is a constant"),
    ("shape '[2, 4, 16]' is invalid for input of size 96", "view/reshape with constant channel sizes"),
    ("The size of tensor a (12) must match the size of tensor b (16) at non-singleton dimension 1",
     "elementwise operation between channels pruned differently"),
    ("mat1 and mat2 shapes cannot be multiplied (2x12 and 16x5)", "input no longer matches the pruned channels"),
    ("Given groups=1, weight of size [4, 5, 1, 1], expected input[16, 7, 12, 12] to have 5 channels, but got 7 "
     "channels instead", "input no longer matches the pruned channels"),
    ("Given normalized_shape=[384], expected input with shape [*, 384], but got input of size[16, 16, 368]",
     "a LayerNorm whose normalized_shape is a constant"),
    ("weight should contain 583 elements not 960", "weight-standardized convolution"),
    ("something else entirely", "the pruned model fails (RuntimeError: something else entirely)"),
])
def test_failures_are_explained_as_constructs(message: str, construct: str) -> None:
    assert construct in explain_failure(RuntimeError(message))


class Split(nn.Module):
    """``a, b = x.split(sizes)`` read by two convs: torch-pruning maps the readers in the wrong order."""

    def __init__(self, sizes: tuple[int, int]) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.stem = nn.Conv2d(3, sum(sizes), 3, padding=1)
        self.a, self.b = nn.Conv2d(sizes[0], 4, 1), nn.Conv2d(sizes[1], 4, 1)
        self.head = nn.Linear(8, 3)
        _kill(self.stem, [0, 1, 2])  # dead channels in the first part only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(F.relu(self.stem(x)), self.sizes, dim=1)
        return self.head(torch.cat([self.a(p), self.b(q)], 1).mean((2, 3)))


def test_a_split_into_unequal_parts_is_blocked_before_applying() -> None:
    from compressor.activity import collect_activity
    from compressor.criteria import Dead
    from compressor.graph import DependencyAnalyzer

    model = Split((12, 18)).eval()
    analyzer = DependencyAnalyzer(model, torch.randn(1, 3, 8, 8))
    stem = analyzer.group("stem")
    assert "split or partial channel operation" in stem.blocked
    assert "input channel 17 of a layer with 12" in stem.blocked
    stats = collect_activity(model, _loader(), layers=analyzer.consumer_names, progress=False)
    assert analyzer.live_masks(stats, Dead())["stem"].all()  # refused mapping: counted live, never removed
    assert not analyzer.decide(stats, Dead()).groups


class Chunk(nn.Module):
    """``a, b = x.chunk(2)`` read by two convs (equal halves: the wrong order goes unseen by the shapes),
    beside a plain path with dead channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.plain = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b, self.c = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(12, 3)
        _kill(self.stem, [0, 1, 2])  # dead in the first half only
        _kill(self.plain, [5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = F.relu(self.stem(x)).chunk(2, dim=1)
        c = self.c(F.relu(self.plain(x)))
        return self.head(torch.cat([self.a(p), self.b(q), c], 1).mean((2, 3)))


def test_a_split_into_equal_parts_is_caught_after_applying_and_blocked() -> None:
    torch.manual_seed(0)
    model = Chunk().eval()
    x = torch.randn(4, 3, 8, 8)
    result = compressor.compress(model, _loader(), progress=False, heldout=x)
    groups = {g["root"]: g for g in result.groups}
    assert groups["stem"]["after"] == 16 and "split/chunk" in groups["stem"]["blocked"]
    assert groups["plain"]["after"] == 7 and result.verification["passed"] is True
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=1e-6)


class PartialResidual(nn.Module):
    """ReXNet's partial residual ``cat([y[:, :c] + x, y[:, c:]])`` stacked: torch-pruning's group expansion
    keeps re-adding layers with shifted index lists and never converges."""

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.cin, self.conv, self.bn = cin, nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            return torch.cat([y[:, :self.cin] + x, y[:, self.cin:]], dim=1)

    def __init__(self, blocks: int = 8) -> None:
        super().__init__()
        widths = [8 + 4 * i for i in range(blocks)]
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        self.blocks = nn.Sequential(*[self.Block(a, b) for a, b in zip(widths, widths[1:], strict=False)])
        self.head = nn.Linear(widths[-1], 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_a_group_that_never_converges_is_blocked_naming_the_construct(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from compressor.graph import DependencyAnalyzer, tp_compat

    monkeypatch.setattr(tp_compat, "MAX_GROUP_ITEMS", 300)  # the default 3,000 takes seconds to reach here
    t0 = time.perf_counter()
    analyzer = DependencyAnalyzer(PartialResidual().eval(), torch.randn(1, 3, 8, 8))
    assert time.perf_counter() - t0 < 30
    diverged = [g for g in analyzer.groups if g.blocked and "past 300 layer entries" in g.blocked]
    assert diverged and all("partial residual such as cat([x[:, :c] + shortcut, x[:, c:]])" in g.blocked
                            for g in diverged)


def test_the_analyzer_time_budget_blocks_what_it_could_not_map() -> None:
    from compressor.graph import DependencyAnalyzer

    analyzer = DependencyAnalyzer(Constructs().eval(), torch.randn(1, 3, 8, 8), time_budget=0.0)
    assert analyzer.groups and not analyzer.prunable_groups
    first, *rest = [g for g in analyzer.groups]
    assert "time budget (0 s) ran out while mapping the channels of" in first.blocked
    assert all("ran out before these channels were mapped" in g.blocked for g in rest)


def test_a_torch_pruning_failure_while_mapping_a_group_blocks_it_naming_the_construct(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's EfficientViM made torch-pruning's split mapping raise IndexError inside get_pruning_group:
    that group is blocked with the construct named, the others are mapped as usual."""
    from torch_pruning.dependency import index_mapping

    from compressor.graph import DependencyAnalyzer

    namespace: dict = {}  # a raising __call__ whose frame is torch-pruning's, as the real failure's was
    exec(compile("def call(self, idxs):\n    raise IndexError('list index out of range')\n",
                 "/site-packages/torch_pruning/dependency/index_mapping.py", "exec"), namespace)
    monkeypatch.setattr(index_mapping._SplitIndexMapping, "__call__", namespace["call"])
    analyzer = DependencyAnalyzer(Split((12, 18)).eval(), torch.randn(1, 3, 8, 8))
    stem = analyzer.group("stem")
    assert stem.blocked == ("torch-pruning cannot map the channels of stem through a torch.split/chunk over channels "
                            "(IndexError: list index out of range); they are kept whole")
    assert analyzer.group("a").blocked is None and analyzer.group("b").blocked is None


def test_a_transposed_convolution_reader_blocks_its_group_and_compression_goes_on() -> None:
    """LowFormer's upsampling: a ConvTranspose2d reads a group's channels; it cannot be measured, so the
    group is kept whole (named) and the rest is compressed (it used to fail collecting statistics)."""

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down, self.up = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.plain, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(12, 3)
            _kill(self.down, [1])
            _kill(self.plain, [2])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.up(F.relu(self.down(x))).mean((2, 3))
            return self.head(torch.cat([a, F.relu(self.plain(x)).mean((2, 3))], 1))

    result = compressor.compress(Up().eval(), _loader(), progress=False)
    groups = {g["root"]: g for g in result.groups}
    assert "transposed convolution up" in groups["down"]["blocked"] and groups["down"]["after"] == 8
    assert groups["plain"]["after"] == 7 and result.verification["passed"] is True
