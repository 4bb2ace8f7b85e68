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
           "--methods", "demp,baseline:magnitude-l1,stripping", "--demp-peaks", "0.3", "--sparsity", "0.5,0.7", "--lr",
           "0.02"]
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


def test_compare_criteria_seeds_split_over_processes_merge_with_resume(tmp_path: Path):
    """--first-seed runs later seeds in another folder; their records merge into one table with --resume."""
    tool = [sys.executable, str(ROOT / "tools" / "compare_criteria.py"), "--quick",
            "--methods", "baseline:magnitude-l1", "--sparsity", "0.5", "--lr", "0.02"]
    first, second = tmp_path / "seed0", tmp_path / "seed1"
    for out, extra in ((first, ["--seeds", "1"]), (second, ["--first-seed", "1", "--seeds", "1"])):
        proc = subprocess.run([*tool, *extra, "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((second / "results.json").read_text())["seeds"] == [1]
    assert [p.name for p in (second / "records").iterdir()] == ["baseline-magnitude-l1-S0.5-s1.json"]
    for record in (second / "records").iterdir():
        (first / "records" / record.name).write_bytes(record.read_bytes())
    merged = subprocess.run([*tool, "--seeds", "2", "--resume", "--out", str(first)], capture_output=True, text=True,
                            timeout=60)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert merged.stdout.count("reused") == 2  # nothing trained again
    assert "2 runs," in (first / "results.md").read_text() and "2 reused" in (first / "results.md").read_text()
    result = json.loads((first / "results.json").read_text())
    assert result["seeds"] == [0, 1] and sorted(r["seed"] for r in result["runs"]) == [0, 1]
    seed1 = json.loads((second / "results.json").read_text())["runs"]
    assert [r for r in result["runs"] if r["seed"] == 1] == seed1


def test_compare_criteria_refuses_a_negative_first_seed(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_criteria.py"), "--first-seed", "-1",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--first-seed" in proc.stderr
    assert not (tmp_path / "x").exists()
