"""``demp export`` and ``demp bench`` through the real command-line entry point."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

import compressor
from compressor.cli import main
from compressor.graph import DependencyAnalyzer
from compressor.planting import plant_dead_channels
from exporters.ort import read_onnx_metadata

QUICK = ["--min-time", "0.01", "--min-iters", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def slim_dir(tmp_path_factory):
    """A compressed directory (plan.json + weights.safetensors) of a small CNN with planted dead channels."""
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).eval()
    plant_dead_channels(model, DependencyAnalyzer(model, torch.zeros(1, 1, 8, 8)), fraction=0.5)
    calib = torch.randn(64, 1, 8, 8)
    result = compressor.compress(model, [calib[:32], calib[32:]], heldout=torch.randn(16, 1, 8, 8), progress=False)
    return compressor.save_pruned(result, tmp_path_factory.mktemp("cli") / "slim"), result


def test_export_writes_checked_onnx_with_metadata(slim_dir, capsys) -> None:
    directory, result = slim_dir
    assert main(["export", str(directory), "--exporter", "torchscript"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "parity (onnxruntime vs PyTorch" in out and "top-1 agreement 1.0000" in out
    path = directory / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    meta = read_onnx_metadata(path)
    assert meta["demp.plan_hash"] == result.plan.removal_hash()
    assert meta["demp.exporter"] == "torchscript" and meta["demp.version"] == compressor.__version__
    assert 0 < float(meta["demp.neuron_sparsity"]) < 1

    # never overwrite without --overwrite
    before = path.read_bytes()
    assert main(["export", str(directory), "--exporter", "torchscript"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_export_static_batch_to_another_file(slim_dir, tmp_path, capsys) -> None:
    directory, _ = slim_dir
    target = tmp_path / "static.onnx"
    assert main(["export", str(directory), "--static-batch", "--batch-size", "3", "--out", str(target),
                 "--exporter", "torchscript"]) == 0
    dims = onnx.load(str(target)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 1, 8, 8]
    assert "static batch" in capsys.readouterr().out


def test_export_parity_data_gets_the_normalization_compress_uses(slim_dir, tmp_path, capsys) -> None:
    """``--data`` for the parity check is loaded with ``--normalize``, as ``demp compress`` loads it."""
    import argparse

    from exporters.cli import _export_data, _parity_inputs

    directory, _ = slim_dir

    def samples(norm):
        args = argparse.Namespace(data="digits", normalize=norm)
        return _parity_inputs(_export_data(args, directory, (1, 8, 8)), (1, 8, 8), 16)
    plain, shifted = samples("0/1"), samples("0.5/0.25")
    torch.testing.assert_close(shifted, (plain - 0.5) / 0.25)
    code = main(["export", str(directory), "--exporter", "torchscript", "--out", str(tmp_path / "m.onnx"),
                 "--data", "digits", "--normalize", "0.5/0.25"])
    assert code == 0 and "64 real samples" in capsys.readouterr().out
    assert main(["export", str(directory), "--out", str(tmp_path / "n.onnx"), "--data", "digits",
                 "--normalize", "bogus"]) == 2
    assert "unknown normalization 'bogus'" in capsys.readouterr().err and not (tmp_path / "n.onnx").exists()


def test_export_rejects_a_directory_that_is_not_compressed(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["export", str(tmp_path)]) == 2  # an input to fix (compressor/errors.py): exit code 2
    assert "not a compressed model directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_bench_compressed_directory_dense_vs_compact(slim_dir, tmp_path, capsys) -> None:
    directory, _ = slim_dir
    out_json = tmp_path / "bench.json"
    argv = ["bench", str(directory), "--batch-sizes", "1,2", "--threads", "1", "--exporter", "torchscript",
            "--json", str(out_json), *QUICK]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "latency ratio" in printed and "MAC ratio" in printed
    data = json.loads(out_json.read_text())
    keys = {(e["runtime"], e["batch"], e["variant"]) for e in data["latency"]}
    assert keys == {(rt, b, v) for rt in ("torch", "onnxruntime") for b in (1, 2)
                    for v in ("dense", "pruned", "dense (A/A)")}
    assert all(e["threads"] == 1 for e in data["latency"])
    assert all(0 < c["mac_ratio"] < 1 for c in data["comparison"])
    assert data["environment"]["cpu_model"] and data["input_shape"] == [1, 8, 8]
    # the --json file is not overwritten without --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_bench_onnx_file_and_corrupt_file(slim_dir, tmp_path, capsys) -> None:
    directory, result = slim_dir
    from exporters.onnx import export_onnx

    path = export_onnx(result.model, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", exporter="torchscript").path
    assert main(["bench", path, "--batch-sizes", "1,3", *QUICK]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert main(["bench", path, "--runtimes", "torch"]) == 2
    assert "only be timed with onnxruntime" in capsys.readouterr().err

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    assert main(["bench", str(bad)]) == 2  # a file given on the command line: an input to fix
    assert "corrupt" in capsys.readouterr().err


def test_bench_arch(capsys) -> None:
    argv = ["bench", "--arch", "mlp", "--input-size", "8", "--runtimes", "torch", "--batch-sizes", "2", *QUICK]
    assert main(argv) == 0
    assert "mlp" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-sizes", "0"], "batch size 0"),
        (["--runtimes", "torch,tensorflow"], "valid runtimes"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_bench_usage_errors(slim_dir, capsys, extra, message) -> None:
    directory, _ = slim_dir
    assert main(["bench", str(directory), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_bench_cuda_without_gpu(slim_dir, capsys) -> None:
    directory, _ = slim_dir
    assert main(["bench", str(directory), "--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_bench_needs_a_target(tmp_path, capsys) -> None:
    assert main(["bench"]) == 2
    assert "nothing to time" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("x")
    assert main(["bench", str(tmp_path)]) == 2
    assert "not a compressed model directory" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_cuda(slim_dir, capsys) -> None:
    directory, _ = slim_dir
    assert main(["bench", str(directory), "--device", "cuda", "--runtimes", "torch", *QUICK]) == 0
    assert "cuda" in capsys.readouterr().out
