"""Counting a model: parameters, neurons removed and MACs, one counter for every figure a user sees.

Every count in the console, ``metrics.jsonl``, ``train_summary.json`` and ``report.json`` comes from
these functions, so one model always gets one count (its outputs and their parity are
:mod:`compressor.model_outputs`' job):

* :func:`count_params` — parameter elements, a shared (tied) parameter counted once;
* :func:`neuron_sparsity` — the share of neurons removed;
* :func:`count_macs` — multiply-accumulates of one forward pass on one sample (FLOPs = 2 x MACs),
  per module and in total. The counter is fvcore's :class:`~fvcore.nn.FlopCountAnalysis` (a
  TorchScript trace) with explicit handlers for the operators fvcore skips (below). A model that
  ``torch.jit.trace`` cannot trace (data-dependent control flow, a forward defined as a closure) is
  counted with torch's :class:`~torch.utils.flop_counter.FlopCounterMode` instead, which runs the
  ordinary forward pass; it counts matrix products, convolutions and attention only (no pooling or
  element-wise arithmetic), so :attr:`MacCount.counter` records which counter produced a number;
* :func:`compare_macs` — dense against pruned, per module.

fvcore handlers (:data:`EXTRA_HANDLES`), so that no operator counts as zero silently:

* ``scaled_dot_product_attention``: the two matrix products, B·H·Lq·Lk·(E + Ev) MACs (the convention of
  ``FlopCounterMode``; the softmax is not counted);
* pooling (max / avg, 1-3 d, adaptive max): one per *input* element, like fvcore's own
  ``adaptive_avg_pool2d`` handler;
* element-wise arithmetic (``add``, ``mul``, ... and in-place forms: residual additions,
  squeeze-excitation scaling), ``softmax`` / ``log_softmax`` and reductions (``mean``, ``sum``): one
  per output (reductions: input) element;
* activations other than ReLU: zero, like fvcore's ``relu`` (runtimes fuse them into the producer).

Any operator still unhandled is listed in :attr:`MacCount.unsupported_ops` and in its warnings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch import Tensor, nn

from .errors import DempError
from .inputs import KeywordInputs, ModelInputs, call_model
from .model_outputs import module_device

__all__ = [
    "neuron_sparsity", "count_params", "count_macs", "compare_macs", "MacCount", "MacComparison", "ModuleRow",
    "EXTRA_HANDLES", "FVCORE", "FLOP_COUNTER_MODE",
]

FVCORE = "fvcore"
FLOP_COUNTER_MODE = "torch.FlopCounterMode"

# --------------------------------------------------------------------------------------- parameters


def neuron_sparsity(before: int | None, after: int | None) -> float | None:
    """The share of neurons removed, ``1 - after / before`` (paper 000 Table 1's "removed ratio").

    ``after`` counts the neurons still in the model, dead or not (a dead neuron kept by ``round_to``
    is not removed). The one definition behind every ``neuron_sparsity`` a user sees: the console, the
    metrics, ``train_summary.json``, ``report.json`` and the ONNX metadata. None without a count.
    """
    if not isinstance(before, int) or not isinstance(after, int) or before <= 0:
        return None
    return 1 - after / before


def count_params(model: nn.Module) -> int:
    """Parameter elements of ``model``; a parameter shared by several modules counts once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --------------------------------------------------------------------------------------------- MACs

Handle = Callable[[list[Any], list[Any]], float]


def _shape(value: Any) -> list[int] | None:
    """Shape of a traced TorchScript value, or None for non-tensors (scalars, lists)."""
    try:
        from fvcore.nn.jit_handles import get_shape

        shape = get_shape(value)
    except Exception:  # noqa: BLE001 - fvcore raises assorted errors for non-tensor values
        return None
    return None if shape is None else [int(d) for d in shape]


def _per_element(of_input: bool) -> Handle:
    def handle(inputs: list[Any], outputs: list[Any]) -> float:
        values = inputs if of_input else outputs
        shape = _shape(values[0]) if values else None
        return float(prod(shape)) if shape is not None else 0.0

    return handle


def _zero(inputs: list[Any], outputs: list[Any]) -> float:
    return 0.0


def _sdpa(inputs: list[Any], outputs: list[Any]) -> float:
    """Q @ K^T and attn @ V: B*H*Lq*Lk*E + B*H*Lq*Lk*Ev multiply-accumulates."""
    q, k, v = (_shape(t) for t in inputs[:3])
    if not q or not k or not v:
        return 0.0
    return float(prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1]))


