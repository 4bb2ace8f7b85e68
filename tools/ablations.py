#!/usr/bin/env python
"""The DemP and DNR papers' ablations, measured: one study per ``--study``, each setting run with every
seed, reported as mean ± sd of test accuracy and neuron sparsity (``summary["neuron_sparsity"]``, the
removed share of the hidden neurons) with the number of runs, and a verdict computed from those numbers
and their seed spread: "holds", "does not hold" or "inconclusive (within seed spread)". No timings.

Studies (papers as README's "Methods" numbers them: 000 "A Demon at Work" (the first version of
arXiv:2403.07688), 001 "DNR-Pruning" (anonymous submission, no arXiv id), 002 "Maxwell's Demon at Work"
(arXiv:2403.07688)):

- ``noise``: peak sigma of DemP's asymmetric noise (``demp.noise``, 0 included) at a fixed lambda.
  002 Fig. 2 (right): noise on live neurons only raises the dead-neuron count (at equal accuracy).
- ``regularizer``: L2 vs CDG-L2 vs Lasso on the weights and on the BatchNorm scales of the small CNN
  (``cnn`` has BN), at matched lambdas. 000 Fig. 10 (left): with BN and Adam, L2 kills more than
  CDG-L2; 002 Figs. 4-5 compare the (gamma) regularizers.
- ``optimizer``: Adam vs SGD with momentum 0.9 at matched lambda (L2 and CDG-L2 on the weights).
  000 §3 "Optimizer" and Fig. 10: Adam kills more; with momentum CDG-L2 kills more than L2 (Fig. 10 right).
- ``decoupled``: L2 in the loss under Adam (DemP) vs AdamW decay (``demp.regularizer=none``: DemP still
  removes the dead). Matched: ``train.weight_decay = 2·lambda`` (lambda·Σp² has gradient 2·lambda·p), all
  parameters in both arms (``demp.target=all``), constant lambda, no noise. 000 §4 "Weight Decay".
- ``death_samples``: death measured on 1024 training samples vs the whole training split.
  000 §4 "Dead Criterion Relaxation", appendix H.2, Fig. 14. The 1024-sample runs are audited: before
  every removal the removed neurons are measured on the whole training split too, counting any that
  were alive there (such a removal is not lossless on the training set).
- ``dnr_interval``: DNR-Pruning's pruning interval (``dnr.interval_epochs``) at fixed
  ``dnr.target_sparsity``, the target reached at the same epoch for every interval. 001 §4.4,
  Table 9 / Fig. 8: for neuron pruning, longer intervals give slightly higher accuracy.

Data: the bundled digits (``cnn``, 96 neurons); ``decoupled`` and ``death_samples`` train an MLP 256-256 on
real MNIST with ``--mnist ROOT`` (the first ``--mnist-train`` images, 3 epochs, Adam lr 3e-3; the full
test set), else on digits. ``mnist:ROOT`` reads the four idx files, gzipped or not, from ``ROOT`` or
``ROOT/MNIST/raw`` (never downloads), so ``--mnist ../shared/data/mnist`` works as it is.

Commands (each study a few minutes on 2 shared cores; results in ``OUT/<study>/ablations.{json,md}``)::

    python tools/ablations.py --study noise --seeds 0,1,2 --out /tmp/ablations
    python tools/ablations.py --study regularizer,optimizer --seeds 0,1 --out /tmp/ablations
    python tools/ablations.py --study decoupled,death_samples --seeds 0,1,2 --mnist ../shared/data/mnist \\
        --out /tmp/ablations
    python tools/ablations.py --study dnr_interval --seeds 0,1 --out /tmp/ablations
    python tools/ablations.py --study noise --quick --out /tmp/abl-smoke   # smoke run (seconds)
    python tools/ablations.py --study regularizer --rescore --out /tmp/ablations   # verdicts again
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_verdicts import combine, grid, mean_sd, pair, pairs_over, values  # noqa: E402

SGD_LR = 0.1  #: SGD + momentum 0.9 needs a larger lr than Adam's 5e-2 (a pilot: 99.4% at peak 0, as Adam)


@dataclasses.dataclass
class Setting:
    """One point of a study: a label, the factors it varies and the recipe overrides that set them."""
    label: str
    factors: dict[str, Any]
    overrides: list[str]


@dataclasses.dataclass
class Study:
    """A study: its claim, base recipe and overrides, settings, and how its verdict is computed."""
    name: str
    claim: str
    recipe: str
    data: str  # "digits" or "mnist"
    base: list[str]
    settings: list[Setting]
    verdict: Callable[[list[dict[str, Any]]], dict[str, Any]]
    notes: list[str] = dataclasses.field(default_factory=list)
    audit: bool = False  # death_samples: measure removed neurons on the whole training split


def study_noise(quick: bool, mnist: bool) -> Study:
    """Asymmetric-noise sigma sweep at a fixed Lasso(gamma) lambda on the digits CNN."""
    sigmas = [0.0, 3e-3] if quick else [0.0, 1e-3, 3e-3, 1e-2, 3e-2]
    settings = [Setting(f"sigma={s:g}", {"sigma": s}, [f"demp.noise={s}"]) for s in sigmas]

    def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
        base = next(r for r in rows if r["factors"]["sigma"] == 0.0)
        pairs = []
        for r in rows:
            if r is base:
                continue
            p = pair(rows, r["factors"], base["factors"])
            assert p is not None
            acc_gap = math.hypot(r["accuracy_sd"], base["accuracy_sd"])
            if p["outcome"] > 0 and p["accuracy_delta"] < -max(0.01, acc_gap):
                p["outcome"], p["note"] = 0, "sparser but less accurate (accuracy drop > max(1 point, spread))"
            pairs.append(p)
        return combine(pairs, "noise on live neurons raises neuron sparsity at equal accuracy (vs sigma=0)")

    return Study("noise", "002 Fig. 2 (right): asymmetric noise raises the dead-neuron ratio",
                 "demp-cnn-digits.yaml", "digits", ["demp.peak=0.01"], settings, verdict,
                 ["Lasso on the BN scales (the recipe's), peak lambda 0.01 (one-cycle), noise sigma one-cycle "
                  "with the same shape; Adam lr 5e-2."])


def study_regularizer(quick: bool, mnist: bool) -> Study:
    """L2 vs CDG-L2 vs Lasso on the weights and on the BN scales, matched lambdas."""
    lams = {"weights": [1e-2] if quick else [3e-3, 1e-2, 3e-2], "norm_scale": [3e-2] if quick else [1e-2, 3e-2, 1e-1]}
    regs = ["l2", "cdg_l2"] if quick else ["l2", "cdg_l2", "lasso"]
    settings = [Setting("lambda=0", {"reg": "none", "lam": 0.0}, ["demp.peak=0"])]
    for target, lam_list in lams.items():
        for g in grid(reg=regs, lam=lam_list):
            settings.append(Setting(f"{g['reg']}({target}) lambda={g['lam']:g}", {**g, "target": target},
                                    [f"demp.regularizer={g['reg']}", f"demp.target={target}", f"demp.peak={g['lam']}"]))

    def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
        main = combine(pairs_over(rows, {"reg": "l2", "target": "weights"}, {"reg": "cdg_l2", "target": "weights"},
                                  ["lam"]), "Adam + BN: L2 on the weights kills more neurons than CDG-L2")
        main["extra"] = [combine(pairs_over(rows, {"reg": "l2", "target": "norm_scale"},
                                            {"reg": "cdg_l2", "target": "norm_scale"}, ["lam"]),
                                 "the same on the BN scales, L2(gamma) vs CDG-L2(gamma)")]
        return main

    return Study("regularizer", "000 Fig. 10 (left, Adam, BN): L2 kills more than CDG-L2; 002 Figs. 4-5",
                 "demp-cnn-digits.yaml", "digits", [], settings, verdict,
                 ["Adam lr 5e-2 (the recipe's), one-cycle lambda, noise 5e-5. l2 = lambda·Σp², cdg_l2 = "
                  "lambda·Σ_{p>0}p², lasso = lambda·Σ|p| on the targeted tensors. The BN scales start at 1 > 0, "
                  "so CDG-L2(gamma) equals L2(gamma) until a scale turns negative."])


def study_optimizer(quick: bool, mnist: bool) -> Study:
    """Adam vs SGD with momentum 0.9, L2 and CDG-L2 on the weights, matched lambda."""
    lams = [0.0, 1e-2] if quick else [0.0, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    opts = {"adam": ["train.optimizer=adam"],
            "sgdm": ["train.optimizer=sgd", "train.momentum=0.9", f"train.lr={SGD_LR}"]}
    settings = []
    for opt, ov in opts.items():
        for g in grid(reg=["l2", "cdg_l2"], lam=lams):
            if g["lam"] == 0.0 and g["reg"] != "l2":
                continue  # lambda 0: one reference per optimizer
            label = f"{opt} lambda=0" if g["lam"] == 0.0 else f"{opt} {g['reg']} lambda={g['lam']:g}"
            settings.append(Setting(label, {"opt": opt, **g}, ov + [f"demp.regularizer={g['reg']}",
                                                                      f"demp.peak={g['lam']}"]))

    def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
        main = combine(pairs_over(rows, {"opt": "adam"}, {"opt": "sgdm"}, ["reg", "lam"]),
                       "Adam kills more neurons than SGD with momentum at the same lambda")
        penalized = [r for r in rows if r["factors"]["lam"] > 0]
        main["extra"] = [combine(pairs_over(penalized, {"opt": "sgdm", "reg": "cdg_l2"},
                                            {"opt": "sgdm", "reg": "l2"}, ["lam"]),
                                 "with momentum, CDG-L2 kills more than L2 (000 Fig. 10 right)"),
                         combine(pairs_over(penalized, {"opt": "adam", "reg": "l2"},
                                            {"opt": "adam", "reg": "cdg_l2"}, ["lam"]),
                                 "with Adam, L2 kills more than CDG-L2 (000 Fig. 10 left)")]
        return main

    return Study("optimizer", "000 §3 'Optimizer', Fig. 10: Adam kills more neurons than SGD with momentum",
                 "demp-cnn-digits.yaml", "digits", ["demp.target=weights"], settings, verdict,
                 [f"Adam lr 5e-2 (the recipe's), SGD lr {SGD_LR} momentum 0.9 (SGD needs a larger lr; both cosine); "
                  "the same lambda in the loss for both (one-cycle), noise 5e-5, L2 / CDG-L2 on the conv and "
                  "linear weights of the BN network."])


def study_decoupled(quick: bool, mnist: bool) -> Study:
    """L2 in the loss under Adam vs AdamW's decoupled decay at matched strength (wd = 2·lambda)."""
    lams = [1e-3] if quick else [1e-3, 3e-3, 1e-2]
    settings = [Setting("adam, no regularization", {"arm": "none", "lam": 0.0}, ["demp.regularizer=none"])]
    for lam in lams:
        settings.append(Setting(f"adam + L2 in loss, lambda={lam:g}", {"arm": "loss", "lam": lam},
                                ["demp.regularizer=l2", f"demp.peak={lam}"]))
        settings.append(Setting(f"adamw, weight_decay={2 * lam:g}", {"arm": "decoupled", "lam": lam},
                                ["demp.regularizer=none", "train.optimizer=adamw", f"train.weight_decay={2 * lam}"]))
    settings += [Setting(f"adamw, weight_decay={wd:g} (beyond matched)", {"arm": "decoupled, stronger", "wd": wd},
                         ["demp.regularizer=none", "train.optimizer=adamw", f"train.weight_decay={wd}"])
                 for wd in ([] if quick else [0.2, 2.0])]

    def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return combine(pairs_over(rows, {"arm": "loss"}, {"arm": "decoupled"}, ["lam"]),
                       "Adam: the penalty in the loss kills more neurons than decoupled weight decay at matched "
                       "strength")

    return Study("decoupled", "000 §4 'Weight Decay': the penalty in the loss reaches higher sparsity than "
                 "decoupled weight decay for the same strength", "demp-mlp-digits.yaml", "mnist" if mnist else "digits",
                 ["demp.target=all", "demp.schedule=constant", "demp.noise=0"], settings, verdict,
                 ["Matched strength: AdamW weight_decay = 2·lambda, the coefficient of p in the gradient of "
                  "lambda·Σp² (for SGD the two are then the same update); both on every parameter "
                  "(demp.target=all; AdamW decays all), lambda constant over the run, no DemP noise in either arm. "
                  "Two stronger AdamW decays (0.2, 2; outside the verdict) show what decoupled decay needs to kill "
                  "neurons."])


