"""Multiply-accumulate (MAC) and parameter counts, per module and in total, dense versus pruned.

Counting is fvcore's :class:`~fvcore.nn.FlopCountAnalysis` (a TorchScript trace of one forward pass).
fvcore counts one fused multiply-add as one "flop", so its numbers are **MACs**; FLOPs = 2 x MACs.

fvcore has no handler for several operators that torchvision models use. Instead of letting them count
as zero silently, :data:`EXTRA_HANDLES` gives each an explicit cost, documented here:

* ``scaled_dot_product_attention``: the two matrix products, B·H·Lq·Lk·(E + Ev) MACs (the same
  convention as :class:`torch.utils.flop_counter.FlopCounterMode`; the softmax is not counted).
* pooling (max / avg, 1-3 d, adaptive max): one per *input* element, like fvcore's own
  ``adaptive_avg_pool2d`` handler.
* element-wise arithmetic (``add``, ``sub``, ``mul``, ``div`` and in-place forms, residual additions,
  squeeze-excitation scaling), ``softmax`` / ``log_softmax`` and reductions (``mean``, ``sum``):
  one per output (reductions: input) element.
* activations other than ReLU (``hardtanh``/ReLU6, ``gelu``, ``silu``, ``hardswish``, ``sigmoid``, ...):
  zero, the same as fvcore's built-in treatment of ``relu`` — inference runtimes fuse them into the
  producing convolution.

Any operator that is still unhandled is listed in :attr:`MacCount.unsupported_ops` (with how often
it occurred) and returned as a warning string; it is never dropped without a trace.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Sequence

import torch
from torch import nn

from compressor.errors import DempError

log = logging.getLogger(__name__)

Handle = Callable[[list[Any], list[Any]], float]


def _shape(value: Any) -> list[int] | None:
    """Shape of a traced TorchScript value, or None for non-tensors (scalars, lists)."""
    try:
        from fvcore.nn.jit_handles import get_shape

        shape = get_shape(value)
    except Exception:  # fvcore raises assorted errors for non-tensor values
        return None
    if shape is None:
        return None
    return [int(d) for d in shape]


def _per_output(scale: float = 1.0) -> Handle:
    def handle(inputs: list[Any], outputs: list[Any]) -> float:
        shape = _shape(outputs[0]) if outputs else None
        return scale * prod(shape) if shape is not None else 0.0

    return handle


def _per_input(scale: float = 1.0) -> Handle:
    def handle(inputs: list[Any], outputs: list[Any]) -> float:
        shape = _shape(inputs[0]) if inputs else None
        return scale * prod(shape) if shape is not None else 0.0

    return handle


def _zero(inputs: list[Any], outputs: list[Any]) -> float:
    return 0.0


def _sdpa(inputs: list[Any], outputs: list[Any]) -> float:
    """Q @ K^T and attn @ V: B*H*Lq*Lk*E + B*H*Lq*Lk*Ev multiply-accumulates."""
    q, k, v = (_shape(t) for t in inputs[:3])
    if not q or not k or not v:
        return 0.0
    batch = prod(q[:-2])
    lq, e = q[-2], q[-1]
    lk, ev = k[-2], v[-1]
    return float(batch * lq * lk * (e + ev))


_ELEMENTWISE = ("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "pow", "sqrt", "rsqrt", "exp",
                "softmax", "log_softmax", "_softmax")
_REDUCTIONS = ("mean", "sum")
_POOLS = ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
          "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_avg_pool1d",
          "adaptive_avg_pool3d")
_ACTIVATIONS = ("hardtanh", "hardtanh_", "relu6", "relu6_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_",
                "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "tanh", "tanh_", "leaky_relu",
                "leaky_relu_", "elu", "elu_", "selu", "selu_", "mish", "mish_", "softplus", "prelu")
_FREE = ("dropout_", "feature_dropout", "alpha_dropout", "unflatten", "view_as", "expand_as", "repeat",
         "flatten", "contiguous", "clone", "pad", "fill_", "ne", "lt", "le", "masked_fill_", "where")

#: Extra fvcore handles, by TorchScript op name (see the module docstring for the conventions).
EXTRA_HANDLES: dict[str, Handle] = {
    "aten::scaled_dot_product_attention": _sdpa,
    **{f"aten::{op}": _per_output() for op in _ELEMENTWISE},
    **{f"aten::{op}": _per_input() for op in _REDUCTIONS + _POOLS},
    **{f"aten::{op}": _zero for op in _ACTIVATIONS + _FREE},
}


@dataclass
class MacCount:
    """MACs (multiply-accumulates) and parameters of one model at one input shape (batch 1)."""

    total_macs: int
    params: int
    by_module: dict[str, int]  # module name -> MACs (inclusive of children); "" is the whole model
    params_by_module: dict[str, int]  # module name -> parameters (inclusive of children)
    by_operator: dict[str, int]  # op name (e.g. "conv") -> MACs
    unsupported_ops: dict[str, int]  # ops fvcore and EXTRA_HANDLES could not count -> occurrences
    extra_handled_ops: dict[str, int]  # ops counted by EXTRA_HANDLES -> MACs they contributed
    uncalled_modules: list[str]  # modules not called in forward (their work is attributed to a parent)
    input_shape: list[int]
    warnings: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs (a multiply and an add)."""
        return 2 * self.total_macs

    def to_dict(self, *, modules: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "macs": self.total_macs,
            "params": self.params,
            "input_shape": list(self.input_shape),
            "by_operator": dict(self.by_operator),
            "unsupported_ops": dict(self.unsupported_ops),
            "extra_handled_ops": dict(self.extra_handled_ops),
            "uncalled_modules": list(self.uncalled_modules),
            "warnings": list(self.warnings),
        }
        if modules:
            data["by_module"] = dict(self.by_module)
        return data


