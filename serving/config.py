"""Service settings: environment variables, overridable by the dict given to ``create_app``.

=================  =========  =====================================================================
variable           default    meaning
=================  =========  =====================================================================
MODELS_DIR         weights    folder of ``<name>.onnx`` files (and optional ``MANIFEST.json``)
DEFAULT_MODEL      (see doc)  model used when a request names none; else MANIFEST's
                              ``default_model``; else the first model name in sorted order
DEFAULT_TOPK       5          classes in an answer when the request gives no ``topk``
MAX_UPLOAD_MB      10         largest request body in MiB; larger bodies get 413
MAX_IMAGE_PIXELS   64000000   largest decoded image (width x height); larger ones get 413 before
                              their pixels are decoded (decompression-bomb guard)
MAX_REQUEST_PIXELS 128000000  decoded pixels all the images of one request may take (after JPEG
                              scaling); the image that would exceed it gets 413, before decoding
MAX_BATCH          64         most images in one request (multipart parts or v2 batch rows)
INTRA_OP_THREADS   auto       onnxruntime threads per session run: usable CPUs // WORKERS, >= 1
PRECISION          auto       auto: a model whose ``NAME.int8.onnx`` loses <= 0.3 points and is faster
                              is served int8 as NAME, its fp32 file as NAME-fp32 (else the int8
                              file is NAME-int8); fp32: NAME is always the fp32 file
BATCH_MAX_IMAGES   32         dynamic batching: most images of concurrent requests one onnxruntime
                              call takes (a larger request runs alone); 1 = a call per request
BATCH_WAIT_MS      0          while the service is busy, how long a call may wait for more
                              requests to join it; an idle service never waits
READ_TIMEOUT       10         seconds a request's body may go without sending a byte: 408
REQUEST_TIMEOUT    30         seconds from a request's headers to the end of its body: 408
API_TOKEN          (none)     when set, /predict, /v2/.../infer, /models and /metrics need the
                              header ``Authorization: Bearer <token>`` (401 otherwise)
API_TOKEN_FILE     (none)     a file holding the token (first line), instead of API_TOKEN
=================  =========  =====================================================================

Read by serving/gunicorn.conf.py only (the process model, not the app):

=================  =========  =====================================================================
HOST, PORT         127.0.0.1  the address to listen on (8000)
WORKERS            auto       worker processes: usable CPUs
WORKER_CLASS       (ours)     ``serving.worker.ServiceWorker`` (gevent with the deadlines above);
                              another gunicorn worker class loses the slow-client protection
WORKER_CONNECTIONS 1000       connections one worker holds at once (gevent); more wait in the backlog
KEEPALIVE          5          seconds an idle connection is kept, and the most a client may take to
                              send a request's headers; then it is dropped
KEEPALIVE_REQUESTS 100        requests one connection may make; the last is answered with
                              ``Connection: close`` and the client reconnects, so connections (and
                              load) spread over the workers again after a worker restart; 0 = no limit
DRAIN_SECONDS      5          after SIGTERM: seconds of answering with /readyz at 503 before the
                              listener closes; in-flight requests then get GRACEFUL_TIMEOUT more
GRACEFUL_TIMEOUT   10         seconds in-flight requests may take to finish when stopping
TIMEOUT            30         a worker silent this long (stuck in native code) is killed and replaced
MAX_REQUESTS       200000     requests a worker answers before it is replaced (plus up to 10%
                              random jitter), so memory cannot creep; 0 = never. (At 20000 a busy
                              worker restarted every ~20 s and its keep-alive clients all moved to
                              the other worker: 16 clients got ~1,100 instead of ~1,900 req/s)
REUSE_PORT         0          1 = one SO_REUSEPORT socket per worker instead of one shared socket
ACCESS_LOG         off        1 = one access-log line per request on stdout, with its X-Request-ID
LOG_LEVEL          info       gunicorn's and the service's log level
=================  =========  =====================================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

MIB = 1024 * 1024

DEFAULTS: dict[str, Any] = {
    "MODELS_DIR": "weights",
    "DEFAULT_MODEL": None,
    "MAX_UPLOAD_MB": 10.0,
    "MAX_IMAGE_PIXELS": 64_000_000,
    "MAX_REQUEST_PIXELS": 128_000_000,
    "MAX_BATCH": 64,
    "INTRA_OP_THREADS": None,
    "PRECISION": "auto",
    "BATCH_MAX_IMAGES": 32,
    "BATCH_WAIT_MS": 0.0,
    "DEFAULT_TOPK": 5,
    "READ_TIMEOUT": 10.0,
    "REQUEST_TIMEOUT": 30.0,
    "API_TOKEN": None,
    "API_TOKEN_FILE": None,
}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and the bad value."""


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return number


def _positive_float(name: str, value: Any) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return number


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return text


def _api_token(token: Any, token_file: Any) -> str | None:
    """The bearer token from API_TOKEN or the first line of API_TOKEN_FILE; None when neither is set."""
    if token is not None and token_file is not None:
        raise ConfigError("set API_TOKEN or API_TOKEN_FILE, not both")
    if token_file is not None:
        try:
            with open(str(token_file), encoding="utf-8") as handle:
                token = handle.readline()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"API_TOKEN_FILE {str(token_file)!r} cannot be read: {exc}") from None
        source = "API_TOKEN_FILE's first line"
    else:
        source = "API_TOKEN"
    if token is None:
        return None
    token = str(token).strip()
    # RFC 6750's token68 characters: anything else could not be sent in an Authorization header.
    if not token or any(not (c.isascii() and (c.isalnum() or c in "-._~+/=")) for c in token):
        raise ConfigError(f"{source} must be a non-empty token of letters, digits and -._~+/= only")
    return token


