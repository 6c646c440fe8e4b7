"""Every error is JSON: ``{"error": {"code": 400, "message": "..."}}``.

The one exception is the Open Inference Protocol under ``/v2/``, whose clients expect
``{"error": "..."}`` (KServe v2 REST ``$inference_error_response``); the status codes are the same.
Unexpected exceptions are logged with their traceback and answered with a generic 500: a response
never carries a stack trace.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from serving.deadlines import body_deadline

log = logging.getLogger(__name__)

# A rejected request body that was not read would leave the client writing into a closed socket;
# bodies up to this size are read and dropped first, so the client gets to see the 413.
_DRAIN_LIMIT = 64 * 1024 * 1024
_DRAIN_SECONDS = 2.0


class ApiError(Exception):
    """A client mistake: HTTP ``status`` with a message that names the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(status: int, message: str) -> dict:
    if request.path.startswith("/v2/") or request.path == "/v2":
        return {"error": message}
    return {"error": {"code": status, "message": message}}


def error_response(status: int, message: str) -> Response:
    response = jsonify(error_body(status, message))
    response.status_code = status
    return response


def _drain_body() -> None:
    """Read and drop what is left of the request body (bounded in size and time), ignoring errors."""
    length = request.content_length
    if length is not None and length > _DRAIN_LIMIT:
        return
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return
    remaining = _DRAIN_LIMIT
    try:
        with body_deadline(_DRAIN_SECONDS):
            while remaining > 0:
                chunk = stream.read(min(remaining, 1024 * 1024))
                if not chunk:
                    break
                remaining -= len(chunk)
    except Exception:  # a client that hung up or stalled: the connection is dropped after the answer
        pass


def _http_message(exc: HTTPException) -> str:
    if isinstance(exc, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        mb = current_app.config.get("MAX_UPLOAD_MB")
        if limit:
            return f"request body is larger than the {mb:g} MB limit ({limit:,} bytes, MAX_UPLOAD_MB)"
        return "request body is too large"
    if exc.code == 404:
        return f"no endpoint at {request.path[:200]!r}; see /openapi.json"
    if exc.code == 405:
        allowed = ", ".join(sorted(set(getattr(exc, "valid_methods", None) or []) - {"HEAD", "OPTIONS"}))
        message = f"method {request.method} is not allowed on {request.path[:200]}"
        return message + (f"; use {allowed}" if allowed else "")
    return exc.description or exc.name


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError):
        if exc.status in (401, 413):
            _drain_body()
        return error_response(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        if exc.code == 413:
            _drain_body()
        response = exc.get_response()  # keeps headers such as Allow on a 405
        response.set_data(current_app.json.dumps(error_body(exc.code or 500, _http_message(exc))) + "\n")
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        log.exception("unhandled error on %s %s (request id %s)", request.method, request.path[:200],
                      g.get("request_id", "-"))
        return error_response(500, "internal server error; the service log has the details")
