"""What leaves the library: ONNX export with a parity check, MAC counts, latency benchmarks, reports.

* :mod:`exporters.onnx` — :func:`export_onnx`, :func:`check_parity`
* :mod:`exporters.flops` — :func:`count_macs`, :func:`compare_macs` (fvcore; MACs, FLOPs = 2 x MACs)
* :mod:`exporters.latency` — :func:`benchmark` (interleaved dense vs compact, percentiles)
* :mod:`exporters.report` — ``report.json`` (``demp.report/1``), ``report.md``, plots, terminal summary
* :mod:`exporters.pipeline` — :func:`finalize`, the shared end of ``demp compress`` and ``demp train``
* :mod:`exporters.cli` — ``demp export`` and ``demp bench``

``compressor`` never imports this package; this package uses ``compressor``. Submodules are imported
lazily so ``import exporters`` stays cheap.
"""

from __future__ import annotations

from compressor._lazy import lazy_getattr

_LAZY = {
    "export_onnx": ("exporters.onnx", "export_onnx"),
    "check_parity": ("exporters.onnx", "check_parity"),
    "ExportInfo": ("exporters.onnx", "ExportInfo"),
    "ParityResult": ("exporters.onnx", "ParityResult"),
    "count_macs": ("exporters.flops", "count_macs"),
    "compare_macs": ("exporters.flops", "compare_macs"),
    "benchmark": ("exporters.latency", "benchmark"),
    "BenchConfig": ("exporters.latency", "BenchConfig"),
    "Variant": ("exporters.latency", "Variant"),
    "validate_report": ("exporters.report", "validate_report"),
    "write_report": ("exporters.report", "write_report"),
    "format_summary": ("exporters.report", "format_summary"),
    "finalize": ("exporters.pipeline", "finalize"),
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr('exporters', _LAZY, globals())
