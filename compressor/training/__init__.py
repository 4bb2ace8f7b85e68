"""The training stage: DemP train-and-prune (and plain training), recipes, checkpoints and resume.

Typical use::

    from compressor.training import load_recipe, train
    recipe = load_recipe("samples/recipes/demp-cnn-digits.yaml", ["demp.peak=1e-3"])
    result = train(recipe, "run/")          # OUT/model holds plan.json + weights.safetensors
    print(result.summary["neuron_sparsity"], result.summary["test_accuracy"])

Everything is imported lazily so ``import compressor.training`` stays cheap for the CLI.
"""

from __future__ import annotations

from compressor._lazy import lazy_getattr

_LAZY = {
    "DemP": ("compressor.training.demp", "DemP"),
    "DemPConfig": ("compressor.training.demp", "DemPConfig"),
    "RemovalEvent": ("compressor.training.demp", "RemovalEvent"),
    "TrainingMethod": ("compressor.training.method", "TrainingMethod"),
    "SynapticStripping": ("compressor.training.stripping", "SynapticStripping"),
    "StrippingConfig": ("compressor.training.stripping", "StrippingConfig"),
    "DNRPruning": ("compressor.training.dnr", "DNRPruning"),
    "DNRConfig": ("compressor.training.dnr", "DNRConfig"),
    "DormantPruning": ("compressor.training.dormant", "DormantPruning"),
    "DormantConfig": ("compressor.training.dormant", "DormantConfig"),
    "RecipeConfig": ("compressor.training.config", "RecipeConfig"),
    "ModelConfig": ("compressor.training.config", "ModelConfig"),
    "DataConfig": ("compressor.training.config", "DataConfig"),
    "TrainConfig": ("compressor.training.config", "TrainConfig"),
    "ExportConfig": ("compressor.training.config", "ExportConfig"),
    "load_recipe": ("compressor.training.config", "load_recipe"),
    "recipe_from_dict": ("compressor.training.config", "recipe_from_dict"),
    "recipe_diff": ("compressor.training.config", "recipe_diff"),
    "Trainer": ("compressor.training.loop", "Trainer"),
    "TrainResult": ("compressor.training.loop", "TrainResult"),
    "TrainingInterrupted": ("compressor.training.loop", "TrainingInterrupted"),
    "TrainingDiverged": ("compressor.training.loop", "TrainingDiverged"),
    "train": ("compressor.training.loop", "train"),
    "load_checkpoint": ("compressor.training.checkpointing", "load_checkpoint"),
    "latest_checkpoint": ("compressor.training.checkpointing", "latest_checkpoint"),
    "read_metrics": ("compressor.training.metrics", "read_metrics"),
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr('compressor.training', _LAZY, globals())
