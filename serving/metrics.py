"""Prometheus metrics, correct across gunicorn workers.

Under gunicorn, ``serving/gunicorn.conf.py`` points PROMETHEUS_MULTIPROC_DIR at an emptied folder
before any worker starts; prometheus_client then keeps every worker's values in files there, and
``GET /metrics`` (answered by whichever worker) aggregates all of them. Without that variable
(Flask's test client, a single process) the ordinary in-process registry is used.

Labels only ever take values from a fixed set (route patterns, loaded model names, status codes),
never raw request text, so a client cannot blow up the number of series.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from serving import service_version

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REQUESTS = Counter("cifar10_http_requests", "HTTP requests by endpoint, method, model and status",
                   ["endpoint", "method", "model", "status"])
REQUEST_LATENCY = Histogram("cifar10_http_request_duration_seconds", "Time to answer a request, by endpoint",
                            ["endpoint", "model"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("cifar10_inference_batch_size", "Images per onnxruntime call", ["model"],
                       buckets=BATCH_BUCKETS)
BATCH_REQUESTS = Histogram("cifar10_inference_batch_requests", "Requests sharing one onnxruntime call (dynamic "
                           "batching)", ["model"], buckets=BATCH_BUCKETS)
QUEUE_WAIT = Histogram("cifar10_inference_queue_wait_seconds", "Time a request waited for its onnxruntime call",
                       ["model"], buckets=(0.0001, 0.00025, 0.0005, *LATENCY_BUCKETS))
INFERENCE_LATENCY = Histogram("cifar10_inference_duration_seconds", "onnxruntime session.run time",
                              ["model"], buckets=LATENCY_BUCKETS)
BUILD_INFO = Gauge("cifar10_build_info", "Always 1; the service's release in the label", ["version"],
                   multiprocess_mode="max")
BUILD_INFO.labels(service_version()).set(1)
DECODE_LATENCY = Histogram("cifar10_image_decode_duration_seconds", "Time to turn one upload into 32x32 RGB",
                           buckets=LATENCY_BUCKETS)
IMAGE_ERRORS = Counter("cifar10_rejected_images", "Uploads refused, by reason", ["reason"])

# Admission (serving/connections.py, serving/body_budget.py). Gauges are summed over the live workers.
CONNECTIONS = SimpleNamespace(
    open=Gauge("cifar10_open_connections", "Client connections the workers hold", multiprocess_mode="livesum"),
    idle=Gauge("cifar10_idle_connections", "Connections with no request in progress and no byte of the next one",
               multiprocess_mode="livesum"),
    closed_to_admit=Counter("cifar10_connections_closed_to_admit", "Idle connections closed because a worker "
                            "was at WORKER_CONNECTIONS and a new client was waiting"),
)
BODY_BYTES_IN_FLIGHT = Gauge("cifar10_request_body_bytes_in_flight", "Request-body bytes the workers hold or have "
                             "reserved (by Content-Length) for requests in progress", multiprocess_mode="livesum")
REFUSED = Counter("cifar10_refused_requests", "Requests answered 503 before their body was read, by reason",
                  ["reason"])
REFUSED.labels("body_budget")  # shown (as 0) before the first refusal

bp = Blueprint("metrics", __name__)


def use_model(name: str) -> None:
    """Label this request's metrics with a (loaded) model's name."""
    g.metrics_model = name


def observe_batch(model: str, record) -> None:
    """One onnxruntime call (a ``serving.batching.BatchRecord``): its images, requests, time and queue waits."""
    BATCH_SIZE.labels(model).observe(record.images)
    BATCH_REQUESTS.labels(model).observe(record.requests)
    INFERENCE_LATENCY.labels(model).observe(record.seconds)
    for wait in record.queue_waits:
        QUEUE_WAIT.labels(model).observe(wait)


def _registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


@bp.get("/metrics")
def metrics():
    return Response(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.before_request
    def _start_timer():
        g.metrics_start = time.perf_counter()

    @app.after_request
    def _record(response):
        start = g.pop("metrics_start", None)
        endpoint = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        model = g.get("metrics_model", "")
        method = request.method if request.method in _METHODS else "OTHER"
        REQUESTS.labels(endpoint, method, model, str(response.status_code)).inc()
        if start is not None:
            REQUEST_LATENCY.labels(endpoint, model).observe(time.perf_counter() - start)
        return response


_METHODS = {"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"}