def study_death_samples(quick: bool, mnist: bool) -> Study:
    """Death measured on 1024 samples vs the whole training split (the removals audited on the whole split)."""
    lams = [1e-3] if quick else [3e-4, 1e-3]
    settings = []
    for lam in lams:
        settings.append(Setting(f"1024 samples, lambda={lam:g}", {"samples": "1024", "lam": lam},
                                ["demp.death_samples=1024", f"demp.peak={lam}"]))
        settings.append(Setting(f"whole training split, lambda={lam:g}", {"samples": "all", "lam": lam},
                                ["demp.death_samples=FULL", f"demp.peak={lam}"]))

    def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = pairs_over(rows, {"samples": "1024"}, {"samples": "all"}, ["lam"])
        for p in pairs:  # the claim is an equivalence: within the spread is for it, beyond it against
            p["outcome"] = 1 if p["outcome"] == 0 else -1
        return combine(pairs, "1024 samples are a sufficient proxy: the same final sparsity as the whole split "
                              "(a pair is 'for' when the two are within the seed spread)")

    return Study("death_samples", "000 §4 'Dead Criterion Relaxation', H.2, Fig. 14: 1024 samples suffice",
                 "demp-mlp-digits.yaml", "mnist" if mnist else "digits", [], settings, verdict,
                 ["Lasso on the weights (the recipe's), one-cycle lambda, noise 5e-5; 'whole training split' sets "
                  "demp.death_samples to its size. 'removed but alive on the split' audits the 1024-sample runs."],
                 audit=True)


