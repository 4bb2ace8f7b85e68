"""Is the default compact model at least as fast as the dense one? (``demp compress --round-to auto``)

For each model, with its dead channels, the default width policy (:mod:`exporters.widths`) chooses
among the exact widths, multiples of 8 / 16 / 32 and the dense model by timing them in ONNX Runtime
(CPU execution provider, the threads given, batch 1 and 8). The choice is then checked by an
**independent** measurement: dense, the chosen model and the exact-widths model (what an untimed
policy ships) exported again and timed interleaved, longer, in a fresh run. The table lists, per
model and thread count, the choice, the widths per group, and the latency ratio chosen / dense and
exact / dense at each batch size (< 1: faster than dense).

Models:

* ``mnist-cnn``: the real trained MNIST CNN of ``../shared/data`` (its real dead units, found on 2,048
  real MNIST test images; the idx files are unpacked into a temporary folder, never into the repo);
* ``resnet50``, ``mobilenet_v2``: torchvision, random init at 224x224, with ``--ratio`` of every
  prunable group's channels made dead (BatchNorm bias -1e3) and the lossless ``dead`` criterion on
  random calibration inputs — channels that happen to be dead on them make widths odd, as real
  models do.

    python tools/bench_widths.py --out runs/bench_widths                   # all three, 1 and 2 threads
    python tools/bench_widths.py --models mnist-cnn --threads 1 --out /tmp/w

Writes ``bench_widths.json`` and ``bench_widths.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import SHARED, mnist_cnn, unpack_mnist  # noqa: E402

DEFAULT_MODELS = ("mnist-cnn", "mobilenet_v2", "resnet50")


def _mnist_cnn(tmp: Path, samples: int) -> tuple[nn.Module, torch.Tensor]:
    from compressor.data import load_data
    from compressor.models import ModelSpec

    spec = unpack_mnist(tmp)
    model = mnist_cnn()
    model.load_state_dict(torch.load(SHARED / "weights" / "mnist-cnn-ccexam.pth", map_location="cpu",
                                     weights_only=True))
    model.demp_spec = ModelSpec("mnist-cnn", 10, (1, 28, 28))
    test = load_data(spec).test
    return model.eval(), torch.stack([test[i][0] for i in range(samples)])


def _torchvision(arch: str, ratio: float, seed: int) -> tuple[nn.Module, torch.Tensor]:
    from compressor.graph import DependencyAnalyzer
    from compressor.loading import load_model
    from compressor.planting import plant_dead_channels

    torch.manual_seed(seed)
    model = load_model(arch, input_size=224).eval()
    example = torch.randn(8, 3, 224, 224)
    plant_dead_channels(model, DependencyAnalyzer(model, example[:1]), fraction=ratio)
    return model, example


def _verify(models: dict[str, nn.Module], shape: tuple[int, ...], threads: int, tmp: Path, args: argparse.Namespace):
    """An independent, longer, interleaved measurement of dense, chosen and exact in ONNX Runtime."""
    from exporters.latency import BenchConfig, Variant, benchmark
    from exporters.onnx import export_onnx

    variants = []
    for name, model in models.items():
        path = export_onnx(model.cpu().eval(), torch.zeros((2, *shape)), tmp / f"verify-{name}.onnx").path
        variants.append(Variant(name, None, path, None))
    config = BenchConfig(batch_sizes=(1, 8), runtimes=("onnxruntime",), threads=threads, warmup=3,
                         min_iters=args.min_iters, min_time_s=args.min_time)
    return benchmark(variants, shape, config)


def bench_model(name: str, threads: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from compressor.compression import compress, rewidth
    from exporters.widths import choose_widths

    t0 = time.perf_counter()
    model, calib = _mnist_cnn(tmp, args.mnist_samples) if name == "mnist-cnn" else _torchvision(name, args.ratio,
                                                                                                   args.seed)
    exact = compress(model, [calib[i:i + 64] for i in range(0, len(calib), 64)], progress=False)
    t_choice = time.perf_counter()
    chosen, policy = choose_widths(exact, partial(rewidth, exact), batch_sizes=(1, 8), threads=threads)
    choice_seconds = time.perf_counter() - t_choice
    bench = _verify({"dense": exact.dense, "chosen": chosen.model, "exact": exact.model},
                    tuple(calib.shape[1:]), threads, tmp, args)
    ratios = {(c.variant, c.batch): c for c in bench.comparisons}
    row = {"model": name, "threads": threads, "chosen": policy["chosen"], "policy": policy,
           "removed_exact": exact.removed, "removed_chosen": chosen.removed,
           "verify": {f"{v}@{b}": {"ratio": ratios[(v, b)].latency_ratio, "reliable": ratios[(v, b)].reliable,
                                   "notes": ratios[(v, b)].notes} for (v, b) in ratios},
           "choice_seconds": choice_seconds, "seconds": time.perf_counter() - t0}
    worst = max(ratios[("chosen", b)].latency_ratio for b in (1, 8))
    print(f"{name} threads {threads}: chose {policy['chosen']}; verified chosen/dense "
          f"{ratios[('chosen', 1)].latency_ratio:.3f} (b1) {ratios[('chosen', 8)].latency_ratio:.3f} (b8), exact/dense "
          f"{ratios[('exact', 1)].latency_ratio:.3f} / {ratios[('exact', 8)].latency_ratio:.3f}; "
          f"{'OK' if worst <= 1.0 else 'SLOWER'} ({row['seconds']:.0f} s)", flush=True)
    return row


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}`  ", f"Machine: {env.get('cpu_model')}, {env.get('logical_cores')} logical cores; "
             f"{env.get('date')}; onnxruntime {env.get('versions', {}).get('onnxruntime')}.", "",
             "| model | threads | chosen | removed (exact / chosen) | chosen / dense b1 | chosen / dense b8 | "
             "exact / dense b1 | exact / dense b8 | reliable |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["verify"]
        reliable = all(x["reliable"] for x in v.values())
        lines.append(f"| {r['model']} | {r['threads']} | {r['chosen']} | "
                     f"{r['removed_exact']} / {r['removed_chosen']} | "
                     f"{v['chosen@1']['ratio']:.3f} | {v['chosen@8']['ratio']:.3f} | {v['exact@1']['ratio']:.3f} | "
                     f"{v['exact@8']['ratio']:.3f} | {'yes' if reliable else 'no'} |")
    lines += ["", "Widths per group (before → exact → chosen), and the policy's own measurement (p50 ratio to dense, "
                  "batch 1 / 8):", ""]
    for r in rows:
        groups = ", ".join(f"`{g['root']}` {g['before']}→{g['exact']}→{g['chosen']}" for g in r["policy"]["groups"])
        cands = ", ".join(f"{c['label']} {c['latency_ratio'].get('1', 1.0):.3f}/{c['latency_ratio'].get('8', 1.0):.3f}"
                          for c in r["policy"]["candidates"])
        lines.append(f"- **{r['model']}, {r['threads']} thread(s)**: {cands} "
                     f"(choice took {r['choice_seconds']:.0f} s). Groups: {groups}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from compressor.fileio import atomic_write_json, atomic_write_text
    from exporters.env import collect_environment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--ratio", type=float, default=0.45, help="share of channels made dead (torchvision models)")
    ap.add_argument("--mnist-samples", type=int, default=2048)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per variant and batch in the check")
    ap.add_argument("--min-iters", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_widths")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            with tempfile.TemporaryDirectory(prefix="bench-widths-") as tmp:
                rows.append(bench_model(name, threads, args, Path(tmp)))
            atomic_write_json(out / "bench_widths.json", rows)
    command = "python tools/bench_widths.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_text(out / "bench_widths.md", markdown(rows, collect_environment(), command))
    print(f"wrote {out}/bench_widths.json and bench_widths.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
