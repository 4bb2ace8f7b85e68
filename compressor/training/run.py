"""Everything one training run works with, built from a recipe: :class:`Run` and :func:`build_run`.

:func:`build_run` seeds, loads and splits the data (:class:`~.splits.TrainingSplits`), builds the model
from its spec (a resumed run replays its checkpoint's plan and loads its weights), counts the dense
model, and builds the loaders, optimizer, LR schedule and the recipe's training methods from the
method registry. Nothing is written: the trainer creates the output directory only once all of this
succeeded, so a typo in a path leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..counting import count_macs, count_params
from ..data import DataBundle, num_samples, seed_worker
from ..errors import CheckpointError, DataError, DempError
from ..models import ModelSpec, build_model, make_spec
from ..plan import PruningPlan
from ..pruned import replay_plan
from ..weight_files import load_weights, read_checkpoint
from . import distributed as dist_util
from .config import RecipeConfig
from .cost import TrainingCost
from .evaluation import resolve_device, seed_everything
from .methods import METHODS, AnalyzerPruner, MethodContext, TrainingMethod
from .metrics import MetricsLogger, NullMetrics
from .optim import LRSchedule, build_optimizer
from .run_checkpoints import Checkpoint
from .splits import EpochSampler, TrainingSplits, steps_per_epoch

log = logging.getLogger(__name__)

__all__ = ["Run", "build_run", "build_methods", "run_steps"]

LOADER_SEED_OFFSET = 104729


@dataclass
class Run:
    """The state of one training run (what the trainer's steps read and change)."""

    recipe: RecipeConfig
    ctx: dist_util.DistContext
    device: torch.device
    splits: TrainingSplits
    spec: ModelSpec
    model: nn.Module
    input_shape: tuple[int, ...]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loss_fn: nn.Module
    methods: list[TrainingMethod]
    sampler: Any  # EpochSampler or ResumableDistributedSampler
    train_loader: DataLoader
    test_loader: DataLoader | None
    val_loader: DataLoader | None
    loader_gen: torch.Generator
    steps_per_epoch: int
    total_steps: int
    dense: dict[str, Any]  # params / macs / mac_counter of the model before any removal
    train_model: nn.Module | None = None  # what the forward pass runs: ``model`` or its DDP wrapper
    metrics: Any = field(default_factory=NullMetrics)  # MetricsLogger on rank 0
    history: list[dict[str, Any]] = field(default_factory=list)  # the ``epoch`` records
    cost: TrainingCost = field(default_factory=TrainingCost)  # training MACs and step wall-clock so far
    _macs: dict[str, int | None] = field(default_factory=dict)  # MACs per architecture state (plan hash)

    @property
    def epochs(self) -> int:
        """Epochs the loop runs (the last one cut short when ``train.epochs`` is a fraction)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps of 0-based ``epoch`` (all of the loader's batches but in a cut-short last epoch)."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))

    @property
    def bundle(self) -> DataBundle:
        return self.splits.bundle

    @property
    def owner(self) -> AnalyzerPruner | None:
        """The method that removes neurons and owns the plan (None for plain training)."""
        return next((m for m in self.methods if m.owns_plan), None)  # type: ignore[return-value]

    def plan(self) -> PruningPlan:
        """The composed removals in the original numbering, with the model spec and the run's source."""
        owner = self.owner
        plan = owner.plan if owner is not None else PruningPlan()
        return dataclasses.replace(plan, model=self.spec.to_dict(), input_shape=list(self.input_shape),
                                   criterion=plan.criterion or {},
                                   source={**(plan.source or {}), "method": self.recipe.method,
                                           "recipe": self.recipe.name or ""})

    def live(self) -> tuple[int | None, int | None]:
        """(live neurons, neurons of the original model); (None, None) without a plan owner."""
        owner = self.owner
        if owner is None:
            return None, None
        return int(sum(owner.live_neurons().values())), int(owner.total_neurons)

    def live_per_layer(self) -> dict[str, int] | None:
        owner = self.owner
        return {k: int(v) for k, v in owner.live_neurons().items()} if owner is not None else None

    def params(self) -> int:
        return count_params(self.model)

    def macs(self) -> int | None:
        """MACs per sample of the model now (one count per architecture state, with the counter that
        counted the dense model); None, with a warning, when that counter cannot count it: a figure
        in a record never stops a run."""
        key = self.plan().removal_hash()
        if key not in self._macs:
            try:
                self._macs[key] = count_macs(self.model, self.input_shape, device=self.device,
                                             counter=self.dense.get("mac_counter")).total_macs
            except DempError as exc:
                log.warning("MACs not recorded for this architecture: %s", exc)
                self._macs[key] = None
        return self._macs[key]

    def wrap_model(self) -> None:
        """Set ``train_model``: a new DDP wrapper around the (possibly just pruned) module under torchrun."""
        if not self.ctx.enabled:
            self.train_model = self.model
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        self.train_model = DDP(self.model, device_ids=ids, output_device=ids[0] if ids else None)


def run_steps(steps_per_epoch: int, epochs: float) -> int:
    """Optimizer steps of a run of ``epochs`` (a fraction trains that share of an epoch; at least one step)."""
    return max(1, int(round(steps_per_epoch * float(epochs))))


def _build_model(recipe: RecipeConfig, bundle: DataBundle) -> tuple[nn.Module, ModelSpec]:
    m = recipe.model
    spec = make_spec(m.arch, num_classes=int(m.num_classes or bundle.num_classes),
                     input_shape=tuple(int(s) for s in bundle.input_shape), model_file=m.model_file, **dict(m.kwargs))
    model = build_model(spec)
    if m.checkpoint:
        load_weights(model, read_checkpoint(m.checkpoint))
    return model, getattr(model, "demp_spec", spec)


def _restore_architecture(model: nn.Module, checkpoint: Checkpoint, input_shape: tuple[int, ...]) -> None:
    """Replay the checkpoint's removals (original numbering) on the fresh model, then load its weights."""
    replay_plan(model, checkpoint.plan, input_shape)
    try:
        load_weights(model, checkpoint.weights)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path} does not fit the model of this recipe: {exc}") from None


