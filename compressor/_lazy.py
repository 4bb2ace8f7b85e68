"""Lazy package attributes: ``import compressor`` stays fast; submodules load on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, table: Mapping[str, tuple[str, str | None]],
                 namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``table[name] = (module, attribute)`` on first access.

    An attribute of ``None`` stands for the module itself (lazy subpackages).
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            module_name, attr = table[name]
            module = importlib.import_module(module_name)
            value = module if attr is None else getattr(module, attr)
            namespace[name] = value  # cache: later lookups do not come back here
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
