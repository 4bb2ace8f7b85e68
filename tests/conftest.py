"""Shared pytest fixtures (kept small): deterministic torch RNG, a few file writers, the shared real data."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state, so fresh model weights are reproducible."""
    torch.manual_seed(0)


@pytest.fixture
def write_pngs():
    """``write_pngs(root, {"cat": 3, "dog": 2}, size=12)`` writes tiny random RGB PNGs per class folder."""
    from PIL import Image

    def write(root: Path, counts: dict[str, int], size: int = 12, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        for cls, count in counts.items():
            folder = Path(root) / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size, size + 2, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.png")
        return Path(root)

    return write


@pytest.fixture(scope="session")
def planted_checkpoint(tmp_path_factory) -> Path:
    """A digits CNN (random init) with half of every prunable group's channels planted dead, saved as a
    plain state dict: something real for `demp compress` to remove."""
    import compressor
    from compressor.graph import DependencyAnalyzer
    from compressor.planting import plant_dead_channels

    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, (1, 8, 8))).eval()
    plant_dead_channels(model, DependencyAnalyzer(model, torch.zeros(1, 1, 8, 8)), fraction=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "cnn.pt"
    torch.save(model.state_dict(), path)
    return path


#: The read-only real data beside the checkout (CI has it; see its README.md); DEMP_SHARED_DATA overrides.
SHARED_DATA = Path(os.environ.get("DEMP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_data_or_skip(path: Path = SHARED_DATA) -> Path:
    """``path`` if it holds the shared data, else skip the test saying what is missing and where."""
    if not (path / "README.md").is_file():
        pytest.skip(f"real data not available: {path} (the read-only shared data folder beside the checkout, "
                    "../shared/data; CI has it) is missing; set DEMP_SHARED_DATA to its location to run these tests")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder (MNIST idx files, CIFAR-10 JPEG archive, weights), or a skip."""
    return shared_data_or_skip()


def extract_cifar(shared_data: Path, dest: Path, subset: bool) -> Path:
    """Unpack the shared CIFAR-10 JPEG archive into ``dest`` and return ``dest/cifar10-jpg``; ``subset``: only
    the first 500 training and 100 test files of every class (they are numbered 0000.jpg, 0001.jpg, ...)."""
    archive = shared_data / "cifar10-jpg.tar.gz"
    patterns = ["cifar10-jpg/train/*/0[0-4][0-9][0-9].jpg", "cifar10-jpg/test/*/00[0-9][0-9].jpg"] if subset else []
    tar = shutil.which("tar")
    # GNU tar needs half the time of Python's tarfile here (which parses all 60,000 headers in Python)
    if tar is None or subprocess.run([tar, "xzf", str(archive), "-C", str(dest), *(["--wildcards", *patterns] if subset
                                      else [])], capture_output=True).returncode != 0:
        with tarfile.open(archive) as opened:
            members = [m for m in opened
                       if not subset or not m.isfile() or any(fnmatch.fnmatch(m.name, p) for p in patterns)]
            opened.extractall(dest, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest / "cifar10-jpg"


@pytest.fixture(scope="session")
def cifar_subset_root(shared_data: Path, tmp_path_factory) -> Path:
    """The stratified CIFAR-10 JPEG subset (500 training and 100 test images per class) unpacked once per
    session into pytest's temporary folder: ``imagefolder:`` it. Read it, never write into it."""
    return extract_cifar(shared_data, tmp_path_factory.mktemp("cifar"), subset=True)
