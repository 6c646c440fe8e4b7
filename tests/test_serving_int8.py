"""int8 models in the service: ``NAME.int8.onnx`` is served as NAME where it earns it, fp32 stays selectable."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from test_serving_support import cifar_jpegs, file_sha256, shipped_models, with_metadata, write_manifest

import serving
from export.quantize import quantize_model
from serving.models import ModelLoadError

GOOD = {"accuracy_drop_points": 0.04, "single_image_speedup": 2.1}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, cifar) -> Path:
    """The shipped dwsep and tutorial, and dwsep's int8 copy as export.quantize writes it."""
    folder = shipped_models(tmp_path_factory.mktemp("int8-source"))
    figures = quantize_model(folder / "dwsep.onnx", cifar, calibration_images=64, test_images=300, max_drop=100,
                             log=lambda _: None)
    assert figures["kept"] and (folder / "dwsep.int8.onnx").is_file()
    return folder


def folder_with(tmp_path: Path, quantized: Path, **quantization) -> Path:
    """A models folder whose dwsep.int8.onnx carries the given figures in its ``quantization`` metadata."""
    folder = tmp_path / "models"
    shutil.copytree(quantized, folder)
    with_metadata(folder / "dwsep.int8.onnx", folder / "dwsep.int8.onnx", quantization=json.dumps(quantization))
    return folder


def listed(app) -> dict[str, dict]:
    body = app.test_client().get("/models").get_json()
    return {m["name"]: m for m in body["models"]} | {"<default>": body["default_model"]}


def predict(app, data: bytes, model: str | None = None) -> dict:
    query = {"topk": 10, **({"model": model} if model else {})}
    response = app.test_client().post("/predict", query_string=query, data={"img": (io.BytesIO(data), "x.jpg")})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_an_int8_copy_that_earns_it_is_served_under_the_name_and_fp32_stays_selectable(tmp_path, quantized,
                                                                                        data_archive):
    folder = folder_with(tmp_path, quantized, **GOOD)
    write_manifest(folder, "dwsep")
    app = serving.create_app({"MODELS_DIR": str(folder)})
    models = listed(app)
    assert sorted(models) == ["<default>", "dwsep", "dwsep-fp32", "tutorial"]
    assert (models["dwsep"]["precision"], models["dwsep-fp32"]["precision"]) == ("int8", "fp32")
    assert models["dwsep"]["sha256"] == file_sha256(folder / "dwsep.int8.onnx")
    assert models["dwsep-fp32"]["sha256"] == file_sha256(folder / "dwsep.onnx")
    assert models["<default>"] == "dwsep"  # the manifest's default now means its int8 copy

    plain = serving.create_app({"MODELS_DIR": str(shipped_models(tmp_path / "fp32-only"))})
    agree = 0
    images = cifar_jpegs(data_archive, per_class=2)
    for _, _, data in images:
        fp32 = predict(plain, data, "dwsep")
        assert predict(app, data, "dwsep-fp32")["predictions"] == fp32["predictions"]  # the same file, exactly
        int8 = predict(app, data)  # the default: int8
        assert int8["model"] == "dwsep"
        agree += int8["predictions"][0]["label"] == fp32["predictions"][0]["label"]
    assert agree >= len(images) - 2


@pytest.mark.parametrize("figures, config", [
    ({"accuracy_drop_points": 0.5, "single_image_speedup": 2.0}, {}),  # loses too much
    ({"accuracy_drop_points": 0.0, "single_image_speedup": 0.8}, {}),  # slower
    ({}, {}),  # no figures: nothing shows it earns the name
    (GOOD, {"PRECISION": "fp32"}),  # the operator wants fp32
])
def test_otherwise_the_name_stays_fp32_and_the_int8_copy_is_name_int8(tmp_path, quantized, figures, config):
    app = serving.create_app({"MODELS_DIR": str(folder_with(tmp_path, quantized, **figures)), **config})
    models = listed(app)
    assert sorted(models) == ["<default>", "dwsep", "dwsep-int8", "tutorial"]
    assert (models["dwsep"]["precision"], models["dwsep-int8"]["precision"]) == ("fp32", "int8")


def test_the_manifest_lends_each_file_its_own_figures(tmp_path, quantized):
    folder = folder_with(tmp_path, quantized, **GOOD)
    write_manifest(folder, "dwsep", dwsep={"cpu_images_per_s": 1800.0, "parameters": 204858, "int8": {
        "onnx": "dwsep.int8.onnx", "onnx_sha256": file_sha256(folder / "dwsep.int8.onnx"), "cpu_images_per_s": 4300.0}})
    models = listed(serving.create_app({"MODELS_DIR": str(folder)}))
    assert (models["dwsep"]["cpu_images_per_s"], models["dwsep-fp32"]["cpu_images_per_s"]) == (4300.0, 1800.0)
    assert models["dwsep"]["parameters"] == models["dwsep-fp32"]["parameters"] == 204858


def test_an_int8_file_alone_is_served_under_its_name_and_name_clashes_are_refused(tmp_path, quantized):
    folder = folder_with(tmp_path, quantized, **GOOD)
    (folder / "dwsep.onnx").unlink()
    assert listed(serving.create_app({"MODELS_DIR": str(folder)}))["dwsep"]["precision"] == "int8"
    clash = folder_with(tmp_path / "clash", quantized, **GOOD)
    shutil.copy(clash / "tutorial.onnx", clash / "dwsep-fp32.onnx")
    with pytest.raises(ModelLoadError, match="would both be served as dwsep-fp32"):
        serving.create_app({"MODELS_DIR": str(clash)})


def test_precision_must_be_auto_or_fp32(tmp_path, quantized):
    with pytest.raises(serving.ConfigError, match="PRECISION must be one of auto, fp32, got 'int4'"):
        serving.create_app({"MODELS_DIR": str(quantized), "PRECISION": "int4"})
