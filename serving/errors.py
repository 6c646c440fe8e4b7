"""Every error is JSON: ``{"error": {"code": 400, "message": "..."}}``.

The one exception is the Open Inference Protocol under ``/v2/``, whose clients expect
``{"error": "..."}`` (KServe v2 REST ``$inference_error_response``); the status codes are the same.
Unexpected exceptions are logged with their traceback and answered with a generic 500: a response
never carries a stack trace.
"""

from __future__ import annotations

import logging
from functools import partial

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from serving import connections
from serving.deadlines import body_deadline

log = logging.getLogger(__name__)

# A rejected request body that was not read would leave the client writing into a closed socket;
# bodies up to this size are read and dropped first, so the client gets to see the 413.
_DRAIN_LIMIT = 64 * 1024 * 1024
_DRAIN_SECONDS = 2.0
_DRAIN_STEP = 64 * 1024  # read and dropped this much at a time: draining holds no more memory than that
# A body refused without being read (503, the worker's body budget is full) gets only a short linger: enough
# for a small body's client to finish sending and read the answer, too little to cost the worker real work
# when a flood of uploads is refused (a client still sending after that sees the connection reset).
_LINGER_LIMIT = 256 * 1024
_LINGER_SECONDS = 0.5


class ApiError(Exception):
    """A client mistake (or a refusal): HTTP ``status`` with a message that names the problem.

    ``headers``: extra response headers; ``close_connection``: answer at once with ``Connection: close``,
    then read and drop what the client still sends (bounded) and close the connection."""

    headers: dict[str, str] = {}
    close_connection = False

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
    _drain(request.environ.get("wsgi.input"))


def _drain(stream, limit: int = _DRAIN_LIMIT, seconds: float = _DRAIN_SECONDS) -> None:
    if stream is None:
        return
    remaining = limit
    try:
        with body_deadline(seconds):
            while remaining > 0:
                chunk = stream.read(min(remaining, _DRAIN_STEP))
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


_LINGER_BUFFER = bytearray(_DRAIN_STEP)  # what lingering reads is thrown away: one buffer serves every connection


def _linger(sock) -> None:
    """Read and drop what the client still sends of a refused body, straight from the socket (not through the
    request's body stream, which reads up to 1 MiB ahead): at most _LINGER_LIMIT bytes and _LINGER_SECONDS."""
    if sock is None:
        return
    remaining = _LINGER_LIMIT
    try:
        with body_deadline(_LINGER_SECONDS):
            while remaining > 0:
                received = sock.recv_into(_LINGER_BUFFER, min(remaining, _DRAIN_STEP))
                if not received:
                    break
                remaining -= received
    except Exception:  # stalled or gone: the connection is closed next anyway
        pass


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError):
        if exc.close_connection:
            # The answer goes out first; a short linger runs when the server closes the response, then the
            # connection is closed (under the service's gevent worker).
            connections.close_after_response(request.environ)
            response = error_response(exc.status, exc.message)
            response.call_on_close(partial(_linger, request.environ.get("gunicorn.socket")))
        else:
            if exc.status in (401, 413):
                _drain_body()
            response = error_response(exc.status, exc.message)
        response.headers.update(exc.headers)
        return response

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
