"""The one inference path every protocol adapter calls, shaped like a TorchServe handler.

    resolve_model -> preprocess (decode each upload to 32x32 RGB) -> infer (one onnxruntime call,
    shared with the worker's other concurrent requests: serving/batching.py) -> postprocess (top-k)

``/predict`` (serving/api.py) uses every step; the Open Inference Protocol (serving/kserve.py)
receives pixels already, so it skips preprocess and encodes the outputs its own way. Each step is
timed into the metrics here, and the model label is set where inference happens.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

import numpy as np
from flask import current_app

from common.contract import PROBABILITIES
from common.images import ImageError, PixelBudget, decode
from serving import metrics
from serving.batching import Batcher
from serving.errors import ApiError
from serving.models import LoadedModel, ModelRegistry, UnknownModelError


def registry() -> ModelRegistry:
    return current_app.extensions["model_registry"]


def resolve_model(name: str | None) -> LoadedModel:
    """The named model (the default for None or ""); 404 naming the loaded models when there is none."""
    try:
        return registry().get(name)
    except UnknownModelError as exc:
        raise ApiError(404, str(exc)) from None


_REJECTION_REASONS = {413: "too_large", 415: "unsupported_format"}


def decode_upload(data: bytes, what: str, budget: PixelBudget | None = None) -> np.ndarray:
    """One upload as uint8 [32, 32, 3]; 400/413/415 naming ``what`` when it cannot be classified."""
    start = time.perf_counter()
    try:
        array = decode(data, current_app.config["MAX_IMAGE_PIXELS"], budget=budget)
    except ImageError as exc:
        metrics.IMAGE_ERRORS.labels(_REJECTION_REASONS.get(exc.status, "undecodable")).inc()
        raise ApiError(exc.status, f"{what}: {exc}") from None
    metrics.DECODE_LATENCY.observe(time.perf_counter() - start)
    return array


def preprocess(files: list[tuple[str, bytes]]) -> np.ndarray:
    """[(description, bytes)] -> uint8 [n, 32, 32, 3], in order, within MAX_REQUEST_PIXELS decoded pixels in all."""
    budget = PixelBudget(current_app.config["MAX_REQUEST_PIXELS"])
    return np.stack([decode_upload(data, what, budget) for what, data in files])


def infer(model: LoadedModel, batch: np.ndarray, outputs: tuple[str, ...] = (PROBABILITIES,)) -> list[np.ndarray]:
    """The requested outputs for ``batch``, computed in one onnxruntime call together with whatever other
    requests of this worker are waiting for the same model; labelled with the model in the metrics."""
    metrics.use_model(model.name)
    every_output = batcher_for(model).run(batch)  # all of model.outputs, in that order
    return [every_output[model.outputs.index(name)] for name in outputs]


def arriving(model: LoadedModel) -> AbstractContextManager[None]:
    """Wrap a request's decoding: a batch being formed for ``model`` may wait for it (BATCH_WAIT_MS)."""
    return batcher_for(model).arriving()


def batcher_for(model: LoadedModel) -> Batcher:
    batchers: dict[str, Batcher] = current_app.extensions.setdefault("batchers", {})
    if model.name not in batchers:
        batchers[model.name] = Batcher(
            lambda images: model.run(images, model.outputs), max_images=current_app.config["BATCH_MAX_IMAGES"],
            max_wait=current_app.config["BATCH_WAIT_MS"] / 1000,
            on_batch=lambda record: metrics.observe_batch(model.name, record))
    return batchers[model.name]


def top_predictions(model: LoadedModel, probs: np.ndarray, k: int) -> list[dict]:
    """The k most probable classes of one image, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    # str() of a float32 is its shortest round-tripping form: 0.91, not 0.9100000262260437
    return [{"label": model.classes[i], "index": int(i), "probability": float(str(probs[i]))} for i in order]
