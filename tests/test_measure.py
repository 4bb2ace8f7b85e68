"""compressor.counting: MAC counting (fvcore plus explicit handlers, cross-checked against torch's
FlopCounterMode, which is also the fallback); compressor.model_outputs: output extraction and output parity."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compressor.counting import EXTRA_HANDLES, FLOP_COUNTER_MODE, FVCORE, compare_macs, count_macs, count_params
from compressor.model_outputs import compare_outputs, output_tensor, output_tensors, primary_output_index, run_model


def _flop_counter_macs(model: nn.Module, x: torch.Tensor) -> float:
    """torch's own count (FLOPs = 2 x MACs for matmul / conv)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2


def _vgg11_bn_small_head() -> nn.Module:
    """torchvision's vgg11_bn with a small classifier (building the 120M-parameter head takes seconds)."""
    with torch.device("meta"):
        model = torchvision.models.vgg11_bn(num_classes=10)
    model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    return model


@pytest.mark.parametrize(
    "name, build, shape",
    [
        ("resnet18", lambda: torchvision.models.resnet18(num_classes=10), (3, 64, 64)),
        ("vgg11_bn", lambda: _vgg11_bn_small_head(), (3, 32, 32)),
        ("mlp", lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 128),
                                      nn.ReLU(), nn.Linear(128, 10)), (3, 8, 8)),
    ],
)
def test_total_agrees_with_flop_counter_mode(name, build, shape) -> None:
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(1, *shape)
    count = count_macs(model, x)
    reference = _flop_counter_macs(model, x)
    assert abs(count.total_macs - reference) / reference < 0.02, (name, count.total_macs, reference)
    assert count.flops == 2 * count.total_macs
    assert count.params == sum(p.numel() for p in model.parameters())
    assert count.unsupported_ops == {}


def test_counts_are_per_sample_and_exact_for_linear() -> None:
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    one = count_macs(model, torch.randn(1, 20))
    many = count_macs(model, torch.randn(16, 20))  # only the first sample is used
    assert one.total_macs == many.total_macs == 20 * 30 + 30 * 5
    assert count_macs(model, (20,)).total_macs == 20 * 30 + 30 * 5  # a shape works too
    assert one.by_module["0"] == 600 and one.by_module["2"] == 150


