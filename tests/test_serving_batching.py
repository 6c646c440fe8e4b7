"""Dynamic batching (serving/batching.py): concurrent requests share one model call, each answer unchanged."""

from __future__ import annotations

import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
from PIL import Image
from test_serving_support import Gunicorn, cifar_jpegs, shipped_models

from common.contract import IMAGE_SHAPE
from serving.batching import Batcher, BatchRecord
from serving.models import session_options

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


class SlowModel:
    """Sums each image's pixels, taking ``seconds`` per call; records every call's batch size."""

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.calls: list[int] = []
        self.fail_next = False

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        self.calls.append(len(images))
        time.sleep(self.seconds)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the model broke")
        return [images.reshape(len(images), -1).sum(axis=1), images[:, 0, 0, 0].astype(np.float32)]


def images_of(*values: int) -> np.ndarray:
    return np.stack([np.full(IMAGE_SHAPE, v, dtype=np.uint8) for v in values])


def run_concurrently(batcher: Batcher, inputs: list[np.ndarray], start_gap: float = 0.005) -> list:
    """Each input from its own thread, the first one first (it finds the model idle and leads)."""
    results: list = [None] * len(inputs)

    def call(i):
        try:
            results[i] = batcher.run(inputs[i])
        except Exception as exc:  # noqa: BLE001 (the test inspects it)
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    threads[0].start()
    time.sleep(start_gap)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_requests_arriving_during_a_call_share_the_next_one_and_get_their_own_rows():
    model = SlowModel(seconds=0.2)
    records: list[BatchRecord] = []
    batcher = Batcher(model, max_images=32, on_batch=records.append)
    inputs = [images_of(i) for i in range(1, 9)] + [images_of(20, 21)]
    results = run_concurrently(batcher, inputs)
    assert model.calls == [1, 9]  # the first alone (the model was idle), then the other 8 requests (9 images)
    for given, (sums, firsts) in zip(inputs, results, strict=True):
        assert sums.tolist() == [int(v) * 32 * 32 * 3 for v in given[:, 0, 0, 0]]
        assert firsts.tolist() == given[:, 0, 0, 0].tolist()
    assert [(r.images, r.requests) for r in records] == [(1, 1), (9, 8)]
    assert min(records[1].queue_waits) > 0.05  # they waited for the first call to end


def test_a_batch_never_exceeds_max_images_and_a_larger_request_runs_alone():
    model = SlowModel(seconds=0.2)
    batcher = Batcher(model, max_images=4)
    inputs = [images_of(0)] + [images_of(i, i) for i in range(1, 5)] + [images_of(*range(10, 16))]
    results = run_concurrently(batcher, inputs)
    assert model.calls == [1, 4, 4, 6]  # two pairs, two pairs, then the 6-image request on its own
    assert [len(r[0]) for r in results] == [1, 2, 2, 2, 2, 6]


def test_a_request_with_nothing_on_its_way_runs_at_once_even_with_a_wait_window():
    model = SlowModel(seconds=0)
    batcher = Batcher(model, max_images=32, max_wait=0.5)
    for value in range(3):  # a client sending one request at a time: each runs at once
        start = time.perf_counter()
        batcher.run(images_of(value))
        assert time.perf_counter() - start < 0.1
    assert model.calls == [1, 1, 1]


def test_the_wait_window_gathers_requests_still_decoding_and_no_longer():
    model = SlowModel(seconds=0)
    batcher = Batcher(model, max_images=32, max_wait=0.3)

    def decode_then_run(seconds, value, results):
        with batcher.arriving():
            time.sleep(seconds)  # decoding its image
        results.append(batcher.run(images_of(value)))

    results: list = []
    late = threading.Thread(target=decode_then_run, args=(0.05, 2, results))
    late.start()
    time.sleep(0.01)
    results.append(batcher.run(images_of(1)))  # leads; the late request is decoding: it waits for it
    late.join(5)
    assert model.calls == [2]
    # one still decoding after the window: the leader goes without it
    slow = threading.Thread(target=decode_then_run, args=(0.6, 3, results))
    slow.start()
    time.sleep(0.01)
    start = time.perf_counter()
    batcher.run(images_of(4))
    assert 0.25 < time.perf_counter() - start < 0.55
    slow.join(5)
    assert model.calls == [2, 1, 1]


