"""Recipes: YAML <-> dataclasses, validation, overrides, shipped samples, the documented reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from compressor.errors import UsageError
from compressor.training.config import (
    RecipeConfig,
    apply_overrides,
    load_recipe,
    recipe_diff,
    recipe_from_dict,
    recipe_reference,
)
from compressor.training.methods import method_names
from compressor.training.methods.demp import DemPConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "samples" / "recipes").glob("*.yaml"))


def test_samples_exist():
    names = {p.name for p in RECIPES}
    assert {
        "demp-mlp-digits.yaml", "demp-cnn-digits.yaml", "demp-resnet18-cifar10.yaml",
        "demp-vgg16-cifar10.yaml", "demp-resnet50-imagenet.yaml",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_round_trips(path: Path, tmp_path: Path):
    recipe = load_recipe(path)
    assert recipe.method in method_names()
    assert isinstance(recipe.demp, DemPConfig)
    # Every key written in the file is a real field (nothing silently ignored) and kept its value.
    raw = yaml.safe_load(path.read_text())
    flat = recipe.to_dict()
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert flat[section][key] == (float(value) if isinstance(flat[section][key], float) else value)
    saved = recipe.save(tmp_path / "r.yaml")
    assert load_recipe(saved) == recipe


def test_paper_hyperparameters_in_cifar_and_imagenet_recipes():
    """Appendix J of 'A Demon at Work' (seed paper 000)."""
    r18 = load_recipe(ROOT / "samples/recipes/demp-resnet18-cifar10.yaml")
    assert (r18.model.arch, r18.train.optimizer, r18.train.lr, r18.data.batch_size, r18.train.epochs) == (
        "resnet18-cifar", "adam", 0.005, 128, 250)
    assert (r18.train.lr_schedule, r18.train.step_size, r18.train.gamma, r18.train.augment) == ("step", 77, 0.2, True)
    vgg = load_recipe(ROOT / "samples/recipes/demp-vgg16-cifar10.yaml")
    assert (vgg.train.lr, vgg.data.batch_size, vgg.train.epochs, vgg.train.lr_schedule, vgg.data.input_size) == (
        0.005, 256, 80, "one_cycle", 64)
    r50 = load_recipe(ROOT / "samples/recipes/demp-resnet50-imagenet.yaml")
    assert (r50.train.epochs, r50.data.batch_size, r50.train.milestones, r50.train.gamma,
            r50.train.label_smoothing) == (
        100, 256, [30, 70, 90], 0.1, 0.1)
    assert r50.data.spec.startswith("imagefolder:")
    for r in (r18, vgg, r50):
        assert r.demp.schedule == "one_cycle" and r.demp.span == 0.85 and r.demp.death_samples == 1024


def test_demo_recipe_is_the_shipped_cnn_recipe():
    from compressor.cli.train import DEMO_RECIPE

    assert (ROOT / "samples/recipes/demp-cnn-digits.yaml").read_text() == DEMO_RECIPE


def test_yaml_exponent_without_dot_is_a_float():
    # YAML 1.1 (PyYAML) reads "1e-3" as a string; float fields accept it.
    r = recipe_from_dict(yaml.safe_load("train: {lr: 1e-3}\ndemp: {peak: 5e-7}"))
    assert r.train.lr == 1e-3 and r.demp.peak == 5e-7


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("demp: {peek: 0.1}", "did you mean 'demp.peak'"),
        ("trian: {epochs: 3}", "did you mean 'train'"),
        ("train: {learning_rate: 0.1}", "unknown recipe key 'train.learning_rate'"),
        ("model: {arch: cnn, widths: [3]}", "'model.widths'"),
    ],
)
def test_unknown_keys_are_rejected_with_a_suggestion(text: str, fragment: str):
    with pytest.raises(UsageError) as info:
        recipe_from_dict(yaml.safe_load(text))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("demp: {peak: -0.1}", "demp.peak"),
        ("demp: {interval: -1}", "demp.interval"),
        ("demp: {noise: -1.0}", "demp.noise"),
        ("demp: {span: 1.5}", "demp.span"),
        ("demp: {regularizer: l3}", "demp.regularizer"),
        ("train: {epochs: 0}", "train.epochs"),
        ("train: {lr: 0}", "train.lr"),
        ("train: {optimizer: adma}", "did you mean 'adam'"),
        ("train: {lr_schedule: cosin}", "did you mean 'cosine'"),
        ("train: {label_smoothing: 1.0}", "train.label_smoothing"),
        ("train: {epochs: 3, warmup_epochs: 3}", "train.warmup_epochs"),
        ("train: {lr_schedule: multistep}", "train.milestones"),
        ("train: {milestones: [30, 10]}", "train.milestones"),
        ("train: {optimizer: sgd, momentum: 0.0, nesterov: true}", "train.nesterov"),
        ("train: {checkpoint_keep: 0}", "train.checkpoint_keep"),
        ("data: {batch_size: 0}", "data.batch_size"),
        ("train: {epochs: -0.5}", "train.epochs"),
        ("train: {augment: 'yes please'}", "expected true or false"),
        ("method: baseline\nbaseline: {importance: l1}", "baseline.importance"),
        ("method: baseline\ntrain: {epochs: 2}\nbaseline: {at_epoch: 3}", "baseline.at_epoch"),
        ("method: dmep", "did you mean 'demp'"),
        ("[1, 2]", "must be a YAML mapping"),
    ],
)
def test_out_of_range_values_are_rejected(text: str, fragment: str):
    with pytest.raises(UsageError) as info:
        recipe_from_dict(yaml.safe_load(text))
    assert fragment in str(info.value)


def test_set_overrides_parse_yaml_scalars_and_are_validated(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {arch: mlp}\ntrain: {epochs: 3}\n")
    r = load_recipe(path, ["demp.peak=1e-3", "train.epochs=20", "train.augment=true", "model.kwargs={widths: [8, 4]}",
                           "train.milestones=[2, 5]"])
    assert r.demp.peak == 1e-3 and r.train.epochs == 20 and r.train.augment is True
    assert r.model.kwargs == {"widths": [8, 4]} and r.train.milestones == [2, 5]
    assert load_recipe(path, data_spec="mnist:/data/mnist").data.spec == "mnist:/data/mnist"
    with pytest.raises(UsageError, match="did you mean 'demp.peak'"):
        load_recipe(path, ["demp.peek=1"])
    with pytest.raises(UsageError, match="train.epochs"):
        load_recipe(path, ["train.epochs=-1"])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        load_recipe(path, ["train.epochs"])
    with pytest.raises(UsageError, match="is a value, not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_missing_or_broken_recipe_files(tmp_path: Path):
    with pytest.raises(UsageError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1,\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_recipe(bad)


def test_recipe_diff_lists_changed_keys():
    a = RecipeConfig()
    b = load_recipe(a.to_dict(), ["demp.peak=0.5", "train.epochs=7", "export.onnx=false"])
    diffs = {k for k, _, _ in recipe_diff(a, b)}
    assert diffs == {"demp.peak", "train.epochs", "export.onnx"}
    assert {k for k, _, _ in recipe_diff(a, b, ignore=("export.",))} == {"demp.peak", "train.epochs"}


def test_docs_reference_matches_the_dataclasses():
    doc = (ROOT / "docs" / "training.md").read_text()
    table = recipe_reference()
    assert table in doc, "docs/training.md is out of date: paste compressor.training.config.recipe_reference()"
    # Every field of every section appears once.
    for key in ("`demp.peak`", "`train.warmup_epochs`", "`data.spec`", "`model.arch`", "`export.batch_sizes`"):
        assert key in table


def test_cli_reports_a_bad_recipe_without_traceback(tmp_path: Path, capsys):
    from compressor.cli import main

    path = tmp_path / "r.yaml"
    path.write_text("demp: {interval: -1}\n")
    code = main(["train", "--recipe", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "demp.interval" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_every_option_of_every_method_has_help_in_the_reference():
    import dataclasses

    from compressor.training.methods import METHODS

    for name, (config_cls, _) in METHODS.items():
        missing = [f.name for f in dataclasses.fields(config_cls) if not f.metadata.get("help")]
        assert not missing, f"{name}: options without help text {missing}"
        reference = recipe_reference()
        assert all(f"`{name}.{f.name}`" in reference for f in dataclasses.fields(config_cls))


# ---------------------------------------------------------------------------- every method x every model

#: The recipe-file prefix of every training method (``demp+stripping`` is a combination, shipped for the
#: MLP only; ``none`` is plain training).
SHIPPED_METHODS = tuple(m for m in method_names() if m not in ("none",) and "+" not in m)
#: file suffix -> (model.arch, data.spec prefix) of the model/dataset pairs every method ships a recipe for
#: (issue 5: digits with the MLP and the CNN, CIFAR-10 with ResNet-18 and VGG-16).
SHIPPED_MODELS = {
    "mlp-digits": ("mlp", "digits"),
    "cnn-digits": ("cnn", "digits"),
    "resnet18-cifar10": ("resnet18-cifar", "cifar10:"),
    "vgg16-cifar10": ("vgg16-cifar", "cifar10:"),
}


def test_every_method_has_a_recipe_for_every_model():
    assert set(SHIPPED_METHODS) == {"demp", "stripping", "dnr", "dormant", "baseline"}
    names = {p.name for p in RECIPES}
    expected = {f"{method}-{model}.yaml" for method in SHIPPED_METHODS for model in SHIPPED_MODELS}
    missing = sorted(expected - names)
    assert not missing, f"missing shipped recipes: {missing}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_file_name_matches_its_method_model_and_data(path: Path):
    recipe = load_recipe(path)
    stem = path.stem
    assert stem.startswith(recipe.method.replace("+", "-") + "-"), f"{path.name} declares method {recipe.method!r}"
    assert recipe.name == stem
    suffix = stem[len(recipe.method) + 1:]
    if suffix in SHIPPED_MODELS:
        arch, spec = SHIPPED_MODELS[suffix]
        assert recipe.model.arch == arch
        assert recipe.data.spec.startswith(spec)
    if recipe.data.spec.startswith("cifar10:"):
        assert recipe.train.augment, "CIFAR recipes train with random crop + flip (the papers' setting)"
    # Every shipped recipe explains itself: a header comment with the exact command line.
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert len(header) >= 3 and any("demp train --recipe" in line for line in header)


def test_comparable_recipes_share_the_training_regime():
    """On each CIFAR model every method uses the DemP paper's regime (appendix J), so that they compare."""
    keys = ("optimizer", "lr", "lr_schedule", "step_size", "gamma", "epochs", "augment")
    for model in ("resnet18-cifar10", "vgg16-cifar10"):
        regimes = {}
        for method in SHIPPED_METHODS:
            r = load_recipe(ROOT / "samples" / "recipes" / f"{method}-{model}.yaml")
            regimes[method] = (tuple(getattr(r.train, k) for k in keys), r.data.batch_size, r.data.input_size)
        assert len(set(regimes.values())) == 1, f"{model}: {regimes}"
    # Matched sparsity for the comparisons: DNR and the baselines prune to the same target on every model.
    for model in SHIPPED_MODELS:
        dnr = load_recipe(ROOT / "samples" / "recipes" / f"dnr-{model}.yaml")
        base = load_recipe(ROOT / "samples" / "recipes" / f"baseline-{model}.yaml")
        assert dnr.dnr.target_sparsity == base.baseline.target_sparsity
        assert dnr.train.epochs == base.train.epochs and dnr.train.lr == base.train.lr


