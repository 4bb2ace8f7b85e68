"""Coverage beyond torchvision: timm models compress losslessly with the groups that would break them
blocked (the construct named), or are refused naming the construct; never a traceback or a hang
(tools/sweep_timm.py, BENCHMARKS.md). A handful of representative constructs run by default; the
whole sample is slow-marked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

timm = pytest.importorskip("timm", reason="timm is a test dependency: pip install -e '.[test]'")

_spec = importlib.util.spec_from_file_location("sweep_timm", Path(__file__).resolve().parents[1] / "tools" / "sweep_timm.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

#: model -> a blocked-group reason its compression must record (the construct that would break it)
REPRESENTATIVE = {
    "mixnet_s": "a torch.split with constant sizes",  # mixed-kernel conv: split sizes are Python constants
    "ghostnet_100": "removing these channels changes the outputs",  # SE conv_expand / cheap-operation concat
    "skresnet18": "removing these channels changes the outputs",  # selective-kernel attention
}
#: models demp refuses, and the construct the message must name
REFUSED = {"dpn68": "a torch.cat of inputs whose channel counts cannot be inferred"}


@pytest.mark.parametrize("name", sorted(REPRESENTATIVE))
def test_representative_timm_models_compress_with_the_breaking_groups_blocked(name: str) -> None:
    row = sweep.run_one(name, 64)
    assert row["status"] == "ok", row.get("traceback") or row.get("error") or row
    assert row["rel_diff_calib"] <= 1e-4 and row["removed"] > 0 and row["params_after"] < row["params_before"]
    assert REPRESENTATIVE[name] in row["blocked_reasons"], row["blocked_reasons"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_unsupported_timm_model_is_refused_naming_the_construct_and_the_layers(name: str) -> None:
    row = sweep.run_one(name, 64)
    assert row["status"] == "refused", row.get("traceback") or row
    assert REFUSED[name] in row["error"] and "after layer(s) features." in row["error"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sweep.sample())
def test_every_model_of_the_timm_sample(name: str) -> None:
    row = sweep.run_one(name, 64)
    assert row["status"] in ("ok", "none removable", "refused", "skipped"), row.get("traceback") or row
    if row["status"] == "refused":
        assert "contains" in row["error"] or "no removal could be kept" in row["error"], row["error"]
