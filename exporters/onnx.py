"""ONNX export of (pruned) PyTorch models: one checked file, written atomically.

:func:`export_onnx` writes one self-checked ONNX file:

* opset 18 by default; the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``)
  where it works and the TorchScript exporter (``dynamo=False``) as the fallback (``exporter="auto"``);
  which one produced the file is recorded in :class:`ExportInfo` and in the file's metadata;
* a dynamic batch axis by default (the file runs at any batch size);
* ``onnx.checker.check_model(full_check=True)`` and strict shape inference on the final file;
* ``metadata_props``: the tool version plus whatever the caller passes (plan hash, source sha256,
  neuron / weight sparsity);
* weights as external data when the model is larger than protobuf's 2 GB limit;
* optional simplification with onnxslim (the ``demp[simplify]`` extra);
* written atomically: everything is produced in a temporary directory next to the target and moved
  into place only when it passed the checks, so a failed export never leaves a broken file behind.

Running the file (sessions, metadata, the parity check against PyTorch) is :mod:`exporters.ort`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import (
    DempError,
    OutputExistsError,
    UsageError,
)
from compressor.inputs import KeywordInputs, ModelInputs, concat_inputs

from .quiet import quiet

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript")
DEFAULT_OPSET = 18
#: protobuf cannot serialize a message above 2 GiB; bigger models keep their weights in a side file.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"
META_PREFIX = "demp."

@dataclass
class ExportInfo:
    """What :func:`export_onnx` produced and how."""

    path: str
    exporter: str  # the exporter that produced the file: "dynamo" or "torchscript"
    requested_exporter: str  # what the caller asked for: "auto", "dynamo" or "torchscript"
    opset: int
    dynamic_batch: bool
    example_batch: int  # batch size of the traced example (the batch when static)
    input_name: str  # the first input (the only one for a model that takes one tensor)
    input_shape: list[int | str]  # "batch" for the dynamic axis
    output_names: list[str]
    bytes: int  # model file plus external data
    external_data: str | None  # side file name when weights are stored externally
    simplified: bool
    seconds: float
    fallback_reason: str | None = None  # why "auto" fell back to the TorchScript exporter
    metadata: dict[str, str] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)  # every input: keyword inputs keep their names

    def to_dict(self) -> dict[str, Any]:
        """Report section ``export`` (the file name, not the absolute path, under ``file``)."""
        data = asdict(self)
        data["file"] = Path(self.path).name
        return data


# ----------------------------------------------------------------------------------------- export
def export_onnx(
    model: nn.Module, example_input: ModelInputs, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True, metadata: Mapping[str, Any] | None = None, exporter: str = "auto",
    simplify: bool = False, overwrite: bool = False, external_data: bool | None = None,
) -> ExportInfo:
    """Export ``model`` to ``path`` as a checked ONNX file and return how it was done.

    ``example_input`` is one batch (``(N, *input_shape)``, or :class:`~compressor.inputs.KeywordInputs`
    for a model called with keyword tensors, exported under their names with the batch axis dynamic in
    each, the sequence length fixed at the example's); with ``dynamic_batch`` a batch of one is
    repeated to two samples, because ``torch.export`` specializes a size-1 dimension to a constant.
    ``exporter="auto"`` tries the ``torch.export``-based exporter and falls back to the TorchScript
    exporter, recording the reason. ``external_data=None`` stores weights in a side file
    (``<name>.data``) only when the model exceeds protobuf's 2 GB limit. ``metadata`` values are
    stored as strings in ``metadata_props``. The model's train/eval mode is restored afterwards.

    Raises :class:`UsageError` for bad options, :class:`OutputExistsError` when ``path`` exists and
    ``overwrite`` is false, and :class:`DempError` naming the failing operator when the model cannot
    be exported.
    """
    import onnx

    path = Path(path)
    _check_export_args(example_input, path, opset=opset, exporter=exporter, overwrite=overwrite, simplify=simplify)
    x = example_input.detach()
    if dynamic_batch and x.shape[0] == 1:
        x = concat_inputs([x, x])
    big = _model_bytes(model) > EXTERNAL_DATA_THRESHOLD if external_data is None else bool(external_data)
    data_name = f"{path.name}.data" if big else None
    path.parent.mkdir(parents=True, exist_ok=True)
    replacing = path.exists()
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
            raw = Path(tmp) / "raw" / "model.onnx"
            raw.parent.mkdir()
            used, fallback_reason = _run_exporter(model, x, raw, opset=opset, dynamic_batch=dynamic_batch,
                                                  exporter=exporter)
            meta = _export_metadata(used, opset, dynamic_batch, int(x.shape[0]), metadata)
            proto = _finish_proto(onnx.load(str(raw), load_external_data=True), meta, used=used,
                                  dynamic_batch=dynamic_batch, simplify=simplify, infer=not big)
            staged = Path(tmp) / path.name
            input_names, input_shape, output_names = _save_checked(proto, staged, used=used, data_name=data_name)
            del proto
            _move_into_place(staged, path, data_name=data_name, replacing=replacing)
    finally:
        model.train(was_training)

    size = path.stat().st_size + ((path.parent / data_name).stat().st_size if data_name else 0)
    info = ExportInfo(path=str(path), exporter=used, requested_exporter=exporter, opset=opset,
                      dynamic_batch=dynamic_batch, example_batch=int(x.shape[0]), input_name=input_names[0],
                      input_shape=input_shape, output_names=output_names, bytes=size, external_data=data_name,
                      simplified=simplify, seconds=time.perf_counter() - start, fallback_reason=fallback_reason,
                      metadata=meta, input_names=input_names)
    log.debug("exported %s with the %s exporter (opset %d, %.1f MB) in %.1f s", path, used, opset, size / 1e6,
              info.seconds)
    return info


def _export_metadata(used: str, opset: int, dynamic_batch: bool, example_batch: int,
                     extra: Mapping[str, Any] | None) -> dict[str, str]:
    """``metadata_props``: how the file was made, plus the caller's entries (plan hash, sparsity, ...)."""
    return {f"{META_PREFIX}version": _tool_version(), f"{META_PREFIX}exporter": used,
            f"{META_PREFIX}opset": str(opset), f"{META_PREFIX}dynamic_batch": str(bool(dynamic_batch)).lower(),
            f"{META_PREFIX}example_batch": str(example_batch),
            **{str(k): _meta_str(v) for k, v in (extra or {}).items()}}


def _check_export_args(example_input: ModelInputs, path: Path, *, opset: int, exporter: str, overwrite: bool,
                       simplify: bool) -> None:
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 9:
        raise UsageError(f"opset {opset!r} is not supported; use opset 9 or newer (default {DEFAULT_OPSET})")
    if isinstance(example_input, KeywordInputs):
        if example_input.shape[0] < 1:
            raise UsageError("example_input's keyword tensors must have a non-empty batch dimension")
    elif not isinstance(example_input, torch.Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
        raise UsageError("example_input must be a tensor with a non-empty batch dimension, e.g. "
                         "torch.randn(2, 3, 224, 224), or keyword inputs (compressor.inputs.KeywordInputs)")
    if path.suffix != ".onnx":
        raise UsageError(f"output file {path} must end in .onnx")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it or choose another --out")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory; choose a file name ending in .onnx")
    if simplify:
        _require_onnxslim()


def _other_exporter(used: str) -> str:
    return "torchscript" if used == "dynamo" else "dynamo"


def _finish_proto(proto: Any, meta: Mapping[str, str], *, used: str, dynamic_batch: bool, simplify: bool,
                  infer: bool) -> Any:
    """Simplify (optional), set metadata, name the batch axis and run strict shape inference."""
    import onnx

    if simplify:
        proto = _simplify(proto)
    _set_metadata(proto, meta)
    _name_batch_axis(proto, dynamic_batch)
    if infer:  # a model above protobuf's limit is inferred from the file after saving
        try:
            proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
            raise DempError(f"ONNX shape inference failed on the exported model ({first_line(exc)}); "
                            f"try --exporter {_other_exporter(used)} or another --opset") from None
    return proto


def _save_checked(proto: Any, staged: Path, *, used: str,
                  data_name: str | None) -> tuple[list[str], list[int | str], list[str]]:
    """Save ``proto`` to ``staged`` (weights in ``data_name`` when set), run the full onnx checker on
    the file; returns (input names, the first input's shape, output names)."""
    import onnx

    if data_name:
        _to_external_data(proto, data_name)
    onnx.save_model(proto, str(staged))
    try:
        onnx.checker.check_model(str(staged), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DempError(f"the exported ONNX model failed onnx.checker ({first_line(exc)}); "
                        f"try --exporter {_other_exporter(used)} or another --opset") from None
    if data_name:
        onnx.shape_inference.infer_shapes_path(str(staged), str(staged), check_type=True, strict_mode=True)
    checked = onnx.load(str(staged), load_external_data=False)
    input_names, input_shape = _graph_inputs(checked)
    return input_names, input_shape, [o.name for o in checked.graph.output]


def _move_into_place(staged: Path, path: Path, *, data_name: str | None, replacing: bool) -> None:
    """Side file first, so the .onnx never points at a missing side file; drop a replaced file's side file."""
    if data_name:
        _fsync(staged.parent / data_name)
        os.replace(staged.parent / data_name, path.parent / data_name)
    _fsync(staged)
    os.replace(staged, path)
    stale = path.parent / f"{path.name}.data"
    if replacing and not data_name and stale.is_file():
        stale.unlink()


def _run_exporter(model: nn.Module, x: ModelInputs, raw: Path, *, opset: int, dynamic_batch: bool,
                  exporter: str) -> tuple[str, str | None]:
    """Run the requested exporter(s); return (exporter used, reason for falling back or None)."""
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(model, x, raw, opset=opset, dynamic_batch=dynamic_batch)
            return "dynamo", None
        except Exception as exc:  # the exporter raises many unrelated types; classified below
            op, reason = describe_export_failure(exc)
            if exporter == "dynamo":
                raise DempError(
                    f"the torch.export-based ONNX exporter failed{_at_op(op)}: {reason}; "
                    "try --exporter torchscript"
                ) from None
            _clear(raw.parent)
            log.warning("torch.export-based exporter failed%s (%s); falling back to the TorchScript exporter",
                        _at_op(op), reason)
            fallback = f"dynamo exporter failed{_at_op(op)}: {reason}"
    else:
        fallback = None
    try:
        _export_torchscript(model, x, raw, opset=opset, dynamic_batch=dynamic_batch)
    except Exception as exc:  # see above
        op, reason = describe_export_failure(exc)
        hint = "try --exporter dynamo" if exporter == "torchscript" else "neither exporter supports it"
        raise DempError(
            f"the TorchScript ONNX exporter failed{_at_op(op)}: {reason}; {hint}"
            + (f" (the torch.export-based exporter also failed: {fallback})" if fallback else "")
            + "; replace the operator in the model or try another --opset"
        ) from None
    return "torchscript", fallback


def _call_args(x: ModelInputs) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    """(args, kwargs, input names) of the exported call: one tensor named ``input``, or keyword inputs
    under their own names (``input_ids``, ``attention_mask``, ...)."""
    if isinstance(x, KeywordInputs):
        return (), dict(x), list(x)
    return (x,), {}, [INPUT_NAME]


def _export_dynamo(model: nn.Module, x: ModelInputs, raw: Path, *, opset: int, dynamic_batch: bool) -> None:
    args, kwargs, names = _call_args(x)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH_DIM, min=1)
        dynamic_shapes = {k: {0: batch} for k in kwargs} if kwargs else ({0: batch},)
    with quiet():
        torch.onnx.export(
            model, args, str(raw), kwargs=kwargs or None, dynamo=True, opset_version=opset, input_names=names,
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, external_data=True, optimize=True,
            verbose=False,
        )


def _export_torchscript(model: nn.Module, x: ModelInputs, raw: Path, *, opset: int, dynamic_batch: bool) -> None:
    args, kwargs, names = _call_args(x)
    axes = {**{n: {0: BATCH_DIM} for n in names}, OUTPUT_NAME: {0: BATCH_DIM}} if dynamic_batch else None
    with quiet():
        torch.onnx.export(
            model, args, str(raw), kwargs=kwargs or None, dynamo=False, opset_version=opset, input_names=names,
            output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True, verbose=False,
        )


_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.:]+)'"),
    re.compile(r"operator '([\w.:]+)'"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
    re.compile(r"\b((?:aten|prims|onnx)(?:::|\.)[A-Za-z_]\w*)"),
)