def study_dnr_interval(quick: bool, mnist: bool) -> Study:
    """DNR pruning interval sweep at a fixed target sparsity, the target reached at the same epoch."""
    epochs, stop = (2, 2) if quick else (15, 12)
    intervals = [1, 2] if quick else [1, 2, 3, 6, 12]
    targets = [0.5] if quick else [0.5, 0.7]
    settings = [Setting(f"S={s:g} PI={pi}", {"S": s, "PI": pi},
                        [f"dnr.target_sparsity={s}", f"dnr.interval_epochs={pi}", f"dnr.stop_epoch={stop}"])
                for s in targets for pi in intervals]

    def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = []
        for s in values(rows, "S"):
            pis = sorted(values([r for r in rows if r["factors"]["S"] == s], "PI"))
            pairs += [p for pi in pis[1:] if (p := pair(rows, {"S": s, "PI": pi}, {"S": s, "PI": pis[0]}, "accuracy"))]
        return combine(pairs, "a longer pruning interval gives a (slightly) higher test accuracy than PI=1")

    return Study("dnr_interval", "001 §4.4, Table 9 / Fig. 8: longer pruning intervals, slightly higher accuracy",
                 "dnr-cnn-digits.yaml", "digits", [f"train.epochs={epochs}"], settings, verdict,
                 [f"{epochs} epochs, the target reached at epoch {stop} for every interval (the same share each "
                  f"time; the last {epochs - stop} epochs recover); Adam lr 1e-2 (the recipe's)."])


