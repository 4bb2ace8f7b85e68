"""int8 static quantization of the compact ONNX model with onnxruntime, and the held-out check that
decides whether the int8 file ships.

demp does not write a quantizer: :func:`quantize_int8` runs onnxruntime's ``quant_pre_process`` (shape
inference, BatchNorm folding) and ``quantize_static`` (QDQ format, per-channel int8 weights, uint8
activations, MinMax ranges) calibrated on the calibration samples the dead-neuron decision used.
:func:`check_int8` compares the int8 file with the float one on held-out samples never used for
calibration (top-1 agreement, largest output change relative to the output scale, accuracy of both
with labels); :func:`quantize_and_check` builds the file beside its target, checks it and moves it
into place only when it disagrees on at most ``max_disagreement`` of the held-out samples.

**Why uint8 activations (U8S8).** onnxruntime's documentation names S8S8 the first choice for QDQ. On
this project's x86-64 CPU (AVX-512 VNNI, onnxruntime 1.32) S8S8 left 20 of 53 convolutions and all 16
residual additions of a compact ResNet-50 in float (the CPU fusions into ``QLinearConv`` / ``QLinearAdd``
want uint8 activations there): 1.07x faster than float at batch 8; U8S8 makes every one an int8 kernel
(2.9x). U8S8 can saturate only on x86-64 *without* VNNI; there ``reduce_range`` (7-bit weights) is on.

**Kept in float** (:data:`FLOAT_OPS`, and every type not in :data:`QUANTIZED_OPS`): non-linear functions
(Softmax, Sigmoid, GELU ...: 8 bits cannot resolve their steep regions; cheap element-wise work),
products of two activations (Mul, Div: the range of a product of two calibrated ranges), normalizations
and reductions (LayerNorm, ReduceMean), and the layer computing each model output (the classifier: its
output *is* the decision, and a small share of the time). ``--quantize-exclude NAME`` keeps more in
float: an operator type (``Gemm``), an ONNX node name, or a module name (``layer4.2.conv3``, matched
through its weights' names).
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import OutputExistsError, UsageError

log = logging.getLogger(__name__)

__all__ = ["QuantizeConfig", "QuantizeInfo", "Int8Agreement", "TensorCalibrationReader", "quantize_int8", "check_int8",
           "check_provider", "quantize_and_check", "int8_speedups", "int8_path_for", "add_quantize_args",
           "config_from_args", "QUANTIZE_MODES", "QUANTIZED_OPS", "FLOAT_OPS", "DEFAULT_MAX_DISAGREEMENT"]

QUANTIZE_MODES = ("int8",)
#: Share of held-out samples on which the int8 model may pick another class than the float one.
DEFAULT_MAX_DISAGREEMENT = 0.01
#: Operator types quantized by default: those with int8 kernels in onnxruntime's CPU provider (or pure
#: data movement between them), where a CNN spends its time.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "Clip", "LeakyRelu", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Resize",
                 "Pad", "Split")
_NONLINEAR = "a non-linear function: 8 bits cannot resolve its steep regions, and it is cheap element-wise work"
_PRODUCT = ("a product or quotient of two activations (gates, attention, in-graph normalization): its range is "
            "that of two calibrated ranges, which one 8-bit scale fits badly")
_STATISTIC = "a normalization or reduction over many values: cheap, and exact in float"
#: Operator types kept in float on purpose, with the reason the report gives.
FLOAT_OPS: dict[str, str] = {
    **{op: _NONLINEAR for op in ("Softmax", "LogSoftmax", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu",
                                 "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Elu", "Selu", "Softplus", "Mish")},
    **{op: _PRODUCT for op in ("Mul", "Div", "Sub")},
    **{op: _STATISTIC for op in ("LayerNormalization", "InstanceNormalization", "GroupNormalization",
                                 "BatchNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2")},
}
OTHER_FLOAT_REASON = "no int8 kernel in onnxruntime's CPU provider"
OUTPUT_LAYER_REASON = "produces a model output (the decision itself), and costs a small share of the time"
USER_REASON = "--quantize-exclude"
_PASS_THROUGH = ("Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Transpose", "Cast")  # output <- layer
_COMPUTE = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass
class QuantizeConfig:
    """How ``--quantize int8`` quantizes and when it ships (defaults documented in the module docstring).

    ``calib_samples``: the first this many calibration samples calibrate the activation ranges (MinMax:
    more samples only widen ranges by rarer outliers, and each costs a pass). ``reduce_range``: None =
    automatic (7-bit weights on x86-64 without VNNI, where U8S8 kernels can saturate).
    ``max_disagreement``: the largest share of held-out samples whose top-1 class may change.
    """

    mode: str = "int8"
    calib_samples: int = 256
    calib_batch: int = 16
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool | None = None
    calibrate_method: str = "minmax"
    keep_output_float: bool = True
    exclude: tuple[str, ...] = ()
    max_disagreement: float = DEFAULT_MAX_DISAGREEMENT
    preprocess: bool = True

    def validate(self) -> None:
        """Raise :class:`UsageError` for settings that cannot work."""
        if self.mode not in QUANTIZE_MODES:
            raise UsageError(f"--quantize {self.mode!r} is not supported; choose {', '.join(QUANTIZE_MODES)}")
        if not 0 <= self.max_disagreement <= 1:
            raise UsageError(f"--quantize-max-disagreement {self.max_disagreement} must be a fraction in [0, 1] "
                             "(0.01: 1% of the held-out samples)")
        types = {self.activation_type, self.weight_type}
        if self.calib_samples < 1 or self.calib_batch < 1 or types - {"uint8", "int8"} \
                or self.calibrate_method not in ("minmax", "entropy", "percentile"):
            raise UsageError(f"invalid quantization settings {self}: calib_samples and calib_batch >= 1, types uint8 "
                             "or int8, calibrate_method minmax, entropy or percentile")

    def resolved_reduce_range(self) -> bool:
        """``reduce_range``, with None resolved for this CPU (True on x86-64 without VNNI)."""
        return _needs_reduce_range() if self.reduce_range is None else bool(self.reduce_range)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exclude": list(self.exclude), "reduce_range": self.resolved_reduce_range(),
                "format": "QDQ"}


@dataclass
class QuantizeInfo:
    """What :func:`quantize_int8` wrote, and which operators stayed in float and why."""

    path: str
    bytes: int
    float_bytes: int
    seconds: float
    calib_samples: int
    settings: dict[str, Any]
    excluded: list[dict[str, str]] = field(default_factory=list)  # nodes kept in float by name: node, op_type, reason
    float_ops: dict[str, dict[str, Any]] = field(default_factory=dict)  # op type -> {"count", "reason"}
    quantized_nodes: int = 0
    preprocessed: bool = False
    preprocess_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Int8Agreement:
    """The int8 file against the float file on held-out samples (both in onnxruntime, CPU provider)."""

    samples: int
    top1_agreement: float | None  # None when the output is not (batch, classes)
    disagreement: float | None
    max_abs_diff: float
    rel_diff: float  # max_abs_diff / max |float output|: the change relative to the output scale
    max_abs_output: float
    accuracy_float: float | None = None  # with labels
    accuracy_int8: float | None = None
    labels: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TensorCalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol (``get_next``) over a tensor of samples, in
    batches; a static batch axis gets batches of exactly that size (the last one wraps around)."""

    def __init__(self, input_name: str, samples: Any, batch: int, static_batch: int | None = None) -> None:
        import numpy as np

        self.input_name = input_name
        self.samples = np.ascontiguousarray(np.asarray(samples, dtype=np.float32))
        self.slices = _index_batches(self.samples.shape[0], static_batch or batch, exact=static_batch is not None)
        self.position = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.position >= len(self.slices):
            return None
        idx = self.slices[self.position]
        self.position += 1
        return {self.input_name: self.samples[idx]}


