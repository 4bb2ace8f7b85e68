"""``demp export`` and ``demp bench``.

* ``demp export DIR`` re-exports a compressed directory (``plan.json`` + ``weights.safetensors``) to
  ONNX and checks the file with onnxruntime.
* ``demp bench TARGET`` times dense versus compact (a compressed directory), one ``.onnx`` file, or any
  dense model (``--arch NAME --input-size S``), interleaved, and prints a compact table.

Neither command overwrites an existing output without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.errors import DempError, OutputExistsError, UsageError

from .defaults import DEFAULT_THREADS, RUNTIMES  # not .latency: that imports torch

if TYPE_CHECKING:
    from compressor.models import ModelSpec
    from compressor.plan import PruningPlan

log = logging.getLogger("demp")


EXPORT_EXAMPLES = """examples:
  demp export resnet18-slim/ --overwrite
  demp export resnet18-slim/ --quantize int8 --data cifar10:/data/cifar --overwrite     (adds model.int8.onnx)
  demp export resnet18-slim/ --static-batch --batch-size 8 --out r18-b8.onnx --data cifar10:/data/cifar
"""

BENCH_EXAMPLES = """examples:
  demp bench resnet18-slim/                                 (dense vs compact, PyTorch and ONNX Runtime)
  demp bench resnet18-slim/ --batch-sizes 1,8,32 --threads 4 --json bench.json
  demp bench model.onnx --input-shape 3,224,224
  demp bench --arch resnet50 --input-size 224 --device cuda
