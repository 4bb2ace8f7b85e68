"""Constants the command line shows before any work starts (option defaults, choices), kept free of heavy
imports: ``demp --help`` reads them without loading torch or onnxruntime. :mod:`.latency` re-exports them."""

from __future__ import annotations

from .runtimes import REGISTRY

__all__ = ["DEFAULT_THREADS", "RUNTIMES"]

#: The runtimes :func:`exporters.latency.benchmark` can time (``demp bench --runtimes``): the registry's
#: names (:mod:`.runtimes` is light enough for the parsers).
RUNTIMES = tuple(REGISTRY)
#: The thread policy of every timing demp makes (demo, compress, train, bench): one intra-op thread
#: unless ``--threads`` says otherwise. On a shared machine a second thread mostly adds noise, and one
#: thread compares the arithmetic of the two models; pass ``--threads N`` to measure N.
DEFAULT_THREADS = 1
