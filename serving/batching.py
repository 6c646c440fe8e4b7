"""Dynamic batching: the requests a worker holds at once share one onnxruntime call.

Triton, TorchServe and BentoML gather concurrent requests into batches; so does this, inside each
gunicorn worker, with no extra thread. The first request to find the model idle runs at once with
whatever is queued (a single request on an idle service waits for nothing). While that call runs
(in a native thread, so a gevent worker keeps reading other requests), new requests queue; when it
ends, the oldest waiting request leads the next call with everything queued behind it, up to
``max_images`` images. An answer is bit-for-bit what the request alone would have got: the models
compute each image independently (tests/test_serving_batching.py checks it on every shipped model).

``max_wait`` (BATCH_WAIT_MS) lets a leader wait up to that long for requests that are on their way
(inside ``arriving()``: decoding their images for this model), never for requests that may or may
not come: a lone request, or a client that sends one request at a time, never waits.

Works with threads and with gevent's greenlets alike: gunicorn's gevent worker patches ``threading``,
so the lock and condition below become cooperative; only the model call itself must leave the event
loop, which ``_off_the_event_loop`` does.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

RunBatch = Callable[[np.ndarray], Sequence[np.ndarray]]  # uint8 [n, 32, 32, 3] -> outputs, [n, ...] each


@dataclass(eq=False)
class _Request:
    images: np.ndarray
    queued_at: float = field(default_factory=time.perf_counter)
    outputs: list[np.ndarray] | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass(frozen=True)
class BatchRecord:
    """What one model call did, for the metrics: its images, its requests, and each one's wait in the queue."""

    images: int
    requests: int
    queue_waits: tuple[float, ...]
    seconds: float


def _off_the_event_loop(function: Callable[[], object]) -> object:
    """Run ``function`` where it blocks no one: in gevent's native thread pool when the worker is a gevent
    worker (onnxruntime releases the GIL, so the hub goes on reading and decoding other requests), else
    in the calling thread."""
    try:
        from gevent import monkey
    except ImportError:
        return function()
    if not monkey.is_module_patched("threading"):
        return function()
    import gevent

    return gevent.get_hub().threadpool.apply(function)


class Batcher:
    """Runs ``run_batch`` on the images of concurrent ``run`` calls together (one Batcher per model)."""

    def __init__(self, run_batch: RunBatch, max_images: int, max_wait: float = 0.0,
                 on_batch: Callable[[BatchRecord], None] | None = None):
        if max_images < 1:
            raise ValueError("max_images must be at least 1")
        self._run_batch = run_batch
        self.max_images = max_images
        self.max_wait = max_wait
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._running = False
        self._arriving = 0  # requests decoding their images for this model, not yet queued

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap what a request does before ``run`` (decoding its images), so a leader with a wait
        window knows it is coming."""
        with self._changed:
            self._arriving += 1
        try:
            yield
        finally:
            with self._changed:
                self._arriving -= 1
                self._changed.notify_all()

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """The model's outputs for ``images`` (uint8 [n, 32, 32, 3]), as if run alone."""
        request = _Request(images)
        with self._changed:
            self._queue.append(request)
            self._changed.notify_all()
            try:
                while not request.done:
                    if self._running:
                        self._changed.wait()
                    else:
                        self._lead()  # returns with the lock held; our own request may still be queued
            except BaseException:  # this caller was interrupted (a timeout, a killed greenlet): forget it
                if request in self._queue:
                    self._queue.remove(request)
                raise
        if request.error is not None:
            raise request.error
        return request.outputs

    def _lead(self) -> None:
        """Run one batch from the head of the queue. Called and returns with the lock held."""
        self._running = True
        try:
            self._gather_arriving()
            batch = self._take()
            self._changed.release()
            try:
                self._execute(batch)
            finally:
                self._changed.acquire()
        finally:
            self._running = False
            self._changed.notify_all()

    def _gather_arriving(self) -> None:
        """Wait (at most max_wait) while requests are still decoding and the batch has room for them."""
        deadline = time.perf_counter() + self.max_wait
        while (self._arriving and self._queued_images() < self.max_images
               and (left := deadline - time.perf_counter()) > 0):
            self._changed.wait(left)

    def _queued_images(self) -> int:
        return sum(len(r.images) for r in self._queue)

    def _take(self) -> list[_Request]:
        """The oldest requests whose images fit ``max_images`` together (always at least one request)."""
        batch = [self._queue.popleft()]
        count = len(batch[0].images)
        while self._queue and count + len(self._queue[0].images) <= self.max_images:
            count += len(self._queue[0].images)
            batch.append(self._queue.popleft())
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        start = time.perf_counter()
        images = batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
        try:
            outputs = _off_the_event_loop(lambda: self._run_batch(images))
        except Exception as exc:  # the model failed: every request of the batch gets the error
            for request in batch:
                request.error, request.done = exc, True
            return
        except BaseException:  # the leader itself was interrupted: the others go back, first in line
            with self._changed:
                self._queue.extendleft(reversed(batch))
            raise
        seconds = time.perf_counter() - start
        offset = 0
        for request in batch:
            end = offset + len(request.images)
            request.outputs = [output[offset:end] for output in outputs]
            request.done = True
            offset = end
        if self._on_batch is not None:
            self._on_batch(BatchRecord(images=offset, requests=len(batch),
                                       queue_waits=tuple(start - r.queued_at for r in batch), seconds=seconds))