def _loaders(recipe: RecipeConfig, splits: TrainingSplits, ctx: dist_util.DistContext, device: torch.device,
             ) -> tuple[Any, DataLoader, DataLoader | None, DataLoader | None, torch.Generator, int]:
    """(sampler, train, test, validation loaders, the loader's generator, steps per epoch)."""
    d, t = recipe.data, recipe.train
    train = splits.bundle.train
    n_train = num_samples(train)
    if n_train == 0:
        raise DataError(f"dataset {d.spec!r} has an empty training split")
    drop_last = d.drop_last and n_train >= d.batch_size
    if ctx.enabled:
        # data.batch_size is the global batch: the number of optimizer steps per epoch (and so the LR
        # schedule, demp.interval and the checkpoint's step count) does not depend on the world size.
        rank_bs = dist_util.per_rank_batch_size(d.batch_size, ctx.world_size)
        sampler: Any = dist_util.ResumableDistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank,
                                                             seed=t.seed, batch_size=rank_bs, drop_last=drop_last)
    else:
        rank_bs = d.batch_size
        sampler = EpochSampler(n_train, t.seed, d.batch_size, drop_last)
    gen = torch.Generator()
    gen.manual_seed(t.seed + LOADER_SEED_OFFSET)
    pin = device.type == "cuda"
    train_loader = DataLoader(train, batch_size=rank_bs, sampler=sampler, drop_last=drop_last,
                              num_workers=d.num_workers, generator=gen, pin_memory=pin,
                              worker_init_fn=seed_worker if d.num_workers else None)
    eval_bs = d.eval_batch_size or 2 * d.batch_size

    def eval_loader(dataset: Any) -> DataLoader | None:
        return None if dataset is None else DataLoader(dataset, batch_size=eval_bs, shuffle=False,
                                                       num_workers=d.num_workers, pin_memory=pin)

    return (sampler, train_loader, eval_loader(splits.bundle.test), eval_loader(splits.validation()), gen,
            steps_per_epoch(n_train, d.batch_size, d.drop_last))