def default_workers(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    if environ.get("WORKERS", "").strip():
        return _positive_int("WORKERS", environ["WORKERS"])
    return usable_cpus()


def default_intra_op_threads(workers: int) -> int:
    """One share of the CPUs per worker, so workers x threads does not oversubscribe the cores."""
    return max(1, usable_cpus() // max(1, workers))


def load_config(overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The validated settings: defaults <- environment <- ``overrides``. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = dict(DEFAULTS)
    for key in DEFAULTS:
        value = environ.get(key)
        if value is not None and value.strip() != "":
            raw[key] = value
    if overrides:
        raw.update(overrides)

    config: dict[str, Any] = {
        "MODELS_DIR": str(raw["MODELS_DIR"]),
        "DEFAULT_MODEL": (str(raw["DEFAULT_MODEL"]).strip() or None) if raw["DEFAULT_MODEL"] is not None else None,
        "MAX_UPLOAD_MB": _positive_float("MAX_UPLOAD_MB", raw["MAX_UPLOAD_MB"]),
        "MAX_IMAGE_PIXELS": _positive_int("MAX_IMAGE_PIXELS", raw["MAX_IMAGE_PIXELS"]),
        "MAX_REQUEST_PIXELS": _positive_int("MAX_REQUEST_PIXELS", raw["MAX_REQUEST_PIXELS"]),
        "MAX_BATCH": _positive_int("MAX_BATCH", raw["MAX_BATCH"]),
        "DEFAULT_TOPK": _positive_int("DEFAULT_TOPK", raw["DEFAULT_TOPK"]),
        "PRECISION": _choice("PRECISION", raw["PRECISION"], ("auto", "fp32")),
        "BATCH_MAX_IMAGES": _positive_int("BATCH_MAX_IMAGES", raw["BATCH_MAX_IMAGES"]),
        "BATCH_WAIT_MS": 0.0 if str(raw["BATCH_WAIT_MS"]).strip() in ("0", "0.0")
        else _positive_float("BATCH_WAIT_MS", raw["BATCH_WAIT_MS"]),
        "READ_TIMEOUT": _positive_float("READ_TIMEOUT", raw["READ_TIMEOUT"]),
        "REQUEST_TIMEOUT": _positive_float("REQUEST_TIMEOUT", raw["REQUEST_TIMEOUT"]),
        "API_TOKEN": _api_token(raw["API_TOKEN"], raw["API_TOKEN_FILE"]),
    }
    if raw["INTRA_OP_THREADS"] is None:
        config["INTRA_OP_THREADS"] = default_intra_op_threads(default_workers(environ))
    else:
        config["INTRA_OP_THREADS"] = _positive_int("INTRA_OP_THREADS", raw["INTRA_OP_THREADS"])
    # Flask/Werkzeug enforce this on every body (declared or chunked) with a 413.
    config["MAX_CONTENT_LENGTH"] = int(config["MAX_UPLOAD_MB"] * MIB)
    # Anything else the caller passed (TESTING, ...) goes to Flask's config unchanged.
    for key, value in (overrides or {}).items():
        config.setdefault(key, value)
    return config


def _non_negative_int(name: str, value: Any) -> int:
    return 0 if str(value).strip() == "0" else _positive_int(name, value)


def _non_negative_float(name: str, value: Any) -> float:
    """0, 0.0 or a positive number (gunicorn.conf.py hands DRAIN_SECONDS on to the workers as "0.0")."""
    try:
        zero = float(str(value).strip()) == 0
    except ValueError:
        zero = False
    return 0.0 if zero else _positive_float(name, value)


def _switch(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def process_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """gunicorn's settings from the environment (the second table above), validated. Raises ConfigError."""
    environ = os.environ if environ is None else environ

    def get(name: str, default: str) -> str:
        value = environ.get(name, "")
        return value if value.strip() else default

    return {
        "bind": f"{get('HOST', '127.0.0.1')}:{_positive_int('PORT', get('PORT', '8000'))}",
        "workers": default_workers(environ),
        "worker_class": get("WORKER_CLASS", "serving.worker.ServiceWorker"),
        "worker_connections": _positive_int("WORKER_CONNECTIONS", get("WORKER_CONNECTIONS", "1000")),
        "threads": _positive_int("THREADS", get("THREADS", "1")),
        "keepalive": _positive_int("KEEPALIVE", get("KEEPALIVE", "5")),
        "keepalive_requests": _non_negative_int("KEEPALIVE_REQUESTS", get("KEEPALIVE_REQUESTS", "100")),
        "drain_seconds": _non_negative_float("DRAIN_SECONDS", get("DRAIN_SECONDS", "5")),
        "graceful_timeout": _positive_float("GRACEFUL_TIMEOUT", get("GRACEFUL_TIMEOUT", "10")),
        "timeout": _positive_int("TIMEOUT", get("TIMEOUT", "30")),
        "max_requests": _non_negative_int("MAX_REQUESTS", get("MAX_REQUESTS", "200000")),
        "reuse_port": _switch(get("REUSE_PORT", "0")),
        "access_log": _switch(get("ACCESS_LOG", "")),
        "log_level": get("LOG_LEVEL", "info"),
    }
