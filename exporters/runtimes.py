"""The runtimes demp can time a model on: one object each, and their registry.

A :class:`Runtime` knows its name, which model it takes (an ``nn.Module`` or an ONNX file), the devices it
runs on, the onnxruntime execution providers it asks for on each device, how to prepare a variant (the
model on the device, compiled, or an onnxruntime session) and how to run a prepared variant at one batch
size. :data:`REGISTRY` maps the names ``--runtimes`` accepts to them, so the rest of the timing code asks a
runtime instead of comparing names. A new runtime is one object plus one line in :data:`REGISTRY`.
This module imports neither torch nor onnxruntime (``demp --help`` lists the registry's names): the
runners that do are in :mod:`.runners`, loaded when something is timed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from compressor.errors import DempError, UsageError

if TYPE_CHECKING:  # the registry stays light: `demp --help` lists its names without importing torch
    import torch

    from .runners import Runner

__all__ = ["Runtime", "TorchRuntime", "OrtRuntime", "Prepared", "REGISTRY", "get_runtime", "runtimes_named"]

#: onnxruntime's CPU provider: built into every onnxruntime, never missing.
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Prepared:
    """One variant ready to time: ``handle`` is the model on the device (PyTorch runtimes) or the
    onnxruntime session; ``provider`` the execution provider that runs it (None for PyTorch)."""

    handle: Any
    provider: str | None = None


@dataclass(frozen=True)
class Runtime:
    """What every runtime answers; :class:`TorchRuntime` and :class:`OrtRuntime` say how it runs."""

    name: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    #: the runtime to suggest on a device this one does not support
    instead: str | None = None
    #: True: runs a variant's ONNX file; False: its ``nn.Module``
    takes_onnx: ClassVar[bool] = False

    @property
    def takes(self) -> str:
        """What a variant needs for this runtime, in words."""
        return "ONNX file" if self.takes_onnx else "PyTorch model"

    def supports(self, variant: Any) -> bool:
        """Whether ``variant`` has what this runtime runs."""
        return (variant.onnx_path if self.takes_onnx else variant.model) is not None

    def providers(self, device: str) -> tuple[str, ...]:
        """The onnxruntime execution providers asked for on ``device``, preferred first (none for PyTorch)."""
        return ()

    def needs_provider(self, device: str) -> str | None:
        """The execution provider onnxruntime must have for this runtime on ``device`` (None: nothing
        beyond what every installation has)."""
        wanted = self.providers(device)
        return wanted[0] if wanted and wanted[0] != CPU_PROVIDER else None

    def missing_provider_message(self, provider: str) -> str:
        """The usage error when onnxruntime lacks ``provider`` here."""
        return f"onnxruntime has no {provider} here; drop {self.name} from --runtimes"

    def check_device(self, device: str) -> None:
        """Raise :class:`UsageError` when this runtime cannot run on ``device``."""
        if device not in self.devices:
            hint = f"; use {self.instead} for --device {device}" if self.instead else ""
            raise UsageError(f"{self.name} needs --device {' or '.join(self.devices)}{hint}")

    def prepare(self, variant: Any, device: str, threads: int) -> Prepared:  # pragma: no cover - interface
        """``variant`` ready to run on ``device`` with ``threads`` intra-op threads."""
        raise NotImplementedError

    def runner(self, prepared: Prepared, device: str, x: torch.Tensor) -> Runner:  # pragma: no cover - interface
        """A runner of ``prepared`` on the input batch ``x``."""
        raise NotImplementedError


@dataclass(frozen=True)
class TorchRuntime(Runtime):
    """PyTorch eager (``inference_mode``), or ``torch.compile``d with ``compile``."""

    compile: bool = False

    def prepare(self, variant: Any, device: str, threads: int) -> Prepared:
        """The variant's model in eval mode on ``device``; a copy whenever anything would change the caller's."""
        model = variant.model
        assert model is not None
        if device == "cuda" or model.training or self.compile:
            model = copy.deepcopy(model)  # never move or switch the caller's module
        model = model.to(device).eval()
        if self.compile:
            import torch

            model = torch.compile(model, dynamic=False)
        return Prepared(model, None)

    def runner(self, prepared: Prepared, device: str, x: torch.Tensor) -> Runner:
        """Time the model's calls on ``x`` moved to ``device``."""
        from .runners import TorchRunner

        return TorchRunner(prepared.handle, x.to(device), device)


@dataclass(frozen=True)
class OrtRuntime(Runtime):
    """An onnxruntime session with the execution providers of :attr:`by_device`."""

    by_device: Mapping[str, tuple[str, ...]] | None = field(default=None, hash=False)
    #: how to get the providers, told when they are missing
    install: str = ""
    takes_onnx: ClassVar[bool] = True

    def providers(self, device: str) -> tuple[str, ...]:
        """The providers asked for on ``device``, preferred first."""
        return tuple((self.by_device or {}).get(device, (CPU_PROVIDER,)))

    def missing_provider_message(self, provider: str) -> str:
        """The usage error when onnxruntime lacks ``provider`` here, with how to install it."""
        return f"onnxruntime has no {provider} here{self.install}; drop {self.name} from --runtimes"

    def prepare(self, variant: Any, device: str, threads: int) -> Prepared:
        """An onnxruntime session of the variant's file; refuses a session that fell back to another provider."""
        from .ort import load_onnx_session

        providers = list(self.providers(device))
        session = load_onnx_session(variant.onnx_path, providers=providers, threads=threads)
        if session.get_providers()[0] != providers[0]:
            raise DempError(
                f"onnxruntime could not start {providers[0]} for {variant.onnx_path} (it fell back to "
                f"{session.get_providers()[0]}); check the GPU libraries or use --device cpu"
            )
        return Prepared(session, providers[0])

    def runner(self, prepared: Prepared, device: str, x: torch.Tensor) -> Runner:
        """Time the session on ``x``; a static-batch file refuses any other batch size."""
        session = prepared.handle
        shape = session.get_inputs()[0].shape
        if shape and isinstance(shape[0], int) and shape[0] != x.shape[0]:
            raise UsageError(
                f"the ONNX model has a static batch size of {shape[0]} and cannot run batch {x.shape[0]}; "
                f"use --batch-sizes {shape[0]} or re-export with --dynamic-batch"
            )
        from .runners import OrtRunner

        return OrtRunner(session, x.numpy().astype("float32"), device)


_CUDA = "CUDAExecutionProvider"

#: name -> runtime; the order is the order ``--help`` lists them (``exporters.defaults.RUNTIMES``).
REGISTRY: dict[str, Runtime] = {r.name: r for r in (
    TorchRuntime("torch"),
    TorchRuntime("torch-compile", compile=True),
    OrtRuntime("onnxruntime", by_device={"cuda": (_CUDA, CPU_PROVIDER)}, install=" (install onnxruntime-gpu)"),
    OrtRuntime("onnxruntime-trt", devices=("cuda",), instead="onnxruntime",
               by_device={"cuda": ("TensorrtExecutionProvider", _CUDA, CPU_PROVIDER)}),
)}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``; a :class:`UsageError` listing the valid names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown runtime {name!r}; valid runtimes: {', '.join(REGISTRY)}") from None


def runtimes_named(names: Sequence[str]) -> tuple[Runtime, ...]:
    """The runtimes of ``names``, in order (each name checked by :func:`get_runtime`)."""
    return tuple(get_runtime(name) for name in names)
