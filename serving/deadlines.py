"""Time limits on reading a request body, on top of the worker's per-read socket timeout.

Under the service's gevent worker (serving/worker.py) a ``gevent.Timeout`` interrupts a read that
a client keeps alive by trickling bytes; anywhere else (Flask's test client, a threaded server)
there is nothing to interrupt with, and only the server's own socket timeouts apply.
"""

from __future__ import annotations

import contextlib

import gevent
from gevent import monkey


class BodyTimeout(Exception):
    """The request body did not arrive in time."""


def body_deadline(seconds: float) -> contextlib.AbstractContextManager:
    """A context in which reading the body raises BodyTimeout after ``seconds``."""
    if not monkey.is_module_patched("socket"):
        return contextlib.nullcontext()
    return gevent.Timeout(max(seconds, 0.001), BodyTimeout())
