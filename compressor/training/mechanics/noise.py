"""Asymmetric Gaussian noise on the parameters of live neurons (paper 002, Fig. 2; see docs/demp.md).

After every optimizer step DemP adds ``σ_t · N(0, 1)`` to the parameters that belong to *live*
neurons — not multiplied by the learning rate (the authors' newest code adds it to the update after
the optimizer's scaling). Dead neurons get none: noise can push a live neuron across its death border
but can never revive a dead one, which is the asymmetry the method relies on.

:class:`LiveNoise` holds, per (device, dtype), the list of noisy parameters, one persistent buffer of
their total size and one flat 0/1 mask of the live elements, all built once per architecture change.
A step is then ``randn(out=buffer)``, ``buffer *= mask`` and one ``_foreach_add_`` — no per-step
index lookups. Noise comes from a dedicated ``torch.Generator`` per device seeded from ``seed``, whose
state is part of :meth:`LiveNoise.state_dict`, so a resumed run draws exactly the noise the
uninterrupted run would have, and DDP ranks with the same seed stay identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LiveNoise", "NoiseTarget"]


@dataclass
class NoiseTarget:
    """One parameter tensor and the 0/1 mask (same shape, or ``None`` = every element) of its live part."""

    param: nn.Parameter
    mask: Tensor | None = None


@dataclass
class _Bucket:
    device: torch.device
    dtype: torch.dtype
    params: list[Tensor] = field(default_factory=list)
    views: list[Tensor] = field(default_factory=list)
    buffer: Tensor | None = None
    mask: Tensor | None = None  # None: every element is live


def _device_key(device: torch.device) -> str:
    if device.type == "cpu":
        return "cpu"
    return f"{device.type}:{device.index or 0}"


class LiveNoise:
    """Adds ``sigma · N(0, 1)`` to the live elements of a set of parameters, reproducibly."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending: dict[str, Tensor] = {}  # loaded states of devices not in use yet
        self._buckets: list[_Bucket] = []
        self.noisy_elements = 0  # live elements that receive noise
        self.total_elements = 0  # elements of the targeted tensors

    # ------------------------------------------------------------------ targets
    def set_targets(self, targets: Iterable[NoiseTarget]) -> None:
        """Replace the noisy parameters and masks (call after every architecture change or death measurement)."""
        buckets: dict[tuple[str, torch.dtype], _Bucket] = {}
        masks: dict[tuple[str, torch.dtype], list[Tensor | None]] = {}
        noisy = total = 0
        for target in targets:
            p = target.param
            if target.mask is not None:
                if tuple(target.mask.shape) != tuple(p.shape):
                    raise ValueError(f"noise mask shape {tuple(target.mask.shape)} != parameter shape {tuple(p.shape)}")
                live = int(target.mask.count_nonzero())
                if live == 0:
                    continue  # nothing alive in this tensor: skip it entirely
            else:
                live = p.numel()
            key = (_device_key(p.device), p.dtype)
            bucket = buckets.setdefault(key, _Bucket(p.device, p.dtype))
            bucket.params.append(p)
            masks.setdefault(key, []).append(target.mask)
            noisy += live
            total += p.numel()
        for key, bucket in buckets.items():
            sizes = [p.numel() for p in bucket.params]
            bucket.buffer = torch.empty(sum(sizes), device=bucket.device, dtype=bucket.dtype)
            bucket.views = [chunk.view(p.shape)
                            for chunk, p in zip(bucket.buffer.split(sizes), bucket.params, strict=True)]
            parts = masks[key]
            if all(m is None for m in parts):
                bucket.mask = None
            else:
                bucket.mask = torch.cat(
                    [
                        (m.reshape(-1) != 0).to(device=bucket.device, dtype=bucket.dtype)
                        if m is not None
                        else torch.ones(p.numel(), device=bucket.device, dtype=bucket.dtype)
                        for m, p in zip(parts, bucket.params, strict=True)
                    ]
                )
            self._generator(bucket.device)
        self._buckets = list(buckets.values())
        self.noisy_elements = noisy
        self.total_elements = total

    def _generator(self, device: torch.device) -> torch.Generator:
        key = _device_key(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            pending = self._pending.pop(key, None)
            if pending is not None:
                gen.set_state(pending)
            else:
                gen.manual_seed(self.seed)
            self._generators[key] = gen
        return gen

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def apply(self, sigma: float) -> None:
        """Add ``sigma · N(0, 1)`` to every live element; no-op (and no random draw) when ``sigma`` is 0."""
        if sigma == 0.0:
            return
        for bucket in self._buckets:
            assert bucket.buffer is not None
            torch.randn(bucket.buffer.shape, generator=self._generators[_device_key(bucket.device)],
                        out=bucket.buffer)
            if bucket.mask is not None:
                bucket.buffer.mul_(bucket.mask)
            torch._foreach_add_(bucket.params, bucket.views, alpha=float(sigma))

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """``{"seed": int, "generators": {device: uint8 state tensor}}`` — tensors and plain values only."""
        states = dict(self._pending)
        states.update({k: g.get_state() for k, g in self._generators.items()})
        return {"seed": self.seed, "generators": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore generator states. A device with no saved state (e.g. resumed on another device) is reseeded."""
        self.seed = int(state.get("seed", self.seed))
        saved: dict[str, Tensor] = dict(state.get("generators", {}))
        for key in list(self._generators):
            if key in saved:
                self._generators[key].set_state(saved[key].cpu())
            else:
                warnings.warn(
                    f"no saved noise-generator state for device {key}; reseeding it from seed {self.seed} "
                    "(the resumed run's noise will differ from an uninterrupted run)",
                    stacklevel=2,
                )
                self._generators[key].manual_seed(self.seed)
        # devices not in use yet pick their state up when a bucket first lands on them
        self._pending = {k: v.cpu() for k, v in saved.items() if k not in self._generators}
