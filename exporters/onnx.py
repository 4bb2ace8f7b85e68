"""ONNX export of (pruned) PyTorch models, with an onnxruntime parity check.

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

:func:`check_parity` runs the file in a real ``onnxruntime.InferenceSession`` (CPU execution provider)
on real samples, at more than one batch size, and compares with the PyTorch model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from compressor.errors import DempError, OutputExistsError, UsageError, VerificationError

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript")
DEFAULT_OPSET = 18
#: protobuf cannot serialize a message above 2 GiB; bigger models keep their weights in a side file.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"
META_PREFIX = "demp."

# Loggers that print whole FX graphs while torch.export explains why it failed; the fallback path
# reports the reason in one line instead.
_NOISY_LOGGERS = (
    "torch.export",
    "torch._export",
    "torch._dynamo",
    "torch.fx.experimental.symbolic_shapes",
    "torch.onnx",
    "onnxscript",
    "onnx_ir",
)


@dataclass
class ExportInfo:
    """What :func:`export_onnx` produced and how."""

    path: str
    exporter: str  # the exporter that produced the file: "dynamo" or "torchscript"
    requested_exporter: str  # what the caller asked for: "auto", "dynamo" or "torchscript"
    opset: int
    dynamic_batch: bool
    example_batch: int  # batch size of the traced example (the batch when static)
    input_name: str
    input_shape: list[int | str]  # "batch" for the dynamic axis
    output_names: list[str]
    bytes: int  # model file plus external data
    external_data: str | None  # side file name when weights are stored externally
    simplified: bool
    seconds: float
    fallback_reason: str | None = None  # why "auto" fell back to the TorchScript exporter
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Report section ``export`` (the file name, not the absolute path, under ``file``)."""
        data = asdict(self)
        data["file"] = Path(self.path).name
        return data


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


