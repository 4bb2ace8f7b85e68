"""Running ONNX files in onnxruntime: sessions, metadata, execution providers, and the parity check.

:func:`check_parity` runs a file in a real ``onnxruntime.InferenceSession`` (CPU execution provider)
on real samples, at more than one batch size, and compares it with the PyTorch model: the exported
output at the position of the model's primary output (:func:`compressor.model_outputs.output_tensor`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.activity import batch_input
from compressor.errors import DempError, UsageError, VerificationError
from compressor.inputs import KeywordInputs, ModelInputs, call_model, concat_inputs
from compressor.model_outputs import module_device, output_tensors, primary_output_index

from .onnx import first_line

__all__ = ["ParityResult", "load_onnx_session", "read_onnx_metadata", "onnx_input_shape", "check_parity",
           "available_providers"]


@dataclass
class ParityResult:
    """ONNX Runtime versus PyTorch on the same samples."""

    max_abs_diff: float
    rel_diff: float  # max_abs_diff / max |torch output|
    max_abs_output: float
    top1_agreement: float | None  # None when the output is not (batch, classes)
    samples: int  # distinct samples compared
    batch_sizes: list[int]  # batch sizes the file was run at
    atol_rel: float
    passed: bool
    provider: str = "CPUExecutionProvider"
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Report keys (prefixed ``onnx_`` so they sit next to the torch-vs-torch parity keys)."""
        return {
            "onnx_max_abs_diff": self.max_abs_diff,
            "onnx_rel_diff": self.rel_diff,
            "onnx_max_abs_output": self.max_abs_output,
            "onnx_top1_agreement": self.top1_agreement,
            "onnx_samples": self.samples,
            "onnx_batch_sizes": list(self.batch_sizes),
            "onnx_atol_rel": self.atol_rel,
            "onnx_passed": self.passed,
            "onnx_provider": self.provider,
        }


def load_onnx_session(path: str | os.PathLike, *, providers: Sequence[str] = ("CPUExecutionProvider",),
                      threads: int | None = None) -> Any:
    """Open ``path`` in an ``onnxruntime.InferenceSession``; a missing or corrupt file is a DempError."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise DempError(f"ONNX file {path} not found; export one with `demp export DIR`")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise DempError(
            f"{path} is not a loadable ONNX model ({first_line(exc)}); the file is corrupt or truncated — "
            "re-export it with `demp export DIR --overwrite`"
        ) from None


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights are not loaded)."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise DempError(f"ONNX file {path} not found") from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise DempError(f"{path} is not a valid ONNX file ({first_line(exc)}); re-export it") from None
    return {p.key: p.value for p in proto.metadata_props}


def onnx_input_shape(session: Any) -> tuple[str, list[int | str]]:
    """(input name, shape) of a session's first input; symbolic dims come back as strings."""
    first = session.get_inputs()[0]
    return first.name, [d if isinstance(d, int) else str(d) for d in first.shape]


