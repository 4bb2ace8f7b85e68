#!/usr/bin/env python
"""Synaptic Stripping versus plain training on ReLU MLPs (Whitaker & Whitley 2023, Table I trend).

For every depth x width (hidden layers x neurons per layer) and seed, the same recipe is trained
twice with ``compressor.training.train`` — ``method: stripping`` and ``method: none`` — on
scikit-learn's bundled 8x8 digits (no download), Adam at a learning rate high enough that neurons
die, the same epochs, LR schedule and seed. Reported per configuration:

- **#D**: hidden neurons dead at the end, measured the same way for both runs by this script: a
  neuron is dead when its ReLU output is exactly 0 on every sample of the *whole* training split
  (1437 samples; the library's own measurement uses ``stripping.samples`` held-aside samples).
  The stripping run uses ``stripping.remove_dead=false`` so the dead neurons stay in the model and
  are counted (the removal is lossless, so accuracy is unaffected).
- **%A**: active parameters after the paper's wording ("subtracting the number of parameters
  connected to all dead neurons and the number of parameters pruned from the total number of hidden
  parameters"): over the weights connected to a hidden neuron, incoming and outgoing (biases
  excluded), the share connected to no dead neuron and not stripped. Not the paper's Table I scale
  (there %A = (1 - #D/(L*N))², hidden-to-hidden weights only under a uniform spread of dead units;
  see the module docstring of :mod:`compressor.training.methods.stripping`). Stripped weights are
  exactly 0 in the trained model (the masks are re-applied after every step); for the plain run %A
  comes from the dead neurons alone.
- test accuracy (after the last epoch) and training wall-clock (``train_seconds``).

Writes ``bench_stripping.json`` and ``bench_stripping.md`` into ``--out``.

    python tools/bench_stripping.py --out runs/bench_stripping          # 3 depths x 3 widths, ~15 min on 2 cores
    python tools/bench_stripping.py --quick --out /tmp/bench_stripping  # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

RECIPE = "samples/recipes/stripping-mlp-digits.yaml"
METHODS = ("none", "stripping")


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 2,4,8)") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers (e.g. 2,4,8)")
    return values


# ---------------------------------------------------------------------------- measurement


def hidden_linears(model: nn.Module) -> list[tuple[nn.Linear, nn.Module]]:
    """(hidden Linear, the activation after it) pairs of a ``compressor.models.MLP``."""
    layers = list(model.features)
    return [(layers[i], layers[i + 1]) for i in range(0, len(layers) - 1, 2) if isinstance(layers[i], nn.Linear)]


@torch.no_grad()
def dead_masks(model: nn.Module, dataset: Any, batch_size: int = 256) -> list[torch.Tensor]:
    """Per hidden layer, True where the neuron's activation is exactly 0 on every sample of ``dataset``."""
    pairs = hidden_linears(model)
    peak = [torch.zeros(lin.out_features) for lin, _ in pairs]
    hooks = []
    for i, (_, act) in enumerate(pairs):
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor, i: int = i) -> None:
            peak[i] = torch.maximum(peak[i], out.detach().abs().flatten(1).amax(0).cpu())
        hooks.append(act.register_forward_hook(hook))
    model.eval()
    try:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for batch in loader:
            model(batch[0])
    finally:
        for h in hooks:
            h.remove()
    return [p == 0 for p in peak]


def active_fraction(model: nn.Module, dead: list[torch.Tensor]) -> tuple[float, int]:
    """(%A as a fraction, stripped weights), by the library's definition
    (:func:`compressor.training.methods.stripping.active_parameter_fraction`): of the weights connected
    to a hidden neuron (its incoming row and its outgoing column in the next layer, the classifier
    included), the share not connected to a dead neuron and not exactly 0 on a hidden row (stripped)."""
    from compressor.training.methods.stripping import active_parameter_fraction

    linears = [lin for lin, _ in hidden_linears(model)] + [model.classifier]
    hidden, attached, stripped = {}, {}, {}
    for i, lin in enumerate(linears):
        w = lin.weight.detach()
        hidden[i] = torch.ones(w.shape, dtype=torch.bool)
        attached[i] = torch.zeros(w.shape, dtype=torch.bool)
        if i < len(dead):  # a hidden layer: the rows of its dead neurons, its stripped (zeroed) weights
            attached[i] |= dead[i].view(-1, 1)
            stripped[i] = w == 0
        if i > 0:  # the columns that read the previous layer's dead neurons
            attached[i] |= dead[i - 1].view(1, -1)
    frac = active_parameter_fraction(hidden, attached, stripped)
    return frac, int(sum(int(m.sum()) for m in stripped.values()))


