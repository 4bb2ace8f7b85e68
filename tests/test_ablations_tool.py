"""tools/ablations.py: the verdict arithmetic, and a real ``--quick`` run of one study on digits."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "ablations.py"
VERDICTS = ("holds", "does not hold", "inconclusive")


def _load():
    spec = importlib.util.spec_from_file_location("ablations", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _row(label: str, factors: dict, sparsity: list[float], accuracy: list[float]) -> dict:
    abl = _load()
    sp, sp_sd = abl.mean_sd(sparsity)
    acc, acc_sd = abl.mean_sd(accuracy)
    return {"label": label, "factors": factors, "sparsity_mean": sp, "sparsity_sd": sp_sd,
            "accuracy_mean": acc, "accuracy_sd": acc_sd, "per_seed": {"sparsity": sparsity, "accuracy": accuracy}}


def test_a_difference_counts_only_beyond_the_seed_spread():
    abl = _load()
    rows = [_row("a", {"k": "a", "lam": 1}, [0.50, 0.52], [0.9, 0.9]),
            _row("b", {"k": "b", "lam": 1}, [0.30, 0.32], [0.9, 0.9]),
            _row("a", {"k": "a", "lam": 2}, [0.40, 0.60], [0.9, 0.9]),  # sd 0.14: a 0.1 gap is within it
            _row("b", {"k": "b", "lam": 2}, [0.40, 0.40], [0.9, 0.9])]
    pairs = abl.pairs_over(rows, {"k": "a"}, {"k": "b"}, ["lam"])
    assert [p["outcome"] for p in pairs] == [1, 0]
    assert [round(x, 6) for x in pairs[0]["per_seed_delta"]] == [0.2, 0.2]  # paired by seed, a - b
    assert abl.combine(pairs, "a > b")["verdict"] == "holds"
    assert abl.combine([{**pairs[0], "outcome": -1}], "a > b")["verdict"] == "does not hold"
    assert abl.combine([pairs[1]], "a > b")["verdict"] == "inconclusive (within seed spread)"


def test_quick_study_writes_settings_seeds_and_a_verdict(tmp_path: Path):
    out = tmp_path / "abl"
    cmd = [sys.executable, str(SCRIPT), "--study", "noise", "--quick", "--seeds", "0,1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "noise" / "ablations.json").read_text())
    assert res["study"] == "noise" and res["seeds"] == [0, 1] and res["data"]["spec"] == "digits"
    assert [r["label"] for r in res["rows"]] == ["sigma=0", "sigma=0.003"]
    assert [r["factors"]["sigma"] for r in res["rows"]] == [0.0, 0.003]
    for r in res["rows"]:
        assert r["n"] == 2 and r["seeds"] == [0, 1]
        assert 0 <= r["accuracy_mean"] <= 1 and 0 <= r["sparsity_mean"] < 1 and r["sparsity_sd"] >= 0
    assert len(res["runs"]) == 2 * len(res["rows"])
    assert res["verdict"]["verdict"].startswith(VERDICTS) and res["verdict"]["pairs"]
    md = (out / "noise" / "ablations.md").read_text()
    assert "| setting | n | test accuracy (%) | neuron sparsity (%) |" in md and "**Verdict:" in md
    assert "[noise]" in proc.stdout and res["verdict"]["verdict"] in proc.stdout
