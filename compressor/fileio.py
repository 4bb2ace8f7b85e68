"""Writing files and output folders so that nothing is ever lost or left half-written.

* **Files**: every file goes through :func:`atomic_write_with` (write a temporary file in the same
  folder, fsync, ``os.replace``), so an interrupted run never leaves a half-written checkpoint, plan or
  report behind and a previous version stays intact until the new one is complete. Files get the
  permissions of the user's umask (like every other tool), not the owner-only mode of a temp file.
* **Output folders**: :func:`prepare_output_dir` creates a folder, or with ``overwrite`` replaces
  **demp's own outputs only** — it refuses a folder that holds an input of the command (the checkpoint,
  the recipe, the model file) or any file demp did not write. :func:`staged_directory` builds a
  whole output in a hidden folder beside the target and swaps it in at the end, so a failure or a
  Ctrl-C leaves the previous output intact and nothing partial.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputExistsError, UsageError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_with", "jsonable",
           "prepare_output_dir", "check_output_dir", "staged_directory", "sha256_file", "default_mode"]

#: Hidden folders beside an output while it is built or replaced (never left behind on success).
STAGING_PREFIX = ".demp-staging-"
ASIDE_PREFIX = ".demp-previous-"


def default_mode(directory: bool = False) -> int:
    """The permissions a new file (or folder) gets under the process's umask (0o644 / 0o755 for 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


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
        os.chmod(tmp, default_mode())  # mkstemp makes it owner-only; a serving process must read it
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_output_dir(path: str | os.PathLike, *, overwrite: bool, outputs: Iterable[str],
                     inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Refuse an output folder demp may not fill; returns it as a Path (nothing is changed).

    * an existing file: refused (choose a folder);
    * a non-empty folder without ``overwrite``: :class:`OutputExistsError`;
    * with ``overwrite``: refused when it holds an input of the command (``inputs``: the checkpoint,
      the recipe, the model file) or any entry that is not one of demp's ``outputs`` (names of files
      or folders demp writes there). Every refusal names the files and the fix; exit code 2.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is an existing file; --out names a folder: choose another --out")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if not overwrite:
        raise OutputExistsError(f"output folder {path} already exists and is not empty; pass --overwrite to "
                                "replace demp's outputs there, or choose another --out")
    held = [str(Path(p)) for p in inputs if p is not None and Path(p).exists() and _inside(Path(p), path)]
    if held:
        raise UsageError(f"--overwrite would delete {', '.join(held)}, an input of this command, which lies in "
                         f"{path}; choose another --out (or move the input out of it)")
    known = set(outputs)
    foreign = sorted(p.name for p in path.iterdir() if p.name not in known and not p.name.startswith(
        (STAGING_PREFIX, ASIDE_PREFIX)))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UsageError(f"--overwrite replaces demp's own outputs only, but {path} also holds {shown}, which "
                         "demp did not write; choose another --out or move those files away")
    return path


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False, *, outputs: Iterable[str],
                       inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Create an output folder after :func:`check_output_dir`; with ``overwrite`` demp's earlier outputs
    there are removed first, so stale files from an earlier run never mix with new ones."""
    path = check_output_dir(path, overwrite=overwrite, outputs=outputs, inputs=inputs)
    if path.is_dir():
        for entry in path.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``target`` to build a whole output in; on success it replaces
    ``target`` (check it first with :func:`check_output_dir`). On any failure or interrupt the hidden
    folder is removed and ``target`` is left exactly as it was.

    The swap is two renames (the old folder aside, the new one into place), then the old one is
    deleted; a failing second rename puts the old folder back, so only a hard crash (power loss, kill -9)
    between the two renames can leave the old output under its hidden name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}-", dir=target.parent))
    aside = None
    try:
        yield staging
        os.chmod(staging, default_mode(directory=True))
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=f"{ASIDE_PREFIX}{target.name}-", dir=target.parent))
            os.rmdir(aside)
            os.rename(target, aside)
        os.rename(staging, target)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        if aside is not None and aside.exists() and not target.exists():
            os.rename(aside, target)  # the swap failed half-way: the previous output goes back in place
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
