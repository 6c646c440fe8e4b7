"""How many request-body bytes one worker holds at once: BODY_BUDGET_MB, enforced before a body is read.

Without it, concurrent uploads each held their body in memory while it arrived, with no ceiling: 300
uploads of 9.5 MiB (under MAX_UPLOAD_MB), held open before their last bytes, grew the two workers by
1,794 and 1,890 MiB (benchmarks/results/slow_clients_admission_before.json). Now every body is counted
against its worker's budget before it is read:

- a body with a Content-Length reserves that many bytes before its first byte is read;
- a chunked body (no Content-Length) is counted by what has arrived, plus CHUNKED_AHEAD for what gunicorn
  may have read ahead of it (its socket reads take up to 1 MiB at once);
- the reservation lasts until the request's answer is made (its bytes, or the images decoded from them,
  are held that long), and is then released.

A body that would take its worker past the budget is answered at once with 503, ``Retry-After`` and
``Connection: close``, and counted in /metrics (``cifar10_refused_requests{reason="body_budget"}``); what
the client keeps sending is read and dropped for at most 0.5 s and 256 KiB (so a client of a small body
that reads only after sending still sees the answer), never kept; then the connection is closed. Bodies
of more than 1 MiB (BODY_SMALL) may fill only three quarters of the budget:
the last quarter is kept for small requests (a CIFAR-10 image is a few KiB), so a flood of large uploads
slows large uploads down but does not refuse ordinary requests.

Why refuse rather than spool bodies to disk: refusing costs nothing and bounds memory exactly; a spooled
body still has to be read back whole to be decoded, and the disk then needs a budget of its own.
"""

from __future__ import annotations

from flask import Flask, current_app, g, request

from serving import connections, metrics
from serving.config import BODY_LARGE_SHARE, BODY_SMALL, MIB
from serving.errors import ApiError

READ_STEP = 64 * 1024  # a chunked body is read this much at a time ...
CHUNKED_AHEAD = MIB + READ_STEP  # ... and reserved this far ahead of what has arrived (gunicorn reads <= 1 MiB ahead)
RETRY_AFTER_S = 1


class BodyBudget:
    """Bytes of request bodies one worker holds; ``resize`` grows or shrinks one request's share.

    A share is large when its body is (or, for a chunked body, has grown) over ``small`` bytes."""

    def __init__(self, total: int, small: int = BODY_SMALL):
        self.total = total
        self.large_limit = int(total * BODY_LARGE_SHARE)
        self.small = small
        self.in_flight = 0
        self.large_in_flight = 0  # the part of in_flight held by large bodies

    def resize(self, held: int, wanted: int, held_large: bool | None = None, large: bool | None = None) -> bool:
        """Change one request's share from ``held`` to ``wanted`` bytes; False (and no change) when that would
        take the worker past the budget (or, for a large body, past three quarters of it)."""
        held_large = held > self.small if held_large is None else held_large
        large = wanted > self.small if large is None else large
        total = self.in_flight - held + wanted
        large_total = self.large_in_flight - (held if held_large else 0) + (wanted if large else 0)
        if wanted > held and (total > self.total or (large and large_total > self.large_limit)):
            return False
        self.in_flight, self.large_in_flight = total, large_total
        return True


class BodyBudgetExceeded(ApiError):
    """503: the body would take the worker past BODY_BUDGET_MB; answered at once, then the connection closes."""

    def __init__(self, wanted: int, budget: BodyBudget, large: bool):
        share = "three quarters of " if large else ""
        super().__init__(503, f"too many request bodies in progress: this worker holds {budget.in_flight:,} bytes "
                              f"of request bodies, and this one ({wanted:,} bytes) would take it past "
                              f"{share}BODY_BUDGET_MB={current_app.config['BODY_BUDGET_MB']:g}; "
                              f"retry after {RETRY_AFTER_S} s")
        self.headers = {"Retry-After": str(RETRY_AFTER_S)}
        self.close_connection = True


def reserve(size: int, large: bool | None = None) -> None:
    """Hold ``size`` bytes of the budget for this request's body (replacing what it held); ``large``: whether
    the body counts as large (default: ``size`` over 1 MiB). Raises BodyBudgetExceeded (503) when they are
    not there."""
    budget: BodyBudget = current_app.extensions["body_budget"]
    held, held_large = g.get("body_reserved", (0, False))
    large = size > budget.small if large is None else large
    if not budget.resize(held, size, held_large, large):
        metrics.REFUSED.labels("body_budget").inc()
        raise BodyBudgetExceeded(size, budget, large)
    g.body_reserved = (size, large)
    metrics.BODY_BYTES_IN_FLIGHT.inc(size - held)


def _release(_exc=None) -> None:
    held, held_large = g.pop("body_reserved", (0, False))
    if held:
        current_app.extensions["body_budget"].resize(held, 0, held_large, False)
        metrics.BODY_BYTES_IN_FLIGHT.dec(held)


def init_app(app: Flask) -> None:
    app.extensions["body_budget"] = BodyBudget(int(app.config["BODY_BUDGET_MB"] * MIB))
    app.teardown_request(_release)


def close_connection_after_answer() -> None:
    """The client gets ``Connection: close`` and the connection is closed after the answer (gevent worker)."""
    connections.close_after_response(request.environ)
