"""Dataset specs: one string names a dataset and where it lives.

===========================  ==================================================================
``digits``                   scikit-learn's bundled 8x8 handwritten digits (1x8x8, 10 classes);
                             stratified 80/20 train/test split with a fixed seed. Needs nothing.
``mnist:ROOT``               the four MNIST idx files (gzipped or not) in ``ROOT`` or in
                             torchvision's ``ROOT/MNIST/raw`` (1x28x28); read with numpy
``fashion-mnist:ROOT``       the same for Fashion-MNIST (``ROOT`` or ``ROOT/FashionMNIST/raw``)
``cifar10:ROOT``             ``ROOT/cifar-10-batches-py`` (3x32x32, 10 classes)
``cifar100:ROOT``            ``ROOT/cifar-100-python`` (3x32x32, 100 classes)
``imagefolder:PATH``         ``PATH/train/<class>/*.png`` and ``PATH/{val,validation,test}/<class>/...``
                             (or one folder of class folders, split 80/20 deterministically).
                             Small images of one size (CIFAR-10 as JPEGs) at the model's input
                             size: kept at their size, decoded once into memory, mean/std measured
                             on the training split; otherwise resize 256 / center-crop 224 (scaled
                             with ``input_size``), ImageNet statistics (:mod:`.imagefolder`)
``npz:PATH``                 arrays ``x`` (float32 NxCxHxW, or uint8 NxHxWxC / NxHxW scaled to
                             [0, 1]), optional int ``y``, ``x_test``, ``y_test``, ``mean``, ``std``
===========================  ==================================================================

Nothing is ever downloaded: fetching MNIST/CIFAR is the user's job (e.g. once with
``torchvision.datasets.CIFAR10(ROOT, download=True)``). Every dataset yields ``(x, y)`` with ``x`` a
float tensor (normalized with the dataset's standard mean/std) and ``y`` an int class index
(-1 for an unlabeled npz). ``augment=True`` adds CIFAR-style random crop (padding side/8) + horizontal
flip for colour data at its size (small-image folders included) and random-resized-crop + flip for
resized image folders (training split only). ``normalize=`` chooses other statistics: ``imagenet``,
``cifar10``, ``cifar100``, ``mnist`` or explicit ``M1,M2,M3/S1,S2,S3`` (``auto``, the default, keeps the
dataset's own; :func:`.sources.parse_normalize`).
"""

from __future__ import annotations

from .bundle import DataBundle, TensorImageDataset, num_samples
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD
from .loaders import calibration_split, make_loader, seed_worker, stack_samples, stratified_split
from .sources import (
                      CIFAR10_MEAN,
                      CIFAR10_STD,
                      CIFAR100_MEAN,
                      CIFAR100_STD,
                      FASHION_MNIST_MEAN,
                      FASHION_MNIST_STD,
                      MNIST_MEAN,
                      MNIST_STD,
                      SPEC_FORMS,
                      load_data,
)

__all__ = [
    "DataBundle", "TensorImageDataset", "load_data", "stratified_split", "calibration_split", "stack_samples",
    "make_loader", "seed_worker", "num_samples", "SPEC_FORMS", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN",
    "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
]
