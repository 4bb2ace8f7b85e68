"""The training methods and their registry.

:data:`METHODS` maps a recipe's method name (also the name of its recipe section) to the method's
config dataclass and class. The recipe schema, the trainer and the report all read this table, so a
new method is one module here (a config dataclass with ``validate()``/``to_dict()`` and a
:class:`~.base.TrainingMethod` subclass with ``build()``) plus one line below and its section field in
:class:`~compressor.training.config.RecipeConfig` (checked at import).
"""

from __future__ import annotations

from .base import AnalyzerPruner, MethodContext, RemovalEvent, TrainingMethod
from .baseline import BaselineConfig, BaselinePruning
from .demp import DemP, DemPConfig
from .dnr import DNRConfig, DNRPruning
from .dormant import DormantConfig, DormantPruning
from .stripping import StrippingConfig, SynapticStripping

__all__ = ["METHODS", "COMBINATIONS", "method_names", "TrainingMethod", "AnalyzerPruner", "MethodContext",
           "RemovalEvent"]

#: name -> (config dataclass, method class); the recipe section of a method has its name.
METHODS: dict[str, tuple[type, type[TrainingMethod]]] = {
    "demp": (DemPConfig, DemP),
    "stripping": (StrippingConfig, SynapticStripping),
    "dnr": (DNRConfig, DNRPruning),
    "dormant": (DormantConfig, DormantPruning),
    "baseline": (BaselineConfig, BaselinePruning),
}

#: Methods a recipe may run together (in this order: hooks run in it, the first one owns the plan).
COMBINATIONS: tuple[str, ...] = ("demp+stripping",)

#: The method of plain training.
NONE = "none"


def method_names() -> tuple[str, ...]:
    """Every value ``method`` may take in a recipe."""
    return (*METHODS, *COMBINATIONS, NONE)
