"""demp: find dead neurons, remove them losslessly through coupled layers, train-and-prune with DemP.

The public API (kept small; everything else lives in submodules)::

    model = compressor.load_model("resnet18", checkpoint="resnet18.pt")
    result = compressor.compress(model, calib_loader, criterion="dead")
    compressor.save_pruned(result, "resnet18-slim/")
    again = compressor.load_pruned("resnet18-slim/")
    slim = compressor.compress_to_target(model, compressor.load_data("cifar10:/data"), "run/", target_macs=0.5)
"""

from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("compressor.loading", "load_model"),
    "build_model": ("compressor.models", "build_model"),
    "ModelSpec": ("compressor.models", "ModelSpec"),
    "load_data": ("compressor.data", "load_data"),
    "compress": ("compressor.compression", "compress"),
    "compress_to_target": ("compressor.training.finetune", "compress_to_target"),
    "CompressResult": ("compressor.compression", "CompressResult"),
    "save_pruned": ("compressor.pruned", "save_pruned"),
    "load_pruned": ("compressor.pruned", "load_pruned"),
    "collect_activity": ("compressor.activity", "collect_activity"),
    "DependencyAnalyzer": ("compressor.graph", "DependencyAnalyzer"),
    "PruningPlan": ("compressor.plan", "PruningPlan"),
    "count_macs": ("compressor.counting", "count_macs"),
    "count_params": ("compressor.counting", "count_params"),
    "training": ("compressor.training", None),
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_getattr("compressor", _LAZY, globals())
