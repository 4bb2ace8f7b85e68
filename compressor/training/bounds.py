"""The bounds of a recipe value, declared once next to its field, and the one check and message behind them.

A field of a recipe section (``train``, ``data``, ..., and every method's config) says what it accepts where
it is declared::

    lr: float = bounded(1e-3, low=0, low_open=True, help="learning rate")

:func:`check_bounds` checks every such field of a config, and every rejected value, whether found by a
bound or by a check across fields (:func:`reject`), reads the same way::

    recipe value train.lr=0.0 is invalid: expected a number > 0
    recipe value train.optimizer='adma' is invalid: expected one of adam | adamw | sgd; did you mean 'adam'?

Numbers must be finite; ``integer`` numbers whole (``3.0`` passes, as YAML may write it). The pruning
options several methods share (``min_channels``, ``ignore``) are declared here once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import MISSING, dataclass, field
from typing import Any

from ..errors import UsageError

__all__ = ["Bounds", "bounded", "check_bounds", "reject", "min_channels_field", "ignore_field"]


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Bounds:
    """What one value accepts: a number in a range, one of ``choices``, a non-blank string (``text``),
    or, with ``each``, a list whose every element does (``length``: exactly so many; ``nonempty``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < x (else low <= x)
    high_open: bool = False  # x < high (else x <= high)
    integer: bool = False
    nullable: bool = False
    choices: tuple[str, ...] = ()
    text: bool = False
    each: bool = False
    length: int | None = None
    nonempty: bool = False
    note: str = ""  # appended to the expected text, in parentheses
    what: str = ""  # replaces the generated expected text

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is within these bounds."""
        if value is None:
            return self.nullable
        if not self.each:
            return self._holds_one(value)
        return (isinstance(value, (list, tuple)) and (bool(value) or not self.nonempty)
                and (self.length is None or len(value) == self.length) and all(self._holds_one(v) for v in value))

    def _holds_one(self, v: Any) -> bool:
        if self.choices:
            return isinstance(v, str) and v in self.choices
        if self.text:
            return isinstance(v, str) and bool(v.strip())
        if not isinstance(v, (int, float)) or not math.isfinite(v) or (self.integer and int(v) != v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def expected(self) -> str:
        """What a value must be, in words (the end of every rejection message)."""
        text = self.what or self._describe_one()
        if self.each and not self.what:
            size = f"a list of {self.length}" if self.length else f"a {'non-empty ' if self.nonempty else ''}list"
            text = f"{size}, each {text}"
        if self.note:
            text += f" ({self.note})"
        return text + (" or null" if self.nullable else "")

    def _describe_one(self) -> str:
        if self.choices:
            return "one of " + " | ".join(self.choices)
        if self.text:
            return "a non-blank string"
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return "a finite number" if not self.integer else "an integer"


def bounded(default: Any = MISSING, *, help: str, default_factory: Any = MISSING, **bounds: Any) -> Any:
    """A dataclass field with its help text and its :class:`Bounds` (keyword arguments of Bounds)."""
    metadata = {"help": help, "bounds": Bounds(**bounds)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def reject(key: str, value: Any, expected: str) -> None:
    """Raise the one rejection message: ``recipe value KEY=VALUE is invalid: expected ...``."""
    raise UsageError(f"recipe value {key}={value!r} is invalid: expected {expected}")


def check_bounds(config: Any, section: str = "") -> None:
    """Reject the first field of dataclass ``config`` whose value is outside its declared bounds; keys
    are named ``section.field`` (a mistyped choice gets a did-you-mean hint)."""
    for f in dataclasses.fields(config):
        bounds = f.metadata.get("bounds")
        value = getattr(config, f.name)
        if bounds is None or bounds.holds(value):
            continue
        expected = bounds.expected()
        if bounds.choices and isinstance(value, str):
            close = difflib.get_close_matches(value, bounds.choices, n=1, cutoff=0.5)
            expected += f"; did you mean {close[0]!r}?" if close else ""
        reject(f"{section}.{f.name}" if section else f.name, value, expected)


# ------------------------------------------------------------------- pruning options several methods share


def min_channels_field() -> Any:
    """``min_channels``: the same option, default and bounds in every method that removes channels."""
    return bounded(1, integer=True, low=1, help="keep at least this many channels per group")


def ignore_field(help: str = "layer names never pruned") -> Any:
    """``ignore``: layer names a method leaves alone."""
    return bounded(default_factory=list, each=True, text=True, what="a list of layer names", help=help)
