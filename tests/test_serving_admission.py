"""Admission control against a real gunicorn, on small limits: connections and request bodies.

- Connections (WORKER_CONNECTIONS=8, KEEPALIVE=30): when idle keep-alive connections fill the worker, a
  fresh client is answered at once and the connection idle longest is the one closed; connections
  sending their headers give way once they have been at it for a second; a busy connection is never
  cut. (Before, the fresh client waited until KEEPALIVE closed an idle connection: 30 s here.)
- Bodies (MAX_UPLOAD_MB=2, BODY_BUDGET_MB=4): an upload that would take the worker past its budget gets
  503 with Retry-After at once, small requests still pass, a chunked body is counted as it arrives, and
  60 concurrent maximum-size uploads held open leave the worker's memory within the budget plus a few
  MiB. (Before, each held upload kept its body in memory: 60 x 2 MiB.)
- The open-file limit is raised to the hard limit at start, and a WORKER_CONNECTIONS it cannot hold stops
  the start with one line.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import time

import pytest
import requests
from test_serving_support import GUNICORN, ROOT, Gunicorn, free_port

from serving.body_budget import BodyBudget
from serving.config import MIB, ConfigError, Settings

pytestmark = pytest.mark.slow

LIMIT = 8


def start(weights, folder, **env) -> Gunicorn:
    service = Gunicorn(folder / "gunicorn.log", MODELS_DIR=str(weights), WORKERS="1", **env)
    service.start()
    return service.wait_ready()


@pytest.fixture(scope="module")
def small(weights, tmp_path_factory):
    """One worker holding at most 8 connections; idle ones would last 30 s."""
    service = start(weights, tmp_path_factory.mktemp("admission"), WORKER_CONNECTIONS=str(LIMIT), KEEPALIVE="30",
                    READ_TIMEOUT="30", REQUEST_TIMEOUT="60")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def bodies(weights, tmp_path_factory):
    """One worker holding at most 4 MiB of request bodies; uploads of up to 2 MiB."""
    service = start(weights, tmp_path_factory.mktemp("bodies"), MAX_UPLOAD_MB="2", BODY_BUDGET_MB="4",
                    READ_TIMEOUT="30", REQUEST_TIMEOUT="60")
    try:
        yield service
    finally:
        service.stop()


# ---- raw HTTP helpers ----------------------------------------------------------------------------------

def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_answer(sock: socket.socket, timeout: float = 30) -> tuple[bytes, bytes]:
    """One whole answer (head, body); raises TimeoutError if none comes in ``timeout`` s."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def keepalive_request(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _ = read_answer(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    return head


def idle_connection(server) -> socket.socket:
    """A keep-alive connection that has made one request and now waits for the next."""
    sock = connect(server)
    keepalive_request(sock)
    return sock


def closed_by_service(sock: socket.socket, within: float = 5.0) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def fresh_get(server, path: str = "/healthz", timeout: float = 10) -> tuple[float, requests.Response]:
    began = time.monotonic()
    response = requests.get(server.url + path, timeout=timeout, headers={"Connection": "close"})
    return time.monotonic() - began, response


def metric(server, name: str) -> float | None:
    """The value of one series in /metrics (None when it is not there)."""
    text = requests.get(server.url + "/metrics", timeout=30, headers={"Connection": "close"}).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def settled(server) -> None:
    """Wait until the connections of earlier tests are closed (only this /metrics request's own is open)."""
    wait_until(lambda: (metric(server, "cifar10_open_connections") or 0) <= 1)


