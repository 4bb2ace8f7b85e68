"""The normal data specs on the real shared data (../shared/data, see its README.md): MNIST from its four
gzipped idx files in both layouts users have, and CIFAR-10 as a folder of JPEG files.

Everything is unpacked into pytest's temporary folders; nothing is written beside the shared data. The
default suite uses a stratified CIFAR-10 subset (the first 500 training and 100 test images of every
class) to stay fast on a busy machine; the full 60,000-image load is the ``slow`` test at the end.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import extract_cifar

from compressor.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    MNIST_MEAN,
    MNIST_STD,
    TensorImageDataset,
    load_data,
)
from compressor.data.idx import IDX_FILES
from compressor.data.imagefolder import channel_stats
from compressor.errors import DataError

#: The official MNIST label histograms (digits 0..9), measured on the shared files.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
#: md5 of the uncompressed official t10k-images-idx3-ubyte (the shared README's figure).
MNIST_TEST_IMAGES_MD5 = "2646ac647ad5339dbf082846283269ea"
#: Per-channel mean/std of the JPEG CIFAR-10 vs the usual figures of the original pixels: the lossy
#: re-encoding moves them by at most 0.002 (full training set: mean 0.4913/0.4821/0.4465, std
#: 0.2452/0.2428/0.2606), and the 5,000-image stratified subset adds a standard error of about 0.002
#: (per-image means vary by about 0.12); 0.01 covers both with a wide margin and still catches ImageNet's
#: statistics (0.485/0.456/0.406, off by 0.03 or more) or an unscaled or unmeasured normalization.
CIFAR_STATS_TOLERANCE = 0.01


# ---------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def mnist_roots(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """The shared MNIST files in the layouts users have: flat gz files in ROOT, flat with the test files
    gunzipped, torchvision's ROOT/MNIST/raw with gz files (symlinks), and the shared folder itself."""
    source = shared_data / "mnist" / "MNIST" / "raw"
    base = tmp_path_factory.mktemp("mnist")
    roots = {"flat-gz": base / "flat", "flat-mixed": base / "mixed", "mnist-raw-gz": base / "torchvision",
             "shared": shared_data / "mnist"}
    raw = roots["mnist-raw-gz"] / "MNIST" / "raw"
    for folder in (roots["flat-gz"], roots["flat-mixed"], raw):
        folder.mkdir(parents=True)
    for name in IDX_FILES:
        shutil.copyfile(source / f"{name}.gz", roots["flat-gz"] / f"{name}.gz")
        (raw / f"{name}.gz").symlink_to(source / f"{name}.gz")
        if name.startswith("t10k"):
            (roots["flat-mixed"] / name).write_bytes(gzip.decompress((source / f"{name}.gz").read_bytes()))
        else:
            (roots["flat-mixed"] / f"{name}.gz").symlink_to(source / f"{name}.gz")
    return roots


@pytest.fixture(scope="module")
def mnist(mnist_roots: dict[str, Path]):
    return load_data(f"mnist:{mnist_roots['flat-gz']}")


@pytest.fixture(scope="module")
def cifar_root(cifar_subset_root: Path) -> Path:
    return cifar_subset_root


@pytest.fixture(scope="module")
def cifar(cifar_root: Path):
    return load_data(f"imagefolder:{cifar_root}")


# ---------------------------------------------------------------------------------------- the shared folder

