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

#: The torchvision classifiers demp refuses, and the construct its message must name (BENCHMARKS.md §2);
#: every other classifier must compress losslessly.
EXPECTED_ERRORS = {
    "shufflenet_v2_x0_5": "channel shuffle", "shufflenet_v2_x1_0": "channel shuffle",
    "shufflenet_v2_x1_5": "channel shuffle", "shufflenet_v2_x2_0": "channel shuffle",
    "swin_s": "torch.cat", "swin_b": "torch.cat",
}


def _check(name: str) -> None:
    row = sweep.run_one(name, 64)
    if name in EXPECTED_ERRORS:
        assert row["status"] == "error", row.get("traceback") or row
        assert EXPECTED_ERRORS[name] in row["error"], row["error"]
        return
    assert row["status"] == "ok", row.get("traceback") or row.get("error") or row
    assert row["rel_diff_calib"] <= 1e-4 and row["planted_missed"] == 0
    assert row["planted_effective"] > 0 and row["removed"] >= row["planted_effective"]
    assert row["params_after"] < row["params_before"]


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_representative_models(name: str) -> None:
    _check(name)


def test_channel_shuffle_fails_with_a_named_construct() -> None:
    _check("shufflenet_v2_x0_5")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(torchvision.models.list_models(module=torchvision.models)))
def test_every_torchvision_classifier(name: str) -> None:
    _check(name)
