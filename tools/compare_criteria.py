#!/usr/bin/env python
"""Compare DemP with other neuron-pruning criteria at matched neuron sparsity (docs/training.md, importance baselines).

    python tools/compare_criteria.py --data digits --sparsity 0.5,0.7 --seeds 3 --out cmp/ \\
        [--recipe R.yaml] [--model ARCH] [--epochs N] [--methods demp,demp-target,baseline:taylor,...]
        [--macs 0.3] [--first-seed K] [--resume] [--threads 1] [--quick]

Every run uses the same training recipe (the ``train``/``data`` sections of
``samples/recipes/demp-cnn-digits.yaml``: Adam, cosine LR, ``--epochs`` epochs), so every method gets
the same training budget; only ``method`` and its section differ. How sparsities are matched:

- ``dnr``: ``dnr.target_sparsity = S``, pruning every ``max(1, epochs // 4)`` epochs up to
  ``dnr.stop_epoch = max(1, epochs // 2)``, so that, like the baselines, the second half of the
  budget recovers from the last pruning.
- ``baseline:<importance>``: ``baseline.target_sparsity = S``, one-shot at the end of epoch
  ``max(1, epochs // 2)``; the remaining epochs fine-tune.
- ``demp`` and ``dormant`` have no sparsity knob: a sweep of ``demp.peak`` (``--demp-peaks``) or
  ``dormant.tau`` (``--dormant-taus``) is run with the first seed, and for each target the sweep value
  whose reached neuron sparsity is closest to S is run with the remaining seeds. The table reports the
  sparsity actually reached (mean over seeds), never the target.
- ``stripping`` has no knob either: it is run once per seed and reported at the sparsity it reaches
  (the row's target is ``-``). On models other than ``mlp`` it strips convolution channels too
  (``stripping.conv: true``), since the paper's Linear-only rule finds no hidden unit in a CNN.
- ``demp-target``: DemP's budget mode, ``demp.target_sparsity = S`` (no sweep: the target is the
  knob); with ``--macs R1,R2`` also ``demp.target_macs = R`` rows, the MAC-matched points.
- ``dense``: the same recipe with ``method: none`` (one row, the reference of the MACs plot).

``--recipe`` picks the base recipe whose data/train/demp sections every run uses (default the digits
CNN's). Every row also reports the training cost: training MACs over dense
training's (``train_macs_ratio``) and the run's wall-clock.

``--lr`` replaces the base recipe's learning rate for every method (same budget, same optimizer).

Each finished run is recorded in ``--out/records/`` with its whole recipe; ``--resume`` keeps ``--out``
and reuses every recorded run whose recipe is unchanged, so an interrupted grid continues where it
stopped and methods can be added in later invocations (one table and plot for all). ``--threads 1``
lets two grids share a 2-core machine (the default is up to 2). To split one grid's seeds over two
processes, run ``--seeds 1`` (seed 0) and ``--first-seed 1 --seeds 1`` (seed 1) into two folders,
copy both ``records/`` folders into one and run ``--seeds 2 --resume`` there: every run is reused and
the table and plots hold both seeds.

Outputs in ``--out``: ``results.json`` (every run), ``results.md`` (accuracy mean ± std, neuron
sparsity, weight sparsity = 1 - non-zero parameters / dense parameters, parameters, MACs, wall-clock)
``accuracy_vs_sparsity.png`` and ``accuracy_vs_macs.png`` (the dense model marked). ``--quick`` is a smoke run
(1 epoch, the first target, 2-point sweeps).
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
import yaml
from tool_common import mean_sd, run_comparison

ROOT = Path(__file__).resolve().parents[1]
BASE_RECIPE = ROOT / "samples" / "recipes" / "demp-cnn-digits.yaml"
#: A row whose mean reached sparsity is further than this from its target is marked "(not reached)".
MATCH_TOLERANCE = 0.1
ALL_METHODS = ("dense", "demp", "demp-target", "stripping", "dnr", "dormant", "baseline:magnitude-l1",
               "baseline:bn-scale", "baseline:taylor", "baseline:random")
#: DemP's budget options: a fixed-lambda run drops them, a target run sets one.
BUDGET_KEYS = ("target_sparsity", "target_macs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="dataset spec (default digits)")
    p.add_argument("--model", default=None, help="architecture (default: the base recipe's model section, with "
                   "its kwargs; a name here replaces it without kwargs)")
    p.add_argument("--recipe", default=str(BASE_RECIPE), help="base recipe: its data/train/demp sections (default: "
                   "the digits CNN's)")
    p.add_argument("--macs", default="", help="comma-separated MAC ratios for demp-target's target_macs rows")
    p.add_argument("--sparsity", default="0.5,0.7", help="comma-separated target neuron sparsities")
    p.add_argument("--seeds", type=int, default=3, help="seeds per point")
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds FIRST .. FIRST+SEEDS-1 (split a grid's seeds over processes, then merge with "
                        "--resume)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of every run (default: the base recipe's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of every run (default: the base recipe's)")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated methods")
    p.add_argument("--demp-peaks", default="0.003,0.01,0.03,0.1,0.3", help="demp.peak sweep")
    p.add_argument("--dormant-taus", default="0.2,0.3,0.45,0.6", help="dormant.tau sweep")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--resume", action="store_true", help="keep --out and reuse every run already recorded there "
                   "(same method, setting, seed and base recipe): finish an interrupted grid, or add methods to it")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: up to 2); 1 when "
                   "two grids share a 2-core machine")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, first target, 2-point sweeps")
    return p.parse_args(argv)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: --{what} must be comma-separated numbers, got {text!r}") from None


class Runner:
    """Runs one recipe per (method, setting, seed), caching by key."""

    def __init__(self, args: argparse.Namespace, out: Path, bundle: Any) -> None:
        base = yaml.safe_load(Path(args.recipe).read_text(encoding="utf-8"))
        model = {"arch": args.model} if args.model else dict(base["model"])
        self.model_name = str(model["arch"]) + "".join(f" {k}={v}" for k, v in model.get("kwargs", {}).items())
        self.base = {"model": model, "data": {**base["data"], "spec": args.data},
                     "train": dict(base["train"]), "demp": dict(base["demp"]), "export": {"onnx": False}}
        if args.epochs is not None:
            self.base["train"]["epochs"] = int(args.epochs)
        if args.lr is not None:
            self.base["train"]["lr"] = float(args.lr)
        self.conv = model["arch"] != "mlp"
        self.epochs = int(self.base["train"]["epochs"])
        self.out, self.bundle = out, bundle
        self.runs: list[dict[str, Any]] = []
        self.reused = 0  # runs taken from records of earlier invocations (--resume)
        self._cache: dict[str, dict[str, Any]] = {}

    def run(self, method: str, section: dict[str, Any], seed: int, label: str) -> dict[str, Any]:
        key = json.dumps([method, section, seed], sort_keys=True)
        if key in self._cache:
            return self._cache[key]
        from compressor.training.config import load_recipe
        from compressor.training.trainer import train

        name, _, importance = method.partition(":")
        name = {"demp-target": "demp", "dense": "none"}.get(name, name)
        raw = json.loads(json.dumps(self.base))
        raw["method"] = name
        raw["train"]["seed"] = seed
        sec = dict(section)
        if name == "baseline":
            sec["importance"] = importance
        if name == "demp":  # fixed lambda unless the row names a budget
            raw["demp"] = {k: v for k, v in raw["demp"].items() if k not in BUDGET_KEYS}
        else:
            raw.pop("demp")
        if name != "none":
            raw[name] = {**raw.get(name, {}), **sec}
        run_name = f"{method.replace(':', '-')}-{label}-s{seed}"
        run_dir, record = self.out / "runs" / run_name, self.out / "records" / f"{run_name}.json"
        full_key = json.dumps(raw, sort_keys=True)  # the whole recipe of this run: any change runs it again
        if record.is_file():  # --resume: a run finished earlier with the same inputs is not run again
            saved = json.loads(record.read_text(encoding="utf-8"))
            if saved.get("key") == full_key:
                print(f"  {method:24s} {label:14s} seed {seed}: reused {record}", flush=True)
                self._cache[key] = saved["record"]
                self.runs.append(saved["record"])
                self.reused += 1
                return saved["record"]
        t0 = time.perf_counter()
        result = train(load_recipe(raw), run_dir, progress=False, plots=False, tensorboard=False,
                       save_model=False, data=self.bundle, overwrite=True)
        wall = time.perf_counter() - t0
        s = result.summary
        nonzero = sum(int((p != 0).sum()) for p in result.model.parameters())
        rec = {"method": method, "setting": section, "seed": seed, "label": label,
               "test_accuracy": s["test_accuracy"], "neuron_sparsity": s["neuron_sparsity"] or 0.0,
               "weight_sparsity": 1 - nonzero / s["params_before"], "params": s["params_after"],
               "params_before": s["params_before"], "macs": s["macs_after"], "macs_before": s["macs_before"],
               "train_macs_ratio": s.get("train_macs_ratio"), "wall_s": wall}
        print(f"  {method:24s} {label:14s} seed {seed}: acc {100 * rec['test_accuracy']:.2f}%  "
              f"neuron sparsity {100 * rec['neuron_sparsity']:.1f}%  ({wall:.1f}s)", flush=True)
        from compressor.fileio import atomic_write_json

        atomic_write_json(record, {"key": full_key, "record": rec})
        self._cache[key] = rec
        self.runs.append(rec)
        return rec


def _points(method: str, runner: Runner, targets: list[float], mac_targets: list[float],
            knobs: dict[str, list[float]], first_seed: int) -> list[tuple[float | None, dict[str, Any], str, str]]:
    """The settings a method is run at, as (target, recipe section, label, how it is matched); DemP and
    dormant pruning sweep their knob with the first seed and take the value closest to each target."""
    ep = runner.epochs
    points: list[tuple[float | None, dict[str, Any], str, str]] = []  # (target, section, label, matching)
    if method == "dense":
        points.append((None, {}, "dense", "no pruning"))
    elif method == "demp-target":
        points += [(t, {"target_sparsity": t}, f"S{t:g}", "budget: target_sparsity") for t in targets]
        points += [(None, {"target_macs": r}, f"M{r:g}", f"budget: target_macs={r:g}") for r in mac_targets]
    elif method == "stripping":
        points.append((None, {"conv": runner.conv}, "reached", "no knob: sparsity reached"))
    elif method == "dnr":
        points += [(t, {"target_sparsity": t, "interval_epochs": max(1, ep // 4), "stop_epoch": max(1, ep // 2)},
                    f"S{t:g}", "target_sparsity") for t in targets]
    elif method.startswith("baseline:"):
        points += [(t, {"target_sparsity": t, "at_epoch": max(1, ep // 2)}, f"S{t:g}", "target_sparsity")
                   for t in targets]
    else:  # demp / dormant: sweep with the first seed, pick the closest per target
        knob = "peak" if method == "demp" else "tau"
        sweep = [(v, runner.run(method, {knob: v}, first_seed, f"{knob}{v:g}")) for v in knobs[knob]]
        for t in targets:
            v, _ = min(sweep, key=lambda vr: (abs(vr[1]["neuron_sparsity"] - t), vr[0]))
            points.append((t, {knob: v}, f"{knob}{v:g}", f"sweep of {knob}: closest to S={t:g}"))
    return points


def compare(args: argparse.Namespace) -> dict[str, Any]:
    from compressor.data import load_data
    from compressor.fileio import atomic_write_json, atomic_write_text, check_output_dir, prepare_output_dir

    targets = _floats(args.sparsity, "sparsity")
    peaks, taus = _floats(args.demp_peaks, "demp-peaks"), _floats(args.dormant_taus, "dormant-taus")
    mac_targets = _floats(args.macs, "macs") if args.macs.strip() else []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if any(not 0 < t < 1 for t in targets) or args.seeds < 1 or args.first_seed < 0:
        raise SystemExit("error: --sparsity values must be in (0, 1), --seeds >= 1 and --first-seed >= 0")
    if args.quick:
        targets, peaks, taus = targets[:1], peaks[-2:], taus[-2:]
        args.epochs = 1 if args.epochs is None else args.epochs
    outputs = ("runs", "records", "results.json", "results.md", "accuracy_vs_sparsity.png", "accuracy_vs_macs.png")
    if args.resume and Path(args.out).is_dir():
        out = check_output_dir(args.out, overwrite=True, outputs=outputs)  # refuses a folder demp did not write
    else:
        out = prepare_output_dir(args.out, overwrite=args.overwrite, outputs=outputs)
    torch.set_num_threads(args.threads if args.threads else max(1, min(2, torch.get_num_threads())))
    runner = Runner(args, out, load_data(args.data))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    ep = runner.epochs
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for method in methods:
        print(f"{method}:", flush=True)
        points = _points(method, runner, targets, mac_targets, {"peak": peaks, "tau": taus}, seeds[0])
        for target, section, label, matching in points:
            recs = [runner.run(method, section, s, label) for s in seeds]
            rows.append(_aggregate(method, target, section, matching, recs))
    total = time.perf_counter() - started
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
           "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    result = {"command": "python tools/compare_criteria.py " + " ".join(sys.argv[1:]),
              "data": args.data, "model": runner.model_name, "recipe": str(args.recipe), "epochs": ep,
              "lr": runner.base["train"]["lr"], "seeds": seeds, "targets": targets,
              "rows": rows, "runs": runner.runs, "reused": runner.reused, "env": env, "total_seconds": total}
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", markdown(result))
    plot(result, out / "accuracy_vs_sparsity.png")
    plot(result, out / "accuracy_vs_macs.png", x="macs")
    return result


def _aggregate(method: str, target: float | None, section: dict[str, Any], matching: str,
               recs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method, "target": target, "setting": section, "matching": matching,
                           "n": len(recs)}
    for k in ("test_accuracy", "neuron_sparsity", "weight_sparsity", "params", "macs", "wall_s", "train_macs_ratio"):
        values = [float(r[k]) for r in recs if r.get(k) is not None]
        row[k], row[k + "_std"] = mean_sd(values) if values else (None, None)
    row["params_before"], row["macs_before"] = recs[0]["params_before"], recs[0]["macs_before"]
    return row


def _time_line(result: dict[str, Any]) -> str:
    """How long the grid took: every run's training, and this invocation (which may have reused runs)."""
    runs, reused = result["runs"], result.get("reused", 0)
    training = sum(r["wall_s"] for r in runs) / 60
    line = f"{len(runs)} runs, {training:.1f} min of training in all"
    if reused:
        line += f" ({reused} reused from earlier invocations, --resume)"
    return line + f"; this invocation {result['total_seconds'] / 60:.1f} min"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Command: `{result['command']}`  ",
             f"Data {result['data']}, model {result['model']}, {result['epochs']} epochs per run at lr "
             f"{result.get('lr', '?')}, seeds "
             f"{result['seeds']}; {result['env']['date']}, {result['env']['platform']}, torch "
             f"{result['env']['torch']}, "
             f"{result['env']['threads']} threads; {_time_line(result)}.", "",
             "| method | target S | setting | accuracy (%) | neuron sparsity (%) | weight sparsity (%) | params | MACs "
             "| training MACs (x dense) | wall-clock (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        setting = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["setting"].items()
                            if k != "importance") or "-"
        target = "-" if r["target"] is None else format(r["target"], "g")
        if r["target"] is not None and abs(r["neuron_sparsity"] - r["target"]) > MATCH_TOLERANCE:
            target += " (not reached)"
        lines.append(
            f"| {r['method']} | {target} | {setting} | "
            f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f} | "
            f"{100 * r['neuron_sparsity']:.1f} ± {100 * r['neuron_sparsity_std']:.1f} | "
            f"{100 * r['weight_sparsity']:.1f} | {r['params']:.0f} / {r['params_before']} | "
            f"{r['macs']:.0f} / {r['macs_before']} | "
            f"{'-' if r.get('train_macs_ratio') is None else format(r['train_macs_ratio'], '.2f')} | "
            f"{r['wall_s']:.1f} |")
    lines += ["", "Matching: dnr and baselines set the target sparsity; demp (demp.peak) and dormant (dormant.tau) "
              "take the sweep value (first seed) whose reached sparsity is closest to the target; stripping "
              "reports what it reaches. Sparsities shown are reached, not targets; \"(not reached)\" marks a "
              f"row whose mean sparsity is more than {100 * MATCH_TOLERANCE:g} points from its target (no "
              "sweep value got there: compare it with care)."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path, x: str = "neuron_sparsity") -> None:
    """Accuracy against neuron sparsity (%) or, with ``x="macs"``, against MACs per sample (dense marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressor.fileio import atomic_write_with

    scale = 100.0 if x == "neuron_sparsity" else 1.0
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["method"] == method), key=lambda r: r[x])
        style = {"marker": "*", "markersize": 14, "linestyle": "none", "color": "black"} if method == "dense" else \
            {"marker": "o"}
        ax.errorbar([scale * r[x] for r in rows], [100 * r["test_accuracy"] for r in rows],
                    xerr=[scale * r[x + "_std"] for r in rows],
                    yerr=[100 * r["test_accuracy_std"] for r in rows], capsize=3, label=method, **style)
    ax.set_xlabel("neuron sparsity (%)" if x == "neuron_sparsity" else "MACs per sample")
    ax.set_ylabel("test accuracy (%)")
    data = str(result["data"]).split(":")[0]  # the kind, not the local path
    ax.set_title(f"{result['model']} on {data}, {result['epochs']} epochs, {len(result['seeds'])} seed(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return run_comparison(compare, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