def describe_export_failure(exc: BaseException) -> tuple[str | None, str]:
    """Return (failing operator or None, one-line reason) for an exporter exception.

    The torch.export-based exporter wraps the cause in a long multi-line message with an
    "Exception summary"; the TorchScript exporter names ``aten::op`` directly.
    """
    text = _strip_ansi(str(exc))
    for node in _chain(exc):
        text += "\n" + _strip_ansi(str(node))
    op = None
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            op = match.group(1)
            break
    reason = None
    summary = text.split("## Exception summary", 1)
    if len(summary) == 2:
        for line in summary[1].splitlines():
            line = line.strip()
            if line.startswith("<class"):
                reason = re.sub(r"^<class '([\w.]+\.)?(\w+)'>:\s*", r"\2: ", line)
                break
    if reason is None:
        reason = f"{type(exc).__name__}: {first_line(exc)}"
    if "GuardOnDataDependentSymNode" in text or "data-dependent" in text.lower():
        reason = "data-dependent control flow or shapes (" + reason[:200] + ")"
    return op, reason[:400]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = {id(exc)}
    node = exc.__cause__ or exc.__context__
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def _at_op(op: str | None) -> str:
    return f" at operator {op}" if op else ""


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in _strip_ansi(str(exc)).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _clear(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _to_external_data(proto: Any, location: str, threshold: int = 1024) -> None:
    """Mark every large initializer for storage in ``location`` (next to the model file).

    ``onnx.save_model(save_as_external_data=True)`` refuses when a file of that name exists in the
    *current working directory*, so the tensors are marked here and written by ``save_model``.
    """
    from onnx.external_data_helper import set_external_data

    for tensor in proto.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= threshold:
            set_external_data(tensor, location)


def _model_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _tool_version() -> str:
    import compressor

    return str(compressor.__version__)


def _meta_str(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _set_metadata(proto: Any, meta: Mapping[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value


def _name_batch_axis(proto: Any, dynamic_batch: bool) -> None:
    """Give the dynamic batch axis the same name ("batch") whichever exporter produced the file."""
    if not dynamic_batch:
        return
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM


def _graph_inputs(proto: Any) -> tuple[list[str], list[int | str]]:
    """The graph's input names and the first input's shape."""
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if not inputs:
        raise DempError("the exported ONNX model has no inputs")
    shape: list[int | str] = []
    for dim in inputs[0].type.tensor_type.shape.dim:
        shape.append(int(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or "?"))
    return [i.name for i in inputs], shape


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _require_onnxslim() -> Any:
    try:
        import onnxslim
    except ImportError:
        raise DempError(
            "simplification needs onnxslim, which is not installed; run: pip install 'demp[simplify]' "
            "(or export without --simplify)"
        ) from None
    return onnxslim


def _simplify(proto: Any) -> Any:
    onnxslim = _require_onnxslim()
    try:
        with quiet():
            return onnxslim.slim(proto)
    except Exception as exc:  # onnxslim raises assorted types; the unsimplified export is still valid
        raise DempError(f"onnxslim failed to simplify the model ({first_line(exc)}); "
                        "export without --simplify") from None