def test_stripping_recipes_follow_the_paper():
    """Seed paper 003: 10% of a dead neuron's remaining weights per epoch, death on a validation split."""
    for model in SHIPPED_MODELS:
        r = load_recipe(ROOT / "samples" / "recipes" / f"stripping-{model}.yaml")
        assert (r.stripping.fraction, r.stripping.mode, r.stripping.interval_steps) == (0.1, "fraction", 0)
        if model != "mlp-digits":
            assert r.data.val_samples > 0 and r.stripping.samples <= r.data.val_samples
            assert r.stripping.conv, "CNN/ResNet/VGG recipes strip convolution channels"


def _fake_image_npz(path: Path, side: int, n: int = 40, n_test: int = 10, classes: int = 10,
                    channels: int = 3) -> Path:
    """A tiny labelled image set (uint8 N x H x W x C; grayscale N x H x W) written with numpy.savez:
    stands in for CIFAR-10 / MNIST / ImageNet so that no test downloads anything."""
    rng = np.random.default_rng(0)
    shape = (side, side, channels) if channels > 1 else (side, side)
    np.savez(
        path,
        x=rng.integers(0, 256, (n, *shape), dtype=np.uint8), y=np.arange(n) % classes,
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8), y_test=np.arange(n_test) % classes,
    )
    return path


