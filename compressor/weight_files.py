"""Safe loading and saving of model weights.

What a user hands us as "a checkpoint" comes in many shapes; :func:`read_checkpoint` turns each of
them into one flat ``{name: tensor}`` state dict:

* a plain state dict (``torch.save(model.state_dict(), path)``);
* a training checkpoint that nests it under ``state_dict``, ``model_state_dict``, ``model``, ``net``
  or ``weights`` (optimizer state, epoch, ... next to it are ignored);
* keys prefixed by ``module.`` (DistributedDataParallel) or ``_orig_mod.`` (``torch.compile``),
  which are stripped when *every* key carries the prefix;
* a ``.safetensors`` file (recognised by its header, whatever the extension).

**Pickle policy.** ``torch.load`` is only ever called with ``weights_only=True``: the restricted
unpickler builds tensors and plain containers and refuses every other Python global *before*
calling it, so nothing in an untrusted file is executed. A checkpoint that is a whole pickled
``nn.Module`` (``torch.save(model, path)``) is therefore refused with a message naming
``--trust-pickle``; only with ``trust_pickle=True`` is it loaded with ``weights_only=False``
(which runs the file's pickled code: do it only for files from a source you trust) and its
``state_dict()`` taken. NumPy scalars and dtypes (e.g. a saved ``best_acc``) are allowed because
they carry data only.

Weights written by the toolkit are always safetensors (:func:`save_weights`), written atomically.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .fileio import atomic_write_with

log = logging.getLogger(__name__)

StateDict = dict[str, Tensor]

#: Keys under which training scripts commonly nest the model's state dict, in the order tried.
NESTED_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net", "weights")
#: Prefixes added by wrappers; stripped (repeatedly) when every key has one.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
#: How files written by ``torch.save`` start: a zip archive, or (legacy format) a pickle whose first object is
#: this magic number, stored as a 10-byte little-endian long.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
#: How many names an error message lists before "...".
_LIST_LIMIT = 5

_TRUST_HINT = (
    "pass --trust-pickle (trust_pickle=True) only if you trust the file's source, because loading it "
    "executes code stored in the file; better, re-save just the weights with "
    "torch.save(model.state_dict(), path)"
)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> StateDict:
    """Read a checkpoint file into a flat CPU state dict ``{name: tensor}``.

    Accepts every format listed in the module docstring. Raises :class:`CheckpointError` for a
    missing, empty, truncated or non-checkpoint file, for an unsafe pickle (unless
    ``trust_pickle``), and for a checkpoint without any tensor.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a directory without plan.json; pass the weights file inside it "
            "(a .pt/.pth/.safetensors file) or a compressed-model directory written by demp"
        )
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the file was not written completely")

    if _looks_like_safetensors(path):
        return _finish(load_weights_file(path), path)
    if not _written_by_torch_save(path):
        raise CheckpointError(f"{path} is not a checkpoint: expected a PyTorch checkpoint (a file written by "
                              "torch.save) or a .safetensors file")

    obj = _torch_load(path, trust_pickle=trust_pickle)
    state_dict = _extract_state_dict(obj, path)
    return _finish(state_dict, path)


def load_weights_file(path: str | os.PathLike) -> StateDict:
    """Load a ``.safetensors`` file into a CPU state dict (no pickle involved)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist; check the path")
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot read safetensors file {path}: {exc}; the file is truncated or corrupt — "
            "copy or re-save it"
        ) from exc


def _looks_like_safetensors(path: Path) -> bool:
    """True if the file starts like safetensors (8-byte little-endian header size, then JSON)."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_len < path.stat().st_size