def _native_mha(inputs: list[Any], outputs: list[Any]) -> float:
    """``nn.MultiheadAttention``'s fused eval path: the q/k/v and output projections (Lq*E*E each for q
    and out, Lk*E*E each for k and v) plus Q @ K^T and attn @ V (2*Lq*Lk*E), per batch element."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    if not q or not k:
        return 0.0
    e, lq, lk = q[-1], q[-2], k[-2]
    return float(prod(q[:-2]) * (2 * lq * e * e + 2 * lk * e * e + 2 * lq * lk * e))


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
    "aten::_native_multi_head_attention": _native_mha,
    **{f"aten::{op}": _per_element(of_input=False) for op in _ELEMENTWISE},
    **{f"aten::{op}": _per_element(of_input=True) for op in _REDUCTIONS + _POOLS},
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
    counter: str = FVCORE  # which counter produced the numbers (see the module docstring)

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs (a multiply and an add)."""
        return 2 * self.total_macs

    def to_dict(self, *, modules: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "macs": self.total_macs, "params": self.params, "counter": self.counter,
            "input_shape": list(self.input_shape), "by_operator": dict(self.by_operator),
            "unsupported_ops": dict(self.unsupported_ops), "extra_handled_ops": dict(self.extra_handled_ops),
            "uncalled_modules": list(self.uncalled_modules), "warnings": list(self.warnings),
        }
        if modules:
            data["by_module"] = dict(self.by_module)
        return data


def _example(model: nn.Module, example_input: ModelInputs | Sequence[int],
             device: str | torch.device | None) -> ModelInputs:
    dev = torch.device(device) if device is not None else module_device(model)
    if isinstance(example_input, (Tensor, KeywordInputs)):
        return example_input[:1].detach().to(dev)
    return torch.zeros((1, *[int(d) for d in example_input]), device=dev)


def _params_by_module(model: nn.Module) -> dict[str, int]:
    return {name: count_params(module) for name, module in model.named_modules()}


def _fvcore_count(model: nn.Module, x: ModelInputs) -> MacCount:
    with warnings.catch_warnings():  # fvcore's import scripts a function (a torch.jit deprecation warning)
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, (x,))
    analysis.set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = int(analysis.total())
        by_module_operator = analysis.by_module_and_operator()
        unsupported = {k: int(v) for k, v in analysis.unsupported_ops().items()}
        count = MacCount(
            total_macs=total, params=count_params(model),
            by_module={k: int(v) for k, v in analysis.by_module().items()},
            params_by_module=_params_by_module(model),
            by_operator={k: int(v) for k, v in analysis.by_operator().items()},
            unsupported_ops=unsupported, extra_handled_ops={}, uncalled_modules=sorted(analysis.uncalled_modules()),
            input_shape=list(x.shape[1:]))
    extra_names = {name.split("::", 1)[1] for name in EXTRA_HANDLES}
    count.extra_handled_ops = {op: int(m) for op, m in by_module_operator.get("", {}).items() if op in extra_names}
    if unsupported:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(unsupported.items()))
        count.warnings.append(f"MACs of these operators are not counted (no handler): {listed}")
    return count


def _flop_counter_count(model: nn.Module, x: ModelInputs, why: str) -> MacCount:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        call_model(model, x)
    root = type(model).__name__
    by_module: dict[str, int] = {}
    by_operator: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            for op, flops in ops.items():
                key = str(getattr(op, "__name__", op)).split(".")[0]
                by_operator[key] = by_operator.get(key, 0) + int(flops) // 2
            continue
        short = "" if name == root else name.removeprefix(root + ".")
        by_module[short] = int(sum(ops.values())) // 2
    total = int(counter.get_total_flops()) // 2
    by_module.setdefault("", total)
    note = (f"MACs counted with torch's FlopCounterMode ({why}), which counts matrix products, "
            "convolutions and attention only")
    return MacCount(total_macs=total, params=count_params(model), by_module=by_module,
                    params_by_module=_params_by_module(model), by_operator=by_operator, unsupported_ops={},
                    extra_handled_ops={}, uncalled_modules=[], input_shape=list(x.shape[1:]), warnings=[note],
                    counter=FLOP_COUNTER_MODE)