"""


def register(subparsers: Any) -> None:
    """Add ``export`` and ``bench`` to the ``demp`` command."""
    e = subparsers.add_parser(
        "export", epilog=EXPORT_EXAMPLES,
        help="export a compressed directory to ONNX (with an onnxruntime parity check)",
        description="Re-export a compressed model directory (made by `demp compress` or `demp train`) to ONNX, "
        "check it with onnxruntime against PyTorch, and record metadata (tool version, plan hash, sparsity).")
    e.add_argument("dir", metavar="DIR", help="compressed model directory (contains plan.json)")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    batch = e.add_mutually_exclusive_group()
    batch.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True,
                       help="batch axis of any size (default)")
    batch.add_argument("--static-batch", dest="dynamic_batch", action="store_false",
                       help="fix the batch size (see --batch-size)")
    e.add_argument("--batch-size", type=int, default=1, help="batch size of a --static-batch export (default 1)")
    e.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="auto: torch.export-based, TorchScript as fallback (default)")
    e.add_argument("--simplify", action="store_true", help="simplify with onnxslim (pip install 'demp[simplify]')")
    e.add_argument("--out", metavar="FILE", help="output .onnx file (default DIR/model.onnx)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e.add_argument("--data", metavar="SPEC", help="dataset for the parity check (e.g. digits, cifar10:ROOT); "
                   "default: random inputs")
    e.add_argument("--parity-samples", type=int, default=64, help="samples for the parity check (default 64)")
    from .quantize import add_quantize_args  # light: no torch or onnxruntime at import

    add_quantize_args(e)
    e.add_argument("--normalize", default="auto", metavar="NORM",
                   help="input statistics of --data (parity and --quantize), as in demp compress (default auto)")
    e.set_defaults(handler=run_export)

    b = subparsers.add_parser(
        "bench", epilog=BENCH_EXAMPLES, help="latency: dense vs compact, PyTorch vs ONNX Runtime, percentiles",
        description="Time a compressed directory (dense vs compact), an .onnx file, or a dense model "
        "(--arch NAME --input-size S). Variants are interleaved round-robin so machine noise hits both.",
    )
    b.add_argument("target", nargs="?", metavar="TARGET", help="compressed directory or .onnx file (or use --arch)")
    b.add_argument("--arch", help="time a freshly initialized dense model of this architecture instead")
    b.add_argument("--input-size", type=int, help="image side length for --arch")
    b.add_argument("--input-shape", help="sample shape C,H,W for an .onnx file with symbolic dimensions")
    b.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    b.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    b.add_argument("--runtimes", default=None,
                   help=f"comma-separated from {','.join(RUNTIMES)} (default torch,onnxruntime; "
                   "onnxruntime for an .onnx file)")
    b.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="intra-op threads of PyTorch and onnxruntime while timing (one by default, like every timing "
                   "demp makes: on a shared machine more threads mostly add noise)")
    b.add_argument("--min-iters", type=int, default=20, help="at least this many timed iterations (default 20)")
    b.add_argument("--min-time", type=float, default=1.0, help="and at least this many seconds per variant and batch "
                   "(default 1.0); then timing goes on until every verdict is clear (inside or outside the noise "
                   "floor of an A/A copy of dense) or --max-time")
    b.add_argument("--max-time", type=float, default=None, help="at most this many seconds per variant and batch "
                   "(default: 4 x --min-time)")
    b.add_argument("--warmup", type=int, default=5, help="untimed warm-up iterations (default 5)")
    b.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="exporter for ONNX files made for timing")
    b.add_argument("--opset", type=int, default=18, help="ONNX opset of the files made for timing")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    b.set_defaults(handler=run_bench)


# ----------------------------------------------------------------------------------------- export
def run_export(args: argparse.Namespace) -> int:
    import torch

    from compressor.counting import count_params, neuron_sparsity
    from compressor.pruned import dense_model, input_shape, load_pruned, neuron_counts

    from .onnx import export_onnx
    from .ort import check_parity

    directory = Path(args.dir)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory; `demp export` takes a compressed model directory "
                         "made by `demp compress` or `demp train` (it contains plan.json)")
    out = Path(args.out) if args.out else directory / "model.onnx"
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if args.batch_size < 1 or args.parity_samples < 1:
        raise UsageError("--batch-size and --parity-samples must be >= 1")
    quantize = _quantize_config(args, out)  # before any work
    pruned = load_pruned(directory)
    shape = input_shape(pruned)
    bundle = _export_data(args, directory, shape)
    samples = _parity_inputs(bundle, shape, args.parity_samples)
    plan: PruningPlan = pruned.demp_plan  # type: ignore[assignment]  # set by load_pruned
    spec: ModelSpec = pruned.demp_spec  # type: ignore[assignment]  # set by load_pruned
    dense_params = count_params(dense_model(pruned))
    params = count_params(pruned)
    meta = {"demp.plan_hash": plan.removal_hash(), "demp.weight_sparsity": f"{1 - params / dense_params:.6f}"}
    sparsity = neuron_sparsity(*neuron_counts(pruned))
    if sparsity is not None:
        meta["demp.neuron_sparsity"] = f"{sparsity:.6f}"
    if (plan.source or {}).get("sha256"):
        meta["demp.source_sha256"] = str(plan.source["sha256"])
    meta["demp.arch"] = str(spec.arch)
    example = samples[: (2 if args.dynamic_batch else args.batch_size)]
    if example.shape[0] < (1 if args.dynamic_batch else args.batch_size):
        example = torch.cat([example] * args.batch_size)[: args.batch_size]
    info = export_onnx(pruned, example, out, opset=args.opset, dynamic_batch=args.dynamic_batch, metadata=meta,
                       exporter=args.exporter, simplify=args.simplify, overwrite=args.overwrite)
    parity = check_parity(out, pruned, samples)
    kind = "real" if args.data else "random"
    print(f"wrote {out} ({info.bytes / 1e6:.1f} MB, {info.exporter} exporter, opset {info.opset}, "
          f"{'dynamic' if info.dynamic_batch else 'static'} batch) in {info.seconds:.1f} s")
    if info.fallback_reason:
        print(f"note: {info.fallback_reason}; used the TorchScript exporter")
    agreement = "n/a" if parity.top1_agreement is None else f"{parity.top1_agreement:.4f}"
    print(f"parity (onnxruntime vs PyTorch, {parity.samples} {kind} samples, batch sizes "
          f"{','.join(map(str, parity.batch_sizes))}): max abs diff {parity.max_abs_diff:.3g}, relative "
          f"{parity.rel_diff:.3g}, top-1 agreement {agreement}")
    return _export_int8(args, directory, out, bundle, quantize) if quantize is not None else 0


def _quantize_config(args: argparse.Namespace, out: Path) -> Any:
    """``--quantize``'s settings (None without it); it needs real data, and its file beside ``out``."""
    from .quantize import config_from_args, int8_path_for

    config = config_from_args(args)
    if config is None:
        return None
    if not args.data:
        raise UsageError("--quantize int8 calibrates on real samples: pass --data SPEC, the data the model was "
                         "compressed with")
    if int8_path_for(out).exists() and not args.overwrite:
        raise OutputExistsError(f"{int8_path_for(out)} already exists; pass --overwrite to replace it")
    return config


