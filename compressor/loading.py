"""Load a model from a checkpoint or from a compressed directory.

This is the one entry point that knows both kinds of input, so :mod:`compressor.models` (build an
architecture) and :mod:`compressor.pruned` (a compressed directory) never need each other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from .errors import CheckpointError
from .models import build_model, canonical_arch, infer_num_classes, make_spec
from .pruned import is_pruned_dir, load_pruned
from .weight_files import load_weights, read_checkpoint

log = logging.getLogger(__name__)

__all__ = ["load_model"]

#: Checkpoint key prefixes of the auxiliary classifiers of googlenet / inception_v3.
_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")


def load_model(
    arch: str | None,
    checkpoint: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    input_size: int | None = None,
    input_shape: Sequence[int] | None = None,
    model_file: str | None = None,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``arch`` and load ``checkpoint`` into it; returns the model in eval mode.

    * ``checkpoint`` None: a fresh model (seed ``torch.manual_seed`` first for reproducibility).
    * ``checkpoint`` a directory with ``plan.json``: a compressed model written by demp, loaded via
      :func:`compressor.pruned.load_pruned` (``arch`` and the other options are then ignored).
    * otherwise any format :func:`compressor.weight_files.read_checkpoint` reads. When
      ``num_classes`` is None it is inferred from the checkpoint's classifier.
    * ``model_file="path.py:factory"`` builds a user model: **this imports and executes that
      Python file**, by design (like ``python path.py``); ``factory(num_classes=..., **kwargs)`` is
      called (``num_classes`` only if the factory accepts it). The file may set ``INPUT_SHAPE``.

    ``kwargs`` are builder options (e.g. ``widths=[512, 512]`` for ``mlp``).
    """
    if checkpoint is not None and is_pruned_dir(checkpoint):
        return load_pruned(checkpoint)

    state_dict = read_checkpoint(checkpoint, trust_pickle=trust_pickle) if checkpoint is not None else None
    arch_name = canonical_arch(arch) if (arch and model_file is None) else arch
    if state_dict is not None and arch_name in ("googlenet", "inception_v3") and "aux_logits" not in kwargs:
        kwargs["aux_logits"] = any(k.startswith(_AUX_PREFIXES) for k in state_dict)
    spec = make_spec(
        arch_name, num_classes=num_classes, input_size=input_size, input_shape=input_shape,
        model_file=model_file, **kwargs,
    )
    if state_dict is not None and num_classes is None:
        inferred = infer_num_classes(spec, state_dict)
        if inferred is not None:
            if inferred != spec.num_classes:
                log.info("%s: %d classes (read from the checkpoint's classifier)", spec.arch, inferred)
            spec = replace(spec, num_classes=inferred)
        else:
            log.debug("could not infer the class count from %s; using %d", checkpoint, spec.num_classes)
    model = build_model(spec)
    if state_dict is not None:
        try:
            load_weights(model, state_dict)
        except CheckpointError as exc:
            raise CheckpointError(f"{checkpoint}: {exc}") from exc
    return model.eval()
