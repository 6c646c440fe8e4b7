"""Sampling the images the export steps run on: real CIFAR-10 when it is available, random pixels otherwise.

Parity and accuracy use the first N images of the test split (the loaders keep the source's order,
which interleaves the classes); int8 calibration uses a seeded random sample of the training split,
so it never sees the images the int8 model is then scored on.
"""

from __future__ import annotations

import os

import numpy as np

from common.contract import IMAGE_SHAPE, THROUGHPUT_IMAGES
from training.data import Cifar10, load_cifar10

Data = Cifar10 | str | os.PathLike | None  # a data set already loaded, or where to load it from


def load_data(data: Data) -> Cifar10 | None:
    """CIFAR-10 from ``data`` (passed through when already loaded) or ``$CIFAR10_DATA``; None when neither
    is given.

    A path that is given but unreadable raises ``training.data.DataError``: a user who named data
    wants to hear it is broken, not get a weaker random-input check.
    """
    if isinstance(data, Cifar10):
        return data
    if not data and not os.environ.get("CIFAR10_DATA"):
        return None
    return load_cifar10(data)


def require_data(data: Data) -> Cifar10:
    """As ``load_data``, but no data at all is a ``DataError`` too."""
    return data if isinstance(data, Cifar10) else load_cifar10(data)


def first_test_images(cifar: Cifar10, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` test images (all when None) and their labels."""
    n = len(cifar.test_labels) if limit is None else min(limit, len(cifar.test_labels))
    return cifar.test_images[:n], cifar.test_labels[:n]


def timing_images(cifar: Cifar10) -> np.ndarray:
    """The images every speed figure is measured on (``common.contract.THROUGHPUT_IMAGES`` of them)."""
    return cifar.test_images[np.arange(THROUGHPUT_IMAGES) % len(cifar.test_images)]


def random_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8 uniform noise: the fallback when no real images are available."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *IMAGE_SHAPE), dtype=np.uint8)


def calibration_images(cifar: Cifar10, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training images drawn without replacement with a fixed seed."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(cifar.train_labels), size=min(n, len(cifar.train_labels)), replace=False))
    return cifar.train_images[idx]