def _export_data(args: argparse.Namespace, directory: Path, shape: tuple[int, ...]) -> Any:
    """``--data`` loaded as ``demp compress`` loads it: with the input statistics ``--normalize`` names (auto: those
    of the architecture recorded in the folder's report); None without ``--data``."""
    if not args.data:
        return None
    from compressor.data import load_data
    from compressor.models.registry import data_normalization
    from compressor.pruned import REPORT_JSON

    report_file = directory / REPORT_JSON
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    arch = str((report.get("source") or {}).get("arch") or "")
    bundle = load_data(args.data, input_size=shape[-1] if len(shape) == 3 else None,
                       normalize=data_normalization(arch or None, args.normalize))
    if tuple(bundle.input_shape) != shape:
        raise UsageError(f"--data {args.data} gives samples of shape {tuple(bundle.input_shape)}, but the model takes "
                         f"{shape}; pass the data the model was compressed with")
    return bundle


def _export_int8(args: argparse.Namespace, directory: Path, out: Path, bundle: Any, config: Any) -> int:
    """``model.int8.onnx`` beside ``out``: calibrated and checked on the split ``demp compress`` makes of
    ``--data`` (same sizes as the folder's report, seed 0); the folder's report gains the section."""
    from compressor.data import calibration_split, stack_samples
    from compressor.defaults import CALIB_SAMPLES, HELDOUT_SAMPLES
    from compressor.pruned import ONNX_FILE, REPORT_JSON

    from .quantize import int8_path_for, quantize_and_check
    from .render import quantization_lines
    from .report import ReportError, write_report

    report_file = directory / REPORT_JSON
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    pruning = report.get("pruning") or {}
    calib, held = calibration_split(bundle.train, samples=pruning.get("calib_samples") or CALIB_SAMPLES,
                                    heldout=pruning.get("heldout_samples") or HELDOUT_SAMPLES, seed=0)
    heldout_x, labels = stack_samples(held)
    section = quantize_and_check(out, int8_path_for(out), stack_samples(calib)[0], heldout_x, labels, config,
                                 overwrite=args.overwrite)
    for line in quantization_lines({"quantization": section}):
        print(line)
    if section["shipped"]:
        print(f"timing: `demp bench {directory}` times dense fp32, compact fp32 and compact int8, interleaved")
    if report and out.resolve() == (directory / ONNX_FILE).resolve():
        try:
            write_report({**report, "quantization": section}, directory, overwrite=True)
        except ReportError as exc:
            log.warning("%s not updated with the quantization: %s", report_file, exc)
    return 0


def _parity_inputs(bundle: Any, shape: tuple[int, ...], n: int) -> Any:
    """``n`` samples of ``bundle``'s test split (its training split when it has none); random without data."""
    import torch

    if bundle is None:
        return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))
    from compressor.data import num_samples

    dataset = bundle.test if bundle.test is not None else bundle.train
    count = min(n, num_samples(dataset))
    return torch.stack([dataset[i][0] for i in range(count)])


