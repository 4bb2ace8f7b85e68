"""``demp compress --target-macs R`` (or ``--target-sparsity S``, ``--target-params R``): a checkpoint to a budget.

1. **Lossless first.** The dead neurons are removed exactly as plain ``demp compress`` does. If that
   meets the target, the command ends there, with the usual compressed folder.
2. **Otherwise DemP fine-tunes** the checkpoint on ``--data``'s training split, with the budget as DemP's
   target and a penalty weighted by what each group's neurons cost (beyond the papers:
   :mod:`compressor.training.finetune`), removing neurons as they die. The output folder is then a
   training run (``recipe.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``plots/``) with the compact
   model, its ONNX file and report in ``OUT/model/``, exactly as ``demp train`` writes it: Ctrl-C
   writes a checkpoint, ``demp compress --resume OUT`` continues, ``--overwrite`` replaces demp's own
   outputs only, and under ``torchrun`` every rank takes the same removals.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from ..errors import UsageError

log = logging.getLogger("demp")

#: ``--target-KIND`` options: (kind, what the number means).
TARGET_FLAGS = {"macs": "MAC ratio compact/dense to reach, e.g. 0.5 for half the MACs",
                "sparsity": "share of the neurons to remove, e.g. 0.5",
                "params": "parameter ratio compact/dense to reach, e.g. 0.5"}


def register(subparsers: Any) -> None:
    """Add the budget options to ``demp compress`` (registered after it) and route a budget here."""
    compress = subparsers.choices["compress"]
    add_target_args(compress)
    compress.set_defaults(handler=run_compress_or_fine_tune)


def run_compress_or_fine_tune(args: argparse.Namespace) -> int:
    """``demp compress``: with a budget (or ``--resume``) the fine-tune, else plain lossless compression."""
    from .compress import run_compress

    if requested_target(args) is not None or args.resume:
        return run_compress_to_target(args)
    return run_compress(args)


def add_target_args(p: argparse.ArgumentParser) -> None:
    """The budget options of ``demp compress``."""
    g = p.add_argument_group("budget", "lossless removal first; if that does not reach the target, DemP fine-tunes "
                             "the checkpoint on --data's training split until it does (docs/demp.md section 9)")
    for kind, what in TARGET_FLAGS.items():
        g.add_argument(f"--target-{kind}", type=float, metavar="X", help=what)
    g.add_argument("--finetune-epochs", type=float, metavar="E",
                   help="epochs of fine-tuning (fractions allowed: 0.2 is a fifth of an epoch; default: the "
                   "fine-tune recipe's, 1)")
    g.add_argument("--finetune-recipe", metavar="YAML", help="a recipe (method demp) for full control of the "
                   "fine-tune; its model, data and target are filled in from this command")
    g.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a fine-tune recipe key, e.g. --set train.lr=0.005 --set demp.cost=uniform")
    g.add_argument("--resume", metavar="DIR", help="continue the interrupted fine-tune in DIR (its own recipe)")


def requested_target(args: argparse.Namespace) -> tuple[str, float] | None:
    """The one ``--target-*`` given, checked, as (kind, value); None without one."""
    given = [(kind, getattr(args, f"target_{kind}")) for kind in TARGET_FLAGS
             if getattr(args, f"target_{kind}", None) is not None]
    if len(given) > 1:
        raise UsageError(f"give one budget, not {' and '.join('--target-' + k for k, _ in given)}")
    if not given:
        if getattr(args, "finetune_epochs", None) is not None or getattr(args, "finetune_recipe", None):
            raise UsageError("--finetune-epochs and --finetune-recipe need a budget: --target-macs, "
                             "--target-sparsity or --target-params")
        return None
    kind, value = given[0]
    if not 0 < value < 1:
        raise UsageError(f"--target-{kind} {value}: expected a fraction between 0 and 1 ({TARGET_FLAGS[kind]})")
    return kind, float(value)


def _lossless_share(result: Any, kind: str) -> float:
    """The share of ``kind`` the lossless removal took (MACs / parameters / neurons removed)."""
    if kind == "sparsity":
        return 1.0 - result.neurons_after / result.neurons_before if result.neurons_before else 0.0
    from ..counting import compare_macs

    cmp = compare_macs(result.dense, result.model, result.calib_inputs[:1])
    return 1.0 - (cmp.param_ratio if kind == "params" else cmp.mac_ratio)


def _recipe(args: argparse.Namespace, target: tuple[str, float]) -> Any:
    """The fine-tune recipe from the defaults (or --finetune-recipe) and this command's options."""
    from ..training.config import read_recipe_file
    from ..training.finetune import finetune_recipe
    from .compress import DEFAULT_DATA, _model_kwargs
    from .train import quantize_overrides

    base = read_recipe_file(args.finetune_recipe) if args.finetune_recipe else None
    sets = [f"export.onnx={'false' if args.no_export else 'true'}", f"export.threads={args.threads}",
            f"export.batch_sizes=[{args.bench_batch_sizes}]", f"export.opset={args.opset}",
            f"train.device={'cuda' if args.device.startswith('cuda') else 'cpu'}"]
    if args.bench is False:
        sets.append("export.latency=false")
    if args.quantize:  # the fine-tuned model is quantized as `demp train --quantize` does it
        sets += quantize_overrides(args)
    return finetune_recipe(target=target, arch=args.arch, checkpoint=args.checkpoint, model_file=args.model_file,
                           model_kwargs=_model_kwargs(args.model_arg), num_classes=args.num_classes,
                           data=args.data or DEFAULT_DATA, normalize=args.normalize, epochs=args.finetune_epochs,
                           seed=args.seed, base=base, overrides=[*sets, *args.overrides])


