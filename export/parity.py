"""Parity: does onnxruntime, given uint8 images, reproduce the PyTorch model the checkpoint holds?

The reference side is the checkpoint's model (eval mode, fp32, CPU) fed by the training pipeline's
own preprocessing (``DeviceLoader.prepare``), not by a copy of it: the check then proves the graph
computes what the model saw in training. The ONNX side is onnxruntime's CPUExecutionProvider with
default graph optimizations, as a server runs it.

Besides the main images (real test images, or random pixels without data) every check runs edge
inputs: an all-zero and an all-255 image (the extremes of the normalization), and batch sizes 1 and
64 (the dynamic batch dimension).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from common.contract import INPUT_NAME, OUTPUTS
from common.inference import cpu_session
from common.text import first_line
from export import ExportError
from export.onnx_accuracy import accuracy_report
from training.data import DeviceLoader

MAX_PROB_DIFF = 1e-5
MIN_TOP1_AGREEMENT = 1.0
BATCH_SIZE = 256


def edge_inputs(images: np.ndarray) -> dict[str, np.ndarray]:
    """The edge batches; the two real-pixel ones come from ``images`` (repeated if fewer than 64)."""
    shape = (1, *images.shape[1:])
    return {
        "all_zero": np.zeros(shape, dtype=np.uint8),
        "all_255": np.full(shape, 255, dtype=np.uint8),
        "batch_1": images[:1],
        "batch_64": images[np.arange(64) % len(images)],
    }


def onnx_outputs(session: ort.InferenceSession, images: np.ndarray,
                 batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of an ONNX session over ``images`` in batches of ``batch_size``."""
    parts = [session.run(list(OUTPUTS), {INPUT_NAME: np.ascontiguousarray(images[i:i + batch_size])})
             for i in range(0, len(images), batch_size)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@torch.no_grad()
def torch_outputs(model: nn.Module, mean, std, images: np.ndarray,
                  batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of the PyTorch model, preprocessing as in training."""
    loader = DeviceLoader(images, np.zeros(len(images), dtype=np.int64), batch_size, torch.device("cpu"),
                          mean, std)
    logits = torch.cat([model(x) for x, _ in loader])
    return logits.numpy(), logits.softmax(dim=1).numpy()


def compare(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> dict:
    """Figures for one set of images: max |diff| of logits and probabilities, top-1 agreement."""
    (ref_logits, ref_probs), (logits, probs) = reference, candidate
    agree = int((ref_logits.argmax(1) == logits.argmax(1)).sum())
    return {
        "images": len(ref_logits),
        "max_abs_diff_logits": float(np.abs(ref_logits - logits).max()),
        "max_abs_diff_probabilities": float(np.abs(ref_probs - probs).max()),
        "top1_agreement": agree / len(ref_logits),
        "top1_disagreements": len(ref_logits) - agree,
    }


def measure_parity(model: nn.Module, mean, std, onnx_model: bytes | str | os.PathLike, images: np.ndarray,
                   labels: np.ndarray | None = None, *, source: str, max_prob_diff: float = MAX_PROB_DIFF,
                   min_top1_agreement: float = MIN_TOP1_AGREEMENT, classes: Sequence[str] | None = None) -> dict:
    """Run both runtimes on ``images`` and the edge inputs; the report says whether parity holds.

    ``source`` names where ``images`` come from ("cifar10-test" or "random"); with ``labels`` the
    report also has both runtimes' accuracy on them, and with ``classes`` onnxruntime's per class: the
    exported file's test accuracy, measured here once (``export.package`` records it from this report).
    """
    start = time.perf_counter()
    model.eval()
    if isinstance(onnx_model, (str, os.PathLike)):
        onnx_model = str(onnx_model)
    try:
        session = cpu_session(onnx_model)
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented share no useful base class
        raise ExportError(f"onnxruntime cannot load the exported graph: {first_line(exc)}") from None
    cases = {"images": images, **edge_inputs(images)}
    figures: dict[str, dict] = {}
    for name, batch in cases.items():
        reference = torch_outputs(model, mean, std, batch)
        candidate = onnx_outputs(session, batch)
        figures[name] = compare(reference, candidate)
        if name == "images" and labels is not None:
            figures[name]["accuracy_torch"] = float((reference[0].argmax(1) == labels).mean())
            figures[name]["accuracy_onnxruntime"] = float((candidate[0].argmax(1) == labels).mean())
            if classes is not None:
                figures[name]["per_class_accuracy_onnxruntime"] = accuracy_report(
                    candidate[0].argmax(1), labels, classes)["per_class_accuracy"]
    total = sum(f["images"] for f in figures.values())
    disagreements = sum(f["top1_disagreements"] for f in figures.values())
    report = {
        "source": source,
        "images": len(images),
        "max_abs_diff_logits": max(f["max_abs_diff_logits"] for f in figures.values()),
        "max_abs_diff_probabilities": max(f["max_abs_diff_probabilities"] for f in figures.values()),
        "top1_agreement": (total - disagreements) / total,
        "top1_disagreements": disagreements,
        "thresholds": {"max_abs_diff_probabilities": max_prob_diff, "min_top1_agreement": min_top1_agreement},
        "cases": figures,
        "runtimes": {"torch": str(torch.__version__), "onnxruntime": ort.__version__,
                     "provider": "CPUExecutionProvider"},
        "seconds": round(time.perf_counter() - start, 2),
    }
    report["passed"] = bool(report["max_abs_diff_probabilities"] <= max_prob_diff
                            and report["top1_agreement"] >= min_top1_agreement)
    return report


def summary(report: dict) -> str:
    """The report as one line, for the terminal."""
    where = ("CIFAR-10 test images" if report["source"] == "cifar10-test" else "random images")
    limit = report["thresholds"]["max_abs_diff_probabilities"]
    return (f"parity {'ok' if report['passed'] else 'FAILED'}: {report['images']} {where} + edge inputs, "
            f"max|diff| logits {report['max_abs_diff_logits']:.2e}, probabilities "
            f"{report['max_abs_diff_probabilities']:.2e} (limit {limit:.0e}), "
            f"top-1 agreement {100 * report['top1_agreement']:.2f}%")
