"""Which connections a worker holds: a limit per worker, and at the limit idle connections give way.

gunicorn's gevent worker holds at most WORKER_CONNECTIONS connections; when they are all open it stops
accepting, and a new client waits in the listen backlog until one closes. Idle keep-alive connections
counted like busy ones, so a client that opened more idle connections than all the workers hold, and
refreshed them before KEEPALIVE ran out, kept every other client out for as long as it liked (with
4,000 such connections against 2 x 1,000, no fresh /predict was answered within 5 s:
benchmarks/results/slow_clients_admission_before.json).

Here a worker tracks what each of its connections is doing:

- idle: no byte of a request since it was accepted or since its last answer;
- headers: the first bytes of a request have arrived, its headers are not complete;
- busy: its request's headers are in; the body is being read, the app works on it, or the answer is
  being written.

When a client is waiting and the worker is at its limit, the connection that has been idle longest is
closed (a FIN, as any server may close an idle keep-alive connection; HTTP clients then reconnect) and
the waiting client is accepted at once. With no idle connection left, the one that has been sending
its headers longest goes, once it has been at it for HEADERS_GRACE seconds (a real client sends its
headers in one round trip; KEEPALIVE drops such a connection anyway). A busy connection is never cut;
when every connection is busy, new clients wait in the backlog as before. A connection whose next
request is already in the socket buffer counts as sending headers, not idle.

The client is accepted before any connection is closed for it: with one listening socket shared by
the workers, every worker is woken for a new client and only one gets it; the others close nothing.
"""

from __future__ import annotations

import resource
import socket as stdlib_socket
import time
from collections import OrderedDict
from dataclasses import dataclass

import gevent
from gevent import socket as gsocket
from gevent.pool import Group
from gevent.server import StreamServer

IDLE, HEADERS, BUSY, CLOSING = "idle", "headers", "busy", "closing"
HEADERS_GRACE = 1.0  # seconds a connection may spend sending its headers before it may be closed to admit another
# Open files a worker needs besides its connections: its own (listener, logs, heartbeat and metric files,
# gevent's and onnxruntime's descriptors: 18 measured in an idle worker) and the connections closed to admit
# new ones until their greenlets have ended (at most 100 a turn of the event loop, gevent's max_accept).
RESERVED_FILES = 128


class Connection:
    __slots__ = ("sock", "state", "since", "request", "reading")

    def __init__(self, sock: TrackedSocket, now: float):
        self.sock = sock
        self.state = IDLE
        self.since = now  # when it entered its current state
        self.request = None  # gunicorn's Request while busy
        # idle and its greenlet waits in recv() for the next request (not: just accepted, or just answered and
        # about to parse a request that may already be buffered): only then may it be closed for another
        self.reading = False


class TrackedSocket(gsocket.socket):
    """A client socket that tells its connection table when the first bytes of a request arrive."""

    __slots__ = ("connection", "table")

    def recv(self, *args):
        return self._read(super().recv, args)

    def recv_into(self, *args):
        return self._read(super().recv_into, args)

    def _read(self, read, args):
        """``read(*args)`` (recv or recv_into), telling the table when an idle connection starts a request."""
        conn = self.connection
        if conn.state is not IDLE:
            return read(*args)
        if not conn.reading:
            self.table.waiting_for_request(conn)
        result = read(*args)  # bytes from recv, a count from recv_into: either is false at the end of the stream
        if result and conn.state is IDLE:
            self.table.headers_began(conn)
        return result

    def end_stream(self) -> None:
        """Shut the connection down (FIN) so that the greenlet waiting in recv() reads the end of the stream
        and closes it as it would any finished connection. (gevent's own shutdown() would instead wake that
        greenlet with EBADF, which gunicorn logs as a socket error with a traceback.)"""
        self._sock.shutdown(stdlib_socket.SHUT_RDWR)

    def has_pending_bytes(self) -> bool:
        """Whether bytes (of a request that is arriving) wait in the socket buffer, without blocking."""
        try:
            return bool(self._sock.recv(1, stdlib_socket.MSG_PEEK | stdlib_socket.MSG_DONTWAIT))
        except OSError:  # EAGAIN: nothing there; any other error: the connection is gone anyway
            return False


