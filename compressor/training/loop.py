"""The training loop: plain training or DemP train-and-prune, with exact checkpoint/resume.

:class:`Trainer` runs a :class:`~compressor.training.config.RecipeConfig`:

1. seeds python/numpy/torch, loads the data (:func:`compressor.data.load_data`) and builds the model
   from its spec (:func:`compressor.models.build_model`);
2. trains for ``train.epochs`` epochs with Adam / AdamW / SGD and a per-step LR schedule (constant,
   step, multistep, cosine, one-cycle, each optionally after a linear warm-up), label smoothing, bf16
   autocast on CUDA, and — for ``method: demp`` — DemP's penalty, noise and dynamic removal
   (``DemP.penalty`` before backward, ``DemP.after_step`` after ``optimizer.step()``, ``DemP.finalize``
   at the end);
3. evaluates on the test split after every epoch, records ``metrics.jsonl``, and writes a checkpoint
   (:mod:`compressor.training.checkpointing`) that resumes the run as if it had never stopped;
4. saves the compact model like ``demp compress`` does (``OUT/model/plan.json`` +
   ``weights.safetensors``, through :func:`compressor.pruned.save_pruned`) and end-of-run plots.

The ONNX export and report of the compact model are the CLI's job (``demp train`` calls
``exporters.pipeline.finalize``): the library never imports :mod:`exporters`.

Determinism: on CPU with ``num_workers: 0`` a run is bitwise reproducible for a given seed, and a
run resumed from a checkpoint (epoch end or a Ctrl-C mid-epoch) produces the same numbers as one
that was never interrupted: the shuffling order is a function of (seed, epoch), the LR schedule a
function of the step, and all RNG states are checkpointed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..errors import CheckpointError, DataError, DempError, UsageError
from ..fileio import atomic_write_json, prepare_output_dir
from ..plan import PruningPlan
from . import checkpointing as ckpt
from . import distributed as dist_util
from .config import RESUME_TOLERANT_KEYS, RecipeConfig, TrainConfig, load_recipe, recipe_diff, recipe_from_dict
from .metrics import MetricsLogger, count_macs, count_params, make_plots, read_metrics

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"
MODEL_DIR = "model"
PLOTS_DIR = "plots"
SUMMARY_FILE = "train_summary.json"


class TrainingInterrupted(DempError):
    """The run was stopped by SIGINT/SIGTERM after writing a checkpoint (exit code 130)."""

    exit_code = 130

    def __init__(self, message: str, checkpoint: Path):
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainingDiverged(DempError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a finished run returns."""

    model: nn.Module  # the compact trained model (on CPU, eval mode)
    plan: PruningPlan  # composed removals in the original numbering, with the model spec
    recipe: RecipeConfig
    out_dir: Path
    summary: dict[str, Any]  # the ``final`` metrics record (accuracy, neurons/params/MACs before & after)
    history: list[dict[str, Any]] = field(default_factory=list)  # the ``epoch`` records
    compact_dir: Path | None = None  # OUT/model when the compact model was saved
    spec: Any = None  # compressor.models.ModelSpec
    data: Any = None  # compressor.data.DataBundle


# ---------------------------------------------------------------------------- building blocks


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device is cuda but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD from the recipe (Adam's and SGD's weight decay is coupled, AdamW's decoupled)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                                weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose adam, adamw or sgd")


class LRSchedule:
    """The learning rate as a pure function of the optimizer step (so resuming needs only the step).

    ``factor(t)`` multiplies ``train.lr``. A linear warm-up over ``warmup_epochs`` (from lr/W to lr)
    comes first; cosine and one-cycle then run over the remaining steps, step/multistep decay at
    absolute epochs. ``one_cycle`` matches :class:`torch.optim.lr_scheduler.OneCycleLR` (cosine
    annealing, ``max_lr = train.lr``).
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
        self.cfg = cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(int(round(cfg.warmup_epochs * self.steps_per_epoch)), self.total_steps - 1)
        self.last_factor = 1.0

    def _main(self, t: int) -> float:
        c = self.cfg
        name = c.lr_schedule
        if name == "constant":
            return 1.0
        epoch = t // self.steps_per_epoch
        if name == "step":
            return c.gamma ** (epoch // c.step_size)
        if name == "multistep":
            return c.gamma ** sum(1 for m in c.milestones if epoch >= m)
        span = max(1, self.total_steps - self.warmup_steps)
        u = max(0, t - self.warmup_steps)
        if name == "cosine":
            frac = min(1.0, u / span)
            return c.min_lr_factor + (1 - c.min_lr_factor) * (1 + math.cos(math.pi * frac)) / 2
        if name == "one_cycle":
            initial = 1.0 / c.div_factor
            final = initial / c.final_div_factor
            up_end = float(c.pct_start * span) - 1
            if u <= up_end:
                frac = u / up_end if up_end > 0 else 1.0
                return final_cos(initial, 1.0, frac)
            down = span - 1 - up_end
            frac = min(1.0, (u - up_end) / down) if down > 0 else 1.0
            return final_cos(1.0, final, frac)
        raise UsageError(f"unknown lr_schedule {name!r}")

    def factor(self, t: int) -> float:
        main = self._main(t)
        if t < self.warmup_steps:
            return main * (t + 1) / (self.warmup_steps + 1)
        return main

    def apply(self, optimizer: torch.optim.Optimizer, t: int) -> float:
        """Set every param group's lr for step ``t``; returns the lr."""
        self.last_factor = self.factor(t)
        lr = self.cfg.lr * self.last_factor
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"step": int(step), "kind": self.cfg.lr_schedule, "warmup_steps": self.warmup_steps}