def _offline_recipe(path: Path, tmp_path: Path, extra: tuple[str, ...] = ()) -> RecipeConfig:
    """The shipped recipe with its dataset replaced by a small fake npz of the same image shape when it is
    not the bundled digits (MNIST: 1x28x28; ImageNet: 64x64 inputs instead of 224, to keep ResNet-50 fast)."""
    raw = yaml.safe_load(path.read_text())
    spec = raw.get("data", {}).get("spec", "digits")
    overrides = ["data.num_workers=0", *extra]
    if spec == "digits":
        return load_recipe(path, overrides)
    mnist = spec.split(":")[0] in ("mnist", "fashion-mnist")
    side = 64 if spec.startswith("imagefolder:") else 28 if mnist else 32
    npz = tmp_path / f"fake{side}.npz"
    if not npz.exists():
        _fake_image_npz(npz, side, channels=1 if mnist else 3)
    if spec.startswith("imagefolder:"):
        overrides.append("data.input_size=64")
    if raw.get("data", {}).get("val_samples"):
        overrides.append("data.val_samples=8")
    return load_recipe(path, overrides, data_spec=f"npz:{npz}")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_builds_its_model_and_methods_offline(path: Path, tmp_path: Path):
    from compressor.training.distributed import DistContext
    from compressor.training.run import build_run

    recipe = _offline_recipe(path, tmp_path)
    run = build_run(recipe, ctx=DistContext())
    bundle, model, methods = run.bundle, run.model, run.methods
    example = torch.zeros((2, *bundle.input_shape))
    with torch.no_grad():
        assert model.eval()(example).shape == (2, bundle.num_classes)
    assert [m.name for m in methods] == recipe.method.split("+")
    assert run.owner is methods[0], "the first method of the recipe owns the plan"
    for m in methods:
        assert m.model is model
        total = getattr(m, "total_neurons", None)
        if total is not None:
            assert total > 0, f"{path.name}: method {m.name} found no prunable neurons"
        if m.name == "stripping":
            params = dict(model.named_parameters())
            assert m.masks, f"{path.name}: stripping targets no layer"
            stripped = {type(model.get_submodule(name.rpartition('.')[0])).__name__ for name in m.masks}
            assert ("Conv2d" in stripped) == recipe.stripping.conv
            assert all(mask.shape == params[name].shape for name, mask in m.masks.items())
    assert not (tmp_path / "run").exists(), "building must not create the output directory"


