#!/usr/bin/env python
"""Latency of dense versus compact models: does removing channels pay off in wall-clock time?

For each model (default ResNet-50, MobileNetV2, VGG-16-BN at 224x224) about half of every prunable
coupling group's channels are made dead (planted) and removed by demp's analyzer with the lossless
``dead`` criterion (classifier outputs kept). Both models are exported to ONNX with the same
exporter and timed **interleaved** (round-robin in short turns) with onnxruntime's CPU execution
provider (and optionally PyTorch eager), at batch 1 and 8. The result is the latency ratio next to
the MAC ratio and the speedup efficiency = MAC ratio / latency ratio (goal >= 0.87, i.e. latency
ratio <= 1.15 x MAC ratio).

    python tools/bench_latency.py --out runs/bench_latency            # all three models
    python tools/bench_latency.py --models resnet50 --min-time 3      # one model, shorter

Writes ``bench_latency.json`` and ``bench_latency.md`` into ``--out``. Timing is sensitive to other
load on the machine; the environment (CPU model, cores, threads, versions) is recorded with it.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

GOAL_EFFICIENCY = 1 / 1.15  # latency ratio <= 1.15 x MAC ratio
DEFAULT_MODELS = ("resnet50", "mobilenet_v2", "vgg16_bn")


def make_pruned_pair(arch: str, input_size: int = 224, ratio: float = 0.5, seed: int = 0,
                     round_to: int = 8) -> tuple[nn.Module, nn.Module]:
    """(dense, pruned): torchvision ``arch`` with ``ratio`` of every prunable group's channels dead and removed.

    The product path: dead channels are planted (BatchNorm bias -1e3 before the activation), found
    by activity statistics with the lossless ``dead`` criterion and removed by the analyzer, with
    ``--round-to`` (default 8) keeping widths multiples of 8: channels that happen to be dead on the
    few random calibration samples would otherwise leave odd widths that CPU kernels handle badly.
    """
    from compressor.activity import collect_activity
    from compressor.criteria import Dead
    from compressor.graph import DependencyAnalyzer
    from compressor.loading import load_model
    from compressor.planting import plant_dead_channels

    torch.manual_seed(seed)
    dense = load_model(arch, input_size=input_size).eval()
    example = torch.randn(4, 3, input_size, input_size)
    plant_dead_channels(dense, DependencyAnalyzer(dense, example), fraction=ratio)
    pruned = copy.deepcopy(dense)
    analyzer = DependencyAnalyzer(pruned, example, round_to=round_to)
    stats = collect_activity(pruned, [example], layers=analyzer.consumer_names, progress=False,
                             fields=Dead.fields)
    analyzer.apply(analyzer.decide(stats, Dead()), track_indices=False)
    return dense, pruned.eval()


def bench_model(arch: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from compressor.counting import compare_macs
    from exporters.latency import BenchConfig, Variant, benchmark, format_table
    from exporters.onnx import export_onnx
    from exporters.ort import check_parity

    t0 = time.perf_counter()
    dense, pruned = make_pruned_pair(arch, args.input_size, args.ratio, args.seed, args.round_to)
    prune_s = time.perf_counter() - t0
    shape = (3, args.input_size, args.input_size)
    macs = compare_macs(dense, pruned, shape)
    print(f"{arch}: MACs {macs.dense.total_macs / 1e9:.3f} G -> {macs.pruned.total_macs / 1e9:.3f} G "
          f"(ratio {macs.mac_ratio:.3f}), params {macs.dense.params / 1e6:.1f} M -> {macs.pruned.params / 1e6:.1f} M",
          flush=True)
    x = torch.randn(2, *shape)
    d_info = export_onnx(dense, x, tmp / f"{arch}-dense.onnx", exporter=args.exporter)
    p_info = export_onnx(pruned, x, tmp / f"{arch}-pruned.onnx", exporter=args.exporter)
    parity = check_parity(p_info.path, pruned, torch.randn(4, *shape))
    variants = [
        Variant("dense", dense, d_info.path, macs.dense.total_macs),
        Variant("pruned", pruned, p_info.path, macs.pruned.total_macs),
    ]
    config = BenchConfig(batch_sizes=tuple(args.batch_sizes), runtimes=tuple(args.runtimes), device="cpu",
                         threads=args.threads, warmup=args.warmup, min_iters=args.min_iters,
                         min_time_s=args.min_time)
    result = benchmark(variants, shape, config, progress=lambda m: print(f"  timing {m}", flush=True))
    print(format_table(result), flush=True)
    data = result.to_dict()
    return {
        "arch": arch,
        "input_shape": list(shape),
        "pruning": {"method": "planted dead channels + DependencyAnalyzer (dead criterion)", "ratio": args.ratio,
                    "round_to": args.round_to, "seconds": prune_s},
        "macs_dense": macs.dense.total_macs,
        "macs_pruned": macs.pruned.total_macs,
        "mac_ratio": macs.mac_ratio,
        "params_dense": macs.dense.params,
        "params_pruned": macs.pruned.params,
        "exporter": p_info.exporter,
        "onnx_parity_rel_diff": parity.rel_diff,
        "latency": data["latency"],
        "comparison": data["comparison"],
        "environment": data["environment"],
        "config": data["config"],
    }


def render_markdown(results: list[dict[str, Any]], command: str) -> str:
    env = results[0]["environment"] if results else {}
    lines = [
        "# Latency: dense versus compact (interleaved)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {env.get('cpu_model')}, {env.get('logical_cores')} logical cores, "
        f"{env.get('threads')} threads; date {env.get('date')}; "
        f"torch {env.get('versions', {}).get('torch')}, onnxruntime {env.get('versions', {}).get('onnxruntime')}.",
        "",
        "Speedup efficiency = MAC ratio / latency ratio (p50). Goal: >= 0.87 (latency ratio <= 1.15 x MAC ratio).",
        "",
        "| model | runtime | batch | dense p50 ms | pruned p50 ms | latency ratio | MAC ratio | efficiency | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for c in res["comparison"]:
            eff = c.get("speedup_efficiency")
            ok = "met" if eff is not None and eff >= GOAL_EFFICIENCY else "missed"
            lines.append(f"| {res['arch']} | {c['runtime']} | {c['batch']} | {c['baseline_p50_ms']:.2f} | "
                         f"{c['variant_p50_ms']:.2f} | {c['latency_ratio']:.3f} | {c['mac_ratio']:.3f} | "
                         f"{eff:.2f} | {ok} |")
    lines += ["", "| model | MACs dense (G) | MACs pruned (G) | params dense (M) | params pruned (M) | exporter |",
              "|---|---|---|---|---|---|"]
    for res in results:
        lines.append(f"| {res['arch']} | {res['macs_dense'] / 1e9:.3f} | {res['macs_pruned'] / 1e9:.3f} | "
                     f"{res['params_dense'] / 1e6:.2f} | {res['params_pruned'] / 1e6:.2f} | {res['exporter']} |")
    lines += ["", "Per-variant percentiles:", "", "| model | runtime | batch | variant | p50 | p90 | p99 | iters |",
              "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for e in res["latency"]:
            lines.append(f"| {res['arch']} | {e['runtime']} | {e['batch']} | {e['variant']} | {e['p50_ms']:.2f} | "
                         f"{e['p90_ms']:.2f} | {e['p99_ms']:.2f} | {e['iters']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--ratio", type=float, default=0.5, help="share of every group's channels removed")
    parser.add_argument("--round-to", type=int, default=8,
                        help="keep widths multiples of N (1: remove every dead channel)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--runtimes", default="onnxruntime", help="e.g. onnxruntime or torch,onnxruntime")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--min-time", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_latency")
    args = parser.parse_args(argv)

    from exporters.latency import parse_batch_sizes, parse_runtimes

    args.batch_sizes = parse_batch_sizes(args.batch_sizes)
    args.runtimes = parse_runtimes(args.runtimes)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
            results.append(bench_model(arch, args, Path(tmp)))
    payload = {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "seconds": time.perf_counter() - started, "goal_efficiency": GOAL_EFFICIENCY, "results": results}
    from compressor.fileio import atomic_write_json, atomic_write_text


    atomic_write_json(out / "bench_latency.json", payload)
    atomic_write_text(out / "bench_latency.md", render_markdown(results, command))
    print(f"wrote {out / 'bench_latency.json'} and {out / 'bench_latency.md'} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
