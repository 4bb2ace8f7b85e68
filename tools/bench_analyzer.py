"""Analyzer overhead and statistics-collection cost on real-size models (CPU).

Measures, for each model at 224x224 with N calibration samples:
- plain inference over the samples (eval, no_grad) vs statistics collection over the same samples
  (every consumer hooked, all four statistics), alternated in one run so machine noise hits both;
- the analyzer's own time: dependency graph + decision + removal (planted dead channels, so the
  removal really does work).

    python tools/bench_analyzer.py --models resnet50,vit_b_16 --samples 256 --out bench-analyzer/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

from exporters.env import cpu_model


def bench(name: str, samples: int, batch: int, repeats: int) -> dict:
    import torch
    import torchvision

    from compressor.activity import collect_activity
    from compressor.criteria import Dead
    from compressor.graph import DependencyAnalyzer
    from compressor.planting import plant_dead_channels

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=1000).eval()
    xs = [torch.randn(batch, 3, 224, 224) for _ in range(max(1, samples // batch))]

    def plain() -> None:
        with torch.no_grad():
            for x in xs:
                model(x)

    def stats() -> None:  # all four statistics (what `demp inspect` collects)
        collect_activity(model, xs, progress=False)

    def stats_dead() -> None:  # what `demp compress --criterion dead` collects
        collect_activity(model, xs, progress=False, fields=Dead.fields)

    plain()  # warm-up
    t_plain, t_stats, t_dead = [], [], []
    for _ in range(repeats):  # alternate so noise hits all three
        for run, times in ((plain, t_plain), (stats, t_stats), (stats_dead, t_dead)):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    analyzer = DependencyAnalyzer(model, xs[0][:1])
    graph_s = time.perf_counter() - t0
    plant_dead_channels(model, analyzer, fraction=0.5)
    st = collect_activity(model, xs[:1], layers=analyzer.consumer_names, progress=False, fields=("max_abs",))
    t0 = time.perf_counter()
    plan = analyzer.decide(st, Dead())
    analyzer.apply(plan, track_indices=False)
    decide_apply_s = time.perf_counter() - t0
    return {
        "model": name, "samples": len(xs) * batch, "batch": batch,
        "plain_inference_s": min(t_plain), "stats_collection_s": min(t_stats),
        "stats_over_plain": min(t_stats) / min(t_plain),
        "dead_stats_s": min(t_dead), "dead_stats_over_plain": min(t_dead) / min(t_plain),
        "graph_s": graph_s, "decide_apply_s": decide_apply_s, "analyzer_s": graph_s + decide_apply_s,
        "removed": plan.removed_channels,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,vit_b_16")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench-analyzer")
    args = ap.parse_args(argv)
    rows = [bench(m, args.samples, args.batch, args.repeats) for m in args.models.split(",")]
    meta = {"date": date.today().isoformat(), "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "command": "python tools/bench_analyzer.py " + " ".join(argv or sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_analyzer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"{meta['date']}, {meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}",
             f"`{meta['command']}`", "",
             "| model | samples | plain inference s | all statistics s (ratio) | max-abs only s (ratio) | graph s | "
             "decide+apply s | analyzer s | removed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['samples']} | {r['plain_inference_s']:.2f} | {r['stats_collection_s']:.2f} "
                     f"({r['stats_over_plain']:.3f}) | {r['dead_stats_s']:.2f} ({r['dead_stats_over_plain']:.3f}) | "
                     f"{r['graph_s']:.2f} | {r['decide_apply_s']:.2f} | "
                     f"{r['analyzer_s']:.2f} | {r['removed']} |")
    (out / "bench_analyzer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
