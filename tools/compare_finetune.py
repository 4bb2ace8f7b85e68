#!/usr/bin/env python
"""From a trained checkpoint to a MAC budget: DemP fine-tuning against prune-then-fine-tune (BENCHMARKS §9).

    python tools/compare_finetune.py --checkpoint ../shared/data/weights/akamaster-resnet20-12fca82f.th \\
        --arch resnet20-cifar-a --data imagefolder:/tmp/cifar10-jpg --macs 0.5,0.3 --epochs 1 --seeds 2 \\
        --threads 1 --out cmp-ft/ [--methods ...] [--first-seed K] [--resume] [--latency]

Every run starts from the same checkpoint and trains with the same fine-tuning (the ``train`` and
``data`` sections of :data:`compressor.training.finetune.FINETUNE_RECIPE`: optimizer, learning rate,
schedule, augmentation, ``--epochs``), on the training split minus ``--val-samples`` held out for
validation (choices are made on it; the test split is only reported). The methods, at each MAC ratio R:

- ``demp``: ``demp compress --target-macs R`` exactly (DemP budget mode, lossless removal first, the
  penalty only on the neurons the budget needs, chosen by |γ| over their MAC cost: beyond the papers);
- ``demp-uniform-cost``: the same choosing by |γ| alone (``demp.cost: uniform``);
- ``demp-papers``: the papers' penalty, uniform on every BatchNorm scale (``demp.cost: uniform``,
  ``demp.select: all``), in budget mode with the deadline;
- ``baseline:IMP``: torch-pruning's importance ``IMP`` (``magnitude-l1``, ``bn-scale``, ``taylor``) or the
  ReDo dormant score (``redo``, the ranking DemP's deadline cuts by), one-shot before the first step
  to the fewest lowest-ranked neurons that reach R (``baseline.at_epoch: 0``, ``baseline.target_macs``),
  then the same fine-tuning;
- ``dense``: the checkpoint fine-tuned the same way (``method: none``): the ceiling.

Each finished run is recorded in ``--out/records/`` with its whole recipe; ``--resume`` reuses every
record whose recipe is unchanged (so a grid spans sessions, and ``--first-seed`` splits seeds over two
processes whose ``records/`` are copied together). ``--latency`` times every saved compact model
against the dense checkpoint in onnxruntime (CPU, one thread, batch 1 and 8, all models interleaved
in one measurement) and adds the ratio to its row (a measurement the timing code marks unreliable
is left out, shown as -). Outputs: ``results.json``, ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from shared_data import SHARED
from tool_common import mean_sd, run_comparison

ROOT = Path(__file__).resolve().parents[1]
ALL_METHODS = ("dense", "demp", "demp-uniform-cost", "demp-papers", "baseline:magnitude-l1", "baseline:bn-scale",
               "baseline:taylor", "baseline:redo")
#: The DemP rows: what each changes from ``demp compress --target-macs R``'s defaults.
DEMP_VARIANTS = {"demp": [], "demp-uniform-cost": ["demp.cost=uniform"],
                 "demp-papers": ["demp.cost=uniform", "demp.select=all"]}
OUTPUTS = ("runs", "records", "results.json", "results.md")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(SHARED / "weights" / "akamaster-resnet20-12fca82f.th"))
    p.add_argument("--arch", default="resnet20-cifar-a")
    p.add_argument("--data", required=True, help="dataset spec, e.g. imagefolder:/tmp/cifar10-jpg")
    p.add_argument("--macs", default="0.5,0.3", help="comma-separated MAC ratios compact/dense")
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs of every run (fractions allowed)")
    p.add_argument("--val-samples", type=int, default=5000, help="training samples held out for validation")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every run's recipe (e.g. train.lr=0.005)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="reuse the recorded runs in --out")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--latency", action="store_true", help="time every compact model against the dense one (ORT)")
    return p.parse_args(argv)


def run_recipe(args: argparse.Namespace, method: str, ratio: float | None, seed: int) -> dict[str, Any]:
    """The recipe mapping of one run: the fine-tune defaults, the method's section, the target."""
    from compressor.training.finetune import finetune_recipe

    sets = [f"data.val_samples={args.val_samples}", "export.onnx=false", *args.overrides]
    name, _, importance = method.partition(":")
    sets += DEMP_VARIANTS.get(name, [])
    recipe = finetune_recipe(target=("macs", ratio if ratio is not None else 0.5), arch=args.arch,
                             checkpoint=args.checkpoint, data=args.data, epochs=args.epochs, seed=seed,
                             overrides=sets).to_dict()
    if name in ("baseline", "dense"):
        recipe["method"] = "none" if name == "dense" else "baseline"
        recipe["demp"] = {}  # unused by these methods: DemPConfig's defaults
        if name == "baseline":
            recipe["baseline"] = {**recipe["baseline"], "importance": importance, "at_epoch": 0,
                                  "target_macs": ratio, "samples": 1024}
    return recipe