def build_methods(recipe: RecipeConfig, ctx: MethodContext) -> list[TrainingMethod]:
    """The recipe's training methods, in hook order (DemP first: its noise lands before the masks).

    The first method that removes neurons owns the plan; every other method follows its removals.
    """
    methods: list[TrainingMethod] = []
    ctx.model.eval()
    for name in recipe.method_sections():
        _, cls = METHODS[name]
        owner = next((m for m in methods if m.owns_plan), None)
        methods.append(cls.build(getattr(recipe, name), dataclasses.replace(ctx, plan_owner=owner)))
    ctx.model.train()
    owner = next((m for m in methods if m.owns_plan), None)
    for m in methods:
        if owner is not None and m is not owner:
            owner.add_apply_listener(m.on_structural_removal)
    return methods


def build_run(recipe: RecipeConfig, *, ctx: dist_util.DistContext, data: DataBundle | None = None,
              checkpoint: Checkpoint | None = None, model: nn.Module | None = None) -> Run:
    """Everything the run needs, in a fixed order (the seeded RNG draws are part of reproducibility)."""
    t = recipe.train
    seed_everything(t.seed)
    device = resolve_device(t.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    splits = TrainingSplits(recipe, data)
    if splits.bundle.test is None:
        log.warning("the dataset has no test split: test accuracy will not be reported")
    if model is not None:  # built by the caller (compressor.load_model: it knows its spec)
        spec: ModelSpec = model.demp_spec  # type: ignore[assignment]  # demp's attribute on the module
    else:
        model, spec = _build_model(recipe, splits.bundle)
    input_shape = tuple(int(s) for s in splits.bundle.input_shape)
    if checkpoint is not None:
        _restore_architecture(model, checkpoint, input_shape)
    model.to(device)
    dense: dict[str, Any] = {"params": None, "macs": None, "mac_counter": None}
    if checkpoint is None:
        count = count_macs(model, input_shape, device=device)
        dense = {"params": count_params(model), "macs": count.total_macs, "mac_counter": count.counter}
    sampler, train_loader, test_loader, val_loader, gen, spe = _loaders(recipe, splits, ctx, device)
    total_steps = run_steps(spe, t.epochs)
    eval_bs = recipe.data.eval_batch_size or 2 * recipe.data.batch_size
    method_ctx = MethodContext(
        model=model, example_inputs=torch.zeros((2, *input_shape), device=device), total_steps=total_steps,
        epochs=math.ceil(total_steps / spe), seed=t.seed, measurement_samples=splits.measurement_samples,
        measurement_loader=lambda n: DataLoader(splits.measurement(n), batch_size=eval_bs, shuffle=False))
    methods = build_methods(recipe, method_ctx)
    return Run(recipe=recipe, ctx=ctx, device=device, splits=splits, spec=spec, model=model,
               input_shape=input_shape, optimizer=build_optimizer(t, list(model.parameters())),
               schedule=LRSchedule(t, spe, total_steps),
               loss_fn=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing), methods=methods, sampler=sampler,
               train_loader=train_loader, test_loader=test_loader, val_loader=val_loader, loader_gen=gen,
               steps_per_epoch=spe, total_steps=total_steps, dense=dense)


def open_metrics(run: Run, out_dir: Any, *, tensorboard: bool, resume_offset: int | None) -> None:
    """Rank 0 appends to ``metrics.jsonl`` (cut back to the checkpoint's offset on resume)."""
    run.metrics = (MetricsLogger(out_dir, tensorboard=tensorboard, resume_offset=resume_offset)
                   if run.ctx.is_main else NullMetrics())
