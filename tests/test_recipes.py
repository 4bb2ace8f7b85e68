"""Recipes: YAML <-> dataclasses, validation, overrides, shipped samples, the documented reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compressor.errors import UsageError
from compressor.training.config import (
    IMPLEMENTED_METHODS,
    RecipeConfig,
    apply_overrides,
    load_recipe,
    recipe_diff,
    recipe_from_dict,
    recipe_reference,
)
from compressor.training.demp import DemPConfig

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
    assert recipe.method in IMPLEMENTED_METHODS
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
    assert (r50.train.epochs, r50.data.batch_size, r50.train.milestones, r50.train.gamma, r50.train.label_smoothing) == (
        100, 256, [30, 70, 90], 0.1, 0.1)
    assert r50.data.spec.startswith("imagefolder:")
    for r in (r18, vgg, r50):
        assert r.demp.schedule == "one_cycle" and r.demp.span == 0.85 and r.demp.death_samples == 1024


def test_demo_recipe_is_the_shipped_cnn_recipe():
    from compressor.training.cli import DEMO_RECIPE

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
        ("demp: {interval: 0}", "demp.interval"),
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
        ("train: {epochs: 2.5}", "train.epochs: expected an integer"),
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
    path.write_text("demp: {interval: 0}\n")
    code = main(["train", "--recipe", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "demp.interval" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_every_demp_option_is_documented_in_the_reference():
    import dataclasses

    from compressor.training.config import DEMP_HELP

    assert {f.name for f in dataclasses.fields(DemPConfig)} == set(DEMP_HELP)
