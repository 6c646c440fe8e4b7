"""``python -m export.onnx_accuracy MODEL.onnx --data PATH``: test accuracy of an exported model, per class too.

Runs the .onnx file alone with onnxruntime (CPU) on the CIFAR-10 test split, taking the class names
from the file's metadata: what a consumer of the file would measure, with no PyTorch model involved.
A file exported with test-time augmentation inside (metadata ``tta``) is measured with it, as
served; the report and the printed line say which mode (``none`` for files without the key).

    python -m export.onnx_accuracy weights/dwsep.onnx --data cifar10-jpeg.tar.gz --limit 2000 --json eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

from common.contract import INPUT_NAME, INPUT_ORT_TYPE, LOGITS, NO_TTA, MetadataKey
from common.files import write_json
from common.inference import cpu_session
from common.paths import repo_relative
from common.text import first_line
from export.sample_images import Data, first_test_images, require_data
from training.data import DataError

BATCH_SIZE = 256


class EvaluationError(Exception):
    """A model file or data that cannot be evaluated; the message is for the user as is."""


def open_session(path: str | os.PathLike) -> ort.InferenceSession:
    if not os.path.isfile(path):
        raise EvaluationError(f"model not found: {path}")
    try:
        return cpu_session(path)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise EvaluationError(f"{path} is not a loadable ONNX model: {first_line(exc)}") from None


def predict(session: ort.InferenceSession, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Top-1 class index per image, from the ``logits`` output."""
    return np.concatenate([session.run([LOGITS], {INPUT_NAME: images[i:i + batch_size]})[0].argmax(1)
                           for i in range(0, len(images), batch_size)])


def accuracy_report(predictions: np.ndarray, labels: np.ndarray, classes) -> dict:
    """Overall and per-class accuracy (fractions), with the image counts they rest on."""
    per_class = {name: float((predictions[labels == i] == i).mean()) if (labels == i).any() else None
                 for i, name in enumerate(classes)}
    return {"images": int(len(labels)), "accuracy": float((predictions == labels).mean()),
            "per_class_accuracy": per_class}


def measure_onnx_accuracy(path: str | os.PathLike, data: Data, limit: int | None = None) -> dict:
    """Accuracy of the model file ``path`` on the first ``limit`` test images (all when None)."""
    session = open_session(path)
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type != INPUT_ORT_TYPE:
        raise EvaluationError(f"{path} is not an exported classifier (expected one uint8 input '{INPUT_NAME}')")
    meta = session.get_modelmeta().custom_metadata_map
    cifar = require_data(data)
    classes = json.loads(meta[MetadataKey.CLASSES]) if MetadataKey.CLASSES in meta else list(cifar.classes)
    if list(classes) != list(cifar.classes):
        raise EvaluationError(f"{path} was exported for classes {classes}, the data has {list(cifar.classes)}")
    images, labels = first_test_images(cifar, limit)
    start = time.perf_counter()
    report = accuracy_report(predict(session, images), labels, classes)
    report.update(model=repo_relative(path), arch=meta.get(MetadataKey.ARCH, ""),
                  tta=meta.get(MetadataKey.TTA, NO_TTA), data=repo_relative(cifar.source),
                  seconds=round(time.perf_counter() - start, 2))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx_accuracy",
                                description="Test accuracy of an exported model.")
    p.add_argument("model", help="exported .onnx file")
    p.add_argument("--data", help="CIFAR-10 source (default $CIFAR10_DATA)")
    p.add_argument("--limit", type=int, help="evaluate only the first N test images")
    p.add_argument("--json", help="also write the figures to this JSON file")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        report = measure_onnx_accuracy(args.model, args.data, args.limit)
        if args.json:
            write_json(args.json, report)
    except (EvaluationError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    tta = f" (TTA {report['tta']}, in the graph)" if report["tta"] != NO_TTA else ""
    print(f"{report['arch'] or args.model}: test accuracy {100 * report['accuracy']:.2f}% "
          f"on {report['images']} images{tta}")
    for name, acc in report["per_class_accuracy"].items():
        print(f"  {name:<12} {'-' if acc is None else f'{100 * acc:.2f}%'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