def one_run(args: argparse.Namespace, out: Path, method: str, ratio: float | None,
            seed: int) -> tuple[dict[str, Any], bool]:
    """Train one run (or reuse its record); returns (record, reused)."""
    from compressor.fileio import atomic_write_json
    from compressor.training.config import load_recipe
    from compressor.training.trainer import train

    raw = run_recipe(args, method, ratio, seed)
    name = f"{method.replace(':', '-')}-{'dense' if ratio is None else f'M{ratio:g}'}-s{seed}"
    record, run_dir = out / "records" / f"{name}.json", out / "runs" / name
    key = json.dumps(raw, sort_keys=True)
    if record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            print(f"  {name}: reused {record}", flush=True)
            return saved["record"], True
    t0 = time.perf_counter()
    result = train(load_recipe(raw), run_dir, progress=False, plots=False, tensorboard=False, overwrite=True)
    wall = time.perf_counter() - t0
    s = result.summary
    rec = {"method": method, "ratio": ratio, "seed": seed, "name": name, "val_accuracy": s["val_accuracy"],
           "test_accuracy": s["test_accuracy"], "params": s["params_after"], "params_before": s["params_before"],
           "macs": s["macs_after"], "macs_before": s["macs_before"], "mac_ratio": s["macs_after"] / s["macs_before"],
           "neuron_sparsity": s.get("neuron_sparsity") or 0.0, "wall_s": wall,
           "per_group": {g["root"]: [g["before"], g["after"]] for g in s.get("groups", [])},
           "budget": next((m.get("budget") for m in s.get("methods", []) if m.get("budget")), None),
           "model_dir": str(run_dir / "model")}
    print(f"  {name}: val {100 * rec['val_accuracy']:.2f}%  test {100 * rec['test_accuracy']:.2f}%  MACs "
          f"{rec['mac_ratio']:.3f}x  ({wall:.0f}s)", flush=True)
    atomic_write_json(record, {"key": key, "record": rec})
    return rec, False


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, ratio): mean ± std over seeds of every figure."""
    rows = []
    for key in dict.fromkeys((r["method"], r["ratio"]) for r in records):
        recs = [r for r in records if (r["method"], r["ratio"]) == key]
        row: dict[str, Any] = {"method": key[0], "ratio": key[1], "n": len(recs), "seeds": [r["seed"] for r in recs]}
        for k in ("val_accuracy", "test_accuracy", "mac_ratio", "params", "wall_s", "ort_ratio_b1", "ort_ratio_b8"):
            values = [float(r[k]) for r in recs if r.get(k) is not None]
            row[k], row[k + "_std"] = mean_sd(values) if values else (None, None)
        rows.append(row)
    return rows


def measure_latency(records: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> None:
    """ORT CPU latency of every compact model over the dense checkpoint's: one interleaved measurement of
    all of them (one thread, batch 1 and 8), so every ratio shares the same machine state."""
    from compressor.loading import load_model
    from compressor.pruned import load_pruned
    from exporters.latency import BenchConfig, Variant, benchmark
    from exporters.onnx import export_onnx

    dense = load_model(args.arch, args.checkpoint).eval()
    shape = tuple(dense.demp_spec.input_shape)
    x = torch.zeros(1, *shape)
    export_onnx(dense, x, out / "runs" / "dense.onnx", overwrite=True)
    variants = [Variant("dense", onnx_path=str(out / "runs" / "dense.onnx"))]
    for rec in records:
        model_dir = Path(rec["model_dir"])
        if rec["ratio"] is None or not model_dir.is_dir():
            continue
        export_onnx(load_pruned(model_dir).eval(), x, model_dir / "model.onnx", overwrite=True)
        variants.append(Variant(rec["name"], onnx_path=str(model_dir / "model.onnx")))
    result = benchmark(variants, shape, BenchConfig(batch_sizes=(1, 8), runtimes=("onnxruntime",), threads=1),
                       progress=lambda line: print(line, flush=True))
    by_name = {rec["name"]: rec for rec in records}
    for c in result.comparisons:
        by_name[c.variant][f"ort_ratio_b{c.batch}"] = c.latency_ratio if c.reliable else None


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Command: `{result['command']}`  ",
             f"Checkpoint `{Path(result['checkpoint']).name}` ({result['arch']}), data {result['data'].split(':')[0]}, "
             f"{result['epochs']:g} fine-tuning epoch(s) per run, seeds {result['seeds']}, {result['val_samples']} "
             f"validation samples held out; {result['env']['date']}, {result['env']['platform']}, torch "
             f"{result['env']['torch']}, {result['env']['threads']} thread(s); {len(result['records'])} runs, "
             f"{sum(r['wall_s'] for r in result['records']) / 60:.1f} min of training ({result['reused']} reused).", "",
             "| MACs target | method | val acc (%) | test acc (%) | MACs (x dense) | params | ORT b1 / b8 (x dense) "
             "| wall-clock (s) |", "|---|---|---|---|---|---|---|---|"]

    def pm(row: dict[str, Any], k: str, scale: float = 100.0, fmt: str = ".2f") -> str:
        return "-" if row[k] is None else f"{scale * row[k]:{fmt}} ± {scale * row[k + '_std']:{fmt}}"

    for r in sorted(result["rows"], key=lambda r: (-(r["ratio"] or 1.0), r["method"])):
        ort = " / ".join("-" if r[k] is None else f"{r[k]:.2f}" for k in ("ort_ratio_b1", "ort_ratio_b8"))
        lines.append(f"| {'-' if r['ratio'] is None else format(r['ratio'], 'g')} | {r['method']} | "
                     f"{pm(r, 'val_accuracy')} | {pm(r, 'test_accuracy')} | {pm(r, 'mac_ratio', 1.0, '.3f')} | "
                     f"{r['params']:.0f} | {ort} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def compare(args: argparse.Namespace) -> dict[str, Any]:
    from compressor.fileio import atomic_write_json, atomic_write_text, check_output_dir, prepare_output_dir

    ratios = [float(x) for x in args.macs.split(",") if x.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or any(not 0 < r < 1 for r in ratios) or args.seeds < 1 or args.first_seed < 0:
        raise SystemExit(f"error: methods must be among {', '.join(ALL_METHODS)} (got {', '.join(bad) or 'ok'}), "
                         "ratios in (0, 1), --seeds >= 1, --first-seed >= 0")
    if args.resume and Path(args.out).is_dir():
        out = check_output_dir(args.out, overwrite=True, outputs=OUTPUTS)
    else:
        out = prepare_output_dir(args.out, overwrite=args.overwrite, outputs=OUTPUTS)
    torch.set_num_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    records, reused, started = [], 0, time.perf_counter()
    for seed in seeds:
        for method in methods:
            for ratio in ([None] if method == "dense" else ratios):
                rec, again = one_run(args, out, method, ratio, seed)
                records.append(rec)
                reused += again
    if args.latency:
        measure_latency(records, args, out)
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    result = {"command": "python tools/compare_finetune.py " + " ".join(sys.argv[1:]), "checkpoint": args.checkpoint,
              "arch": args.arch, "data": args.data, "epochs": args.epochs, "seeds": seeds,
              "val_samples": args.val_samples, "records": records, "rows": aggregate(records), "reused": reused,
              "env": env, "total_seconds": time.perf_counter() - started}
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    return run_comparison(compare, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