def _index_batches(n: int, size: int, *, exact: bool) -> list[Any]:
    """Slices covering ``n`` samples in batches of ``size``; ``exact`` pads the last one by wrapping."""
    import numpy as np

    return [np.arange(s, s + size) % n if exact else slice(s, min(s + size, n)) for s in range(0, n, size)]


def _needs_reduce_range() -> bool:
    """True on x86-64 CPUs without VNNI, where U8S8 kernels may saturate (onnxruntime's quantization docs)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown x86 CPU: the setting that cannot saturate
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def int8_path_for(float_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (beside it)."""
    path = Path(float_path)
    return path.with_name(f"{path.name[:-5] if path.name.endswith('.onnx') else path.name}.int8.onnx")


# ----------------------------------------------------------------------------------------- quantizing
def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, calib_x: Any,
                  config: QuantizeConfig | None = None, *, overwrite: bool = False) -> QuantizeInfo:
    """Quantize the float file ``onnx_path`` to ``out_path`` (static, QDQ, per-channel; see the module
    docstring), calibrated on the first ``config.calib_samples`` of ``calib_x`` (N, *input_shape).

    Built in a temporary folder beside ``out_path`` and moved into place when onnx's checker accepts
    it; an existing ``out_path`` is replaced only with ``overwrite``. A ``--quantize-exclude`` NAME that
    matches no node is a :class:`UsageError` naming what exists.
    """
    import onnx

    config = config or QuantizeConfig()
    config.validate()
    source, out = Path(onnx_path), Path(out_path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")
    samples = _numpy(calib_x)[: config.calib_samples]
    if samples.shape[0] < 1:
        raise UsageError("int8 quantization needs at least one calibration sample")
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        prepared, preprocessed, note = _preprocess(source, Path(tmp) / "pre.onnx", config.preprocess)
        model = onnx.load(str(prepared))
        excluded = _excluded_nodes(model, config)
        staged = Path(tmp) / out.name
        _run_quantize_static(prepared, staged, model, samples, config, [e["node"] for e in excluded])
        quantized = onnx.load(str(staged))
        _copy_metadata(onnx.load(str(source), load_external_data=False), quantized, source, config, samples.shape[0])
        onnx.save(quantized, str(staged))
        onnx.checker.check_model(str(staged))
        os.replace(staged, out)
    return QuantizeInfo(
        path=str(out), bytes=out.stat().st_size, float_bytes=source.stat().st_size, seconds=time.perf_counter() - t0,
        calib_samples=int(samples.shape[0]), settings=config.to_dict(), excluded=excluded,
        float_ops=_float_op_table(model, {e["node"] for e in excluded}),
        quantized_nodes=sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node),
        preprocessed=preprocessed, preprocess_note=note)


