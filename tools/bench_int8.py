#!/usr/bin/env python
"""int8 quantization of the compact model (``--quantize int8``): latency and accuracy.

**Latency** (``--models resnet50,mobilenet_v2``): torchvision at 224x224, random init, half of every
prunable group's channels planted dead and removed (``tools/bench_latency.py``'s ``make_pruned_pair``,
widths multiples of 8, as in BENCHMARKS §3); the compact model quantized by
``exporters.quantize.quantize_int8`` (the ``--quantize int8`` defaults) calibrated on random inputs;
dense fp32, compact fp32 and compact int8 timed **interleaved in one measurement** per batch size with
``exporters.latency.benchmark`` (onnxruntime CPU provider, one thread, its noise-floor and reliability
checks). Goals: compact int8 >= 3x faster than dense fp32 (ResNet-50, batch 8) and >= 1.5x faster than
compact fp32.

**Accuracy** (``--real mnist-cnn,resnet20,resnet56``): the real checkpoints of ``../shared/data``
compressed by exactly ``demp compress CKPT ... --quantize int8`` (its defaults: 1,024 calibration and
256 held-out samples from the training split, ``--round-to auto``), then dense (PyTorch), compact fp32
(``model.onnx``) and compact int8 (``model.int8.onnx``, both onnxruntime) evaluated on the whole real
test set (MNIST: 10,000; CIFAR-10 JPEG: 10,000). Goal: int8 within 0.5 points of fp32. The data is
unpacked into a temporary folder, never into the repository. With ``--target-macs R`` each checkpoint is
first fine-tuned to the budget (``demp compress --target-macs R --finetune-epochs E --quantize int8``: the
fine-tuned compact model is quantized; the MNIST CNN, which has no BatchNorm, with ``--set
demp.target=weights --set demp.select=all``).

    python tools/bench_int8.py --out runs/bench_int8
    python tools/bench_int8.py --models resnet50 --real none --min-time 1 --out /tmp/b
    python tools/bench_int8.py --models none --target-macs 0.5 --finetune-epochs 1 --out /tmp/b

Writes ``bench_int8.json`` and ``bench_int8.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import make_pruned_pair  # noqa: E402
from shared_data import SHARED, unpack_cifar, unpack_mnist  # noqa: E402

GOAL_INT8_VS_DENSE = 3.0  # ResNet-50 at batch 8
GOAL_INT8_VS_COMPACT = 1.5
GOAL_ACCURACY_POINTS = 0.5
MNIST_MODEL = '''"""The architecture of ../shared/data/weights/mnist-cnn-ccexam.pth (its README)."""
from torch import nn

INPUT_SHAPE = (1, 28, 28)


def build(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(),
                         nn.Linear(128, num_classes))
'''


# ----------------------------------------------------------------------------------------- latency
def bench_latency(arch: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Dense fp32 vs compact fp32 vs compact int8 of a planted torchvision model, one measurement."""
    from exporters.latency import BenchConfig, Variant, benchmark, format_table
    from exporters.onnx import export_onnx
    from exporters.quantize import QuantizeConfig, check_int8, int8_speedups, quantize_int8

    dense, pruned = make_pruned_pair(arch, 224, args.ratio, args.seed)
    shape = (3, 224, 224)
    gen = torch.Generator().manual_seed(args.seed)
    calib, held = torch.randn((args.calib, *shape), generator=gen), torch.randn((32, *shape), generator=gen)
    paths = {name: export_onnx(model, calib[:2], tmp / f"{arch}-{name}.onnx").path
             for name, model in (("dense", dense), ("pruned", pruned))}
    info = quantize_int8(paths["pruned"], tmp / f"{arch}-int8.onnx", calib, QuantizeConfig())
    agreement = check_int8(paths["pruned"], info.path, held)
    config = BenchConfig(batch_sizes=(1, 8), runtimes=("onnxruntime",), threads=1, warmup=3, min_iters=args.min_iters,
                         min_time_s=args.min_time)
    result = benchmark([Variant("dense", None, paths["dense"], None), Variant("pruned", None, paths["pruned"], None),
                        Variant("int8", None, info.path, None)], shape, config,
                       progress=lambda m: print(f"  timing {m}", flush=True))
    print(format_table(result), flush=True)
    data = result.to_dict()
    rows = int8_speedups(data["latency"], data["comparison"])
    for r in rows:
        print(f"{arch} batch {r['batch']}: compact {r['compact_vs_dense']:.2f}x, int8 {r['int8_vs_dense']:.2f}x faster "
              f"than dense; int8 {r['int8_vs_compact']:.2f}x faster than compact fp32", flush=True)
    return {"arch": arch, "ratio": args.ratio, "rows": rows, "quantize": info.to_dict(),
            "agreement_random_inputs": agreement.to_dict(), "latency": data["latency"],
            "comparison": data["comparison"], "machine_load": data.get("machine_load"),
            "environment": data["environment"]}


