#!/usr/bin/env python
"""Compress a Hugging Face classifier with demp's Python API and export it to ONNX with its natural inputs.

    python samples/compress_huggingface.py --out bert-slim/                      # a tiny random BERT, offline
    python samples/compress_huggingface.py --model ./my-bert --texts calib.txt --out bert-slim/

With ``--model`` a local ``from_pretrained`` folder (model and tokenizer; nothing is downloaded) is
loaded and ``--texts`` (one text per line) is tokenized into calibration batches. Without it, a tiny
random BERT with a ReLU feed-forward block is built, half of whose FFN units are dead (the state
DemP training or a ReLU network's own training leaves), on random token ids.

demp measures which FFN hidden units never fire on the calibration batches and removes them through
the dependency graph; the residual stream (LayerNorm) and the attention projections stay whole (the
report says why, per group). The compact model is checked against the original on held-out batches
and exported to ``OUT/model.onnx`` with inputs ``input_ids`` and ``attention_mask``, then checked
against onnxruntime. Requires ``pip install -e '.[hf]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def tiny_bert() -> tuple[torch.nn.Module, int]:
    """A random BERT classifier (2 layers, hidden 64, ReLU FFN of 128) with every other FFN unit dead."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, hidden_act="relu", max_position_embeddings=128, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.intermediate.dense.bias[::2] = -1e3
    return model, config.vocab_size


def random_batches(vocab: int, n: int, seed: int, size: int = 16, length: int = 32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (size, length), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches


def text_batches(folder: str, texts: Path, size: int = 16) -> list[dict[str, torch.Tensor]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    lines = [line.strip() for line in texts.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < 2:
        raise SystemExit(f"error: {texts} needs at least two non-empty lines (calibration and held-out text)")
    out = []
    for i in range(0, len(lines), size):
        enc = tokenizer(lines[i:i + size], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a local from_pretrained folder (default: a tiny random BERT)")
    ap.add_argument("--texts", type=Path, help="with --model: a text file, one calibration text per line")
    ap.add_argument("--out", type=Path, required=True, help="output folder for model.onnx")
    args = ap.parse_args(argv)

    import compressor
    from compressor.inputs import KeywordInputs
    from exporters.onnx import export_onnx
    from exporters.ort import check_parity

    if args.model:
        from transformers import AutoModelForSequenceClassification

        if args.texts is None:
            raise SystemExit("error: --model needs --texts FILE (calibration text, one per line)")
        model = AutoModelForSequenceClassification.from_pretrained(args.model, local_files_only=True).eval()
        batches = text_batches(args.model, args.texts)
        calib, heldout = batches[: max(1, len(batches) - 1)], batches[max(1, len(batches) - 1):]
    else:
        model, vocab = tiny_bert()
        calib, heldout = random_batches(vocab, 8, seed=0), random_batches(vocab, 2, seed=1)

    result = compressor.compress(model, calib, heldout=heldout or None, progress=False)
    params = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in result.model.parameters())
    print(f"removed {result.removed} channels; parameters {params[0]:,} -> {params[1]:,} "
          f"({params[1] / params[0]:.2f}x); calibration parity {result.verification['calibration']['rel_diff']:.2g}")
    for g in result.groups:
        if g.get("neurons") and g["after"] < g["before"]:
            print(f"  {g['root']}: {g['before']} -> {g['after']}")
    blocked = [g for g in result.groups if g.get("blocked") and g.get("neurons")]
    print(f"  {len(blocked)} group(s) kept whole, e.g. {blocked[0]['root']}: {blocked[0]['blocked'][:100]}"
          if blocked else "  no group kept whole")

    args.out.mkdir(parents=True, exist_ok=True)
    example = KeywordInputs(calib[0])[:2]
    info = export_onnx(result.model, example, args.out / "model.onnx", overwrite=True)
    parity = check_parity(args.out / "model.onnx", result.model, calib[:2])
    print(f"wrote {info.path} (inputs {', '.join(info.input_names)}; onnxruntime parity {parity.rel_diff:.2g} "
          f"on {parity.samples} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