def final_cos(start: float, end: float, frac: float) -> float:
    """Cosine interpolation from ``start`` (frac 0) to ``end`` (frac 1)."""
    return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2


class EpochSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch), and can start mid-epoch.

    That makes the sample order reproducible after a resume without replaying the data loader.
    """

    def __init__(self, n: int, seed: int, batch_size: int, drop_last: bool):
        self.n = n
        self.seed = seed
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator()
        g.manual_seed(int(self.seed) * 1_000_003 + int(epoch) + 17)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation(self.epoch)
        return iter(perm[self.start_batch * self.batch_size:].tolist())

    def __len__(self) -> int:
        return max(0, self.n - self.start_batch * self.batch_size)


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    if drop_last and n >= batch_size:
        return n // batch_size
    return math.ceil(n / batch_size)


class _SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between optimizer steps (a second SIGINT aborts)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("\n%s received: finishing this step and writing a checkpoint (press Ctrl-C again to abort)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "_SignalGuard":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def _seed_worker(worker_id: int) -> None:
    """Distinct, reproducible numpy/random seeds per DataLoader worker (derived from torch's)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError("training batches must be (inputs, labels) pairs; the dataset returned something else")


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, bf16: bool = True) -> tuple[float, float]:
    """(mean cross-entropy loss, top-1 accuracy) of ``model`` on ``loader`` in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    try:
        for batch in loader:
            x, y = _split_batch(batch)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, bf16):
                out = model(x)
            out = out.float()
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            seen += y.numel()
    finally:
        model.train(was_training)
    if seen == 0:
        return float("nan"), float("nan")
    return loss_sum.item() / seen, correct.item() / seen


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """Runs one recipe into one output directory (see the module docstring).

    ``resume=True`` continues the run in ``out_dir`` from its latest checkpoint; the recipe must equal
    the one the run was started with (apart from :data:`~compressor.training.config.RESUME_TOLERANT_KEYS`).
    ``data`` may pass an already-loaded :class:`~compressor.data.DataBundle` (tests, benchmarks).
    """

    def __init__(
        self,
        recipe: RecipeConfig,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        data: Any = None,
        handle_signals: bool = True,
        save_model: bool = True,
        plots: bool = True,
        tensorboard: bool = True,
    ):
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self._data = data
        self.handle_signals = handle_signals
        self.save_model = save_model
        self.plots = plots
        self.tensorboard = tensorboard
        self._ctx = dist_util.DistContext()  # set from the process group in fit()
        self._full_train: Dataset | None = None  # the dataset's whole training split (set in fit)
        self._val_idx: list[int] | None = None  # indices of the validation split in it (data.val_samples)
        self._plain: Dataset | None = None  # the training split without augmentation (lazily loaded)
        self._val_loader: DataLoader | None = None

    # ------------------------------------------------------------------ setup helpers
    def _prepare_out_dir(self) -> ckpt.Checkpoint | None:
        if self.resume:
            path = ckpt.find_resume_checkpoint(self.out_dir)
            checkpoint = ckpt.load_checkpoint(path)
            saved = checkpoint.meta.get("recipe") or {}
            diffs = recipe_diff(saved, self.recipe, ignore=RESUME_TOLERANT_KEYS)
            if diffs:
                shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in diffs[:12])
                more = f" (and {len(diffs) - 12} more)" if len(diffs) > 12 else ""
                raise UsageError(
                    f"cannot resume {self.out_dir}: it was started with a different recipe ({shown}{more}). "
                    f"Resume with its own recipe: --recipe {self.out_dir / RECIPE_FILE}"
                )
            return checkpoint
        prepare_output_dir(self.out_dir, overwrite=self.overwrite)
        return None

    def _load_data(self) -> Any:
        from ..data import load_data

        d, t = self.recipe.data, self.recipe.train
        if self._data is not None:
            return self._data
        return load_data(d.spec, input_size=d.input_size, augment=t.augment)

    def _split_validation(self, bundle: Any) -> Any:
        """Hold out ``data.val_samples`` training samples (chosen by the seed) as the validation split.

        The returned bundle trains on the rest; ``self._val_idx`` indexes the held-out samples in the
        full training split. With ``val_samples: 0`` the bundle is returned unchanged.
        """
        self._full_train, self._val_idx = bundle.train, None
        k, n = int(self.recipe.data.val_samples), len(bundle.train)
        if not k:
            return bundle
        if k >= n:
            raise UsageError(f"data.val_samples = {k} leaves no training samples ({self.recipe.data.spec!r} has "
                             f"{n} in its training split); hold out fewer, e.g. --set data.val_samples={max(n // 10, 1)}")
        g = torch.Generator()
        g.manual_seed(self.recipe.train.seed + 7907)
        perm = torch.randperm(n, generator=g)
        self._val_idx = perm[:k].sort().values.tolist()
        return dataclasses.replace(bundle, train=Subset(bundle.train, perm[k:].sort().values.tolist()))

    def _plain_train(self) -> Dataset:
        """The full training split without augmentation (death and validation are measured on it)."""
        if self._plain is None:
            d = self.recipe.data
            if self.recipe.train.augment and self._data is None:
                from ..data import load_data

                self._plain = load_data(d.spec, input_size=d.input_size, augment=False).train
            else:
                self._plain = self._full_train
        return self._plain

    def _validation_dataset(self) -> Dataset | None:
        """The held-out validation split (no augmentation), or None without ``data.val_samples``."""
        return None if self._val_idx is None else Subset(self._plain_train(), self._val_idx)

    def _death_dataset(self, bundle: Any, samples: int | None = None) -> Dataset:
        """``samples`` (default ``demp.death_samples``) samples without augmentation, chosen by the seed,
        on which death (dormancy, importance) is measured: from the validation split when the recipe
        holds one out (``data.val_samples``), else from the training split (held aside, still trained on)."""
        t = self.recipe.train
        pool = self._val_idx if self._val_idx is not None else list(range(len(self._full_train)))
        k = min(int(samples if samples is not None else self.recipe.demp.death_samples), len(pool))
        g = torch.Generator()
        g.manual_seed(t.seed + 7919)
        idx = sorted(pool[i] for i in torch.randperm(len(pool), generator=g)[:k].tolist())
        ctx = dist_util.context()
        if ctx.enabled and ctx.world_size > 1:
            # Each rank measures its share; the MAX all-reduce gives every rank the statistics of all k.
            idx = idx[ctx.rank::ctx.world_size]
        return Subset(self._plain_train(), idx)

    def _validate(self, model: nn.Module) -> tuple[float | None, float | None]:
        """(loss, accuracy) on the validation split; (None, None) without one."""
        if self._val_loader is None:
            return None, None
        return evaluate(model, self._val_loader, self._state.device, bf16=self.recipe.train.bf16)

    def _build_model(self, bundle: Any) -> tuple[nn.Module, Any]:
        from ..models import build_model, make_spec

        m = self.recipe.model
        spec = make_spec(
            m.arch,
            num_classes=int(m.num_classes or bundle.num_classes),
            input_shape=tuple(int(s) for s in bundle.input_shape),
            model_file=m.model_file,
            **dict(m.kwargs),
        )
        model = build_model(spec)
        if m.checkpoint:
            from ..checkpoint import load_weights, read_checkpoint

            load_weights(model, read_checkpoint(m.checkpoint))
        return model, getattr(model, "demp_spec", spec)

    # ------------------------------------------------------------------ run
    def fit(self) -> TrainResult:
        recipe, t = self.recipe, self.recipe.train
        # A resumed run checks its checkpoint and recipe first; a new run creates its output directory
        # only once the data and the model could be loaded (a typo in a path leaves nothing behind).
        ctx = dist_util.context()
        self._ctx = ctx
        if ctx.enabled:  # checked before anything is written
            dist_util.per_rank_batch_size(recipe.data.batch_size, ctx.world_size)
        checkpoint = self._prepare_out_dir() if self.resume else None
        seed_everything(t.seed)
        device = resolve_device(t.device)
        if ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        bundle = self._split_validation(self._load_data())
        if bundle.test is None:
            log.warning("the dataset has no test split: test accuracy will not be reported")
        model, spec = self._build_model(bundle)
        if not self.resume:
            if not ctx.enabled:
                self._prepare_out_dir()
                recipe.save(self.out_dir / RECIPE_FILE)
            else:  # rank 0 creates the directory; every rank stops if that failed
                error = None
                if ctx.is_main:
                    try:
                        self._prepare_out_dir()
                        recipe.save(self.out_dir / RECIPE_FILE)
                    except DempError as exc:
                        error = str(exc)
                dist_util.agree(error)
        input_shape = tuple(int(s) for s in bundle.input_shape)
        example = torch.zeros((2, *input_shape))

        if checkpoint is not None:
            # Replay the removals (original numbering) on the fresh model, then load the weights.
            from ..checkpoint import load_weights
            from ..pruned import replay_plan

            replay_plan(model, checkpoint.plan, input_shape)
            try:
                load_weights(model, checkpoint.weights)
            except CheckpointError as exc:
                raise CheckpointError(f"checkpoint {checkpoint.path} does not fit the model of this recipe: {exc}") from None
        model.to(device)
        example = example.to(device)

        dense_params = count_params(model) if checkpoint is None else None
        dense_macs = count_macs(model, input_shape, device=device) if checkpoint is None else None

        d = recipe.data
        n_train = len(bundle.train)
        if n_train == 0:
            raise DataError(f"dataset {d.spec!r} has an empty training split")
        spe = steps_per_epoch(n_train, d.batch_size, d.drop_last)
        total_steps = spe * t.epochs
        drop_last = d.drop_last and n_train >= d.batch_size
        sampler: EpochSampler | dist_util.ResumableDistributedSampler
        if ctx.enabled:
            # data.batch_size is the global batch: the number of optimizer steps per epoch (and so the
            # LR schedule, demp.interval and the checkpoint's step count) does not depend on the world size.
            rank_bs = dist_util.per_rank_batch_size(d.batch_size, ctx.world_size)
            sampler = dist_util.ResumableDistributedSampler(
                bundle.train, num_replicas=ctx.world_size, rank=ctx.rank, seed=t.seed, batch_size=rank_bs,
                drop_last=drop_last)
        else:
            rank_bs = d.batch_size
            sampler = EpochSampler(n_train, t.seed, d.batch_size, drop_last)
        loader_gen = torch.Generator()
        loader_gen.manual_seed(t.seed + 104729)
        train_loader = DataLoader(
            bundle.train, batch_size=rank_bs, sampler=sampler, drop_last=drop_last,
            num_workers=d.num_workers, generator=loader_gen, pin_memory=device.type == "cuda",
            worker_init_fn=_seed_worker if d.num_workers else None,
        )
        eval_bs = d.eval_batch_size or 2 * d.batch_size
        test_loader = (
            DataLoader(bundle.test, batch_size=eval_bs, shuffle=False, num_workers=d.num_workers,
                       pin_memory=device.type == "cuda")
            if bundle.test is not None else None
        )
        val_set = self._validation_dataset()
        self._val_loader = (DataLoader(val_set, batch_size=eval_bs, shuffle=False, num_workers=d.num_workers,
                                       pin_memory=device.type == "cuda") if val_set is not None else None)

        optimizer = build_optimizer(t, list(model.parameters()))
        schedule = LRSchedule(t, spe, total_steps)
        criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)

        methods = self._build_methods(model, bundle, example, eval_bs, total_steps)
        pruner = next((m for m in methods if getattr(m, "owns_plan", False)), None)
        demp = next((m for m in methods if m.name == "demp"), None)

        # ---------------------------------------------------------- restore
        epoch, step, start_batch = 0, 0, 0
        history: list[dict[str, Any]] = []
        acc_state: dict[str, float] = {}
        resume_offset = None
        dense: dict[str, Any] = {"params": dense_params, "macs": dense_macs}
        elapsed_before = 0.0
        if checkpoint is not None:
            state = checkpoint.state
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"checkpoint {checkpoint.path}: optimizer state does not match the model ({exc})") from None
            saved_methods = state.get("methods") or {}
            for m in methods:
                if saved_methods.get(m.name) is not None:
                    m.load_state_dict(saved_methods[m.name])
                elif m.name == "demp" and state.get("demp") is not None:  # checkpoints before "methods"
                    m.load_state_dict(state["demp"])
            loop = state["loop"]
            epoch, step, start_batch = int(loop["epoch"]), int(loop["step"]), int(loop["batch_in_epoch"])
            history = list(loop.get("history", []))
            acc_state = dict(loop.get("accumulators", {}))
            resume_offset = int(loop["metrics_offset"])
            dense = dict(loop["dense"])
            elapsed_before = float(loop.get("elapsed", 0.0))
            restore_target = state["rng"]
            log.info("resuming %s from %s (epoch %d, step %d)", self.out_dir, checkpoint.path.name, epoch, step)
        metrics: Any = (MetricsLogger(self.out_dir, tensorboard=self.tensorboard, resume_offset=resume_offset)
                        if ctx.is_main else _NullMetrics())
        if checkpoint is not None:
            ckpt.restore_rng(restore_target, loader_gen)

        self._state = _RunState(
            model=model, optimizer=optimizer, schedule=schedule, demp=demp, methods=methods, pruner=pruner,
            metrics=metrics, device=device,
            spe=spe, total_steps=total_steps, dense=dense, history=history, spec=spec, input_shape=input_shape,
            loader_gen=loader_gen,
        )
        self._wrap_model()
        started = time.perf_counter() - elapsed_before
        try:
            with _SignalGuard(self.handle_signals) as guard:
                model.train()
                while epoch < t.epochs:
                    sampler.set_epoch(epoch, start_batch)
                    step = self._run_epoch(epoch, step, start_batch, train_loader, test_loader, criterion,
                                           acc_state, guard, started)
                    epoch += 1
                    start_batch, acc_state = 0, {}
            return self._finish(bundle, test_loader, started)
        finally:
            metrics.close()

    # ------------------------------------------------------------------ one epoch
    def _run_epoch(self, epoch: int, step: int, start_batch: int, loader: DataLoader, test_loader: DataLoader | None,
                   criterion: nn.Module, acc_state: dict[str, float], guard: _SignalGuard, started: float) -> int:
        from tqdm.auto import tqdm

        s, t = self._state, self.recipe.train
        optimizer, methods, device = s.optimizer, s.methods, s.device
        distributed = self._ctx.enabled
        f64 = torch.float64
        # Epoch and interval accumulators (device tensors: one host sync per log interval on CUDA).
        ep_loss = torch.tensor(acc_state.get("ep_loss", 0.0), dtype=f64, device=device)
        ep_correct = torch.tensor(int(acc_state.get("ep_correct", 0)), dtype=torch.int64, device=device)
        ep_seen = int(acc_state.get("ep_seen", 0))
        iv_loss = torch.tensor(acc_state.get("iv_loss", 0.0), dtype=f64, device=device)
        iv_correct = torch.tensor(int(acc_state.get("iv_correct", 0)), dtype=torch.int64, device=device)
        iv_seen = int(acc_state.get("iv_seen", 0))
        iv_steps = int(acc_state.get("iv_steps", 0))
        iv_time = 0.0
        epoch_start = time.perf_counter() - float(acc_state.get("ep_time", 0.0))
        check_every_step = device.type != "cuda"
        batch_idx = start_batch

        bar = tqdm(total=s.spe, initial=start_batch, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                   disable=None if self.progress else True, dynamic_ncols=True)
        try:
            t_last = time.perf_counter()
            for batch in loader:
                x, y = _split_batch(batch)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                lr = s.schedule.apply(optimizer, step)
                model = s.train_model  # the DDP wrapper under torchrun (re-created after each removal)
                with _autocast(device, t.bf16):
                    out = model(x)
                    loss = criterion(out.float(), y)
                total = loss
                for m in methods:
                    term = m.penalty(step)
                    if term is not None:
                        total = total + term
                if check_every_step and not math.isfinite(total.item()):
                    self._diverged(epoch, step, total.item())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if t.grad_clip:
                    nn.utils.clip_grad_norm_(s.model.parameters(), t.grad_clip)
                optimizer.step()
                events = [e for e in (m.after_step(step, optimizer) for m in methods) if e is not None]
                if events and distributed:
                    self._after_removal(events)
                step += 1
                batch_idx += 1
                with torch.no_grad():
                    n = y.numel()
                    correct = (out.argmax(1) == y).sum()
                    ep_loss += loss.detach().double() * n
                    ep_correct += correct
                    iv_loss += loss.detach().double() * n
                    iv_correct += correct
                ep_seen += n
                iv_seen += n
                iv_steps += 1
                now = time.perf_counter()
                iv_time += now - t_last
                t_last = now
                for event in events:
                    s.metrics.write({"kind": "removal", "epoch": epoch + 1, **_event_record(event)})
                if iv_steps >= t.log_every or batch_idx == s.spe:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    rec = self._interval_record(epoch, step, lr, iv_loss.item() / max(iv_seen, 1),
                                                iv_correct.item() / max(iv_seen, 1), 1000 * iv_time / max(iv_steps, 1))
                    if not math.isfinite(rec["loss"]):
                        self._diverged(epoch, step, rec["loss"])
                    s.metrics.write(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{100 * rec['accuracy']:.1f}%",
                                    live=(f"{100 * rec['live_fraction']:.0f}%" if rec.get("live_fraction") is not None else "-"),
                                    lam=f"{rec.get('lambda', 0.0):.2g}", refresh=False)
                    iv_loss.zero_()
                    iv_correct.zero_()
                    iv_seen = iv_steps = 0
                    iv_time = 0.0
                bar.update(1)
                stop = dist_util.any_rank(guard.signum is not None, device) if distributed else guard.signum is not None
                if stop and batch_idx < s.spe:
                    acc = {"ep_loss": ep_loss.item(), "ep_correct": int(ep_correct.item()), "ep_seen": ep_seen,
                           "iv_loss": iv_loss.item(), "iv_correct": int(iv_correct.item()), "iv_seen": iv_seen,
                           "iv_steps": iv_steps, "ep_time": time.perf_counter() - epoch_start}
                    path = self._checkpoint(epoch, step, batch_idx, acc, started)
                    self._interrupted(guard.signum or signal.SIGTERM, f"at step {step} (epoch {epoch + 1}, batch {batch_idx} of {s.spe})", path)
        finally:
            bar.close()

        # ---------------------------------------------------------- end of epoch
        if distributed:  # the epoch's training loss/accuracy over all ranks' shards
            packed = torch.stack([ep_loss, ep_correct.double(), torch.tensor(float(ep_seen), dtype=f64, device=device)])
            packed = packed.to(device if torch.distributed.get_backend() == "nccl" else "cpu")
            torch.distributed.all_reduce(packed)
            ep_loss, ep_correct, ep_seen = packed[0], packed[1].long(), int(packed[2].item())
        events = [e for e in (m.end_of_epoch(epoch, optimizer) for m in methods) if e is not None]
        if events and distributed:
            self._after_removal(events)
        for event in events:
            s.metrics.write({"kind": "removal", "epoch": epoch + 1, **_event_record(event)})
        model = s.model
        train_loss = ep_loss.item() / max(ep_seen, 1)
        if not math.isfinite(train_loss):
            self._diverged(epoch, step, train_loss)
        test_loss, test_acc = (evaluate(model, test_loader, device, bf16=t.bf16) if test_loader is not None
                               else (None, None))
        val_loss, val_acc = self._validate(model)
        live, total = self._live()
        record = {
            "kind": "epoch", "epoch": epoch + 1, "step": step,
            "train_loss": train_loss, "train_accuracy": ep_correct.item() / max(ep_seen, 1),
            "val_loss": val_loss, "val_accuracy": val_acc,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "lr": s.schedule.cfg.lr * s.schedule.last_factor,
            "live_total": live, "neurons_total": total,
            "live_fraction": (live / total) if live is not None and total else None,
            "live_per_layer": self._live_per_layer(),
            "params": count_params(model), "macs": count_macs(model, s.input_shape, device=device),
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        self._method_fields(record, step)
        s.metrics.write(record)
        s.history.append(record)
        acc_txt = f"{100 * test_acc:.2f}%" if test_acc is not None else "n/a"
        live_txt = f", live neurons {live}/{total} ({100 * live / total:.1f}%)" if live is not None and total else ""
        log.info("epoch %d/%d: train loss %.4f, test accuracy %s%s, params %d (%.1fs)", epoch + 1, t.epochs,
                 train_loss, acc_txt, live_txt, record["params"], record["epoch_seconds"])
        path = self._checkpoint(epoch + 1, step, 0, {}, started)
        stop = dist_util.any_rank(guard.signum is not None, device) if distributed else guard.signum is not None
        if stop:
            self._interrupted(guard.signum or signal.SIGTERM, f"after epoch {epoch + 1} (step {step})", path)
        return step

    # ------------------------------------------------------------------ records
    def _build_methods(self, model: nn.Module, bundle: Any, example: torch.Tensor, eval_bs: int,
                       total_steps: int) -> list[Any]:
        """The recipe's training methods, in hook order (DemP first: its noise lands before the masks)."""
        recipe, t = self.recipe, self.recipe.train
        names = [] if recipe.method == "none" else recipe.method.split("+")
        methods: list[Any] = []
        model.eval()
        for name in names:
            if name == "demp":
                from .demp import DemP

                loader = DataLoader(self._death_dataset(bundle), batch_size=eval_bs, shuffle=False)
                methods.append(DemP(model, recipe.demp, example_inputs=example, death_loader=loader,
                                    total_steps=total_steps, seed=t.seed))
            elif name == "stripping":
                from .stripping import SynapticStripping

                loader = DataLoader(self._death_dataset(bundle, recipe.stripping.samples), batch_size=eval_bs,
                                    shuffle=False)
                owner = not any(getattr(m, "owns_plan", False) for m in methods)
                methods.append(SynapticStripping(model, recipe.stripping, example_inputs=example,
                                                 val_loader=loader, owns_plan=owner))
            elif name == "dormant":
                from .dormant import DormantPruning

                loader = DataLoader(self._death_dataset(bundle, recipe.dormant.samples), batch_size=eval_bs,
                                    shuffle=False)
                methods.append(DormantPruning(model, recipe.dormant, example_inputs=example, loader=loader))
            elif name == "dnr":
                from .dnr import DNRPruning

                methods.append(DNRPruning(model, recipe.dnr, example_inputs=example, epochs=t.epochs))
            elif name == "baseline":
                from .baseline import BaselinePruning

                loader = DataLoader(self._death_dataset(bundle, recipe.baseline.samples), batch_size=eval_bs,
                                    shuffle=False)
                methods.append(BaselinePruning(model, recipe.baseline, example_inputs=example, loader=loader,
                                               epochs=t.epochs, seed=t.seed))
            else:  # validate_recipe refuses anything else
                raise UsageError(f"method {name!r} is not implemented")
        model.train()
        # per-element state of one method (stripping masks) follows the removals of the plan owner
        owners = [m for m in methods if getattr(m, "owns_plan", False)]
        for owner in owners:
            for m in methods:
                if m is not owner and hasattr(m, "on_structural_removal"):
                    owner.add_apply_listener(m.on_structural_removal)
        return methods

    def _method_fields(self, record: dict[str, Any], step: int) -> None:
        """Add every method's ``metrics(step)`` fields the record does not already have."""
        for m in self._state.methods:
            for key, value in m.metrics(step).items():
                if key in ("neurons_total", "neuron_sparsity"):
                    continue  # the loop's own counts
                record.setdefault(key, value)

    def _live(self) -> tuple[int | None, int | None]:
        pruner = self._state.pruner
        if pruner is None:
            return None, None
        per = pruner.live_neurons()
        return int(sum(per.values())), int(pruner.total_neurons)

    def _live_per_layer(self) -> dict[str, int] | None:
        pruner = self._state.pruner
        return {k: int(v) for k, v in pruner.live_neurons().items()} if pruner is not None else None

    def _interval_record(self, epoch: int, step: int, lr: float, loss: float, acc: float, step_ms: float) -> dict[str, Any]:
        s = self._state
        live, total = self._live()
        rec: dict[str, Any] = {
            "kind": "interval", "epoch": epoch + 1, "step": step, "loss": loss, "accuracy": acc, "lr": lr,
            "live_total": live, "neurons_total": total,
            "live_fraction": (live / total) if live is not None and total else None,
            "params": count_params(s.model), "step_ms": step_ms,
        }
        if s.pruner is not None:
            rec["live_per_layer"] = self._live_per_layer()
        self._method_fields(rec, step)
        return rec

    # ------------------------------------------------------------------ checkpoint / stop
    def _plan(self) -> PruningPlan:
        s = self._state
        plan = s.pruner.plan if s.pruner is not None else PruningPlan()
        criterion = plan.criterion or {}
        return dataclasses.replace(
            plan, model=s.spec.to_dict(), input_shape=list(s.input_shape), criterion=criterion,
            source={**(plan.source or {}), "method": self.recipe.method, "recipe": self.recipe.name or ""},
        )

    def _checkpoint(self, epoch: int, step: int, batch_in_epoch: int, accumulators: dict[str, float],
                    started: float) -> Path:
        s = self._state
        ctx = self._ctx
        if not ctx.is_main:  # rank 0 writes; the others wait until the checkpoint is complete
            torch.distributed.barrier()
            return self.out_dir / ckpt.CHECKPOINT_DIR / ckpt.checkpoint_name(epoch, step)
        s.metrics.sync()
        state = {
            "optimizer": s.optimizer.state_dict(),
            "lr_schedule": s.schedule.state_dict(step),
            "demp": s.demp.state_dict() if s.demp is not None else None,
            "methods": {m.name: m.state_dict() for m in s.methods if m.name != "demp"},
            "rng": ckpt.capture_rng(s.loader_gen),
            "loop": {
                "epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch,
                "accumulators": accumulators, "metrics_offset": s.metrics.offset(),
                "history": s.history, "dense": s.dense, "elapsed": time.perf_counter() - started,
            },
        }
        path = ckpt.save_checkpoint(
            self.out_dir / ckpt.CHECKPOINT_DIR, model=s.model, plan=self._plan(), state=state, epoch=epoch,
            step=step, recipe=self.recipe.to_dict(), keep=self.recipe.train.checkpoint_keep,
        )
        if ctx.enabled:
            torch.distributed.barrier()
        return path

    # ------------------------------------------------------------------ distributed
    def _wrap_model(self) -> None:
        """Set ``train_model``: a new DDP wrapper around the (possibly just pruned) module under torchrun."""
        s = self._state
        if not self._ctx.enabled:
            s.train_model = s.model
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [s.device.index] if s.device.type == "cuda" else None
        s.train_model = DDP(s.model, device_ids=ids, output_device=ids[0] if ids else None)

    def _after_removal(self, events: Any) -> None:
        """Under DDP: check that every rank applied the same plan, then re-wrap the pruned module."""
        s = self._state
        events = events if isinstance(events, list) else [events]
        if s.pruner is None or not events:
            return
        plan_hash = s.pruner.plan.removal_hash()
        step = events[-1].step
        log.debug("rank %d: step %d plan hash %s", self._ctx.rank, step, plan_hash)
        dist_util.check_plan_hashes(plan_hash, step)
        if any(e.applied for e in events):
            self._wrap_model()

    def _resume_hint(self) -> str:
        return f"demp train --recipe {self.out_dir / RECIPE_FILE} --resume {self.out_dir}"

    def _interrupted(self, signum: int, where: str, path: Path) -> None:
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"{name}: training stopped {where}; checkpoint saved to {path}. "
            f"Resume with: {self._resume_hint()}", path)

    def _diverged(self, epoch: int, step: int, value: float) -> None:
        last = ckpt.latest_checkpoint(self.out_dir / ckpt.CHECKPOINT_DIR)
        kept = (f"the last good checkpoint {last} is kept (resume with: {self._resume_hint()})"
                if last else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"the training loss became {value} at step {step} (epoch {epoch + 1}); stopping. {kept}. "
            "Lower train.lr or demp.peak, or set train.grad_clip, and try again"
        )

    # ------------------------------------------------------------------ end of training
    def _finish(self, bundle: Any, test_loader: DataLoader | None, started: float) -> TrainResult:
        s, t = self._state, self.recipe.train
        model = s.model
        parity_x = sample_inputs(bundle.test if bundle.test is not None else bundle.train, 256)
        final_parity = None
        if s.methods:
            model.eval()
            with torch.inference_mode():
                before = [model(x.to(s.device)).float().cpu() for x in parity_x.split(128)]
            events = [e for e in (m.finalize(s.optimizer) for m in s.methods) if e is not None]
            for event in events:
                s.metrics.write({"kind": "removal", **_event_record(event)})
            if events and self._ctx.enabled:
                self._after_removal(events)
            model.eval()
            with torch.inference_mode():
                after = [model(x.to(s.device)).float().cpu() for x in parity_x.split(128)]
            ref, out = torch.cat(before), torch.cat(after)
            final_parity = {
                "max_abs_diff": float((ref - out).abs().max()) if ref.numel() else 0.0,
                "top1_agreement": float((ref.argmax(1) == out.argmax(1)).float().mean()) if ref.numel() else 1.0,
                "samples": int(ref.shape[0]),
            }
        model.eval()
        test_loss, test_acc = (evaluate(model, test_loader, s.device, bf16=t.bf16) if test_loader is not None
                               else (None, None))
        val_loss, val_acc = self._validate(model)
        plan = self._plan()
        live, total = self._live()
        groups = [{"root": g.root, "before": g.size, "after": g.after, "removed": list(g.removed)} for g in plan.groups]
        if s.pruner is not None:
            in_plan = {g.root for g in plan.groups}
            groups += [{"root": root, "before": n, "after": n, "removed": []}
                       for root, n in s.pruner.present_neurons().items() if root not in in_plan]
        final = {
            "kind": "final", "step": s.total_steps, "epochs": t.epochs, "method": self.recipe.method,
            "val_loss": val_loss, "val_accuracy": val_acc,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "neurons_before": total, "neurons_after": live,
            "neuron_sparsity": (1 - live / total) if live is not None and total else None,
            "params_before": s.dense["params"], "params_after": count_params(model),
            "macs_before": s.dense["macs"], "macs_after": count_macs(model, s.input_shape, device=s.device),
            "removed_channels": plan.removed_channels, "plan_hash": plan.removal_hash(),
            "final_removal_parity": final_parity,
            "groups": groups,
            "train_seconds": time.perf_counter() - started,
        }
        self._method_fields(final, s.total_steps)
        s.metrics.write(final)
        s.metrics.sync()
        compact_dir = None
        _debug_state_hash(model, plan, self._ctx, s.methods)
        model.to("cpu")
        if not self._ctx.is_main:  # rank 0 writes the compact model, plots and summary
            torch.distributed.barrier()
            return TrainResult(model=model, plan=plan, recipe=self.recipe, out_dir=self.out_dir, summary=final,
                               history=list(s.history), compact_dir=self.out_dir / MODEL_DIR if self.save_model else None,
                               spec=s.spec, data=bundle)
        if self.save_model:
            from ..pruned import save_pruned

            compact_dir = Path(save_pruned(model, self.out_dir / MODEL_DIR, plan=plan, overwrite=True))
        if self.plots:
            try:
                make_plots(read_metrics(self.out_dir), self.out_dir / PLOTS_DIR)
            except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose a finished run
                log.warning("could not draw the training plots: %s", exc)
        atomic_write_json(self.out_dir / SUMMARY_FILE, {k: v for k, v in final.items() if k != "kind"})
        if self._ctx.enabled:
            torch.distributed.barrier()
        return TrainResult(model=model, plan=plan, recipe=self.recipe, out_dir=self.out_dir, summary=final,
                           history=list(s.history), compact_dir=compact_dir, spec=s.spec, data=bundle)


