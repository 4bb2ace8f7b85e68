"""``demp train`` and ``demp demo``.

``demp train --recipe R --data SPEC --out DIR`` runs a recipe (see ``docs/training.md``); ``--resume
DIR`` continues an interrupted run; ``--set a.b=value`` overrides recipe keys. At the end the compact
model in ``DIR/model`` is exported and reported through :func:`exporters.pipeline.finalize` with the
report of :func:`exporters.report.training_report` (the CLI may import :mod:`exporters`; the library
may not). Heavy imports happen inside the handlers so ``demp --help`` stays fast.

``demp demo`` needs no arguments: it trains the small CNN on scikit-learn's bundled 8x8 digits with
DemP, removing neurons as they die, exports the compact model, benchmarks it against the dense one
and prints a summary — about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import DempError, UsageError

log = logging.getLogger(__name__)

#: The demo's recipe (kept identical to samples/recipes/demp-cnn-digits.yaml; a test checks it).
DEMO_RECIPE = """\
# DemP on the small CNN (32 + 64 conv channels with BatchNorm) and scikit-learn's bundled 8x8
# handwritten digits: the `demp demo` recipe. Lasso on the BatchNorm scales (the later DemP paper's
# "Lasso(gamma)") with a one-cycle strength and a high Adam learning rate (neurons die faster with
# larger steps, paper 000 section 3.2): about two thirds of the 96 neurons die and are removed while
# training, at test accuracy within about a point of the same recipe with demp.peak=0
# (see BENCHMARKS.md). Try: demp train --recipe THIS --out run/ --set demp.peak=0.03
name: demp-cnn-digits
method: demp
model:
  arch: cnn
data:
  spec: digits
  batch_size: 32
train:
  epochs: 12
  optimizer: adam
  lr: 5.0e-2
  lr_schedule: cosine
  seed: 0
demp:
  regularizer: lasso
  target: norm_scale
  peak: 0.1
  schedule: one_cycle
  span: 0.85
  noise: 5.0e-5
  interval: 40
  death_samples: 512
export:
  onnx: true
  latency: true
  batch_sizes: [1, 32]
"""


TRAIN_EXAMPLES = """examples:
  demp train --recipe samples/recipes/demp-cnn-digits.yaml --out run/
  demp train --recipe samples/recipes/demp-resnet18-cifar10.yaml --data cifar10:/data/cifar --out run/
  demp train --recipe run/recipe.yaml --resume run/                     (after a crash or Ctrl-C)
  demp train --recipe samples/recipes/demp-mlp-digits.yaml --set demp.peak=1e-3 --epochs 20 --out run2/
  torchrun --nproc_per_node 2 -m compressor train --recipe R.yaml --out run/   (DDP)
