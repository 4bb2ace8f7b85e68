"""tools/compare_criteria.py --quick: every output is written and the baselines hit the target sparsity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compare_criteria_quick_smoke_run(tmp_path: Path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(ROOT / "tools" / "compare_criteria.py"), "--quick", "--seeds", "1", "--out", str(out),
           "--methods", "demp,baseline:magnitude-l1,stripping", "--demp-peaks", "0.3", "--sparsity", "0.5,0.7", "--lr", "0.02"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"demp", "baseline:magnitude-l1", "stripping"} and result["targets"] == [0.5]
    assert rows["baseline:magnitude-l1"]["neuron_sparsity"] == 0.5
    assert rows["baseline:magnitude-l1"]["params"] < rows["baseline:magnitude-l1"]["params_before"]
    assert rows["stripping"]["target"] is None and rows["demp"]["setting"] == {"peak": 0.3}
    assert rows["stripping"]["setting"] == {"conv": True}  # a CNN: convolution channels are stripped
    assert result["lr"] == 0.02 and "at lr 0.02" in (out / "results.md").read_text()
    assert all(0 <= r["test_accuracy"] <= 1 for r in result["runs"]) and len(result["runs"]) == 3
    table = (out / "results.md").read_text()
    assert "| method | target S |" in table and "baseline:magnitude-l1" in table
    assert (out / "accuracy_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)  # never overwrites silently
    assert again.returncode != 0 and "overwrite" in again.stderr.lower()

    # --resume: the recorded runs are reused (same recipe), an added method runs, one table holds all
    more = [*cmd[:cmd.index("--methods") + 1], "dense,demp,baseline:magnitude-l1,stripping",
            *cmd[cmd.index("--methods") + 2:], "--resume"]
    resumed = subprocess.run(more, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("reused") == 3 and "dense" in resumed.stdout
    merged = json.loads((out / "results.json").read_text())
    assert len(merged["runs"]) == 4 and {r["method"] for r in merged["rows"]} == {*rows, "dense"}
    assert [r for r in merged["runs"] if r["method"] == "demp"] == [r for r in result["runs"] if r["method"] == "demp"]