# ----------------------------------------------------------------------------------------- bench
def run_bench(args: argparse.Namespace) -> int:
    from compressor.fileio import atomic_write_json

    from .latency import (
        BenchConfig,
        benchmark,
        format_table,
        parse_batch_sizes,
        parse_runtimes,
    )
    from .runtimes import runtimes_named

    if args.json and Path(args.json).exists() and not args.overwrite:
        raise OutputExistsError(f"{args.json} already exists; pass --overwrite to replace it or choose another --json")
    if args.target and args.arch:
        raise UsageError("give either TARGET (a compressed directory or .onnx file) or --arch, not both")
    if not args.target and not args.arch:
        raise UsageError("nothing to time: give a compressed directory, an .onnx file, or --arch NAME --input-size S")
    is_onnx = bool(args.target) and str(args.target).endswith(".onnx")
    default_runtimes = "onnxruntime" if is_onnx else "torch,onnxruntime"
    runtimes = parse_runtimes(args.runtimes or default_runtimes)
    config = BenchConfig(batch_sizes=parse_batch_sizes(args.batch_sizes), runtimes=runtimes,
                         device=_device(args.device), threads=args.threads, warmup=args.warmup,
                         min_iters=args.min_iters, min_time_s=args.min_time, max_time_s=args.max_time)
    config.validate()  # before any expensive loading or exporting
    if is_onnx and not all(r.takes_onnx for r in runtimes_named(runtimes)):
        raise UsageError("an .onnx file can only be timed with onnxruntime runtimes; use --runtimes onnxruntime, "
                         "or give the compressed directory to compare PyTorch too")

    with tempfile.TemporaryDirectory(prefix="demp-bench-") as tmp:
        variants, shape = _bench_variants(args, config, Path(tmp))
        result = benchmark(variants, shape, config, progress=lambda msg: log.info("timing %s", msg))
    data = result.to_dict()
    data["target"] = str(args.target) if args.target else f"--arch {args.arch}"
    data["input_shape"] = list(shape)
    env = result.environment
    print(f"{env['cpu_model']}, {env['logical_cores']} logical cores, {result.config['threads']} threads"
          + (f", GPU {env['gpu']['name']}" if env.get("gpu") else ""))
    print(format_table(result))
    from .quantize import int8_speedups
    from .render import int8_speed_lines, speed_verdicts

    for line in speed_verdicts({"latency_comparison": data["comparison"], "environment": env,
                                "machine_load": data["machine_load"]}) + \
            int8_speed_lines(int8_speedups(data["latency"], data["comparison"])):
        print(line)
    if args.json:
        atomic_write_json(args.json, data)
        print(f"wrote {args.json}")
    return 0


def _device(text: str) -> str:
    text = str(text).strip().lower()
    if text.startswith("cuda"):
        return "cuda"
    if text != "cpu":
        raise UsageError(f"unknown device {text!r}; use --device cpu or --device cuda")
    return text


def _bench_variants(args: argparse.Namespace, config: Any, tmp: Path) -> tuple[list[Any], tuple[int, ...]]:
    """Build the variants to time for the three kinds of TARGET."""
    from .runtimes import runtimes_named

    runtimes = runtimes_named(config.runtimes)
    needs_onnx = any(r.takes_onnx for r in runtimes)
    needs_torch = not all(r.takes_onnx for r in runtimes)
    if args.arch:
        return _arch_variant(args, tmp, needs_onnx=needs_onnx, needs_torch=needs_torch)
    target = Path(args.target)
    if str(target).endswith(".onnx"):
        return _onnx_variant(args, target)
    if target.is_dir():
        return _directory_variants(args, target, tmp, needs_onnx=needs_onnx, needs_torch=needs_torch)
    if target.exists():
        raise UsageError(f"{target} is neither a compressed model directory nor an .onnx file")
    raise UsageError(f"{target} not found; give a compressed directory, an .onnx file, or --arch NAME")


def _arch_variant(args: argparse.Namespace, tmp: Path, *, needs_onnx: bool,
                  needs_torch: bool) -> tuple[list[Any], tuple[int, ...]]:
    """A freshly initialized dense model of ``--arch``."""
    from compressor.counting import count_macs
    from compressor.loading import load_model

    from .latency import Variant

    model = load_model(args.arch, input_size=args.input_size).eval()
    spec = getattr(model, "demp_spec", None)
    shape = tuple(spec.input_shape) if spec is not None else (3, args.input_size or 224, args.input_size or 224)
    onnx_path = _export_for_timing(model, shape, tmp / "dense.onnx", args) if needs_onnx else None
    return [Variant(args.arch, model if needs_torch else None, onnx_path, count_macs(model, shape).total_macs)], shape


