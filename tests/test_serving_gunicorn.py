"""End to end: the service under gunicorn (as ``make serve`` runs it) on a free loopback port.

requests and curl uploads, the bad-input list over real HTTP (and the workers survive it), metrics
summed across workers, the v2 protocol with tritonclient, a bounded concurrency test, and start-up
failures that must end gunicorn with a non-zero status and one clear log line.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import requests
from PIL import Image
from test_serving_support import CLASSES, ROOT, Gunicorn, cifar_jpegs, copy_models, noise_bytes, png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    service = Gunicorn(tmp_path_factory.mktemp("gunicorn") / "gunicorn.log", MODELS_DIR=str(weights), WORKERS="2")
    service.start()
    try:
        yield service.wait_ready()
    finally:
        service.stop()


@pytest.fixture(scope="module")
def jpegs(data_archive):
    return cifar_jpegs(data_archive)


@pytest.fixture()
def image_files(jpegs, tmp_path):
    paths = []
    for _, name, data in jpegs[:3]:
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    return paths


def reference_top(weights, data: bytes, k: int = 5, model: str = "dwsep") -> list[tuple[str, float]]:
    session = ort.InferenceSession(str(weights / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[np.newaxis]
    probs = session.run(["probabilities"], {"image": pixels})[0][0]
    return [(CLASSES[i], float(probs[i])) for i in np.argsort(-probs, kind="stable")[:k]]


def as_pairs(predictions) -> list[tuple[str, float]]:
    return [(p["label"], p["probability"]) for p in predictions]


def test_requests_multipart_upload(server, weights, jpegs):
    _, name, data = jpegs[4]
    response = requests.post(server.url + "/predict", files={"img": (name, data, "image/jpeg")}, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["model"] == "dwsep" and body["filename"] == name
    got, expected = as_pairs(body["predictions"]), reference_top(weights, data)
    assert [label for label, _ in got] == [label for label, _ in expected]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], rtol=1e-6)


def test_curl_form_upload_single_several_and_raw(server, image_files):
    def curl(*args: str) -> dict:
        result = subprocess.run(["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    single = curl("-F", f"img=@{image_files[0]}", server.url + "/predict?topk=3")
    assert single["filename"] == image_files[0].name and len(single["predictions"]) == 3
    several = curl(*[arg for path in image_files for arg in ("-F", f"img=@{path}")], "-F", "topk=2",
                   "-F", "model=tutorial", server.url + "/predict")
    assert several["model"] == "tutorial"
    assert [r["filename"] for r in several["results"]] == [p.name for p in image_files]
    raw = curl("--data-binary", f"@{image_files[0]}", "-H", "Content-Type: image/jpeg", server.url + "/predict?topk=3")
    assert raw["predictions"] == single["predictions"]


def _chunks(total: int, size: int = 1 << 20):
    sent = 0
    while sent < total:
        yield b"\0" * min(size, total - sent)
        sent += size


# (description, requests.post keyword arguments, query, expected status, pattern in the message)
BAD_HTTP = [
    ("wrong field name", {"files": {"file": ("a.png", png_bytes())}}, "", 400, "no file in multipart field 'img'"),
    ("no file part", {"files": {"topk": (None, "3")}}, "", 400, "no file in multipart field 'img'"),
    ("empty file", {"files": {"img": ("e.png", b"")}}, "", 400, "the file is empty"),
    ("not an image", {"files": {"img": ("a.png", b"plain text " * 50)}}, "", 400, "not an image"),
    ("truncated png", {"files": {"img": ("t.png", noise_bytes("PNG")[:-3000])}}, "", 400, "truncated|corrupt"),
    ("truncated jpeg", {"files": {"img": ("t.jpg", noise_bytes("JPEG")[:-1500])}}, "", 400, "truncated|corrupt"),
    ("body over 10 MB", {"files": {"img": ("big.png", b"\0" * (11 * 1024 * 1024))}}, "", 413, "10 MB limit"),
    ("chunked body over 10 MB", {"data": _chunks(12 * 1024 * 1024), "headers": {"Content-Type": "image/png"}}, "",
     413, "10 MB limit"),
    ("decompression bomb", {"files": {"img": ("bomb.png", png_bytes((20_000, 20_000), "1"))}}, "", 413,
     "refused before decoding"),
    ("topk 0", {"files": {"img": ("a.png", png_bytes())}}, "?topk=0", 400, "topk must be an integer from 1 to 10"),
    ("topk 11", {"files": {"img": ("a.png", png_bytes())}}, "?topk=11", 400, "topk must be"),
    ("topk -1", {"files": {"img": ("a.png", png_bytes())}}, "?topk=-1", 400, "topk must be"),
    ("topk abc", {"files": {"img": ("a.png", png_bytes())}}, "?topk=abc", 400, "topk must be"),
    ("unknown model", {"files": {"img": ("a.png", png_bytes())}}, "?model=resnet", 404, "unknown model 'resnet'"),
    ("path traversal", {"files": {"img": ("a.png", png_bytes())}}, "?model=../../etc/passwd", 404, "unknown model"),
    ("wrong content type", {"data": b"{}", "headers": {"Content-Type": "application/json"}}, "", 415,
     "unsupported content type"),
    ("malformed multipart", {"data": b"--b\r\nContent-Disposition: form-data; name=\"img\"\r\n\r\nxx",
                             "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, "", 400,
     "malformed multipart body"),
]


def test_bad_input_over_http_gets_4xx_json_and_the_workers_survive(server):
    workers = server.workers()
    assert len(workers) == 2
    for description, kwargs, query, status, pattern in BAD_HTTP:
        response = requests.post(server.url + "/predict" + query, timeout=60, **kwargs)
        assert response.status_code == status, (description, response.text[:300])
        body = response.json()
        assert body["error"]["code"] == status and re.search(pattern, body["error"]["message"]), description
        assert "Traceback" not in response.text
    v2 = requests.post(server.url + "/v2/models/dwsep/infer", timeout=30,
                       json={"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 32, 32], "data": [0]}]})
    assert v2.status_code == 400 and "shape" in v2.json()["error"]
    assert server.workers() == workers  # no worker died or was replaced
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200


def test_metrics_are_summed_across_workers(server, jpegs):
    from importlib.metadata import version

    build = requests.get(server.url + "/metrics", timeout=10).text
    # one series for the release, whatever the number of workers (the gauge's "max" across processes)
    assert re.findall(r"^cifar10_build_info\{.*$", build, re.M) == [
        f'cifar10_build_info{{version="{version("cifar10-classifier")}"}} 1.0']

    def predictions_counted() -> float:
        text = requests.get(server.url + "/metrics", timeout=10).text
        pattern = r'cifar10_http_requests_total\{endpoint="/predict",method="POST",model="dwsep",status="200"\} (\S+)'
        match = re.search(pattern, text)
        return float(match.group(1)) if match else 0.0

    before = predictions_counted()
    sent = 24

    def send(i: int):
        assert requests.post(server.url + "/predict", files={"img": ("x.jpg", jpegs[i % 20][2])},
                             timeout=30).status_code == 200

    threads = [threading.Thread(target=send, args=(i,)) for i in range(sent)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whichever worker answers the scrape, it reports every worker's requests.
    assert [predictions_counted() for _ in range(6)] == [before + sent] * 6
    text = requests.get(server.url + "/metrics", timeout=10).text
    assert re.search(r'cifar10_inference_batch_size_count\{model="dwsep"\} \d+', text)
    assert re.search(r'cifar10_http_request_duration_seconds_bucket\{endpoint="/predict",le="\+Inf",model="dwsep"\}',
                     text)


def test_open_inference_protocol_with_tritonclient(server, weights):
    tritonclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from tritonclient.utils import InferenceServerException

    client = tritonclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("dwsep")
    metadata = client.get_model_metadata("dwsep")
    assert metadata["inputs"][0]["datatype"] == "UINT8"
    images = np.random.default_rng(3).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(weights / "dwsep.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"image": images})[0]
    for binary in (True, False):
        tensor = tritonclient.InferInput("image", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        result = client.infer("dwsep", [tensor],
                              outputs=[tritonclient.InferRequestedOutput("probabilities", binary_data=binary)])
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
    tensor = tritonclient.InferInput("image", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(images[:1])
    default_outputs = client.infer("dwsep", [tensor], model_version="1")  # no outputs named: all, binary
    np.testing.assert_array_equal(default_outputs.as_numpy("probabilities"), expected[:1])
    assert default_outputs.as_numpy("logits").shape == (1, 10)
    with pytest.raises(InferenceServerException, match="unknown model 'resnet'"):
        client.infer("resnet", [tensor])
    wrong = tritonclient.InferInput("image", [1, 32, 32, 3], "FP32")
    wrong.set_data_from_numpy(images[:1].astype(np.float32))
    with pytest.raises(InferenceServerException, match="must have datatype UINT8"):
        client.infer("dwsep", [wrong])
    client.close()


def test_a_keep_alive_connection_is_closed_after_keepalive_requests(server):
    """KEEPALIVE_REQUESTS (default 100): the 100th answer on one connection says Connection: close and the
    connection ends, so that clients reconnect and spread over the workers again (after a worker restart,
    every client of the restarted worker had moved to the other one and stayed there)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for number in range(1, 101):
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            closing = (response.getheader("Connection") or "").lower() == "close"
            assert closing == (number == 100), f"request {number}: Connection: {response.getheader('Connection')}"
        assert connection.sock is None  # http.client closed it, as the answer asked
        connection.request("GET", "/healthz")  # a new connection, transparently
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_concurrent_clients_get_the_single_request_answers(server, jpegs):
    """16 threads x 100 requests: no errors, every answer equal to the sequential single-request answer."""
    images = [(name, data) for _, name, data in jpegs[:8]]
    expected = {}
    for name, data in images:
        response = requests.post(server.url + "/predict?topk=10", files={"img": (name, data)}, timeout=30)
        expected[name] = response.json()["predictions"]
    errors, mismatches = [], []

    def client(worker: int):
        with requests.Session() as session:
            for i in range(100):
                name, data = images[(worker + i) % len(images)]
                try:
                    response = session.post(server.url + "/predict?topk=10", files={"img": (name, data)}, timeout=60)
                except requests.RequestException as exc:
                    errors.append(repr(exc))
                    continue
                if response.status_code != 200:
                    errors.append(response.status_code)
                elif response.json()["predictions"] != expected[name]:
                    mismatches.append(name)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and mismatches == []