class ConnectionTable:
    """One worker's connections, by state; closes idle ones to admit new clients at the limit.

    ``metrics``: an object with ``open``, ``idle`` (gauges) and ``closed_to_admit`` (counter), or None.
    """

    def __init__(self, limit: int, metrics=None, clock=time.monotonic):
        self.limit = limit
        self.metrics = metrics
        self.clock = clock
        self.group = Group()  # every connection's greenlet (the worker waits for them when it stops)
        self.open = 0
        self.closing = 0  # closed to admit a new client, their greenlets not yet ended
        self.closed_to_admit = 0
        self.idle: OrderedDict[Connection, None] = OrderedDict()  # oldest first
        self.headers: OrderedDict[Connection, None] = OrderedDict()  # longest sending first
        self.servers: list[AdmissionServer] = []
        self.blocked = False  # a server stopped accepting: resume it when there is room again
        self._grace_timer = None

    # -- what the worker and the sockets report --

    def admit(self, sock: TrackedSocket) -> Connection:
        """Register an accepted client; if that puts the worker over its limit, close a connection for it."""
        if self.open - self.closing >= self.limit:
            self.make_room()
        conn = Connection(sock, self.clock())
        sock.connection, sock.table = conn, self
        self.open += 1
        self.idle[conn] = None
        if self.metrics:
            self.metrics.open.inc()
            self.metrics.idle.inc()
        return conn

    def waiting_for_request(self, conn: Connection) -> None:
        conn.reading = True  # from now on it may be closed for a new client
        if self.blocked:
            self.resume()

    def headers_began(self, conn: Connection) -> None:
        self._move(conn, HEADERS)

    def request_began(self, conn: Connection, request) -> None:
        conn.request = request
        self._move(conn, BUSY)

    def request_ended(self, conn: Connection) -> None:
        """Its answer is written: idle from now (in this order: oldest idle first), once it waits in recv()."""
        conn.request = None
        conn.reading = False
        if conn.state is BUSY:
            self._move(conn, IDLE)
            if self.blocked:
                self.resume()

    def closed(self, conn: Connection) -> None:
        """The connection's socket is closed (its greenlet ends); called again when the greenlet is gone."""
        if conn.state is None:
            return
        if conn.state is CLOSING:
            self.closing -= 1
        else:
            self._move(conn, CLOSING)  # out of the idle/headers lists
        conn.state = None
        self.open -= 1
        if self.metrics:
            self.metrics.open.dec()
        if self.blocked:
            self.resume()

    # -- admission --

    def can_admit(self) -> bool:
        """Whether a waiting client can be accepted now (room, or a connection that may be closed for it)."""
        if self.open - self.closing < self.limit or self._oldest_idle() is not None:
            return True
        if self.headers:
            wait = next(iter(self.headers)).since + HEADERS_GRACE - self.clock()
            if wait <= 0:
                return True
            if self._grace_timer is None:  # check again once the oldest one's grace has run out
                self._grace_timer = gevent.spawn_later(wait, self._grace_over)
        return False

    def make_room(self) -> bool:
        """Close the connection that has been idle longest (else the one longest sending its headers, past
        HEADERS_GRACE); False when every connection is busy."""
        conn = self._oldest_idle()
        if conn is None and self.headers:
            conn = next(iter(self.headers))
            if conn.since + HEADERS_GRACE > self.clock():
                conn = None
        if conn is None:
            return False
        self._close_to_admit(conn)
        return True

    def _oldest_idle(self) -> Connection | None:
        """The connection idle longest that waits in recv() for its next request; on the way, any whose next
        request is already in its socket buffer counts as sending its headers instead."""
        arriving = []
        found = None
        for conn in self.idle:
            if not conn.reading:
                continue  # just accepted or just answered: its greenlet has not asked for the next request yet
            if not conn.sock.has_pending_bytes():
                found = conn
                break
            arriving.append(conn)
        for conn in arriving:
            self._move(conn, HEADERS)
        return found

    def close_idle(self) -> int:
        """Close every idle connection (the worker is stopping: nobody will send on them again)."""
        count = 0
        while self.idle:
            self._shutdown(next(iter(self.idle)))
            count += 1
        return count

    def resume(self) -> None:
        self.blocked = False
        for server in self.servers:
            if server.started:
                server.start_accepting()

    def _grace_over(self) -> None:
        self._grace_timer = None
        if self.blocked:
            self.resume()

    def _close_to_admit(self, conn: Connection) -> None:
        self._shutdown(conn)
        self.closed_to_admit += 1
        if self.metrics:
            self.metrics.closed_to_admit.inc()

    def _shutdown(self, conn: Connection) -> None:
        self._move(conn, CLOSING)
        self.closing += 1
        try:
            conn.sock.end_stream()
        except OSError:  # reset by the client, or closed by its greenlet a moment ago: it is going anyway
            pass

    def _move(self, conn: Connection, state: str) -> None:
        if conn.state is IDLE:
            del self.idle[conn]
            if self.metrics:
                self.metrics.idle.dec()
        elif conn.state is HEADERS:
            del self.headers[conn]
        conn.state, conn.since = state, self.clock()
        if state is IDLE:
            self.idle[conn] = None
            if self.metrics:
                self.metrics.idle.inc()
        elif state is HEADERS:
            self.headers[conn] = None


