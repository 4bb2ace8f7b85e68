#!/usr/bin/env python
"""Time the ONNX export of a compact ResNet-50 (224x224) including the onnxruntime parity check.

The model is torchvision's ResNet-50 with about half of every coupling group's channels removed
(see ``tools/bench_latency.py``). For each exporter the script times ``export_onnx`` (export,
``onnx.checker`` full check, shape inference, metadata, atomic write) and ``check_parity``
(onnxruntime CPU session on ``--samples`` inputs at several batch sizes). Goal: export + parity < 30 s.

    python tools/bench_export.py --out runs/bench_export

The first exporter in ``--exporters`` pays the one-time import cost of the exporter stack (as a
fresh ``demp export`` process does); it is reported as measured. Writes ``bench_export.json`` and
``bench_export.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import make_pruned_pair  # noqa: E402

GOAL_S = 30.0


def _markdown(args: argparse.Namespace, command: str, env: dict, rows: list[dict]) -> str:
    """bench_export.md: one row per exporter."""
    lines = [
        f"# ONNX export + parity: compact {args.arch} ({args.input_size}x{args.input_size})", "",
        f"Command: `{command}`", "",
        f"Machine: {env['cpu_model']}, {env['logical_cores']} logical cores, {env['threads']} threads; date "
        f"{env['date']}.",
        "",
        "| exporter | export s | parity s | total s | MB | parity rel diff | samples | goal < 30 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['exporter']} | {r['export_s']:.1f} | {r['parity_s']:.1f} | {r['total_s']:.1f} | "
                     f"{r['bytes'] / 1e6:.1f} | {r['parity_rel_diff']:.2e} | {r['samples']} | "
                     f"{'met' if r['goal_met'] else 'missed'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--exporters", default="dynamo,torchscript")
    parser.add_argument("--samples", type=int, default=48, help="parity samples (calibration + held-out)")
    parser.add_argument("--out", default="runs/bench_export")
    args = parser.parse_args(argv)

    from compressor.fileio import atomic_write_json, atomic_write_text
    from exporters.env import collect_environment
    from exporters.onnx import export_onnx
    from exporters.ort import check_parity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    dense, pruned = make_pruned_pair(args.arch, args.input_size, args.ratio)
    shape = (3, args.input_size, args.input_size)
    gen = torch.Generator().manual_seed(0)
    calib = torch.randn((args.samples * 2 // 3, *shape), generator=gen)
    heldout = torch.randn((args.samples - calib.shape[0], *shape), generator=gen)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for exporter in [e.strip() for e in args.exporters.split(",") if e.strip()]:
            path = Path(tmp) / f"{exporter}.onnx"
            t0 = time.perf_counter()
            info = export_onnx(pruned, calib[:2], path, exporter=exporter, metadata={"demp.bench": "export"})
            t1 = time.perf_counter()
            parity = check_parity(path, pruned, [calib, heldout])
            t2 = time.perf_counter()
            row = {"exporter": info.exporter, "export_s": t1 - t0, "parity_s": t2 - t1, "total_s": t2 - t0,
                   "bytes": info.bytes, "parity_rel_diff": parity.rel_diff, "parity_max_abs_diff": parity.max_abs_diff,
                   "top1_agreement": parity.top1_agreement, "samples": parity.samples,
                   "batch_sizes": parity.batch_sizes, "goal_met": (t2 - t0) < GOAL_S}
            rows.append(row)
            print(f"{exporter}: export {row['export_s']:.1f} s + parity {row['parity_s']:.1f} s = "
                  f"{row['total_s']:.1f} s ({info.bytes / 1e6:.1f} MB, rel diff {parity.rel_diff:.2e}, "
                  f"batch sizes {parity.batch_sizes})",
                  flush=True)
    env = collect_environment()
    payload = {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "arch": args.arch, "input_shape": list(shape), "ratio": args.ratio, "goal_s": GOAL_S,
               "results": rows, "environment": env}
    atomic_write_json(out / "bench_export.json", payload)
    atomic_write_text(out / "bench_export.md", _markdown(args, command, env, rows))
    print(f"wrote {out / 'bench_export.json'} and {out / 'bench_export.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
