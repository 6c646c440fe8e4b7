"""int8 models in the service: ``NAME.int8.onnx`` is served as NAME where it earns it, fp32 stays selectable."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from test_serving_support import WEIGHTS, cifar_jpegs, file_sha256, shipped_models, with_metadata, write_manifest

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
    folder = folder_with(tmp_path, quantized, **GOOD)  # its quantization figures hold no accuracy of its own
    write_manifest(folder, "dwsep", dwsep={
        "cpu_images_per_s": 1800.0, "parameters": 204858, "test_accuracy": 0.8721,
        "int8": {"onnx": "dwsep.int8.onnx", "onnx_sha256": file_sha256(folder / "dwsep.int8.onnx"),
                 "test_accuracy": 0.8725, "cpu_images_per_s": 4300.0, "single_images_per_s": 3400.0,
                 "fp32_single_images_per_s": 1700.0}})
    app = serving.create_app({"MODELS_DIR": str(folder)})
    models = listed(app)
    assert (models["dwsep"]["cpu_images_per_s"], models["dwsep-fp32"]["cpu_images_per_s"]) == (4300.0, 1800.0)
    # one image at a time: each file's own rate (the fp32 file's was measured beside its int8 copy)
    assert (models["dwsep"]["single_images_per_s"], models["dwsep-fp32"]["single_images_per_s"]) == (3400.0, 1700.0)
    assert models["dwsep"]["parameters"] == models["dwsep-fp32"]["parameters"] == 204858
    # the int8 file's accuracy is the int8 entry's, not its fp32 original's (which its own metadata repeats)
    assert models["dwsep"]["test_accuracy"] == 0.8725
    assert models["dwsep-fp32"]["test_accuracy"] == float(
        app.extensions["model_registry"].models["dwsep-fp32"].metadata["test_accuracy"])
    # /v2/models/NAME gives the same figures
    for name in ("dwsep", "dwsep-fp32"):
        parameters = app.test_client().get(f"/v2/models/{name}").get_json()["parameters"]
        assert parameters["sha256"] == models[name]["sha256"] and parameters["precision"] == models[name]["precision"]
        for figure in ("test_accuracy", "cpu_images_per_s", "single_images_per_s"):
            assert parameters[figure] == models[name][figure]


@pytest.mark.parametrize("test_images, manifest_accuracy, shown", [
    (10_000, None, 0.8123),  # measured on the whole test split: the file's own figure
    (10_000, 0.8123, 0.8123),
    (300, None, None),  # on a slice: not a test accuracy, and the fp32 original's is not this file's
    (300, 0.8125, 0.8125),  # the manifest measured this very file
])
def test_an_int8_file_shows_its_own_accuracy_never_its_fp32_originals(tmp_path, quantized, test_images,
                                                                      manifest_accuracy, shown):
    folder = folder_with(tmp_path, quantized, **GOOD, int8_accuracy=0.8123, fp32_accuracy=0.8150,
                         test_images=test_images)
    with_metadata(folder / "dwsep.onnx", folder / "dwsep.onnx", test_accuracy="0.8150")
    with_metadata(folder / "dwsep.int8.onnx", folder / "dwsep.int8.onnx", test_accuracy="0.8150")  # as exported
    if manifest_accuracy is not None:
        write_manifest(folder, "dwsep", dwsep={"int8": {
            "onnx_sha256": file_sha256(folder / "dwsep.int8.onnx"), "test_accuracy": manifest_accuracy}})
    models = listed(serving.create_app({"MODELS_DIR": str(folder)}))
    assert models["dwsep"]["precision"] == "int8" and models["dwsep"]["test_accuracy"] == shown
    assert models["dwsep-fp32"]["test_accuracy"] == 0.8150


def measured_files(manifest: dict) -> dict[str, dict]:
    """sha256 of every file the manifest measured -> its figures (an int8 copy's: its entry's ``int8`` part)."""
    files = {}
    for entry in manifest["models"].values():
        files[entry["onnx_sha256"]] = entry
        int8 = entry.get("int8")
        if isinstance(int8, dict) and int8.get("onnx_sha256"):
            files[int8["onnx_sha256"]] = {**int8, "parameters": entry.get("parameters")}
    return files


def test_every_shipped_name_reports_the_figures_of_the_file_it_serves():
    """weights/ as the service serves it: for every name, /models and /v2/models/NAME give the figures of the
    manifest entry that measured the file whose sha256 they report (an int8 file's are its own)."""
    manifest = json.loads((WEIGHTS / "MANIFEST.json").read_text())
    measured = measured_files(manifest)
    app = serving.create_app({"MODELS_DIR": str(WEIGHTS)})
    client = app.test_client()
    models = client.get("/models").get_json()["models"]
    assert {m["precision"] for m in models} == {"int8", "fp32"}
    for m in models:
        figures = measured[m["sha256"]]  # every shipped file was measured
        assert m["sha256"] == file_sha256(WEIGHTS / figures["onnx"])
        assert m["test_accuracy"] == figures["test_accuracy"], m["name"]
        assert m["cpu_images_per_s"] == figures["cpu_images_per_s"], m["name"]
        single = figures.get("single_images_per_s") or (figures.get("int8") or {}).get("fp32_single_images_per_s")
        assert m["single_images_per_s"] == single, m["name"]
        assert m["parameters"] == figures["parameters"], m["name"]
        base = manifest["models"][m["name"].removesuffix("-fp32").removesuffix("-int8")]
        assert m["pretrained"] == base.get("pretrained"), m["name"]  # the model's, whichever file serves it
        v2 = client.get(f"/v2/models/{m['name']}").get_json()["parameters"]
        assert {k: v2.get(k) for k in ("sha256", "test_accuracy", "cpu_images_per_s", "single_images_per_s")} == \
            {k: m[k] for k in ("sha256", "test_accuracy", "cpu_images_per_s", "single_images_per_s")}
    # the check has teeth: some int8 file's accuracy differs from its fp32 original's (staged_advanced's did),
    # and some models started from ImageNet weights while others did not
    by_name = {m["name"]: m for m in models}
    assert {m["pretrained"] is None for m in models} == {True, False}
    assert any(m["precision"] == "int8" and f"{name}-fp32" in by_name
               and m["test_accuracy"] != by_name[f"{name}-fp32"]["test_accuracy"] for name, m in by_name.items())


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
