"""Reading a request body within the service's limits, for every protocol: size, memory, then time.

Size: at most MAX_CONTENT_LENGTH bytes (MAX_UPLOAD_MB), or a smaller limit a protocol knows is the
most a legal request can need; declared or chunked, the body is refused with 413 before more is
read. Memory: the body's bytes are reserved in the worker's BODY_BUDGET_MB before they are read (by
Content-Length, else step by step as a chunked body arrives), and a body that does not fit is
answered 503 at once (serving/body_budget.py). Time: READ_TIMEOUT without a byte, or REQUEST_TIMEOUT
in all, and the answer is 408 (the deadlines themselves are in serving/worker.py and
serving/deadlines.py).
"""

from __future__ import annotations

import time

from flask import current_app, g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from serving import body_budget
from serving.deadlines import BodyTimeout, body_deadline, let_others_run
from serving.errors import ApiError


def read_body(limit: int | None = None, why: str = "") -> bytes:
    """The request body, at most ``limit`` (default MAX_CONTENT_LENGTH; ``why`` explains another) bytes.

    Werkzeug refuses a too-large Content-Length itself, but leaves a chunked body that the WSGI
    server marks as terminated unbounded; this read enforces the limit for both. A body that stops
    arriving (READ_TIMEOUT between bytes) or is not complete REQUEST_TIMEOUT after the request
    began is answered with 408.
    """
    if limit is None or limit >= current_app.config["MAX_CONTENT_LENGTH"]:
        limit, too_large = current_app.config["MAX_CONTENT_LENGTH"], RequestEntityTooLarge()
    else:
        too_large = ApiError(413, f"request body is larger than {limit:,} bytes, {why}")
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large
    if declared is not None:
        body_budget.reserve(declared)  # 503 before a byte of the body is read, when the worker holds too much
    stream = request.stream
    chunks, total = [], 0
    remaining = current_app.config["REQUEST_TIMEOUT"] - (time.monotonic() - g.get("request_started", time.monotonic()))
    try:
        with body_deadline(remaining):
            while True:
                if declared is None:  # chunked: counted by what has arrived, plus what may be read ahead
                    step = min(body_budget.READ_STEP, limit + 1 - total)
                    body_budget.reserve(total + body_budget.CHUNKED_AHEAD, large=total + step > body_budget.BODY_SMALL)
                else:
                    step = min(1 << 20, limit + 1 - total)
                chunk = stream.read(step)
                if not chunk:
                    if declared is None:
                        body_budget.reserve(total, large=total > body_budget.BODY_SMALL)  # what it holds now
                    return b"".join(chunks)
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise too_large
                let_others_run()  # what gunicorn read ahead of this chunk is part of the reserved body
    except (BodyTimeout, TimeoutError, ClientDisconnected) as exc:
        if isinstance(exc, ClientDisconnected) and not isinstance(exc.__context__, TimeoutError):
            raise  # the client really went away (Werkzeug hides the socket timeout behind this exception)
        raise ApiError(408, f"the request body did not arrive in time ({total:,} bytes received; the limits are "
                            f"{current_app.config['READ_TIMEOUT']:g} s without data, READ_TIMEOUT, and "
                            f"{current_app.config['REQUEST_TIMEOUT']:g} s in all, REQUEST_TIMEOUT)") from None
