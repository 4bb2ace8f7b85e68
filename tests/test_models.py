"""Architectures: built-ins at their intended sizes, torchvision by name, user factories, class inference."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from compressor.errors import DempError, UsageError
from compressor.loading import load_model
from compressor.models import (
    BUILTINS,
    ModelSpec,
    build_model,
    canonical_arch,
    example_input,
    infer_num_classes,
    list_archs,
    make_spec,
)


def _forward(model: nn.Module, shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(batch, *shape))


# ---------------------------------------------------------------------------------------- built-ins

@pytest.mark.parametrize(
    "arch,shape,kwargs",
    [
        ("mlp", (1, 8, 8), {}),
        ("mlp", (1, 28, 28), {"widths": [64, 32, 16], "activation": "gelu"}),
        ("mlp", (20,), {"widths": [8], "activation": "tanh"}),
        ("cnn", (1, 8, 8), {}),
        ("cnn", (1, 28, 28), {}),
        ("cnn", (3, 32, 32), {"channels": [8, 16, 32]}),
        ("resnet18-cifar", (3, 32, 32), {}),
        ("resnet20-cifar", (3, 32, 32), {}),
        ("resnet20-cifar", (1, 28, 28), {"zero_init_residual": True}),
        ("resnet56-cifar", (3, 32, 32), {}),
        ("vgg16-cifar", (3, 32, 32), {}),
        ("vgg16-cifar", (1, 32, 32), {"classifier_width": 0}),
    ],
)
def test_builtin_forward_at_intended_sizes(arch: str, shape: tuple[int, ...], kwargs: dict) -> None:
    model = build_model(ModelSpec(arch, 7, shape, kwargs))
    out = _forward(model, shape)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert model.demp_spec == ModelSpec(arch, 7, shape, kwargs)


@pytest.mark.parametrize("activation,cls", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU),
                                            ("silu", nn.SiLU), ("tanh", nn.Tanh)])
def test_mlp_activation_and_widths(activation: str, cls: type) -> None:
    model = build_model(ModelSpec("mlp", 10, (1, 8, 8), {"widths": [32, 16], "activation": activation}))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, cls) for m in model.modules()) == 2


def test_resnet18_cifar_is_the_cifar_variant() -> None:
    model = build_model(ModelSpec("resnet18-cifar", 10, (3, 32, 32)))
    assert isinstance(model, torchvision.models.ResNet)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert isinstance(model.layer1[0], torchvision.models.resnet.BasicBlock)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the standard CIFAR ResNet-18


@pytest.mark.parametrize("arch,blocks,params", [("resnet20-cifar", 3, 272_474), ("resnet56-cifar", 9, 855_770)])
def test_he_cifar_resnets(arch: str, blocks: int, params: int) -> None:
    """He et al.'s CIFAR ResNets: 3x3/1 stem of 16, stages of 16/32/64 channels, option-B shortcuts."""
    from torchvision.models.resnet import BasicBlock

    model = build_model(ModelSpec(arch, 10, (3, 32, 32)))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.out_channels == 16
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(s) for s in stages] == [blocks] * 3 and all(isinstance(b, BasicBlock) for s in stages for b in s)
    assert [s[-1].conv2.out_channels for s in stages] == [16, 32, 64]
    assert [s[0].stride for s in stages] == [1, 2, 2]
    # projections (1x1 conv + BN) exactly where the shape changes
    expected = [False] * blocks + ([True] + [False] * (blocks - 1)) * 2
    assert [b.downsample is not None for s in stages for b in s] == expected
    assert model.layer2[0].downsample[0].kernel_size == (1, 1)
    assert 6 * blocks + 2 == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) - 2  # depth
    # 2,752 parameters (the two projections) above option A's 269,722 / 853,018
    assert sum(p.numel() for p in model.parameters()) == params
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.eval().layer3(model.layer2(model.layer1(model.conv1(x)))).shape == (2, 64, 8, 8)