def _written_by_torch_save(path: Path) -> bool:
    """True if the file starts as ``torch.save`` writes: a zip archive (PyTorch >= 1.6), the legacy pickle
    whose first object is torch's magic number, or PyTorch's oldest tar format."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    return (head.startswith(_ZIP_MAGIC) or (head[:1] == b"\x80" and _LEGACY_MAGIC in head[:32])
            or head[257:262] == b"ustar")


def _numpy_safe_globals() -> list[Any]:
    """NumPy scalar/dtype constructors that carry data only (e.g. a saved ``best_acc``)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType",
                     "Int32DType", "Int64DType", "UInt8DType", "BoolDType", "LongDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def _torch_load(path: Path, *, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` (or False when trusted), errors made readable."""
    import pickle

    if trust_pickle:
        log.warning("loading %s with weights_only=False (--trust-pickle): code in the file is executed", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torch.load raises many unrelated types for bad files
            raise CheckpointError(_unreadable_message(path, exc)) from exc
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the error below says it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path, exc)
        if unsafe:
            shown = ", ".join(unsafe[:_LIST_LIMIT]) + (" ..." if len(unsafe) > _LIST_LIMIT else "")
            what = (
                "a whole pickled model (nn.Module)"
                if any(".nn." in g or "Module" in g or "models." in g for g in unsafe)
                else "pickled Python objects"
            )
            raise CheckpointError(
                f"checkpoint {path} contains {what}, not just weights (it needs: {shown}); it was NOT "
                f"loaded and nothing in it was executed. To load it anyway, {_TRUST_HINT}"
            ) from exc
        raise CheckpointError(_unreadable_message(path, exc)) from exc
    except Exception as exc:  # zip errors (RuntimeError), KeyError/EOFError on garbage, ...
        raise CheckpointError(_unreadable_message(path, exc)) from exc


def _unsafe_globals(path: Path, exc: BaseException) -> list[str]:
    """Names of the globals that made the weights-only unpickler refuse ``path``, without running them."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) format or a corrupt file: fall back to the error text
        found = []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _numpy_safe_globals()}
    found = [g for g in found if g not in allowed and not g.startswith("numpy.")] or found
    if not found:
        found = re.findall(r"Unsupported global: GLOBAL (\S+)", str(exc))
    # The user's own classes (the model's) are more telling than torch.nn building blocks: list them first.
    return sorted(set(found), key=lambda g: (g.startswith(("torch.", "builtins.", "collections.")), g))


def _unreadable_message(path: Path, exc: BaseException) -> str:
    """A file that starts like a checkpoint but cannot be read. PyTorch's own text (cut off, and advising
    ``weights_only=False``, which would run code from the file) goes to the debug log only."""
    import pickle

    log.debug("torch.load(%s) failed: %s: %s", path, type(exc).__name__, exc)
    if isinstance(exc, pickle.UnpicklingError):  # no unsafe global named: an opcode or layout it refuses
        return (f"checkpoint {path} cannot be read by the safe (weights-only) loader: it is truncated or corrupt, "
                "or stores its weights in a form that loader refuses (e.g. the legacy format with a newer pickle "
                "protocol); re-save it with torch.save(model.state_dict(), path) where it was made")
    return (f"checkpoint {path} is truncated or corrupt: it starts like a PyTorch checkpoint but cannot be read "
            f"({type(exc).__name__}); copy it again, or re-save it with torch.save(model.state_dict(), path)")


def _extract_state_dict(obj: Any, path: Path) -> StateDict:
    """Find the model's state dict in whatever ``torch.load`` returned."""
    if isinstance(obj, nn.Module):  # only reachable with trust_pickle
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state dict; save "
            "model.state_dict() (or a dict with a 'state_dict' entry) instead"
        )
    if not obj:
        raise CheckpointError(f"checkpoint {path} is an empty dict: it contains no weights")
    # Nested entries first: a training checkpoint may hold stray tensors (an RNG state) at top level.
    for key in NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            return dict(inner.state_dict())
        if isinstance(inner, Mapping) and inner and _is_tensor_dict(inner):
            log.debug("using the %r entry of checkpoint %s", key, path)
            return _tensors_only(inner, path)
    if _is_tensor_dict(obj):
        return _tensors_only(obj, path)
    entries = ", ".join(repr(k) for k in list(obj)[:8])
    raise CheckpointError(
        f"checkpoint {path} has no state dict: its entries are {entries}; expected tensors, or one of "
        f"{', '.join(repr(k) for k in NESTED_KEYS)} holding them"
    )


