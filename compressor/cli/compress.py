"""``demp compress`` and ``demp inspect``: the compress-a-checkpoint journey on the command line.

The heavy imports (torch, torch-pruning, the exporters) happen inside the handlers, so ``demp --help``
stays fast.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataError, UsageError

log = logging.getLogger("demp")

MODEL_FILE_HELP = (
    "build the model with a factory from your own file, PATH.py:FUNCTION (called with num_classes= when it "
    "accepts it). This imports and runs that file's code, by design: only use files you trust"
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint: .pt/.pth state dict (plain, {'state_dict'}, "
                   "{'model'}, {'model_state_dict'}; DDP/torch.compile prefixes ok), .safetensors, or a "
                   "directory made by demp. Omit to use freshly initialized weights")
    p.add_argument("--arch", help="architecture: any torchvision classification model name, mlp, cnn, "
                   "resnet18-cifar, vgg16-cifar")
    p.add_argument("--model-file", metavar="PATH.py:FUNCTION", help=MODEL_FILE_HELP)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword for the model builder, value parsed as YAML (e.g. widths=[256,256])")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: inferred from the checkpoint)")
    p.add_argument("--input-size", type=int, help="image side length where the data does not fix it")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a checkpoint that is a whole pickled module (executes code from the file)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="digits | mnist:ROOT | fashion-mnist:ROOT | cifar10:ROOT | "
                   "cifar100:ROOT | imagefolder:PATH | npz:PATH (default: digits)")
    p.add_argument("--calib-samples", type=int, default=1024, help="samples used for decisions (default 1024)")
    p.add_argument("--heldout-samples", type=int, default=256,
                   help="samples never used for decisions, for verification (default 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed for sampling the calibration set")
    p.add_argument("--device", default="cpu", help="device for statistics and verification (cpu, cuda)")


def add_decision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--criterion", default="dead", help="dead[:EPS] (lossless at 0) | saturated[:EPS] | "
                   "dormant:TAU (default dead)")
    p.add_argument("--ignore", action="append", default=[], metavar="NAME",
                   help="never prune groups touching this layer (repeatable; NAME or a prefix NAME.*)")
    p.add_argument("--min-channels", type=int, default=1, help="channels every group keeps (default 1)")
    p.add_argument("--round-to", type=int, default=1,
                   help="keep extra dead channels so widths are multiples of N (never removes a live one)")


def register(subparsers: Any) -> None:
    c = subparsers.add_parser("compress", help="remove dead neurons from a trained checkpoint",
                              description="Find channels that are dead at every layer reading them, remove "
                              "them with everything coupled to them, verify, export ONNX and a report.")
    add_model_args(c)
    add_data_args(c)
    add_decision_args(c)
    c.add_argument("--out", help="output directory (default: CHECKPOINT-slim)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    c.add_argument("--tolerance", type=float, default=1e-4,
                   help="max output difference relative to the output scale for lossless criteria")
    c.add_argument("--no-export", action="store_true", help="skip ONNX export and latency measurement")
    c.add_argument("--opset", type=int, default=18)
    c.add_argument("--bench-batch-sizes", default="1,8", help="batch sizes for the latency report (default 1,8)")
    c.set_defaults(handler=run_compress)

    i = subparsers.add_parser("inspect", help="per-layer dead-neuron counts, no pruning")
    add_model_args(i)
    add_data_args(i)
    add_decision_args(i)
    i.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    i.add_argument("--groups", action="store_true", help="print every coupling group with its members")
    i.set_defaults(handler=run_inspect)


# ---------------------------------------------------------------------- shared loading
def _model_kwargs(pairs: list[str]) -> dict[str, Any]:
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg expects KEY=VALUE, got {pair!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    return kwargs


def load_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """Model, data bundle, calibration loader, held-out inputs and source info from CLI arguments."""
    import torch

    from ..data import calibration_split, load_data, make_loader
    from ..fileio import sha256_file
    from ..loading import load_model
    from ..plan import PruningPlan
    from ..pruned import is_pruned_dir

    if not args.arch and not args.model_file:
        if args.checkpoint and is_pruned_dir(args.checkpoint):  # a compressed directory knows its arch
            args.arch = (PruningPlan.load(Path(args.checkpoint) / "plan.json").model or {}).get("arch")
        if not args.arch:
            raise UsageError("--arch is required (or --model-file PATH.py:FUNCTION for your own model)")
    for name in ("calib_samples", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.heldout_samples < 1:
        raise UsageError("--heldout-samples must be >= 1: verification needs samples never used for decisions")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is available; use --device cpu")

    data = load_data(args.data, input_size=args.input_size)
    calib, heldout = calibration_split(data.train, samples=args.calib_samples, heldout=args.heldout_samples,
                                       seed=args.seed)
    if len(calib) < args.batch_size:
        raise DataError(
            f"the calibration set has {len(calib)} samples, fewer than one batch ({args.batch_size}); "
            f"use --calib-samples >= {args.batch_size} or a smaller --batch-size"
        )
    torch.manual_seed(args.seed)
    model = load_model(
        args.arch, args.checkpoint, num_classes=args.num_classes, input_shape=tuple(data.input_shape),
        model_file=args.model_file, trust_pickle=args.trust_pickle, **_model_kwargs(args.model_arg),
    )
    model.to(device).eval()
    source: dict[str, Any] = {"arch": args.arch or args.model_file, "data": args.data}
    if not args.checkpoint:
        log.warning("no checkpoint given: using freshly initialized weights (seed %d)", args.seed)
    else:
        source["checkpoint"] = str(args.checkpoint)
        source["sha256"] = sha256_file(args.checkpoint)
    calib_loader = make_loader(calib, batch_size=args.batch_size)
    heldout_x = torch.stack([heldout[i][0] for i in range(len(heldout))])
    return model, data, calib_loader, heldout_x, source


# ---------------------------------------------------------------------- compress
def run_compress(args: argparse.Namespace) -> int:
    from exporters.latency import parse_batch_sizes
    from exporters.pipeline import finalize
    from exporters.report import compress_report

    from ..compression import compress
    from ..fileio import prepare_output_dir
    from ..pruned import save_pruned

    batch_sizes = parse_batch_sizes(args.bench_batch_sizes)
    out_name = args.out or (f"{Path(args.checkpoint).stem}-slim" if args.checkpoint else "demp-compressed")
    out = Path(out_name)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"output directory {out} already exists and is not empty; pass --overwrite to replace "
                         "it or choose another --out")
    t_start = time.perf_counter()
    model, data, calib_loader, heldout_x, source = load_inputs(args)
    result = compress(model, calib_loader, criterion=args.criterion, heldout=heldout_x, ignore=args.ignore,
                      min_channels=args.min_channels, round_to=args.round_to, tolerance=args.tolerance,
                      source=source)
    out = prepare_output_dir(out, overwrite=args.overwrite)
    save_pruned(result, out, prepare=False)
    report = finalize(out, dense=result.dense, pruned=result.model, calib_x=result.calib_inputs,
                      heldout_x=result.heldout_inputs, report=compress_report(result), export=not args.no_export,
                      bench=not args.no_export, opset=args.opset, batch_sizes=batch_sizes,
                      device=args.device, overwrite=True)
    pr = report["pruning"]
    print(f"removed {pr['removed']} of {pr['neurons_before']} neurons "
          f"({pr['neurons_before']} -> {pr['neurons_after']}); params {report['model']['params_before']:,} -> "
          f"{report['model']['params_after']:,}; max output diff {report['parity']['torch_max_abs_diff']:.3g} "
          f"(top-1 agreement {report['parity']['top1_agreement']:.4f})")
    odd = [g for g in pr["groups"] if g.get("removed") and g["after"] % 8]
    if odd and args.round_to == 1:
        print(f"tip: {len(odd)} pruned group(s) have widths that are not multiples of 8; --round-to 8 keeps a "
              "few dead channels so CPU/GPU kernels run at full speed (see BENCHMARKS.md)")
    print(f"wrote {out}/ in {time.perf_counter() - t_start:.1f} s")
    return 0


# ---------------------------------------------------------------------- inspect
def run_inspect(args: argparse.Namespace) -> int:
    from ..activity import collect_activity
    from ..criteria import Dead, Dormant, Saturated, parse_criterion
    from ..graph import DependencyAnalyzer

    crit = parse_criterion(args.criterion)
    model, data, calib_loader, heldout_x, source = load_inputs(args)
    example = next(iter(calib_loader))[0][:1].to(args.device)
    analyzer = DependencyAnalyzer(model, example, ignore=args.ignore, min_channels=args.min_channels,
                                  round_to=args.round_to)
    stats = collect_activity(model, calib_loader, progress=True, desc="calibration")
    layers = []
    print(f"{'layer (input channels)':<44} {'chans':>6} {'dead':>6} {'saturated':>9} {'dormant<=0.1':>12}")
    for name, st in stats.items():
        row = {"layer": name, "channels": st.channels,
               "dead": int(Dead().removable(st).sum()),
               "saturated": int(Saturated().removable(st).sum()),
               "dormant_0.1": int(Dormant(0.1).removable(st).sum()),
               "frac_nonzero_mean": float(st.frac_nonzero.mean())}
        layers.append(row)
        print(f"{name:<44} {row['channels']:>6} {row['dead']:>6} {row['saturated']:>9} {row['dormant_0.1']:>12}")
    groups = []
    print(f"\n{'group root':<44} {'chans':>6} {'removable':>9}  note ({crit.spec()})")
    for g in analyzer.groups:
        n = 0 if g.blocked else int(analyzer.removable_channels(g, stats, crit).sum())
        groups.append({"root": g.root, "channels": g.size, "removable": n, "blocked": g.blocked,
                       "members": g.members})
        print(f"{g.root:<44} {g.size:>6} {n:>9}  {g.blocked or ''}")
        if args.groups:
            print("\n".join("    " + line for line in g.details().splitlines()[1:]))
    total = sum(x["removable"] for x in groups)
    print(f"\n{total} of {sum(g.size for g in analyzer.groups)} neurons removable under {crit.spec()} "
          f"({stats.samples} calibration samples)")
    if args.json:
        from ..fileio import atomic_write_json

        atomic_write_json(args.json, {"source": source, "criterion": crit.to_dict(), "samples": stats.samples,
                                      "layers": layers, "groups": groups})
    return 0
