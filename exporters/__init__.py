"""What leaves the library: ONNX export with a parity check, MAC counts, latency benchmarks, reports.

* :mod:`exporters.onnx` — :func:`export_onnx` (one checked ONNX file, written atomically; one input
  tensor, or keyword inputs under their own names); :mod:`exporters.quiet` silences the exporters' output
* :mod:`exporters.ort` — onnxruntime sessions, metadata, providers and :func:`check_parity`
* :mod:`exporters.latency` — :func:`benchmark` (interleaved dense vs compact, percentiles)
* :mod:`exporters.runtimes` — the runtimes a benchmark can time on, one object each, and their registry
* :mod:`exporters.report` — ``report.json`` (``demp.report/1``) built from a compression or a training run
* :mod:`exporters.render` — ``report.md``, plots, terminal summary
* :mod:`exporters.env` — the machine and library versions behind a measurement
* :mod:`exporters.pipeline` — :func:`finalize`, the shared end of ``demp compress`` and ``demp train``
* :mod:`exporters.cli` — ``demp export`` and ``demp bench``

MACs and parameters are counted by :mod:`compressor.counting` (one counter for every output).

``compressor`` never imports this package; this package uses ``compressor``. Submodules are imported
lazily so ``import exporters`` stays cheap.
"""

from __future__ import annotations

from compressor._lazy import lazy_getattr

_LAZY = {
    "export_onnx": ("exporters.onnx", "export_onnx"),
    "check_parity": ("exporters.ort", "check_parity"),
    "ExportInfo": ("exporters.onnx", "ExportInfo"),
    "ParityResult": ("exporters.ort", "ParityResult"),
    "benchmark": ("exporters.latency", "benchmark"),
    "BenchConfig": ("exporters.latency", "BenchConfig"),
    "Variant": ("exporters.latency", "Variant"),
    "validate_report": ("exporters.report", "validate_report"),
    "write_report": ("exporters.report", "write_report"),
    "format_summary": ("exporters.render", "format_summary"),
    "compress_report": ("exporters.report", "compress_report"),
    "training_report": ("exporters.report", "training_report"),
    "finalize": ("exporters.pipeline", "finalize"),
    "ExportOptions": ("exporters.pipeline", "ExportOptions"),
    "BenchOptions": ("exporters.pipeline", "BenchOptions"),
    "Runtime": ("exporters.runtimes", "Runtime"),
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr("exporters", _LAZY, globals())