"""

DEMO_EXAMPLES = """examples:
  demp demo
  demp demo --out /tmp/demo --overwrite --epochs 4
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``demo`` to the ``demp`` command."""
    p = subparsers.add_parser(
        "train", epilog=TRAIN_EXAMPLES,
        help="train (and prune) a model from a YAML recipe",
        description="Train a model from a YAML recipe with DemP (dead neurons removed as they die) or plainly, "
        "checkpointing every epoch, and export the compact model (plan.json, weights.safetensors, model.onnx, "
        "report) into OUT/model.",
    )
    p.add_argument("--recipe", metavar="YAML", help="recipe file (default with --resume: DIR/recipe.yaml)")
    p.add_argument("--data", metavar="SPEC", help="dataset spec overriding data.spec, e.g. cifar10:/data/cifar")
    p.add_argument("--out", metavar="DIR", help="output directory for checkpoints, metrics and the compact model")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR from its latest checkpoint")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a recipe key (repeatable), e.g. --set demp.peak=1e-3 --set train.epochs=20")
    p.add_argument("--epochs", type=int, help="shorthand for --set train.epochs=N")
    p.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="shorthand for --set train.device=...")
    p.add_argument("--normalize", metavar="NORM", help="shorthand for --set data.normalize=NORM: input statistics, "
                   "auto | imagenet | cifar10 | cifar100 | mnist | M1,M2,M3/S1,S2,S3, for every data set (an "
                   "imagefolder: too); auto: those of the recipe's architecture's published weights, else the data's "
                   "own")
    from exporters.quantize import DEFAULT_MAX_DISAGREEMENT, QUANTIZE_MODES  # light: no torch or onnxruntime

    p.add_argument("--quantize", choices=QUANTIZE_MODES, help="shorthand for --set export.quantize=int8: also write "
                   "model.int8.onnx, shipped if it agrees with model.onnx on held-out training samples")
    p.add_argument("--quantize-exclude", action="append", metavar="NAME", help="shorthand for export.quantize_exclude "
                   "(repeatable): an operator type (Gemm), ONNX node or module name kept in float")
    p.add_argument("--quantize-max-disagreement", type=float, metavar="FRACTION",
                   help=f"shorthand for export.quantize_max_disagreement (default {DEFAULT_MAX_DISAGREEMENT:g})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace demp's own outputs in --out (a folder holding the recipe or other files is refused)")
    p.add_argument("--no-export", action="store_true",
                   help="skip the ONNX export and report (OUT/model keeps plan.json + weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)

    d = subparsers.add_parser(
        "demo", epilog=DEMO_EXAMPLES,
        help="train-and-prune a small CNN on bundled digits, export and benchmark it (about a minute)",
        description="The embedded default: DemP on scikit-learn's 8x8 digits with a small CNN, removing neurons as "
        "they die, then ONNX export and a dense-vs-compact benchmark. No data or checkpoint needed.",
    )
    d.add_argument("--out", metavar="DIR", default="demp-demo", help="output directory (default: ./demp-demo)")
    d.add_argument("--overwrite", action="store_true", help="replace demp's own outputs in --out")
    d.add_argument("--epochs", type=int, help="training epochs (default: the demo recipe's)")
    d.add_argument("--threads", type=int, default=1,
                   help="CPU threads for training and timing (default 1, demp's timing policy: the demo's 8x8 model "
                   "is too small to gain from more, and extra threads only spin on a busy machine)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(handler=run_demo)


# ---------------------------------------------------------------------------- train


def _shorthands(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides or [])
    for key, value in (("train.epochs", getattr(args, "epochs", None)), ("train.seed", getattr(args, "seed", None)),
                       ("train.device", getattr(args, "device", None)),
                       ("data.normalize", getattr(args, "normalize", None))):
        if value is not None:
            extra.append(f"{key}={value}")
    return extra + quantize_overrides(args)


def quantize_overrides(args: argparse.Namespace) -> list[str]:
    """The recipe overrides (``export.quantize*``) of the ``--quantize*`` options given: ``demp train``'s
    shorthands and ``demp compress --target-* --quantize``."""
    sets = [f"{key}={value}" for key, value in (("export.quantize", getattr(args, "quantize", None)),
                                                ("export.quantize_max_disagreement",
                                                 getattr(args, "quantize_max_disagreement", None)))
            if value is not None]
    if getattr(args, "quantize_exclude", None):
        sets.append(f"export.quantize_exclude={json.dumps(list(args.quantize_exclude))}")  # JSON is YAML
    return sets


def run_train(args: argparse.Namespace) -> int:
    from ..training.config import load_recipe
    from ..training.finish import RECIPE_FILE

    if args.resume:
        out = check_resume_args(args)
        recipe_path = Path(args.recipe) if args.recipe else out / RECIPE_FILE
        if not recipe_path.is_file() and not args.recipe:
            raise UsageError(f"--resume {out}: no {RECIPE_FILE} there, so it is not a run written by demp train; pass "
                             "the --out folder of the interrupted run")
    else:
        if not args.recipe:
            raise UsageError("--recipe is required (see samples/recipes/), or pass --resume DIR to continue a run")
        if not args.out:
            raise UsageError("--out DIR is required: where checkpoints, metrics and the compact model go")
        out, recipe_path = Path(args.out), Path(args.recipe)
    recipe = load_recipe(recipe_path, _shorthands(args), data_spec=args.data)
    return launch(recipe, out, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.no_progress,
                  export=not args.no_export, inputs=(args.recipe,) if args.recipe else ())


def check_resume_args(args: argparse.Namespace) -> Path:
    """The folder ``--resume DIR`` names, checked before any recipe is read from it: ``--out`` (if given) is the
    same folder, no ``--overwrite``, and the folder exists (``demp train`` and ``demp compress --target-*``)."""
    out = Path(args.resume)
    if args.out and Path(args.out).resolve() != out.resolve():
        raise UsageError(f"--out {args.out} and --resume {args.resume} differ; a resumed run writes into its own "
                         "folder")
    if args.overwrite:
        raise UsageError("--overwrite and --resume contradict each other; drop one")
    if not out.exists():
        raise UsageError(f"--resume {out}: the folder does not exist; pass the --out folder of the interrupted run")
    if not out.is_dir():
        raise UsageError(f"--resume {out}: not a folder; pass the --out folder of the interrupted run")
    return out


def launch(recipe: Any, out: Path, *, resume: bool, overwrite: bool, progress: bool, export: bool,
           inputs: tuple[Any, ...] = (), summarize: Callable[[Any, dict[str, Any] | None], str] | None = None) -> int:
    """Train ``recipe`` into ``out``, export and summarize the compact model; under torchrun one process per
    device, rank 0 writing every file (see docs/training.md). ``demp train`` and ``demp compress --target-*``."""
    from ..training import distributed as dist_util

    if recipe.export.quantize and not (recipe.export.onnx and export):
        raise UsageError(f"export.quantize={recipe.export.quantize} quantizes the exported model.onnx; drop "
                         "--no-export (export.onnx=false) or the quantization")
    job = partial(_train_and_export, recipe, out, resume=resume, overwrite=overwrite, progress=progress,
                  export=export, inputs=inputs, summarize=summarize or training_summary)
    if not dist_util.launched_by_torchrun():
        return job()
    ctx = dist_util.init_from_env(recipe.train.device)
    _rank_logging(ctx)
    try:
        return job(ctx=ctx)
    except DempError as exc:
        if not str(exc).startswith(f"rank {ctx.rank}:") and not str(exc).startswith("rank "):
            exc.args = (f"rank {ctx.rank}: {exc}", *exc.args[1:])
        raise
    except Exception:
        log.error("rank %d of %d failed with an unexpected error:", ctx.rank, ctx.world_size, exc_info=True)
        raise
    finally:
        dist_util.destroy()


def _rank_logging(ctx: Any) -> None:
    """Prefix log lines with the rank; ranks other than 0 log warnings and errors only."""
    prefix = f"[rank {ctx.rank}] "

    class _Prefix(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if not str(record.msg).startswith(prefix):
                record.msg = prefix + str(record.msg)
            return True

    root = logging.getLogger()
    for h in root.handlers:
        h.addFilter(_Prefix())
    if not ctx.is_main:
        root.setLevel(max(root.level, logging.WARNING))


def _train_and_export(recipe: Any, out: Path, *, resume: bool, overwrite: bool, progress: bool, export: bool,
                      inputs: tuple[Any, ...], summarize: Callable[[Any, dict[str, Any] | None], str],
                      ctx: Any = None) -> int:
    from ..training.trainer import Trainer, TrainingInterrupted

    main = ctx is None or ctx.is_main
    trainer = Trainer(recipe, out, resume=resume, overwrite=overwrite, progress=progress and main, inputs=inputs)
    try:
        result = trainer.fit()
    except TrainingInterrupted as exc:
        if main:
            print(str(exc))
        return exc.exit_code
    if not main:
        return 0
    report = None
    if recipe.export.onnx and export:
        report = export_compact(result)
    print(summarize(result, report))
    return 0


def export_compact(result: Any, *, overwrite: bool = True) -> dict[str, Any]:
    """ONNX export, parity, MACs, latency and report of ``result.compact_dir`` through
    :func:`exporters.pipeline.finalize` (dense = the unpruned architecture, for MACs and latency)."""
    import torch

    from exporters.pipeline import BenchOptions, ExportOptions, finalize
    from exporters.quantize import config_from_args
    from exporters.report import training_report

    from ..models import build_model
    from ..training.evaluation import sample_inputs

    e, data = result.recipe.export, result.data
    quantize = config_from_args(e)  # export.quantize* carry the names of the --quantize* options
    heldout_y = None
    if quantize is None:
        samples = sample_inputs(data.test if data.test is not None else data.train, 256)
        calib_x, heldout_x = samples[:128], (samples[128:] if samples.shape[0] > 128 else None)
    else:
        train = result.splits.plain_train() if result.splits is not None else data.train
        calib_x, heldout_x, heldout_y = _quantization_samples(train, quantize.calib_samples,
                                                              seed=result.recipe.train.seed)
    pruned = result.model.eval()
    if result.plan.is_empty():
        dense = pruned  # nothing was removed: the trained model is its own dense reference
    else:
        torch.manual_seed(0)
        dense = build_model(result.spec).eval()
    export = ExportOptions(opset=e.opset) if e.opset is not None else ExportOptions()
    bench = BenchOptions(batch_sizes=tuple(e.batch_sizes), threads=e.threads, run=e.latency)
    return finalize(result.compact_dir, dense=dense, pruned=pruned, calib_x=calib_x, heldout_x=heldout_x,
                    report=training_report(result), export=export, bench=bench, quantize=quantize,
                    heldout_y=heldout_y, overwrite=overwrite)


def _quantization_samples(train: Any, calib_samples: int, *, seed: int) -> tuple[Any, Any, Any]:
    """Calibration inputs, held-out inputs and their class labels (None when not class indices) for int8:
    two disjoint random draws from the training split without augmentation, as ``demp compress`` draws them."""
    from ..data import calibration_split, stack_samples
    from ..defaults import HELDOUT_SAMPLES

    calib, held = calibration_split(train, samples=calib_samples, heldout=HELDOUT_SAMPLES, seed=seed)
    return (stack_samples(calib)[0], *stack_samples(held))


def _pct(x: float | None) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) else "n/a"


def training_summary(result: Any, report: dict[str, Any] | None = None) -> str:
    """A short human summary of a finished run."""
    s = result.summary
    start = f" from {result.recipe.model.checkpoint}" if result.recipe.model.checkpoint else ""
    lines = [f"trained {result.recipe.model.arch}{start} on {result.recipe.data.spec} ({result.recipe.method}, "
             f"{s.get('epochs')} epochs, {s.get('train_seconds', 0):.1f}s)"]
    lines.append(f"  test accuracy (compact model): {_pct(s.get('test_accuracy'))}")
    if s.get("neurons_before"):
        lines.append(f"  neurons: {s['neurons_before']} -> {s['neurons_after']} "
                     f"({_pct(s.get('neuron_sparsity'))} removed)")
    if s.get("weight_sparsity") is not None:  # Synaptic Stripping: masked weights kept as zeros
        lines.append(f"  weight sparsity (stripped weights, kept as zeros): {_pct(s.get('weight_sparsity'))}"
                     + (f"; dead neurons {s['dead_neurons']}, active params {_pct(s.get('active_params'))}"
                        if s.get("dead_neurons") is not None else ""))
    from exporters.render import budget_lines, quantization_lines, removal_error_lines, speed_verdicts

    methods = {"methods": s.get("methods")}
    lines += [f"  {line}" for line in removal_error_lines(methods) + budget_lines(methods)]
    if s.get("params_before"):
        lines.append(f"  params:  {s['params_before']:,} -> {s['params_after']:,} "
                     f"({s['params_after'] / s['params_before']:.2f}x)")
    if s.get("macs_before") and s.get("macs_after") is not None:
        lines.append(f"  MACs:    {s['macs_before']:,} -> {s['macs_after']:,} "
                     f"({s['macs_after'] / s['macs_before']:.2f}x)")
    if s.get("train_macs_ratio") is not None:
        speed = (f"; optimizer steps {s['train_step_seconds']:.1f}s, about {s['train_speedup_est']:.2f}x the speed of "
                 f"dense steps ({s['dense_step_seconds_est']:.1f}s estimated)" if s.get("train_speedup_est") else "")
        lines.append(f"  training cost: {s['train_macs'] / 1e9:.3g} GMACs forward+backward, "
                     f"{s['train_macs_ratio']:.2f}x "
                     f"of dense training{speed}")
    if report:
        lines += [f"  {v}" for v in speed_verdicts(report) + quantization_lines(report)]
    lines.append(f"  files: {result.out_dir}/ (metrics.jsonl, plots/, checkpoints/), compact model in "
                 f"{result.compact_dir}/")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- demo


def demo_recipe(epochs: int | None = None) -> Any:
    import yaml

    from ..training.config import load_recipe

    raw = yaml.safe_load(DEMO_RECIPE)
    return load_recipe(raw, [f"train.epochs={epochs}"] if epochs is not None else [])


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from ..fileio import prepare_output_dir
    from ..training.finish import OUTPUTS

    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs {args.epochs}: expected an integer >= 1")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: expected an integer >= 1")
    recipe = demo_recipe(args.epochs)
    recipe.export.threads = args.threads  # the demo's timing uses the demo's thread count
    out = Path(args.out)
    prepare_output_dir(out, overwrite=args.overwrite, outputs=OUTPUTS)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _demo(recipe, out, progress=not args.no_progress)
    finally:
        torch.set_num_threads(threads_before)


def _demo(recipe: Any, out: Path, *, progress: bool) -> int:
    from ..training.trainer import Trainer, TrainingInterrupted

    started = time.perf_counter()
    print(f"demp demo: training a small CNN on the bundled 8x8 digits with DemP ({recipe.train.epochs} epochs), "
          "removing dead neurons as they die...")
    trainer = Trainer(recipe, out, resume=False, overwrite=True, progress=progress)
    try:
        result = trainer.fit()
    except TrainingInterrupted as exc:
        print(str(exc))
        return exc.exit_code
    print("exporting the compact model to ONNX and benchmarking dense vs compact...")
    report = export_compact(result)
    print(training_summary(result, report))
    print(f"demo finished in {time.perf_counter() - started:.1f}s; report: {result.compact_dir}/report.md")
    return 0