STUDIES: dict[str, Callable[[bool, bool], Study]] = {
    "noise": study_noise, "regularizer": study_regularizer, "optimizer": study_optimizer,
    "decoupled": study_decoupled, "death_samples": study_death_samples, "dnr_interval": study_dnr_interval}


# ---------------------------------------------------------------------------- running


def load_bundles(names: set[str], mnist_root: str | None, mnist_train: int) -> dict[str, Any]:
    """The data the studies need, loaded once: ``digits`` and, with a root, the MNIST subset."""
    from torch.utils.data import Subset

    from compressor.data import load_data

    out: dict[str, Any] = {"digits": load_data("digits")} if "digits" in names else {}
    if "mnist" in names:
        full = load_data(f"mnist:{mnist_root}")
        n = min(int(mnist_train), len(full.train))
        out["mnist"] = dataclasses.replace(full, train=Subset(full.train, list(range(n))))
    return out


@contextlib.contextmanager
def audit_removals(train_set: Any, log: list[dict[str, Any]]) -> Iterator[None]:
    """While active, each DemP removal first logs how many removed channels are alive on ``train_set``."""
    import torch

    from compressor.activity import collect_activity
    from compressor.training.methods.demp import DemP

    loader = torch.utils.data.DataLoader(train_set, batch_size=500, shuffle=False)
    original = DemP.remove

    def remove(self: DemP, delta: Any, optimizer: Any, **kw: Any) -> Any:
        if not delta.is_empty():
            stats = collect_activity(self.model, loader, layers=self.analyzer.consumer_names, progress=False,
                                     desc="audit", fields=("max_abs",))
            live = self.analyzer.live_masks(stats, self.criterion)
            alive = sum(int(live[g.root][torch.as_tensor(g.removed, dtype=torch.long)].sum())
                        for g in delta.groups if g.root in live)
            log.append({"step": kw.get("step"), "removed": delta.removed_channels, "alive_on_train": alive})
        return original(self, delta, optimizer, **kw)

    DemP.remove = remove  # type: ignore[method-assign]
    try:
        yield
    finally:
        DemP.remove = original  # type: ignore[method-assign]


