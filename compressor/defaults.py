"""Names and defaults the command line needs before any work starts (option defaults, help texts), kept
free of heavy imports so ``demp --help`` answers without loading torch. The modules that own them
re-export them: :data:`ANALYZER_TIME_BUDGET` (:mod:`compressor.graph.analyzer`), :data:`BUILTIN_ARCHS`
(the keys of :data:`compressor.models.registry.BUILTINS`; a test keeps the two equal)."""

from __future__ import annotations

__all__ = ["ANALYZER_TIME_BUDGET", "BUILTIN_ARCHS", "CALIB_SAMPLES", "HELDOUT_SAMPLES"]

#: Seconds the analyzer may spend mapping channel groups (no model may hang it); past them the groups not yet
#: mapped are blocked. 60 s covers every torchvision/timm model measured (BENCHMARKS.md).
ANALYZER_TIME_BUDGET = 60.0

#: The built-in architectures, in the order ``--help`` lists them.
BUILTIN_ARCHS = ("mlp", "cnn", "resnet18-cifar", "resnet20-cifar", "resnet56-cifar", "resnet20-cifar-a",
                 "resnet32-cifar-a", "resnet44-cifar-a", "resnet56-cifar-a", "resnet110-cifar-a", "vgg16-cifar",
                 "vit-tiny")

#: Calibration samples of ``demp compress`` (``--calib-samples``): the dead-neuron decision is measured on them.
CALIB_SAMPLES = 1024
#: Held-out samples of every check on samples never used for calibration (``demp compress --heldout-samples``,
#: the int8 check of ``demp train``).
HELDOUT_SAMPLES = 256
