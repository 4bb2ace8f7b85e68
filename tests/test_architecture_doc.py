"""docs/architecture.md's module tree names every module of the project, so the map a newcomer reads first
cannot silently leave out what was added since it was written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
#: The folders whose modules the tree must list.
PACKAGES = ("compressor", "exporters", "tools")


def tree_section(text: str) -> str:
    """The fenced block under the ``## The tree`` heading."""
    section = text.split("\n## The tree", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    assert blocks, "docs/architecture.md: no fenced block under '## The tree'"
    return blocks[0]


def listed_names(tree: str) -> set[str]:
    """Every file name (``x.py``) and folder name (``x/``) the tree mentions."""
    return set(re.findall(r"[\w]+\.py\b", tree)) | set(re.findall(r"([\w]+)/", tree))


def missing_from(tree: str, root: Path = ROOT) -> list[str]:
    """Modules (and packages) under :data:`PACKAGES` that the tree does not name."""
    names = listed_names(tree)
    missing = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if path.name == "__init__.py":
                if path.parent.name not in names:
                    missing.append(str(path.parent.relative_to(root)) + "/")
            elif path.name not in names:
                missing.append(str(path.relative_to(root)))
    return missing


def test_the_tree_lists_every_module() -> None:
    assert missing_from(tree_section(DOC.read_text())) == []


def test_the_check_fails_when_a_module_is_missing(tmp_path: Path) -> None:
    for name in ("compressor/a.py", "compressor/sub/__init__.py", "compressor/sub/b.py", "exporters/c.py",
                 "tools/d.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('"""x."""\n')
    tree = "compressor/\n  a.py\n  sub/   b.py\nexporters/\n  c.py\ntools/\n  d.py\n"
    assert missing_from(tree, tmp_path) == []
    assert missing_from(tree.replace("  c.py\n", ""), tmp_path) == ["exporters/c.py"]
    assert missing_from(tree.replace("sub/", ""), tmp_path) == ["compressor/sub/"]


@pytest.mark.parametrize("wrong", ["no library module needs a function-level import"])
def test_claims_found_wrong_stay_out(wrong: str) -> None:
    assert wrong not in " ".join(DOC.read_text().split())