def run_once(study: Study, setting: Setting, seed: int, bundle: Any, work: Path,
             extra: list[str]) -> dict[str, Any]:
    """Train one (setting, seed) and return its numbers (and the removal audit where asked)."""
    from compressor.training.config import load_recipe
    from compressor.training.trainer import train

    n_train = len(bundle.train)
    ov = [o.replace("=FULL", f"={n_train}") for o in [*study.base, *setting.overrides, *extra, f"train.seed={seed}"]]
    if study.data == "mnist":
        ov.insert(0, f"data.spec={bundle.spec}")
    recipe = load_recipe(ROOT / "samples" / "recipes" / study.recipe, ov)
    log: list[dict[str, Any]] = []
    audit = study.audit and setting.factors.get("samples") != "all"
    with audit_removals(bundle.train, log) if audit else contextlib.nullcontext():
        result = train(recipe, work, overwrite=True, progress=False, data=bundle, plots=False, save_model=False,
                       tensorboard=False)
    s = result.summary
    rec = {"setting": setting.label, "seed": seed, "overrides": ov, "test_accuracy": s["test_accuracy"],
           "neuron_sparsity": s["neuron_sparsity"] or 0.0, "neurons_before": s["neurons_before"],
           "neurons_after": s["neurons_after"], "live_after": s.get("live_after")}
    if audit:
        rec["audit"] = {"removal_events": len(log), "removed": sum(e["removed"] for e in log),
                        "removed_alive_on_train": sum(e["alive_on_train"] for e in log), "events": log}
    return rec


