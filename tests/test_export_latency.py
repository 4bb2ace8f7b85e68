"""Latency benchmarks: structure, interleaving, thread handling and usage errors (never timings)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.errors import UsageError
from exporters.latency import (
    AA_VARIANT,
    MIN_NOISE_FLOOR,
    BenchConfig,
    LatencyResult,
    Variant,
    benchmark,
    compare,
    format_table,
    parse_batch_sizes,
    parse_runtimes,
)
from exporters.onnx import export_onnx

FAST = dict(warmup=1, min_iters=4, min_time_s=0.01, chunk=2, chunk_s=0.0)


def _mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, 10)).eval()


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("lat")
    dense, pruned = _mlp(64), _mlp(16)
    d = export_onnx(dense, torch.randn(2, 32), tmp / "dense.onnx", exporter="torchscript").path
    p = export_onnx(pruned, torch.randn(2, 32), tmp / "pruned.onnx", exporter="torchscript").path
    return [Variant("dense", dense, d, 32 * 64 + 64 * 10), Variant("pruned", pruned, p, 32 * 16 + 16 * 10)]


def test_benchmark_structure_and_percentiles(variants) -> None:
    before_threads = torch.get_num_threads()
    config = BenchConfig(batch_sizes=(1, 3), runtimes=("torch", "onnxruntime"), threads=1, **FAST)
    result = benchmark(variants, (32,), config)
    assert torch.get_num_threads() == before_threads  # restored
    keys = {(r.runtime, r.batch, r.variant) for r in result.results}
    assert keys == {(rt, b, v) for rt in ("torch", "onnxruntime") for b in (1, 3)
                    for v in ("dense", "pruned", AA_VARIANT)}, "with the A/A copy of dense: the noise floor"
    for c in result.comparisons:
        aa = next(r for r in result.results if (r.runtime, r.batch, r.variant) == (c.runtime, c.batch, AA_VARIANT))
        assert c.aa_ratio == pytest.approx(aa.p50_ms / c.baseline_p50_ms)
        assert c.noise_floor == pytest.approx(max(MIN_NOISE_FLOOR, abs(c.aa_ratio - 1)))
    for r in result.results:
        assert isinstance(r, LatencyResult)
        assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
        assert r.iters >= 4 and r.measured_s >= 0.01
        assert r.threads == 1 and r.device == "cpu" and 0 < r.cpu_share <= 1
        assert r.throughput == pytest.approx(r.batch / (r.p50_ms / 1e3))
        assert r.std_ms >= 0 and r.min_ms <= r.mean_ms <= r.max_ms
    ort = [r for r in result.results if r.runtime == "onnxruntime"]
    assert all(r.provider == "CPUExecutionProvider" for r in ort)
    assert result.environment["threads"] == 1 and result.environment["cpu_model"]
    assert "torch" in result.environment["versions"] and "onnxruntime" in result.environment["versions"]
    assert result.config["threads"] == 1 and result.config["batch_sizes"] == [1, 3]


def test_variants_are_interleaved_round_robin(variants) -> None:
    config = BenchConfig(batch_sizes=(2,), runtimes=("torch",), **FAST)
    result = benchmark(variants, (32,), config)
    assert 1 <= len(result.schedule) <= 2, "one measurement, or two when the first was unstable"
    for entry in result.schedule:
        order = entry["order"]
        assert entry["turns"] >= 4 and len(order) >= 4
        assert order[0::3] == ["dense"] * len(order[0::3])
        assert order[1::3] == ["pruned"] * len(order[1::3])
        assert order[2::3] == [AA_VARIANT] * len(order[2::3])


def test_comparison_ratios(variants) -> None:
    config = BenchConfig(batch_sizes=(4,), runtimes=("onnxruntime",), **FAST)
    result = benchmark(variants, (32,), config)
    (cmp,) = result.comparisons
    dense = next(r for r in result.results if r.variant == "dense")
    pruned = next(r for r in result.results if r.variant == "pruned")
    assert cmp.latency_ratio == pytest.approx(pruned.p50_ms / dense.p50_ms)
    assert cmp.mac_ratio == pytest.approx((32 * 16 + 16 * 10) / (32 * 64 + 64 * 10))
    assert cmp.speedup_efficiency == pytest.approx(cmp.mac_ratio / cmp.latency_ratio)
    assert cmp.speedup == pytest.approx(1 / cmp.latency_ratio)
    text = format_table(result)
    assert "latency ratio" in text and "pruned" in text and f"{cmp.mac_ratio:.3f}" in text


def test_compare_without_macs_has_no_efficiency() -> None:
    def res(variant: str, p50: float) -> LatencyResult:
        return LatencyResult("torch", "cpu", variant, 1, 1, 10, 1.0, p50, p50, p50, p50, 0.0, p50, p50, 1e3 / p50)

    (cmp,) = compare([res("dense", 2.0), res("pruned", 1.0)], [Variant("dense"), Variant("pruned")])
    assert cmp.latency_ratio == 0.5 and cmp.mac_ratio is None and cmp.speedup_efficiency is None


def test_onnx_only_variant_and_missing_runtime_inputs(variants) -> None:
    onnx_only = [Variant("model", None, variants[0].onnx_path)]
    result = benchmark(onnx_only, (32,), BenchConfig(batch_sizes=(1,), runtimes=("onnxruntime",), **FAST))
    assert [r.variant for r in result.results] == ["model"] and result.comparisons == []
    with pytest.raises(UsageError, match="onnxruntime"):
        benchmark(onnx_only, (32,), BenchConfig(batch_sizes=(1,), runtimes=("torch",), **FAST))


def test_usage_errors() -> None:
    with pytest.raises(UsageError, match="batch size 0"):
        BenchConfig(batch_sizes=(1, 0)).validate()
    with pytest.raises(UsageError, match="valid runtimes: torch, torch-compile, onnxruntime"):
        BenchConfig(runtimes=("torch", "tvm")).validate()
    with pytest.raises(UsageError, match="batch size 0"):
        parse_batch_sizes("1,0")
    with pytest.raises(UsageError, match="not an integer"):
        parse_batch_sizes("1,x")
    assert parse_batch_sizes("1, 8,32") == (1, 8, 32)
    with pytest.raises(UsageError, match="valid runtimes"):
        parse_runtimes("torch,jax")
    assert parse_runtimes("torch,onnxruntime") == ("torch", "onnxruntime")
    with pytest.raises(UsageError, match="device"):
        BenchConfig(device="tpu").validate()
    with pytest.raises(UsageError, match="onnxruntime-trt needs --device cuda"):
        BenchConfig(runtimes=("onnxruntime-trt",)).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_suggests_cpu() -> None:
    with pytest.raises(UsageError, match="--device cpu"):
        BenchConfig(device="cuda").validate()


def test_static_batch_onnx_refuses_other_batch_sizes(tmp_path) -> None:
    model = _mlp(8)
    path = export_onnx(model, torch.randn(2, 32), tmp_path / "s.onnx", dynamic_batch=False, exporter="torchscript").path
    with pytest.raises(UsageError, match="static batch size of 2"):
        benchmark([Variant("s", None, path)], (32,), BenchConfig(batch_sizes=(1,), runtimes=("onnxruntime",), **FAST))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_torch_events(variants) -> None:
    result = benchmark(variants, (32,), BenchConfig(batch_sizes=(1, 8), runtimes=("torch",), device="cuda", **FAST))
    assert {r.device for r in result.results} == {"cuda"}
    assert all(0 < r.p50_ms <= r.p90_ms <= r.p99_ms for r in result.results)
    # the caller's models stay on the CPU
    assert all(p.device.type == "cpu" for v in variants for p in v.model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_onnxruntime_io_binding(variants) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu not installed")
    result = benchmark(variants, (32,), BenchConfig(batch_sizes=(4,), runtimes=("onnxruntime",), device="cuda", **FAST))
    assert all(r.provider == "CUDAExecutionProvider" for r in result.results)
