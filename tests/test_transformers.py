"""Hugging Face models: keyword inputs (``input_ids``, ``attention_mask``) and a ``ModelOutput`` through
the Python API; the ReLU FFN units die and go, the residual stream (LayerNorm) and the attention
projections stay whole; the compact model exports to ONNX under its natural input names and matches
onnxruntime. Skipped without ``transformers`` (the ``hf`` extra; CI installs it with ``test``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is optional: pip install -e '.[hf]'")

import compressor  # noqa: E402
from compressor.inputs import KeywordInputs  # noqa: E402
from exporters.onnx import export_onnx  # noqa: E402
from exporters.ort import check_parity  # noqa: E402

VOCAB, HIDDEN, FFN, LAYERS = 100, 32, 64, 2


def _bert(sharpen: float = 1.0) -> torch.nn.Module:
    """A random tiny BERT classifier with a ReLU FFN whose even units are dead (bias -1e3 before the ReLU);
    ``sharpen`` scales the query/key weights (sharper attention: a wrong removal cannot hide in the tolerance)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                        intermediate_size=FFN, hidden_act="relu", max_position_embeddings=64, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.intermediate.dense.bias[::2] = -1e3
            layer.attention.self.query.weight.mul_(sharpen)
            layer.attention.self.key.weight.mul_(sharpen)
    return model


def _batches(n: int, seed: int, size: int = 8) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (size, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[:, 9:] = 0  # padding at the end, as tokenizers produce
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(size, dtype=torch.long)})
    return out


@pytest.mark.parametrize("sharpen", [1.0, 20.0], ids=["plain", "sharpened-attention"])
def test_a_bert_compresses_its_dead_ffn_units_exactly(sharpen: float) -> None:
    model = _bert(sharpen)
    result = compressor.compress(model, _batches(4, 0), heldout=_batches(2, 1), progress=False)
    groups = {g["root"]: g for g in result.groups}
    for i in range(LAYERS):
        assert groups[f"bert.encoder.layer.{i}.intermediate.dense"]["after"] == FFN // 2
        assert groups[f"bert.encoder.layer.{i}.attention.self.value"]["blocked"].startswith("attention")
    residual = groups[f"bert.encoder.layer.{LAYERS - 1}.output.dense"]  # one group: the whole residual stream
    assert "LayerNorm" in residual["blocked"] and "bert.encoder.layer.0.output.dense" in residual["members"]
    assert result.removed == LAYERS * FFN // 2 and result.verification["passed"] is True
    batch = _batches(1, 2)[0]
    with torch.no_grad():
        dense = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        slim = result.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (slim - dense).abs().max().item() <= 1e-5 * dense.abs().max().item()


def test_the_compact_bert_exports_to_onnx_with_its_natural_inputs(tmp_path: Path) -> None:
    import onnxruntime as ort

    result = compressor.compress(_bert(), _batches(4, 0), progress=False)
    example = KeywordInputs({k: v for k, v in _batches(1, 3, size=2)[0].items() if k != "labels"})
    info = export_onnx(result.model, example, tmp_path / "bert.onnx")
    assert info.input_names == ["input_ids", "attention_mask"] and info.input_name == "input_ids"
    parity = check_parity(tmp_path / "bert.onnx", result.model, _batches(2, 4))
    assert parity.passed and parity.samples == 16 and 1 in parity.batch_sizes
    session = ort.InferenceSession(str(tmp_path / "bert.onnx"), providers=["CPUExecutionProvider"])
    batch = _batches(1, 5, size=3)[0]
    (logits,) = session.run(None, {"input_ids": batch["input_ids"].numpy(),
                                   "attention_mask": batch["attention_mask"].numpy()})
    with torch.no_grad():
        expected = result.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-5)


def test_the_recipe_free_sample_runs_offline(tmp_path: Path, capsys) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "samples" / "compress_huggingface.py"
    spec = importlib.util.spec_from_file_location("compress_huggingface", path)
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    assert sample.main(["--out", str(tmp_path / "slim")]) == 0
    out = capsys.readouterr().out
    assert "removed 128 channels" in out and "inputs input_ids, attention_mask" in out
    assert (tmp_path / "slim" / "model.onnx").is_file()


def test_keyword_inputs_must_share_a_batch_dimension() -> None:
    with pytest.raises(ValueError, match="sharing the batch size"):
        KeywordInputs({"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.zeros(3, 5)})
    x = KeywordInputs({"input_ids": torch.arange(12).view(4, 3), "attention_mask": torch.ones(4, 3)})
    assert x.shape[0] == 4 and x[1:3]["input_ids"].tolist() == [[3, 4, 5], [6, 7, 8]]