def aggregate(setting: Setting, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd over the seeds of one setting."""
    acc, acc_sd = mean_sd([r["test_accuracy"] for r in runs])
    sp, sp_sd = mean_sd([r["neuron_sparsity"] for r in runs])
    row = {"label": setting.label, "factors": setting.factors, "overrides": setting.overrides, "n": len(runs),
           "accuracy_mean": acc, "accuracy_sd": acc_sd, "sparsity_mean": sp, "sparsity_sd": sp_sd,
           "neurons_before": runs[0]["neurons_before"], "neurons_after": [r["neurons_after"] for r in runs],
           "seeds": [r["seed"] for r in runs], "per_seed": {"accuracy": [r["test_accuracy"] for r in runs],
                                                         "sparsity": [r["neuron_sparsity"] for r in runs]}}
    if all("audit" in r for r in runs):
        row["removed_alive_on_train"] = [r["audit"]["removed_alive_on_train"] for r in runs]
        row["removed_audited"] = [r["audit"]["removed"] for r in runs]
    return row


def run_study(study: Study, seeds: list[int], bundle: Any, out: Path, extra: list[str]) -> dict[str, Any]:
    """Every setting with every seed; rows, verdict and provenance as one JSON-able mapping."""
    import torch

    from exporters.env import cpu_model

    runs, rows = [], []
    for setting in study.settings:
        mine = []
        for seed in seeds:
            rec = run_once(study, setting, seed, bundle, out / "work", extra)
            mine.append(rec)
            print(f"  {study.name:13s} {setting.label:38s} seed {seed}: accuracy {100 * rec['test_accuracy']:.2f}%  "
                  f"sparsity {100 * rec['neuron_sparsity']:.1f}%", flush=True)
        runs += mine
        rows.append(aggregate(setting, mine))
    return {"schema": "demp.ablations/1", "study": study.name, "claim": study.claim,
            "command": " ".join(["python", "tools/ablations.py", *sys.argv[1:]]),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version()},
            "data": {"spec": bundle.spec, "train_samples": len(bundle.train),
                     "test_samples": len(bundle.test) if bundle.test is not None else 0},
            "recipe": f"samples/recipes/{study.recipe}", "base_overrides": study.base + extra, "notes": study.notes,
            "seeds": seeds, "rows": rows, "runs": runs, "verdict": study.verdict(rows)}


# ---------------------------------------------------------------------------- report


def _verdict_lines(v: dict[str, Any]) -> list[str]:
    lines = [f"**Verdict: {v['verdict']}** — {v['claim']} ({v['detail']})."]
    for p in v["pairs"]:
        unit = "accuracy" if p["key"] == "accuracy" else "sparsity"
        sign = {1: "for", -1: "against", 0: "within spread"}[p["outcome"]]
        lines.append(f"- {p['a']} vs {p['b']}: {unit} {100 * p['a_mean']:.1f}% vs {100 * p['b_mean']:.1f}%, "
                     f"accuracy Δ {100 * p['accuracy_delta']:+.2f} points: {sign}"
                     + (f" ({p['note']})" if p.get("note") else "")
                     + f"; {unit} Δ per seed (paired) {', '.join(f'{100 * x:+.1f}' for x in p['per_seed_delta'])}")
    for e in v.get("extra", []):
        lines += ["", *_verdict_lines(e)]
    return lines


def markdown(res: dict[str, Any]) -> str:
    """The study as Markdown: provenance, the table (mean ± sd, n) and the verdict with its pairs."""
    m, d = res["machine"], res["data"]
    audited = any("removed_alive_on_train" in r for r in res["rows"])
    lines = [f"### `{res['study']}` — {res['claim']}", "",
             f"- command: `{res['command']}`",
             f"- machine: {m['cpu']}, torch {m['torch']} ({m['threads']} thread), python {m['python']}; "
             f"date: {res['date']}",
             f"- data: `{d['spec']}`, {d['train_samples']} training / {d['test_samples']} test samples",
             f"- recipe: `{res['recipe']}`"
             + (f" with `{' '.join(res['base_overrides'])}`" if res["base_overrides"] else ""),
             *[f"- {n}" for n in res["notes"]], "",
             "| setting | n | test accuracy (%) | neuron sparsity (%) |"
             + (" removed but alive on the training split (per seed) |" if audited else ""),
             "|---|---|---|---|" + ("---|" if audited else "")]
    for r in res["rows"]:
        cell = ""
        if audited:
            cell = (" " + ", ".join(f"{a} of {n}"
                                    for a, n in zip(r["removed_alive_on_train"], r["removed_audited"], strict=True))
                    + " |") if "removed_alive_on_train" in r else " - (measured on it) |"
        lines.append(f"| {r['label']} | {r['n']} | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_sd']:.2f} | "
                     f"{100 * r['sparsity_mean']:.1f} ± {100 * r['sparsity_sd']:.1f} |{cell}")
    lines += ["", f"Seeds {res['seeds']}; sparsity is the removed share of the "
                  f"{res['rows'][0]['neurons_before']} hidden "
              "neurons. A difference counts only when it exceeds the seed spread (hypot of the two sds).", "",
              *_verdict_lines(res["verdict"]), ""]
    return "\n".join(lines)


def one_line(res: dict[str, Any]) -> str:
    """The study's verdict in one line."""
    v = res["verdict"]
    extra = "; ".join(f"{e['claim']}: {e['verdict']}" for e in v.get("extra", []))
    return f"[{res['study']}] {v['claim']}: {v['verdict']} ({v['detail']})" + (f"; {extra}" if extra else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help=f"comma-separated, or all: {', '.join(STUDIES)}")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (>= 2 for a spread)")
    p.add_argument("--out", required=True, help="writes OUT/<study>/ablations.json and ablations.md")
    p.add_argument("--mnist", default=None, metavar="ROOT", help="MNIST root (ROOT/MNIST/raw/*-ubyte) for the MLP "
                   "studies (decoupled, death_samples); default: digits")
    p.add_argument("--mnist-train", type=int, default=10000, help="MNIST training images used (the first N)")
    p.add_argument("--epochs", type=int, default=None, help="override every run's epochs (not dnr_interval's)")
    p.add_argument("--quick", action="store_true", help="smoke run: digits, 1 epoch, 2 settings per study")
    p.add_argument("--rescore", action="store_true", help="recompute the verdicts of OUT/<study>/ablations.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from compressor.fileio import atomic_write_json, atomic_write_text

    names = list(STUDIES) if args.study == "all" else [s.strip() for s in args.study.split(",") if s.strip()]
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        raise SystemExit(f"error: unknown study {', '.join(unknown)}; choose from {', '.join(STUDIES)} or all")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    mnist = bool(args.mnist) and not args.quick
    studies = [STUDIES[n](args.quick, mnist) for n in names]
    if args.rescore:  # the same numbers, the current verdict rules
        for study in studies:
            res = json.loads((Path(args.out) / study.name / "ablations.json").read_text(encoding="utf-8"))
            res["rows"] = [aggregate(st, [r for r in res["runs"] if r["setting"] == st.label]) for st in study.settings]
            res["verdict"] = study.verdict(res["rows"])
            atomic_write_json(Path(args.out) / study.name / "ablations.json", res)
            atomic_write_text(Path(args.out) / study.name / "ablations.md", markdown(res))
            print(one_line(res))
        return 0
    bundles = load_bundles({s.data for s in studies}, args.mnist, args.mnist_train)
    lines = []
    for study in studies:
        extra = [] if study.name == "dnr_interval" else (["train.epochs=1"] if args.quick else
                                                         [f"train.epochs={args.epochs}"] if args.epochs else [])
        if study.data == "mnist":  # the digits MLP recipe's lr 1e-2 kills 57% of the neurons unregularized
            extra += ["train.lr=3e-3"] + ([] if args.epochs else ["train.epochs=3"])
        print(f"{study.name}: {len(study.settings)} settings x {len(seeds)} seeds", flush=True)
        t0 = time.perf_counter()
        res = run_study(study, seeds, bundles[study.data], Path(args.out) / study.name, extra)
        res["runs_total"], res["wall_seconds"] = len(res["runs"]), time.perf_counter() - t0
        folder = Path(args.out) / study.name
        atomic_write_json(folder / "ablations.json", res)
        atomic_write_text(folder / "ablations.md", markdown(res))
        lines.append(one_line(res))
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