class AdmissionServer(StreamServer):
    """gevent's StreamServer for one listening socket, admitting clients through a ConnectionTable."""

    def __init__(self, listener, table: ConnectionTable, handle):
        self.table = table
        super().__init__(listener, handle=handle, spawn=None)
        table.servers.append(self)

    def full(self) -> bool:
        if self.table.can_admit():
            return False
        self.table.blocked = True  # gevent stops accepting now; the table resumes it when there is room
        return True

    def do_read(self):
        listener = self.socket
        try:
            fd, address = listener._accept()
        except BlockingIOError:  # another worker took the client
            if not listener.timeout:
                return None
            raise
        client = TrackedSocket(listener.family, listener.type, listener.proto, fileno=fd)
        self.table.admit(client)
        return client, address

    def do_handle(self, client: TrackedSocket, address) -> None:
        greenlet = self.table.group.spawn(self._serve, client, address)
        conn = client.connection
        greenlet.rawlink(lambda _greenlet: self.table.closed(conn))

    def _serve(self, client: TrackedSocket, address) -> None:
        try:
            self._handle(client, address)
        finally:
            client.close()
            self.table.closed(client.connection)  # at once, not when the greenlet's links run


def current_connection(environ) -> Connection | None:
    """The connection a WSGI request came on, under the service's worker (else None)."""
    sock = environ.get("gunicorn.socket")
    return getattr(sock, "connection", None) if isinstance(sock, TrackedSocket) else None


def close_after_response(environ) -> None:
    """Answer this request with ``Connection: close`` and close the connection after it (no-op elsewhere)."""
    conn = current_connection(environ)
    if conn is not None and conn.request is not None:
        conn.request.must_close = True


# ---- the open-file limit -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileLimit:
    before: int  # the soft limit the process started with
    soft: int  # the soft limit now
    hard: int  # the hard limit (RLIM_INFINITY shown as -1)


def raise_open_file_limit() -> FileLimit:
    """Raise this process's soft open-file limit to its hard limit (its children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # Linux caps it at fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as handle:
                target = int(handle.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    else:
        target = soft
    return FileLimit(before=soft, soft=target, hard=hard)


def connections_that_fit(limit: FileLimit) -> int | None:
    """The most connections a worker may hold under the open-file limit (None: no limit)."""
    return None if limit.soft == resource.RLIM_INFINITY else limit.soft - RESERVED_FILES


def file_limit_problem(worker_connections: int, limit: FileLimit) -> str | None:
    """Why WORKER_CONNECTIONS cannot be held under the open-file limit, or None when it can."""
    if limit.soft == resource.RLIM_INFINITY or worker_connections + RESERVED_FILES <= limit.soft:
        return None
    hard = "unlimited" if limit.hard == resource.RLIM_INFINITY else f"{limit.hard:,}"
    return (f"WORKER_CONNECTIONS={worker_connections} needs {worker_connections + RESERVED_FILES:,} open files per "
            f"worker ({RESERVED_FILES} besides its connections), but the open-file limit is {limit.soft:,} (the hard "
            f"limit, {hard}): set WORKER_CONNECTIONS to at most {max(0, limit.soft - RESERVED_FILES):,}, or raise "
            "the hard limit (ulimit -Hn; docker run --ulimit nofile=N:N)")
