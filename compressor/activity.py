"""Per-channel activity statistics at the *inputs* of consuming layers (Conv / Linear).

Why inputs: a channel can be removed losslessly exactly when every layer that reads it receives only
zeros. Measuring where a channel is consumed (rather than at activation modules) works with shared
activation modules (torchvision's ResNet reuses one ``nn.ReLU``), functional activations
(``F.relu``) and residual streams read by several layers.

Statistics are streamed over batches in eval mode under ``torch.no_grad`` (not inference mode: the
tensors' version counters let a shared reduction be reused safely) and kept in float64
on the CPU: max|x|, max x, sum |x| (for mean |x|), number of non-zero elements, elements seen. When
several consumers read the same tensor (a residual block's ``conv1`` and ``downsample``) it is reduced
once and the result shared.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import DataError, DempError
from .inputs import LABEL_KEYS, KeywordInputs, ModelInputs, call_model
from .model_outputs import output_tensor
from .progress import progress_bar

log = logging.getLogger(__name__)

CONSUMER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: One batch's per-channel (max, max |x|, sum |x|, nonzero count); a field not asked for is None.
_Reduced = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]

ALL_FIELDS = ("max_abs", "max", "sum_abs", "nonzero")


@dataclass
class ChannelStats:
    """Statistics of one consuming layer's input, one entry per input channel."""

    max_abs: Tensor
    max: Tensor
    sum_abs: Tensor
    nonzero: Tensor
    count: int  # elements seen per channel (samples x spatial positions)

    @classmethod
    def empty(cls, channels: int) -> ChannelStats:
        z = torch.zeros(channels, dtype=torch.float64)
        return cls(max_abs=z.clone(), max=torch.full((channels,), -torch.inf, dtype=torch.float64),
                   sum_abs=z.clone(), nonzero=z.clone(), count=0)

    @property
    def channels(self) -> int:
        return self.max_abs.numel()

    @property
    def mean_abs(self) -> Tensor:
        return self.sum_abs / max(self.count, 1)

    @property
    def frac_nonzero(self) -> Tensor:
        return self.nonzero / max(self.count, 1)


