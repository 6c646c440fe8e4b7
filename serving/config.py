"""Service settings: environment variables, overridable by the dict given to ``create_app``.

=================  =========  =====================================================================
variable           default    meaning
=================  =========  =====================================================================
MODELS_DIR         weights    folder of ``<name>.onnx`` files (and optional ``MANIFEST.json``)
DEFAULT_MODEL      (see doc)  model used when a request names none; else MANIFEST's
                              ``default_model``; else the first model name in sorted order
MAX_UPLOAD_MB      10         largest request body in MiB; larger bodies get 413
MAX_IMAGE_PIXELS   64000000   largest decoded image (width x height); larger ones get 413 before
                              their pixels are decoded (decompression-bomb guard)
MAX_BATCH          64         most images in one request (multipart parts or v2 batch rows)
INTRA_OP_THREADS   auto       onnxruntime threads per session run: usable CPUs // WORKERS, >= 1
WORKERS            auto       gunicorn worker processes (read by serving/gunicorn.conf.py too)
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
    "MAX_BATCH": 64,
    "INTRA_OP_THREADS": None,
    "DEFAULT_TOPK": 5,
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
        "MAX_BATCH": _positive_int("MAX_BATCH", raw["MAX_BATCH"]),
        "DEFAULT_TOPK": _positive_int("DEFAULT_TOPK", raw["DEFAULT_TOPK"]),
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
