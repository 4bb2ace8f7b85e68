"""Dataset specs, calibration splits and loaders, on real files written into tmp_path."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.data import (
    CIFAR10_MEAN,
    IMAGENET_MEAN,
    MNIST_MEAN,
    MNIST_STD,
    calibration_split,
    load_data,
    make_loader,
    stratified_split,
)
from compressor.errors import DataError, UsageError


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _all(dataset) -> tuple[torch.Tensor, list[int]]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), [y for _, y in items]


# ---------------------------------------------------------------------------------------- digits

def test_digits_shapes_and_normalization(digits) -> None:
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.train) + len(digits.test) == 1797
    assert abs(len(digits.test) / 1797 - 0.2) < 0.01
    x, y = digits.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and isinstance(y, int)
    xs, ys = _all(digits.train)
    assert abs(float(xs.mean())) < 1e-4 and abs(float(xs.std()) - 1) < 1e-3
    # stratified: every class is ~20% test
    _, test_y = _all(digits.test)
    for cls in range(10):
        share = test_y.count(cls) / (test_y.count(cls) + ys.count(cls))
        assert 0.17 < share < 0.23


def test_digits_split_is_deterministic(digits) -> None:
    again = load_data("digits")
    assert torch.equal(digits.test.data, again.test.data) and torch.equal(digits.test.targets, again.test.targets)
    assert not torch.equal(digits.train.data[: len(digits.test)], digits.test.data)


def test_digits_input_size_resizes() -> None:
    bundle = load_data("digits", input_size=16)
    assert bundle.input_shape == (1, 16, 16) and bundle.train[0][0].shape == (1, 16, 16)


def test_stratified_split_small_classes() -> None:
    train, test = stratified_split([0, 0, 0, 0, 0, 1, 1, 2])
    assert sorted(train + test) == list(range(8)) and not set(train) & set(test)
    assert 7 in train  # a single-sample class stays in train
    assert stratified_split([0, 0, 0, 0, 0, 1, 1, 2]) == (train, test)


def test_unknown_spec_lists_valid_forms() -> None:
    with pytest.raises(UsageError,
                       match=r"unknown dataset spec 'imagenet:/x'; did you mean imagefolder:/x\?; valid forms: digits, "
                             r"mnist:ROOT"):
        load_data("imagenet:/x")
    with pytest.raises(UsageError, match="needs a path: cifar10:ROOT"):
        load_data("cifar10")
    with pytest.raises(UsageError, match="takes no argument"):
        load_data("digits:/tmp")


# ---------------------------------------------------------------------------------------- splits/loaders

def test_calibration_split_is_deterministic_and_disjoint(digits) -> None:
    calib, held = calibration_split(digits.train, samples=300, heldout=100, seed=3)
    assert len(calib) == 300 and len(held) == 100
    assert not set(calib.indices) & set(held.indices)
    again = calibration_split(digits.train, samples=300, heldout=100, seed=3)
    assert calib.indices == again[0].indices and held.indices == again[1].indices
    other = calibration_split(digits.train, samples=300, heldout=100, seed=4)
    assert calib.indices != other[0].indices


def test_calibration_is_honoured_first_and_the_held_out_check_gets_what_is_left(digits, caplog) -> None:
    small = torch.utils.data.Subset(digits.train, list(range(60)))
    with caplog.at_level(logging.WARNING, logger="compressor.data"):
        calib, held = calibration_split(small, samples=48, heldout=256)
    assert (len(calib), len(held)) == (48, 12) and not set(calib.indices) & set(held.indices)
    assert "using 48 + 12" in caplog.text and "only 48 calibration samples" in caplog.text
    calib, held = calibration_split(small, samples=60, heldout=256)
    assert (len(calib), len(held)) == (60, 0), "nothing left: no held-out check (the caller reports it)"
    calib, held = calibration_split(torch.utils.data.Subset(digits.train, list(range(8))), samples=1024)
    assert (len(calib), len(held)) == (8, 0), "a set smaller than a batch is legal"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compressor.data"):
        calib, held = calibration_split(digits.train, samples=300, heldout=100)
    assert (len(calib), len(held)) == (300, 100) and caplog.text == ""


def test_an_empty_dataset_or_a_bad_request_is_an_error(digits) -> None:
    with pytest.raises(DataError, match="empty"):
        calibration_split(torch.utils.data.Subset(digits.train, []), samples=8, heldout=0)
    with pytest.raises(UsageError):
        calibration_split(digits.train, samples=0, heldout=8)
    with pytest.raises(UsageError):
        calibration_split(digits.train, samples=8, heldout=-1)


def test_make_loader_is_reproducible(digits) -> None:
    def order(seed: int) -> list[int]:
        return [y for _, ys in make_loader(digits.train, batch_size=100, shuffle=True, seed=seed) for y in ys.tolist()]

    assert order(1) == order(1)
    assert order(1) != order(2)
    x, y = next(iter(make_loader(digits.test, batch_size=32)))
    assert x.shape == (32, 1, 8, 8) and y.dtype == torch.int64
    assert len(make_loader(digits.test, batch_size=100, drop_last=True)) == len(digits.test) // 100


# ---------------------------------------------------------------------------------------- npz

def test_npz_float_nchw_with_test_split(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(20, 3, 6, 6)).astype(np.float32)
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:5], y_test=y[:5])
    bundle = load_data(f"npz:{tmp_path / 'd.npz'}")
    assert bundle.input_shape == (3, 6, 6) and bundle.num_classes == 4 and len(bundle.test) == 5
    assert bundle.mean == () and bundle.std == ()
    assert torch.equal(bundle.train[3][0], torch.from_numpy(x[3])) and bundle.train[3][1] == 3


def test_npz_uint8_nhwc_is_scaled_and_transposed(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, size=(10, 5, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "u.npz", x=x, y=np.zeros(10, dtype=np.int64), mean=np.array([0.5, 0.5, 0.5]),
             std=np.array([0.25, 0.25, 0.25]))
    bundle = load_data(f"npz:{tmp_path / 'u.npz'}")
    assert bundle.input_shape == (3, 5, 7) and bundle.test is None
    expected = (torch.from_numpy(x[2]).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert torch.allclose(bundle.train[2][0], expected)


def _views(dataset, n: int = 8) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [dataset[0][0] for _ in range(n)]


RECIPES = sorted((Path(__file__).resolve().parents[1] / "samples" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", [r for r in RECIPES if "cifar10" in r.name], ids=lambda p: p.stem)
def test_augmentation_follows_the_recipe_at_any_input_size(tmp_path: Path, recipe: Path) -> None:
    """A CIFAR recipe asking for augmentation gets it at its input size (the VGG-16 recipes resize 32 -> 64,
    paper 000 appendix J.2): a random crop with side/8 padding and a flip, never silently dropped."""
    from compressor.training.config import load_recipe

    r = load_recipe(recipe)
    assert r.train.augment
    x = np.random.default_rng(2).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(4), x_test=x, y_test=np.arange(4))
    bundle = load_data(f"npz:{tmp_path / 'c.npz'}", input_size=r.data.input_size, augment=True)
    side = r.data.input_size or 32
    views = _views(bundle.train)
    assert all(v.shape == (3, side, side) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    assert bundle.info["augment"] == f"random {side}x{side} crop with {side // 8}-pixel padding + horizontal flip"
    assert all(torch.equal(v, bundle.test[0][0]) for v in _views(bundle.test, 3))  # the test split: never
    assert any(type(t).__name__ == "RandomHorizontalFlip" for t in bundle.train.transform.transforms)


def test_digits_augmentation_shifts_but_never_mirrors() -> None:
    bundle = load_data("digits", augment=True)
    assert bundle.info["augment"] == "random 8x8 crop with 1-pixel padding"
    views = _views(bundle.train, 16)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    plain = load_data("digits").train[0][0]
    assert not any(torch.equal(v, plain.flip(-1)) and not torch.equal(v, plain) for v in views)
    from torchvision.transforms import RandomCrop, RandomHorizontalFlip

    steps = [type(t) for t in bundle.train.transform.transforms]
    assert steps == [RandomCrop] and RandomHorizontalFlip not in steps
    assert "augment" not in load_data("digits").info


def test_npz_uint8_grayscale_and_unlabeled(tmp_path: Path) -> None:
    x = np.full((4, 8, 8), 255, dtype=np.uint8)
    np.savez(tmp_path / "g.npz", x=x)
    bundle = load_data(f"npz:{tmp_path / 'g.npz'}")
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 0
    x0, y0 = bundle.train[0]
    assert torch.equal(x0, torch.ones(1, 8, 8)) and y0 == -1


def test_npz_cifar_style_augmentation(tmp_path: Path) -> None:
    x = np.random.default_rng(2).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(6), x_test=x, y_test=np.arange(6))
    bundle = load_data(f"npz:{tmp_path / 'c.npz'}", augment=True)
    torch.manual_seed(0)
    views = [bundle.train[0][0] for _ in range(8)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])  # random crops/flips differ
    assert torch.equal(bundle.test[0][0], bundle.test[0][0])  # the test split is never augmented
    assert torch.equal(bundle.test[0][0], load_data(f"npz:{tmp_path / 'c.npz'}").train[0][0])


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"images": np.zeros((2, 1, 4, 4), np.float32)}, "no array 'x' \\(found: images\\)"),
        ({"x": np.zeros((2, 1, 4, 4), np.int32)}, "dtype int32"),
        ({"x": np.zeros((2, 4, 4, 5), np.uint8)}, "channels last"),
        ({"x": np.zeros((5,), np.float32)}, "must be N x C x H x W"),
        ({"x": np.zeros((0, 1, 4, 4), np.float32)}, "empty"),
        ({"x": np.full((2, 1, 4, 4), np.nan, np.float32)}, "NaN"),
        ({"x": np.zeros((3, 1, 4, 4), np.float32), "y": np.zeros(2, np.int64)}, "1-D array of 3"),
        ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.zeros(2, np.float32)}, "integer array"),
        ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.array([0, -1])}, ">= 0"),
        ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.zeros(2, np.int64),
          "x_test": np.zeros((2, 1, 5, 5), np.float32), "y_test": np.zeros(2, np.int64)}, "x_test samples"),
        ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.zeros(2, np.int64),
          "x_test": np.zeros((2, 1, 4, 4), np.float32)}, "without y_test"),
        ({"x": np.zeros((2, 3, 4, 4), np.float32), "mean": np.zeros(2), "std": np.ones(2)},
         "2 values but the data has 3"),
    ],
)
def test_npz_bad_arrays(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_object_arrays_and_garbage_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="no object arrays"):
        load_data(f"npz:{tmp_path / 'obj.npz'}")
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"npz:{tmp_path / 'missing.npz'}")


# ---------------------------------------------------------------------------------------- torchvision datasets

def test_missing_cifar_root_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*never downloads.*download=True"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(DataError, match="cifar-100-python"):
        load_data(f"cifar100:{tmp_path / 'nowhere'}")


def test_corrupt_cifar_folder(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"junk")
    with pytest.raises(DataError, match="incomplete or corrupt"):
        load_data(f"cifar10:{tmp_path}")


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim  # unsigned byte data
    path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.mark.parametrize("spec,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_from_idx_files(tmp_path: Path, spec: str, folder: str) -> None:
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 4)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    bundle = load_data(f"{spec}:{tmp_path}")
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (12, 4, (1, 28, 28))
    x, y = bundle.train[5]
    assert y == 5 and x.shape == (1, 28, 28)
    images = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(12, 28, 28)
    if spec == "mnist":
        expected = (torch.from_numpy(images[5].copy()).float() / 255 - MNIST_MEAN[0]) / MNIST_STD[0]
        assert torch.allclose(x[0], expected)
    # pointing at ROOT/MNIST itself also works
    assert len(load_data(f"{spec}:{tmp_path / folder}").train) == 12


def test_missing_mnist_files(tmp_path: Path) -> None:
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match=r"MNIST/raw/.*missing: train-labels-idx1-ubyte.*never downloads"):
        load_data(f"mnist:{tmp_path}")


# ---------------------------------------------------------------------------------------- imagefolder

def test_imagefolder_train_val_layout(tmp_path: Path, write_pngs) -> None:
    write_pngs(tmp_path / "train", {"cat": 3, "dog": 2})
    write_pngs(tmp_path / "val", {"cat": 1, "dog": 1}, seed=1)
    bundle = load_data(f"imagefolder:{tmp_path}", input_size=32)
    assert bundle.classes == ["cat", "dog"] and bundle.num_classes == 2
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (5, 2, (3, 32, 32))
    x, y = bundle.test[1]
    assert x.shape == (3, 32, 32) and y == 1 and x.dtype == torch.float32
    # small images of one size (12x14) at another input size: resized whole, the folder's own statistics
    assert bundle.native_shape == (3, 12, 14) and bundle.mean != IMAGENET_MEAN
    assert "resized whole to 32x32" in bundle.info["images"]
    assert float(x.min()) < 0  # normalized, not [0, 1]


@pytest.mark.parametrize("layout", ["small images, in memory", "mixed sizes, resized"])
def test_imagefolder_takes_the_given_mean_and_std(tmp_path: Path, write_pngs, layout: str) -> None:
    """``--normalize M/S`` (data.normalize) reaches image folders as it does every other data set."""
    if layout.startswith("small"):
        write_pngs(tmp_path, {"a": 4, "b": 4})
    else:
        write_pngs(tmp_path / "train", {"a": 3, "b": 3}, size=10)
        write_pngs(tmp_path / "train", {"c": 3}, size=20)
        write_pngs(tmp_path / "test", {"a": 1, "b": 1, "c": 1}, size=10)
    mean, std = (0.5, 0.25, 0.75), (0.5, 0.25, 0.125)
    given = load_data(f"imagefolder:{tmp_path}", normalize="0.5,0.25,0.75/0.5,0.25,0.125")
    raw = load_data(f"imagefolder:{tmp_path}", normalize="0,0,0/1,1,1")  # pixels in [0, 1]
    assert (given.mean, given.std) == (mean, std) and "normalize=0.5,0.25,0.75" in given.info["normalization"]
    x, pixels = _all(given.test)[0], _all(raw.test)[0]
    expected = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


def test_a_misspelt_data_set_name_gets_a_did_you_mean() -> None:
    for spec, hint in (("minst:/data/mnist", "mnist:/data/mnist"), ("cifar-10:/d", "cifar10:/d"), ("digit", "digits"),
                       ("imagefoldr:/p", "imagefolder:/p"), ("mnst", "mnist:ROOT")):
        with pytest.raises(UsageError, match=f"did you mean {hint}\\?"):
            load_data(spec)


def test_imagefolder_single_folder_split_and_augment(tmp_path: Path, write_pngs) -> None:
    write_pngs(tmp_path, {"a": 5, "b": 5, "c": 5})
    plain = load_data(f"imagefolder:{tmp_path}", input_size=16)
    assert (len(plain.train), len(plain.test)) == (12, 3)
    assert sorted(plain.test[i][1] for i in range(3)) == [0, 1, 2]  # stratified
    again = load_data(f"imagefolder:{tmp_path}", input_size=16)
    assert torch.equal(plain.test.data, again.test.data) and torch.equal(plain.test.targets, again.test.targets)
    augmented = load_data(f"imagefolder:{tmp_path}", input_size=16, augment=True)
    assert augmented.train[0][0].shape == (3, 16, 16)
    assert torch.equal(augmented.test[0][0], plain.test[0][0])  # test split not augmented


def test_imagefolder_errors(tmp_path: Path, write_pngs) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'none'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_data(f"imagefolder:{tmp_path / 'empty'}")
    write_pngs(tmp_path / "mixed" / "train", {"a": 2, "b": 2})
    write_pngs(tmp_path / "mixed" / "val", {"a": 1, "c": 1})
    with pytest.raises(DataError, match="same class folders"):
        load_data(f"imagefolder:{tmp_path / 'mixed'}")


def test_small_images_stay_at_their_size_with_measured_statistics(tmp_path: Path, write_pngs, monkeypatch) -> None:
    """Images of one small size (12x14 here) with no input_size: decoded into memory at that size, normalized
    with the training split's own mean/std; read from the files (over the memory limit) gives the same items."""
    from PIL import Image

    from compressor.data import TensorImageDataset, imagefolder

    write_pngs(tmp_path, {"a": 5, "b": 5, "c": 5})
    bundle = load_data(f"imagefolder:{tmp_path}", augment=True)
    assert bundle.input_shape == bundle.native_shape == (3, 12, 14)
    assert isinstance(bundle.train, TensorImageDataset) and (len(bundle.train), len(bundle.test)) == (12, 3)
    assert sorted(bundle.test.targets.tolist()) == [0, 1, 2]  # the same stratified split as large images
    assert bundle.info["augment"] == "random 12x14 crop with 2-pixel padding + horizontal flip"
    pixels = bundle.train.data.double() / 255
    assert np.allclose(bundle.mean, pixels.mean(dim=(0, 2, 3)), atol=6e-5) and bundle.mean != IMAGENET_MEAN
    assert bundle.train.data.shape[1:] == (3, 12, 14) and Image.open(tmp_path / "a" / "img0.png").size == (14, 12)

    monkeypatch.setattr(imagefolder, "IN_MEMORY_MAX_BYTES", 0)
    streamed = load_data(f"imagefolder:{tmp_path}", augment=True)
    assert not isinstance(streamed.train, TensorImageDataset) and "read from the files" in streamed.info["images"]
    assert (streamed.mean, streamed.std, streamed.input_shape) == (bundle.mean, bundle.std, bundle.input_shape)
    for i in range(3):
        assert torch.equal(streamed.test[i][0], bundle.test[i][0]) and streamed.test[i][1] == bundle.test[i][1]
    torch.manual_seed(1)
    a = bundle.train[4][0]
    torch.manual_seed(1)
    assert torch.allclose(streamed.train[4][0], a, atol=1e-6)  # the same crop + flip, in the same order


