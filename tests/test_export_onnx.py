"""ONNX export: real exporters, real onnxruntime sessions, real files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from torch import nn

from compressor.errors import DempError, OutputExistsError, UsageError, VerificationError
from exporters.onnx import describe_export_failure, export_onnx
from exporters.ort import check_parity, load_onnx_session, read_onnx_metadata


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


class DataDependent(nn.Module):
    """torch.export refuses the data-dependent branch; the TorchScript tracer records one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > -1e9:
            return y * 2
        return y


class Zeta(nn.Module):
    """Hurwitz zeta has no ONNX translation in either exporter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(x.abs() + 2, x.abs() + 1)


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("r18") / "model.onnx"
    info = export_onnx(model, torch.randn(2, 3, 64, 64), path,
                       metadata={"demp.plan_hash": "abc123", "demp.neuron_sparsity": 0.25})
    return model, info


def test_resnet18_default_export_is_dynamo_dynamic_and_checked(resnet_export) -> None:
    model, info = resnet_export
    assert info.exporter == "dynamo" and info.requested_exporter == "auto" and info.fallback_reason is None
    assert info.opset == 18 and info.dynamic_batch
    assert info.input_shape == ["batch", 3, 64, 64]
    proto = onnx.load(info.path)
    onnx.checker.check_model(proto, full_check=True)
    assert any(op.domain in ("", "ai.onnx") and op.version == 18 for op in proto.opset_import)
    # shape inference results are stored in the file
    assert len(proto.graph.value_info) > 0
    assert info.external_data is None and info.bytes == Path(info.path).stat().st_size
    assert info.bytes > 11_000_000 * 4  # the 11M float32 weights are inside the file


def test_resnet18_parity_on_several_batch_sizes(resnet_export) -> None:
    model, info = resnet_export
    torch.manual_seed(1)
    calib, heldout = torch.randn(6, 3, 64, 64), torch.randn(5, 3, 64, 64)
    result = check_parity(info.path, model, [calib, (heldout, torch.zeros(5))], chunk=4)
    assert result.passed and result.samples == 11
    assert result.rel_diff < 1e-4 and result.max_abs_diff < 1e-3
    assert result.top1_agreement == 1.0
    # batch sizes other than the exported one (2) were run
    assert set(result.batch_sizes) >= {1, 3, 4} and 2 not in result.batch_sizes
    assert result.to_dict()["onnx_max_abs_diff"] == result.max_abs_diff


def test_metadata_props(resnet_export) -> None:
    _, info = resnet_export
    meta = read_onnx_metadata(info.path)
    import compressor

    assert meta["demp.version"] == compressor.__version__
    assert meta["demp.exporter"] == "dynamo"
    assert meta["demp.plan_hash"] == "abc123"
    assert meta["demp.neuron_sparsity"] == "0.25"
    assert meta["demp.dynamic_batch"] == "true"


def test_parity_failure_raises_verification_error(tmp_path) -> None:
    model = _mlp()
    path = export_onnx(model, torch.randn(4, 64), tmp_path / "m.onnx", exporter="torchscript").path
    changed = _mlp()  # different random weights: the file no longer matches this model
    with pytest.raises(VerificationError, match="does not reproduce"):
        check_parity(path, changed, torch.randn(8, 64))
    result = check_parity(path, changed, torch.randn(8, 64), raise_on_failure=False)
    assert not result.passed and result.rel_diff > 1e-4


def test_fallback_to_torchscript_is_recorded(tmp_path) -> None:
    model = DataDependent().eval()
    info = export_onnx(model, torch.randn(3, 8), tmp_path / "dd.onnx")
    assert info.exporter == "torchscript"
    assert info.fallback_reason and "dynamo" in info.fallback_reason
    assert read_onnx_metadata(info.path)["demp.exporter"] == "torchscript"
    assert check_parity(info.path, model, torch.randn(7, 8)).passed


def test_explicit_dynamo_failure_suggests_torchscript(tmp_path) -> None:
    with pytest.raises(DempError, match="--exporter torchscript"):
        export_onnx(DataDependent().eval(), torch.randn(3, 8), tmp_path / "dd.onnx", exporter="dynamo")
    assert not (tmp_path / "dd.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary files left behind


def test_unsupported_operator_is_named(tmp_path) -> None:
    with pytest.raises(DempError, match=r"aten::special_zeta.*--exporter dynamo"):
        export_onnx(Zeta(), torch.rand(2, 4), tmp_path / "z.onnx", exporter="torchscript")
    with pytest.raises(DempError, match="zeta"):
        export_onnx(Zeta(), torch.rand(2, 4), tmp_path / "z.onnx", exporter="auto")
    assert not (tmp_path / "z.onnx").exists()


def test_describe_export_failure_extracts_the_op() -> None:
    op, reason = describe_export_failure(RuntimeError("Exporting the operator 'aten::foo_bar' to ONNX opset version 18 "
                                                      "is not supported"))
    assert op == "aten::foo_bar" and "RuntimeError" in reason


def test_static_batch_export(tmp_path) -> None:
    model = _mlp()
    info = export_onnx(model, torch.randn(4, 64), tmp_path / "s.onnx", dynamic_batch=False, exporter="torchscript")
    assert info.input_shape == [4, 64] and not info.dynamic_batch
    result = check_parity(info.path, model, torch.randn(10, 64))  # padded to multiples of 4
    assert result.passed and result.batch_sizes == [4]


def test_batch_of_one_still_gives_a_dynamic_axis(tmp_path) -> None:
    model = _mlp()
    info = export_onnx(model, torch.randn(1, 64), tmp_path / "one.onnx", exporter="torchscript")
    assert info.input_shape[0] == "batch"
    session = load_onnx_session(info.path)
    assert session.run(None, {"input": torch.randn(5, 64).numpy()})[0].shape == (5, 10)


def test_external_data(tmp_path) -> None:
    model = _mlp()
    info = export_onnx(model, torch.randn(2, 64), tmp_path / "ext.onnx", external_data=True, exporter="torchscript")
    assert info.external_data == "ext.onnx.data"
    assert (tmp_path / "ext.onnx.data").stat().st_size >= (64 * 32 + 32 * 10) * 4
    assert check_parity(info.path, model, torch.randn(6, 64)).passed
    # replacing it with an inline export removes the old side file
    export_onnx(model, torch.randn(2, 64), tmp_path / "ext.onnx", exporter="torchscript", overwrite=True)
    assert not (tmp_path / "ext.onnx.data").exists()
    assert check_parity(tmp_path / "ext.onnx", model, torch.randn(3, 64)).passed


def test_refuses_to_overwrite(tmp_path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_onnx(_mlp(), torch.randn(2, 64), target, exporter="torchscript")
    assert target.read_bytes() == b"keep me"
    export_onnx(_mlp(), torch.randn(2, 64), target, exporter="torchscript", overwrite=True)
    assert target.read_bytes() != b"keep me"


def test_bad_options(tmp_path) -> None:
    with pytest.raises(UsageError, match="exporter"):
        export_onnx(_mlp(), torch.randn(2, 64), tmp_path / "m.onnx", exporter="tflite")
    with pytest.raises(UsageError, match=".onnx"):
        export_onnx(_mlp(), torch.randn(2, 64), tmp_path / "m.bin")


def test_model_mode_is_restored(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    export_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx", exporter="torchscript")
    assert model.training


@pytest.mark.skipif(importlib.util.find_spec("onnxslim") is not None, reason="onnxslim installed")
def test_simplify_without_onnxslim_says_how_to_install(tmp_path) -> None:
    with pytest.raises(DempError, match=r"pip install 'demp\[simplify\]'"):
        export_onnx(_mlp(), torch.randn(2, 64), tmp_path / "m.onnx", simplify=True)


@pytest.mark.skipif(importlib.util.find_spec("onnxslim") is None, reason="onnxslim not installed")
def test_simplify_with_onnxslim(tmp_path) -> None:
    model = _mlp()
    info = export_onnx(model, torch.randn(2, 64), tmp_path / "m.onnx", simplify=True, exporter="torchscript")
    assert info.simplified and check_parity(info.path, model, torch.randn(5, 64)).passed


def test_corrupt_onnx_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(DempError, match="corrupt"):
        load_onnx_session(bad)
    with pytest.raises(DempError, match="not found"):
        load_onnx_session(tmp_path / "missing.onnx")