def wait_until(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def close_all(socks) -> None:
    for sock in socks:
        sock.close()


# ---- connections -------------------------------------------------------------------------------------

def test_a_fresh_client_is_admitted_at_once_and_the_longest_idle_connection_gives_way(small):
    idle = [idle_connection(small) for _ in range(LIMIT)]
    try:
        keepalive_request(idle[0])  # idle[0] is now the most recently used: idle[1] has waited longest
        elapsed, response = fresh_get(small)
        assert response.status_code == 200 and elapsed < 2.0, elapsed  # before: waited for KEEPALIVE (30 s)
        assert closed_by_service(idle[1])
        assert not any(closed_by_service(sock, within=0.2) for sock in [idle[0], *idle[2:]])
        for sock in [idle[0], *idle[2:]]:
            keepalive_request(sock)  # still served: nothing else was closed
        # more fresh clients than the limit, one after another: each is answered at once
        for _ in range(2 * LIMIT):
            elapsed, response = fresh_get(small)
            assert response.status_code == 200 and elapsed < 2.0, elapsed
    finally:
        close_all(idle)


def test_a_busy_connection_is_never_cut_for_a_new_client(small, jpeg):
    """Seven requests whose bodies are still arriving and one idle connection: the new client takes the idle
    one's place; with every connection busy it waits, and the busy requests all get their answers."""
    def busy() -> socket.socket:
        sock = connect(small)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg[:100])
        return sock

    settled(small)
    waiting = []
    busy_ones = [busy() for _ in range(LIMIT - 1)]
    idle = idle_connection(small)
    try:
        time.sleep(0.3)
        elapsed, response = fresh_get(small)
        assert response.status_code == 200 and elapsed < 2.0, elapsed
        assert closed_by_service(idle)
        # now all 8 are busy: a new client waits in the backlog, and no busy request is cut for it
        waiting = [busy()]  # the eighth busy one
        late = connect(small)
        waiting.append(late)
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        with pytest.raises(TimeoutError):
            read_answer(late, timeout=2.5)
        for sock in busy_ones + waiting[:1]:
            sock.sendall(jpeg[100:])
            head, body = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 200"), (head, body)
        head, _ = read_answer(late)  # admitted once a busy connection finished
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        close_all(busy_ones + waiting + [idle])


def test_connections_still_sending_headers_give_way_after_a_second(small):
    """A slowloris fill: 8 connections that sent part of their headers. Before, a new client waited for
    KEEPALIVE (30 s here); now the one that has been sending longest is closed once it has been at it 1 s."""
    settled(small)
    slow = []
    for _ in range(LIMIT):
        sock = connect(small)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(sock)
        time.sleep(0.05)
    try:
        time.sleep(0.3)
        elapsed, response = fresh_get(small)
        assert response.status_code == 200 and elapsed < 3.0, elapsed
        assert closed_by_service(slow[0])
    finally:
        close_all(slow)


def test_metrics_count_open_idle_and_closed_to_admit_connections(small):
    settled(small)
    closed_before = metric(small, "cifar10_connections_closed_to_admit_total")
    assert closed_before is not None
    idle = [idle_connection(small) for _ in range(3)]
    try:
        # the /metrics request's own connection is open and busy while it is answered (and the one before it
        # may still be closing)
        assert wait_until(lambda: metric(small, "cifar10_idle_connections") == 3)
        assert wait_until(lambda: metric(small, "cifar10_open_connections") == 4)
        more = [idle_connection(small) for _ in range(LIMIT - 3)]
        idle += more
        fresh_get(small)
        assert metric(small, "cifar10_connections_closed_to_admit_total") >= closed_before + 1
    finally:
        close_all(idle)
    assert wait_until(lambda: metric(small, "cifar10_open_connections") == 1)


def test_a_stopping_worker_closes_its_idle_connections_at_once(weights, tmp_path):
    service = start(weights, tmp_path, KEEPALIVE="30")
    idle = [idle_connection(service) for _ in range(5)]
    try:
        began = time.monotonic()
        service.stop()
        assert time.monotonic() - began < 8  # before: the worker waited for KEEPALIVE (30 s), then was killed
        assert all(closed_by_service(sock, within=1) for sock in idle)
        assert service.proc.returncode == 0 and "graceful timeout" not in service.log()
    finally:
        close_all(idle)


# ---- request bodies ----------------------------------------------------------------------------------

UPLOAD = 2 * MIB - 100  # just under MAX_UPLOAD_MB=2


def held_upload(server, size: int = UPLOAD, sent: int = MIB) -> socket.socket:
    """An upload that declared ``size`` bytes and has sent ``sent`` of them."""
    sock = connect(server)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % size)
    sock.sendall(b"\xff" * sent)
    return sock


