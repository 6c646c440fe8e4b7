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



def let_others_run() -> None:
    """Yield to the worker's other greenlets between chunks of a body being read. A read returns at once while
    the client keeps sending, so a greenlet reading a fast upload would otherwise hold the whole worker (and
    every other request of it) until the body ends."""
    if monkey.is_module_patched("socket"):
        gevent.sleep(0)