def _numpy(x: Any) -> Any:
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _preprocess(source: Path, target: Path, enabled: bool) -> tuple[Path, bool, str | None]:
    """onnxruntime's ``quant_pre_process`` (BatchNorm folding, shape inference); the file unchanged
    when it is off or fails (then symbolic shape inference is retried without, and the reason kept)."""
    if not enabled:
        return source, False, "pre-processing off"
    from onnxruntime.quantization.shape_inference import quant_pre_process

    note = None
    from .quiet import quiet

    for kwargs in ({}, {"skip_symbolic_shape": True}):
        try:
            with quiet():
                quant_pre_process(str(source), str(target), **kwargs)
            return target, True, note
        except Exception as exc:  # noqa: BLE001 - a third-party pass; the quantizer works without it
            note = f"quant_pre_process failed ({type(exc).__name__}: {str(exc).strip()[:160]})"
            log.info("%s", note)
    return source, False, note


def _run_quantize_static(prepared: Path, staged: Path, model: Any, samples: Any, config: QuantizeConfig,
                         nodes_to_exclude: list[str]) -> None:
    """onnxruntime's ``quantize_static`` with demp's settings, quietly (its progress goes to DEBUG)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .quiet import quiet

    first = model.graph.input[0]
    dim = first.type.tensor_type.shape.dim[0] if first.type.tensor_type.shape.dim else None
    static = dim.dim_value if dim is not None and dim.HasField("dim_value") and dim.dim_value > 0 else None
    reader = TensorCalibrationReader(first.name, samples, config.calib_batch, static)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with quiet():
        quantize_static(
            str(prepared), str(staged), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=[op for op in QUANTIZED_OPS if op not in config.exclude],
            per_channel=config.per_channel, reduce_range=config.resolved_reduce_range(),
            activation_type=types[config.activation_type], weight_type=types[config.weight_type],
            nodes_to_exclude=nodes_to_exclude, calibrate_method=methods[config.calibrate_method],
            extra_options={"MatMulConstBOnly": True})


def _node_matches(node: Any, name: str, initializers: set[str]) -> bool:
    """A node is NAME when NAME is its op type, its node name, a scope of a TorchScript-style name
    (``/layer1/layer1.0/conv1/Conv``) or the module owning one of its weights (``layer1.0.conv1``)."""
    if name in (node.op_type, node.name) or f"/{name}/" in f"{node.name}/":
        return True
    return any(i in initializers and (i == name or i.startswith(f"{name}.")) for i in node.input)


def _output_layers(model: Any) -> list[Any]:
    """The layer computing each model output, walking back through reshapes (the classifier)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found: list[Any] = []
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producers.get(node.input[0]) if node.input else None
        if node is not None and node.op_type in _COMPUTE and node not in found:
            found.append(node)
    return found


