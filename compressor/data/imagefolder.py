"""``imagefolder:PATH``: class folders of image files, small images kept at their size, large ones resized.

*Small images* (CIFAR-10 as JPEG files): when the probed images (:data:`SIZE_PROBE`, spread over the
training folder) all have one size and no side above :data:`SMALL_IMAGE_MAX_SIDE`, nothing is cropped.
The images are decoded once into a uint8 tensor in memory (up to :data:`IN_MEMORY_MAX_BYTES`; read per
item from the files above that) at their size, normalized with the per-channel mean/std measured on the
training split (or the ``stats`` given: ``load_data(normalize=...)``), and training augmentation is the
CIFAR one (:func:`.augment.crop_flip_augment`: side/8 padding, random crop, flip). With an
``input_size`` other than their size (VGG-16 at 64 on CIFAR, paper 000 appendix J.2), each image is
resized whole to ``input_size`` (no crop), and the crop and flip work at that size; the statistics stay
the measured ones. Decoded folders are cached in this process, so loading the same folder again (with
and without augmentation, as training does) costs a directory scan.

*Other folders* (ImageNet-like: mixed or large sizes): resize to ``S * 256 / 224`` and center-crop ``S``
(default 224); training augmentation is a random-resized crop and a flip; ImageNet statistics (unless
``stats`` are given).
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..errors import DataError
from .augment import augmentation
from .bundle import DataBundle, TensorImageDataset
from .loaders import SPLIT_SEED, TEST_FRACTION, stratified_split

log = logging.getLogger(__name__)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VAL_NAMES", "load_imagefolder", "small_image_size", "channel_stats",
           "clear_cache"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Names of the evaluation folder beside ``train/``, first match wins.
VAL_NAMES = ("val", "validation", "test")
#: Images with both sides up to this are "small" (CIFAR 32, Tiny-ImageNet 64, STL-10 96) when they share one size.
SMALL_IMAGE_MAX_SIDE = 96
#: How many training images (evenly spread over the sorted file list, so over the classes) decide the size.
SIZE_PROBE = 16
#: A small-image folder up to this many bytes of uint8 pixels (train + test) is decoded into memory.
IN_MEMORY_MAX_BYTES = 2 * 1024**3
#: Training images sampled to measure mean/std when a small-image folder is read from the files.
STATS_SAMPLE = 5000
_CACHE_ENTRIES = 4
_cache: OrderedDict[tuple, Any] = OrderedDict()


def clear_cache() -> None:
    """Forget the decoded folders and measured statistics kept by this process."""
    _cache.clear()


def load_imagefolder(path: Path, *, input_size: int | None, augment: bool,
                     stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> DataBundle:
    """The bundle of ``PATH/train/<class>/*`` + ``PATH/{val,validation,test}/<class>/*``, or of
    ``PATH/<class>/*`` split 80/20 per class with a fixed seed (see the module docstring). ``stats``
    (mean, std) replaces the folder's default normalization (measured, or ImageNet's)."""
    if not path.is_dir():
        raise DataError(
            f"imagefolder {path} does not exist; expected PATH/train/<class>/<images> (and PATH/val/... or "
            "PATH/test/...), or PATH/<class>/<images>"
        )
    train_dir = path / "train"
    val_dir = next((path / v for v in VAL_NAMES if (path / v).is_dir()), None)
    split: tuple[list[int], list[int]] | None = None
    test = None
    if train_dir.is_dir():
        train = _scan(train_dir)
        if val_dir is not None:
            test = _scan(val_dir)
            if list(test.classes) != list(train.classes):
                raise DataError(f"{val_dir} has classes {test.classes} but {train_dir} has {train.classes}; "
                                "both must contain the same class folders")
        info: dict[str, Any] = {"layout": "train/val" if val_dir is None else f"train/{val_dir.name}"}
    else:
        train = _scan(path)
        split = stratified_split(train.targets)
        info = {"layout": f"single folder, split {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} (seed {SPLIT_SEED})"}
    small = small_image_size([p for p, _ in train.samples])
    if small is None:
        return _resized_bundle(train, test, split, input_size, augment, info, stats)
    return _small_bundle(train, test, split, small, augment, info, size=input_size, stats=stats)


def _scan(root: Path) -> Any:
    """torchvision's ImageFolder over ``root`` (class folders, sorted files); DataError when empty."""
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(
            f"no images found in {root}: {exc}. Expected one sub-folder per class with image files "
            "(.png, .jpg, ...) inside"
        ) from exc


def small_image_size(paths: Sequence[str]) -> tuple[int, int] | None:
    """``(height, width)`` when the folder is a small-image one (see the module docstring), else None."""
    probe = [paths[int(i)] for i in np.unique(np.linspace(0, len(paths) - 1, min(SIZE_PROBE, len(paths))).round())]
    sizes = {_header_size(p) for p in probe}
    if len(sizes) != 1:
        return None
    (h, w), = sizes
    if max(h, w) > SMALL_IMAGE_MAX_SIDE:
        return None
    return h, w


def _header_size(path: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); delete or replace it") from exc
    return int(height), int(width)


# --------------------------------------------------------------------------------------------------
# large or mixed-size images: resized per item, ImageNet statistics
# --------------------------------------------------------------------------------------------------


def _resized_bundle(train: Any, test: Any, split: tuple[list[int], list[int]] | None, input_size: int | None,
                    augment: bool, info: dict[str, Any], stats: Any = None) -> DataBundle:
    from torchvision import transforms

    size = int(input_size or 224)
    resize = int(round(size * 256 / 224))
    mean, std = stats or (IMAGENET_MEAN, IMAGENET_STD)
    normalize = transforms.Normalize(mean, std)
    eval_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(),
                                  normalize])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize]) if augment else eval_tf
    info = {**info, "images": f"resized to {resize}, center-cropped to {size}", "normalization": "ImageNet"}
    if augment:
        info["augment"] = f"random-resized {size}x{size} crop + horizontal flip"
    if split is not None:
        evaluated = copy.copy(train)
        evaluated.transform = eval_tf
        train.transform = train_tf
        train_part: Dataset = Subset(train, split[0])
        test_part: Dataset | None = Subset(evaluated, split[1]) if split[1] else None
    else:
        train.transform = train_tf
        if test is not None:
            test.transform = eval_tf
        train_part, test_part = train, test
    return DataBundle(name="imagefolder", train=train_part, test=test_part, input_shape=(3, size, size),
                      num_classes=len(train.classes), mean=tuple(mean), std=tuple(std),
                      classes=list(train.classes), info=info)


# --------------------------------------------------------------------------------------------------
# small images of one size: at their size, measured statistics, CIFAR augmentation
# --------------------------------------------------------------------------------------------------


def _small_bundle(train: Any, test: Any, split: tuple[list[int], list[int]] | None, hw: tuple[int, int],
                  augment: bool, info: dict[str, Any], size: int | None = None, stats: Any = None) -> DataBundle:
    h, w = hw
    out = (int(size), int(size)) if size else hw  # the model's input: the images' size unless input_size
    resized = out != hw
    count = len(train) + (len(test) if test is not None else 0)
    transform, aug_info = augmentation("imagefolder", augment, out, flip=True)
    train_idx = split[0] if split is not None else list(range(len(train)))
    if count * 3 * h * w <= IN_MEMORY_MAX_BYTES:
        key = _cache_key(train, hw)
        x, y = _decoded(train, hw, key)
        if split is not None:
            x_test, y_test = (x[split[1]], y[split[1]]) if split[1] else (None, None)
            x, y = x[split[0]], y[split[0]]
        else:
            x_test, y_test = _decoded(test, hw) if test is not None else (None, None)
        mean, std = stats or _cached(("stats", len(x), *key), lambda: channel_stats(x))
        per_item = out[0] if resized else None
        train_part: Dataset = TensorImageDataset(x, y, mean=mean, std=std, transform=transform, size=per_item)
        test_part: Dataset | None = (TensorImageDataset(x_test, y_test, mean=mean, std=std, size=per_item)
                                     if x_test is not None and y_test is not None else None)
        storage = f"decoded into memory at {h}x{w} ({count} images, {count * 3 * h * w / 1e6:.0f} MB of uint8)"
    else:
        mean, std = stats or _sampled_stats(train, train_idx, hw)
        train_part, test_part = _streamed(train, test, split, out, mean, std, transform)
        storage = f"read from the files at {h}x{w} ({count} images, over {IN_MEMORY_MAX_BYTES / 1e9:.1f} GB decoded)"
    if resized:
        storage += f", each resized whole to {out[0]}x{out[1]} (input_size; no crop)"
    info = {**info, "images": storage, "normalization": "given (normalize)" if stats else
            f"mean/std measured on {len(train_idx)} training images"
            + ("" if len(train_idx) <= STATS_SAMPLE or count * 3 * h * w <= IN_MEMORY_MAX_BYTES
               else f" (a sample of {STATS_SAMPLE})"), **aug_info}
    log.info("imagefolder: small images, %s; mean %s, std %s", storage, mean, std)
    return DataBundle(name="imagefolder", train=train_part, test=test_part, input_shape=(3, *out),
                      num_classes=len(train.classes), mean=mean, std=std, classes=list(train.classes), info=info,
                      native_shape=(3, h, w))


def channel_stats(data: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images ``N x C x H x W``, in [0, 1] units, to 4 decimals.

    Exact integer sums in numpy (a float pass is 8x slower). A constant channel gets std 1 (normalization
    then only centres it)."""
    array = data.numpy()
    channels = array.shape[1]
    total = np.zeros(channels, np.int64)
    squares = np.zeros(channels, np.int64)
    for start in range(0, len(array), 4096):
        chunk = array[start:start + 4096].reshape(-1, channels, array[0, 0].size)
        total += chunk.sum(axis=(0, 2), dtype=np.int64)
        wide = chunk.astype(np.uint16)
        squares += np.multiply(wide, wide).sum(axis=(0, 2), dtype=np.int64)
    n = array.size // channels
    mean = total / n / 255.0
    std = np.sqrt(np.maximum(squares / n / 255.0**2 - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _cache_key(folder: Any, hw: tuple[int, int]) -> tuple:
    """The folder's files with their sizes and modification times: a changed file is decoded again."""
    files = []
    for path, _ in folder.samples:
        stat = os.stat(path)
        files.append((path, stat.st_size, stat.st_mtime_ns))
    return str(Path(folder.root).resolve()), hw, tuple(files)


def _cached(key: tuple, compute: Any) -> Any:
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    value = compute()
    _cache[key] = value
    while len(_cache) > _CACHE_ENTRIES:
        _cache.popitem(last=False)
    return value


def _decoded(folder: Any, hw: tuple[int, int], key: tuple | None = None) -> tuple[Tensor, Tensor]:
    """All images of ``folder`` as uint8 ``N x 3 x H x W`` and their labels (cached per folder)."""
    def decode() -> tuple[Tensor, Tensor]:
        start = time.perf_counter()
        data = decode_images([p for p, _ in folder.samples], hw)
        log.info("imagefolder: decoded %d images of %s in %.1f s", len(data), folder.root, time.perf_counter() - start)
        return data, torch.as_tensor(folder.targets, dtype=torch.long)

    return _cached(("decoded", *(key or _cache_key(folder, hw))), decode)


def decode_images(paths: Sequence[str], hw: tuple[int, int]) -> Tensor:
    """Decode ``paths`` into one uint8 ``N x 3 x H x W`` tensor; an image of another size is resized to ``hw``
    (with a warning naming the first one)."""
    out = torch.empty((len(paths), 3, *hw), dtype=torch.uint8)
    odd: list[str] = []
    fast = _fast_decoder()
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec) on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, path in enumerate(paths):
            image = _decode(path, fast)
            if tuple(image.shape[1:]) != hw:
                from torchvision.transforms.functional import resize

                odd.append(path)
                image = resize(image, list(hw), antialias=True)
            out[i] = image
    if odd:
        log.warning("imagefolder: %d of %d images are not %dx%d like the others (first: %s); they were resized",
                    len(odd), len(paths), hw[0], hw[1], odd[0])
    return out


def _fast_decoder() -> Any:
    """torchvision's JPEG/PNG decoder (libjpeg-turbo: about 3x faster than PIL here, the same pixels), or None
    where this torchvision has none (it is deprecated since 0.29); PIL takes over then."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:  # pragma: no cover - a future torchvision
        return None

    def decode(path: str) -> Tensor:
        with open(path, "rb") as file:
            data = torch.frombuffer(bytearray(file.read()), dtype=torch.uint8)
        return decode_image(data, mode=ImageReadMode.RGB)

    return decode


def _decode(path: str, fast: Any = None) -> Tensor:
    """One image as uint8 ``3 x H x W``: ``fast`` (:func:`_fast_decoder`) for JPEG/PNG, PIL for the other
    formats and as the fallback."""
    if fast is not None and path.lower().endswith((".jpg", ".jpeg", ".png")):
        try:
            image = fast(path)
            if image.dim() == 3 and image.shape[0] == 3:
                return image
        except (RuntimeError, ValueError):
            pass
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path} cannot be decoded ({exc}); delete or replace it") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _sampled_stats(train: Any, indices: list[int], hw: tuple[int, int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std of up to :data:`STATS_SAMPLE` training images chosen with a fixed seed (cached per folder)."""
    def measure() -> tuple[tuple[float, ...], tuple[float, ...]]:
        chosen = indices
        if len(indices) > STATS_SAMPLE:
            order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(SPLIT_SEED))
            chosen = [indices[i] for i in sorted(order[:STATS_SAMPLE].tolist())]
        return channel_stats(decode_images([train.samples[i][0] for i in chosen], hw))

    return _cached(("sampled stats", len(indices), *_cache_key(train, hw)), measure)


class _PixelsAt:
    """PIL image -> float ``3 x H x W`` in [0, 1] at ``hw`` (resizing only an image of another size)."""

    def __init__(self, hw: tuple[int, int]) -> None:
        self.hw = hw

    def __call__(self, image: Any) -> Tensor:
        from torchvision.transforms.functional import pil_to_tensor, resize

        x = pil_to_tensor(image.convert("RGB"))
        if tuple(x.shape[1:]) != self.hw:
            x = resize(x, list(self.hw), antialias=True)
        return x.float().div_(255.0)


def _streamed(train: Any, test: Any, split: tuple[list[int], list[int]] | None, hw: tuple[int, int],
              mean: tuple[float, ...], std: tuple[float, ...], augment: Any) -> tuple[Dataset, Dataset | None]:
    """A small-image folder too large for memory: read per item at ``hw`` (the images' size, or input_size),
    with the same pixels as the in-memory path."""
    from torchvision import transforms

    normalize = transforms.Normalize(mean, std)
    eval_tf = transforms.Compose([_PixelsAt(hw), normalize])
    train_tf = transforms.Compose([_PixelsAt(hw), augment, normalize]) if augment is not None else eval_tf
    if split is not None:
        evaluated = copy.copy(train)
        evaluated.transform = eval_tf
        train.transform = train_tf
        return Subset(train, split[0]), (Subset(evaluated, split[1]) if split[1] else None)
    train.transform = train_tf
    if test is not None:
        test.transform = eval_tf
    return train, test
