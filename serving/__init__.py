"""HTTP service for the CIFAR-10 ONNX models (Flask app factory; run it with gunicorn).

    gunicorn --config serving/gunicorn.conf.py 'serving:create_app()'

Needs only onnxruntime, Pillow, numpy, Flask, gunicorn and prometheus_client: never torch.
Importing this package is cheap and does not import onnxruntime (the gunicorn master imports it
for ``serving.config``, and onnxruntime must not be loaded in a process that forks workers).

Where things are. A request passes through
    worker.py (gunicorn's gevent worker with deadlines) -> request_context.py (request id, auth)
    -> request_body.py + deadlines.py (body within size and time limits)
    -> a protocol adapter: api.py (``/predict`` multipart or raw image; multipart.py parses)
       or kserve.py (Open Inference Protocol v2 tensors)
    -> inference.py, the one core both adapters call: common/images.py decodes each upload to 32x32 RGB,
       models.py runs the ONNX model, top-k; metrics.py times each step.
Errors become JSON in errors.py. Models come from model_files.py (MODELS_DIR's bytes, read once by
the gunicorn master) and are checked against ``common.contract`` in models.py. config.py reads and
validates every setting, gunicorn.conf.py and lifecycle.py run the processes (readiness, draining),
openapi.py describes the API, web.py serves the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from serving.config import ConfigError

__all__ = ["create_app", "ConfigError"]


def __getattr__(name: str):
    # serving.ConfigError without importing serving.config here, so that `python -m serving.config`
    # (which prints the settings table) runs the module once, as __main__ only.
    if name == "ConfigError":
        from serving.config import ConfigError

        return ConfigError
    raise AttributeError(f"module 'serving' has no attribute {name!r}")


DISTRIBUTION = "cifar10-classifier"  # pyproject.toml's project name


def service_version() -> str:
    """The installed project's version (pyproject.toml), which ``/models`` and ``/metrics`` report."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The WSGI app with every model in MODELS_DIR loaded, verified and warmed up.

    ``config`` overrides the environment (see serving/config.py; its other keys, such as TESTING, go to
    Flask's config unchanged); without it, the settings the gunicorn master parsed (or the environment's,
    outside gunicorn). Raises ConfigError or
    serving.models.ModelLoadError, with a one-line message, when the service could not answer correctly.
    """
    from flask import Flask

    from serving import api, body_budget, errors, kserve, metrics, openapi, request_context, web
    from serving import config as _config
    from serving.models import ModelRegistry

    settings = _config.active(config)
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config.update(settings.flask_config())
    for key, value in (config or {}).items():
        app.config.setdefault(key, value)
    app.extensions["settings"] = settings
    app.json.sort_keys = False
    app.extensions["model_registry"] = ModelRegistry.load(
        settings.models_dir, settings.default_model, settings.intra_op_threads, settings.precision)

    errors.register_error_handlers(app)
    request_context.init_app(app)  # before metrics: a refused request is still counted
    metrics.init_app(app)
    body_budget.init_app(app)
    for blueprint in (api.bp, kserve.bp, openapi.bp, web.bp):
        app.register_blueprint(blueprint)

    @app.after_request
    def _security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app