def _excluded_nodes(model: Any, config: QuantizeConfig) -> list[dict[str, str]]:
    """Nodes kept in float by name: the output layers and what ``--quantize-exclude`` names."""
    out: dict[str, dict[str, str]] = {}
    if config.keep_output_float:
        for node in _output_layers(model):
            out[node.name] = {"node": node.name, "op_type": node.op_type, "reason": OUTPUT_LAYER_REASON}
    initializers = {i.name for i in model.graph.initializer}
    for name in config.exclude:
        matched = [n for n in model.graph.node if _node_matches(n, name, initializers)]
        if not matched:
            types = sorted({n.op_type for n in model.graph.node})
            modules = sorted({i.rsplit(".", 1)[0] for i in initializers if "." in i})[:8]
            raise UsageError(f"--quantize-exclude {name}: no operator of the ONNX model matches; give an operator "
                             f"type ({', '.join(types)}), a node name, or a module name (e.g. {', '.join(modules)})")
        for node in matched:
            out.setdefault(node.name, {"node": node.name, "op_type": node.op_type, "reason": f"{USER_REASON} {name}"})
    return list(out.values())


def _float_op_table(model: Any, excluded: set[str]) -> dict[str, dict[str, Any]]:
    """Operator types of the float graph that stay float by type, with their count and the reason."""
    table: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS or node.name in excluded or node.op_type == "Constant":
            continue
        entry = table.setdefault(node.op_type, {"count": 0, "reason": FLOAT_OPS.get(node.op_type, OTHER_FLOAT_REASON)})
        entry["count"] += 1
    return table


def _copy_metadata(float_model: Any, quantized: Any, source: Path, config: QuantizeConfig, samples: int) -> None:
    """The float file's ``demp.*`` metadata (plan hash ...) plus how the int8 file was made."""
    from compressor.fileio import sha256_file

    props = {p.key: p.value for p in float_model.metadata_props if p.key.startswith("demp.")}
    props.update({"demp.quantization": config.mode, "demp.quant_format": "QDQ",
                  "demp.quant_types": f"activations {config.activation_type}, weights {config.weight_type}",
                  "demp.quant_per_channel": str(config.per_channel).lower(),
                  "demp.quant_calib_samples": str(samples), "demp.float_model": source.name,
                  "demp.float_sha256": sha256_file(source)})
    del quantized.metadata_props[:]
    for key, value in props.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value


# ----------------------------------------------------------------------------------------- checking
def check_int8(float_onnx: str | os.PathLike, int8_onnx: str | os.PathLike, heldout_x: Any, labels: Any = None, *,
               chunk: int = 32) -> Int8Agreement:
    """Run both files on the held-out samples (onnxruntime, CPU provider) and compare the outputs:
    top-1 agreement, largest change relative to the float output's scale, and with ``labels`` (class
    indices, one per sample) the accuracy of each."""
    import numpy as np

    from .ort import load_onnx_session, onnx_input_shape

    x = _numpy(heldout_x)
    if x.shape[0] < 1:
        raise UsageError("the int8 check needs at least one held-out sample")
    ref, test = load_onnx_session(float_onnx), load_onnx_session(int8_onnx)
    name, shape = onnx_input_shape(test)
    static = shape[0] if shape and isinstance(shape[0], int) else None
    pairs = []
    for idx in _index_batches(x.shape[0], static or chunk, exact=static is not None):
        pairs.append((ref.run(None, {name: x[idx]})[0], test.run(None, {name: x[idx]})[0]))
    a = np.concatenate([p[0] for p in pairs])[: x.shape[0]].astype(np.float64)
    b = np.concatenate([p[1] for p in pairs])[: x.shape[0]].astype(np.float64)
    max_abs, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(a)))
    result = Int8Agreement(samples=int(x.shape[0]), top1_agreement=None, disagreement=None, max_abs_diff=max_abs,
                           rel_diff=max_abs / max(scale, 1e-12), max_abs_output=scale)
    if a.ndim == 2 and a.shape[1] > 1:
        agree = float(np.mean(a.argmax(1) == b.argmax(1)))
        result.top1_agreement, result.disagreement = agree, 1.0 - agree
        y = None if labels is None else np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).reshape(-1)
        if y is not None and y.shape[0] == a.shape[0]:
            result.accuracy_float = float(np.mean(a.argmax(1) == y))
            result.accuracy_int8 = float(np.mean(b.argmax(1) == y))
            result.labels = int(y.shape[0])
    return result


