"""Shared fixtures: real CIFAR-10 images (the committed small fixture, or the full data set for the few checks
that need all of it) and freshly initialised checkpoints.

- ``data_archive`` / ``cifar``: ``tests/fixtures/cifar10-jpeg-small.tar.gz``, the first 1,500 train and 500 test
  images of the JPEG copy of CIFAR-10 (``tests/fixtures/make_cifar_fixture.py`` says how it was made). Always
  present, so every test that needs only some real images runs on a fresh clone.
- ``full_data`` / ``cifar_full``: the whole data set, for checks that need the 10,000 test images (the shipped
  weights' accuracy). ``$CIFAR10_DATA`` (the variable training reads) if set, else
  ``../shared/data/cifar10-jpeg.tar.gz``; these tests skip, saying why, where it is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SMALL_ARCHIVE = FIXTURES / "cifar10-jpeg-small.tar.gz"  # train/<class>/*.jpg, test/<class>/*.jpg
SMALL_CANONICAL = FIXTURES / "cifar-10-python-small.tar.gz"  # cifar-10-batches-py/ pickles
# $CIFAR10_DATA, the variable training reads, says where the full data set is; unset, the shared copy beside
# the checkout. It is taken out of the environment here: the code under test (and its subprocesses) would read
# it wherever a test gives no --data, and each test passes the data it means explicitly.
FULL_DATA = Path(os.environ.pop("CIFAR10_DATA", "") or ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
FULL_DATA = FULL_DATA.expanduser()
FULL_TEST_IMAGES = 10_000
PYTHON = sys.executable


@pytest.fixture(scope="session", autouse=True)
def _shared_decode_cache(tmp_path_factory):
    """One decoded-array cache per test session, inherited by CLI subprocesses (decode once)."""
    if "CIFAR10_CACHE" not in os.environ:
        os.environ["CIFAR10_CACHE"] = str(tmp_path_factory.mktemp("cifar-cache"))
    yield


@pytest.fixture(scope="session")
def data_archive() -> Path:
    """The committed small CIFAR-10 archive (1,500 train + 500 test real JPEGs), laid out as the full one."""
    return SMALL_ARCHIVE


@pytest.fixture(scope="session")
def cifar(data_archive):
    """The small fixture decoded (tests take slices of it: at most 1,500 train and 500 test images)."""
    from training.data import load_cifar10

    return load_cifar10(data_archive)


@pytest.fixture(scope="session")
def full_data() -> Path:
    """The full CIFAR-10 (``$CIFAR10_DATA``, else ``../shared/data/cifar10-jpeg.tar.gz``); skips where absent."""
    if not FULL_DATA.exists():
        pytest.skip(f"needs the full CIFAR-10, not the committed fixture: {FULL_DATA} not found "
                    "(set CIFAR10_DATA to cifar10-jpeg.tar.gz or another copy of the whole data set)")
    return FULL_DATA


@pytest.fixture(scope="session")
def cifar_full(full_data):
    """The full data set decoded; skips if ``full_data`` holds fewer than 10,000 test images."""
    from training.data import load_cifar10

    data = load_cifar10(full_data)
    if len(data.test_labels) < FULL_TEST_IMAGES:
        pytest.skip(f"needs the full CIFAR-10 test split: {full_data} holds only {len(data.test_labels):,} "
                    f"test images, not {FULL_TEST_IMAGES:,} (set CIFAR10_DATA to the whole data set)")
    return data


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


@pytest.fixture(scope="module")
def weights(tmp_path_factory, fresh_checkpoint):
    """The service tests' models folder: tutorial.onnx, dwsep.onnx and MANIFEST.json, read-only, made once."""
    from test_serving_support import models_dir

    return models_dir(tmp_path_factory, fresh_checkpoint)


@pytest.fixture(scope="module")
def jpeg(data_archive) -> bytes:
    """One real CIFAR-10 test image as its JPEG file."""
    from test_serving_support import cifar_jpegs

    return cifar_jpegs(data_archive, per_class=1)[0][2]
