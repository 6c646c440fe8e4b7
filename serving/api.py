"""The service's own API: ``POST /predict``, ``GET /models``, ``GET /healthz``, ``GET /readyz``.

An adapter: it turns a multipart form or a raw image body into uploads and the answer into JSON;
decoding, inference and top-k are serving/inference.py's, shared with the v2 protocol. With
``include_input=true`` each answer also carries ``input_png``: the 32x32 RGB array the model was given
(common/images.py's decode of the upload), as a lossless PNG; the web page shows it beside the bars.
"""

from __future__ import annotations

import base64
import re
from typing import NamedTuple

from flask import Blueprint, current_app, jsonify, request

from common.images import to_png
from serving import inference, lifecycle, multipart, service_version
from serving.errors import ApiError
from serving.request_body import read_body

bp = Blueprint("api", __name__)

FIELD = "img"
RAW_BINARY_TYPES = ("application/octet-stream", "")  # "": no Content-Type header
_TOPK = re.compile(r"[0-9]{1,3}")
_MAX_FIELDS = 16  # form fields besides the images (topk, model, and a few a client may add)
_MAX_FIELD_BYTES = 1024


_FLAGS = {"": False, "0": False, "false": False, "1": True, "true": True}


def parse_flag(name: str, raw: str | None) -> bool:
    """An opt-in switch (query parameter or form field): true/1 or false/0, off when absent."""
    if raw is None:
        return False
    value = _FLAGS.get(raw.strip().lower())
    if value is None:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise ApiError(400, f"{name} must be true or false (or 1 or 0), got {shown!r}")
    return value


def input_png(image) -> str:
    """The 32x32 RGB array the model was given, as base64 PNG: lossless, so exactly the service's decode."""
    return base64.b64encode(to_png(image)).decode("ascii")


def parse_topk(raw: str | None, classes: int) -> int:
    if raw is None or raw == "":
        return min(current_app.config["DEFAULT_TOPK"], classes)
    if not _TOPK.fullmatch(raw) or not 1 <= int(raw) <= classes:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise ApiError(400, f"topk must be an integer from 1 to {classes}, got {shown!r}")
    return int(raw)


class Upload(NamedTuple):
    filename: str | None
    data: bytes


def _read_request() -> tuple[list[Upload], dict[str, str]]:
    """The images in the request, in order, and its other form fields."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        try:
            boundary = multipart.boundary_of(request.headers.get("Content-Type", ""))
            # read_body answers 413 rather than read more than MAX_CONTENT_LENGTH bytes
            parts = multipart.parse(read_body(), boundary,
                                    current_app.config["MAX_BATCH"] + _MAX_FIELDS)
        except multipart.TooManyParts as exc:
            raise ApiError(413, f"{exc} (at most {current_app.config['MAX_BATCH']} images, MAX_BATCH)") from None
        except multipart.MultipartError as exc:
            raise ApiError(400, f"malformed multipart body: {exc}") from None
        images = [Upload(part.filename[:255] if part.filename else None, part.data)
                  for part in parts if part.name == FIELD]
        fields = {part.name: part.data[:_MAX_FIELD_BYTES].decode("utf-8", "replace")
                  for part in parts if part.name != FIELD and part.filename is None}
        if not images:
            found = ", ".join(sorted({part.name[:40] for part in parts}))
            raise ApiError(400, f"no file in multipart field {FIELD!r} "
                                + (f"(the request has fields: {found})" if found else "(the form is empty)"))
        return images, fields
    # A raw body: the decoder reads the format from the bytes themselves, so a generic binary type, or
    # none at all (RFC 9110 8.3 lets the recipient examine the data), is as good as image/*.
    if mimetype.startswith("image/") or mimetype in RAW_BINARY_TYPES:
        return [Upload(None, read_body())], {}
    raise ApiError(415, f"unsupported content type {mimetype!r}: send multipart/form-data with the image in "
                        f"field {FIELD!r}, or the raw image bytes as the body (image/* or application/octet-stream)")


def _describe(index: int, filename: str | None, count: int) -> str:
    """How an error message names an upload: 'img part 2 'dog.png'', 'img 'cat.png'' or 'image'."""
    label = f"{FIELD} part {index + 1}" if count > 1 else (FIELD if filename else "image")
    return f"{label} {filename!r}" if filename else label


@bp.post("/predict")
def predict():
    files, fields = _read_request()
    model = inference.resolve_model(request.args.get("model", fields.get("model")))
    k = parse_topk(request.args.get("topk", fields.get("topk")), len(model.classes))
    # opt-in: each answer also carries the 32x32 image the model saw (the page shows it beside the bars)
    with_input = parse_flag("include_input", request.args.get("include_input", fields.get("include_input")))
    limit = current_app.config["MAX_BATCH"]
    if len(files) > limit:
        raise ApiError(413, f"{len(files)} images in one request; at most {limit} (MAX_BATCH)")
    with inference.arriving(model):
        batch = inference.preprocess([(_describe(i, name, len(files)), data)
                                      for i, (name, data) in enumerate(files)])
    probs = inference.infer(model, batch)[0]
    results = [{"filename": name, "predictions": inference.top_predictions(model, row, k),
                **({"input_png": input_png(image)} if with_input else {})}
               for (name, _), row, image in zip(files, probs, batch, strict=True)]
    if len(files) == 1:
        return jsonify(model=model.name, **results[0])
    return jsonify(model=model.name, results=results)


@bp.get("/models")
def list_models():
    reg = inference.registry()
    return jsonify(version=service_version(), default_model=reg.default_name,
                   models=[{**reg.models[name].describe(), "default": name == reg.default_name}
                           for name in reg.names])


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """200 once every model is loaded and warmed; 503 while this worker shuts down (serving/lifecycle.py)."""
    reg = inference.registry()
    if not reg.ready:
        reason = "shutting down" if lifecycle.shutting_down() else "models not loaded"
        return jsonify(status="not ready", reason=reason, models=[]), 503
    return jsonify(status="ready", models=reg.names, default_model=reg.default_name)