def test_a_model_failure_reaches_every_request_of_its_batch_and_the_next_batch_works():
    model = SlowModel()
    batcher = Batcher(model, max_images=32)
    model_calls = model.calls

    def fail_second_call(images):
        model.fail_next = len(model_calls) == 1
        return model(images)

    batcher._run_batch = fail_second_call
    results = run_concurrently(batcher, [images_of(i) for i in range(4)])
    assert isinstance(results[0], list)
    assert all(isinstance(r, RuntimeError) and str(r) == "the model broke" for r in results[1:])
    assert batcher.run(images_of(7))[0].tolist() == [7 * 32 * 32 * 3]


@pytest.mark.parametrize("name", sorted(p.stem for p in WEIGHTS.glob("*.onnx")))
def test_every_shipped_model_gives_each_image_the_same_answer_alone_or_batched(name, data_archive):
    session = ort.InferenceSession(str(WEIGHTS / f"{name}.onnx"), sess_options=session_options(1),
                                   providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    batcher = Batcher(lambda images: session.run(outputs, {"image": images}), max_images=32)
    pictures = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                for _, _, data in cifar_jpegs(data_archive, per_class=2)]
    inputs = [np.stack(pictures[i:i + 2]) for i in range(0, len(pictures), 2)]  # 10 requests of 2 images
    alone = [session.run(outputs, {"image": images}) for images in inputs]
    together = run_concurrently(batcher, inputs, start_gap=0)
    for single, batched in zip(alone, together, strict=True):
        for a, b in zip(single, batched, strict=True):
            assert np.array_equal(a, b)


def metric_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, flags=re.M))


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    weights = shipped_models(tmp_path_factory.mktemp("batching-weights"), names=("dwsep",))
    service = Gunicorn(tmp_path_factory.mktemp("batching") / "gunicorn.log", MODELS_DIR=str(weights),
                       WORKERS="1", BATCH_WAIT_MS="300")
    service.start()
    try:
        yield service.wait_ready()
    finally:
        service.stop()


def test_over_http_concurrent_requests_are_batched_and_answered_as_if_alone(batching_server, data_archive):
    url = batching_server.url
    uploads = [(name, data) for _, name, data in cifar_jpegs(data_archive, per_class=3)]
    alone = [requests.post(url + "/predict", files={"img": upload}, params={"topk": 10}, timeout=30).json()
             for upload in uploads]
    # an idle service does not wait BATCH_WAIT_MS (300 ms here) before running a request
    time.sleep(0.5)
    start = time.perf_counter()
    assert requests.post(url + "/predict", files={"img": uploads[0]}, timeout=30).status_code == 200
    assert time.perf_counter() - start < 0.2
    before = requests.get(url + "/metrics", timeout=10).text

    def post(upload):
        with requests.Session() as session:
            return [session.post(url + "/predict", files={"img": upload}, params={"topk": 10}, timeout=30).json()
                    for _ in range(5)]

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(post, uploads[:16]))
    for expected, answers in zip(alone, together, strict=False):
        assert all(answer["predictions"] == expected["predictions"] for answer in answers)
    after = requests.get(url + "/metrics", timeout=10).text
    calls = metric_sum(after, "cifar10_inference_batch_requests_count") - metric_sum(
        before, "cifar10_inference_batch_requests_count")
    batched = metric_sum(after, "cifar10_inference_batch_requests_sum") - metric_sum(
        before, "cifar10_inference_batch_requests_sum")
    assert batched == 80 and calls < 40  # 80 requests in fewer than 40 model calls
    assert metric_sum(after, "cifar10_inference_queue_wait_seconds_count") >= 80
