"""The service's own API: ``POST /predict``, ``GET /models``, ``GET /healthz``, ``GET /readyz``.

An adapter: it turns a multipart form or a raw image body into uploads and the answer into JSON;
decoding, inference and top-k are serving/inference.py's, shared with the v2 protocol.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from flask import Blueprint, current_app, jsonify, request

from serving import inference, lifecycle, multipart
from serving.errors import ApiError
from serving.request_body import read_body

bp = Blueprint("api", __name__)

FIELD = "img"
RAW_BINARY_TYPES = ("application/octet-stream", "")  # "": no Content-Type header
_TOPK = re.compile(r"[0-9]{1,3}")
_MAX_FIELDS = 16  # form fields besides the images (topk, model, and a few a client may add)
_MAX_FIELD_BYTES = 1024


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
        uploads = [Upload(part.filename[:255] if part.filename else None, part.data)
                   for part in parts if part.name == FIELD]
        fields = {part.name: part.data[:_MAX_FIELD_BYTES].decode("utf-8", "replace")
                  for part in parts if part.name != FIELD and part.filename is None}
        if not uploads:
            found = ", ".join(sorted({part.name[:40] for part in parts}))
            raise ApiError(400, f"no file in multipart field {FIELD!r} "
                                + (f"(the request has fields: {found})" if found else "(the form is empty)"))
        return uploads, fields
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
    uploads, fields = _read_request()
    model = inference.resolve_model(request.args.get("model", fields.get("model")))
    k = parse_topk(request.args.get("topk", fields.get("topk")), len(model.classes))
    limit = current_app.config["MAX_BATCH"]
    if len(uploads) > limit:
        raise ApiError(413, f"{len(uploads)} images in one request; at most {limit} (MAX_BATCH)")
    with inference.arriving(model):
        batch = inference.preprocess([(_describe(i, name, len(uploads)), data)
                                      for i, (name, data) in enumerate(uploads)])
    probs = inference.infer(model, batch)[0]
    if len(uploads) == 1:
        top = inference.top_predictions(model, probs[0], k)
        return jsonify(model=model.name, filename=uploads[0][0], predictions=top)
    results = [{"filename": name, "predictions": inference.top_predictions(model, row, k)}
               for (name, _), row in zip(uploads, probs, strict=True)]
    return jsonify(model=model.name, results=results)


@bp.get("/models")
def list_models():
    reg = inference.registry()
    return jsonify(default_model=reg.default_name,
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