def test_a_missing_shared_folder_skips_with_its_location(tmp_path: Path) -> None:
    from conftest import shared_data_or_skip

    with pytest.raises(pytest.skip.Exception, match=r"real data not available: .*nowhere.*DEMP_SHARED_DATA"):
        shared_data_or_skip(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------- MNIST

def test_mnist_from_the_shared_gz_files(mnist) -> None:
    assert (len(mnist.train), len(mnist.test)) == (60000, 10000)
    assert mnist.input_shape == mnist.native_shape == (1, 28, 28) and mnist.num_classes == 10
    assert mnist.train.data.shape == (60000, 1, 28, 28) and mnist.train.data.dtype == torch.uint8
    assert torch.bincount(mnist.test.targets).tolist() == MNIST_TEST_COUNTS
    assert torch.bincount(mnist.train.targets).tolist() == MNIST_TRAIN_COUNTS
    # the pixels are the official test images, byte for byte
    header = struct.pack(">IIII", 2051, 10000, 28, 28)
    assert hashlib.md5(header + mnist.test.data.numpy().tobytes()).hexdigest() == MNIST_TEST_IMAGES_MD5
    # the standard normalization constants are the training pixels' own statistics
    pixels = mnist.train.data.double() / 255
    assert abs(float(pixels.mean()) - MNIST_MEAN[0]) < 5e-4 and abs(float(pixels.std()) - MNIST_STD[0]) < 5e-4
    x, y = mnist.test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 7  # the famous first test digit
    assert torch.allclose(x, (mnist.test.data[0].float() / 255 - MNIST_MEAN[0]) / MNIST_STD[0])


@pytest.mark.parametrize("layout", ["flat-mixed", "mnist-raw-gz", "shared"])
def test_mnist_layouts_give_the_same_data(mnist, mnist_roots: dict[str, Path], layout: str) -> None:
    other = load_data(f"mnist:{mnist_roots[layout]}")
    assert torch.equal(other.train.data, mnist.train.data) and torch.equal(other.test.data, mnist.test.data)
    assert torch.equal(other.train.targets, mnist.train.targets) and torch.equal(other.test.targets, mnist.test.targets)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("target,source,damage,message", [
    ("train-images-idx3-ubyte.gz", None, _truncated,
     r"train-images-idx3-ubyte\.gz is not a valid idx file: it cannot be read or decompressed"),
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", None,
     r"train-images-idx3-ubyte\.gz .*expected magic 2051"),
    ("t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", None,
     r"t10k-images-idx3-ubyte\.gz has 10000 images but .*t10k-labels-idx1-ubyte\.gz has 60000 labels"),
    ("t10k-images-idx3-ubyte.gz", None, lambda d: gzip.compress(gzip.decompress(d)[:-100], compresslevel=1),
     r"t10k-images-idx3-ubyte\.gz .*header says 10000 x 28 x 28 values .*truncated or corrupt"),
], ids=["truncated-gzip", "labels-as-images", "label-count", "short-data"])
def test_a_corrupt_mnist_file_is_a_data_error(mnist_roots: dict[str, Path], tmp_path: Path, target: str,
                                              source: str | None, damage, message: str) -> None:
    flat = mnist_roots["flat-gz"]
    for name in IDX_FILES:
        (tmp_path / f"{name}.gz").symlink_to(flat / f"{name}.gz")
    (tmp_path / target).unlink()
    data = (flat / (source or target)).read_bytes()
    (tmp_path / target).write_bytes(damage(data) if damage else data)
    with pytest.raises(DataError, match=message) as info:
        load_data(f"mnist:{tmp_path}")
    assert "fetch the mnist files again" in str(info.value)


def test_missing_mnist_files_name_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError,
                       match=r"MNIST/raw/ \(or ROOT itself\) with train-images-idx3-ubyte.*\.gz.*never downloads"):
        load_data(f"mnist:{tmp_path}")


# ---------------------------------------------------------------------------------------- CIFAR-10 image folder

def test_cifar_folder_is_decoded_into_memory_at_32(cifar) -> None:
    assert (len(cifar.train), len(cifar.test)) == (5000, 1000)
    assert cifar.input_shape == cifar.native_shape == (3, 32, 32) and cifar.num_classes == 10
    assert cifar.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert isinstance(cifar.train, TensorImageDataset) and cifar.train.data.dtype == torch.uint8
    assert cifar.info["layout"] == "train/test" and "decoded into memory at 32x32" in cifar.info["images"]
    assert torch.bincount(cifar.test.targets).tolist() == [100] * 10