def _is_tensor_dict(obj: Mapping) -> bool:
    """A mapping whose values are mostly tensors (a state dict may carry an odd extra value)."""
    values = list(obj.values())
    tensors = sum(isinstance(v, Tensor) for v in values)
    return tensors > 0 and tensors >= len(values) / 2


def _tensors_only(obj: Mapping, path: Path) -> StateDict:
    dropped = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if dropped:
        log.warning("checkpoint %s: ignoring non-tensor entries %s", path, ", ".join(dropped[:_LIST_LIMIT]))
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _finish(state_dict: StateDict, path: Path) -> StateDict:
    if not state_dict:
        raise CheckpointError(f"checkpoint {path} contains no tensors")
    return strip_prefixes(state_dict)


def strip_prefixes(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> StateDict:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``) that *every* key carries, repeatedly."""
    out = dict(state_dict)
    changed = True
    while changed and out:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


# --------------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------------


def find_classifier(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The final classifier layer: the last ``nn.Linear`` in module order, else the last conv.

    (SqueezeNet classifies with a 1x1 convolution, so it has no Linear at all.)
    """
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return convs[-1] if convs else None


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly, with a readable error on any mismatch.

    Missing keys, unexpected keys and shape mismatches are listed (the first few of each); when the
    classifier is the only mismatch the message suggests ``--num-classes N``. Any NaN or Inf in a
    weight is refused. BatchNorm's ``num_batches_tracked`` may be absent (old checkpoints).
    Returns ``model``.
    """
    state_dict = dict(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(model, state_dict, missing, unexpected, mismatched))

    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint has NaN or Inf values in {len(bad)} tensor(s): {_names(bad)}; the training run "
            "that wrote it diverged — use an earlier checkpoint"
        )
    # Fill absent num_batches_tracked buffers from the model so strict loading succeeds.
    for key in expected:
        if key not in state_dict:
            state_dict[key] = expected[key]
    model.load_state_dict(state_dict, strict=True)
    return model


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > _LIST_LIMIT else "")


def _mismatch_message(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple, tuple]],
) -> str:
    arch = getattr(getattr(model, "demp_spec", None), "arch", None) or type(model).__name__
    parts = [f"the checkpoint does not match the architecture {arch!r}:"]
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
    if mismatched:
        shapes = [f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
        parts.append(f"{len(mismatched)} shape mismatch(es): {_names(shapes)}")
    hint = "pass the --arch (and its options) the checkpoint was trained with"
    found = find_classifier(model)
    if found is not None and mismatched:
        cls_keys = {f"{found[0]}.weight", f"{found[0]}.bias"}
        if {k for k, _, _ in mismatched} <= cls_keys and not missing and not unexpected:
            n = state_dict[f"{found[0]}.weight"].shape[0] if f"{found[0]}.weight" in state_dict else None
            hint = f"the classifier {found[0]!r} has {n} outputs in the checkpoint; pass --num-classes {n}"
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:]) + f". Fix: {hint}"


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def save_weights(
    state_dict: Mapping[str, Tensor], path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``state_dict`` as safetensors, atomically.

    Tensors are moved to CPU and made contiguous; tensors sharing storage (tied weights, views) are
    cloned, since safetensors refuses shared memory. ``metadata`` (str -> str) goes into the header.
    """
    from safetensors.torch import save_file

    tensors: StateDict = {}
    seen: set[tuple[int, int]] = set()
    for name, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().to("cpu")
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        whole = tensor.is_contiguous() and tensor.storage_offset() == 0 and (
            tensor.numel() * tensor.element_size() == storage.nbytes()
        )
        if key in seen or not whole:
            tensor = tensor.contiguous().clone()
        elif tensor.numel():
            seen.add(key)
        tensors[name] = tensor
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta or None))


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty dict if none)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc
