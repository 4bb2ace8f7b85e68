"""The import rules of docs/architecture.md, checked on the source (AST), every import counted —
including those inside functions, which would otherwise hide a cycle."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compressor", "exporters")
#: The only modules that may import torch_pruning: the analyzer, and the baseline method, which uses
#: torch-pruning's public importance estimators.
TORCH_PRUNING_USERS = ("compressor.graph", "compressor.training.methods.baseline")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    """Every module of the two packages, by dotted name."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = modules()[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=1)
def imports() -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    """module -> {(imported module, names imported from it)}; every import statement, wherever it is."""
    found: dict[str, set[tuple[str, tuple[str, ...]]]] = defaultdict(set)
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found[module].add((alias.name, ()))
            elif isinstance(node, ast.ImportFrom):
                found[module].add((_resolve(module, node), tuple(a.name for a in node.names)))
    return found


def edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from pkg import submodule`` counts as the submodule)."""
    graph: dict[str, set[str]] = defaultdict(set)
    known = modules()
    for module, targets in imports().items():
        for target, names in targets:
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            graph[module].update(subs)
            if target in known and (not names or len(subs) < len(names)):
                graph[module].add(target)
    return graph


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _cli(module: str) -> bool:
    """The command line: ``compressor.cli`` and the ``python -m compressor`` entry point."""
    return _in(module, "compressor.cli") or module == "compressor.__main__"


def _violations(rule: str, allowed, forbidden) -> list[str]:
    return [f"{m} imports {t} ({rule})" for m, targets in imports().items() for t, _ in targets
            if not allowed(m) and forbidden(t)]


def test_the_parser_sees_every_module_and_a_known_import() -> None:
    """Guards the checks below against checking nothing."""
    assert {"compressor.graph.analyzer", "compressor.training.trainer", "exporters.report"} <= set(modules())
    assert "compressor.graph.apply" in edges()["compressor.graph.analyzer"]
    assert "compressor.training.methods.base" in edges()["compressor.training.methods.demp"]


def test_compressor_never_imports_exporters_outside_its_cli() -> None:
    assert _violations("only compressor.cli may import exporters", lambda m: not _in(m, "compressor") or _cli(m),
                       lambda t: _in(t, "exporters")) == []


def test_the_core_never_imports_the_training_stage_or_the_cli() -> None:
    core = lambda m: _in(m, "compressor") and not (_in(m, "compressor.training") or _cli(m))  # noqa: E731
    assert _violations("the core is below the training stage", lambda m: not core(m),
                       lambda t: _in(t, "compressor.training") or _in(t, "compressor.cli")) == []


def test_nothing_below_the_cli_imports_it() -> None:
    assert _violations("the CLI is the top layer", _cli, lambda t: _in(t, "compressor.cli")) == []


def test_methods_never_import_the_trainer() -> None:
    trainer = ("compressor.training.trainer", "compressor.training.run", "compressor.training.finish")
    assert _violations("methods plug into the trainer", lambda m: not _in(m, "compressor.training.methods"),
                       lambda t: any(_in(t, x) for x in trainer)) == []


def test_only_the_analyzer_and_the_baseline_use_torch_pruning() -> None:
    assert _violations("torch-pruning stays behind compressor.graph",
                       lambda m: any(_in(m, u) for u in TORCH_PRUNING_USERS),
                       lambda t: _in(t, "torch_pruning")) == []


def test_no_import_goes_through_a_lazy_package_facade() -> None:
    """Inside the project, import a name from the module that defines it, not from a package's lazy table."""
    lazy: dict[str, set[str]] = {}
    for module, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
                lazy[module] = {k.value for k in node.value.keys}  # type: ignore[union-attr]
    assert {"compressor", "compressor.training", "exporters"} <= set(lazy)
    bad = [f"{m} imports {names} from the lazy facade {t}" for m, targets in imports().items()
           for t, names in targets if t in lazy and set(names) & lazy[t]]
    assert bad == []


def test_no_two_modules_import_each_other() -> None:
    """No import cycle of any length (Tarjan's strongly connected components)."""
    graph = edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(modules()):
        if v not in index:
            visit(v)
    assert cycles == []


def _expect_failure(check, text: str) -> None:
    try:
        check()
    except AssertionError as exc:
        assert text in str(exc), str(exc)
    else:
        raise AssertionError(f"{check.__name__} found nothing; expected {text!r}")


def test_the_checks_find_a_cycle_and_a_hidden_import(tmp_path: Path, monkeypatch) -> None:
    """The checks themselves work: a cycle, and an import of exporters inside a function, are reported."""
    pkg = tmp_path / "compressor"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("_LAZY = {}\n")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "c.py").write_text("def g():\n    import exporters.report\n")
    (tmp_path / "exporters").mkdir()
    (tmp_path / "exporters" / "__init__.py").write_text("_LAZY = {}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    modules.cache_clear()
    imports.cache_clear()
    try:
        assert "compressor.b" in edges()["compressor.a"] and "compressor.a" in edges()["compressor.b"]
        _expect_failure(test_no_two_modules_import_each_other, "compressor.a")
        _expect_failure(test_compressor_never_imports_exporters_outside_its_cli,
                        "compressor.c imports exporters.report")
    finally:
        modules.cache_clear()
        imports.cache_clear()