def test_cifar_mean_and_std_are_measured_on_the_training_images(cifar) -> None:
    assert np.allclose(cifar.mean, CIFAR10_MEAN, atol=CIFAR_STATS_TOLERANCE, rtol=0), cifar.mean
    assert np.allclose(cifar.std, CIFAR10_STD, atol=CIFAR_STATS_TOLERANCE, rtol=0), cifar.std
    pixels = cifar.train.data.double().div_(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(cifar.mean, pixels.mean(1).numpy(), atol=6e-5, rtol=0)  # rounded to 4 decimals
    assert np.allclose(cifar.std, pixels.std(1).numpy(), atol=6e-5, rtol=0)
    assert channel_stats(cifar.train.data) == (cifar.mean, cifar.std)
    assert "measured on 5000 training images" in cifar.info["normalization"]


def test_cifar_evaluation_keeps_the_32x32_pixels(cifar, cifar_root: Path) -> None:
    """A test image is the JPEG as PIL decodes it, normalized with the bundle's statistics: no resize, no crop."""
    from PIL import Image

    files = sorted((cifar_root / "test").glob("*/*.jpg"))
    mean = torch.tensor(cifar.mean).view(3, 1, 1)
    std = torch.tensor(cifar.std).view(3, 1, 1)
    for index in (0, 437, 999):
        x, y = cifar.test[index]
        with Image.open(files[index]) as image:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
        assert x.shape == (3, 32, 32) and y == cifar.classes.index(files[index].parent.name)
        # the decoders agree to the last bit here; allow one grey level for another libjpeg build
        assert float((x * std + mean - pixels).abs().max()) <= 1 / 255 + 1e-5
        assert torch.allclose(x, (pixels - mean) / std, atol=1.5 / 255 / 0.24, rtol=0)


def test_cifar_training_augmentation_is_crop_and_flip(cifar_root: Path, cifar) -> None:
    augmented = load_data(f"imagefolder:{cifar_root}", augment=True)
    assert augmented.info["augment"] == "random 32x32 crop with 4-pixel padding + horizontal flip"
    assert augmented.train.data is cifar.train.data  # decoded once per process, shared by both loads
    assert (augmented.mean, augmented.std) == (cifar.mean, cifar.std)
    assert torch.equal(augmented.test[3][0], cifar.test[3][0])  # the test split is never augmented
    mean = torch.tensor(cifar.mean).view(3, 1, 1)
    std = torch.tensor(cifar.std).view(3, 1, 1)
    plain = torch.nn.functional.pad(cifar.train.data[11].float() / 255, (4, 4, 4, 4))
    candidates = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)]
    views = []
    for seed in range(6):
        torch.manual_seed(seed)
        view = augmented.train[11][0] * std + mean
        assert view.shape == (3, 32, 32)
        matches = [c for c in candidates
                   if torch.allclose(view, (lambda crop: crop.flip(-1) if c[2] else crop)(
                       plain[:, c[0]:c[0] + 32, c[1]:c[1] + 32]), atol=1e-5)]
        assert matches, "an augmented view is not a padded crop (+ flip) of the 32x32 image"
        views.append(view)
    assert any(not torch.equal(views[0], v) for v in views[1:]), "the views do not vary"


def test_cifar_at_another_input_size_is_resized_whole_with_its_own_statistics(cifar_root: Path, cifar) -> None:
    """VGG-16 at 64 on CIFAR (paper 000, J.2): each 32x32 image resized whole to 64 (no crop), the measured
    statistics (not ImageNet's), and the CIFAR crop + flip at 64 (8-pixel padding) for training."""
    from torchvision.transforms.functional import resize

    bundle = load_data(f"imagefolder:{cifar_root}", input_size=64)
    assert bundle.mean == cifar.mean and bundle.mean != IMAGENET_MEAN
    assert bundle.native_shape == (3, 32, 32) and bundle.input_shape == (3, 64, 64)
    x, y = bundle.test[0]
    pixels = resize(cifar.test.data[0].float() / 255, [64, 64], antialias=True)
    expected = (pixels - torch.tensor(cifar.mean).view(3, 1, 1)) / torch.tensor(cifar.std).view(3, 1, 1)
    assert x.shape == (3, 64, 64) and y == cifar.test[0][1] and torch.allclose(x, expected, atol=1e-5)
    augmented = load_data(f"imagefolder:{cifar_root}", input_size=64, augment=True)
    assert "random 64x64 crop with 8-pixel padding" in augmented.info["augment"]
    assert augmented.train[0][0].shape == (3, 64, 64)