# ----------------------------------------------------------------------------------------- accuracy
def _mnist(tmp: Path) -> tuple[list[str], str]:
    """Arguments of `demp compress` for the real MNIST CNN, and its data spec."""
    spec = unpack_mnist(tmp)
    (tmp / "mnist_cnn.py").write_text(MNIST_MODEL)
    # the state dict's keys are features.N / classifier.N: renumbered onto the Sequential above
    state = torch.load(SHARED / "weights" / "mnist-cnn-ccexam.pth", map_location="cpu", weights_only=True)
    names = {"features.0": "0", "features.3": "3", "classifier.0": "7", "classifier.2": "9"}
    torch.save({f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in state.items()}, tmp / "mnist.pt")
    return [str(tmp / "mnist.pt"), "--model-file", f"{tmp / 'mnist_cnn.py'}:build", "--data", spec], spec


def _cifar(tmp: Path, depth: int) -> tuple[list[str], str]:
    root = unpack_cifar(tmp / "cifar")
    weights = {20: "akamaster-resnet20-12fca82f.th", 56: "akamaster-resnet56-4bfd9763.th"}[depth]
    spec = f"imagefolder:{root}"
    return [str(SHARED / "weights" / weights), "--arch", f"resnet{depth}-cifar-a", "--data", spec], spec


def _accuracy(predict: Any, data: Any, batch: int = 250) -> float:
    correct = 0
    for start in range(0, len(data), batch):
        items = [data[i] for i in range(start, min(start + batch, len(data)))]
        x = torch.stack([item[0] for item in items])
        y = torch.tensor([int(item[1]) for item in items])
        correct += int((torch.as_tensor(predict(x)).argmax(1) == y).sum())
    return correct / len(data)


