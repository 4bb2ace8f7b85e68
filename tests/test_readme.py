"""The README's Python snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_python_snippet_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    snippet = next(b for b in blocks if "compressor.compress(" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out.splitlines()
    assert "channels removed;" in out[0]
    assert sorted(p.name for p in (tmp_path / "cnn-slim").iterdir()) == ["plan.json", "weights.safetensors"]
    prediction, plan_hash = out[-1].split()
    assert prediction.isdigit() and len(plan_hash) == 12
