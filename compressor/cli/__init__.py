"""The ``demp`` command line: :mod:`.main` (the entry point), :mod:`.compress` (``compress``,
``inspect``), :mod:`.train` (``train``, ``demo``). These are the only ``compressor`` modules that may
import :mod:`exporters` (``tests/test_layering.py`` checks it)."""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["main", "build_parser"]
