"""Training checkpoints that resume a run exactly, written without pickled code.

One checkpoint is a directory ``OUT/checkpoints/ckpt-eEEEE-sSSSSSSSS/`` holding:

- ``plan.json``            the composed removal plan in the *original* numbering (replayed on resume)
- ``weights.safetensors``  the (pruned) model's state dict
- ``state.pt``             optimizer, LR schedule, DemP state, RNG states and loop counters: a
                           ``torch.save`` of tensors, numbers, strings, lists and dicts only, read back
                           with ``torch.load(weights_only=True)``
- ``meta.json``            epoch, step, the recipe the run was started with, and ``complete: true``

Atomicity: the files are written into a hidden staging directory (each with
:func:`compressor.fileio.atomic_write_with`, i.e. fsync'ed), the staging directory is renamed into
place, ``latest.json`` is switched to it atomically, and only then are checkpoints beyond the last
``keep`` deleted. A crash or a full disk at any point leaves the previous checkpoint intact and
``latest.json`` pointing at it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, CheckpointWriteError
from ..fileio import atomic_write_json, atomic_write_with
from ..plan import PruningPlan

CHECKPOINT_SCHEMA = "demp.train-checkpoint/1"
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
_PREFIX = "ckpt-"


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    meta: dict[str, Any]
    plan: PruningPlan
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])


# ---------------------------------------------------------------------------- RNG states


def capture_rng(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random state that influences training, as tensors and plain values (no pickling)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    if loader_generator is not None:
        out["loader"] = loader_generator.get_state()
    return out


def restore_rng(states: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"]), py["gauss"]))
    nps = states["numpy"]
    np.random.set_state(
        (nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached"])
    )
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if loader_generator is not None and "loader" in states:
        loader_generator.set_state(states["loader"])


# ---------------------------------------------------------------------------- writing


def _save_tensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Write a safetensors file (a separate function so tests can simulate a full disk here)."""
    from safetensors.torch import save_file

    save_file(tensors, path)


def _save_state(state: dict[str, Any], path: str) -> None:
    torch.save(state, path)


def _weights_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        key = t.data_ptr()
        if t.numel() and key in seen:  # tied tensors: safetensors refuses shared storage
            t = t.clone()
        seen[t.data_ptr()] = name
        out[name] = t
    return out


def checkpoint_name(epoch: int, step: int) -> str:
    return f"{_PREFIX}e{epoch:04d}-s{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root`` (OUT/checkpoints), oldest first by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(_PREFIX) and (p / "meta.json").is_file():
            try:
                meta = json.loads((p / "meta.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if meta.get("complete"):
                found.append((int(meta.get("step", -1)), p.name, p))
    return [p for _, _, p in sorted(found)]


def save_checkpoint(
    root: str | os.PathLike,
    *,
    model: nn.Module,
    plan: PruningPlan,
    state: dict[str, Any],
    epoch: int,
    step: int,
    recipe: dict[str, Any],
    keep: int = 2,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write one checkpoint atomically and prune old ones; returns its directory.

    A failure while writing (``OSError`` such as ENOSPC) removes the partial staging directory and is
    raised as :class:`CheckpointError`; the previous checkpoint and ``latest.json`` stay untouched.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(epoch, step)
    final = root / name
    staging = root / f".{name}.{os.getpid()}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    meta = {
        "schema": CHECKPOINT_SCHEMA,
        "epoch": int(epoch),
        "step": int(step),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "recipe": recipe,
        **(extra_meta or {}),
        "complete": True,
    }
    try:
        staging.mkdir()
        plan.save(staging / "plan.json")
        weights = _weights_for_saving(model)
        atomic_write_with(staging / "weights.safetensors", lambda tmp: _save_tensors(weights, tmp))
        atomic_write_with(staging / "state.pt", lambda tmp: _save_state(state, tmp))
        atomic_write_json(staging / "meta.json", meta)  # last: its presence marks completeness
        if final.exists():  # the same step saved twice (e.g. resume then interrupt): replace it
            shutil.rmtree(final)
        os.replace(staging, final)
        atomic_write_json(root / LATEST, {"checkpoint": name, "epoch": int(epoch), "step": int(step)})
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        previous = latest_checkpoint(root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        what = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"{exc.strerror or exc}"
        raise CheckpointWriteError(
            f"could not write checkpoint {final} ({what}); {kept}. Free space (or choose another --out) "
            "and resume with --resume"
        ) from exc
    _prune(root, keep, protect=final)
    return final


def _prune(root: Path, keep: int, protect: Path) -> None:
    """Delete complete checkpoints beyond the newest ``keep`` and stale staging directories."""
    ckpts = list_checkpoints(root)
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(f".{_PREFIX}") and p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------- reading


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest.json`` names, or the newest complete one if that file is missing/stale."""
    root = Path(root)
    pointer = root / LATEST
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
        candidate = root / name
        if (candidate / "meta.json").is_file():
            return candidate
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint` (no pickled code is loaded)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a complete training checkpoint (meta.json missing)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged (meta.json: {exc})") from None
    if meta.get("schema") != CHECKPOINT_SCHEMA or not meta.get("complete"):
        raise CheckpointError(f"{path} is not a complete demp training checkpoint (schema {meta.get('schema')!r})")
    plan = PruningPlan.load(path / "plan.json")
    try:
        from safetensors.torch import load_file

        weights = load_file(str(path / "weights.safetensors"), device="cpu")
        state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete: {exc.filename} is missing") from None
    except Exception as exc:  # noqa: BLE001 - safetensors/torch raise several types for damaged files
        raise CheckpointError(f"checkpoint {path} is damaged and cannot be read ({type(exc).__name__}): it was "
                              f"cut off or changed after it was written; move {path.name} out of {path.parent} "
                              "and resume again to continue from the checkpoint before it") from None
    return Checkpoint(path=path, meta=meta, plan=plan, weights=weights, state=state)


def find_resume_checkpoint(out_dir: str | os.PathLike) -> Path:
    """The checkpoint to resume the run in ``out_dir`` from, or a CheckpointError saying why none."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise CheckpointError(f"cannot resume: {out_dir} does not exist; start the run without --resume")
    found = latest_checkpoint(out_dir / CHECKPOINT_DIR)
    if found is None:
        raise CheckpointError(
            f"cannot resume: {out_dir} holds no complete checkpoint (none was written before the run stopped); "
            "start the run again without --resume (add --overwrite to reuse the directory)"
        )
    return found