class ActivityStats:
    """Statistics for every hooked consumer, keyed by module name."""

    def __init__(self, layers: dict[str, ChannelStats] | None = None, samples: int = 0,
                 outputs: list[Tensor] | None = None) -> None:
        self.layers: dict[str, ChannelStats] = dict(layers or {})
        self.samples = samples
        # the model's outputs on the measured samples (CPU), when recorded: compress() compares the
        # pruned model against them without running the dense model a second time
        self.outputs: list[Tensor] = list(outputs or [])

    def __getitem__(self, name: str) -> ChannelStats:
        return self.layers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def items(self):
        return self.layers.items()

    def all_reduce(self, group: Any = None) -> ActivityStats:
        """Reduce across distributed ranks in place: MAX for maxima, SUM for sums and counts.

        Every rank must hold statistics for the same layers in the same order (they run the same
        model). Afterwards every rank holds identical statistics, so every rank decides the same.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        names = sorted(self.layers)
        nccl = dist.get_backend(group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        maxima = torch.cat([torch.cat([self.layers[n].max_abs, self.layers[n].max]) for n in names]).to(device)
        sums = torch.cat([torch.cat([self.layers[n].sum_abs, self.layers[n].nonzero,
                                     torch.tensor([float(self.layers[n].count)], dtype=torch.float64)])
                          for n in names] + [torch.tensor([float(self.samples)], dtype=torch.float64)]).to(device)
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        maxima, sums = maxima.cpu(), sums.cpu()
        mo = so = 0
        for n in names:
            c = self.layers[n].channels
            st = self.layers[n]
            st.max_abs, st.max = maxima[mo:mo + c].clone(), maxima[mo + c:mo + 2 * c].clone()
            st.sum_abs, st.nonzero = sums[so:so + c].clone(), sums[so + c:so + 2 * c].clone()
            st.count = int(sums[so + 2 * c].item())
            mo += 2 * c
            so += 2 * c + 1
        self.samples = int(sums[so].item())
        return self


def _channel_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else -1


class _Recorder:
    """Forward pre-hooks that reduce each consumer's input per channel and accumulate it."""

    def __init__(self, modules: dict[str, nn.Module], fields: Sequence[str]) -> None:
        unknown = set(fields) - set(ALL_FIELDS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; valid: {ALL_FIELDS}")
        self.fields = tuple(fields)
        self.modules = modules
        self.stats: dict[str, ChannelStats] = {}
        self._cache: dict[tuple, tuple[weakref.ref, _Reduced]] = {}
        self._scratch: dict[tuple, Tensor] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]

    def new_batch(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._cache.clear()
        self._scratch.clear()

    def _scratch_like(self, x: Tensor) -> Tensor:
        """A reusable buffer shaped like ``x``: fresh large allocations cost more than the reductions."""
        buf = self._scratch.get((x.device, x.dtype))
        if buf is None or buf.numel() < x.numel():
            buf = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
            self._scratch[(x.device, x.dtype)] = buf
        return buf[: x.numel()].view(x.shape)

    def _reduce(self, x: Tensor, dim: int) -> _Reduced:
        dims = [d for d in range(x.dim()) if d != dim % x.dim()]
        want = self.fields
        if not x.is_contiguous():
            x = x.contiguous()
        amax = x.amax(dim=dims)
        amin = x.amin(dim=dims) if ("max_abs" in want or "sum_abs" in want) else None
        max_abs = torch.maximum(amax, -amin) if amin is not None and "max_abs" in want else None
        sum_abs = None
        if amin is not None and "sum_abs" in want:
            # post-ReLU inputs (the common case) are non-negative: skip the |x| pass. Per-batch sums
            # in the input's precision, accumulated across batches in float64.
            nonneg = bool((amin >= 0).all())
            sum_abs = x.sum(dim=dims) if nonneg else torch.abs(x, out=self._scratch_like(x)).sum(dim=dims)
        nonzero = None
        if "nonzero" in want:
            nonzero = torch.ne(x, 0, out=self._scratch_like(x)).sum(dim=dims)
        return amax, max_abs, sum_abs, nonzero

    def _hook(self, name: str):
        module = self.modules[name]
        dim = _channel_dim(module)

        def hook(_mod: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], Tensor):
                return
            x = args[0]
            if not x.is_floating_point():
                return
            # Share one reduction between consumers of the same tensor object. The weak reference
            # makes sure a freed tensor whose memory was reused is never mistaken for the old one.
            key = (id(x), x.data_ptr(), tuple(x.shape), x._version, dim)
            entry = self._cache.get(key)
            if entry is not None and entry[0]() is x:
                reduced = entry[1]
            else:
                reduced = self._reduce(x.detach(), dim)
                self._cache[key] = (weakref.ref(x), reduced)
            self._accumulate(name, x, dim, reduced)

        return hook

    def _accumulate(self, name: str, x: Tensor, dim: int, reduced: _Reduced) -> None:
        amax, max_abs, sum_abs, nonzero = reduced
        channels = x.shape[dim]
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = ChannelStats.empty(channels)
        elif st.channels != channels:
            raise DempError(f"layer {name} received {channels} input channels after {st.channels}; "
                            "statistics must be collected on a fixed architecture")
        amax64 = amax.to("cpu", torch.float64)
        if not torch.isfinite(amax64).all() or (max_abs is not None and not torch.isfinite(max_abs).all()):
            raise DempError(
                f"NaN or Inf in the input of layer {name}; the checkpoint or the data is broken "
                "(check the weights for NaN/Inf and the data normalization)"
            )
        st.max = torch.maximum(st.max, amax64)
        if max_abs is not None:
            st.max_abs = torch.maximum(st.max_abs, max_abs.to("cpu", torch.float64))
        if sum_abs is not None:
            st.sum_abs += sum_abs.to("cpu", torch.float64)
        if nonzero is not None:
            st.nonzero += nonzero.to("cpu", torch.float64)
        st.count += x.numel() // channels