def run_compress_to_target(args: argparse.Namespace) -> int:
    """Lossless removal; if the target is not met, DemP fine-tuning to it (see the module docstring)."""
    from ..training.config import load_recipe
    from ..training.finish import RECIPE_FILE
    from .compress import check_output_dir, check_quantize_args, compress_losslessly, output_folder, ship
    from .train import check_resume_args, launch

    if args.resume:
        out = check_resume_args(args)
        if not (out / RECIPE_FILE).is_file():
            raise UsageError(f"--resume {out}: no {RECIPE_FILE} there, so it is not an interrupted fine-tune of "
                             "demp compress --target-*")
        recipe = load_recipe(out / RECIPE_FILE, list(args.overrides))
        return launch(recipe, out, resume=True, overwrite=False, progress=not args.no_progress,
                      export=not args.no_export, summarize=_summary)
    target = requested_target(args)
    assert target is not None
    from ..pruned import is_pruned_dir

    if args.checkpoint and is_pruned_dir(args.checkpoint):
        raise UsageError(f"{args.checkpoint} is a compressed demp folder; a budget fine-tune starts from the dense "
                         "checkpoint it was compressed from (pass that one: its dead neurons are removed first anyway)")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: expected an integer >= 1")
    check_quantize_args(args)
    kind, value = target
    out = output_folder(args, suffix=f"{kind}{value:g}")
    check_output_dir(out, args)
    recipe = _recipe(args, target)  # a bad recipe fails before any work
    t_start = time.perf_counter()
    result = compress_losslessly(args)
    share = _lossless_share(result, kind)
    wanted = value if kind == "sparsity" else 1.0 - value
    if share >= wanted:
        print(f"lossless removal alone reaches the target ({100 * share:.1f}% of the {_noun(kind)} removed, "
              f"{100 * wanted:.1f}% asked): no fine-tuning needed; widths kept exact (rounding them could miss "
              "the target)")
        args.round_to = 1 if args.round_to == "auto" else args.round_to
        return ship(result, args, out, t_start)
    print(f"lossless removal takes {100 * share:.1f}% of the {_noun(kind)} ({result.removed} dead neurons); "
          f"{100 * wanted:.1f}% asked: fine-tuning with DemP for {recipe.train.epochs:g} epoch(s) on "
          f"{recipe.data.spec} (the compact model will be in {out}/model/)")
    inputs = (args.finetune_recipe,) if args.finetune_recipe else ()
    return launch(recipe, out, resume=False, overwrite=args.overwrite, progress=not args.no_progress,
                  export=not args.no_export, inputs=inputs, summarize=_summary)


def _noun(kind: str) -> str:
    return {"macs": "MACs", "params": "parameters", "sparsity": "neurons"}[kind]


def _summary(result: Any, report: dict[str, Any] | None) -> str:
    """The fine-tune's summary: the budget line (asked, reached, where it came from) first."""
    from .train import training_summary

    s = result.summary
    macs = (f"; MACs {s['macs_after'] / s['macs_before']:.3f}x of the checkpoint's" if s.get("macs_before")
            and s.get("macs_after") is not None else "")
    return (f"compressed {result.recipe.model.checkpoint or result.recipe.model.arch} to a budget with DemP "
            f"fine-tuning{macs}\n" + training_summary(result, report))
