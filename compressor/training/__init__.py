"""The training stage: train-and-prune with DemP, Synaptic Stripping, DNR, dormant or importance
baselines (or plain training), from YAML recipes, with checkpoints and exact resume.

Typical use::

    from compressor.training import load_recipe, train
    recipe = load_recipe("samples/recipes/demp-cnn-digits.yaml", ["demp.peak=1e-3"])
    result = train(recipe, "run/")          # OUT/model holds plan.json + weights.safetensors
    print(result.summary["neuron_sparsity"], result.summary["test_accuracy"])

Layout: :mod:`.config` (recipes), :mod:`.methods` (the method registry and one module per method),
:mod:`.mechanics` (regularizers, schedules, noise, optimizer surgery), :mod:`.run` (everything a run
works with), :mod:`.trainer` (the loop), :mod:`.finish` (the end of a run), :mod:`.run_checkpoints`,
:mod:`.distributed`, :mod:`.metrics` / :mod:`.records` / :mod:`.plots` (what a run records).
Everything is imported lazily so ``import compressor.training`` stays cheap for the CLI.
"""

from __future__ import annotations

from compressor._lazy import lazy_getattr

_LAZY = {
    "DemP": ("compressor.training.methods.demp", "DemP"),
    "DemPConfig": ("compressor.training.methods.demp", "DemPConfig"),
    "RemovalEvent": ("compressor.training.methods.base", "RemovalEvent"),
    "TrainingMethod": ("compressor.training.methods.base", "TrainingMethod"),
    "METHODS": ("compressor.training.methods", "METHODS"),
    "SynapticStripping": ("compressor.training.methods.stripping", "SynapticStripping"),
    "StrippingConfig": ("compressor.training.methods.stripping", "StrippingConfig"),
    "DNRPruning": ("compressor.training.methods.dnr", "DNRPruning"),
    "DNRConfig": ("compressor.training.methods.dnr", "DNRConfig"),
    "DormantPruning": ("compressor.training.methods.dormant", "DormantPruning"),
    "DormantConfig": ("compressor.training.methods.dormant", "DormantConfig"),
    "BaselinePruning": ("compressor.training.methods.baseline", "BaselinePruning"),
    "BaselineConfig": ("compressor.training.methods.baseline", "BaselineConfig"),
    "RecipeConfig": ("compressor.training.config", "RecipeConfig"),
    "ModelConfig": ("compressor.training.config", "ModelConfig"),
    "DataConfig": ("compressor.training.config", "DataConfig"),
    "TrainConfig": ("compressor.training.config", "TrainConfig"),
    "ExportConfig": ("compressor.training.config", "ExportConfig"),
    "load_recipe": ("compressor.training.config", "load_recipe"),
    "recipe_from_dict": ("compressor.training.config", "recipe_from_dict"),
    "recipe_diff": ("compressor.training.config", "recipe_diff"),
    "Trainer": ("compressor.training.trainer", "Trainer"),
    "TrainResult": ("compressor.training.finish", "TrainResult"),
    "TrainingInterrupted": ("compressor.training.trainer", "TrainingInterrupted"),
    "TrainingDiverged": ("compressor.training.trainer", "TrainingDiverged"),
    "train": ("compressor.training.trainer", "train"),
    "load_checkpoint": ("compressor.training.run_checkpoints", "load_checkpoint"),
    "latest_checkpoint": ("compressor.training.run_checkpoints", "latest_checkpoint"),
    "read_metrics": ("compressor.training.metrics", "read_metrics"),
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr("compressor.training", _LAZY, globals())