def test_he_cifar_resnet_planted_dead_channels_are_removed_losslessly() -> None:
    """The dependency analyzer couples each stage's residual channels (stem, every block, the projection)
    and removes planted dead channels of every kind of group without changing the outputs."""
    import copy

    from compressor.activity import collect_activity
    from compressor.criteria import Dead
    from compressor.graph import DependencyAnalyzer
    from compressor.plan import GroupRemoval, PruningPlan
    from compressor.planting import plant_dead_channels

    model = build_model(ModelSpec("resnet20-cifar", 10, (3, 32, 32))).eval()
    x = torch.randn(16, 3, 32, 32)
    analyzer = DependencyAnalyzer(model, x)
    planted = plant_dead_channels(model, analyzer, fraction=0.25)
    residual = [g for g in analyzer.prunable_groups if g.root in planted and g.size in (16, 32, 64)
                and len(analyzer.channel_params(g.root)) > 8]
    assert len(planted) == 3 + 9 and len(residual) == 3  # 3 residual streams + the 9 blocks' inner convs
    dense = copy.deepcopy(model)
    stats = collect_activity(model, [x], layers=analyzer.consumer_names, progress=False)
    plan = analyzer.decide(stats, Dead())
    removed = {g.root: set(g.removed) for g in plan.groups}
    for root, channels in planted.items():
        assert set(channels) <= removed.get(root, set()), f"planted dead channels of {root} were kept"
    # the planted channels alone are dead on every input: removing them is lossless on new data too
    planted_only = PruningPlan(groups=[GroupRemoval(g.root, g.size, sorted(planted[g.root]), g.members)
                                       for g in plan.groups if g.root in planted])
    held = copy.deepcopy(dense)
    DependencyAnalyzer(held, x).apply(planted_only)
    result = analyzer.apply(plan)  # also what happens to be zero on these 16 samples
    assert result.removed == plan.removed_channels >= planted_only.removed_channels == sum(map(len, planted.values()))
    fresh = torch.randn(4, 3, 32, 32)  # data never used for the decisions
    with torch.no_grad():
        assert torch.allclose(dense(x), model(x), atol=1e-4, rtol=0), "lossless on the decision samples"
        ref, out = dense(fresh), held(fresh)
    assert torch.allclose(ref, out, atol=1e-5 * float(ref.abs().max()), rtol=0), "planted removal lossy on new data"
    assert sum(p.numel() for p in held.parameters()) < 0.8 * sum(p.numel() for p in dense.parameters())


def test_vgg16_cifar_has_13_convs_with_batchnorm() -> None:
    model = build_model(ModelSpec("vgg16-cifar", 10, (3, 32, 32)))
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [512, 10]


def test_bad_builtin_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="activation 'swish'"):
        build_model(ModelSpec("mlp", 10, (1, 8, 8), {"activation": "swish"}))
    with pytest.raises(UsageError, match=r"does not take option\(s\) \['depth'\]"):
        build_model(ModelSpec("cnn", 10, (1, 8, 8), {"depth": 3}))
    with pytest.raises(UsageError, match="image input shape"):
        build_model(ModelSpec("cnn", 10, (64,)))


def test_same_seed_same_weights() -> None:
    torch.manual_seed(5)
    a = load_model("cnn")
    torch.manual_seed(5)
    b = load_model("cnn")
    torch.manual_seed(6)
    c = load_model("cnn")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert not a.training  # load_model returns eval mode


def test_spec_json_round_trip() -> None:
    spec = make_spec("mlp", num_classes=3, input_shape=(1, 28, 28), widths=(64, 32), activation="silu")
    assert spec.kwargs == {"widths": [64, 32], "activation": "silu"}
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    assert build_model(again).features[0].out_features == 64
    with pytest.raises(UsageError, match="unknown keys"):
        ModelSpec.from_dict({**spec.to_dict(), "widths": [1]})
    with pytest.raises(UsageError, match="JSON"):
        ModelSpec("mlp", 3, (1, 8, 8), {"activation": nn.ReLU})


def test_default_input_shapes() -> None:
    assert make_spec("cnn").input_shape == (1, 8, 8)
    assert make_spec("cnn", input_size=28).input_shape == (1, 28, 28)
    assert make_spec("resnet18-cifar").input_shape == (3, 32, 32)
    assert make_spec("resnet56-cifar").input_shape == (3, 32, 32)
    assert canonical_arch("ResNet20_CIFAR") == "resnet20-cifar"
    assert make_spec("resnet18").input_shape == (3, 224, 224)
    assert make_spec("resnet18", input_size=64).input_shape == (3, 64, 64)
    assert make_spec("inception_v3").input_shape == (3, 299, 299)
    assert make_spec("resnet18").num_classes == 1000 and make_spec("mlp").num_classes == 10
    assert example_input(make_spec("cnn", input_size=28), 3).shape == (3, 1, 28, 28)


# ---------------------------------------------------------------------------------------- torchvision

def test_every_torchvision_classifier_is_listed() -> None:
    names = list_archs()
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(names)
    assert set(BUILTINS) <= set(names)


@pytest.mark.parametrize("arch,size", [("resnet18", 32), ("mobilenet_v3_small", 32), ("squeezenet1_1", 32),
                                       pytest.param("vit_b_32", 64, marks=pytest.mark.slow)])
def test_torchvision_models_build_and_run(arch: str, size: int) -> None:
    model = load_model(arch, num_classes=5, input_size=size)
    assert _forward(model, (3, size, size), batch=1).shape == (1, 5)
    assert model.demp_spec.input_shape == (3, size, size)


def test_vit_image_size_follows_input_size() -> None:
    assert make_spec("vit_b_32", input_size=64).input_shape == (3, 64, 64)
    with pytest.raises(UsageError, match="square"):
        build_model(ModelSpec("vit_b_32", 10, (3, 64, 32)))


def test_too_small_input_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match=r"inception_v3 needs inputs of at least 75x75.*--input-size 75"):
        load_model("inception_v3", input_size=32)
    with pytest.raises(UsageError, match="3-channel"):
        load_model("resnet18", input_shape=(1, 28, 28))