def _event_record(event: Any) -> dict[str, Any]:
    rec = event.to_dict() if hasattr(event, "to_dict") else {
        "step": event.step, "removed": event.removed, "live": event.live, "total": event.total, "seconds": event.seconds}
    rec.pop("groups", None)
    return rec


def _debug_state_hash(model: nn.Module, plan: PruningPlan, ctx: dist_util.DistContext,
                      methods: list[Any] | tuple[Any, ...] = ()) -> None:
    """With ``DEMP_DEBUG_STATE_HASH_DIR`` set, write ``rank<R>.json`` (final architecture and state hash).

    A test/debugging hook: comparing the files of all ranks proves they ended with the same model and
    the same method state (``methods``: per method, a SHA-256 of every ``state_dict()`` entry — the
    stripping masks, DNR's scores, the plans — without wall-clock fields; ``method_metrics``: each
    method's ``metrics()`` fields, e.g. ``stripped_weights``).
    """
    where = os.environ.get(dist_util.DEBUG_HASH_ENV)
    if not where:
        return
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    atomic_write_json(Path(where) / f"rank{ctx.rank}.json", {
        "rank": ctx.rank, "world_size": ctx.world_size, "state_hash": dist_util.state_hash(model),
        "plan_hash": plan.removal_hash(), "shapes": shapes,
        "methods": dist_util.method_state_hashes(methods),
        "method_metrics": {m.name: {k: v for k, v in m.metrics(0).items()
                                    if v is None or isinstance(v, (bool, int, float, str))} for m in methods}})