def bench_real(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """`demp compress --quantize int8` on a real checkpoint, then the whole test set in all three forms."""
    import json

    from compressor.cli import main
    from compressor.data import load_data
    from compressor.loading import load_model
    from compressor.models.registry import data_normalization
    from exporters.ort import load_onnx_session

    argv, spec = _mnist(tmp) if name == "mnist-cnn" else _cifar(tmp, int(name.removeprefix("resnet")))
    out = tmp / f"{name}-slim"
    t0 = time.perf_counter()
    code = main(["compress", *argv, *_finetune_args(name, args), "--quantize", "int8", "--quantize-max-disagreement",
                 str(args.max_disagreement), "--out", str(out), "--no-progress"])
    if code != 0:
        raise SystemExit(f"demp compress failed for {name} (exit {code})")
    seconds = time.perf_counter() - t0
    if args.target_macs is not None:
        out = out / "model"  # the fine-tune's compact model
    report = json.loads((out / "report.json").read_text())
    arch = None if name == "mnist-cnn" else f"{name}-cifar-a"
    test = load_data(spec, normalize=data_normalization(arch, "auto")).test
    model_file = argv[argv.index("--model-file") + 1] if "--model-file" in argv else None
    dense = load_model(arch, argv[0], model_file=model_file).eval()
    result = {"model": name, "command": "demp compress " + " ".join(a.replace(str(tmp), "TMP") for a in argv)
              + " ".join(["", *_finetune_args(name, args)])
              + f" --quantize int8 --quantize-max-disagreement {args.max_disagreement:g}", "seconds": seconds,
              "mac_ratio": report["model"].get("mac_ratio"),
              "max_disagreement": args.max_disagreement, "test_samples": len(test),
              "removed": report["pruning"]["removed"], "widths": (report.get("width_policy") or {}).get("chosen"),
              "quantization": report["quantization"]}
    with torch.inference_mode():
        result["acc_dense"] = _accuracy(lambda x: dense.eval()(x), test)
    for key, file in (("acc_fp32", "model.onnx"), ("acc_int8", "model.int8.onnx")):
        if (out / file).is_file():
            session = load_onnx_session(out / file)
            result[key] = _accuracy(lambda x, s=session: s.run(None, {s.get_inputs()[0].name: x.numpy()})[0], test)
    print(f"{name}: dense {result['acc_dense']:.4f}, compact fp32 {result.get('acc_fp32')}, int8 "
          f"{result.get('acc_int8')} ({seconds:.0f} s for demp compress)", flush=True)
    return result


def _finetune_args(name: str, args: argparse.Namespace) -> list[str]:
    """The budget options of ``demp compress`` for ``--target-macs`` (none without it)."""
    if args.target_macs is None:
        return []
    extra = ["--target-macs", f"{args.target_macs:g}", "--finetune-epochs", f"{args.finetune_epochs:g}"]
    if name == "mnist-cnn":  # no normalization layer: the budget's penalty acts on the weights
        extra += ["--set", "demp.target=weights", "--set", "demp.select=all"]
    return extra


# ----------------------------------------------------------------------------------------- output
def markdown(latency: list[dict[str, Any]], real: list[dict[str, Any]], env: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}`  ", f"Machine: {env.get('cpu_model')}, {env.get('logical_cores')} logical cores "
             f"(shared); {env.get('date')}; onnxruntime {env.get('versions', {}).get('onnxruntime')}, one thread.", ""]
    if latency:
        lines += ["| model | batch | dense fp32 ms | compact fp32 ms | compact int8 ms | compact vs dense | "
                  "int8 vs dense | int8 vs compact | reliable | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
        for res in latency:
            for r in res["rows"]:
                goal = r["int8_vs_compact"] >= GOAL_INT8_VS_COMPACT and (
                    res["arch"] != "resnet50" or r["batch"] != 8 or r["int8_vs_dense"] >= GOAL_INT8_VS_DENSE)
                lines.append(f"| {res['arch']} | {r['batch']} | {r['dense_p50_ms']:.2f} | {r['compact_p50_ms']:.2f} | "
                             f"{r['int8_p50_ms']:.2f} | {r['compact_vs_dense']:.2f}x | {r['int8_vs_dense']:.2f}x | "
                             f"{r['int8_vs_compact']:.2f}x | {'yes' if r['reliable'] else 'NO'} | "
                             f"{'met' if goal else 'missed'} |")
        lines += ["", "| model | MB fp32 / int8 | quantize s | kept in float |", "|---|---|---|---|"]
        for res in latency:
            q = res["quantize"]
            kept = ", ".join([f"{e['op_type']} `{e['node']}`" for e in q["excluded"]]
                             + [f"{v['count']} {op}" for op, v in q["float_ops"].items()])
            lines.append(f"| {res['arch']} | {q['float_bytes'] / 1e6:.1f} / {q['bytes'] / 1e6:.1f} | "
                         f"{q['seconds']:.1f} | {kept} |")
    if real:
        lines += ["", "| model | max disagreement | test samples | removed | widths | MACs compact/dense | dense | "
                  "compact fp32 | compact int8 | int8 - fp32 (points) | held-out agreement | goal |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in real:
            q = r["quantization"]
            a = q.get("agreement") or {}
            diff = 100 * (r["acc_int8"] - r["acc_fp32"]) if r.get("acc_int8") is not None else None
            lines.append(f"| {r['model']} | {r['max_disagreement']:g} | {r['test_samples']} | {r['removed']} | "
                         f"{r['widths'] or '-'} | {_ratio_text(r.get('mac_ratio'))} | "
                         f"{100 * r['acc_dense']:.2f}% | {100 * r['acc_fp32']:.2f}% | "
                         + (f"{100 * r['acc_int8']:.2f}% | {diff:+.2f} | " if diff is not None else
                            f"not shipped: {q.get('reason')} | - | ")
                         + f"{100 * a.get('top1_agreement', 0):.2f}% of {a.get('samples')} | "
                         + ("met" if diff is not None and abs(diff) <= GOAL_ACCURACY_POINTS else "missed") + " |")
    return "\n".join(lines) + "\n"


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}x"


def main(argv: list[str] | None = None) -> int:
    from compressor.fileio import atomic_write_json, atomic_write_text
    from exporters.env import collect_environment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2", help="torchvision models for the latency table")
    ap.add_argument("--real", default="mnist-cnn,resnet20,resnet56", help="real checkpoints (or none)")
    ap.add_argument("--ratio", type=float, default=0.5, help="share of channels planted dead")
    ap.add_argument("--calib", type=int, default=64, help="random calibration samples (latency models)")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per variant and batch")
    ap.add_argument("--min-iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-disagreement", type=float, default=0.01,
                    help="--quantize-max-disagreement of the real models' demp compress (default 0.01, demp's)")
    ap.add_argument("--target-macs", type=float, default=None,
                    help="fine-tune the real checkpoints to this MAC ratio first (demp compress --target-macs)")
    ap.add_argument("--finetune-epochs", type=float, default=1.0, help="epochs of that fine-tune (default 1)")
    ap.add_argument("--out", default="runs/bench_int8")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    latency: list[dict[str, Any]] = []
    real: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for arch in [m for m in args.models.split(",") if m and m != "none"]:
            latency.append(bench_latency(arch, args, Path(tmp)))
            atomic_write_json(out / "bench_int8.json", {"latency": latency, "real": real})
        for name in [m for m in args.real.split(",") if m and m != "none"]:
            real.append(bench_real(name, args, Path(tmp)))
            atomic_write_json(out / "bench_int8.json", {"latency": latency, "real": real})
    command = "python tools/bench_int8.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_text(out / "bench_int8.md", markdown(latency, real, collect_environment(threads=1), command))
    print(f"wrote {out}/bench_int8.json and bench_int8.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