def test_mixed_size_images_are_resized_with_imagenet_statistics(tmp_path: Path, write_pngs) -> None:
    write_pngs(tmp_path / "same", {"a": 2, "b": 2})
    other = load_data(f"imagefolder:{tmp_path / 'same'}", input_size=12)  # one small size (12x14): resized whole
    assert other.mean != IMAGENET_MEAN and other.input_shape == (3, 12, 12) and other.test[0][0].shape == (3, 12, 12)
    assert load_data(f"imagefolder:{tmp_path / 'same'}").mean == other.mean
    write_pngs(tmp_path / "mixed" / "train", {"a": 2, "b": 2}, size=10)
    write_pngs(tmp_path / "mixed" / "train", {"c": 2}, size=20)
    write_pngs(tmp_path / "mixed" / "test", {"a": 1, "b": 1, "c": 1}, size=10)
    bundle = load_data(f"imagefolder:{tmp_path / 'mixed'}")
    assert bundle.mean == IMAGENET_MEAN and bundle.native_shape is None and bundle.input_shape == (3, 224, 224)
    assert bundle.info["layout"] == "train/test" and len(bundle.test) == 3


def test_an_odd_small_image_is_resized_and_a_broken_one_named(tmp_path: Path, write_pngs, monkeypatch, caplog) -> None:
    from PIL import Image

    from compressor.data import imagefolder

    monkeypatch.setattr(imagefolder, "SIZE_PROBE", 1)  # only the first image decides
    write_pngs(tmp_path / "train", {"a": 3, "b": 3})
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "train" / "b" / "img1.png")
    with caplog.at_level(logging.WARNING, logger="compressor.data"):
        bundle = load_data(f"imagefolder:{tmp_path}")
    assert bundle.input_shape == (3, 12, 14) and bundle.train.data.shape == (6, 3, 12, 14)
    assert "1 of 6 images are not 12x14" in caplog.text and "img1.png" in caplog.text
    (tmp_path / "train" / "a" / "img2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"img2\.png cannot be decoded"):
        load_data(f"imagefolder:{tmp_path}")


def test_cifar_mean_constant_is_standard() -> None:
    assert CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)


def test_stack_samples_gives_inputs_and_class_labels_only_when_they_are_classes() -> None:
    """The held-out split in one piece: labels for an accuracy only when they are class indices."""
    from torch.utils.data import TensorDataset

    from compressor.data import stack_samples

    x = torch.arange(6.0).reshape(3, 2)
    inputs, labels = stack_samples(TensorDataset(x, torch.tensor([2, 0, 1])))
    assert torch.equal(inputs, x) and labels.tolist() == [2, 0, 1]
    assert stack_samples(TensorDataset(x, torch.tensor([0.5, 1.0, 2.0])))[1] is None  # regression targets
    assert stack_samples(TensorDataset(x, torch.zeros(3, 4)))[1] is None  # one target vector per sample
    assert stack_samples([(x[0],), (x[1],)])[1] is None  # unlabelled
    assert stack_samples([]) == (None, None)
