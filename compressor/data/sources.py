"""The dataset specs and their loaders (see :mod:`compressor.data` for the forms)."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, UsageError
from .augment import augmentation as _augmentation
from .augment import crop_flip_augment
from .bundle import DataBundle, TensorImageDataset
from .idx import IDX_FILES, find_idx_files, read_idx_split
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, load_imagefolder
from .loaders import SPLIT_SEED, TEST_FRACTION, stratified_split

log = logging.getLogger(__name__)

#: ``crop_flip_augment``, ``stratified_split`` and the ImageNet statistics live in :mod:`.augment`,
#: :mod:`.loaders` and :mod:`.imagefolder`; they are re-exported here, where they used to be.
__all__ = ["load_data", "stratified_split", "crop_flip_augment", "SPEC_FORMS", "SPLIT_SEED", "TEST_FRACTION",
           "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "NORMALIZE_FORMS", "parse_normalize"]

#: Standard per-channel statistics of the datasets (of pixel values in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)

#: The named ``normalize`` values of :func:`load_data` (``auto`` aside): their mean and std.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "mnist": (MNIST_MEAN, MNIST_STD),
}
NORMALIZE_FORMS = ("auto", *NORMALIZATIONS, "M1,M2,M3/S1,S2,S3")

Stats = tuple[tuple[float, ...], tuple[float, ...]]

SPEC_FORMS = (
    "digits",
    "mnist:ROOT",
    "fashion-mnist:ROOT",
    "cifar10:ROOT",
    "cifar100:ROOT",
    "imagefolder:PATH",
    "npz:PATH",
)


def load_data(spec: str, *, input_size: int | None = None, augment: bool = False,
              normalize: str = "auto") -> DataBundle:
    """Load the dataset named by ``spec`` (see the module docstring for the forms).

    ``input_size=S`` resizes images to SxS (an imagefolder of large or mixed-size images: resize to
    S*256/224, center-crop S).
    ``augment`` adds random training augmentation (never to the test split).
    ``normalize``: ``auto`` (the dataset's own statistics: its standard figures, or measured for a
    small-image folder), ``imagenet``, ``cifar10``, ``cifar100``, ``mnist``, or explicit per-channel
    ``M1,M2,M3/S1,S2,S3`` (one value each for one channel); see :func:`parse_normalize`.
    """
    stats = parse_normalize(normalize)
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"empty dataset spec; use one of: {', '.join(SPEC_FORMS)}")
    name, sep, arg = spec.strip().partition(":")
    name = name.lower()
    if input_size is not None and int(input_size) < 1:
        raise UsageError(f"--input-size must be a positive int, got {input_size}")
    loaders: dict[str, Callable[..., DataBundle]] = {
        "digits": _load_digits,
        "mnist": _load_mnist,
        "fashion-mnist": _load_mnist,
        "fashion_mnist": _load_mnist,
        "fashionmnist": _load_mnist,
        "cifar10": _load_cifar,
        "cifar100": _load_cifar,
        "imagefolder": _load_imagefolder,
        "npz": _load_npz,
    }
    if name not in loaders:
        raise UsageError(f"unknown dataset spec {spec!r}{_spec_hint(spec)}; valid forms: {', '.join(SPEC_FORMS)}")
    if name == "digits":
        if arg:
            raise UsageError(f"dataset 'digits' takes no argument (got {spec!r}); it is bundled with scikit-learn")
    elif not sep or not arg:
        placeholder = "PATH" if name in ("imagefolder", "npz") else "ROOT"
        raise UsageError(f"dataset spec {spec!r} needs a path: {name}:{placeholder}")
    try:
        if name == "digits":
            bundle = _load_digits(input_size=input_size, augment=augment, stats=stats)
        else:
            bundle = loaders[name](name, Path(os.path.expanduser(arg)), input_size=input_size, augment=augment,
                                   stats=stats)
    except DataError as exc:
        if stats is not None and "mean/std have" in str(exc):
            raise UsageError(f"--normalize {normalize}: {exc}") from None
        raise
    bundle.spec = spec
    if stats is not None and len(stats[0]) not in (1, bundle.input_shape[0]):  # where no dataset checked it
        raise UsageError(f"--normalize {normalize}: mean/std have {len(stats[0])} values but the data has "
                         f"{bundle.input_shape[0]} channels")
    if stats is not None:
        bundle.info["normalization"] = f"normalize={normalize}: mean {stats[0]}, std {stats[1]}"
        log.info("%s: normalized with %s statistics, mean %s, std %s", bundle.name, normalize, *stats)
    return bundle


def parse_normalize(normalize: str | None) -> Stats | None:
    """``(mean, std)`` of a ``normalize`` value, or None for ``auto`` (the dataset's own statistics).

    Named: ``imagenet``, ``cifar10``, ``cifar100``, ``mnist`` (any case); explicit: ``M1,M2,M3/S1,S2,S3``
    with one mean and one positive std per channel (``M/S`` for one channel, or for every channel). Anything
    else is a UsageError naming the value and the valid forms.
    """
    text = "auto" if normalize is None else str(normalize).strip()
    key = text.lower().replace("-", "")
    if key == "auto":
        return None
    if key in NORMALIZATIONS:
        return NORMALIZATIONS[key]
    bad = UsageError(f"unknown normalization {normalize!r} (--normalize, data.normalize); valid forms: "
                     f"{', '.join(NORMALIZE_FORMS)} (explicit: per-channel means, a slash, then as many positive "
                     "stds, e.g. 0.5,0.5,0.5/0.25,0.25,0.25)")
    means, slash, stds = text.partition("/")
    try:
        mean = tuple(float(v) for v in means.split(","))
        std = tuple(float(v) for v in stds.split(","))
    except ValueError:
        raise bad from None
    if not slash or len(mean) != len(std) or not all(np.isfinite(mean + std)) or min(std) <= 0:
        raise bad
    return mean, std


def _spec_hint(spec: str) -> str:
    """A did-you-mean for a misspelt dataset name (``minst:ROOT``) or a bare path given as a spec."""
    name, sep, arg = spec.strip().partition(":")
    names = [form.partition(":")[0] for form in SPEC_FORMS]
    close = difflib.get_close_matches(name.lower().replace("_", "-"), names, n=1, cutoff=0.6)
    if close and (sep or close[0] == "digits"):
        return f"; did you mean {close[0]}{sep}{arg}?"
    path = Path(os.path.expanduser(spec.strip()))
    if path.suffix == ".npz":
        return f"; did you mean npz:{spec}?"
    if path.is_dir():
        return f"; did you mean imagefolder:{spec}?"
    return f"; did you mean {SPEC_FORMS[names.index(close[0])]}?" if close else ""


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


def _load_digits(*, input_size: int | None, augment: bool, stats: Stats | None = None) -> DataBundle:
    """scikit-learn's 1797 8x8 digits, /16, normalized with the training split's mean/std (or ``stats``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = stratified_split(y)
    mean, std = stats or ((float(x[train_idx].mean()),), (float(x[train_idx].std()),))
    size = int(input_size) if input_size else None
    side = size or 8
    transform, info = _augmentation("digits", augment, side, flip=False)
    return DataBundle(
        name="digits",
        train=TensorImageDataset(x[train_idx], y[train_idx], mean=mean, std=std, size=size, transform=transform),
        test=TensorImageDataset(x[test_idx], y[test_idx], mean=mean, std=std, size=size),
        input_shape=(1, side, side),
        num_classes=10,
        mean=mean,
        std=std,
        classes=[str(i) for i in range(10)],
        native_shape=(1, 8, 8),
        info=info,
    )


# --------------------------------------------------------------------------------------------------
# torchvision datasets (MNIST, FashionMNIST, CIFAR)
# --------------------------------------------------------------------------------------------------


def _not_found(name: str, root: Path, expected: str, hint: str) -> DataError:
    return DataError(
        f"{name} data not found: expected {expected} under {root}. demp never downloads data; "
        f"get it once yourself, e.g. {hint}, then pass {name}:{root}"
    )


def _load_mnist(name: str, root: Path, *, input_size: int | None, augment: bool,
                stats: Stats | None = None) -> DataBundle:
    """MNIST / Fashion-MNIST from the four idx files (gzipped or not), read with numpy (:mod:`.idx`):
    flat in ROOT, or in torchvision's ``ROOT/MNIST/raw`` (``ROOT/FashionMNIST/raw``)."""
    from torchvision import datasets

    fashion = name != "mnist"
    cls = datasets.FashionMNIST if fashion else datasets.MNIST
    folder = cls.__name__
    if root.name == folder and (root / "raw").is_dir():  # the user pointed at ROOT/MNIST itself
        root = root.parent
    label = "fashion-mnist" if fashion else "mnist"
    hint = f"python -c \"import torchvision; torchvision.datasets.{folder}('{root}', download=True)\""
    directory, found, missing = find_idx_files(root, folder)
    if missing:
        raise _not_found(
            label, root,
            f"{folder}/raw/ (or ROOT itself) with {', '.join(IDX_FILES)}, each optionally gzipped (.gz)"
            + (f" (missing: {', '.join(missing)} in {directory})" if len(missing) < len(IDX_FILES) else ""),
            hint,
        )
    fix = f"Delete it and fetch the {label} files again, e.g. {hint}"
    x_train, y_train = read_idx_split(found[IDX_FILES[0]], found[IDX_FILES[1]], 10, fix)
    x_test, y_test = read_idx_split(found[IDX_FILES[2]], found[IDX_FILES[3]], 10, fix)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{label} files in {directory}: train images are {x_train.shape[1:]} but test images are "
                        f"{x_test.shape[1:]}; {fix}")
    mean, std = stats or ((FASHION_MNIST_MEAN, FASHION_MNIST_STD) if fashion else (MNIST_MEAN, MNIST_STD))
    size = int(input_size) if input_size else None
    height, width = (int(d) for d in x_train.shape[1:])
    shape = (1, size, size) if size else (1, height, width)
    transform, info = _augmentation(label, augment, shape[1:], flip=fashion)  # clothes mirror, digits do not

    def wrap(x: np.ndarray, y: np.ndarray, tf: Callable[[Tensor], Tensor] | None) -> TensorImageDataset:
        return TensorImageDataset(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y), mean=mean, std=std,
                                  size=size, transform=tf)

    return DataBundle(
        name=label, train=wrap(x_train, y_train, transform), test=wrap(x_test, y_test, None), input_shape=shape,
        num_classes=10, mean=mean, std=std, classes=list(cls.classes), native_shape=(1, height, width),
        info={"files": str(directory), **info},
    )


