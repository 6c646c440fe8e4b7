"""The gunicorn worker class the service runs: gevent, with a deadline on every phase of a request.

Why gevent: a connection is a greenlet, so a client that sends half its headers, or half its body,
and then waits holds a few KiB, not the worker. With gthread (one thread per worker, as measured
fastest) four such connections stopped the whole service; more threads only raise that number.
benchmarks/slow_clients.py holds hundreds of stalled connections open while it measures /healthz
and /predict.

Deadlines (seconds; settings from ``serving.config.active()``, the master's one parse of the environment):

- headers: a connection must deliver each request's headers within KEEPALIVE of being accepted or
  of its previous answer (gunicorn's own keep-alive timer for async workers); else it is dropped.
- READ_TIMEOUT: once the headers are in, every socket read and write of the request (the body,
  the answer) must make progress within this time; the app answers a stalled body with 408
  (serving/request_body.py).
- REQUEST_TIMEOUT: the app answers 408 when the body has not arrived in full by then, however
  steadily it trickles; here, a request still unfinished REQUEST_TIMEOUT + READ_TIMEOUT + 5 s after
  its headers (a client that will not read its answer) has its connection dropped.

Fairness: a greenlet that finds its client's next request already waiting would serve it without
ever yielding, so a few busy keep-alive clients could starve the others (p95 latency of 437 ms
at 4 clients in benchmarks/serve_load.py before the yield below; see its results).

Connections: at most WORKER_CONNECTIONS per worker, admitted through serving/connections.py: when a
client waits and the worker is at its limit, the connection idle longest is closed so that the client
is accepted at once; a connection busy with a request is never cut (the states and the rules are in
that module). /metrics counts open and idle connections and those closed to admit a new client.

Shutdown: SIGTERM makes this worker not ready (``serving.lifecycle``) and it keeps serving for
DRAIN_SECONDS, so a load balancer sees /readyz turn 503 before the listener closes; then gunicorn's
worker stops accepting, closes its idle connections and gives in-flight requests the rest of the
graceful timeout.
"""

from __future__ import annotations

import time
from functools import partial

import gevent
from gunicorn.workers.ggevent import GeventWorker

from serving import config, lifecycle
from serving.connections import AdmissionServer, ConnectionTable

# A request's last chance to finish after the app's own deadlines (writing a small JSON answer).
_HARD_DEADLINE_MARGIN = 5.0


class ServiceWorker(GeventWorker):
    def init_process(self):
        settings = config.active()  # the object the master parsed before forking this worker
        self.read_timeout = settings.read_timeout
        self.hard_deadline = settings.request_timeout + settings.read_timeout + _HARD_DEADLINE_MARGIN
        self.drain_seconds = settings.drain_seconds
        self.keepalive_requests = settings.keepalive_requests
        self.connections = None
        super().init_process()

    def run(self):
        """GeventWorker.run with the connection table's admission (its shutdown also closes idle connections)."""
        if self.cfg.is_ssl:  # the service's settings never configure TLS; gunicorn's own admission then
            return super().run()
        from serving import metrics  # here, in the forked worker: its metric files are its own

        self.connections = ConnectionTable(self.worker_connections, metrics.CONNECTIONS)
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            server = AdmissionServer(listener, self.connections, partial(self.handle, listener))
            if self.cfg.workers > 1:
                server.max_accept = 1  # as gunicorn does: several workers share the listener evenly
            server.start()
            servers.append(server)

        while self.alive:
            self.notify()
            gevent.sleep(1.0)

        for server in servers:
            server.close()  # stop accepting
        self.connections.close_idle()  # nobody will send on them again
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.connections.group and time.monotonic() < deadline:
            self.notify()
            gevent.sleep(0.1)
        if self.connections.group:
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
            self.connections.group.kill(block=True, timeout=1)

    def handle_request(self, listener_name, req, sock, addr):
        conn = getattr(sock, "connection", None)
        if conn is not None:
            self.connections.request_began(conn, req)
        if self.keepalive_requests and req.req_number >= self.keepalive_requests:
            req.must_close = True  # answered with "Connection: close"; the client's next connection may go elsewhere
        sock.settimeout(self.read_timeout)
        deadline = gevent.Timeout(self.hard_deadline)
        deadline.start()
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            self.log.warning("dropped a request from %s after %.0f s: %s %s did not finish",
                             _peer(addr), self.hard_deadline, req.method, req.path[:200])
            raise StopIteration() from None
        finally:
            deadline.close()
            sock.settimeout(None)  # waiting for the next request is timed by the keep-alive timer instead
            if conn is not None:
                self.connections.request_ended(conn)  # idle from its answer until its next request's first byte
            gevent.idle()  # let other connections' greenlets run before this one serves again

    def handle_exit(self, sig, frame):
        if lifecycle.shutting_down():
            return
        lifecycle.begin_shutdown()
        if self.drain_seconds > 0:
            self.log.info("worker %s: shutting down; not ready, still serving for %g s", self.pid, self.drain_seconds)
            gevent.spawn_later(self.drain_seconds, self._stop_accepting)
        else:
            self._stop_accepting()

    def _stop_accepting(self):
        self.alive = False  # GeventWorker.run then closes the listener and waits for in-flight requests


def _peer(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
