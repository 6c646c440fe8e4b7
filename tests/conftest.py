"""Shared fixtures: the real CIFAR-10 data (small slices of it) and freshly initialised checkpoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_ARCHIVE = Path(os.environ.get("CIFAR10_TEST_ARCHIVE", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
PYTHON = sys.executable


@pytest.fixture(scope="session", autouse=True)
def _shared_decode_cache(tmp_path_factory):
    """One decoded-array cache per test session, inherited by CLI subprocesses (decode once)."""
    if "CIFAR10_CACHE" not in os.environ:
        os.environ["CIFAR10_CACHE"] = str(tmp_path_factory.mktemp("cifar-cache"))
    yield


@pytest.fixture(scope="session")
def data_archive() -> Path:
    if not DATA_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {DATA_ARCHIVE} (set CIFAR10_TEST_ARCHIVE)")
    return DATA_ARCHIVE


@pytest.fixture(scope="session")
def cifar(data_archive):
    """The full decoded dataset (tests take slices of it)."""
    from training.data import load_cifar10

    return load_cifar10(data_archive)


@pytest.fixture(scope="session")
def fresh_checkpoint(tmp_path_factory):
    """``fresh_checkpoint(arch) -> Path``: a freshly initialised model saved as a real checkpoint."""
    import torch

    from training.checkpoint import atomic_save, make_checkpoint
    from training.models import create_model
    from training.recipes import HALF, default_recipe

    made: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("fresh-checkpoints")

    def make(arch: str) -> Path:
        if arch not in made:
            torch.manual_seed(0)
            model = create_model(arch).eval()
            recipe = default_recipe(arch)
            mean, std = HALF if recipe.normalization == "half" else ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
            path = folder / f"{arch}.pt"
            atomic_save(make_checkpoint(model, recipe, mean, std), path)
            made[arch] = path
        return made[arch]

    return make


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, restored after it: small CPU models do not gain from two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