@pytest.mark.slow
def test_the_full_cifar10_folder(shared_data: Path, tmp_path: Path) -> None:
    """All 60,000 JPEGs: counts, measured statistics within 0.003 of the usual figures, and the load time."""
    root = extract_cifar(shared_data, tmp_path, subset=False)
    start = time.perf_counter()
    bundle = load_data(f"imagefolder:{root}")
    seconds = time.perf_counter() - start
    print(f"full CIFAR-10 image folder loaded in {seconds:.1f} s; mean {bundle.mean}, std {bundle.std}")
    assert (len(bundle.train), len(bundle.test)) == (50000, 10000)
    assert torch.bincount(bundle.train.targets).tolist() == [5000] * 10
    assert np.allclose(bundle.mean, CIFAR10_MEAN, atol=0.003, rtol=0)
    assert np.allclose(bundle.std, CIFAR10_STD, atol=0.003, rtol=0)


# ---------------------------------------------------------------------------------------- train and prune

def _write_mnist_subset(source: Path, dest: Path, train: int, test: int) -> Path:
    """The first ``train`` / ``test`` real images and labels of the shared gz files, as gz idx files in ``dest``."""
    dest.mkdir(parents=True)
    for name in IDX_FILES:
        raw = gzip.decompress((source / f"{name}.gz").read_bytes())
        n = train if name.startswith("train") else test
        dims = 3 if "images" in name else 1
        magic, count, *shape = struct.unpack(f">{1 + dims}I", raw[:4 * (1 + dims)])
        item = int(np.prod(shape)) if shape else 1
        body = raw[4 * (1 + dims): 4 * (1 + dims) + n * item]
        (dest / f"{name}.gz").write_bytes(gzip.compress(struct.pack(f">{1 + dims}I", magic, n, *shape) + body))
    return dest


def test_demp_train_on_real_mnist_reaches_its_target_and_exports(shared_data: Path, tmp_path: Path, capsys) -> None:
    """`demp train` with the MNIST recipe's budget mode on 4,000 real training images: lands at the asked
    neuron sparsity (within 0.03) and exports a compact ONNX model that computes what the model computes."""
    from compressor.cli import main

    root = _write_mnist_subset(shared_data / "mnist" / "MNIST" / "raw", tmp_path / "mnist", train=4000, test=1000)
    out = tmp_path / "run"
    recipe = Path(__file__).resolve().parents[1] / "samples" / "recipes" / "demp-cnn-mnist.yaml"
    code = main(["train", "--recipe", str(recipe), "--data", f"mnist:{root}", "--out", str(out), "--no-progress",
                 "--set", "demp.target_sparsity=0.5", "--set", "demp.interval=5", "--set", "demp.death_samples=512",
                 "--set", "export.latency=false"])
    assert code == 0
    summary = json.loads((out / "train_summary.json").read_text())
    budget = summary["methods"][0]["budget"]
    assert abs(summary["neuron_sparsity"] - 0.5) <= 0.03, budget
    # 62 steps are too few for lambda to kill (the deadline at step 35 does the work; 74% measured): the
    # model still classifies after the cut, far above chance
    assert budget["reached_step"] is not None and summary["test_accuracy"] > 0.5
    assert "budget (beyond the papers): 50.0% of the neurons asked" in capsys.readouterr().out

    import onnxruntime as ort

    from compressor.data import load_data
    from compressor.pruned import load_pruned

    x = torch.stack([load_data(f"mnist:{root}").test[i][0] for i in range(32)])
    session = ort.InferenceSession(str(out / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, load_pruned(out / "model")(x).numpy(), rtol=1e-4, atol=1e-4)
