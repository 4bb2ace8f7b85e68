"""The idx file format of MNIST and Fashion-MNIST, read with numpy: finding the four files (gzipped or
not, flat in ROOT or in torchvision's ``ROOT/MNIST/raw``) and checking them.

An idx file is a big-endian header (two zero bytes, a type byte, the number of dimensions, then
each dimension as a uint32) followed by the values; MNIST's images have magic 2051 (unsigned
bytes, 3 dimensions) and its labels 2049 (unsigned bytes, 1 dimension). A file starting with the
gzip signature is decompressed first, whatever its name.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["IDX_FILES", "read_idx", "find_idx_files", "read_idx_split"]

#: The four files of MNIST and Fashion-MNIST (the same names for both); each may end in ``.gz``.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_GZIP_SIGNATURE = b"\x1f\x8b"
_TYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _corrupt(path: Path, what: str, fix: str) -> DataError:
    return DataError(f"{path} is not a valid idx file: {what}. {fix}")


def read_idx(path: Path, fix: str = "Delete it and fetch it again.") -> np.ndarray:
    """The array stored in the idx file ``path`` (gzipped or not); DataError naming the file and ``fix``
    when it cannot be read, is cut short or has a bad header."""
    try:
        data = path.read_bytes()
        if data[:2] == _GZIP_SIGNATURE:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise _corrupt(path, f"it cannot be read or decompressed ({exc})", fix) from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _TYPES or data[3] == 0:
        raise _corrupt(path, f"bad header {data[:4].hex() or '(empty file)'} (expected 0000 TT NN: a data type and "
                       "the number of dimensions)", fix)
    ndim = data[3]
    start = 4 + 4 * ndim
    if len(data) < start:
        raise _corrupt(path, f"the header of {ndim} dimensions is cut short ({len(data)} bytes)", fix)
    dims = struct.unpack(f">{ndim}I", data[4:start])
    dtype = _TYPES[data[2]]
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - start != expected:
        raise _corrupt(path, f"the header says {' x '.join(map(str, dims))} values ({expected} bytes) but the file "
                       f"holds {len(data) - start} bytes after it (truncated or corrupt)", fix)
    return np.frombuffer(data, dtype=dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(root: Path, folder: str) -> tuple[Path, dict[str, Path], list[str]]:
    """Where the four idx files are: ``(directory, {name: path}, missing names)``.

    Looks in ``root/folder/raw`` (torchvision's layout) and in ``root`` itself, each file as ``NAME`` or
    ``NAME.gz``; returns the first directory that has all four, else the one with most of them.
    """
    best: tuple[Path, dict[str, Path], list[str]] | None = None
    for directory in (root / folder / "raw", root):
        found: dict[str, Path] = {}
        for name in IDX_FILES:
            path = next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)
            if path is not None:
                found[name] = path
        missing = [n for n in IDX_FILES if n not in found]
        if not missing:
            return directory, found, []
        if best is None or len(found) > len(best[1]):
            best = (directory, found, missing)
    assert best is not None
    return best


def read_idx_split(images_path: Path, labels_path: Path, num_classes: int, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (uint8 N x H x W) and labels (int64 N), checked: magic numbers, counts, label range."""
    images = read_idx(images_path, fix)
    labels = read_idx(labels_path, fix)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise _corrupt(images_path, f"expected magic {IMAGES_MAGIC} (unsigned bytes, N x rows x columns), found "
                       f"{images.dtype} data of {images.ndim} dimension(s)", fix)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise _corrupt(labels_path, f"expected magic {LABELS_MAGIC} (unsigned bytes, N labels), found {labels.dtype} "
                       f"data of {labels.ndim} dimension(s)", fix)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
                        f"they must come from the same split. {fix}")
    if len(labels) and int(labels.max()) >= num_classes:
        raise _corrupt(labels_path, f"label {int(labels.max())} is out of range 0..{num_classes - 1}", fix)
    return images, labels.astype(np.int64)