def test_unknown_arch_lists_close_matches() -> None:
    with pytest.raises(UsageError, match=r"unknown architecture 'resnet19'; did you mean resnet18"):
        load_model("resnet19")
    with pytest.raises(UsageError, match="vgg16-cifar"):
        canonical_arch("vgg16cifar")
    assert canonical_arch("ResNet18_CIFAR") == "resnet18-cifar"
    assert canonical_arch("MobileNet-V2") == "mobilenet_v2"


# ---------------------------------------------------------------------------------------- class inference

def test_num_classes_inferred_for_torchvision_resnet18(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(num_classes=7).eval()
    torch.save(source.state_dict(), tmp_path / "r18.pt")
    model = load_model("resnet18", tmp_path / "r18.pt", input_size=32)
    assert model.demp_spec.num_classes == 7 and model.fc.out_features == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_num_classes_inferred_for_squeezenet_conv_classifier(tmp_path: Path) -> None:
    torch.save(torchvision.models.squeezenet1_1(num_classes=4).state_dict(), tmp_path / "sq.pt")
    model = load_model("squeezenet1_1", tmp_path / "sq.pt", input_size=32)
    assert model.demp_spec.num_classes == 4
    assert _forward(model, (3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("arch", sorted(BUILTINS))
def test_num_classes_inferred_for_builtins(arch: str, tmp_path: Path) -> None:
    spec = make_spec(arch, num_classes=3)
    torch.save(build_model(spec).state_dict(), tmp_path / "b.pt")
    model = load_model(arch, tmp_path / "b.pt")
    assert model.demp_spec.num_classes == 3
    assert _forward(model, spec.input_shape).shape == (2, 3)


def test_infer_returns_none_for_foreign_checkpoint() -> None:
    sd = torchvision.models.resnet18(num_classes=3).state_dict()
    assert infer_num_classes(make_spec("cnn"), sd) is None
    assert infer_num_classes(make_spec("regnet_x_400mf"), {"fc.weight": torch.zeros(6, 400)}) == 6  # meta fallback


def test_googlenet_aux_heads_follow_the_checkpoint(tmp_path: Path) -> None:
    with_aux = torchvision.models.googlenet(num_classes=3, aux_logits=True, init_weights=True)
    torch.save(with_aux.state_dict(), tmp_path / "aux.pt")
    model = load_model("googlenet", tmp_path / "aux.pt", input_size=32)
    assert model.demp_spec.kwargs["aux_logits"] is True and model.demp_spec.num_classes == 3
    assert make_spec("googlenet").kwargs == {"aux_logits": False}  # fresh models: no aux heads


# ---------------------------------------------------------------------------------------- user factories

FACTORY = """
import torch
from torch import nn

INPUT_SHAPE = (1, 8, 8)

def build(num_classes=10, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))

def fixed_head():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6))

def not_a_model(num_classes=3):
    return "nope"
"""


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(FACTORY))
    return path


def test_model_file_factory(factory_file: Path, tmp_path: Path) -> None:
    model = load_model(None, model_file=f"{factory_file}:build", num_classes=4, width=8)
    spec = model.demp_spec
    assert spec.model_file == f"{factory_file.resolve()}:build"
    assert spec.input_shape == (1, 8, 8) and spec.num_classes == 4 and spec.kwargs == {"width": 8}
    assert _forward(model, (1, 8, 8)).shape == (2, 4)
    # the spec rebuilds the same architecture, and class count is inferred from a checkpoint
    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = load_model("mine", tmp_path / "m.pt", model_file=f"{factory_file}:build", width=8)
    assert again.demp_spec.num_classes == 4
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_model_file_factory_without_num_classes(factory_file: Path) -> None:
    model = load_model(None, model_file=f"{factory_file}:fixed_head")
    assert model.demp_spec.num_classes == 6
    assert _forward(model, (1, 8, 8)).shape == (2, 6)


def test_model_file_errors(factory_file: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_model(None, model_file=f"{tmp_path / 'missing.py'}:build")
    with pytest.raises(UsageError, match="PATH.py:FACTORY"):
        load_model(None, model_file=str(factory_file))
    with pytest.raises(UsageError, match=r"no function 'buld'.*build, fixed_head, not_a_model"):
        load_model(None, model_file=f"{factory_file}:buld")
    with pytest.raises(UsageError, match="returned a str"):
        load_model(None, model_file=f"{factory_file}:not_a_model")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nraise ValueError('boom')\n")
    with pytest.raises(DempError, match=r"importing model file .*broken.py failed \(line 3\): ValueError: boom"):
        load_model(None, model_file=f"{broken}:build")


# ---------------------------------------------------------------------------------------- compressed dirs

def test_plan_directory_is_delegated_to_load_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plan.json").write_text("{}")
    sentinel = nn.Linear(2, 2)
    calls = []

    def fake_load_pruned(path):
        calls.append(Path(path))
        return sentinel

    import compressor.loading

    monkeypatch.setattr(compressor.loading, "load_pruned", fake_load_pruned)
    assert load_model("resnet18", tmp_path) is sentinel
    assert calls == [tmp_path]
