"""Per-request bookkeeping every endpoint shares: the request's id, its start time, and optional auth.

Request IDs: a client's ``X-Request-ID`` is kept when it is a sane token (at most 128 characters of
letters, digits and ``-._:/+=``), otherwise one is made; the answer carries it in ``X-Request-ID``
and the access log (ACCESS_LOG=1) and error log lines show it, so one request can be followed
from a client's log through a proxy to this service's.

Auth (off unless API_TOKEN or API_TOKEN_FILE is set): the endpoints that classify or reveal the
deployment (``/predict``, ``/v2/.../infer``, ``/models``, ``/metrics``) need
``Authorization: Bearer <token>``; health and readiness stay open for probes, as do the web page
and ``/openapi.json``. A missing or wrong token is a 401 with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid

from flask import Flask, current_app, g, request

from serving.errors import ApiError

HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
PROTECTED_ENDPOINTS = {"api.predict", "api.list_models", "metrics.metrics", "kserve.infer"}


def _request_id() -> str:
    given = request.headers.get(HEADER, "")
    return given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex


def _check_token(expected: str) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "this endpoint needs the header 'Authorization: Bearer <token>' (API_TOKEN is set)")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "the bearer token is not valid")


def init_app(app: Flask) -> None:
    @app.before_request
    def _begin():
        g.request_started = time.monotonic()
        g.request_id = _request_id()
        token = current_app.config.get("API_TOKEN")
        if token and request.endpoint in PROTECTED_ENDPOINTS:
            _check_token(token)

    @app.after_request
    def _tag(response):
        response.headers[HEADER] = g.get("request_id") or _request_id()
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="cifar10-classifier"'
        return response
