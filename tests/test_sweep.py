"""Coverage: torchvision models compress losslessly (planted dead channels removed, outputs unchanged)
or fail with a clear error naming the construct. The full sweep is slow-marked; a few representative
architectures run by default."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torchvision

_spec = importlib.util.spec_from_file_location("sweep_torchvision",
                                               Path(__file__).resolve().parents[1] / "tools" / "sweep_torchvision.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

REPRESENTATIVE = ["efficientnet_b0", "googlenet", "regnet_x_400mf", "squeezenet1_0"]


def _check(name: str) -> None:
    row = sweep.run_one(name, 64)
    assert row["status"] in ("ok", "error"), row.get("traceback") or row
    if row["status"] == "error":
        assert "cannot" in row["error"] or "not supported" in row["error"], row["error"]
    else:
        assert row["rel_diff_calib"] <= 1e-4 and row["planted_missed"] == 0
        assert row["removed"] >= row["planted_effective"]


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_representative_models(name: str) -> None:
    _check(name)


def test_channel_shuffle_fails_with_a_named_construct() -> None:
    row = sweep.run_one("shufflenet_v2_x0_5", 64)
    assert row["status"] == "error" and "channel shuffle" in row["error"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(torchvision.models.list_models(module=torchvision.models)))
def test_every_torchvision_classifier(name: str) -> None:
    _check(name)