def count_macs(model: nn.Module, example_input: ModelInputs | Sequence[int], *,
               device: str | torch.device | None = None, counter: str | None = None) -> MacCount:
    """Count MACs and parameters of ``model`` for one sample (see the module docstring).

    ``example_input`` is a tensor (its first sample is used, so counts are per sample) or a sample
    shape without the batch dimension. The model runs in eval mode on ``device`` (default: where its
    parameters are) on zeros or the given sample, so no random numbers are drawn, and its train/eval
    mode is restored afterwards. ``counter`` forces :data:`FVCORE` or :data:`FLOP_COUNTER_MODE` (to
    count a second model like a first one); by default fvcore, falling back when it cannot trace.
    Raises :class:`DempError` only when no counter can run the model.
    """
    if counter not in (None, FVCORE, FLOP_COUNTER_MODE):
        raise ValueError(f"unknown MAC counter {counter!r}; use {FVCORE!r} or {FLOP_COUNTER_MODE!r}")
    x = _example(model, example_input, device)
    was_training = model.training
    model.eval()
    try:
        why = "asked for"
        if isinstance(x, KeywordInputs) and counter != FVCORE:  # fvcore traces positional inputs only
            counter, why = FLOP_COUNTER_MODE, "the model takes keyword inputs, which fvcore cannot trace"
        if counter != FLOP_COUNTER_MODE:
            try:
                return _fvcore_count(model, x)
            except Exception as exc:  # noqa: BLE001 - torch.jit.trace fails on data-dependent models, many types
                if counter == FVCORE:
                    raise DempError(f"cannot count MACs of {type(model).__name__} with fvcore: tracing failed "
                                    f"({type(exc).__name__}: {exc})") from None
                why = (f"fvcore could not trace the model: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
        try:
            return _flop_counter_count(model, x, why)
        except Exception as exc:  # noqa: BLE001 - the model's own forward failed
            raise DempError(f"cannot count MACs of {type(model).__name__} ({why}): its forward pass failed "
                            f"under FlopCounterMode ({type(exc).__name__}: {exc})") from None
    finally:
        model.train(was_training)


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
        counters = sorted({self.dense.counter, self.pruned.counter})
        return {
            "params_before": self.dense.params, "params_after": self.pruned.params,
            "macs_before": self.dense.total_macs, "macs_after": self.pruned.total_macs,
            "mac_ratio": self.mac_ratio, "param_ratio": self.param_ratio,
            "input_shape": list(self.dense.input_shape), "mac_counter": " + ".join(counters),
            "mac_warnings": sorted(set(self.dense.warnings) | set(self.pruned.warnings)),
        }

    def table(self, *, depth: int | None = 2, min_share: float = 0.0) -> str:
        """Per-module before/after text table (modules up to ``depth`` dots deep)."""
        header = (f"{'module':<36} {'MACs before':>14} {'MACs after':>14} {'ratio':>6} {'params before':>14} "
                  f"{'params after':>13}")
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


def compare_macs(dense: nn.Module, pruned: nn.Module, example_input: Tensor | Sequence[int]) -> MacComparison:
    """Count both models at the same input and build the per-module before/after table."""
    before = count_macs(dense, example_input)
    after = count_macs(pruned, example_input, counter=None if before.counter == FVCORE else before.counter)
    if after.counter != before.counter:  # one counter for both, or the ratio would compare two meanings
        before = count_macs(dense, example_input, counter=after.counter)
    rows = [ModuleRow(name=name, macs_before=macs, macs_after=after.by_module.get(name),
                      params_before=before.params_by_module.get(name, 0),
                      params_after=after.params_by_module.get(name))
            for name, macs in before.by_module.items()]
    return MacComparison(dense=before, pruned=after, rows=rows)