# ----------------------------------------------------------------------------------------- export
def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    metadata: Mapping[str, Any] | None = None,
    exporter: str = "auto",
    simplify: bool = False,
    overwrite: bool = False,
    external_data: bool | None = None,
) -> ExportInfo:
    """Export ``model`` to ``path`` as a checked ONNX file and return how it was done.

    ``example_input`` is one batch (``(N, *input_shape)``); with ``dynamic_batch`` a batch of one is
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
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 9:
        raise UsageError(f"opset {opset!r} is not supported; use opset 9 or newer (default {DEFAULT_OPSET})")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
        raise UsageError("example_input must be a tensor with a non-empty batch dimension, e.g. torch.randn(2, 3, 224, 224)")
    if path.suffix != ".onnx":
        raise UsageError(f"output file {path} must end in .onnx")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it or choose another --out")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory; choose a file name ending in .onnx")
    if simplify:
        _require_onnxslim()

    x = example_input.detach()
    if dynamic_batch and x.shape[0] == 1:
        x = torch.cat([x, x], dim=0)
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
            used, fallback_reason = _run_exporter(model, x, raw, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter)

            proto = onnx.load(str(raw), load_external_data=True)
            if simplify:
                proto = _simplify(proto)
            meta = {
                f"{META_PREFIX}version": _tool_version(),
                f"{META_PREFIX}exporter": used,
                f"{META_PREFIX}opset": str(opset),
                f"{META_PREFIX}dynamic_batch": str(bool(dynamic_batch)).lower(),
                f"{META_PREFIX}example_batch": str(int(x.shape[0])),
            }
            meta.update({str(k): _meta_str(v) for k, v in (metadata or {}).items()})
            _set_metadata(proto, meta)
            _name_batch_axis(proto, dynamic_batch)
            if not big:
                try:
                    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
                except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
                    raise DempError(
                        f"ONNX shape inference failed on the exported model ({_first_line(exc)}); "
                        f"try --exporter {'torchscript' if used == 'dynamo' else 'dynamo'} or another --opset"
                    ) from None

            staged = Path(tmp) / path.name
            if big:
                _to_external_data(proto, data_name)
            onnx.save_model(proto, str(staged))
            del proto
            try:
                onnx.checker.check_model(str(staged), full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
                raise DempError(
                    f"the exported ONNX model failed onnx.checker ({_first_line(exc)}); "
                    f"try --exporter {'torchscript' if used == 'dynamo' else 'dynamo'} or another --opset"
                ) from None
            if big:
                onnx.shape_inference.infer_shapes_path(str(staged), str(staged), check_type=True, strict_mode=True)

            checked = onnx.load(str(staged), load_external_data=False)
            input_name, input_shape = _graph_input(checked)
            output_names = [o.name for o in checked.graph.output]
            del checked
            # Move into place: side file first, so the .onnx never points at a missing side file.
            if data_name:
                _fsync(Path(tmp) / data_name)
                os.replace(Path(tmp) / data_name, path.parent / data_name)
            _fsync(staged)
            os.replace(staged, path)
            stale = path.parent / f"{path.name}.data"
            if replacing and not data_name and stale.is_file():
                stale.unlink()  # side file of the file this export replaced
    finally:
        model.train(was_training)

    size = path.stat().st_size + ((path.parent / data_name).stat().st_size if data_name else 0)
    info = ExportInfo(
        path=str(path),
        exporter=used,
        requested_exporter=exporter,
        opset=opset,
        dynamic_batch=dynamic_batch,
        example_batch=int(x.shape[0]),
        input_name=input_name,
        input_shape=input_shape,
        output_names=output_names,
        bytes=size,
        external_data=data_name,
        simplified=simplify,
        seconds=time.perf_counter() - start,
        fallback_reason=fallback_reason,
        metadata=meta,
    )
    log.debug("exported %s with the %s exporter (opset %d, %.1f MB) in %.1f s", path, used, opset, size / 1e6, info.seconds)
    return info


def _run_exporter(model: nn.Module, x: torch.Tensor, raw: Path, *, opset: int, dynamic_batch: bool,
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


def _export_dynamo(model: nn.Module, x: torch.Tensor, raw: Path, *, opset: int, dynamic_batch: bool) -> None:
    dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM, min=1)},) if dynamic_batch else None
    with _quiet():
        torch.onnx.export(
            model, (x,), str(raw), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, external_data=True, optimize=True,
            verbose=False,
        )


def _export_torchscript(model: nn.Module, x: torch.Tensor, raw: Path, *, opset: int, dynamic_batch: bool) -> None:
    axes = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}} if dynamic_batch else None
    with _quiet():
        torch.onnx.export(
            model, (x,), str(raw), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
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
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
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


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in _strip_ansi(str(exc)).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter: progress prints, deprecation warnings, INFO logs and the FX / TorchScript
    graph dumps that the exporters print (partly from C++, straight to file descriptors 1 and 2) when
    they fail. The failure itself still raises and is summarized in one line; the captured text is
    kept at DEBUG level."""
    saved = {}
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.CRITICAL)
    with _capture_fds((1, 2)) as captured, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)
    if captured:
        log.debug("exporter output:\n%s", captured[0][-20000:])


@contextlib.contextmanager
def _capture_fds(fds: Sequence[int]) -> Iterator[list[str]]:
    """Point the given OS-level file descriptors at a temporary file; yields a list that receives the
    captured text on exit. Without real descriptors (some embedded interpreters) nothing is captured."""
    import sys

    out: list[str] = []
    sink = tempfile.TemporaryFile(mode="w+b")
    saved: dict[int, int] = {}
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd in fds:
            try:
                saved[fd] = os.dup(fd)
                os.dup2(sink.fileno(), fd)
            except OSError:
                saved.pop(fd, None)
        yield out
    finally:
        _flush_c_stdio()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace").strip()
        sink.close()
        if text:
            out.append(text)


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers so text printed by C++ lands in the capture, not after it."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


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


def _graph_input(proto: Any) -> tuple[str, list[int | str]]:
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if not inputs:
        raise DempError("the exported ONNX model has no inputs")
    first = inputs[0]
    shape: list[int | str] = []
    for dim in first.type.tensor_type.shape.dim:
        shape.append(int(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or "?"))
    return first.name, shape


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
        with _quiet():
            return onnxslim.slim(proto)
    except Exception as exc:  # onnxslim raises assorted types; the unsimplified export is still valid
        raise DempError(f"onnxslim failed to simplify the model ({_first_line(exc)}); export without --simplify") from None