def _load_cifar(name: str, root: Path, *, input_size: int | None, augment: bool,
                stats: Stats | None = None) -> DataBundle:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = cls.base_folder
    if root.name == folder:  # the user pointed at the batches folder itself
        root = root.parent
    if not (root / folder).is_dir():
        raise _not_found(
            name, root, f"the folder {folder}/ (the extracted python version of {name.upper()})",
            f"python -c \"import torchvision; torchvision.datasets.{cls.__name__}('{root}', download=True)\"",
        )
    try:
        # torchvision unpickles the CIFAR batch files only after their md5 matched the official ones.
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(
            f"{name} files under {root / folder} are incomplete or corrupt ({exc}); delete the folder and "
            f"fetch it again"
        ) from exc
    mean, std = stats or ((CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD))
    size = int(input_size) if input_size else None
    side = size or 32
    transform, info = _augmentation(name, augment, side, flip=True)

    def wrap(ds: Any, tf: Callable[[Tensor], Tensor] | None) -> TensorImageDataset:
        data = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # NHWC -> NCHW uint8
        return TensorImageDataset(data, torch.as_tensor(ds.targets), mean=mean, std=std, size=size, transform=tf)

    return DataBundle(
        name=name, train=wrap(train, transform), test=wrap(test, None), input_shape=(3, side, side),
        num_classes=len(train.classes), mean=mean, std=std, classes=list(train.classes), native_shape=(3, 32, 32),
        info=info,
    )


