"""Whether this worker wants new traffic: readiness as ``/readyz`` and ``/v2/health/ready`` report it.

A worker is ready once its models are loaded and warmed (``create_app`` returns only then) and stops
being ready when it is asked to shut down: the worker class (serving/worker.py) calls
``begin_shutdown`` on SIGTERM and keeps answering for DRAIN_SECONDS, so a load balancer polling
readiness sees 503 and moves traffic away before the listener closes. Plain module state: one
process is one worker, and only its own greenlets read it.
"""

from __future__ import annotations

_shutting_down = False


def begin_shutdown() -> None:
    global _shutting_down
    _shutting_down = True


def shutting_down() -> bool:
    return _shutting_down