def _onnx_variant(args: argparse.Namespace, target: Path) -> tuple[list[Any], tuple[int, ...]]:
    """One .onnx file, timed in onnxruntime only."""
    from .latency import Variant
    from .ort import load_onnx_session, onnx_input_shape, read_onnx_metadata

    if not target.is_file():
        raise UsageError(f"{target} not found")
    try:
        session = load_onnx_session(target)  # a corrupt file fails here with a clear message
        read_onnx_metadata(target)
    except DempError as exc:  # a file given on the command line: an input the user fixes (exit code 2)
        raise UsageError(str(exc)) from None
    _, dims = onnx_input_shape(session)
    if args.input_shape:
        shape = _parse_shape(args.input_shape)
    elif all(isinstance(d, int) for d in dims[1:]):
        shape = tuple(int(d) for d in dims[1:])
    else:
        raise UsageError(f"{target} has symbolic input dimensions {dims[1:]}; pass --input-shape C,H,W")
    return [Variant(target.stem, None, str(target), None)], shape


def _directory_variants(args: argparse.Namespace, target: Path, tmp: Path, *, needs_onnx: bool,
                        needs_torch: bool) -> tuple[list[Any], tuple[int, ...]]:
    """Dense versus compact of a compressed directory (its own model.onnx when it matches the plan)."""
    from compressor.counting import compare_macs
    from compressor.pruned import dense_model, input_shape, is_pruned_dir, load_pruned

    from .latency import Variant
    from .ort import read_onnx_metadata

    if not is_pruned_dir(target):
        raise UsageError(f"{target} is not a compressed model directory (no plan.json); give a directory made by "
                         "`demp compress`/`demp train`, an .onnx file, or --arch NAME")
    pruned = load_pruned(target)
    shape = input_shape(pruned)
    dense = dense_model(pruned)
    plan: PruningPlan = pruned.demp_plan  # type: ignore[assignment]  # set by load_pruned
    if plan.is_empty():  # an unchanged model is not timed against itself
        print(f"unchanged: {target} keeps the dense widths (nothing was removed), so it is timed alone")
        onnx_file = _export_for_timing(dense, shape, tmp / "dense.onnx", args) if needs_onnx else None
        return [Variant("dense", dense if needs_torch else None, onnx_file)] + \
            (_int8_variant(target, pruned) if needs_onnx else []), shape
    dense_onnx = pruned_onnx = None
    if needs_onnx:
        existing = target / "model.onnx"
        meta = read_onnx_metadata(existing) if existing.is_file() else {}
        if meta.get("demp.dynamic_batch") == "true" and meta.get("demp.plan_hash") == plan.removal_hash():
            pruned_onnx = str(existing)
            args.exporter = meta.get("demp.exporter", args.exporter)  # same exporter for the dense file
        else:
            pruned_onnx = _export_for_timing(pruned, shape, tmp / "pruned.onnx", args)
        dense_onnx = _export_for_timing(dense, shape, tmp / "dense.onnx", args)
    macs = compare_macs(dense, pruned, shape)  # one counter for both: the ratio compares like with like
    return [
        Variant("dense", dense if needs_torch else None, dense_onnx, macs.dense.total_macs),
        Variant("pruned", pruned if needs_torch else None, pruned_onnx, macs.pruned.total_macs),
    ] + (_int8_variant(target, pruned) if needs_onnx else []), shape


def _int8_variant(target: Path, pruned: Any) -> list[Any]:
    """The folder's ``model.int8.onnx`` (onnxruntime only), when it was made from this plan with a dynamic batch."""
    from compressor.pruned import INT8_ONNX_FILE

    from .latency import Variant
    from .ort import read_onnx_metadata

    path = target / INT8_ONNX_FILE
    if not path.is_file():
        return []
    meta = read_onnx_metadata(path)
    if meta.get("demp.plan_hash") != pruned.demp_plan.removal_hash() or meta.get("demp.dynamic_batch") != "true":
        log.warning("%s is not timed: it was not made from this folder's plan with a dynamic batch axis; make it "
                    "again with `demp export %s --quantize int8 --data SPEC --overwrite`", path, target)
        return []
    return [Variant("int8", None, str(path), None)]  # no MACs: int8 arithmetic is not float arithmetic


def _export_for_timing(model: Any, shape: tuple[int, ...], path: Path, args: argparse.Namespace) -> str:
    import torch

    from .onnx import export_onnx

    info = export_onnx(model, torch.zeros((2, *shape)), path, opset=args.opset, exporter=args.exporter)
    return info.path


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in str(text).replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated integers like 3,224,224, got {text!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"--input-shape must be positive integers like 3,224,224, got {text!r}")
    return shape


__all__ = ["register", "run_export", "run_bench"]
