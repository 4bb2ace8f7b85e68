"""The training loop: plain training or train-and-prune, with exact checkpoint/resume.

:meth:`Trainer.fit` runs a :class:`~compressor.training.config.RecipeConfig` in four steps:

1. **setup** — :func:`~.run.build_run` loads the data, builds the model (replaying a resumed run's
   plan), the loaders, optimizer, LR schedule and the recipe's methods; only then is the output
   directory created (or, on resume, the checkpoint and recipe checked first);
2. **restore** — a resumed run loads the optimizer and method states, the loop position, the running
   sums and every RNG state from its checkpoint;
3. **epochs** — each step adds the methods' penalties, steps the optimizer, lets every method act
   (``after_step``), logs ``interval`` records; each epoch ends with the methods' ``end_of_epoch``,
   evaluation, an ``epoch`` record and a checkpoint. SIGINT/SIGTERM finish the step, write a
   checkpoint and stop (:class:`TrainingInterrupted`);
4. **finish** — :func:`~.finish.finish_run`: the final removal, evaluation, the compact model
   (``OUT/model``), plots and ``train_summary.json``.

The ONNX export and report of the compact model are the CLI's job (``demp train`` calls
``exporters.pipeline.finalize``): the library never imports :mod:`exporters`.

Determinism: on CPU with ``num_workers: 0`` a run is bitwise reproducible for a given seed, and a
run resumed from a checkpoint (epoch end or a Ctrl-C mid-epoch) produces the same numbers as one
that was never interrupted: the shuffling order is a function of (seed, epoch), the LR schedule a
function of the step, and all RNG states are checkpointed.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataBundle
from ..errors import CheckpointError, DempError, UsageError
from ..fileio import prepare_output_dir
from ..model_outputs import output_tensor
from ..progress import progress_bar
from . import distributed as dist_util
from . import run_checkpoints as ckpt
from .config import RESUME_TOLERANT_KEYS, RecipeConfig, load_recipe, recipe_diff
from .evaluation import autocast, evaluate, split_batch
from .finish import OUTPUTS, RECIPE_FILE, TrainResult, finish_run
from .methods import RemovalEvent
from .records import LossMeter, epoch_record, event_record, interval_record
from .run import Run, build_run, open_metrics

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "TrainingInterrupted", "TrainingDiverged", "train", "Position"]


class TrainingInterrupted(DempError):
    """The run was stopped by SIGINT/SIGTERM after writing a checkpoint (exit code 130)."""

    exit_code = 130

    def __init__(self, message: str, checkpoint: Path):
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainingDiverged(DempError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Position:
    """Where the loop stands: epochs and optimizer steps completed, batches done in this epoch."""

    epoch: int = 0
    step: int = 0
    batch: int = 0


class SignalGuard:
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

    def __enter__(self) -> SignalGuard:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class Trainer:
    """Runs one recipe into one output directory (see the module docstring).

    ``resume=True`` continues the run in ``out_dir`` from its latest checkpoint; the recipe must equal
    the one the run was started with (apart from :data:`~compressor.training.config.RESUME_TOLERANT_KEYS`).
    ``data`` may pass an already-loaded :class:`~compressor.data.DataBundle` (tests, benchmarks), ``model``
    a model built by :func:`compressor.load_model` to train instead of building ``recipe.model``.
    ``inputs`` names files the run reads (the recipe file): ``overwrite`` refuses an output folder that
    holds one of them, or the recipe's checkpoint or model file, or anything demp did not write.
    """

    def __init__(self, recipe: RecipeConfig, out_dir: str | os.PathLike, *, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, data: DataBundle | None = None,
                 handle_signals: bool = True, save_model: bool = True, plots: bool = True,
                 tensorboard: bool = True, inputs: tuple[str | os.PathLike, ...] = (), model: nn.Module | None = None):
        self.recipe = recipe
        self.model = model  # a built model to train instead of building recipe.model (the Python API)
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self.data = data
        self.handle_signals = handle_signals
        self.save_model = save_model
        self.plots = plots
        self.tensorboard = tensorboard
        model_file = (recipe.model.model_file or "").rpartition(":")[0] or None
        self.inputs = (*inputs, recipe.model.checkpoint, model_file)
        self.started = 0.0  # perf_counter at which the run (including the time before a resume) started

    # ------------------------------------------------------------------ the four steps
    def fit(self) -> TrainResult:
        ctx = dist_util.context()
        if ctx.enabled:  # checked before anything is written
            dist_util.per_rank_batch_size(self.recipe.data.batch_size, ctx.world_size)
        checkpoint = self._resume_checkpoint() if self.resume else None
        run = build_run(self.recipe, ctx=ctx, data=self.data, checkpoint=checkpoint, model=self.model)
        if checkpoint is None:
            self._create_output(ctx)
        position, sums = self._restore(run, checkpoint)
        run.wrap_model()
        try:
            with SignalGuard(self.handle_signals) as guard:
                run.model.train()
                if position.step == 0:  # a fresh run (a resumed one already took its start removals)
                    self._write_events(run, [m.on_train_start(run.optimizer) for m in run.methods], epoch=0)
                while position.epoch < run.epochs:
                    self._run_epoch(run, position, sums, guard)
                    position.epoch, position.batch, sums = position.epoch + 1, 0, {}
            dist_util.broadcast_buffers(run.model)  # the ranks' BatchNorm statistics after their own last batch
            return finish_run(run, self.out_dir, started=self.started, save_model=self.save_model,
                              plots=self.plots, after_removal=self._after_removal)
        finally:
            run.metrics.close()

    def _resume_checkpoint(self) -> ckpt.Checkpoint:
        """The checkpoint to resume from, refused when the recipe differs from the run's own."""
        checkpoint = ckpt.load_checkpoint(ckpt.find_resume_checkpoint(self.out_dir))
        diffs = recipe_diff(checkpoint.meta.get("recipe") or {}, self.recipe, ignore=RESUME_TOLERANT_KEYS)
        if diffs:
            shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in diffs[:12])
            more = f" (and {len(diffs) - 12} more)" if len(diffs) > 12 else ""
            raise UsageError(f"cannot resume {self.out_dir}: it was started with a different recipe ({shown}{more}). "
                             f"Resume with its own recipe: --recipe {self.out_dir / RECIPE_FILE}")
        return checkpoint

    def _create_output(self, ctx: dist_util.DistContext) -> None:
        """Rank 0 creates the output directory and saves the recipe; every rank stops if that failed."""
        error = None
        if ctx.is_main:
            try:
                prepare_output_dir(self.out_dir, overwrite=self.overwrite, outputs=OUTPUTS, inputs=self.inputs)
                self.recipe.save(self.out_dir / RECIPE_FILE)
            except DempError as exc:
                if not ctx.enabled:
                    raise
                error = str(exc)
        if ctx.enabled:
            dist_util.agree(error)

    def _restore(self, run: Run, checkpoint: ckpt.Checkpoint | None) -> tuple[Position, dict[str, Any]]:
        """Optimizer and method states, loop position, running sums and RNG states of a checkpoint."""
        if checkpoint is None:
            open_metrics(run, self.out_dir, tensorboard=self.tensorboard, resume_offset=None)
            self.started = time.perf_counter()
            return Position(), {}
        state = checkpoint.state
        try:
            run.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {checkpoint.path}: optimizer state does not match the model "
                                  f"({exc})") from None
        saved = dict(state.get("methods") or {})
        if state.get("demp") is not None:  # checkpoints written before every method was under "methods"
            saved.setdefault("demp", state["demp"])
        for m in run.methods:
            if saved.get(m.name) is not None:
                m.load_state_dict(saved[m.name])
        loop = state["loop"]
        run.history = list(loop.get("history", []))
        run.dense = {"mac_counter": None, **dict(loop["dense"])}
        run.cost.load_state_dict(dict(loop.get("cost") or {}))
        open_metrics(run, self.out_dir, tensorboard=self.tensorboard, resume_offset=int(loop["metrics_offset"]))
        ckpt.restore_rng(state["rng"], run.loader_gen)
        self.started = time.perf_counter() - float(loop.get("elapsed", 0.0))
        log.info("resuming %s from %s (epoch %d, step %d)", self.out_dir, checkpoint.path.name, int(loop["epoch"]),
                 int(loop["step"]))
        return (Position(int(loop["epoch"]), int(loop["step"]), int(loop["batch_in_epoch"])),
                dict(loop.get("accumulators", {})))

    # ------------------------------------------------------------------ one epoch
    def _run_epoch(self, run: Run, pos: Position, sums: dict[str, Any], guard: SignalGuard) -> None:
        run.sampler.set_epoch(pos.epoch, pos.batch)
        epoch_sums = LossMeter(run.device, sums, "ep_")
        interval = LossMeter(run.device, sums, "iv_")
        epoch_start = time.perf_counter() - float(sums.get("ep_time", 0.0))
        steps = run.steps_in_epoch(pos.epoch)
        bar = progress_bar(steps, f"epoch {pos.epoch + 1}/{run.epochs}", enabled=self.progress, initial=pos.batch,
                           dynamic_ncols=True)  # on no terminal: a plain line every 30 s
        try:
            t_last = time.perf_counter()
            macs, dense = run.macs(), not self._removed_any(run)
            for batch in run.train_loader:
                if pos.batch >= steps:  # a fractional last epoch ends early
                    break
                lr, loss, correct, n, events = self._step(run, batch, pos)
                now = time.perf_counter()
                run.cost.add_step(macs, run.dense.get("macs"), n, now - t_last, dense=dense)
                if events:  # the next steps run the smaller model
                    macs, dense = run.macs(), not self._removed_any(run)
                epoch_sums.add(loss, correct, n, 0.0)
                interval.add(loss, correct, n, now - t_last)
                t_last = now
                for event in events:
                    run.metrics.write(event_record(event, pos.epoch))
                if interval.steps >= self.recipe.train.log_every or pos.batch == steps:
                    self._log_interval(run, pos, lr, interval, bar)
                bar.update(1)
                if self._stop_requested(run, guard) and pos.batch < steps:
                    state = {**epoch_sums.state("ep_", steps=False), **interval.state("iv_", steps=True),
                             "ep_time": time.perf_counter() - epoch_start}
                    path = self._checkpoint(run, pos, state)
                    self._interrupted(guard, f"at step {pos.step} (epoch {pos.epoch + 1}, batch {pos.batch} of "
                                             f"{steps})", path)
        finally:
            bar.close()
        self._end_epoch(run, pos, epoch_sums, epoch_start, guard)

    def _step(self, run: Run, batch: Any, pos: Position) -> tuple[float, torch.Tensor, torch.Tensor, int,
                                                                    list[RemovalEvent]]:
        """One optimizer step: (lr, loss, correct predictions, samples, the methods' removal events)."""
        t, step = self.recipe.train, pos.step
        x, y = split_batch(batch)
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        lr = run.schedule.apply(run.optimizer, step)
        assert run.train_model is not None, "Run.wrap_model() sets the model to train before the first step"
        with autocast(run.device, t.bf16):
            out = output_tensor(run.train_model(x))  # the DDP wrapper under torchrun (re-created after removals)
            loss = run.loss_fn(out.float(), y)
        total = loss
        for m in run.methods:
            term = m.penalty(step)
            if term is not None:
                total = total + term
        if run.device.type != "cuda" and not math.isfinite(total.item()):
            self._diverged(pos.epoch, step, total.item())
        run.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if t.grad_clip:
            nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
        run.optimizer.step()
        events = [e for e in (m.after_step(step, run.optimizer) for m in run.methods) if e is not None]
        if events and run.ctx.enabled:
            self._after_removal(run, events)
        pos.step += 1
        pos.batch += 1
        with torch.no_grad():
            correct = (out.argmax(1) == y).sum()
        return lr, loss, correct, y.numel(), events

    @staticmethod
    def _removed_any(run: Run) -> bool:
        return any(getattr(m, "removals", 0) for m in run.methods)

    def _log_interval(self, run: Run, pos: Position, lr: float, interval: LossMeter, bar: Any) -> None:
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        rec = interval_record(run, epoch=pos.epoch, step=pos.step, lr=lr, meter=interval)
        if not math.isfinite(rec["loss"]):
            self._diverged(pos.epoch, pos.step, rec["loss"])
        run.metrics.write(rec)
        live = f"{100 * rec['live_fraction']:.0f}%" if rec.get("live_fraction") is not None else "-"
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{100 * rec['accuracy']:.1f}%", live=live,
                        lam=f"{rec.get('lambda', 0.0):.2g}", refresh=False)
        interval.reset()

    def _end_epoch(self, run: Run, pos: Position, epoch_sums: LossMeter, epoch_start: float,
                   guard: SignalGuard) -> None:
        """The methods' end-of-epoch work, evaluation, the ``epoch`` record and the epoch checkpoint."""
        if run.ctx.enabled:  # the epoch's training loss/accuracy over all ranks' shards
            self._reduce_epoch_sums(run, epoch_sums)
        self._write_events(run, [m.end_of_epoch(pos.epoch, run.optimizer) for m in run.methods], epoch=pos.epoch)
        if not math.isfinite(epoch_sums.mean_loss()):
            self._diverged(pos.epoch, pos.step, epoch_sums.mean_loss())
        test = evaluate(run.model, run.test_loader, run.device, bf16=self.recipe.train.bf16) \
            if run.test_loader is not None else (None, None)
        val = evaluate(run.model, run.val_loader, run.device, bf16=self.recipe.train.bf16) \
            if run.val_loader is not None else (None, None)
        record = epoch_record(run, epoch=pos.epoch, step=pos.step, train=epoch_sums, val=val, test=test,
                              started=epoch_start)
        run.metrics.write(record)
        run.history.append(record)
        self._log_epoch(record)
        path = self._checkpoint(run, Position(pos.epoch + 1, pos.step, 0), {})
        if self._stop_requested(run, guard):
            self._interrupted(guard, f"after epoch {pos.epoch + 1} (step {pos.step})", path)

    def _write_events(self, run: Run, events: list[RemovalEvent | None], *, epoch: int) -> None:
        """Record the removal events of a hook outside the steps (start of training, end of an epoch)."""
        done = [e for e in events if e is not None]
        if done and run.ctx.enabled:
            self._after_removal(run, done)
        for event in done:
            run.metrics.write(event_record(event, epoch))

    @staticmethod
    def _reduce_epoch_sums(run: Run, sums: LossMeter) -> None:
        device = run.device
        packed = torch.stack([sums.loss, sums.correct.double(), torch.tensor(float(sums.seen), dtype=torch.float64,
                                                                             device=device)])
        packed = packed.to(device if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(packed)
        sums.loss.copy_(packed[0].to(device))
        sums.correct.copy_(packed[1].long().to(device))
        sums.seen = int(packed[2].item())

    def _log_epoch(self, record: dict[str, Any]) -> None:
        acc = f"{100 * record['test_accuracy']:.2f}%" if record["test_accuracy"] is not None else "n/a"
        live, total = record["live_total"], record["neurons_total"]
        live_txt = f", live neurons {live}/{total} ({100 * live / total:.1f}%)" if live is not None and total else ""
        log.info("epoch %d/%d: train loss %.4f, test accuracy %s%s, params %d (%.1fs)", record["epoch"],
                 math.ceil(self.recipe.train.epochs), record["train_loss"], acc, live_txt, record["params"],
                 record["epoch_seconds"])

    # ------------------------------------------------------------------ checkpoint / stop
    def _checkpoint(self, run: Run, pos: Position, sums: dict[str, Any]) -> Path:
        """Write a checkpoint at ``pos`` (rank 0; the other ranks wait until it is complete)."""
        if not run.ctx.is_main:
            torch.distributed.barrier()
            return self.out_dir / ckpt.CHECKPOINT_DIR / ckpt.checkpoint_name(pos.epoch, pos.step)
        run.metrics.sync()
        state = {
            "optimizer": run.optimizer.state_dict(),
            "lr_schedule": run.schedule.state_dict(pos.step),
            "methods": {m.name: m.state_dict() for m in run.methods},
            "rng": ckpt.capture_rng(run.loader_gen),
            "loop": {"epoch": pos.epoch, "step": pos.step, "batch_in_epoch": pos.batch, "accumulators": sums,
                     "metrics_offset": run.metrics.offset(), "history": run.history, "dense": run.dense,
                     "elapsed": time.perf_counter() - self.started, "cost": run.cost.state_dict()},
        }
        path = ckpt.save_checkpoint(self.out_dir / ckpt.CHECKPOINT_DIR, model=run.model, plan=run.plan(), state=state,
                                    epoch=pos.epoch, step=pos.step, recipe=self.recipe.to_dict(),
                                    keep=self.recipe.train.checkpoint_keep)
        if run.ctx.enabled:
            torch.distributed.barrier()
        return path

    @staticmethod
    def _stop_requested(run: Run, guard: SignalGuard) -> bool:
        stop = guard.signum is not None
        return dist_util.any_rank(stop, run.device) if run.ctx.enabled else stop

    @staticmethod
    def _after_removal(run: Run, events: list[RemovalEvent]) -> None:
        """Under DDP: check that every rank applied the same plan, then re-wrap the pruned module."""
        owner = run.owner
        if owner is None or not events:
            return
        plan_hash = owner.plan.removal_hash()
        log.debug("rank %d: step %d plan hash %s", run.ctx.rank, events[-1].step, plan_hash)
        dist_util.check_plan_hashes(plan_hash, events[-1].step)
        if any(e.applied for e in events):
            run.wrap_model()

    def _resume_hint(self) -> str:
        return f"demp train --recipe {self.out_dir / RECIPE_FILE} --resume {self.out_dir}"

    def _interrupted(self, guard: SignalGuard, where: str, path: Path) -> None:
        name = signal.Signals(guard.signum or signal.SIGTERM).name
        raise TrainingInterrupted(f"{name}: training stopped {where}; checkpoint saved to {path}. "
                                  f"Resume with: {self._resume_hint()}", path)

    def _diverged(self, epoch: int, step: int, value: float) -> None:
        last = ckpt.latest_checkpoint(self.out_dir / ckpt.CHECKPOINT_DIR)
        kept = (f"the last good checkpoint {last} is kept (resume with: {self._resume_hint()})"
                if last else "no checkpoint had been written yet")
        raise TrainingDiverged(f"the training loss became {value} at step {step} (epoch {epoch + 1}); stopping. "
                               f"{kept}. Lower train.lr or demp.peak, or set train.grad_clip, and try again")


def train(recipe: RecipeConfig | str | os.PathLike | dict, out_dir: str | os.PathLike, *, resume: bool = False,
          overrides: tuple[str, ...] | list[str] = (), **kwargs: Any) -> TrainResult:
    """Run a recipe (a :class:`RecipeConfig`, a YAML path, or a mapping) into ``out_dir``.

    Keyword arguments go to :class:`Trainer` (``overwrite``, ``progress``, ``data``, ...).
    """
    if isinstance(recipe, (str, os.PathLike)):
        kwargs["inputs"] = (*kwargs.get("inputs", ()), recipe)
    if isinstance(recipe, RecipeConfig):
        if overrides:
            recipe = load_recipe(recipe.to_dict(), overrides)
    else:
        recipe = load_recipe(recipe, overrides)
    return Trainer(recipe, out_dir, resume=resume, **kwargs).fit()