# ----------------------------------------------------------------------------------------- loading
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
            f"{path} is not a loadable ONNX model ({_first_line(exc)}); the file is corrupt or truncated — "
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
        raise DempError(f"{path} is not a valid ONNX file ({_first_line(exc)}); re-export it") from None
    return {p.key: p.value for p in proto.metadata_props}


def onnx_input_shape(session: Any) -> tuple[str, list[int | str]]:
    """(input name, shape) of a session's first input; symbolic dims come back as strings."""
    first = session.get_inputs()[0]
    return first.name, [d if isinstance(d, int) else str(d) for d in first.shape]


# ----------------------------------------------------------------------------------------- parity
def check_parity(
    onnx_path: str | os.PathLike,
    model: nn.Module,
    batches: torch.Tensor | Iterable[Any],
    *,
    atol_rel: float = 1e-4,
    chunk: int = 32,
    raise_on_failure: bool = True,
) -> ParityResult:
    """Compare ``onnx_path`` (onnxruntime, CPU EP) with ``model`` (PyTorch) on real samples.

    ``batches`` is a tensor of samples or an iterable of tensors / ``(x, y)`` pairs (calibration and
    held-out data). Samples run in chunks of ``chunk``; with a dynamic batch axis the first samples
    also run alone and as a batch of three, so the file is exercised at batch sizes other than the
    one it was traced with. The difference is relative to the largest |output| of PyTorch. Raises
    :class:`VerificationError` when ``rel_diff > atol_rel`` (unless ``raise_on_failure`` is false).
    """
    samples = _gather(batches)
    if samples.shape[0] == 0:
        raise UsageError("parity check needs at least one sample")
    session = load_onnx_session(onnx_path)
    input_name, shape = onnx_input_shape(session)
    static_batch = shape[0] if shape and isinstance(shape[0], int) else None
    input_dtype = _ORT_DTYPES.get(session.get_inputs()[0].type, np.float32)

    was_training = model.training
    model.eval()
    device = _module_device(model)
    runs: list[tuple[np.ndarray, np.ndarray]] = []
    sizes: set[int] = set()
    try:
        for idx in _parity_slices(samples.shape[0], chunk, static_batch):
            x = samples[idx]
            with torch.inference_mode():
                ref = model(x.to(device))
            ref_np = _first_output(ref).detach().float().cpu().numpy()
            out = session.run(None, {input_name: x.cpu().numpy().astype(input_dtype)})[0]
            if out.shape != ref_np.shape:
                raise VerificationError(
                    f"ONNX output shape {tuple(out.shape)} differs from PyTorch {tuple(ref_np.shape)} at batch "
                    f"size {x.shape[0]}; re-export with a dynamic batch axis or the other exporter"
                )
            runs.append((ref_np, out))
            sizes.add(int(x.shape[0]))
    finally:
        model.train(was_training)

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
            f"{'n/a' if top1 is None else f'{top1:.4f}'}) on {result.samples} samples at batch sizes {result.batch_sizes}; "
            "re-export with the other --exporter, or report this as an exporter bug"
        )
    return result


_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


def _gather(batches: torch.Tensor | Iterable[Any]) -> torch.Tensor:
    if isinstance(batches, torch.Tensor):
        return batches.detach()
    parts = []
    for item in batches:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise UsageError(f"parity batches must be tensors or (x, y) pairs, got {type(x).__name__}")
        parts.append(x.detach())
    if not parts:
        raise UsageError("parity check needs at least one batch of samples")
    return torch.cat(parts, dim=0)


def _parity_slices(n: int, chunk: int, static_batch: int | None) -> list[Any]:
    """Index sets covering every sample; for a dynamic axis also batch sizes 1 and 3."""
    if static_batch is not None:
        # A static file only runs at its own batch size: pad the last chunk by wrapping around.
        out = []
        for start in range(0, n, static_batch):
            idx = [(start + i) % n for i in range(static_batch)]
            out.append(torch.tensor(idx))
        return out
    chunk = max(1, int(chunk))
    out: list[Any] = [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    # Batch sizes other than the traced one: a single sample and an odd-sized batch.
    for extra in sorted({1, min(3, n)}):
        out.append(slice(0, extra))
    return out


def _first_output(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _first_output(value[0])
    if isinstance(value, Mapping) and value:
        return _first_output(next(iter(value.values())))
    raise DempError(f"the model returned {type(value).__name__}; parity needs a tensor output")


def _module_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")
