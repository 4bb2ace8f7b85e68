"""The architecture spec: everything needed to rebuild a model (not its weights), as JSON.

A :class:`ModelSpec` is stored in every ``plan.json``, so a compressed model is rebuilt from its own
description, never from pickled code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

__all__ = ["ModelSpec", "require_image"]


@dataclass
class ModelSpec:
    """Everything needed to rebuild an architecture (not its weights). JSON round-trips exactly.

    ``model_file`` is ``"path.py:factory"`` for a user model (stored as an absolute path); ``arch`` is
    then a free label. ``input_shape`` excludes the batch dimension.
    """

    arch: str
    num_classes: int
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    model_file: str | None = None

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.kwargs = dict(self.kwargs or {})
        try:
            # Normalize (tuples -> lists) so that to_dict/from_dict round-trips compare equal.
            self.kwargs = json.loads(json.dumps(self.kwargs))
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"model kwargs for {self.arch!r} must be JSON values (numbers, strings, lists): {exc}"
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "kwargs": json.loads(json.dumps(self.kwargs)),
            "model_file": self.model_file,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        known = {"arch", "num_classes", "input_shape", "kwargs", "model_file"}
        unknown = sorted(set(data) - known)
        missing = sorted({"arch", "num_classes", "input_shape"} - set(data))
        if unknown or missing:
            raise UsageError(
                f"invalid model spec: unknown keys {unknown} / missing keys {missing}; expected {sorted(known)}"
            )
        return cls(
            arch=str(data["arch"]),
            num_classes=int(data["num_classes"]),
            input_shape=tuple(data["input_shape"]),
            kwargs=dict(data.get("kwargs") or {}),
            model_file=data.get("model_file"),
        )


def require_image(input_shape: Sequence[int], arch: str) -> None:
    """Refuse a non-image input shape for an image architecture."""
    if len(input_shape) != 3:
        raise UsageError(f"{arch} needs an image input shape (C, H, W), got {tuple(input_shape)}")