CIFAR_RECIPES = [p for p in RECIPES
                 if yaml.safe_load(p.read_text()).get("data", {}).get("spec", "").startswith("cifar10:")]


@pytest.mark.slow
@pytest.mark.parametrize("path", CIFAR_RECIPES, ids=lambda p: p.name)
def test_every_cifar_recipe_trains_end_to_end_on_fake_data(path: Path, tmp_path: Path):
    """Two short epochs on a tiny fake CIFAR-shaped set, with each method's pruning moved into them."""
    from compressor.training.trainer import train

    extra = ["train.epochs=2", "data.batch_size=16", "export.onnx=false", "train.device=cpu",
             "train.warmup_epochs=0", "dnr.interval_epochs=1", "dormant.interval_epochs=1",
             "baseline.schedule=oneshot", "baseline.at_epoch=1"]
    recipe = _offline_recipe(path, tmp_path, tuple(extra))
    result = train(recipe, tmp_path / "run", progress=False, plots=False, tensorboard=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    final = result.summary
    assert final["test_accuracy"] is not None and 0.0 <= final["test_accuracy"] <= 1.0
    live, total = result.history[-1]["live_total"], result.history[-1]["neurons_total"]
    assert total > 0 and live <= total
    if recipe.method in ("dnr", "baseline"):  # pruning to a target: exactly that share of neurons is gone
        assert total - live == round(0.5 * total)
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert (tmp_path / "run" / "model" / "plan.json").is_file()