@dataclass
class ModuleRow:
    """One line of the dense-versus-pruned per-module table."""

    name: str
    macs_before: int
    macs_after: int | None  # None when the module no longer exists in the pruned model
    params_before: int
    params_after: int | None

    @property
    def mac_ratio(self) -> float | None:
        if self.macs_after is None or self.macs_before == 0:
            return None
        return self.macs_after / self.macs_before


@dataclass
class MacComparison:
    """Dense and pruned side by side."""

    dense: MacCount
    pruned: MacCount
    rows: list[ModuleRow]

    @property
    def mac_ratio(self) -> float:
        """pruned MACs / dense MACs (0.5 means half the multiply-accumulates)."""
        return self.pruned.total_macs / self.dense.total_macs if self.dense.total_macs else float("nan")

    @property
    def param_ratio(self) -> float:
        return self.pruned.params / self.dense.params if self.dense.params else float("nan")

    def model_section(self) -> dict[str, Any]:
        """The report's ``model`` section."""
        return {
            "params_before": self.dense.params,
            "params_after": self.pruned.params,
            "macs_before": self.dense.total_macs,
            "macs_after": self.pruned.total_macs,
            "mac_ratio": self.mac_ratio,
            "param_ratio": self.param_ratio,
            "input_shape": list(self.dense.input_shape),
            "mac_warnings": sorted(set(self.dense.warnings) | set(self.pruned.warnings)),
        }

    def table(self, *, depth: int | None = 2, min_share: float = 0.0) -> str:
        """Per-module before/after text table (modules up to ``depth`` dots deep)."""
        header = f"{'module':<36} {'MACs before':>14} {'MACs after':>14} {'ratio':>6} {'params before':>14} {'params after':>13}"
        lines = [header, "-" * len(header)]
        total = max(self.dense.total_macs, 1)
        for row in self.rows:
            if depth is not None and row.name and row.name.count(".") >= depth:
                continue
            if row.macs_before / total < min_share and row.name:
                continue
            ratio = "" if row.mac_ratio is None else f"{row.mac_ratio:.2f}"
            after = "-" if row.macs_after is None else f"{row.macs_after:,}"
            pafter = "-" if row.params_after is None else f"{row.params_after:,}"
            lines.append(f"{row.name or '(total)':<36} {row.macs_before:>14,} {after:>14} {ratio:>6} "
                         f"{row.params_before:>14,} {pafter:>13}")
        return "\n".join(lines)


def count_macs(model: nn.Module, example_input: torch.Tensor | Sequence[int], *, device: str | torch.device | None = None) -> MacCount:
    """Count MACs and parameters of ``model`` for one sample.

    ``example_input`` is a tensor (its first sample is used, so counts are per sample) or a sample
    shape without the batch dimension. The model runs in eval mode on ``device`` (default: where its
    parameters are) and its train/eval mode is restored afterwards.
    """
    with warnings.catch_warnings():  # fvcore's import scripts a function (a torch.jit deprecation warning)
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    dev = torch.device(device) if device is not None else _module_device(model)
    if isinstance(example_input, torch.Tensor):
        x = example_input[:1].detach().to(dev)
    else:
        x = torch.zeros((1, *[int(d) for d in example_input]), device=dev)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, (x,))
        analysis.set_op_handle(**EXTRA_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                total = int(analysis.total())
            except Exception as exc:  # torch.jit.trace fails on data-dependent models, with many types
                raise DempError(
                    f"cannot count MACs: tracing {type(model).__name__} failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the model must be traceable with torch.jit.trace"
                ) from None
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
            by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
            by_module_operator = analysis.by_module_and_operator()
            unsupported = {k: int(v) for k, v in analysis.unsupported_ops().items()}
            uncalled = sorted(analysis.uncalled_modules())
    finally:
        model.train(was_training)

    extra_names = {name.split("::", 1)[1] for name in EXTRA_HANDLES}
    extra: dict[str, int] = {}
    for op, macs in by_module_operator.get("", {}).items():
        if op in extra_names:
            extra[op] = int(macs)
    params_by_module = _params_by_module(model)
    notes = []
    if unsupported:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(unsupported.items()))
        notes.append(f"MACs of these operators are not counted (no handler): {listed}")
    return MacCount(
        total_macs=total,
        params=params_by_module.get("", 0),
        by_module=by_module,
        params_by_module=params_by_module,
        by_operator=by_operator,
        unsupported_ops=unsupported,
        extra_handled_ops=extra,
        uncalled_modules=uncalled,
        input_shape=list(x.shape[1:]),
        warnings=notes,
    )


def compare_macs(dense: nn.Module, pruned: nn.Module, example_input: torch.Tensor | Sequence[int]) -> MacComparison:
    """Count both models at the same input and build the per-module before/after table."""
    before = count_macs(dense, example_input)
    after = count_macs(pruned, example_input)
    rows = []
    for name, macs in before.by_module.items():
        rows.append(ModuleRow(
            name=name,
            macs_before=macs,
            macs_after=after.by_module.get(name),
            params_before=before.params_by_module.get(name, 0),
            params_after=after.params_by_module.get(name),
        ))
    return MacComparison(dense=before, pruned=after, rows=rows)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _params_by_module(model: nn.Module) -> dict[str, int]:
    """Parameters per module name, children included, each shared parameter counted once per module."""
    out: dict[str, int] = {}
    for name, module in model.named_modules():
        out[name] = count_params(module)
    return out


def _module_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")
