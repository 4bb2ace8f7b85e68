"""Model inputs of both kinds demp handles: one tensor, or keyword tensors (Hugging Face models).

A Hugging Face model is called as ``model(input_ids=..., attention_mask=...)`` and returns a
``ModelOutput``. :class:`KeywordInputs` holds such a batch: a dict of tensors that share the batch
dimension, sliced, moved and concatenated like one tensor (``x[:16]``, ``x.to(device)``,
``x.shape[0]``), so the code that measures, verifies and exports works on either kind, and
:func:`call_model` calls the model the right way. A data loader may yield such dicts (labels under
``labels`` / ``label`` / ``y`` / ``targets`` are left out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["KeywordInputs", "ModelInputs", "LABEL_KEYS", "call_model", "concat_inputs"]

#: Keys of a dict batch that hold targets, not model inputs.
LABEL_KEYS = ("labels", "label", "y", "targets")


class KeywordInputs(dict):
    """Keyword input tensors with one batch dimension, usable where a single input tensor is."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        super().__init__((k, v) for k, v in tensors.items())
        ok = bool(self) and all(isinstance(v, Tensor) and v.dim() >= 1 for v in self.values())
        if not ok or len({int(v.shape[0]) for v in self.values()}) != 1:
            raise ValueError(f"keyword inputs must be tensors sharing the batch size, got "
                             f"{ {k: tuple(getattr(v, 'shape', ())) for k, v in tensors.items()} }")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return KeywordInputs({k: v[key] for k, v in self.items()})

    @property
    def shape(self) -> torch.Size:
        """The batch dimension only (``shape[0]``); per-sample shapes differ between the inputs."""
        return torch.Size([int(next(iter(self.values())).shape[0])])

    def to(self, *args: Any, **kwargs: Any) -> KeywordInputs:
        return KeywordInputs({k: v.to(*args, **kwargs) for k, v in self.items()})

    def detach(self) -> KeywordInputs:
        return KeywordInputs({k: v.detach() for k, v in self.items()})

    def cpu(self) -> KeywordInputs:
        return KeywordInputs({k: v.cpu() for k, v in self.items()})


ModelInputs = Tensor | KeywordInputs


def call_model(model: nn.Module, x: ModelInputs) -> Any:
    """``model(**x)`` for keyword inputs, ``model(x)`` for a tensor."""
    return model(**x) if isinstance(x, KeywordInputs) else model(x)


def concat_inputs(parts: Iterable[ModelInputs]) -> ModelInputs:
    """One batch from several (tensors, or keyword inputs with the same keys)."""
    parts = list(parts)
    if parts and isinstance(parts[0], KeywordInputs):
        keys = list(parts[0])
        if any(list(p) != keys for p in parts):
            raise ValueError("keyword input batches have different keys")
        return KeywordInputs({k: torch.cat([p[k] for p in parts]) for k in keys})
    tensors = [p for p in parts if isinstance(p, Tensor)]
    if len(tensors) != len(parts):
        raise TypeError("cannot concatenate tensors with keyword inputs")
    return torch.cat(tensors)
