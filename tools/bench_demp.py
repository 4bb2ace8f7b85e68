#!/usr/bin/env python
"""DemP on the bundled digits: sparsity sweep, accuracy at >= 50% sparsity, dynamic vs end-only
removal, and the per-step cost of DemP's bookkeeping. Writes ``bench_demp.json`` and ``bench_demp.md``.

Fixed model and budget: the ``demp demo`` recipe (small CNN, 32 + 64 conv channels = 96 hidden
neurons, 12 epochs of 44 steps, Adam lr 5e-2, Lasso on BatchNorm scales) with only ``demp.peak``
varied, for each seed.

1. **Sweep**: neuron sparsity and test accuracy for each peak lambda (mean and spread over seeds).
2. **Accuracy at >= 50% sparsity**: the smallest swept peak whose mean sparsity is >= 50%, its mean
   accuracy versus peak 0 (goal: within 1 point).
3. **Dynamic vs end-only removal**: at that peak, wall-clock of the whole training run when dead
   neurons are removed every ``interval`` steps versus ``final_only`` (death is measured at the same
   steps, removed once at the end). Runs alternate per seed so machine load hits both alike.
4. **Bookkeeping overhead**: time per optimizer step of plain training versus the same step plus
   ``DemP.penalty`` and ``DemP.after_step`` (live-only noise) with no measurement or removal in the
   timed window (goal: < 5%). Alternating blocks of steps on the same pre-loaded batches; medians.

    python tools/bench_demp.py --out runs/bench_demp --resnet   # about 5 minutes on 2 cores
    python tools/bench_demp.py --quick --out /tmp/bench_demp    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from exporters.env import cpu_model


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ---------------------------------------------------------------------------- training runs


def run_once(overrides: list[str], bundle: Any, out: Path) -> dict[str, Any]:
    from compressor.cli.train import demo_recipe
    from compressor.training.config import load_recipe
    from compressor.training.trainer import train

    recipe = load_recipe(demo_recipe().to_dict(), overrides)
    result = train(recipe, out, overwrite=True, progress=False, data=bundle, plots=False, save_model=False,
                   tensorboard=False)
    s = result.summary
    return {
        "overrides": overrides,
        "test_accuracy": s["test_accuracy"],
        "neurons_before": s["neurons_before"],
        "neurons_after": s["neurons_after"],
        "neuron_sparsity": s["neuron_sparsity"],
        "params_before": s["params_before"],
        "params_after": s["params_after"],
        "macs_after": s["macs_after"],
        "train_seconds": s["train_seconds"],
    }


def sweep(peaks: list[float], seeds: list[int], epochs: int | None, bundle: Any, work: Path) -> list[dict[str, Any]]:
    rows = []
    for peak in peaks:
        for seed in seeds:
            ov = [f"demp.peak={peak}", f"train.seed={seed}"] + ([f"train.epochs={epochs}"] if epochs else [])
            r = run_once(ov, bundle, work / "run")
            r.update(peak=peak, seed=seed)
            rows.append(r)
            print(f"  peak {peak:g} seed {seed}: sparsity {r['neuron_sparsity']:.3f}, accuracy "
                  f"{r['test_accuracy']:.4f}, "
                  f"{r['train_seconds']:.1f}s", flush=True)
    return rows


def summarize_sweep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for peak in sorted({r["peak"] for r in rows}):
        sel = [r for r in rows if r["peak"] == peak]
        sp, sp_sd = mean_sd([r["neuron_sparsity"] for r in sel])
        acc, acc_sd = mean_sd([r["test_accuracy"] for r in sel])
        par = statistics.fmean(r["params_after"] / r["params_before"] for r in sel)
        out.append({"peak": peak, "sparsity_mean": sp, "sparsity_sd": sp_sd, "accuracy_mean": acc,
                    "accuracy_sd": acc_sd, "param_ratio_mean": par,
                    "accuracy_per_seed": [r["test_accuracy"] for r in sel],
                    "sparsity_per_seed": [r["neuron_sparsity"] for r in sel]})
    return out


def dynamic_vs_final(peak: float, seeds: list[int], epochs: int | None, bundle: Any,
                     work: Path) -> list[dict[str, Any]]:
    rows = []
    for seed in seeds:
        base = [f"demp.peak={peak}", f"train.seed={seed}"] + ([f"train.epochs={epochs}"] if epochs else [])
        for mode in ("dynamic", "final_only"):
            r = run_once(base + (["demp.final_only=true"] if mode == "final_only" else []), bundle, work / "run")
            r.update(mode=mode, seed=seed, peak=peak)
            rows.append(r)
            print(f"  {mode:10s} seed {seed}: {r['train_seconds']:.1f}s, sparsity {r['neuron_sparsity']:.3f}, "
                  f"accuracy {r['test_accuracy']:.4f}", flush=True)
    return rows


# ---------------------------------------------------------------------------- step overhead


def step_overhead(arch: str, kwargs: dict, regularizer: str, target: str, bundle: Any, *, steps: int, blocks: int,
                  batch_size: int) -> dict[str, Any]:
    """Median time per optimizer step, plain vs plain + DemP.penalty + DemP.after_step (no removal)."""
    import torch
    from torch import nn

    from compressor.models import build_model, make_spec
    from compressor.training.methods.demp import DemP, DemPConfig

    torch.manual_seed(0)
    spec = make_spec(arch, num_classes=bundle.num_classes, input_shape=tuple(bundle.input_shape), **kwargs)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    batches = [b for _, b in zip(range(20), loader, strict=False)]
    death = torch.utils.data.DataLoader(torch.utils.data.Subset(bundle.train, range(256)), batch_size=128)

    def setup(with_demp: bool):
        model = build_model(spec)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        demp = None
        if with_demp:
            cfg = DemPConfig(regularizer=regularizer, target=target, peak=1e-3, noise=5e-5, interval=10**9)
            demp = DemP(model, cfg, example_inputs=batches[0][0][:2], death_loader=death, total_steps=10**6)
        model.train()
        return model, opt, demp

    crit = nn.CrossEntropyLoss()
    runs = {False: setup(False), True: setup(True)}
    counters = {False: 0, True: 0}

    def block(with_demp: bool) -> float:
        model, opt, demp = runs[with_demp]
        t0 = time.perf_counter()
        for i in range(steps):
            x, y = batches[i % len(batches)]
            step = counters[with_demp]
            loss = crit(model(x), y)
            if demp is not None:
                loss = loss + demp.penalty(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if demp is not None:
                demp.after_step(step, opt)
            counters[with_demp] += 1
        return (time.perf_counter() - t0) / steps * 1000

    block(False), block(True)  # warm-up
    plain, demp_ms = [], []
    for _ in range(blocks):
        plain.append(block(False))
        demp_ms.append(block(True))
    p, d = statistics.median(plain), statistics.median(demp_ms)
    return {"arch": arch, "kwargs": kwargs, "regularizer": regularizer, "target": target, "batch_size": batch_size,
            "steps_per_block": steps, "blocks": blocks, "plain_ms": p, "demp_ms": d, "overhead": d / p - 1,
            "plain_blocks_ms": plain, "demp_blocks_ms": demp_ms,
            "params": sum(q.numel() for q in runs[False][0].parameters()), "input_shape": list(bundle.input_shape)}


# ---------------------------------------------------------------------------- report


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# DemP on digits: sparsity, accuracy, dynamic removal, bookkeeping overhead",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}; machine: {m['cpu']} ({m['cores']} logical cores, torch threads {m['threads']}), "
        f"torch {m['torch']}, python {m['python']}",
        f"- model and budget: the `demp demo` recipe (small CNN, 96 hidden neurons, {res['epochs']} epochs), "
        f"seeds {res['seeds']}",
        "",
        "## 1. Sweep of the peak lambda",
        "",
        "| peak lambda | neuron sparsity (mean ± sd) | test accuracy (mean ± sd) | params after / before |",
        "|---|---|---|---|",
    ]
    for r in res["sweep_summary"]:
        lines.append(f"| {r['peak']:g} | {100 * r['sparsity_mean']:.1f}% ± {100 * r['sparsity_sd']:.1f} | "
                     f"{100 * r['accuracy_mean']:.2f}% ± {100 * r['accuracy_sd']:.2f} | {r['param_ratio_mean']:.3f} |")
    mono = res["sparsity_monotonic"]
    lines += ["", f"Sparsity rises with the peak: **{'yes' if mono else 'no'}** (mean over seeds, non-decreasing).", ""]
    a = res["accuracy_at_half"]
    lines += ["## 2. Accuracy where at least half of the neurons are gone", ""]
    if a:
        lines.append(f"Smallest swept peak with mean sparsity >= 50%: **{a['peak']:g}** "
                     f"({100 * a['sparsity']:.1f}% of neurons removed). Test accuracy {100 * a['accuracy']:.2f}% vs "
                     f"{100 * a['baseline_accuracy']:.2f}% at peak 0: **{a['delta_points']:+.2f} points** "
                     f"(goal: within 1 point: **{'met' if a['within_1_point'] else 'missed'}**). Per seed: "
                     + ", ".join(f"{100 * x:.2f}% vs {100 * y:.2f}%"
                                 for x, y in zip(a["per_seed"], a["baseline_per_seed"], strict=True)))
    else:
        lines.append("No swept peak reached 50% mean sparsity.")
    lines += ["", "## 3. Whole-run wall-clock: dynamic removal vs removal only at the end", ""]
    if res["dynamic_vs_final"]:
        lines += ["| seed | dynamic (s) | final_only (s) | speed-up | sparsity dyn / final | accuracy dyn / final |",
                  "|---|---|---|---|---|---|"]
        for seed in res["seeds"]:
            d = next(r for r in res["dynamic_vs_final"] if r["seed"] == seed and r["mode"] == "dynamic")
            f = next(r for r in res["dynamic_vs_final"] if r["seed"] == seed and r["mode"] == "final_only")
            lines.append(f"| {seed} | {d['train_seconds']:.1f} | {f['train_seconds']:.1f} | "
                         f"{f['train_seconds'] / d['train_seconds']:.2f}x | {100 * d['neuron_sparsity']:.1f}% / "
                         f"{100 * f['neuron_sparsity']:.1f}% | {100 * d['test_accuracy']:.2f}% / "
                         f"{100 * f['test_accuracy']:.2f}% |")
        lines += ["", "Mean speed-up of the whole run (final_only time / dynamic time): "
                      f"**{res['dynamic_speedup_mean']:.2f}x**.", ""]
    lines += ["## 4. Per-step cost of DemP's bookkeeping between removals", "",
              "| model | params | batch | plain step (ms) | + penalty + live-only noise (ms) | overhead |",
              "|---|---|---|---|---|---|"]
    for o in res["overhead"]:
        shape = "x".join(str(d) for d in o["input_shape"])
        lines.append(f"| {o['arch']} {o['kwargs'] or ''} ({o['regularizer']} on {o['target']}), input {shape} | "
                     f"{o['params']:,} | {o['batch_size']} | {o['plain_ms']:.3f} | {o['demp_ms']:.3f} | "
                     f"{100 * o['overhead']:+.1f}% |")
    lines += ["", "Goal: < 5% overhead.", ""]
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_demp", help="output directory for bench_demp.json/.md")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--peaks", default="0,0.01,0.03,0.1,0.3")
    p.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    p.add_argument("--overhead-steps", type=int, default=40)
    p.add_argument("--overhead-blocks", type=int, default=9)
    p.add_argument("--resnet", action="store_true", help="also time the overhead on ResNet-18 (about a minute more)")
    p.add_argument("--quick", action="store_true", help="1 seed, 2 peaks, 2 epochs, few overhead blocks (smoke test)")
    return p.parse_args(argv)


def _accuracy_at_half(summary: list[dict]) -> tuple[dict | None, dict | None]:
    """The first peak reaching 50% sparsity and its accuracy against the unregularized baseline."""
    base = next(r for r in summary if r["peak"] == 0.0)
    half = next((r for r in summary if r["peak"] > 0 and r["sparsity_mean"] >= 0.5), None)
    if half is None:
        return None, None
    delta = 100 * (half["accuracy_mean"] - base["accuracy_mean"])
    return half, {"peak": half["peak"], "sparsity": half["sparsity_mean"], "accuracy": half["accuracy_mean"],
                  "baseline_accuracy": base["accuracy_mean"], "delta_points": delta, "within_1_point": delta >= -1.0,
                  "per_seed": half["accuracy_per_seed"], "baseline_per_seed": base["accuracy_per_seed"]}


def _speedups(dvf: list[dict], seeds: list[int]) -> list[float]:
    """Per seed: training time of removal at the end only over that of dynamic removal."""
    speedups = []
    for seed in seeds:
        d = next(r for r in dvf if r["seed"] == seed and r["mode"] == "dynamic")
        f = next(r for r in dvf if r["seed"] == seed and r["mode"] == "final_only")
        speedups.append(f["train_seconds"] / d["train_seconds"])
    return speedups


def _overheads(args: argparse.Namespace, bundle: Any) -> list[dict]:
    """DemP's per-step bookkeeping overhead on the small models (and ResNet-18 with ``--resnet``)."""
    from compressor.data import load_data

    overhead = []
    cases = [("cnn", {}, "lasso", "norm_scale", bundle, args.overhead_steps, args.overhead_blocks),
             ("cnn", {}, "lasso", "weights", bundle, args.overhead_steps, args.overhead_blocks),
             ("mlp", {"widths": [256, 256]}, "lasso", "weights", bundle, args.overhead_steps, args.overhead_blocks)]
    if args.resnet and not args.quick:
        # A real network: ResNet-18 (CIFAR stem) on the digits upscaled to 32x32, few long steps.
        cases.append(("resnet18-cifar", {}, "lasso", "norm_scale", load_data("digits", input_size=32), 4, 3))
    for arch, kwargs, reg, target, data, steps, blocks in cases:
        o = step_overhead(arch, kwargs, reg, target, data, steps=steps, blocks=blocks, batch_size=32)
        overhead.append(o)
        print(f"  {arch} {reg}/{target}: plain {o['plain_ms']:.3f} ms, demp {o['demp_ms']:.3f} ms "
              f"({100 * o['overhead']:+.1f}%)", flush=True)
    return overhead


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from compressor.cli.train import demo_recipe
    from compressor.data import load_data

    seeds = [int(s) for s in args.seeds.split(",")]
    peaks = [float(s) for s in args.peaks.split(",")]
    epochs = args.epochs
    if args.quick:
        seeds, peaks, epochs = seeds[:1], [0.0, 0.1], 2
        args.overhead_blocks = 3
    if 0.0 not in peaks:
        peaks = [0.0] + peaks
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    bundle = load_data("digits")
    started = time.perf_counter()

    print("1-2. sweep of the peak lambda", flush=True)
    rows = sweep(peaks, seeds, epochs, bundle, work)
    summary = summarize_sweep(rows)
    means = [r["sparsity_mean"] for r in summary]
    monotonic = all(b >= a - 1e-9 for a, b in zip(means, means[1:], strict=False))
    half, acc_half = _accuracy_at_half(summary)

    print("3. dynamic removal vs final_only", flush=True)
    chosen = half["peak"] if half is not None else max(peaks)
    dvf = dynamic_vs_final(chosen, seeds, epochs, bundle, work)
    speedups = _speedups(dvf, seeds)

    print("4. per-step bookkeeping overhead", flush=True)
    overhead = _overheads(args, bundle)

    recipe = demo_recipe()
    res = {
        "schema": "demp.bench-demp/1",
        "command": " ".join(["python", "tools/bench_demp.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": __import__("os").cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "recipe": recipe.to_dict(), "epochs": epochs or recipe.train.epochs, "seeds": seeds, "peaks": peaks,
        "sweep": rows, "sweep_summary": summary, "sparsity_monotonic": monotonic, "accuracy_at_half": acc_half,
        "dynamic_vs_final": dvf, "dynamic_speedup_mean": statistics.fmean(speedups), "overhead": overhead,
        "seconds": time.perf_counter() - started,
    }
    from compressor.fileio import atomic_write_json, atomic_write_text

    atomic_write_json(out / "bench_demp.json", res)
    atomic_write_text(out / "bench_demp.md", markdown(res))
    print(markdown(res))
    print(f"wrote {out / 'bench_demp.json'} and {out / 'bench_demp.md'} ({res['seconds']:.0f}s)")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
