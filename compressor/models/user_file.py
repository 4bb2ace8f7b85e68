"""User model files (``--model-file PATH.py:FACTORY``).

**Importing a model file executes its code**, by design, like ``python PATH.py``: only use files you
trust. The factory is called with ``num_classes=`` when it accepts it; the file may declare
``INPUT_SHAPE``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UsageError
from .spec import ModelSpec

__all__ = ["split_model_file", "import_model_file", "declared_input_shape", "spec_from_file", "build_from_file"]


def split_model_file(model_file: str) -> tuple[str, str]:
    """``PATH.py:FACTORY`` -> (absolute path, factory name); a UsageError names what is wrong."""
    path, sep, name = str(model_file).rpartition(":")
    if not sep or not path or not name or not name.isidentifier():
        raise UsageError(
            f"--model-file {model_file!r} must be PATH.py:FACTORY, e.g. my_model.py:build_model "
            "(FACTORY is a function in that file that returns an nn.Module)"
        )
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise UsageError(f"model file {path} does not exist; check the --model-file path")
    return str(resolved.resolve()), name


def declared_input_shape(model_file: str) -> tuple[int, ...] | None:
    """The ``INPUT_SHAPE`` a model file declares (one sample, no batch dimension), or None."""
    declared = getattr(import_model_file(split_model_file(model_file)[0]), "INPUT_SHAPE", None)
    return tuple(int(d) for d in declared) if declared is not None else None


def spec_from_file(model_file: str, *, arch: str | None, num_classes: int | None, input_size: int | None,
                   input_shape: Sequence[int] | None, kwargs: dict[str, Any]) -> ModelSpec:
    """The spec of a user model: the input shape from the file's ``INPUT_SHAPE``, else (3, S, S) with S
    = ``input_size`` or 224; ``num_classes`` -1 means the factory's own default (found after building)."""
    path, factory_name = split_model_file(model_file)
    module = import_model_file(path)
    if input_shape is None:
        declared = getattr(module, "INPUT_SHAPE", None)
        size = int(input_size or 224)
        input_shape = tuple(int(d) for d in declared) if declared is not None else (3, size, size)
    return ModelSpec(arch=arch or f"custom:{factory_name}",
                     num_classes=int(num_classes) if num_classes is not None else -1,
                     input_shape=tuple(input_shape), kwargs=kwargs, model_file=f"{path}:{factory_name}")


_MODULE_CACHE: dict[tuple[str, int], Any] = {}


def import_model_file(path: str) -> Any:
    """Import a user's Python file as a module. This EXECUTES the file's code, by design.

    The file's directory is on ``sys.path`` while it is imported, so it can import its neighbours.
    A file is imported once per modification time.
    """
    key = (path, os.stat(path).st_mtime_ns)
    if key in _MODULE_CACHE:
        return _MODULE_CACHE[key]
    module_name = "demp_user_model_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"model file {path} is not an importable Python file (it must end in .py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    parent = str(Path(path).parent)
    sys.path.insert(0, parent)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code failed: say where, keep the traceback chained
        sys.modules.pop(module_name, None)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
        where = f" (line {frames[-1].lineno})" if frames else ""
        raise UsageError(f"importing model file {path} failed{where}: {type(exc).__name__}: {exc}") from exc
    finally:
        try:
            sys.path.remove(parent)
        except ValueError:
            pass
    _MODULE_CACHE[key] = module
    return module


def build_from_file(spec: ModelSpec) -> nn.Module:
    """Call the factory of a user model file with ``num_classes`` (when it accepts it) and the spec's kwargs."""
    assert spec.model_file is not None
    path, name = split_model_file(spec.model_file)
    module = import_model_file(path)
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        available = sorted(
            n for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        raise UsageError(
            f"model file {path} has no function {name!r}; functions defined there: {', '.join(available) or 'none'}"
        )
    kwargs = dict(spec.kwargs)
    if spec.num_classes >= 0 and _accepts(factory, "num_classes"):
        kwargs["num_classes"] = spec.num_classes
    try:
        model = factory(**kwargs)
    except Exception as exc:  # user code
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
        where = f" at line {frames[-1].lineno} ({frames[-1].line})" if frames else ""
        raise UsageError(f"{path}:{name}({_fmt_kwargs(kwargs)}) failed{where}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"{path}:{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _fmt_kwargs(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
