"""Silence the ONNX exporters' console output (progress prints, warnings, FX/TorchScript graph dumps that
C++ code writes straight to file descriptors 1 and 2), keeping it at DEBUG level."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence

log = logging.getLogger("exporters.onnx")

__all__ = ["quiet"]

# Loggers that print whole FX graphs while torch.export explains why it failed; the fallback path
# reports the reason in one line instead.
_NOISY_LOGGERS = (
    "torch.export",
    "torch._export",
    "torch._dynamo",
    "torch.fx.experimental.symbolic_shapes",
    "torch.onnx",
    "onnxscript",
    "onnx_ir",
)



@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence exporter chatter: progress prints, deprecation warnings, INFO logs and the FX / TorchScript
    graph dumps that the exporters print (partly from C++, straight to file descriptors 1 and 2) when
    they fail. The failure itself still raises and is summarized in one line; the captured text is
    kept at DEBUG level."""
    saved = {}
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.CRITICAL)
    with _capture_fds((1, 2)) as captured, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)
    if captured:
        log.debug("exporter output:\n%s", captured[0][-20000:])


@contextlib.contextmanager
def _capture_fds(fds: Sequence[int]) -> Iterator[list[str]]:
    """Point the given OS-level file descriptors at a temporary file; yields a list that receives the
    captured text on exit. Without real descriptors (some embedded interpreters) nothing is captured."""
    import sys

    out: list[str] = []
    sink = tempfile.TemporaryFile(mode="w+b")
    saved: dict[int, int] = {}
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd in fds:
            try:
                saved[fd] = os.dup(fd)
                os.dup2(sink.fileno(), fd)
            except OSError:
                saved.pop(fd, None)
        yield out
    finally:
        _flush_c_stdio()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace").strip()
        sink.close()
        if text:
            out.append(text)


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers so text printed by C++ lands in the capture, not after it."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass
