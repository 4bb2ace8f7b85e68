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

from exporters.defaults import DEFAULT_THREADS

from ..defaults import ANALYZER_TIME_BUDGET, BUILTIN_ARCHS, CALIB_SAMPLES, HELDOUT_SAMPLES
from ..errors import UsageError

log = logging.getLogger("demp")

MODEL_FILE_HELP = (
    "build the model with a factory from your own file, PATH.py:FUNCTION (called with num_classes= when it "
    "accepts it). This imports and runs that file's code, by design: only use files you trust. The file is "
    "copied into the output folder (code/, its sha256 in plan.json), and loading the output runs it again"
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint: .pt/.pth state dict (plain, {'state_dict'}, "
                   "{'model'}, {'model_state_dict'}; DDP/torch.compile prefixes ok), .safetensors, or a "
                   "directory made by demp. Omit to use freshly initialized weights")
    p.add_argument("--arch", help="architecture: any torchvision classification model name, or a built-in: "
                   + ", ".join(BUILTIN_ARCHS))
    p.add_argument("--model-file", metavar="PATH.py:FUNCTION", help=MODEL_FILE_HELP)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword for the model builder, value parsed as YAML (e.g. widths=[256,256])")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: read from the checkpoint)")
    p.add_argument("--input-size", type=int, help="image side length, where the data does not fix it (image "
                   "folders); data stored at another size is an error")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a checkpoint that is a whole pickled module (executes code from the file)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="digits | mnist:ROOT | fashion-mnist:ROOT | cifar10:ROOT | "
                   "cifar100:ROOT | imagefolder:PATH | npz:PATH (default: digits, scikit-learn's bundled 8x8 digits)")
    p.add_argument("--normalize", default="auto", metavar="NORM",
                   help="input statistics: auto | imagenet | cifar10 | cifar100 | mnist | M1,M2,M3/S1,S2,S3 "
                   "(per-channel means/stds). auto: those a built-in architecture's published weights expect "
                   "(ImageNet's for resnet*-cifar-a), else the data's own (standard figures; measured on a "
                   "small-image folder)")
    p.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES,
                   help="samples the decision is measured on (all of a smaller dataset)")
    p.add_argument("--heldout-samples", type=int, default=HELDOUT_SAMPLES,
                   help="samples never used for decisions, to verify on, from what calibration leaves (0: no check)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="samples per forward pass while measuring (clipped to the calibration set)")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing the calibration and held-out samples")
    p.add_argument("--device", default="cpu", help="device for statistics, verification and timing: cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_decision_args(p: argparse.ArgumentParser, *, auto: bool) -> None:
    p.add_argument("--criterion", default="dead", help="dead[:EPS] (lossless at 0) | saturated[:EPS] | "
                   "dormant:TAU (lossy; the error is reported)")
    p.add_argument("--ignore", action="append", default=[], metavar="NAME",
                   help="never prune groups touching this layer (repeatable; NAME or a prefix NAME.*)")
    p.add_argument("--min-channels", type=int, default=1, help="channels every group keeps")
    p.add_argument("--analyzer-budget", type=float, default=ANALYZER_TIME_BUDGET, metavar="SECONDS",
                   help="seconds the analyzer may spend mapping channel groups; groups not mapped by then are "
                   f"blocked, with the reason in the report (default {ANALYZER_TIME_BUDGET:g})")
    if auto:
        p.add_argument("--round-to", type=_round_to, default="auto", metavar="auto|N",
                       help="widths after removal: auto times the exact widths, multiples of 8, 16 and 32 and the "
                       "dense model on the runtime and keeps the fastest (never slower than dense); N keeps widths "
                       "multiples of N (1: exact); extra channels kept are always dead ones")
    else:
        p.add_argument("--round-to", type=int, default=1, metavar="N",
                       help="count removable channels as if widths were kept multiples of N")


def _round_to(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive integer, got {value}")
    return value


COMPRESS_EXAMPLES = """examples:
  demp compress resnet18.pt --arch resnet18 --data cifar10:/data/cifar --out resnet18-slim/
  demp compress net.pt --model-file net.py:build --data npz:calib.npz --calib-samples 512
  demp compress r50.pt --arch resnet50 --data imagefolder:/data/val --round-to 8 --no-bench
  demp compress r50.pt --arch resnet50 --data imagefolder:/data/val --quantize int8   (also model.int8.onnx)
  demp compress slim/ --criterion saturated:0.01 --out slimmer/       (compress a compressed folder again)
  demp compress r20.th --arch resnet20-cifar-a --data imagefolder:/data/cifar10-jpg --target-macs 0.5 --out r20-half/
                    (lossless first, then DemP fine-tuning to half the MACs; --finetune-epochs 0.5, --set KEY=VALUE)
  demp compress --resume r20-half/                                      (an interrupted fine-tune)
"""

INSPECT_EXAMPLES = """examples:
  demp inspect resnet18.pt --arch resnet18 --data cifar10:/data/cifar
  demp inspect net.pt --model-file net.py:build --data npz:calib.npz --groups --json stats.json
"""


def register(subparsers: Any) -> None:
    c = subparsers.add_parser("compress", help="remove dead neurons from a trained checkpoint",
                              epilog=COMPRESS_EXAMPLES,
                              description="Find channels that are dead at every layer reading them, remove "
                              "them with everything coupled to them, verify, export ONNX and a report.")
    add_model_args(c)
    add_data_args(c)
    add_decision_args(c, auto=True)
    c.add_argument("--out", help="output folder (default: CHECKPOINT-slim)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace demp's own outputs in --out (a folder holding the input or other files is refused)")
    c.add_argument("--tolerance", type=float, default=1e-4,
                   help="max output difference, relative to the output scale, for lossless criteria")
    c.add_argument("--no-export", action="store_true", help="skip the ONNX export (plan and weights only)")
    c.add_argument("--bench", action=argparse.BooleanOptionalAction, default=None,
                   help="time dense versus compact for the report (default: when something was removed)")
    c.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="intra-op threads while timing (one: demp's timing policy, docs/exporters.md)")
    c.add_argument("--opset", type=int, default=18, help="ONNX opset of model.onnx")
    c.add_argument("--bench-batch-sizes", default="1,8", help="batch sizes to time (and to choose widths at)")
    from exporters.quantize import add_quantize_args  # light: no torch or onnxruntime at import

    add_quantize_args(c)
    c.set_defaults(handler=run_compress)  # the budget options and their handler: compressor.cli.finetune

    i = subparsers.add_parser("inspect", help="per-layer dead-neuron counts, no pruning", epilog=INSPECT_EXAMPLES,
                              description="Count dead / saturated / dormant input channels per layer and removable "
                              "channels per coupling group, without changing anything.")
    add_model_args(i)
    add_data_args(i)
    add_decision_args(i, auto=False)
    i.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    i.add_argument("--groups", action="store_true", help="print every coupling group with its members")
    i.set_defaults(handler=run_inspect)


# ---------------------------------------------------------------------- shared loading
def _model_kwargs(pairs: list[str]) -> dict[str, Any]:
    import yaml

    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-arg expects KEY=VALUE, got {pair!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    return kwargs


DEFAULT_DATA = "digits"


def _plan_of(args: argparse.Namespace) -> Any:
    """The plan of a compressed demp folder given as the checkpoint; None for any other checkpoint."""
    from ..plan import PruningPlan
    from ..pruned import PLAN_FILE, is_pruned_dir

    return PruningPlan.load(Path(args.checkpoint) / PLAN_FILE) if args.checkpoint and is_pruned_dir(args.checkpoint) \
        else None


def _check_folder_args(args: argparse.Namespace, plan: Any) -> None:
    """A compressed folder carries its architecture (and a model file's code): options that would build
    another model are refused rather than ignored; a matching ``--arch`` is allowed."""
    arch = (plan.model or {}).get("arch")
    given = [f"--{name.replace('_', '-')}" for name in ("model_file", "model_arg", "num_classes")
             if getattr(args, name)]
    if args.arch and arch and args.arch.strip().lower().replace("_", "-") != str(arch).lower().replace("_", "-"):
        given.insert(0, f"--arch {args.arch}")
    if given:
        code = f", its code in {Path(args.checkpoint) / 'code'}" if (plan.model or {}).get("model_file") else ""
        raise UsageError(f"{args.checkpoint} is a compressed demp folder: it carries its own model ({arch}{code}), "
                         f"so {' and '.join(given)} would not be used; drop {'it' if len(given) == 1 else 'them'}")
    args.arch = arch


def _check_args(args: argparse.Namespace) -> None:
    plan = _plan_of(args)
    if plan is not None:
        _check_folder_args(args, plan)
    if not args.arch and not args.model_file:
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
    from ..models.registry import data_normalization

    normalize = data_normalization(None if args.model_file else args.arch, args.normalize)
    data = load_data(args.data or DEFAULT_DATA, input_size=args.input_size, normalize=normalize)
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

    plan = _plan_of(args)
    if plan is not None:  # a compressed folder: the shape it was compressed at
        declared, what = plan.input_shape, f"{args.checkpoint} (plan.json) was compressed at input shape"
    else:
        declared, what = declared_input_shape(args.model_file) if args.model_file else None, \
            f"{args.model_file} declares INPUT_SHAPE"
    if declared is not None and tuple(declared) != tuple(data.input_shape):
        raise UsageError(f"{what} {tuple(declared)} but {_data_label(args)} gives samples of shape "
                         f"{tuple(data.input_shape)}; pass the data the model was trained on")
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

    from ..data import calibration_split, make_loader, stack_samples
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
    heldout_x, args.heldout_labels = stack_samples(heldout)  # the labels: an int8 model's accuracy (--quantize)
    return model, data, calib_loader, heldout_x, source


# ---------------------------------------------------------------------- compress
NOTHING_REMOVED = (
    "nothing to remove: no channel of a prunable group is {criterion} at every layer that reads it, on {n} "
    "calibration samples. What can help: a budget (--target-macs 0.5: DemP fine-tuning makes neurons die until "
    "half the MACs are gone), or a lossy criterion (--criterion saturated:EPS or dormant:TAU; the error is "
    "reported). The output is written without timing (pass --bench to time it anyway)"
)


def run_compress(args: argparse.Namespace) -> int:
    """Plain ``demp compress``: lossless (or the criterion's) removal, no training."""
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: expected an integer >= 1")
    check_quantize_args(args)
    out = output_folder(args)
    check_output_dir(out, args)
    t_start = time.perf_counter()
    result = compress_losslessly(args)
    return ship(result, args, out, t_start)


def check_quantize_args(args: argparse.Namespace) -> None:
    """``--quantize`` settings that cannot work fail before any work."""
    from exporters.quantize import config_from_args

    if config_from_args(args) is not None and args.no_export:
        raise UsageError("--quantize int8 quantizes the exported model.onnx; drop --no-export")


def output_folder(args: argparse.Namespace, suffix: str = "slim") -> Path:
    """``--out``, or CHECKPOINT-slim beside the working directory."""
    return Path(args.out or (f"{Path(args.checkpoint).stem}-{suffix}" if args.checkpoint else "demp-compressed"))


def check_output_dir(out: Path, args: argparse.Namespace) -> None:
    """Refuse an output folder that is not demp's own or holds an input (before anything runs)."""
    from ..fileio import check_output_dir as check
    from ..pruned import OUTPUTS

    model_file = (args.model_file or "").rpartition(":")[0] or None
    check(out, overwrite=args.overwrite, outputs=OUTPUTS, inputs=(args.checkpoint, model_file))


def compress_losslessly(args: argparse.Namespace) -> Any:
    """Load the model and data, remove what the criterion allows and verify (no output written)."""
    from ..compression import compress

    model, data, calib_loader, heldout_x, source = load_inputs(args)
    return compress(model, calib_loader, criterion=args.criterion, heldout=heldout_x, ignore=args.ignore,
                    min_channels=args.min_channels, round_to=1 if args.round_to == "auto" else args.round_to,
                    tolerance=args.tolerance, source=source, progress=not args.no_progress,
                    analyzer_budget=args.analyzer_budget)


def ship(result: Any, args: argparse.Namespace, out: Path, t_start: float) -> int:
    """Choose the widths, then write the compressed folder (staged), export, time and report it."""
    from exporters.latency import parse_batch_sizes
    from exporters.pipeline import BenchOptions, ExportOptions, finalize
    from exporters.quantize import config_from_args
    from exporters.report import compress_report

    from ..fileio import staged_directory
    from ..pruned import save_pruned

    batch_sizes = parse_batch_sizes(args.bench_batch_sizes)
    if result.removed == 0:
        print(NOTHING_REMOVED.format(criterion=result.criterion.spec(), n=result.calib_inputs.shape[0],
                                     checkpoint=args.checkpoint or "CKPT"))
    policy = None
    if args.round_to == "auto" and result.removed:
        result, policy = _choose_widths(result, args, batch_sizes)
        if result.removed == 0:
            print(unchanged_line(policy))
    # an unchanged model is not timed against itself
    bench = args.bench if args.bench is not None else (result.removed > 0 and not args.no_export)
    with staged_directory(out) as staging:  # the previous output survives until this one is complete
        save_pruned(result, staging, prepare=False)
        report = compress_report(result)
        if policy is not None:
            report["width_policy"] = policy
        # the default runtimes; those that take an ONNX file are left out without an export
        timing = BenchOptions(batch_sizes=batch_sizes, device=args.device, threads=args.threads, run=bool(bench))
        report = finalize(staging, dense=result.dense, pruned=result.model, calib_x=result.calib_inputs,
                          heldout_x=result.heldout_inputs, heldout_y=getattr(args, "heldout_labels", None),
                          report=report, export=None if args.no_export else ExportOptions(opset=args.opset),
                          bench=timing, quantize=config_from_args(args), overwrite=True)
    _print_summary(report, result, out, time.perf_counter() - t_start)
    return 0


def _choose_widths(result: Any, args: argparse.Namespace, batch_sizes: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
    """``--round-to auto``: time the width candidates on the runtime the report measures, keep the fastest.

    Without an export there is no ONNX Runtime to time: widths are kept multiples of 8, which the CPU and
    GPU kernels of both runtimes handle at full speed, and the report says the choice was not measured.
    """
    from functools import partial

    from exporters.widths import UNTIMED_MULTIPLE, choose_widths, timing_runtime, untimed_policy

    from ..compression import rewidth

    if args.no_export:
        chosen = rewidth(result, UNTIMED_MULTIPLE)
        return chosen, untimed_policy(result, chosen)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    return choose_widths(result, partial(rewidth, result), batch_sizes=batch_sizes, threads=args.threads,
                         runtime=timing_runtime(device), device=device, opset=args.opset, progress=log.info)


def unchanged_line(policy: dict[str, Any]) -> str:
    """What the console says when the width policy kept the dense widths: how many dead channels were
    found, why they were kept (the measurement), and how to remove them anyway."""
    exact = policy["candidates"][0]
    slower = ", ".join(f"{c['label']} {c['worst']:.2f}x the time (noise floor +-{c['noise_floor']:.0%})"
                       for c in policy["candidates"] if c["label"] != "dense")
    return (f"unchanged: {exact['removed']} dead channels found, kept because every compact candidate ran slower "
            f"than dense on {policy['runtime']} {policy['device']} ({slower}). To remove them anyway: --round-to 1 "
            "(exact widths) or --round-to 8; for a smaller model: --target-macs 0.5 or a lossy --criterion")


def _print_summary(report: dict[str, Any], result: Any, out: Path, seconds: float) -> None:
    """The speed verdicts first (a slower compact model is a warning), then what was removed and written."""
    from exporters.render import quantization_lines, speed_verdicts

    for line in speed_verdicts(report) + quantization_lines(report):
        print(line)
    pr, model, parity = report["pruning"], report["model"], report["parity"]
    print(f"removed {pr['removed']} of {pr['neurons_before']} neurons ({pr['neurons_before']} -> "
          f"{pr['neurons_after']}); params {model['params_before']:,} -> {model['params_after']:,}; MACs "
          + (f"{model['macs_before']:,} -> {model['macs_after']:,}" if model.get("macs_before") is not None
             else "unavailable") + f"; max output diff {parity['torch_max_abs_diff']:.3g}"
          + (f" (top-1 agreement {parity['top1_agreement']:.4f})" if parity.get("top1_agreement") is not None else ""))
    policy = report.get("width_policy")
    if policy and policy.get("note"):
        print(f"widths: {policy['chosen']}, {policy['note']}")
    elif policy:
        print(f"widths: {policy['chosen']} (of {', '.join(c['label'] for c in policy['candidates'])}, timed on "
              f"{policy['runtime']} {policy['device']}; per group in report.md)")
    if "heldout_skipped" in result.verification:
        print(f"note: {result.verification['heldout_skipped']}")
    print(f"wrote {out}/ in {seconds:.1f} s")


# ---------------------------------------------------------------------- inspect
def _print_neuron_total(groups: list[dict[str, Any]], criterion: str, samples: int) -> None:
    """The removable neurons, counted as ``demp compress`` and the report count them: the channels of the
    groups some Conv/Linear reads; the model's outputs (read by no layer) are named apart, not counted."""
    neurons = [g for g in groups if g["neurons"]]
    print(f"\n{sum(g['removable'] for g in neurons)} of {sum(g['channels'] for g in neurons)} neurons removable "
          f"under {criterion} ({samples} calibration samples)")
    others = [g for g in groups if not g["neurons"]]
    if others:
        named = ", ".join(f"{g['root']} ({g['channels']})" for g in others)
        print(f"not counted as neurons (as in demp compress): {named}, channels no Conv/Linear reads (the model's "
              "outputs)")


def run_inspect(args: argparse.Namespace) -> int:
    from ..activity import collect_activity
    from ..criteria import Dead, Dormant, Saturated, parse_criterion
    from ..graph import DependencyAnalyzer

    crit = parse_criterion(args.criterion)
    model, data, calib_loader, heldout_x, source = load_inputs(args)
    example = next(iter(calib_loader))[0][:1].to(args.device)
    analyzer = DependencyAnalyzer(model, example, ignore=args.ignore, min_channels=args.min_channels,
                                  round_to=args.round_to, time_budget=args.analyzer_budget)
    stats = collect_activity(model, calib_loader, progress=not args.no_progress, desc="calibration")
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
    neuron_roots = {g.root for g in analyzer.neuron_groups}
    print(f"\n{'group root':<44} {'chans':>6} {'removable':>9}  note ({crit.spec()})")
    for g in analyzer.groups:
        n = 0 if g.blocked else int(analyzer.removable_channels(g, stats, crit).sum())
        groups.append({"root": g.root, "channels": g.size, "removable": n, "blocked": g.blocked,
                       "members": g.members, "neurons": g.root in neuron_roots})
        print(f"{g.root:<44} {g.size:>6} {n:>9}  {g.blocked or ''}")
        if args.groups:
            print("\n".join("    " + line for line in g.details().splitlines()[1:]))
    _print_neuron_total(groups, crit.spec(), stats.samples)
    if args.json:
        from ..fileio import atomic_write_json

        atomic_write_json(args.json, {"source": source, "criterion": crit.to_dict(), "samples": stats.samples,
                                      "layers": layers, "groups": groups})
    return 0