def consumer_modules(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The Conv/Linear modules of ``model`` (optionally restricted to ``names``), by name."""
    found: dict[str, nn.Module] = {n: m for n, m in model.named_modules() if isinstance(m, CONSUMER_TYPES)}
    if names is None:
        return found
    names = list(names)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"not Conv/Linear layers of this model: {missing[:5]}")
    return {n: found[n] for n in names}


def batch_input(batch: Any) -> ModelInputs:
    """The model input of a batch: a tensor, the first of an (inputs, targets) pair, a dict's ``x``, or
    the tensors of a dict of keyword inputs (Hugging Face style; label keys left out)."""
    if isinstance(batch, (Tensor, KeywordInputs)):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], (Tensor, KeywordInputs)):
        return batch[0]
    if isinstance(batch, dict) and "x" in batch:
        return batch["x"]
    if isinstance(batch, dict) and batch:
        tensors = {k: v for k, v in batch.items() if k not in LABEL_KEYS and isinstance(v, Tensor)}
        if tensors:
            try:
                return KeywordInputs(tensors)
            except ValueError as exc:
                raise DataError(f"cannot use this batch as keyword inputs: {exc}") from None
    raise DataError(f"cannot find the input tensor in a batch of type {type(batch).__name__}; "
                    "yield tensors, (inputs, targets) pairs, or dicts of keyword input tensors")


def collect_activity(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    layers: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "activity",
    fields: Sequence[str] = ALL_FIELDS,
    max_samples: int | None = None,
    record_outputs: bool = False,
) -> ActivityStats:
    """Run ``model`` over ``batches`` in eval mode and record per-channel input statistics.

    ``layers`` restricts the hooked consumers (default: every Conv/Linear). ``fields`` restricts what
    is computed (the dead criterion needs only ``max_abs``; fewer fields is faster). With
    ``record_outputs`` the model's outputs are kept (on the CPU) in ``.outputs``. The model's
    train/eval mode is restored afterwards.
    """
    modules = consumer_modules(model, layers)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    recorder = _Recorder(modules, fields)
    was_training = model.training
    outputs: list[Tensor] = []
    model.eval()
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    bar = progress_bar(total, desc, enabled=progress, unit="batch")  # plain lines when stderr is no terminal
    try:
        samples = _run_batches(model, batches, recorder, device, max_samples, outputs if record_outputs else None, bar)
    finally:
        recorder.close()
        model.train(was_training)
        bar.close()
    if samples == 0:
        raise DataError("no samples to measure activity on: the calibration set is empty")
    missing = [n for n in modules if n not in recorder.stats]
    if missing:
        log.debug("layers never called during the forward pass: %s", missing[:10])
    return ActivityStats(recorder.stats, samples, outputs)


@torch.no_grad()
def _run_batches(model: nn.Module, batches: Iterable[Any], recorder: _Recorder, device: Any, max_samples: int | None,
                 outputs: list[Tensor] | None, bar: Any) -> int:
    """Forward every batch (up to ``max_samples`` samples) with the recorder's hooks on; returns the count."""
    samples = 0
    for batch in batches:
        x = batch_input(batch)
        if max_samples is not None and samples + x.shape[0] > max_samples:
            x = x[: max_samples - samples]
        if x.shape[0] == 0:
            break
        recorder.new_batch()
        out = call_model(model, x.to(device, non_blocking=True))
        if outputs is not None:
            outputs.append(output_tensor(out).detach().float().cpu())
        samples += x.shape[0]
        bar.update(1)
        if max_samples is not None and samples >= max_samples:
            break
    return samples
