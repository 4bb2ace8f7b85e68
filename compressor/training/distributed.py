"""Distributed data-parallel training support for ``demp train`` under ``torchrun``.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in the environment) :func:`init_from_env`
initializes the default process group (``nccl`` when CUDA is used, ``gloo`` otherwise); the training
loop then wraps the model in :class:`~torch.nn.parallel.DistributedDataParallel`, shards the data with
:class:`ResumableDistributedSampler` and writes files on rank 0 only.

Every method's removals must be identical on every rank:

- DemP, Synaptic Stripping and dormant pruning decide from activity statistics that are all-reduced
  first (:meth:`compressor.activity.ActivityStats.all_reduce`); the decision is a pure function of them;
- Synaptic Stripping's masks are broadcast from rank 0 after every stripping;
- DNR and the importance baselines decide from scores that rank 0 broadcasts
  (:func:`broadcast_from_main`); the Taylor baseline first sums its gradients over all ranks
  (:func:`all_reduce_grads`), so its scores see every rank's share of the held-aside samples.

After every removal :func:`check_plan_hashes` all-gathers the composed plan's hash and raises
:class:`RankDivergence` naming the ranks whose model differs, instead of training on diverged models.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..errors import DempError, UsageError

log = logging.getLogger(__name__)

#: Set to a directory to make every rank write ``rank<R>.json`` (final architecture + state hash) there.
DEBUG_HASH_ENV = "DEMP_DEBUG_STATE_HASH_DIR"

__all__ = [
    "DistContext", "RankDivergence", "ResumableDistributedSampler", "init_from_env", "launched_by_torchrun",
    "context", "destroy", "check_plan_hashes", "agree", "any_rank", "state_hash", "per_rank_batch_size",
    "broadcast_from_main", "all_reduce_grads", "method_state_hashes", "active", "unwrap_model",
]


def active() -> bool:
    """True inside an initialized process group (under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module DDP / DataParallel wrap (parameter names must not carry the ``module.`` prefix)."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


class RankDivergence(DempError):
    """The ranks' models diverged (different removal plans); training stops instead of continuing."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: ``enabled`` is False for a plain single-process run."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are present."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def context() -> DistContext:
    """The current context: from the initialized default process group, else single-process."""
    if active():
        return DistContext(True, dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def init_from_env(device: str = "auto", *, timeout_s: float = 1800.0) -> DistContext:
    """Initialize the default process group when launched by torchrun (a no-op otherwise).

    The backend is chosen automatically: ``nccl`` when training runs on CUDA (``device`` is ``cuda``,
    or ``auto`` with a GPU present), ``gloo`` otherwise. On CUDA each process uses ``cuda:LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return DistContext()
    if not dist.is_available():
        raise UsageError("launched under torchrun but this torch build has no torch.distributed; "
                         "run without torchrun or install a torch build with distributed support")
    if dist.is_initialized():
        return context()
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UsageError("train.device is cuda but no CUDA device is available; use --device cpu or auto")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) on this "
                             "node; lower --nproc_per_node to the number of GPUs")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    ctx = context()
    log.debug("rank %d/%d: process group initialized (%s)", ctx.rank, ctx.world_size, backend)
    return ctx


def destroy() -> None:
    """Destroy the default process group if one is initialized."""
    if active():
        dist.destroy_process_group()


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    """``data.batch_size`` is the global batch; each rank takes an equal share (must divide evenly)."""
    if global_batch % world_size != 0:
        raise UsageError(
            f"data.batch_size {global_batch} (the global batch) is not divisible by the world size {world_size}; "
            f"set data.batch_size to a multiple of {world_size} (e.g. --set data.batch_size="
            f"{max(world_size, (global_batch // world_size) * world_size)}) or change --nproc_per_node"
        )
    return global_batch // world_size


