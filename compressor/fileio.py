"""Atomic file writing and output-directory handling.

Every file the toolkit writes goes through :func:`atomic_write_bytes` (write to a temporary file in
the same directory, fsync, ``os.replace``), so an interrupted run never leaves a half-written
checkpoint, plan or report behind, and a previous version stays intact until the new one is complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

from .errors import OutputExistsError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; the old file (if any) survives any failure."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (through :func:`jsonable`: NaN and inf become null)."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n")


def jsonable(value: Any, nonfinite: Callable[[float], Any] = lambda x: None) -> Any:
    """A JSON-safe copy: tensors and numpy scalars become numbers or lists, and NaN / inf (which JSON
    cannot hold) become ``nonfinite(x)`` — null by default, ``str`` keeps them readable in logs."""
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, nonfinite) for v in value]
    return value


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], Any]) -> Path:
    """Call ``writer(tmp_path)`` to produce the file, then move it into place atomically.

    Use this for libraries that insist on writing to a path themselves (safetensors, onnx, torch.save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create an output directory, refusing a non-empty existing one unless ``overwrite``.

    With ``overwrite`` the directory's previous contents are removed first, so stale files from an
    earlier run never mix with new ones.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is not a directory; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"output directory {path} already exists and is not empty; pass --overwrite to replace it "
                "or choose another --out"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (streamed), or of every file in a directory in sorted order."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()
