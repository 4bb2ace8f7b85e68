#!/usr/bin/env python
"""Coverage sweep over timm: every architecture compresses losslessly, with groups blocked where needed, or
is refused with a message that names the construct — never a traceback, a hang or an "analyzer bug".

The sample (``--models`` to choose): the smallest variant of every model family (timm module) in
``timm.list_models()`` whose name marks it small (atto ... small, b0, 18 ...; else the first name), plus
the architectures whose constructs broke compression before (:data:`EXTRA`). Each model, in its own
process (memory isolation, ``--timeout``): random init at ``--size`` pixels (the model's own input size
when it cannot take that), BatchNorm statistics re-estimated on random data, dead channels planted in
every prunable group (root channels 0 and 3: BatchNorm bias -1e3 before a zeroing activation, as a
trained network has them), then the product path, :func:`compressor.compress` with the lossless
``dead`` criterion, and a held-out check. Models over ``--max-params`` parameters are skipped.

    python tools/sweep_timm.py --out sweep-timm/ [--models mixnet_s,ghostnet_100] [--size 64] [--list]

Statuses: ``ok`` (lossless, channels removed; groups blocked with reasons are counted), ``none
removable`` (lossless, but every group with planted channels is blocked, each with its reason), ``no dead
channels`` (the planting killed nothing: a BatchNorm after the activation), ``refused``
(a DempError naming the construct: nothing could be kept), ``crash`` (a traceback: a defect),
``timeout`` (a hang: a defect), ``MISMATCH`` (outputs changed: a defect), ``skipped`` (too large,
or the model cannot be built offline). Writes ``sweep.json`` and ``sweep.md``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import sys
import time
import traceback
from pathlib import Path

_spec = importlib.util.spec_from_file_location("sweep_torchvision", Path(__file__).with_name("sweep_torchvision.py"))
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

#: Name fragments of small variants, smallest first: the first family member matching one is swept.
SMALL = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "t0", "s0", "_t", "small", "_s", "b0", "18", "050",
         "mobile", "lite", "100", "_m")
#: Architectures with the constructs issue 13 found (named splits, blur pools, SK attention, ghost modules,
#: partial residuals, Res2Net scales, DPN's dual paths, FasterNet's partial conv, ...), swept besides.
EXTRA = ("mixnet_s", "mambaout_femto", "skresnet18", "densenetblur121d", "ghostnet_100", "ghostnetv2_100",
         "rexnet_100", "res2net50_14w_8s", "dpn68", "cs3darknet_s", "fasternet_t0", "levit_128s",
         "efficientformer_l1", "resnet18", "mobilenetv3_small_100", "efficientnet_b0", "convnext_atto",
         "vit_tiny_patch16_224", "deit_tiny_patch16_224", "repvgg_a0", "hrnet_w18_small", "dla34")
#: Blocked-group reasons that are not a limitation: the classifier, and channels no Conv/Linear reads.
NOT_NEURONS = ("no Conv/Linear layer reads", "produces the model output")
#: The family member to sweep where the name rule above picks a large one.
FAMILY_PICK = {"dla": "dla34", "dpn": "dpn68", "res2net": "res2net50_26w_4s", "resnest": "resnest14d",
               "senet": "legacy_seresnet18", "nfnet": "nf_regnet_b0", "convmixer": "convmixer_768_32",
               "regnet": "regnetx_002", "inception_resnet_v2": "inception_resnet_v2", "vgg": "vgg11_bn",
               "beit": "beit_base_patch16_224", "crossvit": "crossvit_9_240", "levit": "levit_128s"}
#: Families of large vision towers (VLM encoders, SAM) left out of a CPU sweep by name (not measured).
SKIP_FAMILIES = ("deepseek_vit", "gemma4_vit", "qwen3_vit", "naflexvit", "hieradet_sam2", "vision_transformer_sam")


def sample() -> list[str]:
    """One small model per timm family, plus :data:`EXTRA` (sorted, unique)."""
    import timm
    from timm.models import _registry

    families: dict[str, list[str]] = {}
    for name in timm.list_models():
        families.setdefault(_registry._model_to_module.get(name, "?"), []).append(name)
    picked = set(EXTRA)
    for family, names in sorted(families.items()):
        if family in SKIP_FAMILIES:
            continue
        names = sorted(names)
        picked.add(FAMILY_PICK.get(family) or next((n for frag in SMALL for n in names if frag in n), names[0]))
    return sorted(picked)


def _build(name: str, size: int):
    """The model at ``size`` pixels if it takes them (``img_size`` for models built for a fixed size), else
    at its own input size; returns (model, size)."""
    import timm
    import torch

    for kwargs, side in (({}, size), ({"img_size": size}, size), ({}, None)):
        try:
            model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
            side = side or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
            with torch.no_grad():
                model(torch.randn(2, 3, side, side))
            return model, side
        except Exception:  # noqa: BLE001 - try the next way to build it
            continue
    raise RuntimeError(f"timm could not build {name} at {size} px or its own input size")


def run_one(name: str, size: int, max_params: float = 100e6) -> dict:
    import torch

    import compressor
    from compressor.errors import DempError
    from compressor.graph import DependencyAnalyzer
    from compressor.planting import plant_dead_channels

    torch.manual_seed(0)
    torch.set_num_threads(1)
    row: dict = {"model": name}
    try:
        try:
            model, side = _build(name, size)
        except RuntimeError as exc:
            return {**row, "status": "skipped", "error": str(exc)}
        row["input"] = side
        row["params_before"] = sum(p.numel() for p in model.parameters())
        if row["params_before"] > max_params:
            return {**row, "status": "skipped", "error": f"{row['params_before'] / 1e6:.0f}M parameters"}
        x, x_held = torch.randn(16, 3, side, side), torch.randn(8, 3, side, side)
        _reestimate_bn(model, side)
        t0 = time.perf_counter()
        planted = plant_dead_channels(model, DependencyAnalyzer(model, x[:1]), channels=(0, 3))
        row["plant_s"] = round(time.perf_counter() - t0, 2)
        row["planted_groups"] = len(planted)
        t0 = time.perf_counter()
        result = compressor.compress(model, [x[:8], x[8:]], heldout=x_held, progress=False)
        row["compress_s"] = round(time.perf_counter() - t0, 2)
        row["analyzer_s"] = round(result.timings.get("analyzer_s", 0.0), 2)
        row["params_after"] = sum(p.numel() for p in result.model.parameters())
        row["removed"] = result.removed
        row["groups"] = len(result.groups)
        blocked = [g for g in result.groups if g.get("blocked") and not any(k in g["blocked"] for k in NOT_NEURONS)]
        row["blocked"] = len(blocked)
        row["blocked_reasons"] = sorted({_kind(g["blocked"]) for g in blocked})
        v = result.verification
        row["rel_diff_calib"] = v["calibration"]["rel_diff"]
        row["rel_diff_heldout"] = v.get("heldout", {}).get("rel_diff")
        row["status"] = _status(row, v["passed"])
    except DempError as exc:
        row["status"] = "refused"
        row["error"] = str(exc)[:600]
    except Exception as exc:  # noqa: BLE001 - the sweep records every failure, clear or not
        row["status"] = "crash"
        row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        row["traceback"] = traceback.format_exc()[-2000:]
    return row


def _status(row: dict, passed: bool | None) -> str:
    """ok: lossless with channels removed; none removable: nothing removed, every group with planted
    channels blocked (reasons recorded); no dead channels: nothing removed and nothing blocked, so the
    planting did not kill (a BatchNorm after the activation, e.g. ConvMixer, turns -1e3 into a constant,
    not a zero); MISMATCH: the verification failed."""
    if not passed:
        return "MISMATCH"
    if row["removed"] > 0:
        return "ok"
    return "none removable" if row["blocked"] else "no dead channels"


def _reestimate_bn(model, side: int) -> None:
    """BatchNorm running statistics from random data (random init leaves mean 0 / var 1 everywhere)."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, side, side))
    model.eval()