# --------------------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------------------

def _load_imagefolder(name: str, path: Path, *, input_size: int | None, augment: bool,
                      stats: Stats | None = None) -> DataBundle:
    return load_imagefolder(path, input_size=input_size, augment=augment, stats=stats)


# --------------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------------

_NPZ_KEYS = {"x", "y", "x_test", "y_test", "mean", "std"}


def _load_npz(name: str, path: Path, *, input_size: int | None, augment: bool,
              stats: Stats | None = None) -> DataBundle:
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist; check the path (npz:PATH)")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable .npz file (not a zip archive); write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as exc:  # object arrays need pickle: refused
        raise DataError(f"{path}: cannot read ({exc}); arrays must be plain numeric (no object arrays)") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}); write it with numpy.savez") from exc
    if "x" not in arrays:
        raise DataError(f"{path} has no array 'x' (found: {', '.join(arrays) or 'none'}); save inputs as x=...")
    extra = sorted(set(arrays) - _NPZ_KEYS)
    if extra:
        log.warning("%s: ignoring arrays %s (known: %s)", path, extra, sorted(_NPZ_KEYS))

    x = _npz_inputs(arrays["x"], "x", path)
    y = _npz_labels(arrays.get("y"), len(x), "y", path)
    x_test, y_test = _npz_test_split(arrays, x, path)

    labeled = "y" in arrays
    num_classes = int(max(int(y.max()), int(y_test.max()) if y_test is not None else -1) + 1) if labeled else 0
    mean = _npz_stat(arrays.get("mean"), "mean", path)
    std = _npz_stat(arrays.get("std"), "std", path)
    if bool(mean) != bool(std):
        raise DataError(f"{path}: give both 'mean' and 'std' arrays, or neither")
    if std and min(std) <= 0:
        raise DataError(f"{path}: std must be positive, got {std}")
    mean, std = stats or (mean, std)  # normalize= replaces the file's own mean/std

    image = x.dim() == 4
    size = int(input_size) if (input_size and image) else None
    shape = tuple(x.shape[1:]) if size is None else (x.shape[1], size, size)
    transform, aug_info = _augmentation(f"npz {path.name}", augment, (shape[1], shape[2]) if image else None,
                                        flip=image and shape[0] == 3)  # a flip for colour images only
    try:
        train = TensorImageDataset(x, y, mean=mean, std=std, size=size, transform=transform)
        test = (TensorImageDataset(x_test, y_test, mean=mean, std=std, size=size)
                if x_test is not None and y_test is not None else None)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    return DataBundle(
        name="npz", train=train, test=test, input_shape=shape, num_classes=num_classes, mean=mean, std=std,
        info={"labeled": labeled, **aug_info}, native_shape=tuple(int(d) for d in x.shape[1:]),
    )


