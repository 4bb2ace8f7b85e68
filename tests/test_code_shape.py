"""The shape docs/architecture.md promises a newcomer: every module (of the library and of tools/) says
what its one job is, no module is longer than about 500 lines and no function longer than about 60,
unless a comment says why."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The library and the tools beside it (benchmarks, sweeps): the same rules for both.
PACKAGES = ("compressor", "exporters", "tools")
SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 60
#: A function may be longer when its ``def`` line (or the line above it) carries this marker and a reason.
LONG_MARKER = "# long:"


def test_every_module_names_its_job() -> None:
    missing = [str(p.relative_to(ROOT)) for p in SOURCES
               if p.stat().st_size and not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert missing == []


def test_no_module_is_over_about_500_lines() -> None:
    long_modules = {str(p.relative_to(ROOT)): n for p in SOURCES
                    if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long_modules == {}


def _long_functions(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    out = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            marked = any(LONG_MARKER in lines[i] for i in (node.lineno - 2, node.lineno - 1) if i >= 0)
            if length > MAX_FUNCTION_LINES and not marked:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_function_is_over_about_60_lines_without_a_reason() -> None:
    assert [f for p in SOURCES for f in _long_functions(p)] == []


def test_the_tools_are_checked() -> None:
    assert any(p.parent.name == "tools" for p in SOURCES)


def test_the_length_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f'"""m."""\n\n\ndef f():\n{body}\n')
    (tmp_path / "n.py").write_text(f'"""n."""\n\n\n{LONG_MARKER} one table of cases\ndef f():\n{body}\n')
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert _long_functions(tmp_path / "m.py") and not _long_functions(tmp_path / "n.py")
    finally:
        ROOT = root
