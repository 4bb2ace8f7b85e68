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

from ..errors import UsageError

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
    p.add_argument("--data", help="digits | mnist:ROOT | fashion-mnist:ROOT | cifar10:ROOT | "
                   "cifar100:ROOT | imagefolder:PATH | npz:PATH (default: digits, scikit-learn's bundled 8x8 digits)")
    p.add_argument("--calib-samples", type=int, default=1024, help="samples used for decisions (default 1024)")
    p.add_argument("--heldout-samples", type=int, default=256,
                   help="samples never used for decisions, for verification, taken from what calibration leaves "
                   "(default 256; 0 skips the check)")
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


DEFAULT_DATA = "digits"


def _check_args(args: argparse.Namespace) -> None:
    from ..plan import PruningPlan
    from ..pruned import PLAN_FILE, is_pruned_dir

    if not args.arch and not args.model_file:
        if args.checkpoint and is_pruned_dir(args.checkpoint):  # a compressed directory knows its arch
            args.arch = (PruningPlan.load(Path(args.checkpoint) / PLAN_FILE).model or {}).get("arch")
        if not args.arch:
            raise UsageError("--arch is required (or --model-file PATH.py:FUNCTION for your own model)")
    for name in ("calib_samples", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.heldout_samples < 0:
        raise UsageError("--heldout-samples must be >= 0 (0 skips the held-out check)")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda was requested but no CUDA GPU is available; use --device cpu")


def _data_label(args: argparse.Namespace) -> str:
    return f"--data {args.data}" if args.data else f"--data {DEFAULT_DATA} (the default; pass --data for your own)"


def _load_calibration_data(args: argparse.Namespace) -> Any:
    """The dataset; an ``--input-size`` that contradicts the size the data is stored at is an error."""
    from ..data import load_data

    data = load_data(args.data or DEFAULT_DATA, input_size=args.input_size)
    native = data.native_shape
    if args.input_size and native is not None and len(native) == 3 and native[1:] != (args.input_size,) * 2:
        raise UsageError(
            f"--input-size {args.input_size} but the images of {_data_label(args)} are {native[1]}x{native[2]}: "
            "data resized for compression is not the data the model serves, so the removal would not be lossless "
            f"there; drop --input-size (or pass {native[1]})")
    return data


def _load_model(args: argparse.Namespace, data: Any) -> Any:
    """The model at the data's input shape; a model file's own ``INPUT_SHAPE`` must agree with the data."""
    from ..loading import load_model
    from ..models.user_file import declared_input_shape

    declared = declared_input_shape(args.model_file) if args.model_file else None
    if declared is not None and tuple(declared) != tuple(data.input_shape):
        raise UsageError(f"{args.model_file} declares INPUT_SHAPE {tuple(declared)} but {_data_label(args)} gives "
                         f"samples of shape {tuple(data.input_shape)}; pass the data the model was trained on")
    try:
        return load_model(args.arch, args.checkpoint, num_classes=args.num_classes,
                          input_shape=tuple(data.input_shape), model_file=args.model_file,
                          trust_pickle=args.trust_pickle, **_model_kwargs(args.model_arg))
    except UsageError as exc:
        if "input shape" in str(exc) and not args.data:
            raise UsageError(f"{exc} (the input shape comes from {_data_label(args)})") from None
        raise


def load_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """Model, data bundle, calibration loader, held-out inputs (None when none are left) and source info."""
    import torch

    from ..data import calibration_split, make_loader
    from ..fileio import sha256_file

    _check_args(args)
    data = _load_calibration_data(args)
    calib, heldout = calibration_split(data.train, samples=args.calib_samples, heldout=args.heldout_samples,
                                       seed=args.seed)
    torch.manual_seed(args.seed)
    model = _load_model(args, data)
    model.to(torch.device(args.device)).eval()
    source: dict[str, Any] = {"arch": args.arch or args.model_file, "data": args.data or DEFAULT_DATA}
    if not args.checkpoint:
        log.warning("no checkpoint given: using freshly initialized weights (seed %d)", args.seed)
    else:
        source["checkpoint"] = str(args.checkpoint)
        source["sha256"] = sha256_file(args.checkpoint)
    calib_loader = make_loader(calib, batch_size=min(args.batch_size, len(calib)))  # a smaller set is legal
    heldout_x = torch.stack([heldout[i][0] for i in range(len(heldout))]) if len(heldout) else None
    return model, data, calib_loader, heldout_x, source


# ---------------------------------------------------------------------- compress
def run_compress(args: argparse.Namespace) -> int:
    from exporters.latency import parse_batch_sizes
    from exporters.pipeline import finalize
    from exporters.report import compress_report

    from ..compression import compress
    from ..fileio import check_output_dir, staged_directory
    from ..pruned import OUTPUTS, save_pruned

    batch_sizes = parse_batch_sizes(args.bench_batch_sizes)
    out = Path(args.out or (f"{Path(args.checkpoint).stem}-slim" if args.checkpoint else "demp-compressed"))
    model_file = (args.model_file or "").rpartition(":")[0] or None
    check_output_dir(out, overwrite=args.overwrite, outputs=OUTPUTS, inputs=(args.checkpoint, model_file))
    t_start = time.perf_counter()
    model, data, calib_loader, heldout_x, source = load_inputs(args)
    result = compress(model, calib_loader, criterion=args.criterion, heldout=heldout_x, ignore=args.ignore,
                      min_channels=args.min_channels, round_to=args.round_to, tolerance=args.tolerance,
                      source=source)
    with staged_directory(out) as staging:  # the previous output survives until this one is complete
        save_pruned(result, staging, prepare=False)
        report = finalize(staging, dense=result.dense, pruned=result.model, calib_x=result.calib_inputs,
                          heldout_x=result.heldout_inputs, report=compress_report(result),
                          export=not args.no_export, bench=not args.no_export, opset=args.opset,
                          batch_sizes=batch_sizes, device=args.device, overwrite=True)
    pr = report["pruning"]
    print(f"removed {pr['removed']} of {pr['neurons_before']} neurons "
          f"({pr['neurons_before']} -> {pr['neurons_after']}); params {report['model']['params_before']:,} -> "
          f"{report['model']['params_after']:,}; max output diff {report['parity']['torch_max_abs_diff']:.3g} "
          f"(top-1 agreement {report['parity']['top1_agreement']:.4f})")
    if "heldout_skipped" in result.verification:
        print(f"note: {result.verification['heldout_skipped']}")
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
