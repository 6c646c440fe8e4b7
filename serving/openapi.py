"""``GET /openapi.json``: an OpenAPI 3.1 description of every endpoint (a test checks none is missing)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("openapi", __name__)


def _json(schema_ref: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


def _errors(*codes: int, v2: bool = False) -> dict:
    texts = {400: "bad request (the message names the problem)", 404: "unknown model or path",
             405: "method not allowed", 413: "body, image or batch too large", 415: "unsupported content type",
             503: "not ready"}
    return {str(code): _json("V2Error" if v2 else "Error", texts[code]) for code in codes}


_MODEL_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "a loaded model's name (the .onnx file's stem)"}
_VERSION_PARAM = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": ["1"]}}


def build_spec(max_upload_mb: float, max_batch: int, max_pixels: int) -> dict:
    predict_params = [
        {"name": "topk", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
         "description": "how many classes to return (also accepted as a form field)"},
        {"name": "model", "in": "query", "schema": {"type": "string"},
         "description": "model name (also accepted as a form field); default: see GET /models"},
    ]
    v2_metadata = {"responses": {"200": _json("V2ModelMetadata", "model metadata"), **_errors(404, v2=True)}}
    v2_ready = {"responses": {"200": _json("V2ModelReady", "the model is ready"), **_errors(404, 503, v2=True)}}
    v2_infer = {
        "summary": "Classify a UINT8 [n,32,32,3] tensor (Open Inference Protocol)",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}},
            "application/octet-stream": {"description": "binary tensor data extension: a JSON header of "
                                                        "Inference-Header-Content-Length bytes, then raw tensor bytes",
                                         "schema": {"type": "string", "format": "binary"}},
        }},
        "responses": {"200": _json("V2InferResponse", "the requested outputs"),
                      **_errors(400, 404, 413, 415, v2=True)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "CIFAR-10 classifier", "version": "1",
                 "description": "Classifies images into the 10 CIFAR-10 classes with ONNX models. Uploads are "
                                f"limited to {max_upload_mb:g} MB per request, {max_pixels:,} pixels per image and "
                                f"{max_batch} images per request."},
        "paths": {
            "/": {"get": {"summary": "Web page: pick a model by its accuracy and speed, drop an image, see the "
                                     "top-k classes",
                          "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}}},
            "/static/{filename}": {"get": {
                "summary": "The web page's script and style sheet",
                "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "file"}, **_errors(404)}}},
            "/predict": {"post": {
                "summary": "Classify one or more uploaded images",
                "description": "Multipart field `img` (repeat it to classify several images as one batch), or the "
                               "raw image as the body with an image/* content type. Any Pillow-readable format; "
                               "EXIF orientation applied; converted to RGB; centre square cropped and resized to "
                               "32x32 with an antialiasing bicubic filter.",
                "parameters": predict_params,
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "required": ["img"], "properties": {
                        "img": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "topk": {"type": "integer"}, "model": {"type": "string"}}}},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                }},
                "responses": {"200": {"description": "predictions, most probable first", "content": {
                    "application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/PredictResponse"},
                        {"$ref": "#/components/schemas/BatchPredictResponse"}]}}}},
                    **_errors(400, 404, 405, 413, 415)}}},
            "/models": {"get": {
                "summary": "Loaded models: classes, test accuracy, CPU speed, test-time augmentation, file sha256",
                "description": "`test_accuracy` and `tta` come from the served .onnx file's metadata. "
                               "`cpu_images_per_s` and `parameters` come from MODELS_DIR/MANIFEST.json, and only "
                               "from an entry whose `onnx_sha256` is the served file's `sha256`; otherwise they "
                               "are null.",
                "responses": {"200": _json("ModelList", "the loaded models")}}},
            "/healthz": {"get": {"summary": "Liveness: the process answers",
                                 "responses": {"200": _json("Status", "alive")}}},
            "/readyz": {"get": {"summary": "Readiness: models loaded and warmed up",
                                "responses": {"200": _json("Status", "ready"), **_errors(503)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics, aggregated over all gunicorn workers",
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1 document",
                                                            "content": {"application/json": {}}}}}},
            "/v2": {"get": {"summary": "Server metadata (Open Inference Protocol)",
                            "responses": {"200": {"description": "name, version, extensions",
                                                  "content": {"application/json": {}}}}}},
            "/v2/health/live": {"get": {"summary": "Server live",
                                        "responses": {"200": {"description": '{"live": true}',
                                                              "content": {"application/json": {}}}}}},
            "/v2/health/ready": {"get": {"summary": "Server ready",
                                         "responses": {"200": {"description": '{"ready": true}',
                                                               "content": {"application/json": {}}},
                                                       **_errors(503, v2=True)}}},
            "/v2/models/{name}": {"get": {"summary": "Model metadata", "parameters": [_MODEL_PARAM], **v2_metadata}},
            "/v2/models/{name}/versions/{version}": {"get": {
                "summary": "Model metadata", "parameters": [_MODEL_PARAM, _VERSION_PARAM], **v2_metadata}},
            "/v2/models/{name}/ready": {"get": {"summary": "Model ready", "parameters": [_MODEL_PARAM], **v2_ready}},
            "/v2/models/{name}/versions/{version}/ready": {"get": {
                "summary": "Model ready", "parameters": [_MODEL_PARAM, _VERSION_PARAM], **v2_ready}},
            "/v2/models/{name}/infer": {"post": {"parameters": [_MODEL_PARAM], **v2_infer}},
            "/v2/models/{name}/versions/{version}/infer": {"post": {
                "parameters": [_MODEL_PARAM, _VERSION_PARAM], **v2_infer}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}}}},
            "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Prediction": {"type": "object", "required": ["label", "index", "probability"], "properties": {
                "label": {"type": "string"}, "index": {"type": "integer"},
                "probability": {"type": "number", "minimum": 0, "maximum": 1}}},
            "PredictResponse": {"type": "object", "required": ["model", "predictions"], "properties": {
                "model": {"type": "string"}, "filename": {"type": ["string", "null"]},
                "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}}},
            "BatchPredictResponse": {"type": "object", "required": ["model", "results"], "properties": {
                "model": {"type": "string"},
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "filename": {"type": ["string", "null"]},
                    "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}}}}}},
            "ModelList": {"type": "object", "properties": {
                "default_model": {"type": "string"},
                "models": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "arch": {"type": ["string", "null"]},
                    "classes": {"type": "array", "items": {"type": "string"}},
                    "test_accuracy": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                                      "description": "top-1 accuracy on the 10,000 CIFAR-10 test images, "
                                                     "with the model's test-time augmentation; null if unknown"},
                    "cpu_images_per_s": {"type": ["number", "null"], "exclusiveMinimum": 0,
                                         "description": "throughput measured when packaged (onnxruntime on CPU, "
                                                        "batches of 64); null without a manifest entry for "
                                                        "this exact file"},
                    "tta": {"type": "string", "examples": ["none", "flip", "flip_translate"],
                            "description": "test-time augmentation inside the graph (each image is classified "
                                           "in several variants and the answers averaged), or none"},
                    "parameters": {"type": ["integer", "null"], "exclusiveMinimum": 0,
                                   "description": "trainable parameters; null without a manifest entry for "
                                                  "this exact file"},
                    "sha256": {"type": "string", "description": "sha256 of the served .onnx file"},
                    "file_size": {"type": "integer"}, "opset": {"type": ["integer", "null"]},
                    "epochs": {"type": ["integer", "null"]},
                    "source_checkpoint_sha256": {"type": ["string", "null"]},
                    "input": {"type": "object"}, "outputs": {"type": "array", "items": {"type": "object"}},
                    "default": {"type": "boolean"}}}}}},
            "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
            "V2Tensor": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string"}, "parameters": {"type": "object"},
                "data": {"type": "array"}}},
            "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"}, "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "maxItems": 1,
                           "items": {"$ref": "#/components/schemas/V2Tensor"},
                           "description": "one tensor named image, UINT8, shape [n,32,32,3], RGB"},
                "outputs": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string", "enum": ["probabilities", "logits"]},
                    "parameters": {"type": "object"}}}}}},
            "V2InferResponse": {"type": "object", "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}}}},
            "V2ModelMetadata": {"type": "object", "properties": {
                "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"}, "inputs": {"type": "array"}, "outputs": {"type": "array"}}},
            "V2ModelReady": {"type": "object", "properties": {"name": {"type": "string"},
                                                              "ready": {"type": "boolean"}}},
        }},
    }


@bp.get("/openapi.json")
def openapi():
    config = current_app.config
    return jsonify(build_spec(config["MAX_UPLOAD_MB"], config["MAX_BATCH"], config["MAX_IMAGE_PIXELS"]))
