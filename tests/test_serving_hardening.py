"""End to end against a real gunicorn: what an attacker or a careless client does to a running service.

Stalled and trickling clients (read and request deadlines), hostile bodies on every parser (v2
JSON, multipart), bearer auth and request ids, workers recycled without a failed request, model
files changed on disk after start, and the not-ready phase on SIGTERM. Deadlines are shortened
here (READ_TIMEOUT 1 s, REQUEST_TIMEOUT 3 s, KEEPALIVE 2 s) so the module runs in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
import requests
from hostile_images import handmade_png, icon_holding, transparent_palette
from test_serving_support import Gunicorn, copy_models

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token_for.tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STALLED = 100  # connections of each kind held open at once (the requirement)


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    service = Gunicorn(tmp_path_factory.mktemp("hardened") / "gunicorn.log", MODELS_DIR=str(weights), WORKERS="2",
                       READ_TIMEOUT="1", REQUEST_TIMEOUT="3", KEEPALIVE="2", API_TOKEN=TOKEN, ACCESS_LOG="1")
    service.start()
    try:
        yield service.wait_ready()
    finally:
        service.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def stall_in_headers(server) -> socket.socket:
    sock = connect(server)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-da")
    return sock


def stall_in_body(server, sent: bytes = b"--b\r\n") -> socket.socket:
    # 100 KB declared: the 100 stalled bodies stay well inside each worker's BODY_BUDGET_MB, so the deadlines
    # are what ends them (bodies past the budget get 503 at once: tests/test_serving_admission.py)
    sock = connect(server)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                 b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n" + sent)
    return sock


def answer_of(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends before it closes (b'' if it just drops the connection)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def timed(call) -> tuple[float, requests.Response]:
    began = time.monotonic()
    response = call()
    return time.monotonic() - began, response


def test_stalled_clients_do_not_starve_the_service_and_get_dropped_or_408(server, jpeg):
    in_headers = [stall_in_headers(server) for _ in range(STALLED)]
    in_body = [stall_in_body(server) for _ in range(STALLED)]
    try:
        health_s, health = timed(lambda: requests.get(server.url + "/healthz", timeout=5))
        predict_s, predict = timed(lambda: requests.post(server.url + "/predict", files={"img": ("a.jpg", jpeg)},
                                                         headers=AUTH, timeout=5))
        assert health.status_code == 200 and health_s < 1.0
        assert predict.status_code == 200 and predict_s < 1.0, predict.text
        # READ_TIMEOUT (1 s) after its last byte, a stalled body gets a 408 naming the limits
        answers = [answer_of(sock, timeout=6) for sock in in_body]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
        assert b"did not arrive in time" in answers[0] and b"READ_TIMEOUT" in answers[0]
        # KEEPALIVE (2 s) after connecting, a client still sending its headers is dropped without an answer
        assert all(answer_of(sock, timeout=6) == b"" for sock in in_headers)
    finally:
        for sock in in_headers + in_body:
            sock.close()


def test_a_trickling_body_is_cut_off_at_the_request_deadline(server):
    sock = stall_in_body(server)
    began = time.monotonic()
    try:
        sock.settimeout(0.5)
        answer = b""
        while time.monotonic() - began < 8 and not answer:
            try:
                sock.sendall(b"x")  # one byte every 0.3 s never trips READ_TIMEOUT ...
                time.sleep(0.3)
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        # ... but the whole body must be in within REQUEST_TIMEOUT (3 s)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert 2.5 < time.monotonic() - began < 6
    finally:
        sock.close()


@pytest.mark.parametrize("body, headers, status, message", [
    (b"[" * 500_000 + b"]" * 500_000, {}, 400, "nested too deeply"),
    (b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", {}, 400, "nested too deeply"),
    (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [' + b"9" * 5000 + b"]}]}",
     {}, 400, "not valid JSON"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "\u00b2"}, 400, "Inference-Header-Content-Length"),
    (b"[" + b"[]," * 3_000_000 + b"[]]", {}, 413, "the most a request"),
])
def test_hostile_v2_bodies_are_4xx_and_cheap(server, body, headers, status, message):
    elapsed, response = timed(lambda: requests.post(server.url + "/v2/models/dwsep/infer", data=body, timeout=10,
                                                    headers={**AUTH, "Content-Type": "application/json", **headers}))
    assert response.status_code == status and message in response.json()["error"], response.text[:300]
    assert elapsed < 1.0


def multipart(parts: list[bytes], boundary: bytes = b"B") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"


def test_hostile_multipart_bodies_are_refused_before_parsing(server, jpeg):
    form = {"Content-Type": "multipart/form-data; boundary=B", **AUTH}
    huge_headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 60) for i in range(80_000))  # ~6 MiB
    part = b'Content-Disposition: form-data; name="img"; filename="a.jpg"\r\n' + huge_headers + b"\r\n" + jpeg
    elapsed, response = timed(lambda: requests.post(server.url + "/predict", data=multipart([part]), headers=form,
                                                    timeout=10))
    assert response.status_code == 400 and "headers are longer than 8 KiB" in response.text and elapsed < 1.0
    tiny = b'Content-Disposition: form-data; name="img"\r\n\r\nx'
    elapsed, response = timed(lambda: requests.post(server.url + "/predict", data=multipart([tiny] * 50_000),
                                                    headers=form, timeout=10))
    assert response.status_code == 413 and "parts" in response.text and elapsed < 1.0


def test_bearer_token_guards_the_inference_and_inventory_endpoints(server, jpeg):
    image = {"img": ("a.jpg", jpeg)}
    for method, path in [("post", "/predict"), ("get", "/models"), ("get", "/metrics"),
                         ("post", "/v2/models/dwsep/infer")]:
        missing = requests.request(method, server.url + path, files=image if path == "/predict" else None, timeout=10)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer"), path
        error = missing.json()["error"]  # the v2 protocol's error is a string, the service's an object
        assert "Authorization: Bearer" in (error if isinstance(error, str) else error["message"]), path
        wrong = requests.request(method, server.url + path, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401, path
    assert requests.post(server.url + "/predict", files=image, headers=AUTH, timeout=10).status_code == 200
    assert requests.get(server.url + "/models", headers=AUTH, timeout=10).status_code == 200
    for open_path in ("/healthz", "/readyz", "/v2/health/ready", "/openapi.json", "/"):
        assert requests.get(server.url + open_path, timeout=10).status_code == 200, open_path


def test_request_ids_are_echoed_or_made_and_logged(server):
    given = requests.get(server.url + "/healthz", headers={"X-Request-ID": "client-42.abc"}, timeout=10)
    assert given.headers["X-Request-ID"] == "client-42.abc"
    made = requests.get(server.url + "/healthz", headers={"X-Request-ID": "bad id\twith <junk>"}, timeout=10)
    assert len(made.headers["X-Request-ID"]) == 32 and made.headers["X-Request-ID"] != "bad id\twith <junk>"
    unauthorized = requests.get(server.url + "/models", timeout=10)
    assert len(unauthorized.headers["X-Request-ID"]) == 32  # errors carry one too
    deadline = time.monotonic() + 5
    while "request_id=client-42.abc" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "request_id=client-42.abc" in server.log()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def test_image_bombs_are_refused_or_reduced_cheaply_and_workers_stay_small(server):
    bombs = {
        "palette.png": (handmade_png(8000, 8000, 3, extra_chunks=transparent_palette()), 200),  # 64 MP in ~60 KiB
        "icon.ico": (icon_holding(handmade_png(13000, 13000, 6)), 415),  # Pillow's ICO reader decodes in open()
        "rgba.png": (handmade_png(8000, 8000, 6), 413),  # 244 MiB to decode: refused from its header
    }
    for name, (data, status) in bombs.items():
        elapsed, response = timed(lambda data=data, name=name: requests.post(
            server.url + "/predict", files={"img": (name, data)}, headers=AUTH, timeout=30))
        assert response.status_code == status, (name, response.text[:300])
        assert elapsed < (3.0 if status == 200 else 0.5), name
    assert max(peak_rss_mib(pid) for pid in server.workers()) < 300


def test_no_hostile_request_left_a_traceback(server):
    log = server.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


@pytest.fixture()
def restartable(weights, tmp_path):
    folder = copy_models(weights, tmp_path / "weights")
    service = Gunicorn(tmp_path / "gunicorn.log", MODELS_DIR=str(folder), WORKERS="2", MAX_REQUESTS="40",
                       DRAIN_SECONDS="2")
    service.start()
    try:
        yield service.wait_ready(), folder
    finally:
        service.stop()


def test_workers_are_recycled_without_a_failed_request(restartable, jpeg):
    service, _ = restartable
    before = service.workers()
    with requests.Session() as session:
        statuses = [session.post(service.url + "/predict", files={"img": ("a.jpg", jpeg)}, timeout=30).status_code
                    for _ in range(150)]
    assert statuses == [200] * 150
    deadline = time.monotonic() + 15  # a recycled worker finishes its last request, then exits
    while not before - service.workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert before - service.workers(), "no worker was replaced after MAX_REQUESTS"
    assert "Autorestarting worker" in service.log()


def test_changed_model_files_do_not_reach_a_respawned_worker(restartable, jpeg):
    service, folder = restartable
    original = {m["name"]: m["sha256"] for m in requests.get(service.url + "/models", timeout=10).json()["models"]}
    (folder / "dwsep.onnx").write_bytes(b"not a model any more")
    (folder / "tutorial.onnx").unlink()
    for pid in service.workers():  # both workers die; their replacements must start from the original bytes
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            models = requests.get(service.url + "/models", timeout=5).json()["models"]
            break
        except (requests.ConnectionError, requests.Timeout, json.JSONDecodeError):
            time.sleep(0.2)
    assert {m["name"]: m["sha256"] for m in models} == original
    answer = requests.post(service.url + "/predict?model=dwsep", files={"img": ("a.jpg", jpeg)}, timeout=10)
    assert answer.status_code == 200 and service.proc.poll() is None
    assert "dwsep.onnx, tutorial.onnx changed on disk since the service started" in service.log()


def test_sigterm_turns_not_ready_then_stops(restartable, jpeg):
    service, _ = restartable
    service.proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    time.sleep(0.3)
    ready = requests.get(service.url + "/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
    assert requests.get(service.url + "/v2/health/ready", timeout=5).status_code == 503
    # still answering while a load balancer notices
    assert requests.post(service.url + "/predict", files={"img": ("a.jpg", jpeg)}, timeout=5).status_code == 200
    assert service.proc.wait(timeout=15) == 0
    assert 1.5 < time.monotonic() - began < 8