class ResumableDistributedSampler(DistributedSampler):
    """:class:`DistributedSampler` that can start mid-epoch (``set_epoch(epoch, start_batch)``).

    Batch ``i`` of every rank together hold positions ``i*B .. (i+1)*B-1`` of the epoch's permutation
    (``B`` the global batch), whatever the world size, so skipping ``start_batch`` per-rank batches
    resumes a run stopped mid-epoch even with another number of processes.
    """

    def __init__(self, dataset: Any, *, num_replicas: int, rank: int, seed: int, batch_size: int, drop_last: bool):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.batch_size = batch_size
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_batch * self.batch_size)


def _gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_plan_hashes(plan_hash: str, step: int) -> None:
    """All-gather every rank's plan hash after a removal; raise :class:`RankDivergence` on a mismatch."""
    if not active():
        return
    rank = dist.get_rank()
    log.debug("rank %d: plan hash %s after the removal at step %d", rank, plan_hash, step)
    hashes = _gather(plan_hash)
    if len(set(hashes)) > 1:
        ref = hashes[0]
        bad = [r for r, h in enumerate(hashes) if h != ref]
        listing = ", ".join(f"rank {r}: {h[:12]}" for r, h in enumerate(hashes))
        raise RankDivergence(
            f"rank {rank}: the removal at step {step} diverged across ranks: rank(s) {bad} hold a different "
            f"pruning plan than rank 0 ({listing}). Training stopped instead of continuing on diverged models; "
            "this is a bug (the ranks decided the removal differently) — please report it with the run's recipe, "
            "and resume from the last checkpoint"
        )


def agree(error: str | None) -> None:
    """Collective error check: if any rank passes an error message, every rank raises it (with the rank).

    Use around steps that may fail on one rank only (rank 0 preparing the output directory) so the
    other ranks do not wait forever in the next collective.
    """
    if not active():
        if error:
            raise DempError(error)
        return
    errors = _gather(error)
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if failed:
        r, e = failed[0]
        raise UsageError(f"rank {r}: {e}")


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is True on any rank (e.g. a stop signal seen by one process)."""
    if not active():
        return flag
    dev = device if device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 over the names, shapes and bytes of ``module.state_dict()`` (architecture + weights)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group).

    Used for the scores a removal is decided from (DNR, importance baselines): with rank 0's scores
    every rank takes the same decision even where float results could differ between machines.
    ``obj`` must be picklable (tensors are moved to the CPU first).
    """
    if not active():
        return obj
    box = [_to_cpu(obj) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them at the start of
    every forward pass, so after the last training step each rank holds the statistics of its own last
    batch; the final model must be one model. A no-op without a process group."""
    if not active():
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def all_reduce_grads(module: torch.nn.Module) -> None:
    """Sum every parameter's ``.grad`` over all ranks in place (a missing gradient counts as zeros).

    For gradients computed outside DDP's forward (the Taylor baseline's held-aside batches): afterwards
    every rank holds the gradients of all ranks' samples. A no-op without a process group.
    """
    if not active():
        return
    for p in module.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


# "error": a lossy removal's output change, measured on each rank's own share of the samples (rank 0 writes it)
_VOLATILE_KEYS = frozenset({"seconds", "elapsed", "step_ms", "time", "step_seconds", "dense_step_times", "error"})


def _hash_into(h: Any, value: Any) -> None:
    """Feed ``value`` (nested dicts/lists of tensors and plain values) into hash ``h`` deterministically."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            if str(k) in _VOLATILE_KEYS:
                continue
            h.update(f"{k}:".encode())
            _hash_into(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _hash_into(h, v)
        h.update(b"]")
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def method_state_hashes(methods: Any) -> dict[str, dict[str, str]]:
    """``{method name: {state key: SHA-256}}`` of every training method's ``state_dict()``.

    Wall-clock fields (``seconds`` ...) are left out, so two ranks that hold the same masks, scores,
    plans and counters get the same hashes. Used by the ``DEMP_DEBUG_STATE_HASH_DIR`` debug dump.
    """
    import hashlib

    out: dict[str, dict[str, str]] = {}
    for m in methods:
        per_key: dict[str, str] = {}
        for key, value in m.state_dict().items():
            h = hashlib.sha256()
            _hash_into(h, value)
            per_key[str(key)] = h.hexdigest()
        out[str(getattr(m, "name", type(m).__name__))] = per_key
    return out