def worker_rss_mib(server) -> float:
    (pid,) = server.workers()
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def test_an_upload_past_the_budget_gets_503_at_once_and_small_requests_still_pass(bodies, jpeg):
    refused_before = metric(bodies, 'cifar10_refused_requests_total{reason="body_budget"}')
    first = held_upload(bodies)
    try:
        wait_until(lambda: metric(bodies, "cifar10_request_body_bytes_in_flight") == UPLOAD, timeout=5)
        second = held_upload(bodies, sent=0)
        began = time.monotonic()
        head, body = read_answer(second, timeout=10)  # before: no answer, the body was awaited
        assert time.monotonic() - began < 2.0
        second.close()
        assert head.startswith(b"HTTP/1.1 503"), head
        assert b"\r\nRetry-After: 1\r\n" in head and b"\r\nConnection: close\r\n" in head
        message = json.loads(body)["error"]["message"]
        assert "BODY_BUDGET_MB=4" in message and f"{UPLOAD:,} bytes" in message, message
        assert metric(bodies, 'cifar10_refused_requests_total{reason="body_budget"}') == refused_before + 1
        assert metric(bodies, "cifar10_request_body_bytes_in_flight") == UPLOAD
        # a CIFAR-10 image fits in the quarter kept for small bodies
        small = requests.post(bodies.url + "/predict", files={"img": ("cat.jpg", jpeg)}, timeout=30)
        assert small.status_code == 200, small.text
        # the held upload was never cut: it finishes and is answered (its bytes are no image: 400)
        first.sendall(b"\xff" * (UPLOAD - MIB))
        head, body = read_answer(first)
        assert head.startswith(b"HTTP/1.1 400"), (head, body)
    finally:
        first.close()
    assert wait_until(lambda: metric(bodies, "cifar10_request_body_bytes_in_flight") == 0)


def test_a_chunked_body_is_counted_as_it_arrives(bodies):
    """No Content-Length: the body is reserved step by step, and refused when it crosses the budget."""
    first = held_upload(bodies)  # 2 MiB of the 3 MiB that bodies over 1 MiB may use
    chunked = connect(bodies)
    try:
        chunked.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"\xff" * (64 * 1024)
        answer = b""
        for _ in range(32):  # up to 2 MiB, in 64 KiB chunks
            try:
                chunked.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            chunked.settimeout(0.05)
            try:
                answer += chunked.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        chunked.settimeout(10)
        while b"\r\n\r\n" not in answer:
            answer += chunked.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]  # before: read on to MAX_UPLOAD_MB, then 413
    finally:
        chunked.close()
        first.close()
    assert wait_until(lambda: metric(bodies, "cifar10_request_body_bytes_in_flight") == 0)


def test_concurrent_maximum_size_uploads_leave_the_worker_within_its_budget(bodies):
    """60 uploads of 2 MiB held open before their last bytes: the worker holds one (the rest get 503), not 60."""
    for _ in range(3):  # warm: the first uploads' buffers are allocated once
        sock = held_upload(bodies, sent=UPLOAD - 1024)
        sock.close()
    wait_until(lambda: metric(bodies, "cifar10_request_body_bytes_in_flight") == 0, timeout=5)
    before = worker_rss_mib(bodies)
    uploads, peak = [], before
    try:
        for _ in range(60):
            sock = held_upload(bodies, sent=0)
            uploads.append(sock)
            sock.setblocking(False)
            try:
                sock.send(b"\xff" * (UPLOAD - 1024))
            except (BlockingIOError, ConnectionResetError, BrokenPipeError):
                pass
            peak = max(peak, worker_rss_mib(bodies))
        time.sleep(1.0)
        peak = max(peak, worker_rss_mib(bodies))
        in_flight = metric(bodies, "cifar10_request_body_bytes_in_flight")
    finally:
        close_all(uploads)
    assert peak - before < 4 + 12, (before, peak)  # the budget plus a few MiB (before: ~60 x 2 MiB)
    assert in_flight <= 3 * MIB  # bodies over 1 MiB may fill three quarters of 4 MiB