# --- start-up failures: a clear log line and a non-zero exit, never a half-ready server -----------------------


@pytest.mark.parametrize("breakage, message", [
    ("missing-dir", "MODELS_DIR .* is not a directory"),
    ("corrupt-model", r"broken\.onnx: not a loadable ONNX model"),
    ("unknown-default", "DEFAULT_MODEL 'resnet' is not among the loaded models"),
])
def test_gunicorn_refuses_to_start_on_broken_models(weights, tmp_path, breakage, message):
    folder = copy_models(weights, tmp_path / "weights")
    env = {"MODELS_DIR": str(folder), "WORKERS": "1"}
    if breakage == "missing-dir":
        shutil.rmtree(folder)
    elif breakage == "corrupt-model":
        (folder / "broken.onnx").write_bytes(b"\x08\x07garbage")
    else:
        env["DEFAULT_MODEL"] = "resnet"
    service = Gunicorn(tmp_path / "gunicorn.log", **env).start()
    status = service.wait_exit(timeout=60)
    assert status != 0
    error_lines = [line for line in service.log().splitlines() if "cannot start the service" in line]
    assert len(error_lines) == 1 and re.search(message, error_lines[0]), service.log()
    assert "Traceback" not in service.log()
    assert "Booting worker" not in service.log()  # it failed before any worker was started