def test_ops_fvcore_skips_are_handled_explicitly() -> None:
    """resnet18's max-pool and residual additions count, and say so in extra_handled_ops."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    count = count_macs(model, torch.randn(1, 3, 64, 64))
    assert count.extra_handled_ops["max_pool2d"] == 64 * 32 * 32  # one per input element
    assert count.extra_handled_ops["add_"] > 0
    assert {"aten::max_pool2d", "aten::add_", "aten::scaled_dot_product_attention"} <= set(EXTRA_HANDLES)


def test_attention_counts_both_matmuls() -> None:
    class Attn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.view(1, 2, 16, 8)  # batch 1, 2 heads, 16 tokens, 8 dims
            return nn.functional.scaled_dot_product_attention(q, q, q)

    count = count_macs(Attn(), torch.randn(1, 256))
    assert count.extra_handled_ops["scaled_dot_product_attention"] == 2 * 16 * 16 * (8 + 8)
    assert count.unsupported_ops == {}


def test_unhandled_ops_are_listed_not_dropped() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.zeta(self.fc(x).abs() + 2, 1.5) + torch.cumsum(x, 1)

    count = count_macs(Odd(), torch.randn(1, 4))
    assert "aten::special_zeta" in count.unsupported_ops and "aten::cumsum" in count.unsupported_ops
    assert count.warnings and "special_zeta" in count.warnings[0]
    assert count.to_dict()["unsupported_ops"] == count.unsupported_ops


def test_dense_versus_pruned_side_by_side() -> None:
    dense = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    pruned = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    cmp = compare_macs(dense, pruned, (32,))
    assert cmp.dense.total_macs == 32 * 64 + 64 * 10
    assert cmp.pruned.total_macs == 32 * 16 + 16 * 10
    assert cmp.mac_ratio == pytest.approx(cmp.pruned.total_macs / cmp.dense.total_macs)
    rows = {r.name: r for r in cmp.rows}
    assert rows["0"].macs_before == 2048 and rows["0"].macs_after == 512 and rows["0"].mac_ratio == 0.25
    assert rows["2"].params_before == 650 and rows["2"].params_after == 170
    section = cmp.model_section()
    assert section["params_before"] == count_params(dense) and section["macs_after"] == cmp.pruned.total_macs
    table = cmp.table()
    assert "(total)" in table and "0.25" in table


def test_mode_is_restored() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout()).train()
    count_macs(model, (4,))
    assert model.training


@dataclass
class _Output:
    """A model result torch.jit.trace refuses (neither tensor, tuple, list nor dict)."""

    logits: torch.Tensor


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> _Output:
        return _Output(self.fc(self.conv(x).mean((2, 3))))


def test_a_model_fvcore_cannot_trace_is_counted_with_flop_counter_mode() -> None:
    model = _Untraceable()
    count = count_macs(model, (3, 8, 8))
    assert count.counter == FLOP_COUNTER_MODE
    assert count.total_macs == 8 * 8 * 8 * 3 * 9 + 8 * 5  # convolution and Linear, exactly
    assert count.by_module["conv"] == 8 * 8 * 8 * 3 * 9 and count.by_module["fc"] == 40
    assert "fvcore could not trace" in count.warnings[0] and "FlopCounterMode" in count.warnings[0]
    assert count.to_dict()["counter"] == FLOP_COUNTER_MODE


def test_dense_and_pruned_are_counted_with_the_same_counter() -> None:
    """When one model needs the fallback, both are counted with it: the ratio compares like with like."""
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    cmp = compare_macs(dense, _Untraceable(), (3, 8, 8))
    assert cmp.dense.counter == cmp.pruned.counter == FLOP_COUNTER_MODE
    assert cmp.model_section()["mac_counter"] == FLOP_COUNTER_MODE
    assert compare_macs(dense, dense, (3, 8, 8)).dense.counter == FVCORE


def test_the_primary_output_is_logits_and_onnx_order_is_kept() -> None:
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    assert output_tensor(a) is a and output_tensor((b, a)) is b
    result = {"hidden": (a, b), "logits": c}
    assert output_tensors(result) == [a, b, c] and primary_output_index(result) == 2 and output_tensor(result) is c
    assert output_tensor({"out": b, "aux": a}) is b and output_tensor({"x": a, "y": b}) is a
    assert output_tensor(_Output(c)) is c
    with pytest.raises(Exception, match="cannot find an output tensor"):
        output_tensor("text")


def test_parity_figures_of_two_models() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(10, 4)
    same = compare_outputs(run_model(model, x, batch_size=3), run_model(model, x))  # batching: float rounding only
    assert same["max_abs_diff"] < 1e-6 and same["top1_agreement"] == 1.0 and same["samples"] == 10
    shifted = compare_outputs(run_model(model, x), run_model(model, x) + 0.5)
    assert shifted["max_abs_diff"] == pytest.approx(0.5)
    assert shifted["rel_diff"] == pytest.approx(0.5 / shifted["output_scale"])


def test_multihead_attention_is_counted_on_its_fused_eval_path_too() -> None:
    """Under no_grad in eval, nn.MultiheadAttention runs aten::_native_multi_head_attention: it must be
    counted like the unfused path (projections + Q @ K^T + attn @ V), not dropped as unsupported."""
    from compressor.models import ModelSpec, build_model

    model = build_model(ModelSpec("vit-tiny", 10, (1, 28, 28), {"patch_size": 7})).eval()
    unfused = count_macs(model, (1, 28, 28))
    with torch.no_grad():
        fused = count_macs(model, (1, 28, 28))
    assert "aten::_native_multi_head_attention" not in fused.unsupported_ops
    assert fused.extra_handled_ops.get("_native_multi_head_attention", 0) > 0
    assert fused.total_macs == pytest.approx(unfused.total_macs, rel=1e-4)
    tokens, dim = 17, 64
    per_block = 4 * tokens * dim * dim + 2 * tokens * tokens * dim
    assert fused.extra_handled_ops["_native_multi_head_attention"] == 4 * per_block
