"""Plans are validated, hash stably, compose into original numbering and survive JSON."""

from __future__ import annotations

import json

import pytest

from compressor.errors import CheckpointError
from compressor.plan import GroupRemoval, PruningPlan


def test_group_removal_validates_indices() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        GroupRemoval("a", 4, [1, 1])
    with pytest.raises(ValueError, match="out of range"):
        GroupRemoval("a", 4, [4])
    with pytest.raises(ValueError, match="every channel"):
        GroupRemoval("a", 2, [0, 1])
    assert GroupRemoval("a", 5, [3, 1]).kept == [0, 2, 4]


def test_compose_maps_later_indices_to_original_numbering() -> None:
    first = PruningPlan(groups=[GroupRemoval("a", 8, [1, 4]), GroupRemoval("b", 4, [0])])
    # after the first plan "a" has channels [0, 2, 3, 5, 6, 7]; removing its positions 0 and 3 removes 0 and 5
    later = PruningPlan(groups=[GroupRemoval("a", 6, [0, 3]), GroupRemoval("c", 3, [2])])
    both = first.compose(later)
    assert both.group("a").removed == [0, 1, 4, 5] and both.group("a").size == 8
    assert both.group("b").removed == [0]
    assert both.group("c").removed == [2]
    with pytest.raises(ValueError, match="expects"):
        first.compose(PruningPlan(groups=[GroupRemoval("a", 8, [0])]))


def test_round_trip_and_corruption_detection(tmp_path) -> None:
    plan = PruningPlan(groups=[GroupRemoval("conv1", 16, [2, 3])], criterion={"name": "dead"},
                       input_shape=[3, 32, 32])
    path = plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(path)
    assert again.removal_hash() == plan.removal_hash() and again.group("conv1").removed == [2, 3]
    data = json.loads(path.read_text())
    data["groups"][0]["removed"] = [2, 4]
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="plan_hash"):
        PruningPlan.load(path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PruningPlan.load(path)
    path.write_text(json.dumps({"schema": "something/else"}))
    with pytest.raises(CheckpointError, match="not a demp plan"):
        PruningPlan.load(path)