def test_a_second_server_on_the_same_port_refuses_to_start(server, weights, tmp_path):
    """Workers listen with SO_REUSEPORT; without the start-up check a second server would share the port."""
    second = Gunicorn(tmp_path / "gunicorn.log", port=server.port, MODELS_DIR=str(weights), WORKERS="1").start()
    assert second.wait_exit(timeout=60) == 1
    assert re.search(r"cannot start the service: the address 127\.0\.0\.1:\d+ .*is already in use", second.log())
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200


def test_the_gunicorn_master_never_loads_onnxruntime(tmp_path):
    """onnxruntime loaded before fork leaves workers that hang or abort at exit; the config must not load it."""
    script = ("import runpy, sys; runpy.run_path('serving/gunicorn.conf.py'); "
              "loaded = sorted(m for m in ('onnxruntime', 'numpy', 'PIL', 'flask') if m in sys.modules); "
              "print(loaded)")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_gunicorn_stops_cleanly_on_sigterm_and_resets_metrics(weights, tmp_path, jpegs):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale values from an earlier run")
    (metrics_dir / "notes.txt").write_text("not a metrics file")
    service = Gunicorn(tmp_path / "gunicorn.log", MODELS_DIR=str(weights), WORKERS="1",
                       PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)).start()
    try:
        service.wait_ready()
        response = requests.post(service.url + "/predict", files={"img": ("x.jpg", jpegs[0][2])}, timeout=30)
        assert response.status_code == 200
    finally:
        began = time.monotonic()
        service.stop()
        stopped_in = time.monotonic() - began
    assert service.proc.returncode == 0, service.log()
    # Workers exit at once; a worker stuck at exit (as when onnxruntime is loaded before fork) would make the
    # master wait its full graceful timeout (10 s) and then kill it.
    assert stopped_in < 8 and "SIGKILL" not in service.log() and "SIGABRT" not in service.log(), service.log()
    # an operator's metrics folder: stale metric files dropped at start, nothing else touched
    assert not (metrics_dir / "counter_1.db").exists() and (metrics_dir / "notes.txt").exists()
