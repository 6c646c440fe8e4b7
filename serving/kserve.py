"""Open Inference Protocol (KServe v2) REST subset, enough for standard clients (tritonclient, KServe's).

Server: ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``. Models:
``GET /v2/models/{name}[/versions/1]``, ``GET /v2/models/{name}[/versions/1]/ready``,
``POST /v2/models/{name}[/versions/1]/infer``.

An infer request has one input, ``image``: datatype UINT8, shape [n, 32, 32, 3] (RGB, channels
last, already 32x32: no image decoding happens here), its values either as JSON ``data`` (flat or
nested, row-major) or, with the binary tensor data extension, as raw bytes after a JSON header of
``Inference-Header-Content-Length`` bytes (what tritonclient sends by default). The answer has the
outputs ``probabilities`` and ``logits`` (FP32, [n, C]), or those named in ``outputs``; each as JSON
``data`` unless binary output was asked for (``binary_data`` / ``binary_data_output``).
Errors are ``{"error": "..."}`` with a 4xx status, as the protocol defines.
"""

from __future__ import annotations

import json
import re
from importlib import metadata as package_metadata

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request

from common.contract import IMAGE_SHAPE, INPUT_NAME
from serving.errors import ApiError
from serving.inference import arriving as inference_arriving
from serving.inference import infer as run_inference
from serving.inference import registry, resolve_model
from serving.models import LoadedModel
from serving.request_body import read_body

bp = Blueprint("kserve", __name__, url_prefix="/v2")

VERSION = "1"
HEADER_LENGTH = "Inference-Header-Content-Length"
_DECIMAL = re.compile(r"[0-9]{1,12}")  # not str.isdigit(): it accepts superscripts and other scripts' digits
# The largest legal request: MAX_BATCH x 32 x 32 x 3 values as JSON text ("255, " at most, brackets
# and indentation included) plus the rest of the header; a binary request is smaller. Larger bodies
# get 413 before a byte of JSON is decoded.
_JSON_BYTES_PER_VALUE = 6
_JSON_HEADER_ALLOWANCE = 64 * 1024
_SHAPE_TEXT = "[n, " + ", ".join(map(str, IMAGE_SHAPE)) + "]"
_JSON_TYPES = {"", "application/json", "application/octet-stream", "application/vnd.kserve+json"}


def _server_version() -> str:
    try:
        return package_metadata.version("cifar10-classifier")
    except package_metadata.PackageNotFoundError:
        return "0+unknown"


def _model(name: str, version: str | None) -> LoadedModel:
    model = resolve_model(name)
    if version is not None and version != VERSION:
        raise ApiError(404, f"model {model.name!r} has no version {version[:40]!r}; its only version is {VERSION}")
    return model


@bp.get("")
def server_metadata():
    return jsonify(name="cifar10-classifier", version=_server_version(), extensions=["binary_tensor_data"])


@bp.get("/health/live")
def live():
    return jsonify(live=True)


@bp.get("/health/ready")
def ready():
    is_ready = registry().ready
    return jsonify(ready=is_ready), 200 if is_ready else 503


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    model = _model(name, version)
    return jsonify(
        name=model.name,
        versions=[VERSION],
        platform="onnxruntime_onnx",
        inputs=[{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]}],
        outputs=[{"name": out, "datatype": "FP32", "shape": [-1, len(model.classes)]} for out in model.outputs],
        # the figures as /models gives them (Manifest.attach_figures), those that are known: a v2 parameter
        # is a string, number or boolean, never null
        parameters={"classes": list(model.classes), "arch": model.arch, "sha256": model.sha256,
                    "precision": model.precision, "tta": model.tta,
                    **{key: value for key, value in model.figures().items() if value is not None}},
    )


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    model = _model(name, version)
    return jsonify(name=model.name, ready=model.warmed), 200 if model.warmed else 503


def _body_limit() -> int:
    values = current_app.config["MAX_BATCH"] * int(np.prod(IMAGE_SHAPE))
    return min(values * _JSON_BYTES_PER_VALUE + _JSON_HEADER_ALLOWANCE, current_app.config["MAX_CONTENT_LENGTH"])


