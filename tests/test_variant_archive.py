"""benchmarks/variant_archive.py: CIFAR-10 as one upload variant delivers it, for training on that variant.

What a user relies on: training on the archive reads, image for image and label for label, what the robustness
benchmark sends the service for that variant; a lossless variant changes no pixel; bad input is one line and
leaves an archive already written alone.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import upload_robustness as ur  # noqa: E402
import variant_archive as va  # noqa: E402

from training.data import load_cifar10  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "variant_archive.py"
FIXTURE = ROOT / "tests" / "fixtures" / "cifar10-jpeg-small.tar.gz"


@pytest.fixture(scope="module")
def fixture_archive() -> Path:
    if not FIXTURE.is_file():
        pytest.skip(f"needs the committed fixture {FIXTURE}")
    return FIXTURE


def variant(name: str) -> ur.Variant:
    return next(v for v in ur.VARIANTS if v.name == name)


def written(name: str, source: Path, tmp_path: Path):
    """The archive of variant ``name``, and the clean and variant data training reads from the two archives."""
    out = tmp_path / f"{name}.tar.gz"
    assert va.main([name, "--data", str(source), "--out", str(out)]) == 0
    return out, load_cifar10(source, cache_dir=tmp_path / "cache"), load_cifar10(out, cache_dir=tmp_path / "cache")


def test_training_on_the_archive_reads_what_the_benchmark_sends_for_that_variant(fixture_archive, tmp_path):
    out, clean, damaged = written("x1-jpeg-q50", fixture_archive, tmp_path)
    assert np.array_equal(damaged.train_labels, clean.train_labels)
    assert np.array_equal(damaged.test_labels, clean.test_labels)
    # the benchmark's own upload of the first test images, through the service's decode
    selection = ur.load_selection(fixture_archive, 8)
    sent = np.stack([ur.service_decode(ur.make_upload(ur.upright_rgb(b), variant("x1-jpeg-q50"), b))
                     for b in selection.files])
    assert np.array_equal(damaged.test_images[:8], sent)
    assert not np.array_equal(damaged.test_images, clean.test_images)  # the re-save did change pixels
    with tarfile.open(out) as tar:
        names = [m.name for m in tar.getmembers()]
    assert all(n.endswith(".jpg") for n in names) and any(n.startswith("train/") for n in names)


def test_a_lossless_variant_gives_the_training_the_same_pixels(fixture_archive, tmp_path):
    out, clean, png = written("x1-png", fixture_archive, tmp_path)
    assert np.array_equal(png.train_images, clean.train_images)
    assert np.array_equal(png.test_images, clean.test_images)
    with tarfile.open(out) as tar:
        first = tar.extractfile(next(m for m in tar if m.isfile())).read()
    assert first.startswith(b"\x89PNG")


def _tar_with_only_train(path: Path, fixture: Path) -> None:
    with tarfile.open(fixture) as src, tarfile.open(path, "w:gz") as dst:
        for m in src:
            if m.isfile() and m.name.startswith("train/"):
                dst.addfile(m, io.BytesIO(src.extractfile(m).read()))


@pytest.mark.parametrize("case", ["unknown variant", "missing data", "not an archive", "no test split"])
def test_bad_input_is_one_line_and_an_archive_already_there_stays(case, fixture_archive, tmp_path):
    out = tmp_path / "kept.tar.gz"
    out.write_bytes(b"an archive written earlier")
    data, name = fixture_archive, "x1-jpeg-q50"
    if case == "unknown variant":
        name = "x1-jpeg-q51"
    elif case == "missing data":
        data = tmp_path / "nowhere.tar.gz"
    elif case == "not an archive":
        data = tmp_path / "photo.tar.gz"
        data.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 10)
    else:
        data = tmp_path / "train-only.tar.gz"
        _tar_with_only_train(data, fixture_archive)
    run = subprocess.run([sys.executable, str(SCRIPT), name, "--data", str(data), "--out", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode != 0 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("variant_archive: error: "), run.stderr
    assert out.read_bytes() == b"an archive written earlier"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
