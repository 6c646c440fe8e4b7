"""Contract tests of the service with Flask's test client: /predict, /models, health, OpenAPI, metrics, errors."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from prometheus_client import REGISTRY
from test_serving_support import (
    CLASSES,
    ROOT,
    cifar_jpegs,
    copy_models,
    file_sha256,
    noise_bytes,
    png_bytes,
    shipped_models,
    with_metadata,
    write_manifest,
)

import serving
from common import images
from serving.models import ModelLoadError


@pytest.fixture(scope="module")
def app(weights):
    return serving.create_app({"MODELS_DIR": str(weights), "MAX_UPLOAD_MB": 2, "MAX_IMAGE_PIXELS": 4_000_000})


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def jpegs(data_archive):
    return cifar_jpegs(data_archive)


def reference_probabilities(weights, model: str, images: list[bytes]) -> np.ndarray:
    """What the model file itself says, run without the service: Pillow decode + onnxruntime."""
    session = ort.InferenceSession(str(weights / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    batch = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in images])
    return session.run(["probabilities"], {"image": batch})[0]


def upload(client, files, query="", **fields):
    data = {"img": files if isinstance(files, list) else [files], **fields} if files is not None else fields
    return client.post("/predict" + query, data=data, content_type="multipart/form-data")


def as_file(data: bytes, name: str = "cat.jpg"):
    return (io.BytesIO(data), name)


def assert_error(response, status: int, pattern: str):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == status
    assert re.search(pattern, body["error"]["message"]), body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_predict_answers_sorted_top5_matching_the_model_file(client, weights, jpegs):
    label, name, data = jpegs[3]
    response = upload(client, as_file(data, name))
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == "dwsep" and body["filename"] == name
    predictions = body["predictions"]
    assert len(predictions) == 5
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True)
    assert all(CLASSES[p["index"]] == p["label"] for p in predictions)
    expected = reference_probabilities(weights, "dwsep", [data])[0]
    assert [p["index"] for p in predictions] == list(np.argsort(-expected, kind="stable")[:5])
    np.testing.assert_allclose(probs, np.sort(expected)[::-1][:5], rtol=1e-6)


def test_topk_from_query_or_form_and_all_ten_sum_to_one(client, jpegs):
    data = jpegs[0][2]
    assert len(upload(client, as_file(data), "?topk=2").get_json()["predictions"]) == 2
    assert len(upload(client, as_file(data), topk="7").get_json()["predictions"]) == 7
    everything = upload(client, as_file(data), "?topk=10").get_json()["predictions"]
    assert sorted(p["label"] for p in everything) == sorted(CLASSES)
    assert abs(sum(p["probability"] for p in everything) - 1) < 1e-5


def test_model_is_chosen_from_query_or_form(client, weights, jpegs):
    data = jpegs[5][2]
    expected = reference_probabilities(weights, "tutorial", [data])[0]
    for response in (upload(client, as_file(data), "?model=tutorial&topk=10"),
                     upload(client, as_file(data), model="tutorial", topk="10")):
        body = response.get_json()
        assert body["model"] == "tutorial"
        got = {p["index"]: p["probability"] for p in body["predictions"]}
        np.testing.assert_allclose([got[i] for i in range(10)], expected, rtol=1e-6)


def test_several_images_are_one_batch_answered_in_order(client, weights, jpegs):
    chosen = jpegs[:6]
    before = REGISTRY.get_sample_value("cifar10_inference_batch_size_count", {"model": "dwsep"}) or 0
    sum_before = REGISTRY.get_sample_value("cifar10_inference_batch_size_sum", {"model": "dwsep"}) or 0
    response = upload(client, [as_file(data, name) for _, name, data in chosen], "?topk=3")
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == "dwsep"
    assert [r["filename"] for r in body["results"]] == [name for _, name, _ in chosen]
    # one onnxruntime call for the six images
    assert REGISTRY.get_sample_value("cifar10_inference_batch_size_count", {"model": "dwsep"}) == before + 1
    assert REGISTRY.get_sample_value("cifar10_inference_batch_size_sum", {"model": "dwsep"}) == sum_before + 6
    for (_, name, data), result in zip(chosen, body["results"], strict=True):
        single = upload(client, as_file(data, name), "?topk=3").get_json()
        assert result["predictions"] == single["predictions"]


def input_pixels(encoded: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(encoded, validate=True)))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)
    return np.asarray(image)


def test_on_request_the_answer_carries_the_32x32_image_the_model_saw(client, jpegs):
    # larger and not square: the service crops the centre square and shrinks it, rotating by its EXIF first
    photo = Image.open(io.BytesIO(jpegs[3][2])).convert("RGB").resize((150, 96), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated 90 degrees clockwise
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=95, exif=exif)
    data = out.getvalue()
    decoded = images.decode(data, 4_000_000)
    plain = upload(client, as_file(data, "wide.jpg")).get_json()
    assert "input_png" not in plain  # opt-in: existing clients get the answer they always got
    for query, fields in (("?include_input=true", {}), ("", {"include_input": "1"}), ("?include_input=TRUE", {})):
        body = upload(client, as_file(data, "wide.jpg"), query, **fields).get_json()
        assert list(body) == ["model", "filename", "predictions", "input_png"]
        assert body["predictions"] == plain["predictions"]
        # exactly what the service decoded, losslessly: the pixels the model was given
        assert np.array_equal(input_pixels(body["input_png"]), decoded)
    assert "input_png" not in upload(client, as_file(data, "wide.jpg"), "?include_input=0").get_json()
    # several images: each result carries its own
    batch = upload(client, [as_file(data, "wide.jpg"), as_file(jpegs[0][2], "small.jpg")], "?include_input=1")
    first, second = batch.get_json()["results"]
    assert np.array_equal(input_pixels(first["input_png"]), decoded)
    assert np.array_equal(input_pixels(second["input_png"]), np.asarray(Image.open(io.BytesIO(jpegs[0][2]))))
    assert_error(upload(client, as_file(data), "?include_input=maybe"), 400,
                 r"include_input must be true or false \(or 1 or 0\), got 'maybe'")


# The format comes from the bytes: a generic binary type, a wrong image subtype or no Content-Type at all
# (`requests.post(url, data=...)` sends none) classify the same image the same way.
@pytest.mark.parametrize("content_type, fmt", [("image/png", "PNG"), ("image/jpeg", "JPEG"), ("image/webp", "WEBP"),
                                               ("application/octet-stream", "PNG"), (None, "JPEG"),
                                               ("image/png", "JPEG")])
def test_a_raw_image_body_works(client, jpegs, content_type, fmt):
    pixels = Image.open(io.BytesIO(jpegs[1][2]))
    out = io.BytesIO()
    pixels.save(out, fmt)
    raw = client.post("/predict?topk=3", data=out.getvalue(), content_type=content_type)
    assert raw.status_code == 200
    multipart = upload(client, as_file(out.getvalue(), "x"), "?topk=3")
    assert raw.get_json()["predictions"] == multipart.get_json()["predictions"]
    assert raw.get_json()["filename"] is None


def test_a_large_phone_photo_with_exif_rotation_is_classified(client):
    photo = Image.new("RGB", (1200, 900), (30, 90, 200))
    exif = Image.Exif()
    exif[0x0112] = 8
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90, exif=exif)
    response = upload(client, as_file(out.getvalue(), "IMG_0001.JPG"))
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == 5


BAD_UPLOADS = [
    pytest.param(lambda c: c.post("/predict", data={"file": as_file(png_bytes())}, content_type="multipart/form-data"),
                 400, r"no file in multipart field 'img' \(the request has fields: file\)", id="wrong-field-name"),
    pytest.param(lambda c: c.post("/predict", data={"topk": "3"}, content_type="multipart/form-data"),
                 400, "no file in multipart field 'img'", id="no-file-part"),
    pytest.param(lambda c: upload(c, as_file(b"", "empty.png")), 400, "'empty.png': the file is empty",
                 id="empty-file"),
    pytest.param(lambda c: c.post("/predict", data=b"", content_type="image/png"), 400, "empty", id="empty-raw-body"),
    pytest.param(lambda c: upload(c, as_file(b"just some text, not pixels\n" * 10, "fake.gif")), 400, "not an image",
                 id="not-an-image"),
    pytest.param(lambda c: upload(c, as_file(noise_bytes("PNG")[:-3000], "cut.png")), 400, "truncated|corrupt",
                 id="truncated-png"),
    pytest.param(lambda c: upload(c, as_file(noise_bytes("JPEG")[:-1500], "cut.jpg")), 400, "truncated|corrupt",
                 id="truncated-jpeg"),
    pytest.param(lambda c: upload(c, as_file(b"\0" * (2 * 1024 * 1024 + 1), "big.png")), 413,
                 "larger than the 2 MB limit", id="body-over-limit"),
    pytest.param(lambda c: c.post("/predict", data=b"\0" * (3 * 1024 * 1024), content_type="image/png"), 413,
                 "larger than the 2 MB limit", id="raw-body-over-limit"),
    pytest.param(lambda c: upload(c, as_file(png_bytes((5000, 5000), "1"), "bomb.png")), 413,
                 "5000x5000 = 25,000,000 pixels.*refused before decoding", id="decompression-bomb"),
    pytest.param(lambda c: upload(c, as_file(png_bytes()), "?topk=0"), 400,
                 "topk must be an integer from 1 to 10, got '0'", id="topk-0"),
    pytest.param(lambda c: upload(c, as_file(png_bytes()), "?topk=11"), 400, "got '11'", id="topk-11"),
    pytest.param(lambda c: upload(c, as_file(png_bytes()), "?topk=-1"), 400, "got '-1'", id="topk-minus-1"),
    pytest.param(lambda c: upload(c, as_file(png_bytes()), "?topk=abc"), 400, "got 'abc'", id="topk-abc"),
    pytest.param(lambda c: upload(c, as_file(png_bytes()), topk="2.5"), 400, "got '2.5'", id="topk-form-float"),
    pytest.param(lambda c: upload(c, as_file(png_bytes()), "?model=resnet"), 404,
                 "unknown model 'resnet'; loaded models: dwsep, tutorial", id="unknown-model"),
    pytest.param(lambda c: upload(c, as_file(png_bytes()), "?model=../weights/dwsep"), 404, "unknown model '../weights",
                 id="path-traversal"),
    pytest.param(lambda c: upload(c, as_file(png_bytes()), "?model=dwsep.onnx"), 404, "unknown model",
                 id="model-file-name"),
    pytest.param(lambda c: c.post("/predict", data=b'{"img": "x"}', content_type="application/json"), 415,
                 "unsupported content type 'application/json'", id="json-body"),
    pytest.param(lambda c: c.post("/predict", data=b"plain text, no pixels\n" * 10), 400, "image: .*not an image",
                 id="no-content-type-not-an-image"),
    pytest.param(lambda c: c.post("/predict", data=b"", content_type="application/octet-stream"), 400, "empty",
                 id="empty-octet-stream"),
    pytest.param(lambda c: c.post("/predict", data=png_bytes(), content_type="text/plain"), 415,
                 r"unsupported content type 'text/plain'.*application/octet-stream", id="text-body"),
    pytest.param(lambda c: c.post("/predict", data="img=abc", content_type="application/x-www-form-urlencoded"), 415,
                 "unsupported content type", id="urlencoded-form"),
    pytest.param(lambda c: c.post("/predict", data=b"--x\r\nContent-Disposition: form-data; name=\"img\"\r\n\r\nab",
                                  content_type="multipart/form-data; boundary=x"), 400,
                 "malformed multipart body: .*closing boundary is missing", id="truncated-multipart"),
    pytest.param(lambda c: c.post("/predict", data=b"whatever", content_type="multipart/form-data"), 400,
                 "malformed multipart body: .*no boundary", id="multipart-without-boundary"),
    pytest.param(lambda c: c.post("/predict", data=b"whatever", content_type="multipart/form-data; boundary=zz"), 400,
                 "malformed multipart body", id="multipart-garbage"),
    pytest.param(lambda c: c.get("/predict"), 405, "method GET is not allowed on /predict; use POST", id="get-predict"),
    pytest.param(lambda c: c.get("/nowhere"), 404, "no endpoint at '/nowhere'", id="unknown-path"),
]


@pytest.mark.parametrize("send, status, message", BAD_UPLOADS)
def test_bad_input_is_a_4xx_json_error_naming_the_problem(client, send, status, message):
    assert_error(send(client), status, message)


def test_a_bad_part_among_several_is_named(client, jpegs):
    response = upload(client, [as_file(jpegs[0][2], "good.jpg"), as_file(b"nope" * 50, "bad.png")])
    assert_error(response, 400, "img part 2 'bad.png': not an image")


def test_too_many_images_in_one_request(weights, jpegs):
    small = serving.create_app({"MODELS_DIR": str(weights), "MAX_BATCH": 3})
    response = upload(small.test_client(), [as_file(jpegs[0][2])] * 4)
    assert_error(response, 413, "4 images in one request; at most 3")


def test_the_decoded_pixels_of_one_request_are_budgeted(weights, jpegs):
    """MAX_REQUEST_PIXELS: the image that would take the request over it is named and refused before decoding."""
    budgeted = serving.create_app({"MODELS_DIR": str(weights), "MAX_REQUEST_PIXELS": 2 * 32 * 32})
    assert upload(budgeted.test_client(), [as_file(jpegs[0][2]) for _ in range(2)]).status_code == 200
    response = upload(budgeted.test_client(), [as_file(jpegs[0][2], "a.jpg") for _ in range(3)])
    assert_error(response, 413, "img part 3 'a.jpg': this image decodes 1,024 pixels")
    assert "MAX_REQUEST_PIXELS" in response.get_json()["error"]["message"]


def test_an_unexpected_failure_is_a_generic_500_without_details(app, client, jpegs, monkeypatch, caplog):
    model = app.extensions["model_registry"].get("dwsep")

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(model, "run", broken)
    response = upload(client, as_file(jpegs[0][2]))
    assert_error(response, 500, "internal server error")
    assert "secret" not in response.get_data(as_text=True)
    assert "secret internal detail" in caplog.text


def test_models_lists_names_classes_accuracy_and_file_hashes(client, weights):
    from importlib.metadata import version

    body = client.get("/models").get_json()
    assert body["version"] == version("cifar10-classifier")  # the release, as pyproject.toml gives it
    assert body["default_model"] == "dwsep"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"dwsep", "tutorial"}
    for name, info in by_name.items():
        assert info["classes"] == list(CLASSES)
        assert info["sha256"] == hashlib.sha256((weights / f"{name}.onnx").read_bytes()).hexdigest()
        assert info["arch"] == name and info["test_accuracy"] is None  # fresh checkpoints were never tested
        assert info["default"] == (name == "dwsep")
        # this folder's manifest records no sha256, so it lends no figures
        assert info["cpu_images_per_s"] is None and info["parameters"] is None and info["tta"] == "none"


# --- /models: accuracy from the .onnx file, speed and size from MANIFEST.json for that very file ---------------

FIGURES = {"dwsep": {"cpu_images_per_s": 7054.3, "parameters": 204858},
           "tutorial": {"cpu_images_per_s": 67362.2, "parameters": 62006}}


def list_models(folder, **config) -> dict:
    app = serving.create_app({"MODELS_DIR": str(folder), **config})
    return app.test_client().get("/models").get_json()


def metadata_accuracy(path) -> float:
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    return float(meta.custom_metadata_map["test_accuracy"])


def assert_no_figures(body: dict, names=("dwsep", "tutorial")):
    assert [m["name"] for m in body["models"]] == sorted(names)
    for info in body["models"]:
        assert (info["cpu_images_per_s"], info["single_images_per_s"], info["parameters"], info["tta"]) == \
            (None, None, None, "none"), info
        assert info["test_accuracy"] is not None  # the trained files carry theirs


def test_models_show_accuracy_speed_tta_and_parameters_of_the_served_files(client, tmp_path, caplog):
    folder = shipped_models(tmp_path)
    with_metadata(folder / "tutorial.onnx", folder / "tutorial.onnx", tta="flip")
    # a file that records its own test accuracy shows it; a manifest entry that differs is logged, not shown
    write_manifest(folder, "dwsep", dwsep={**FIGURES["dwsep"], "test_accuracy": 0.999, "tta": "flip"},
                   tutorial=FIGURES["tutorial"])
    body = list_models(folder)
    assert body["default_model"] == "dwsep"
    by_name = {m["name"]: m for m in body["models"]}
    for name, figures in FIGURES.items():
        info = by_name[name]
        assert info["cpu_images_per_s"] == figures["cpu_images_per_s"]
        assert info["parameters"] == figures["parameters"]
        assert info["test_accuracy"] == metadata_accuracy(folder / f"{name}.onnx") < 0.999
        assert info["sha256"] == file_sha256(folder / f"{name}.onnx")
    assert by_name["tutorial"]["tta"] == "flip" and by_name["dwsep"]["tta"] == "none"
    assert "the entry for dwsep gives test accuracy 0.999, the file itself" in caplog.text
    # every field is described in the OpenAPI document
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["ModelList"]
    assert set(body) <= set(schema["properties"])
    assert set(by_name["dwsep"]) <= set(schema["properties"]["models"]["items"]["properties"])


def test_a_manifest_entry_measured_on_another_file_lends_no_figures(tmp_path, caplog):
    folder = shipped_models(tmp_path)
    manifest = write_manifest(folder, "dwsep", **FIGURES)
    del manifest["models"]["tutorial"]["onnx_sha256"]
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    # dwsep.onnx replaced after the manifest was written (a re-export, a hand copy)
    with_metadata(folder / "dwsep.onnx", folder / "dwsep.onnx", test_accuracy="0.5")
    body = list_models(folder)
    assert body["default_model"] == "dwsep"
    assert_no_figures(body)
    assert {m["name"]: m["test_accuracy"] for m in body["models"]}["dwsep"] == 0.5
    assert "MANIFEST.json: the entry for dwsep was measured on another file" in caplog.text
    assert "the entry for tutorial was measured on another file (onnx_sha256 None" in caplog.text


def test_without_a_manifest_the_figures_are_null(tmp_path):
    body = list_models(shipped_models(tmp_path))
    assert body["default_model"] == "dwsep"  # the first name in sorted order
    assert_no_figures(body)


@pytest.mark.parametrize("figures", [
    {"cpu_images_per_s": "7054.3", "parameters": "204858"},
    {"cpu_images_per_s": True, "parameters": True},
    {"cpu_images_per_s": -1, "parameters": 0},
    {"cpu_images_per_s": 0, "parameters": 2.5},
    {"cpu_images_per_s": float("nan"), "parameters": -204858},
    {"cpu_images_per_s": float("inf"), "parameters": [204858]},
    {"cpu_images_per_s": 10**400, "parameters": None},
    {"cpu_images_per_s": {"value": 7054.3}},
], ids=["strings", "bools", "negative-and-zero", "zero-and-fraction", "nan", "infinity-and-list", "huge", "object"])
def test_odd_figures_in_a_matching_entry_are_null(tmp_path, figures):
    folder = shipped_models(tmp_path)
    write_manifest(folder, "tutorial", dwsep=figures, tutorial=FIGURES["tutorial"])
    by_name = {m["name"]: m for m in list_models(folder)["models"]}
    assert by_name["dwsep"]["cpu_images_per_s"] is None and by_name["dwsep"]["parameters"] is None
    assert by_name["tutorial"]["cpu_images_per_s"] == FIGURES["tutorial"]["cpu_images_per_s"]  # its own are fine


@pytest.mark.parametrize("manifest", [
    {"default_model": "dwsep"},
    {"default_model": "dwsep", "models": None},
    {"default_model": "dwsep", "models": []},
    {"default_model": "dwsep", "models": "dwsep.onnx"},
    {"default_model": "dwsep", "models": {"dwsep": "fast", "tutorial": None, "resnet": {"cpu_images_per_s": 1}}},
], ids=["no-models", "null-models", "list-models", "string-models", "odd-entries"])
def test_a_manifest_of_another_shape_only_costs_the_figures(tmp_path, manifest):
    folder = shipped_models(tmp_path)
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    body = list_models(folder)
    assert body["default_model"] == "dwsep"
    assert_no_figures(body)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not readable JSON"),
    (b"\xff\xfe{}", "not readable JSON"),
    (b"[" * 100_000, "not readable JSON"),
    (b"[]", "expected a JSON object"),
    (json.dumps({"default_model": 7, "models": FIGURES}).encode(), "default_model must be a model name, got 7"),
], ids=["syntax", "not-utf8", "deeply-nested", "list", "bad-default"])
def test_a_corrupt_manifest_does_not_stop_a_service_told_its_default_model(tmp_path, caplog, content, message):
    folder = shipped_models(tmp_path)
    (folder / "MANIFEST.json").write_bytes(content)
    body = list_models(folder, DEFAULT_MODEL="tutorial")
    assert body["default_model"] == "tutorial"
    assert_no_figures(body)
    assert f"MANIFEST.json: {message}" in caplog.text and "serving without the manifest's figures" in caplog.text
    # without DEFAULT_MODEL only the manifest could name the default: one clear line instead of a guess
    with pytest.raises(ModelLoadError, match=f"MANIFEST.json: {message}"):
        serving.create_app({"MODELS_DIR": str(folder)})


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["models"] == ["dwsep", "tutorial"]


def test_metrics_count_requests_by_endpoint_model_and_status(client, jpegs):
    def count(status, model="dwsep"):
        labels = {"endpoint": "/predict", "method": "POST", "model": model, "status": status}
        return REGISTRY.get_sample_value("cifar10_http_requests_total", labels) or 0

    # The model label is set where inference happens: a request refused before it has none.
    ok, bad, unknown = count("200"), count("400", ""), count("404", "")
    upload(client, as_file(jpegs[0][2]))
    upload(client, as_file(jpegs[0][2]), "?topk=0")
    upload(client, as_file(jpegs[0][2]), "?model=nope")
    assert (count("200"), count("400", ""), count("404", "")) == (ok + 1, bad + 1, unknown + 1)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'cifar10_http_request_duration_seconds_bucket{endpoint="/predict",le="0.1",model="dwsep"}' in text
    assert 'cifar10_inference_batch_size_bucket{le="1.0",model="dwsep"}' in text
    assert "nope" not in text  # label values never come from the request
    from importlib.metadata import version

    assert f'cifar10_build_info{{version="{version("cifar10-classifier")}"}} 1.0' in text


def test_web_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert client.get(asset).status_code == 200, asset
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


# --- start-up: a service that cannot answer correctly must not start -------------------------------------------


def test_startup_fails_clearly_on_a_missing_models_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="MODELS_DIR .*nothing-here.* is not a directory"):
        serving.create_app({"MODELS_DIR": str(tmp_path / "nothing-here")})


def test_startup_fails_clearly_without_onnx_files(tmp_path):
    (tmp_path / "README.txt").write_text("no models")
    with pytest.raises(ModelLoadError, match="no .onnx model files"):
        serving.create_app({"MODELS_DIR": str(tmp_path)})


@pytest.mark.parametrize("content, message", [
    (b"", "model file is empty"),
    (b"this is not protobuf" * 10, "not a loadable ONNX model"),
])
def test_startup_fails_clearly_on_a_corrupt_model(weights, tmp_path, content, message):
    copy_models(weights, tmp_path)
    (tmp_path / "broken.onnx").write_bytes(content)
    with pytest.raises(ModelLoadError, match=f"broken.onnx: {message}"):
        serving.create_app({"MODELS_DIR": str(tmp_path)})


def test_startup_fails_clearly_on_a_truncated_model(weights, tmp_path):
    data = (weights / "dwsep.onnx").read_bytes()
    (tmp_path / "dwsep.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="dwsep.onnx: not a loadable ONNX model"):
        serving.create_app({"MODELS_DIR": str(tmp_path)})


@pytest.mark.parametrize("changes, message", [
    ({"classes": "airplane,automobile"}, "metadata 'classes' is missing or not JSON"),
    ({"classes": json.dumps(list(CLASSES[:9]))}, "9 class names but 10 probabilities"),
    ({"test_accuracy": "high"}, "metadata test_accuracy is not a number: 'high'"),
])
def test_startup_fails_clearly_on_bad_metadata(weights, tmp_path, changes, message):
    with_metadata(weights / "tutorial.onnx", tmp_path / "tutorial.onnx", **changes)
    with pytest.raises(ModelLoadError, match=f"tutorial.onnx: {message}"):
        serving.create_app({"MODELS_DIR": str(tmp_path)})


def test_startup_fails_clearly_on_a_model_with_another_contract(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["pixels"], ["probabilities"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["n", 10])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(ModelLoadError, match="other.onnx: expected one input named 'image', found \\['pixels'\\]"):
        serving.create_app({"MODELS_DIR": str(tmp_path)})


def test_default_model_resolution(weights, tmp_path):
    folder = copy_models(weights, tmp_path / "a")
    (folder / "MANIFEST.json").write_text(json.dumps({"default_model": "tutorial", "models": {}}))
    assert serving.create_app({"MODELS_DIR": str(folder)}).extensions["model_registry"].default_name == "tutorial"
    registry = serving.create_app({"MODELS_DIR": str(folder), "DEFAULT_MODEL": "dwsep"}).extensions["model_registry"]
    assert registry.default_name == "dwsep"  # DEFAULT_MODEL wins over the manifest
    bare = copy_models(weights, tmp_path / "b", names=("tutorial",), manifest=False)
    assert serving.create_app({"MODELS_DIR": str(bare)}).extensions["model_registry"].default_name == "tutorial"


def test_startup_fails_clearly_on_an_unknown_default_model(weights, tmp_path):
    folder = copy_models(weights, tmp_path)
    with pytest.raises(ModelLoadError, match="DEFAULT_MODEL 'resnet' is not among the loaded models: dwsep, tutorial"):
        serving.create_app({"MODELS_DIR": str(folder), "DEFAULT_MODEL": "resnet"})
    (folder / "MANIFEST.json").write_text(json.dumps({"default_model": "gone"}))
    with pytest.raises(ModelLoadError, match="MANIFEST.json default_model 'gone' is not among the loaded models"):
        serving.create_app({"MODELS_DIR": str(folder)})
    (folder / "MANIFEST.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="MANIFEST.json: not readable JSON"):
        serving.create_app({"MODELS_DIR": str(folder)})


@pytest.mark.parametrize("setting, value, rule", [("MAX_UPLOAD_MB", "lots", "a number > 0"),
                                                  ("MAX_IMAGE_PIXELS", "0", "an integer >= 1"),
                                                  ("MAX_BATCH", "-2", "an integer >= 1")])
def test_bad_settings_are_refused(weights, setting, value, rule):
    with pytest.raises(serving.ConfigError, match=f"^{setting} must be {rule}, got '{value}'$"):
        serving.create_app({"MODELS_DIR": str(weights), setting: value})


def test_process_settings_read_back_what_the_master_hands_on():
    """The process settings as the benchmarks read them (a worker once refused DRAIN_SECONDS "0.0" handed on
    by the master, which switched KEEPALIVE_REQUESTS off in every worker; now nothing is handed on)."""
    from serving.config import process_settings

    for drain in ("0", "0.0", " 0 "):
        assert process_settings({"DRAIN_SECONDS": drain})["drain_seconds"] == 0.0
    assert process_settings({"DRAIN_SECONDS": "2.5"})["drain_seconds"] == 2.5
    settings = process_settings({})
    assert (settings["keepalive_requests"], settings["max_requests"]) == (100, 200_000)
    assert process_settings({"KEEPALIVE_REQUESTS": "0"})["keepalive_requests"] == 0
    for setting, value in (("DRAIN_SECONDS", "-1"), ("DRAIN_SECONDS", "soon"), ("KEEPALIVE_REQUESTS", "-5")):
        with pytest.raises(serving.ConfigError, match=setting):
            process_settings({setting: value})


def test_the_service_never_imports_torch(weights, jpegs, tmp_path):
    """Run the service in a fresh interpreter where importing torch or torchvision fails."""
    (tmp_path / "cat.jpg").write_bytes(jpegs[3][2])
    script = f"""
import importlib.abc, io, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError("the service must not import " + name)
sys.meta_path.insert(0, NoTorch())
import serving
app = serving.create_app({{"MODELS_DIR": {str(weights)!r}}})
client = app.test_client()
data = open({str(tmp_path / "cat.jpg")!r}, "rb").read()
r = client.post("/predict", data={{"img": (io.BytesIO(data), "cat.jpg")}}, content_type="multipart/form-data")
assert r.status_code == 200, r.get_data()
for path in ("/v2/models/dwsep", "/models", "/metrics", "/openapi.json", "/"):
    assert client.get(path).status_code == 200, path
assert not any(m.split(".")[0] in ("torch", "torchvision") for m in sys.modules)
print("ok", r.get_json()["predictions"][0]["label"])
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
