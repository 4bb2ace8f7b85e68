"""The built-in ``vit-tiny``: builds for MNIST and CIFAR shapes, the analyzer blocks its residual stream and
attention, removes dead MLP hidden units losslessly (also after ONNX export), and Synaptic Stripping
targets its MLP blocks only."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from compressor.activity import collect_activity
from compressor.criteria import Dead
from compressor.errors import UsageError
from compressor.graph import DependencyAnalyzer
from compressor.models import BUILTINS, ModelSpec, build_model, make_spec
from compressor.models.vit import VisionTransformer
from compressor.training.methods.stripping import StrippingConfig, SynapticStripping
from exporters.onnx import export_onnx
from exporters.ort import check_parity

TINY = {"dim": 16, "depth": 2, "heads": 2}
FC1 = ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]


def _vit(shape: tuple[int, ...] = (3, 32, 32), activation: str = "relu", **kwargs) -> nn.Module:
    return build_model(ModelSpec("vit-tiny", 10, shape, {**TINY, "activation": activation, **kwargs})).eval()


def _plant_dead(model: nn.Module, units: dict[int, list[int]]) -> None:
    """fc1 rows zeroed and bias -1e3: ReLU and GELU (GELU(-1e3) == -0.0) output exact zeros."""
    with torch.no_grad():
        for block, rows in units.items():
            fc1 = model.blocks[block].mlp.fc1
            fc1.weight[rows] = 0.0
            fc1.bias[rows] = -1e3


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_vit_tiny_defaults_build_for_mnist_and_cifar(shape: tuple[int, ...]) -> None:
    spec = make_spec("vit-tiny", input_shape=shape)
    model = build_model(spec).eval()
    assert isinstance(model, VisionTransformer) and model.demp_spec == spec
    assert model.patch_embed.kernel_size == model.patch_embed.stride == (4, 4)
    assert model.patch_embed.in_channels == shape[0]
    assert model.pos_embed.shape == (1, 1 + (shape[1] // 4) * (shape[2] // 4), 64)  # class token + patches
    assert len(model.blocks) == 4 and model.blocks[0].attn.num_heads == 4 and model.blocks[0].attn.batch_first
    assert (model.blocks[0].mlp.fc1.out_features, type(model.blocks[0].mlp.act)) == (128, nn.GELU)
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert BUILTINS["vit-tiny"].input_shape == (3, 32, 32)
    assert make_spec("vit-tiny", input_size=28).input_shape == (3, 28, 28)


def test_vit_tiny_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="activation 'tanh'"):
        _vit(activation="tanh")
    with pytest.raises(UsageError, match="divisible by patch_size=5"):
        _vit(patch_size=5)
    with pytest.raises(UsageError, match="divisible by heads=3"):
        _vit(heads=3)
    with pytest.raises(UsageError, match="image input shape"):
        _vit(shape=(64,))


def test_residual_stream_and_attention_are_blocked_mlp_hidden_units_prunable() -> None:
    model = _vit()
    analyzer = DependencyAnalyzer(model, torch.randn(2, 3, 32, 32))
    assert sorted(g.root for g in analyzer.prunable_groups) == FC1
    assert all(g.size == 32 and [c[0] for c in g.consumers] == [r.replace("fc1", "fc2")]
               for r in FC1 for g in [analyzer.group(r)])
    stream = [g for g in analyzer.groups if "patch_embed" in g.members]
    assert len(stream) == 1 and stream[0].size == 16 and "LayerNorm" in stream[0].blocked
    assert {"cls_token", "pos_embed", "norm", "head", "blocks.0.attn", "blocks.1.attn", "blocks.0.norm1",
            "blocks.1.norm2", "blocks.0.mlp.fc2", "blocks.1.mlp.fc2"} <= set(stream[0].members)
    # no other group touches an attention layer: heads (in_proj / out_proj) are only ever in the blocked stream
    assert all("attn" not in m for g in analyzer.groups if g is not stream[0] for m in g.members)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_dead_mlp_units_are_removed_losslessly_and_onnx_matches(activation: str, tmp_path) -> None:
    model = _vit(activation=activation)
    planted = {0: [0, 3, 7], 1: [1, 2, 30, 31]}
    _plant_dead(model, planted)
    dense = copy.deepcopy(model)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    analyzer = DependencyAnalyzer(model, batches[0])
    stats = collect_activity(model, batches, layers=analyzer.consumer_names, progress=False)
    plan = analyzer.decide(stats, Dead())
    assert {g.root: sorted(g.removed) for g in plan.groups} == {f"blocks.{b}.mlp.fc1": r for b, r in planted.items()}
    analyzer.apply(plan)
    for block, rows in planted.items():
        mlp = model.blocks[block].mlp
        assert mlp.fc1.out_features == mlp.fc2.in_features == 32 - len(rows)
        assert model.blocks[block].attn.embed_dim == 16 and model.blocks[block].attn.num_heads == 2
    assert model.pos_embed.shape[-1] == model.head.in_features == 16
    fresh = torch.randn(5, 3, 32, 32)  # never used for the decision: the planted units are dead on any input
    with torch.no_grad():
        for x in [*batches, fresh]:
            assert torch.allclose(dense(x), model(x), atol=1e-6, rtol=0)
    info = export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "vit.onnx", exporter="torchscript")
    parity = check_parity(info.path, model, [batches[0], fresh])
    assert parity.passed and parity.samples == 13 and parity.top1_agreement == 1.0


def test_synaptic_stripping_targets_only_the_mlp_first_linears() -> None:
    model = _vit(activation="relu")
    _plant_dead(model, {0: [4], 1: [9]})
    with torch.no_grad():  # rows with negative weights, so stripping has something to strip
        for block, row in ((0, 4), (1, 9)):
            model.blocks[block].mlp.fc1.weight[row] = torch.linspace(-1.0, 1.0, 16)
    fc2_before = {b: model.blocks[b].mlp.fc2.weight.detach().clone() for b in (0, 1)}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    method = SynapticStripping(model, StrippingConfig(), example_inputs=x, val_loader=[(x, y)])
    assert sorted(g.root for g in method._target_groups()) == FC1
    assert sorted(method.masks) == [f"{r}.weight" for r in FC1]
    dead = method.measure()
    assert {r: m.nonzero().flatten().tolist() for r, m in dead.items()} == {FC1[0]: [4], FC1[1]: [9]}
    assert method.strip(dead, None) == 2 * 2  # ceil(0.1 * 16) most negative weights of each dead unit
    assert method.masks[f"{FC1[0]}.weight"][4, :2].all() and method.masks[f"{FC1[1]}.weight"][9, :2].all()
    for b in (0, 1):
        assert torch.equal(model.blocks[b].mlp.fc2.weight, fc2_before[b])


def _train_vit(tmp_path, activation: str, criterion: str, peak: float):
    from compressor.data import load_data
    from compressor.training.config import load_recipe
    from compressor.training.trainer import train

    recipe = load_recipe({
        "method": "demp", "data": {"spec": "digits", "batch_size": 32},
        "model": {"arch": "vit-tiny", "kwargs": {"patch_size": 2, "dim": 16, "depth": 1, "heads": 2,
                                                  "mlp_ratio": 4, "activation": activation}},
        "train": {"epochs": 1, "lr": 1e-2, "seed": 0, "log_every": 1000},
        "demp": {"regularizer": "lasso", "target": "weights", "peak": peak, "interval": 20, "death_samples": 256,
                 "criterion": criterion}})
    return train(recipe, tmp_path / activation, progress=False, data=load_data("digits"), plots=False,
                 tensorboard=False, save_model=False)


def test_demp_trains_a_relu_vit_and_removes_dead_mlp_units_losslessly(tmp_path) -> None:
    run = _train_vit(tmp_path, "relu", "dead", 3e-2)
    s = run.summary
    assert s["removed_channels"] > 0 and all(g["root"].endswith("mlp.fc1") for g in s["groups"] if g["removed"])
    assert s["final_removal_parity"]["max_abs_diff"] <= 1e-5  # exact zeros removed: lossless
    assert not any(m.get("removal_error") for m in s["methods"])
    assert run.model.blocks[0].attn.embed_dim == 16  # the residual stream and the heads are untouched


def test_demp_saturated_criterion_on_a_gelu_vit_reports_each_removals_error(tmp_path) -> None:
    run = _train_vit(tmp_path, "gelu", "saturated", 3e-2)
    s = run.summary
    (demp,) = s["methods"]
    assert demp["criterion"] == "saturated" and demp["lossless"] is False
    assert s["removed_channels"] > 0, "strong Lasso on a GELU MLP leaves units that never turn positive"
    err = demp["removal_error"]
    assert err["max_abs_diff"] > 0 and err["samples"] == 256 and err["removals"] >= 1
    records = [json.loads(line) for line in (tmp_path / "gelu" / "metrics.jsonl").read_text().splitlines()]
    errors = [r["error"]["max_abs_diff"] for r in records if r["kind"] == "removal" and r.get("error")]
    assert errors and max(errors) == pytest.approx(err["max_abs_diff"])