def _split_body() -> tuple[dict, bytes]:
    """The JSON inference header and the binary tensor data after it."""
    mimetype = request.mimetype or ""
    if mimetype not in _JSON_TYPES:
        raise ApiError(415, f"unsupported content type {mimetype!r}: send the inference request as application/json")
    body = read_body(_body_limit(), f"the most a request of MAX_BATCH={current_app.config['MAX_BATCH']} "
                                    "images can need as JSON")
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        header, binary = body, b""
    else:
        if not _DECIMAL.fullmatch(declared) or not 0 < int(declared) <= len(body):
            raise ApiError(400, f"{HEADER_LENGTH} must be the JSON header's length in bytes (1..{len(body)}), "
                                f"got {declared[:20]!r}")
        header, binary = body[:int(declared)], body[int(declared):]
    if not header.strip():
        raise ApiError(400, "empty request body: expected a JSON inference request")
    try:
        doc = json.loads(header)
    except RecursionError:
        raise ApiError(400, "the inference request is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
        raise ApiError(400, f"the inference request is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "the inference request must be a JSON object with an 'inputs' list")
    return doc, binary


def _image_tensor(doc: dict, binary: bytes) -> np.ndarray:
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"'inputs' must be a list with exactly one tensor, {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise ApiError(400, f"unknown input {str(tensor.get('name'))[:40]!r}; the model's one input is {INPUT_NAME!r}")
    if tensor.get("datatype") != "UINT8":
        raise ApiError(400, f"input {INPUT_NAME!r} must have datatype UINT8, got {str(tensor.get('datatype'))[:20]!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(d) is int for d in shape)
            or tuple(shape[1:]) != IMAGE_SHAPE or shape[0] < 1):
        raise ApiError(400, f"input {INPUT_NAME!r} must have shape {_SHAPE_TEXT} with n >= 1, got {str(shape)[:60]}")
    limit = current_app.config["MAX_BATCH"]
    if shape[0] > limit:
        raise ApiError(413, f"batch of {shape[0]} images; at most {limit} per request (MAX_BATCH)")
    count = int(np.prod(shape))
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, f"input {INPUT_NAME!r}: 'parameters' must be an object")
    if "shared_memory_region" in parameters:
        raise ApiError(400, "shared-memory tensors are not supported; send the data in the request")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if type(size) is not int or size != count or len(binary) != size:
            raise ApiError(400, f"input {INPUT_NAME!r}: binary data must be exactly {count} bytes for shape {shape} "
                                f"(binary_data_size {str(size)[:20]}, {len(binary)} bytes after the JSON header)")
        return np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    if binary:
        raise ApiError(400, f"{len(binary)} bytes of binary data, but no input declares binary_data_size")
    if "data" not in tensor:
        raise ApiError(400, f"input {INPUT_NAME!r} has no 'data'")
    try:
        values = np.asarray(tensor["data"])
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged, or nested deeper than numpy allows
        raise ApiError(400, f"input {INPUT_NAME!r}: 'data' must be a (nested) list of integers, not ragged") from None
    if values.size != count:
        raise ApiError(400, f"input {INPUT_NAME!r}: shape {shape} needs {count} values, 'data' has {values.size}")
    if values.dtype.kind not in "iu" or (values.size and (values.min() < 0 or values.max() > 255)):
        raise ApiError(400, f"input {INPUT_NAME!r}: UINT8 'data' must be integers from 0 to 255")
    return values.astype(np.uint8).reshape(shape)


def _requested_outputs(doc: dict, model: LoadedModel) -> list[tuple[str, bool]]:
    """[(output name, send as binary)] in the order asked for; all outputs when none are named."""
    parameters = doc.get("parameters") or {}
    binary_default = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    requested = doc.get("outputs")
    if requested is None:
        return [(name, binary_default) for name in model.outputs]
    if not isinstance(requested, list) or not requested:
        raise ApiError(400, "'outputs' must be a non-empty list of {\"name\": ...} objects")
    chosen = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in model.outputs:
            raise ApiError(400, f"unknown output {str(name)[:40]!r}; the model has {', '.join(model.outputs)}")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise ApiError(400, f"output {name!r}: 'parameters' must be an object")
        if params.get("classification") or params.get("class_count"):
            raise ApiError(400, "the classification extension is not supported; ask for 'probabilities'")
        chosen.append((name, bool(params.get("binary_data", binary_default))))
    return chosen


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    model = _model(name, version)
    doc, binary = _split_body()
    with inference_arriving(model):
        images = _image_tensor(doc, binary)
    wanted = _requested_outputs(doc, model)
    names = tuple(out for out, _ in wanted)
    results = run_inference(model, images, names)
    return encode_outputs(model, doc, wanted, results)


def encode_outputs(model: LoadedModel, doc: dict, wanted: list[tuple[str, bool]],
                   results: list[np.ndarray]) -> Response:
    """The v2 answer: each output as JSON ``data``, or as raw little-endian float32 after the JSON header."""
    answer: dict = {"model_name": model.name, "model_version": VERSION}
    if isinstance(doc.get("id"), str):
        answer["id"] = doc["id"]
    answer["outputs"] = []
    blobs = []
    for (out, as_binary), values in zip(wanted, results, strict=True):
        values = np.ascontiguousarray(values, dtype="<f4")
        entry = {"name": out, "datatype": "FP32", "shape": list(values.shape)}
        if as_binary:
            entry["parameters"] = {"binary_data_size": values.nbytes}
            blobs.append(values.tobytes())
        else:
            entry["data"] = values.ravel().tolist()
        answer["outputs"].append(entry)
    if not blobs:
        return jsonify(answer)
    header = json.dumps(answer, separators=(",", ":")).encode()
    response = Response(header + b"".join(blobs), content_type="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response