def test_the_budget_keeps_a_quarter_for_small_bodies():
    budget = BodyBudget(8 * MIB)
    assert budget.resize(0, 5 * MIB) and not budget.resize(0, 2 * MIB)  # large ones: 6 MiB at most
    assert all(budget.resize(0, MIB) for _ in range(3))  # small ones (<= 1 MiB) may fill the rest
    assert not budget.resize(0, 64 * 1024) and budget.in_flight == 8 * MIB
    assert budget.resize(5 * MIB, 0) and budget.in_flight == 3 * MIB and budget.large_in_flight == 0
    grow = 0
    while budget.resize(grow, grow + 64 * 1024):  # a chunked body, reserved as it arrives
        grow += 64 * 1024
    assert grow == 5 * MIB  # stopped by the whole budget (3 + 5 = 8 MiB), within the large share (6 MiB)
    assert budget.resize(grow, 0) and budget.in_flight == 3 * MIB


def test_the_budget_must_hold_one_maximum_size_upload():
    with pytest.raises(ConfigError, match="^BODY_BUDGET_MB=12 is too small for MAX_UPLOAD_MB=10: .* at least 13.34$"):
        Settings.from_environ({"BODY_BUDGET_MB": "12"})
    assert Settings.from_environ({"BODY_BUDGET_MB": "13.34"}).body_budget_bytes == int(13.34 * MIB)


# ---- the open-file limit -----------------------------------------------------------------------------

def limited(soft: int, hard: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_with_file_limit(service: Gunicorn, soft: int, hard: int) -> None:
    """Start ``service`` (not yet started) under an open-file limit of ``soft``/``hard``."""
    log = open(service.log_path, "wb")  # noqa: SIM115 - the service's log, closed by service.stop()
    service.proc = subprocess.Popen([str(GUNICORN), "--config", "serving/gunicorn.conf.py", "serving:create_app()"],
                                    cwd=ROOT, env=service.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=limited(soft, hard))
    service._log = log


def test_the_open_file_limit_is_raised_to_the_hard_limit_and_logged(weights, tmp_path):
    service = Gunicorn(tmp_path / "gunicorn.log", MODELS_DIR=str(weights), WORKERS="1")
    start_with_file_limit(service, 1024, 4096)
    try:
        service.wait_ready()
        assert "open-file limit 4096 (was 1024; hard limit 4096)" in service.log()
        (pid,) = service.workers()
        with open(f"/proc/{pid}/limits") as handle:
            line = next(line for line in handle if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        service.stop()


def test_more_connections_than_the_file_limit_allows_stop_the_start_with_one_line():
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(HOST="127.0.0.1", PORT=str(free_port()), WORKER_CONNECTIONS="4000")
    result = subprocess.run([str(GUNICORN), "--config", "serving/gunicorn.conf.py", "serving:create_app()"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60, preexec_fn=limited(1024, 4096))
    assert result.returncode == 1
    assert result.stderr == ("cannot start the service: WORKER_CONNECTIONS=4000 needs 4,128 open files per worker "
                             "(128 besides its connections), but the open-file limit is 4,096 (the hard limit, "
                             "4,096): set WORKER_CONNECTIONS to at most 3,968, or raise the hard limit (ulimit -Hn; "
                             "docker run --ulimit nofile=N:N)\n")


def test_the_default_connection_limit_is_lowered_to_what_the_file_limit_holds(weights, tmp_path):
    """A hard limit of 1,024 cannot hold the default 1,000 connections and the worker's own files: `make serve`
    still starts, with fewer connections per worker and a warning saying why."""
    service = Gunicorn(tmp_path / "gunicorn.log", MODELS_DIR=str(weights), WORKERS="1")
    service.env.pop("WORKER_CONNECTIONS", None)
    start_with_file_limit(service, 1024, 1024)
    try:
        service.wait_ready()
        assert "WORKER_CONNECTIONS lowered from its default 1000 to 896: the open-file limit (1024)" in service.log()
        assert "up to 896 connections (WORKER_CONNECTIONS)" in service.log()
    finally:
        service.stop()
