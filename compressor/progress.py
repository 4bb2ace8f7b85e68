"""Progress display for long loops: a tqdm bar on a terminal, a plain log line every
:data:`PLAIN_INTERVAL_S` seconds when stderr is a file or a pipe (no ``\\r`` bars in logs), nothing when off.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger(__name__)

__all__ = ["progress_bar", "PlainProgress", "PLAIN_INTERVAL_S"]

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 30.0


class _Off:
    """A bar that shows nothing (``--no-progress``)."""

    def update(self, n: int = 1) -> None:
        """Count nothing."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Show nothing."""

    def close(self) -> None:
        """Nothing to close."""


class PlainProgress(_Off):
    """tqdm's ``update`` / ``set_postfix`` / ``close``, shown as one log line every ``interval`` seconds:
    ``desc: 120 of 469 steps (26%), 4.1 steps/s, loss=0.310 acc=91.2%``."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "step", initial: int = 0,
                 interval: float | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval = PLAIN_INTERVAL_S if interval is None else interval
        self.started = self.last = time.monotonic()
        self.start_n = initial
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; log a line when the interval has passed since the last one."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.info("%s", self.line(now))

    def set_postfix(self, *args: Any, refresh: bool = True, **kwargs: Any) -> None:
        """Remember the figures the next line shows (tqdm's signature; ``refresh`` is ignored)."""
        self.postfix = {**(args[0] if args else {}), **kwargs}

    def line(self, now: float | None = None) -> str:
        """The progress line as it is logged."""
        elapsed = max((now if now is not None else time.monotonic()) - self.started, 1e-9)
        of = f" of {self.total}" if self.total else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.start_n) / elapsed
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        return (f"{self.desc}: {self.n}{of} {self.unit}s{share}, {rate:.3g} {self.unit}s/s"
                + (f", {extra}" if extra else ""))


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "step", initial: int = 0,
                 **tqdm_kwargs: Any) -> Any:
    """A progress display with tqdm's ``update`` / ``set_postfix`` / ``close``: off when not ``enabled``, a
    tqdm bar (``leave=False``) when stderr is a terminal, else :class:`PlainProgress` lines."""
    if not enabled:
        return _Off()
    if not _is_terminal(sys.stderr):
        return PlainProgress(total, desc, unit=unit, initial=initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False, **tqdm_kwargs)
