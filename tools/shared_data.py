"""The real data of ``../shared/data`` for the benchmark tools: unpacked into a temporary or cache folder
the caller gives (never into the repository), and the command-line arguments that load the real
checkpoints. One place for what every tool needs; see ``../shared/data/README.md`` for the files."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

#: A ``--model-file`` for ``weights/mnist-cnn-ccexam.pth`` (the architecture its README gives); the
#: checkpoint's keys load into it as they are.
MNIST_CNN_FILE = '''"""The real MNIST CNN of ../shared/data/weights/mnist-cnn-ccexam.pth."""
import torch
from torch import nn


class MnistCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def build(num_classes: int = 10) -> nn.Module:
    return MnistCNN()
'''


def mnist_cnn() -> Any:
    """A fresh module of :data:`MNIST_CNN_FILE`'s architecture (the same source the CLI runs), untrained."""
    namespace: dict[str, Any] = {}
    exec(compile(MNIST_CNN_FILE, "mnist_cnn.py", "exec"), namespace)  # our own constant, not user input
    return namespace["build"]()


def require_shared() -> Path:
    """The shared data folder, or a clear error when this checkout has none beside it."""
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: these benchmarks need the real data beside the checkout")
    return SHARED


def unpack_mnist(dest: Path) -> str:
    """Unpack the four MNIST idx files into ``dest/mnist/MNIST/raw`` (once); return the ``--data`` spec."""
    raw = Path(dest) / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in (require_shared() / "mnist" / "MNIST" / "raw").glob("*.gz"):
        if not (raw / gz.stem).is_file():
            with gzip.open(gz, "rb") as src, open(raw / gz.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return f"mnist:{Path(dest) / 'mnist'}"


def mnist_cnn_args(dest: Path) -> list[str]:
    """``demp compress``/``inspect`` arguments for the real MNIST CNN on real MNIST (files under ``dest``)."""
    spec = unpack_mnist(dest)
    model_file = Path(dest) / "mnist_cnn.py"
    model_file.write_text(MNIST_CNN_FILE)
    return [str(SHARED / "weights" / "mnist-cnn-ccexam.pth"), "--model-file", f"{model_file}:build", "--data", spec]


def unpack_cifar(dest: Path) -> Path:
    """Extract the CIFAR-10 JPEG folders into ``dest`` (once); return ``dest/cifar10-jpg``."""
    root = Path(dest) / "cifar10-jpg"
    if not root.is_dir():
        Path(dest).mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xzf", str(require_shared() / "cifar10-jpg.tar.gz"), "-C", str(dest)], check=True)
    return root
