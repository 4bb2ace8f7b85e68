"""A model's outputs: the primary output of its result, outputs on samples, and the parity of two models.

* :func:`output_tensors` / :func:`output_tensor` — the tensors of a model's result and the *primary*
  one: a tensor; the first element of a tuple or list; of a mapping (a Hugging Face ``ModelOutput``
  is one) the ``logits`` entry, else ``out``, else the first value. ONNX parity compares the
  exported output at the same position;
* :func:`run_model`, :func:`compare_outputs` — outputs on samples and the parity figures of two
  models (max abs difference, difference relative to the output scale, top-1 agreement);
* :func:`module_device` — where a model lives.

Counting parameters and MACs is :mod:`compressor.counting`' job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .errors import DempError
from .inputs import ModelInputs, call_model

__all__ = ["output_tensors", "output_tensor", "primary_output_index", "run_model", "compare_outputs", "module_device"]


def module_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter or buffer lives (CPU for a model without tensors)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def output_tensors(value: Any) -> list[Tensor]:
    """Every tensor of a model's result, in the order an ONNX exporter flattens them."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in output_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in output_tensors(v)]
    if isinstance(getattr(value, "logits", None), Tensor):
        return [value.logits]
    return []


def primary_output_index(value: Any) -> int:
    """Position of the primary output (see the module docstring) in :func:`output_tensors`."""
    if isinstance(value, Mapping):
        for key in ("logits", "out"):
            if key in value:
                offset = 0
                for k, v in value.items():
                    if k == key:
                        return offset + primary_output_index(v)
                    offset += len(output_tensors(v))
    return 0


def output_tensor(value: Any) -> Tensor:
    """The primary output tensor of a model's result (see the module docstring)."""
    tensors = output_tensors(value)
    if not tensors:
        raise DempError(f"cannot find an output tensor in a model result of type {type(value).__name__}; "
                        "the model must return a tensor, a tuple of tensors or a mapping with 'logits'")
    return tensors[primary_output_index(value)]


@torch.no_grad()
def run_model(model: nn.Module, inputs: ModelInputs, batch_size: int = 64) -> Tensor:
    """The primary outputs of ``model`` (eval mode, restored after) on ``inputs`` (a tensor or keyword
    inputs), batched, float32 on the CPU."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    try:
        outs = [output_tensor(call_model(model, inputs[i:i + batch_size].to(device))).float().cpu()
                for i in range(0, inputs.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.zeros(0)


def compare_outputs(reference: Tensor, candidate: Tensor) -> dict[str, Any]:
    """Parity of two models' outputs on the same samples.

    ``max_abs_diff``; ``rel_diff``: max_abs_diff over the reference's output scale (max |y|);
    ``output_scale``; ``samples``; ``top1_agreement`` for (batch, classes) outputs.
    """
    reference, candidate = reference.float(), candidate.float()
    if reference.shape != candidate.shape:
        raise DempError(f"cannot compare outputs of shapes {tuple(reference.shape)} and {tuple(candidate.shape)}")
    diff = (reference - candidate).abs()
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    max_abs = float(diff.max()) if diff.numel() else 0.0
    result: dict[str, Any] = {
        "max_abs_diff": max_abs,
        "rel_diff": max_abs / scale if scale > 0 else max_abs,
        "output_scale": scale,
        "samples": int(reference.shape[0]) if reference.dim() else 1,
    }
    if reference.dim() == 2 and reference.shape[1] > 1:
        result["top1_agreement"] = float((reference.argmax(1) == candidate.argmax(1)).float().mean())
    return result