def _kind(reason: str) -> str:
    """A blocked group's reason without its module names and numbers, to count kinds."""
    generic = re.sub(r"\b(?!torch\.)\w+(\.\w+)+\b", "NAME", reason)  # dotted module names, not torch.cat
    return generic.split(":")[0].split(" (")[0][:100]


def _worker(name: str, size: int, queue, max_params: float = 100e6) -> None:
    queue.put(run_one(name, size, max_params))


def to_markdown(rows: list[dict]) -> str:
    lines = ["| model | input | params before | params after | groups | blocked | removed | compress s | "
             "rel. diff held-out | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["model"]):
        if r.get("status") in ("ok", "MISMATCH", "none removable", "no dead channels"):
            held = r.get("rel_diff_heldout")
            lines.append(f"| {r['model']} | {r['input']} | {r['params_before']:,} | {r['params_after']:,} | "
                         f"{r['groups']} | {r['blocked']} | {r['removed']} | {r['compress_s']} | "
                         f"{'-' if held is None else format(held, '.1e')} | {r['status']} |")
        else:
            lines.append(f"| {r['model']} | {r.get('input', '')} | | | | | | | | {r['status']}: "
                         f"{r.get('error', '')[:200]} |")
    for r in rows:  # rows written before "no dead channels" existed
        if r.get("status") == "none removable" and not r.get("blocked"):
            r["status"] = "no dead channels"
    counted = [r for r in rows if r.get("status") != "skipped"]
    ok = sum(r.get("status") == "ok" for r in counted)
    bad = {s: sum(r.get("status") == s for r in counted) for s in ("none removable", "no dead channels", "refused",
                                                                    "crash", "timeout", "MISMATCH")}
    reasons: dict[str, int] = {}
    for r in counted:
        for k in r.get("blocked_reasons", []):
            reasons[k] = reasons.get(k, 0) + 1
    lines.append(f"\n{ok} of {len(counted)} models compress losslessly ({len(rows) - len(counted)} skipped); "
                 + ", ".join(f"{n} {s}" for s, n in bad.items()) + ".")
    if reasons:
        lines.append("\nBlocked-group reasons (models with at least one):\n")
        lines += [f"- {n}: {k}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sweep-timm")
    ap.add_argument("--models", help="comma-separated subset (default: the sample, see --list)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per model")
    ap.add_argument("--max-params", type=float, default=100e6, help="skip larger models (default 100e6)")
    ap.add_argument("--list", action="store_true", help="print the sample and exit")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else sample()
    if args.list:
        print("\n".join(names))
        print(f"{len(names)} models", file=sys.stderr)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _shared.sweep(names, functools.partial(_worker, max_params=args.max_params), size=args.size,
                         timeout=args.timeout, results_path=out / "sweep.json",
                         resume=not args.models,
                         describe=lambda r: f"{r['model']:<28} {r['status']:<9} removed={r.get('removed', '-')} "
                                            f"blocked={r.get('blocked', '-')} {r.get('wall_s')}s "
                                            f"{r.get('error', '')[:120]}")
    (out / "sweep.md").write_text(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
