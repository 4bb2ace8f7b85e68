"""Can demp's timing be trusted on a busy machine, and does a default `demp compress` take seconds?

Two measurements on the real MNIST CNN of ``../shared/data`` (unpacked into a temporary folder):

1. **Compress time.** ``demp compress`` with its defaults against ``--round-to 1 --no-bench`` (no width
   choice, no timing), each a fresh process (imports included), interleaved, ``--repeats`` times;
   with ``--old-checkout DIR`` the defaults of another checkout (e.g. the previous commit, in a
   ``git worktree``) run in the same rounds. The table gives the median wall time of each, the ratio
   default / fast (goal: at most 2), and what the default shipped.
2. **Bench on a loaded machine.** ``demp bench`` of two folders — the default compact output, and an
   unchanged one (every layer ``--ignore``'d: the dense widths) — on the idle machine, then while
   ``--hogs`` processes spin on the CPUs. Goal: every latency row of the loaded run whose p50 differs by
   more than 10% from the idle run is marked (its timing thread got under 85% of a CPU), every
   comparison that moved by more than 10% is unreliable or within its noise floor, and the unchanged
   folder prints no speedup or slowdown.

    python tools/bench_trust.py --out /tmp/trust --repeats 3 [--old-checkout /tmp/old]

Writes ``bench_trust.json`` and ``bench_trust.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import ROOT, mnist_cnn_args  # noqa: E402

MOVED = 0.10  # a loaded-machine figure this far from the idle one must be flagged
IGNORE_ALL = ["--ignore", "features.0", "--ignore", "features.3", "--ignore", "classifier.0"]


def _demp(args: list[str], checkout: Path = ROOT) -> tuple[float, str]:
    """Run ``demp ARGS`` from ``checkout`` in a fresh process with one thread; (wall seconds, stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "compressor", *args], env=env, capture_output=True, text=True,
                          cwd=checkout)
    if done.returncode != 0:
        raise SystemExit(f"demp {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def compress_times(model: list[str], tmp: Path, repeats: int, old: Path | None) -> dict[str, Any]:
    """Median wall time of the default and the fast command (and the old default), interleaved."""
    runs = {"default": [], "fast": [], **({"old default": []} if old else {})}
    extra = {"default": [], "fast": ["--round-to", "1", "--no-bench"], "old default": []}
    for r in range(repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            out = tmp / f"compress-{name.replace(' ', '-')}"
            seconds, stdout = _demp(["compress", *model, "--out", str(out), "--overwrite", "--no-progress",
                                     *extra[name]], old if name == "old default" else ROOT)
            runs[name].append(seconds)
            print(f"  compress {name}: {seconds:.1f} s", flush=True)
    report = json.loads((tmp / "compress-default" / "report.json").read_text())
    policy = report.get("width_policy") or {}
    medians = {name: statistics.median(times) for name, times in runs.items()}
    return {"runs": runs, "median_s": medians, "ratio_default_fast": medians["default"] / medians["fast"],
            "removed": report["pruning"]["removed"], "widths": policy.get("chosen"),
            "decided_by": policy.get("decided_by"), "last_stdout": stdout}


def _bench(folder: Path, json_path: Path) -> tuple[dict[str, Any], str]:
    _, stdout = _demp(["bench", str(folder), "--json", str(json_path), "--overwrite"])
    return json.loads(json_path.read_text()), stdout


def bench_under_load(model: list[str], tmp: Path, hogs: int) -> dict[str, Any]:
    """``demp bench`` of a compact and an unchanged folder, idle and with ``hogs`` spinning processes."""
    compact = tmp / "compress-default"
    unchanged = tmp / "unchanged"
    _demp(["compress", *model, *IGNORE_ALL, "--out", str(unchanged), "--overwrite", "--no-progress"])
    out: dict[str, Any] = {}
    for label, folder in (("compact", compact), ("unchanged", unchanged)):
        idle, idle_out = _bench(folder, tmp / f"{label}-idle.json")
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            time.sleep(1.0)
            loaded, loaded_out = _bench(folder, tmp / f"{label}-loaded.json")
        finally:
            for p in spinners:
                p.kill()
        out[label] = {"idle": idle, "loaded": loaded, "idle_stdout": idle_out, "loaded_stdout": loaded_out,
                      "check": check_flags(idle, loaded, loaded_out, unchanged=label == "unchanged")}
        print(f"  bench {label}: {out[label]['check']['verdict']}", flush=True)
    return out


def check_flags(idle: dict[str, Any], loaded: dict[str, Any], stdout: str, *, unchanged: bool) -> dict[str, Any]:
    """Which loaded figures moved by more than :data:`MOVED` from the idle ones, and whether each was flagged."""
    key = ("runtime", "batch", "variant")
    base = {tuple(r[k] for k in key): r for r in idle["latency"]}
    rows = []
    for r in loaded["latency"]:
        before = base.get(tuple(r[k] for k in key))
        if before is None:
            continue
        moved = r["p50_ms"] / before["p50_ms"] - 1
        flagged = r.get("cpu_share") is not None and r["cpu_share"] < loaded["machine_load"]["busy_below"]
        rows.append({"row": "/".join(str(r[k]) for k in key), "moved": moved, "cpu_share": r.get("cpu_share"),
                     "flagged": flagged})
    cbase = {(c["runtime"], c["batch"]): c for c in idle["comparison"]}
    comps = []
    for c in loaded["comparison"]:
        before = cbase.get((c["runtime"], c["batch"]))
        if before is None:
            continue
        moved = c["latency_ratio"] / before["latency_ratio"] - 1
        comps.append({"comparison": f"{c['runtime']}/{c['batch']}", "moved": moved, "reliable": c["reliable"],
                      "within_noise": c["within_noise"], "flagged": not c["reliable"] or c["within_noise"]})
    claims = [line for line in stdout.splitlines() if "faster" in line or "SLOWER" in line]
    bad = [x for x in rows + comps if abs(x["moved"]) > MOVED and not x["flagged"]]
    bad += [{"claim": line} for line in claims] if unchanged else []
    return {"rows": rows, "comparisons": comps, "claims": claims, "unflagged": bad,
            "verdict": "met" if not bad else f"missed: {len(bad)} unflagged"}


def markdown(result: dict[str, Any], command: str) -> str:
    c = result["compress"]
    lines = [f"Command: `{command}`", "", "| command | median wall s | runs |", "|---|---|---|"]
    for name, median in c["median_s"].items():
        lines.append(f"| {name} | {median:.1f} | {', '.join(f'{t:.1f}' for t in c['runs'][name])} |")
    lines += ["", f"default / fast: **{c['ratio_default_fast']:.2f}x** (goal at most 2); the default removed "
              f"{c['removed']} neurons, widths `{c['widths']}` by {c['decided_by']}.", ""]
    for label, b in result["bench"].items():
        load = b["loaded"]["machine_load"]
        lines += [f"**demp bench, {label} folder**: loaded run's lowest CPU share "
                  f"{load['cpu_share']:.0%} (busy: {load['busy']}); verdict: **{b['check']['verdict']}**", "",
                  "| figure | moved vs idle | flagged |", "|---|---|---|"]
        for x in b["check"]["rows"] + b["check"]["comparisons"]:
            lines.append(f"| {x.get('row') or x.get('comparison')} | {x['moved']:+.0%} | "
                         f"{'yes' if x['flagged'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from compressor.fileio import atomic_write_json, atomic_write_text
    from exporters.env import collect_environment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=2, help="busy processes of the loaded run")
    ap.add_argument("--old-checkout", type=Path, help="also time this checkout's default compress")
    ap.add_argument("--out", default="runs/bench_trust")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-trust-") as tmp:
        model = mnist_cnn_args(Path(tmp))
        result = {"compress": compress_times(model, Path(tmp), args.repeats, args.old_checkout),
                  "bench": bench_under_load(model, Path(tmp), args.hogs), "environment": collect_environment()}
    command = "python tools/bench_trust.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_json(out / "bench_trust.json", result)
    atomic_write_text(out / "bench_trust.md", markdown(result, command))
    print(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