# ----------------------------------------------------------------------------------------- parity
def check_parity(
    onnx_path: str | os.PathLike,
    model: nn.Module,
    batches: ModelInputs | Iterable[Any],
    *,
    atol_rel: float = 1e-4,
    chunk: int = 32,
    raise_on_failure: bool = True,
) -> ParityResult:
    """Compare ``onnx_path`` (onnxruntime, CPU EP) with ``model`` (PyTorch) on real samples.

    ``batches`` is a tensor of samples (or keyword inputs) or an iterable of tensors / ``(x, y)`` pairs /
    dicts of keyword input tensors (calibration and held-out data). Samples run in chunks of ``chunk``;
    with a dynamic batch axis the first samples also run alone and as a batch of three, so the file is
    exercised at batch sizes other than the one it was traced with. The difference is relative to the
    largest |output| of PyTorch. Raises :class:`VerificationError` when ``rel_diff > atol_rel`` (unless
    ``raise_on_failure`` is false).
    """
    samples = _gather(batches)
    if samples.shape[0] == 0:
        raise UsageError("parity check needs at least one sample")
    runs, sizes = _paired_outputs(load_onnx_session(onnx_path), model, samples, chunk)
    max_abs = max(float(np.max(np.abs(r - o))) if r.size else 0.0 for r, o in runs)
    max_out = max(float(np.max(np.abs(r))) if r.size else 0.0 for r, _ in runs)
    rel = max_abs / max(max_out, 1e-12)
    top1 = None
    if runs[0][0].ndim == 2 and runs[0][0].shape[1] > 1:
        agree = sum(int((r.argmax(1) == o.argmax(1)).sum()) for r, o in runs)
        top1 = agree / sum(r.shape[0] for r, _ in runs)
    result = ParityResult(
        max_abs_diff=max_abs, rel_diff=rel, max_abs_output=max_out, top1_agreement=top1,
        samples=int(samples.shape[0]), batch_sizes=sorted(sizes), atol_rel=atol_rel,
        passed=bool(np.isfinite(rel) and rel <= atol_rel), path=str(onnx_path),
    )
    if not result.passed and raise_on_failure:
        raise VerificationError(
            f"ONNX model {onnx_path} does not reproduce the PyTorch model: max abs diff {max_abs:.3g} "
            f"(relative {rel:.3g} > tolerance {atol_rel:g}; top-1 agreement "
            f"{'n/a' if top1 is None else f'{top1:.4f}'}) on {result.samples} samples at batch sizes "
            f"{result.batch_sizes}; "
            "re-export with the other --exporter, or report this as an exporter bug"
        )
    return result


def _paired_outputs(session: Any, model: nn.Module, samples: ModelInputs,
                    chunk: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], set[int]]:
    """(PyTorch output, ONNX output) per chunk of ``samples``, and the batch sizes the file ran at."""
    input_name, shape = onnx_input_shape(session)
    static_batch = shape[0] if shape and isinstance(shape[0], int) else None
    dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in session.get_inputs()}
    was_training = model.training
    model.eval()
    device = module_device(model)
    runs: list[tuple[np.ndarray, np.ndarray]] = []
    sizes: set[int] = set()
    try:
        for idx in _parity_slices(samples.shape[0], chunk, static_batch):
            x = samples[idx]
            with torch.inference_mode():
                ref = call_model(model, x.to(device))
            tensors, primary = output_tensors(ref), primary_output_index(ref)
            ref_np = tensors[primary].detach().float().cpu().numpy()
            feed = dict(x) if isinstance(x, KeywordInputs) else {input_name: x}
            outs = session.run(None, {k: v.cpu().numpy().astype(dtypes[k]) for k, v in feed.items()})
            out = outs[primary] if len(outs) == len(tensors) else outs[0]
            if out.shape != ref_np.shape:
                raise VerificationError(
                    f"ONNX output shape {tuple(out.shape)} differs from PyTorch {tuple(ref_np.shape)} at batch "
                    f"size {x.shape[0]}; re-export with a dynamic batch axis or the other exporter"
                )
            runs.append((ref_np, out))
            sizes.add(int(x.shape[0]))
    finally:
        model.train(was_training)
    return runs, sizes


_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


def _gather(batches: ModelInputs | Iterable[Any]) -> ModelInputs:
    if isinstance(batches, (torch.Tensor, KeywordInputs)):
        return batches.detach()
    parts = []
    for item in batches:
        try:
            parts.append(batch_input(item).detach())
        except DempError:
            raise UsageError(f"parity batches must be tensors, (x, y) pairs or dicts of keyword input tensors, got "
                             f"{type(item).__name__}") from None
    if not parts:
        raise UsageError("parity check needs at least one batch of samples")
    return concat_inputs(parts)


def _parity_slices(n: int, chunk: int, static_batch: int | None) -> list[Any]:
    """Index sets covering every sample; for a dynamic axis also batch sizes 1 and 3."""
    if static_batch is not None:
        # A static file only runs at its own batch size: pad the last chunk by wrapping around.
        out: list[Any] = []
        for start in range(0, n, static_batch):
            idx = [(start + i) % n for i in range(static_batch)]
            out.append(torch.tensor(idx))
        return out
    chunk = max(1, int(chunk))
    out = [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    # Batch sizes other than the traced one: a single sample and an odd-sized batch.
    for extra in sorted({1, min(3, n)}):
        out.append(slice(0, extra))
    return out


def available_providers() -> list[str]:
    """onnxruntime's execution providers on this machine ([] without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())