# ---------------------------------------------------------------------------- runs


def run_one(method: str, depth: int, width: int, seed: int, args: argparse.Namespace, bundle: Any,
            work: Path) -> dict[str, Any]:
    from compressor.training.config import load_recipe
    from compressor.training.trainer import train

    overrides = [
        f"method={method}", f"model.kwargs={{widths: [{', '.join([str(width)] * depth)}]}}",
        f"train.epochs={args.epochs}", f"train.lr={args.lr}", f"train.seed={seed}",
        "stripping.remove_dead=false", "export.onnx=false", "export.latency=false",
        # train on the whole training split, as in the measurements recorded in BENCHMARKS.md (#D is
        # counted by this script on all of it); the recipe itself holds out a validation split
        "data.val_samples=0",
    ]
    recipe = load_recipe(args.recipe, overrides)
    t0 = time.perf_counter()
    result = train(recipe, work / f"{method}-d{depth}-w{width}-s{seed}", overwrite=True, progress=False, data=bundle,
                   plots=False, save_model=False, tensorboard=False)
    wall = time.perf_counter() - t0
    model = result.model.cpu().eval()
    dead = dead_masks(model, bundle.train)
    frac, stripped = active_fraction(model, dead)
    s = result.summary
    neurons = depth * width
    if method == "none" and stripped:
        print(f"  note: plain run has {stripped} weights exactly 0; %A counts them as inactive", flush=True)
    return {
        "method": method, "depth": depth, "width": width, "seed": seed,
        "dead_neurons": int(sum(int(d.sum()) for d in dead)), "hidden_neurons": neurons,
        "dead_per_layer": [int(d.sum()) for d in dead],
        "active_params": frac, "stripped_weights": stripped,
        "test_accuracy": s.get("test_accuracy"), "train_seconds": s.get("train_seconds"), "wall_seconds": wall,
        "library_dead_neurons": s.get("dead_neurons"), "library_active_params": s.get("active_params"),
        "overrides": overrides,
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (depth, width, method)."""
    keys = sorted({(r["depth"], r["width"], r["method"]) for r in rows},
                  key=lambda k: (k[0], k[1], METHODS.index(k[2])))
    out = []
    for depth, width, method in keys:
        group = [r for r in rows if (r["depth"], r["width"], r["method"]) == (depth, width, method)]
        agg: dict[str, Any] = {"depth": depth, "width": width, "method": method, "seeds": len(group),
                               "hidden_neurons": group[0]["hidden_neurons"]}
        for k in ("dead_neurons", "active_params", "test_accuracy", "train_seconds"):
            vals = [float(r[k]) for r in group if r[k] is not None]
            agg[k] = statistics.fmean(vals) if vals else None
            agg[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


def trend(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: does stripping give fewer #D, more %A, accuracy >= plain?"""
    out = []
    by = {(s["depth"], s["width"], s["method"]): s for s in summary}
    for (depth, width, method), s in by.items():
        if method != "stripping" or (depth, width, "none") not in by:
            continue
        n = by[(depth, width, "none")]
        out.append({
            "depth": depth, "width": width,
            "fewer_dead": s["dead_neurons"] < n["dead_neurons"],
            "more_active": s["active_params"] > n["active_params"],
            "accuracy_not_worse": s["test_accuracy"] >= n["test_accuracy"],
            "accuracy_delta": s["test_accuracy"] - n["test_accuracy"],
        })
    return out


def markdown(meta: dict[str, Any], summary: list[dict[str, Any]], trends: list[dict[str, Any]]) -> str:
    lines = [
        "# Synaptic Stripping vs plain training (ReLU MLPs, digits)", "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s)",
        f"- recipe: `{meta['recipe']}` with Adam lr {meta['lr']}, {meta['epochs']} epochs, cosine LR, batch 32, "
        f"seeds {meta['seeds']}; stripping fraction 0.1 (mode fraction) after every epoch",
        "- #D: hidden neurons whose ReLU output is exactly 0 on the whole training split, measured by the "
        "script on both final models; %A: of the weights connected to a hidden neuron (incoming and outgoing, "
        "biases excluded), those neither stripped nor connected to a dead neuron; accuracy on the test split; "
        "time = training wall-clock.",
        "",
        "| depth x width | neurons | #D none | #D strip | %A none | %A strip | acc none | acc strip | "
        "s none | s strip |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(s["depth"], s["width"], s["method"]): s for s in summary}
    for depth, width in sorted({(s["depth"], s["width"]) for s in summary}):
        n, st = by.get((depth, width, "none")), by.get((depth, width, "stripping"))

        def f(row: dict[str, Any] | None, key: str, fmt: str) -> str:
            if row is None or row[key] is None:
                return "-"
            v = row[key] * (100 if key in ("active_params", "test_accuracy") else 1)
            sd = row[key + "_sd"] * (100 if key in ("active_params", "test_accuracy") else 1)
            return format(v, fmt) + (f" ± {format(sd, fmt)}" if row["seeds"] > 1 else "")

        neurons = (n or st)["hidden_neurons"]
        lines.append(f"| {depth} x {width} | {neurons} | {f(n, 'dead_neurons', '.1f')} | "
                     f"{f(st, 'dead_neurons', '.1f')} | "
                     f"{f(n, 'active_params', '.1f')}% | {f(st, 'active_params', '.1f')}% | "
                     f"{f(n, 'test_accuracy', '.2f')}% | {f(st, 'test_accuracy', '.2f')}% | "
                     f"{f(n, 'train_seconds', '.1f')} | {f(st, 'train_seconds', '.1f')} |")
    if trends:
        ok = [t for t in trends if t["fewer_dead"] and t["more_active"] and t["accuracy_not_worse"]]
        lines += ["", f"Paper trend (fewer #D, more %A, accuracy equal or better) holds in {len(ok)} of "
                  f"{len(trends)} configurations."]
        for t in trends:
            missing = [name for name, flag in (("#D not lower", t["fewer_dead"]), ("%A not higher", t["more_active"]),
                                               ("accuracy lower", t["accuracy_not_worse"])) if not flag]
            if missing:
                lines.append(f"- {t['depth']} x {t['width']}: {', '.join(missing)} "
                             f"(accuracy delta {100 * t['accuracy_delta']:+.2f} points)")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="directory for bench_stripping.json / .md (created)")
    p.add_argument("--depths", type=parse_ints, default=[2, 4, 8],
                   help="hidden layers, comma-separated (default 2,4,8)")
    p.add_argument("--widths", type=parse_ints, default=[256, 512, 1024],
                   help="neurons per hidden layer (default 256,512,1024)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs for every run (default 8)")
    p.add_argument("--lr", type=float, default=3e-2, help="Adam learning rate for every run (default 3e-2)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--recipe", default=RECIPE, help=f"base recipe (default {RECIPE})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: depth 2, width 32, 2 epochs, one seed")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r} is not a comma-separated list of integers (e.g. 0,1)")
    if not args.seeds:
        p.error("--seeds is empty; give at least one seed (e.g. 0)")
    if args.epochs < 1:
        p.error(f"--epochs {args.epochs} is invalid: expected >= 1")
    if args.quick:
        args.depths, args.widths, args.epochs, args.seeds = [2], [32], 2, args.seeds[:1]

    torch.set_num_threads(args.threads)
    from compressor.data import load_data
    from exporters.env import cpu_model

    bundle = load_data("digits")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "runs"
    rows = []
    for depth in args.depths:
        for width in args.widths:
            for seed in args.seeds:
                for method in METHODS:
                    r = run_one(method, depth, width, seed, args, bundle, work)
                    rows.append(r)
                    print(f"{depth} x {width} seed {seed} {method:9s}: #D {r['dead_neurons']}/{r['hidden_neurons']}, "
                          f"%A {100 * r['active_params']:.1f}, acc {100 * r['test_accuracy']:.2f}, "
                          f"{r['train_seconds']:.1f}s", flush=True)
    summary = summarize(rows)
    trends = trend(summary)
    meta = {
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        ([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {torch.get_num_threads()} torch thread(s), {platform.system()}",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "recipe": args.recipe,
        "lr": args.lr, "epochs": args.epochs, "seeds": args.seeds, "depths": args.depths, "widths": args.widths,
        "quick": args.quick,
    }
    from compressor.fileio import atomic_write_json, atomic_write_text

    atomic_write_json(args.out / "bench_stripping.json",
                      {"meta": meta, "runs": rows, "summary": summary, "trend": trends})
    md = markdown(meta, summary, trends)
    atomic_write_text(args.out / "bench_stripping.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