def check_provider(int8_onnx: str | os.PathLike, device: str, sample: Any) -> dict[str, Any]:
    """Does the int8 file run on onnxruntime's CUDA provider? Runs one batch there when ``device`` is
    cuda and the provider exists, and says which provider did the work; otherwise says why it was not run."""
    import numpy as np

    from .ort import available_providers, load_onnx_session, onnx_input_shape

    if not str(device).startswith("cuda"):
        return {"run": False, "note": "not run: --device cpu (pass --device cuda on a machine with a GPU)"}
    if "CUDAExecutionProvider" not in available_providers():
        return {"run": False, "note": "not run: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    try:
        session = load_onnx_session(int8_onnx, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
        name, x = onnx_input_shape(session)[0], _numpy(sample)
        out, ref = session.run(None, {name: x})[0], load_onnx_session(int8_onnx).run(None, {name: x})[0]
    except Exception as exc:  # noqa: BLE001 - a report figure: the failure is the finding, not a failed command
        return {"run": False, "note": f"failed on the CUDA provider ({type(exc).__name__}: {str(exc)[:160]}); "
                                      "it runs on CPUExecutionProvider"}
    return {"run": True, "providers": list(session.get_providers()), "provider": session.get_providers()[0],
            "max_abs_diff_vs_cpu": float(np.max(np.abs(out - ref))),
            "note": "the CUDA provider runs QDQ files with float kernels between QuantizeLinear/DequantizeLinear; "
                    "int8 kernels on NVIDIA GPUs need the TensorRT provider (runtime onnxruntime-trt)"}


# ----------------------------------------------------------------------------------------- shipping
def quantize_and_check(float_onnx: str | os.PathLike, target: str | os.PathLike, calib_x: Any, heldout_x: Any,
                       labels: Any = None, config: QuantizeConfig | None = None, *, device: str = "cpu",
                       overwrite: bool = False) -> dict[str, Any]:
    """Quantize ``float_onnx``, check the result on ``heldout_x`` and move it to ``target`` only when its
    top-1 class differs from the float model's on at most ``config.max_disagreement`` of the held-out
    samples; returns the report's ``quantization`` section (``shipped``, ``reason``, settings, excluded
    operators, agreement, file sizes, the GPU check).

    A refused file is deleted, and so is an earlier ``target`` (with ``overwrite``: it belonged to the
    float file being replaced); the float model is the output either way. Without held-out samples
    nothing can be checked and nothing ships.
    """
    config = config or QuantizeConfig()
    config.validate()
    target = Path(target)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    held = None if heldout_x is None or int(heldout_x.shape[0]) == 0 else heldout_x
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        info = quantize_int8(float_onnx, Path(tmp) / target.name, calib_x, config)
        agreement = check_int8(float_onnx, info.path, held, labels) if held is not None else None
        reason = _refusal(agreement, config)
        if reason is None:
            os.replace(info.path, target)
        elif target.exists():
            target.unlink()  # the int8 file of the float model this run replaced
    section = {"mode": config.mode, "shipped": reason is None, "file": target.name if reason is None else None,
               "reason": reason, "settings": info.settings, "calib_samples": info.calib_samples,
               "heldout_samples": 0 if held is None else int(held.shape[0]), "excluded": info.excluded,
               "float_ops": info.float_ops, "quantized_tensors": info.quantized_nodes,
               "preprocessed": info.preprocessed, "preprocess_note": info.preprocess_note,
               "agreement": agreement.to_dict() if agreement else None,
               "bytes": {"float": info.float_bytes, "int8": info.bytes}, "seconds": round(info.seconds, 3),
               "latency": [], "gpu": {"run": False, "note": "not run: the int8 model was not shipped"}}
    if reason is None:
        section["gpu"] = check_provider(target, device, held[:2] if held is not None else _numpy(calib_x)[:2])
    else:
        log.warning("int8 model NOT shipped: %s", reason)
    return section


def _refusal(agreement: Int8Agreement | None, config: QuantizeConfig) -> str | None:
    """Why the int8 file does not ship (None: it ships)."""
    if agreement is None:
        return ("no held-out samples to check it on (every sample calibrated the decision); pass "
                "--heldout-samples N with data that has them")
    if agreement.disagreement is not None and agreement.disagreement > config.max_disagreement:
        accuracy = (f", accuracy {agreement.accuracy_float:.1%} (float) -> {agreement.accuracy_int8:.1%} (int8)"
                    if agreement.accuracy_int8 is not None else "")
        return (f"its top-1 class differs from the float compact model's on {agreement.disagreement:.1%} of "
                f"{agreement.samples} held-out samples (limit {config.max_disagreement:.1%}){accuracy}, largest "
                f"output change {agreement.rel_diff:.1%} of the output scale. Keep layers in float "
                "(--quantize-exclude NAME) or accept it (--quantize-max-disagreement)")
    return None


def int8_speedups(latency: Sequence[Mapping[str, Any]],
                  comparisons: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Per (runtime, device, batch) timed with all three (one interleaved measurement): the p50s and int8's
    factors; ``reliable`` when both comparisons with dense were; ``within_noise`` when int8 and compact
    differ by no more than that measurement's noise floor."""
    p50 = {(e["runtime"], e["device"], e["batch"], e["variant"]): e["p50_ms"] for e in latency}
    by_key = {(c["runtime"], c["device"], c["batch"], c.get("variant")): c for c in comparisons}
    rows = []
    for (runtime, device, batch, variant), int8 in p50.items():
        dense, compact = p50.get((runtime, device, batch, "dense")), p50.get((runtime, device, batch, "pruned"))
        pair = [by_key.get((runtime, device, batch, v)) or {} for v in ("pruned", "int8")]
        if variant == "int8" and dense and compact and int8:
            floor = max(c.get("noise_floor") or 0.0 for c in pair)  # the same measurement's A/A floor
            rows.append({"runtime": runtime, "device": device, "batch": batch, "dense_p50_ms": dense,
                         "compact_p50_ms": compact, "int8_p50_ms": int8, "compact_vs_dense": dense / compact,
                         "int8_vs_dense": dense / int8, "int8_vs_compact": compact / int8, "noise_floor": floor,
                         "within_noise": abs(int8 / compact - 1.0) <= floor,
                         "reliable": all(c.get("reliable", True) for c in pair)})
    return rows


# ----------------------------------------------------------------------------------------- command line
def add_quantize_args(p: Any) -> None:
    """``--quantize``, ``--quantize-exclude``, ``--quantize-max-disagreement`` (compress and export)."""
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default=None,
                   help="also write model.int8.onnx: onnxruntime static int8 quantization (QDQ, per-channel weights), "
                   "calibrated on the calibration samples, shipped if it agrees on held-out ones (see below)")
    p.add_argument("--quantize-exclude", action="append", default=[], metavar="NAME",
                   help="keep this in float (repeatable): an ONNX operator type (Gemm), node name, or module "
                   "name (layer4.2.conv3). The output layer and non-linear / product operators stay float anyway")
    p.add_argument("--quantize-max-disagreement", type=float, default=DEFAULT_MAX_DISAGREEMENT, metavar="FRACTION",
                   help="ship int8 only if its top-1 class differs from the float model's on at most this share of "
                   "held-out samples; else a WARNING says so, the float model is kept and the command succeeds")


def config_from_args(args: Any) -> QuantizeConfig | None:
    """The validated :class:`QuantizeConfig` of ``--quantize*`` or a recipe's ``export.quantize*`` (None without)."""
    if not getattr(args, "quantize", None):
        return None
    config = QuantizeConfig(mode=args.quantize, exclude=tuple(args.quantize_exclude or ()),
                            max_disagreement=args.quantize_max_disagreement)
    config.validate()
    return config