def sample_inputs(dataset: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` inputs of ``dataset`` stacked (deterministic: no shuffling)."""
    k = min(n, len(dataset))
    return torch.stack([dataset[i][0] for i in range(k)]) if k else torch.zeros(0)


@dataclass
class _RunState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    demp: Any  # the DemP method when the recipe uses it (else None)
    methods: list[Any]  # every TrainingMethod of the recipe, in hook order
    pruner: Any  # the method that owns the plan (removes neurons), or None
    metrics: MetricsLogger
    device: torch.device
    spe: int
    total_steps: int
    dense: dict[str, Any]
    history: list[dict[str, Any]]
    spec: Any
    input_shape: tuple[int, ...]
    loader_gen: torch.Generator
    train_model: Any = None  # what the forward pass runs: ``model`` itself, or its DDP wrapper


class _NullMetrics:
    """The metrics logger of ranks other than 0 (only rank 0 writes ``metrics.jsonl``)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def sync(self) -> None:
        pass

    def offset(self) -> int:
        return 0

    def close(self) -> None:
        pass


def train(recipe: RecipeConfig | str | os.PathLike | dict, out_dir: str | os.PathLike, *, resume: bool = False,
          overrides: tuple[str, ...] | list[str] = (), **kwargs: Any) -> TrainResult:
    """Run a recipe (a :class:`RecipeConfig`, a YAML path, or a mapping) into ``out_dir``.

    Keyword arguments go to :class:`Trainer` (``overwrite``, ``progress``, ``data``, ...).
    """
    if isinstance(recipe, RecipeConfig):
        if overrides:
            recipe = load_recipe(recipe.to_dict(), overrides)
    else:
        recipe = load_recipe(recipe, overrides)
    return Trainer(recipe, out_dir, resume=resume, **kwargs).fit()


__all__ = [
    "Trainer", "TrainResult", "TrainingInterrupted", "TrainingDiverged", "LRSchedule", "EpochSampler",
    "build_optimizer", "evaluate", "seed_everything", "train", "recipe_from_dict",
]
