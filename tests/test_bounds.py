"""Recipe bounds: declared once next to each field, checked by one function, rejected with one message."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from compressor.errors import UsageError
from compressor.training.bounds import Bounds, check_bounds
from compressor.training.config import DataConfig, ExportConfig, ModelConfig, TrainConfig
from compressor.training.methods import METHODS

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "export": ExportConfig,
            **{name: config for name, (config, _) in METHODS.items()}}
#: Fields free by design: paths, labels, builder arguments, on/off switches and free-form specs.
FREE = {"kwargs", "checkpoint", "model_file", "normalize"}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_numeric_or_choice_field_declares_its_bounds(section: str) -> None:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    unbounded = [f.name for f in dataclasses.fields(cls)
                 if "bounds" not in f.metadata and f.name not in FREE and hints[f.name] is not bool]
    assert unbounded == []


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_the_defaults_are_within_their_bounds(section: str) -> None:
    check_bounds(SECTIONS[section](), section)


@pytest.mark.parametrize("bounds, good, bad, expected", [
    (Bounds(low=0, low_open=True), [1e-9, 3], [0, -1, float("inf"), "1"], "a number > 0"),
    (Bounds(integer=True, low=1, nullable=True), [1, 2.0, None], [0, 1.5], "an integer >= 1 or null"),
    (Bounds(low=0, high=1, high_open=True), [0, 0.5], [1, float("nan")], "a number in [0, 1)"),
    (Bounds(choices=("a", "b")), ["a"], ["c", None], "one of a | b"),
    (Bounds(each=True, length=2, low=0, high=1, high_open=True), [[0, 0.9]], [[0.9], [0, 1]],
     "a list of 2, each a number in [0, 1)"),
    (Bounds(each=True, text=True, what="a list of layer names"), [[], ["fc"]], ["fc", [1]], "a list of layer names"),
])
def test_bounds_accept_reject_and_say_what_they_expect(bounds: Bounds, good: list, bad: list, expected: str) -> None:
    assert all(bounds.holds(v) for v in good) and not any(bounds.holds(v) for v in bad)
    assert bounds.expected() == expected


def test_one_message_for_every_section() -> None:
    for section, bad in (("train", TrainConfig(lr=0)), ("demp", SECTIONS["demp"](peak=-1.0)),
                         ("dnr", SECTIONS["dnr"](eps=2.0)), ("baseline", SECTIONS["baseline"](at_epoch=-1))):
        with pytest.raises(UsageError, match=rf"^recipe value {section}\.\w+=\S+ is invalid: expected "):
            check_bounds(bad, section)


def test_the_methods_share_one_declaration_of_their_pruning_options() -> None:
    pruners = [config for name, (config, _) in METHODS.items() if name != "stripping"]
    for option in ("min_channels", "ignore"):
        declared = {repr(next(f for f in dataclasses.fields(c) if f.name == option).metadata["bounds"])
                    for c in pruners}
        assert len(declared) == 1, option
