"""The upload-robustness benchmark (benchmarks/upload_robustness.py): its variants are what they claim to be,
they go through the service's decode path, and its JSON has an entry per model per variant.

Runs on a handful of real CIFAR-10 test images (the committed small fixture, else the shared archive) and
the smallest shipped models, so it stays fast.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import upload_robustness as ur  # noqa: E402

from common import images  # noqa: E402
from serving.config import Settings  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "upload_robustness.py"
FIXTURE = ROOT / "tests" / "fixtures" / "cifar10-jpeg-small.tar.gz"
SHARED = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SMALL_MODELS = ("tutorial", "dwsep")  # the smallest shipped files: fp32 served, and int8 served
IMAGES = 4


@pytest.fixture(scope="module")
def archive() -> Path:
    for path in (FIXTURE, SHARED):
        if path.is_file():
            return path
    pytest.skip(f"needs CIFAR-10 test images: neither {FIXTURE} nor {SHARED} exists")


@pytest.fixture(scope="module")
def selection(archive) -> ur.Selection:
    return ur.load_selection(archive, IMAGES)


def decode(data: bytes) -> np.ndarray:
    return images.decode(data, Settings().max_image_pixels)


def test_selection_is_class_interleaved_real_test_images(selection):
    assert selection.labels.tolist() == list(range(IMAGES))  # the first file of airplane, automobile, ...
    assert [Path(name).parts[-3:-1] for name in selection.names] == [("test", c) for c in ur.CLASSES[:IMAGES]]
    assert all(data[:2] == b"\xff\xd8" for data in selection.files)  # the archive's JPEG bytes


def test_every_variant_decodes_by_the_service_path_to_32x32x3_uint8(selection):
    for data in selection.files[:2]:
        picture = ur.upright_rgb(data)
        for variant in ur.VARIANTS:
            if not ur.available(variant):
                continue
            upload = ur.make_upload(picture, variant, data)
            array = ur.service_decode(upload)
            assert array.shape == (32, 32, 3) and array.dtype == np.uint8, variant.name


def test_native_variant_is_the_original_bytes_and_decodes_as_they_do(selection):
    native = ur.VARIANTS[0]
    assert native.name == ur.NATIVE
    for data in selection.files:
        upload = ur.make_upload(ur.upright_rgb(data), native, data)
        assert upload == data
        assert np.array_equal(ur.service_decode(upload), decode(data))
        assert np.array_equal(decode(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize("factor", [2, 4, 10])
def test_nearest_upscale_by_an_integer_factor_holds_and_gives_back_the_original_pixels(selection, factor):
    variant = ur.Variant(scale=factor, filter="nearest", fmt="png")
    for data in selection.files:
        original = decode(data)
        upload = ur.make_upload(ur.upright_rgb(data), variant, data)
        stored = np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"))
        assert stored.shape == (32 * factor, 32 * factor, 3)
        assert np.array_equal(stored[::factor, ::factor], original)  # every block is one original pixel
        # The service shrinks it back with its antialiasing filter: nearly, not exactly, the original.
        back = ur.service_decode(upload).astype(np.int16)
        assert np.abs(back - original).mean() < 4.0
        other = decode(selection.files[(selection.files.index(data) + 1) % IMAGES]).astype(np.int16)
        assert np.abs(back - original).mean() < np.abs(back - other).mean() / 5


def test_lossless_native_size_variants_decode_to_exactly_the_native_pixels(selection):
    exact = [v for v in ur.VARIANTS if not v.native and v.scale == 1 and v.aspect is None and not v.lossy
             and not v.content_changing and ur.available(v)]
    assert {"x1-png", "x1-bmp", "x1-tiff-lzw", "x1-webp-lossless", "x1-rgba-png", "x1-rgb16-png", "x1-cmyk-tiff",
            *(f"x1-png-exif{o}" for o in range(2, 9))} <= {v.name for v in exact}
    for data in selection.files:
        native = decode(data)
        for variant in exact:
            assert np.array_equal(ur.service_decode(ur.make_upload(ur.upright_rgb(data), variant, data)), native), \
                variant.name


@pytest.mark.parametrize("orientation", range(2, 9))
def test_orientation_variants_are_stored_turned_and_shown_upright(selection, orientation):
    data = selection.files[0]
    upright = np.asarray(ur.upright_rgb(data))
    variant = ur.Variant(scale=1, fmt="png", orientation=orientation)
    with Image.open(io.BytesIO(ur.make_upload(ur.upright_rgb(data), variant, data))) as stored:
        assert stored.getexif().get(0x0112) == orientation
        assert not np.array_equal(np.asarray(stored.convert("RGB")), upright)
        shown = ImageOps.exif_transpose(stored)  # what a viewer that honours EXIF shows
        assert np.array_equal(np.asarray(shown.convert("RGB")), upright)


def test_variant_names_are_unique_and_the_family_covers_the_issue(selection):
    names = [v.name for v in ur.VARIANTS]
    assert len(names) == len(set(names))
    for wanted in ("x1.5-bicubic-png", "x10-lanczos-png", "x4-nearest-png", "x4-bilinear-png", "x4-box-png",
                   "x4-bicubic-jpeg-q50", "x4-bicubic-jpeg-q75", "x4-bicubic-jpeg-q95", "x4-bicubic-webp-q50",
                   "x4-bicubic-webp-q80", "x4-bicubic-webp-lossless", "x4-bicubic-tiff", "x4-bicubic-bmp",
                   "x4-bicubic-gif", "x4-bicubic-rgba-png", "x4-bicubic-gray-png", "x4-bicubic-gray16-png",
                   "x4-bicubic-cmyk-jpeg-q95", "x4-bicubic-jpeg-q95-exif6", "x4-bicubic-pad4:3-edge-png"):
        assert wanted in names
    assert ur.select_variants(["x4-*-jpeg-q75"])[0].native  # native always comes first


def test_json_has_an_entry_per_model_per_variant(archive, tmp_path):
    out = tmp_path / "robustness.json"
    assert ur.main(["--data", str(archive), "--images", str(IMAGES), "--models", *SMALL_MODELS,
                    "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    variants = [v.name for v in ur.VARIANTS if ur.available(v)]
    assert list(result["variants"]) == variants
    assert list(result["models"]) == list(SMALL_MODELS)
    assert result["images"] == IMAGES and result["environment"]["onnxruntime"]
    assert result["command"].startswith("python benchmarks/upload_robustness.py ")
    assert result["decode_path"]["function"] == "common.images.decode"
    assert result["models"]["dwsep"]["file"] == "weights/dwsep.int8.onnx"  # the manifest serves its int8 copy
    assert result["models"]["tutorial"]["file"] == "weights/tutorial.onnx"
    for model in result["models"].values():
        assert list(model["variants"]) == variants
        for entry in model["variants"].values():
            assert 0 <= entry["accuracy"] <= 1
            assert entry["drop_points"] == pytest.approx(100 * (model["native_accuracy"] - entry["accuracy"]), abs=0.01)
        assert model["variants"][ur.NATIVE]["drop_points"] == 0
        assert model["worst_variant"]["name"] in variants
        assert not result["variants"][model["worst_variant"]["name"]]["content_changing"]
    assert result["variants"]["x1-png"]["identical_to_native"] == 1.0


def test_add_merges_a_new_model_into_the_results_and_keeps_the_others_as_measured(archive, tmp_path):
    out = tmp_path / "robustness.json"
    common = ["--data", str(archive), "--images", str(IMAGES), "--variants", "x1-png,x2-*-png", "--out", str(out),
              "--quiet"]
    assert ur.main([*common, "--models", "tutorial"]) == 0
    first = json.loads(out.read_text())
    assert ur.main([*common, "--models", "dwsep", "--add"]) == 0
    merged = json.loads(out.read_text())
    assert list(merged["models"]) == ["tutorial", "dwsep"] and merged["complete"]
    assert merged["models"]["tutorial"] == first["models"]["tutorial"]
    assert merged["command"] == first["command"] and "--add" in merged["added"][0]["command"]
    # other images than the file measured: merging would mix two benchmarks, so it is refused
    assert ur.main([*common[:2], "--images", str(IMAGES + 1), *common[4:], "--models", "dwsep", "--add"]) == 2
    assert json.loads(out.read_text()) == merged


@pytest.mark.parametrize("argv", [["--images", "many"], ["--no-such-flag"], ["--images", "0"],
                                  ["--data", "/nonexistent/cifar.tar.gz", "--images", "2"],
                                  ["--models", "no_such_model", "--images", "2"],
                                  ["--variants", "no-such-variant-*"]])
def test_a_bad_command_line_exits_non_zero_with_one_line(argv, tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), *argv, "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode != 0
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("upload_robustness: error: "), run.stderr
    assert not (tmp_path / "x.json").exists()