def _npz_test_split(arrays: dict[str, np.ndarray], x: Tensor, path: Path) -> tuple[Tensor | None, Tensor | None]:
    """An npz file's ``x_test`` and ``y_test`` (None, None without them), checked against ``x``."""
    if "x_test" not in arrays:
        if "y_test" in arrays:
            raise DataError(f"{path}: y_test is given without x_test")
        return None, None
    x_test = _npz_inputs(arrays["x_test"], "x_test", path)
    if tuple(x_test.shape[1:]) != tuple(x.shape[1:]):
        raise DataError(f"{path}: x_test samples have shape {tuple(x_test.shape[1:])} but x has {tuple(x.shape[1:])}")
    if (x_test.dtype == torch.uint8) != (x.dtype == torch.uint8):
        raise DataError(f"{path}: x and x_test must have the same dtype (both uint8 or both float)")
    if "y_test" not in arrays and "y" in arrays:
        raise DataError(f"{path}: x_test is given without y_test; add y_test (int labels)")
    return x_test, _npz_labels(arrays.get("y_test"), len(x_test), "y_test", path)


def _npz_inputs(array: np.ndarray, key: str, path: Path) -> Tensor:
    """uint8 NxHxWxC / NxHxW -> uint8 NxCxHxW; float arrays are taken as N x features... (NCHW)."""
    if array.dtype == np.uint8:
        if array.ndim == 3:
            array = array[:, None, :, :]
        elif array.ndim == 4:
            if array.shape[-1] not in (1, 3, 4):
                raise DataError(
                    f"{path}: uint8 array {key!r} must be N x H x W x C (channels last, C in 1/3/4), got shape "
                    f"{array.shape}; save float32 N x C x H x W instead if your layout is channels-first"
                )
            array = array.transpose(0, 3, 1, 2)
        else:
            raise DataError(f"{path}: uint8 array {key!r} must be N x H x W x C or N x H x W, got shape {array.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    elif np.issubdtype(array.dtype, np.floating):
        if array.ndim < 2:
            raise DataError(f"{path}: float array {key!r} must be N x C x H x W (or N x features), got shape "
                            f"{array.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{path}: array {key!r} contains NaN or Inf values")
    else:
        raise DataError(
            f"{path}: array {key!r} has dtype {array.dtype}; use float32 (N x C x H x W) or uint8 (N x H x W x C)"
        )
    if len(tensor) == 0:
        raise DataError(f"{path}: array {key!r} is empty (0 samples)")
    return tensor


def _npz_labels(array: np.ndarray | None, n: int, key: str, path: Path) -> Tensor:
    if array is None:
        return torch.full((n,), -1, dtype=torch.long)
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise DataError(f"{path}: labels {key!r} have dtype {array.dtype}; use an integer array of class indices")
    if array.ndim != 1 or len(array) != n:
        raise DataError(f"{path}: labels {key!r} must be a 1-D array of {n} class indices, got shape {array.shape}")
    if len(array) and int(array.min()) < 0:
        raise DataError(f"{path}: labels {key!r} must be >= 0 (class indices), found {int(array.min())}")
    return torch.from_numpy(array.astype(np.int64))


def _npz_stat(array: np.ndarray | None, key: str, path: Path) -> tuple[float, ...]:
    if array is None:
        return ()
    values = np.asarray(array, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all():
        raise DataError(f"{path}: {key!r} must be finite per-channel values")
    return tuple(float(v) for v in values)


