"""The service's own API: ``POST /predict``, ``GET /models``, ``GET /healthz``, ``GET /readyz``."""

from __future__ import annotations

import re
import time
from typing import NamedTuple

import numpy as np
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from serving import images, lifecycle, metrics, multipart
from serving.deadlines import BodyTimeout, body_deadline
from serving.errors import ApiError
from serving.models import PROBABILITIES, LoadedModel, ModelRegistry, UnknownModelError

bp = Blueprint("api", __name__)

FIELD = "img"
_TOPK = re.compile(r"[0-9]{1,3}")
_MAX_FIELDS = 16  # form fields besides the images (topk, model, and a few a client may add)
_MAX_FIELD_BYTES = 1024


def registry() -> ModelRegistry:
    return current_app.extensions["model_registry"]


def resolve_model(name: str | None) -> LoadedModel:
    try:
        model = registry().get(name)
    except UnknownModelError as exc:
        raise ApiError(404, str(exc)) from None
    metrics.use_model(model.name)
    return model


def parse_topk(raw: str | None, classes: int) -> int:
    if raw is None or raw == "":
        return min(current_app.config["DEFAULT_TOPK"], classes)
    if not _TOPK.fullmatch(raw) or not 1 <= int(raw) <= classes:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise ApiError(400, f"topk must be an integer from 1 to {classes}, got {shown!r}")
    return int(raw)


def read_body(limit: int | None = None, why: str = "") -> bytes:
    """The request body, at most ``limit`` (default MAX_CONTENT_LENGTH; ``why`` explains another) bytes.

    Werkzeug refuses a too-large Content-Length itself, but leaves a chunked body that the WSGI
    server marks as terminated unbounded; this read enforces the limit for both. A body that stops
    arriving (READ_TIMEOUT between bytes) or is not complete REQUEST_TIMEOUT after the request
    began is answered with 408.
    """
    if limit is None or limit >= current_app.config["MAX_CONTENT_LENGTH"]:
        limit, too_large = current_app.config["MAX_CONTENT_LENGTH"], RequestEntityTooLarge()
    else:
        too_large = ApiError(413, f"request body is larger than {limit:,} bytes, {why}")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    stream = request.stream
    chunks, total = [], 0
    remaining = current_app.config["REQUEST_TIMEOUT"] - (time.monotonic() - g.get("request_started", time.monotonic()))
    try:
        with body_deadline(remaining):
            while True:
                chunk = stream.read(min(1 << 20, limit + 1 - total))
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise too_large
    except (BodyTimeout, TimeoutError, ClientDisconnected) as exc:
        if isinstance(exc, ClientDisconnected) and not isinstance(exc.__context__, TimeoutError):
            raise  # the client really went away (Werkzeug hides the socket timeout behind this exception)
        raise ApiError(408, f"the request body did not arrive in time ({total:,} bytes received; the limits are "
                            f"{current_app.config['READ_TIMEOUT']:g} s without data, READ_TIMEOUT, and "
                            f"{current_app.config['REQUEST_TIMEOUT']:g} s in all, REQUEST_TIMEOUT)") from None


def decode_upload(data: bytes, what: str) -> np.ndarray:
    start = time.perf_counter()
    try:
        array = images.decode(data, current_app.config["MAX_IMAGE_PIXELS"])
    except images.ImageError as exc:
        metrics.IMAGE_ERRORS.labels("too_large" if exc.status == 413 else "undecodable").inc()
        raise ApiError(exc.status, f"{what}: {exc}") from None
    metrics.DECODE_LATENCY.observe(time.perf_counter() - start)
    return array


def run_model(model: LoadedModel, batch: np.ndarray, outputs: tuple[str, ...] = (PROBABILITIES,)) -> list[np.ndarray]:
    """One onnxruntime call on the whole batch, timed into the metrics."""
    start = time.perf_counter()
    results = model.run(batch, outputs)
    metrics.observe_inference(model.name, len(batch), time.perf_counter() - start)
    return results


def top_predictions(model: LoadedModel, probs: np.ndarray, k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[:k]
    # str() of a float32 is its shortest round-tripping form: 0.91, not 0.9100000262260437
    return [{"label": model.classes[i], "index": int(i), "probability": float(str(probs[i]))} for i in order]


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
    if mimetype.startswith("image/"):
        return [Upload(None, read_body())], {}
    shown = mimetype or "none"
    raise ApiError(415, f"unsupported content type {shown!r}: send multipart/form-data with the image in "
                        f"field {FIELD!r}, or the raw image bytes with an image/* content type")


def _describe(index: int, filename: str | None, count: int) -> str:
    """How an error message names an upload: 'img part 2 'dog.png'', 'img 'cat.png'' or 'image'."""
    label = f"{FIELD} part {index + 1}" if count > 1 else (FIELD if filename else "image")
    return f"{label} {filename!r}" if filename else label


@bp.post("/predict")
def predict():
    uploads, fields = _read_request()
    model = resolve_model(request.args.get("model", fields.get("model")))
    k = parse_topk(request.args.get("topk", fields.get("topk")), len(model.classes))
    limit = current_app.config["MAX_BATCH"]
    if len(uploads) > limit:
        raise ApiError(413, f"{len(uploads)} images in one request; at most {limit} (MAX_BATCH)")
    batch = np.stack([decode_upload(data, _describe(i, name, len(uploads))) for i, (name, data) in enumerate(uploads)])
    probs = run_model(model, batch)[0]
    if len(uploads) == 1:
        return jsonify(model=model.name, filename=uploads[0][0], predictions=top_predictions(model, probs[0], k))
    results = [{"filename": name, "predictions": top_predictions(model, row, k)}
               for (name, _), row in zip(uploads, probs, strict=True)]
    return jsonify(model=model.name, results=results)


@bp.get("/models")
def list_models():
    reg = registry()
    return jsonify(default_model=reg.default_name,
                   models=[{**reg.models[name].describe(), "default": name == reg.default_name}
                           for name in reg.names])


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """200 once every model is loaded and warmed; 503 while this worker shuts down (serving/lifecycle.py)."""
    reg = registry()
    if not reg.ready:
        reason = "shutting down" if lifecycle.shutting_down() else "models not loaded"
        return jsonify(status="not ready", reason=reason, models=[]), 503
    return jsonify(status="ready", models=reg.names, default_model=reg.default_name)
