"""``--int8``: a statically quantized copy of an exported model, kept only if it stays accurate.

onnxruntime's ``quantize_static`` in QDQ format, per-channel int8 weights, uint8 activations whose
ranges are the 0.01th to 99.99th percentiles of their values on training images (``CALIBRATION``). Only
Conv, Gemm and MatMul are quantized: those hold the weights and nearly all the arithmetic, while the
preprocessing at the graph's head (cast, /255, -mean, /std) and the softmax at its tail stay float, so the
uint8 input contract and the probabilities keep their exact meaning. The layers that read the image itself
stay float too (``image_layers``): with three input channels they are a small share of the time. Both
choices were measured against min/max calibration of every layer (what the files shipped before 0.7.0
used) as agreement with the fp32 model on 10,000 training images the calibration never saw:
``benchmarks/int8_calibration.py``. The graph is first run through ``quant_pre_process`` (symbolic shape
inference + graph optimizations such as Conv/BN fusion), as onnxruntime recommends, and each SiLU of the
result is written as onnxruntime's one-kernel QuickGelu (``fuse_silu``).

The int8 file is scored against the fp32 one on the same test images and timed against it on the
same batches; it replaces nothing and is deleted unless the accuracy drop is within ``max_drop``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from common.contract import INPUT_NAME, INT8_MAX_DROP_POINTS, LOGITS, THROUGHPUT_BATCH, MetadataKey
from common.files import temp_path, write_bytes
from common.inference import cpu_session, session_options
from export import ExportError
from export.metadata import set_metadata
from export.onnx_accuracy import predict
from export.sample_images import calibration_images as draw_calibration_images
from export.sample_images import first_test_images, timing_images
from training.data import Cifar10

CALIBRATION_BATCH = 64
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
CALIBRATION = CalibrationMethod.Percentile
CALIBRATION_PERCENTILE = 99.99  # activation ranges drop the outermost 0.01% of calibration values at each end
METHOD = ("onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations, "
          f"Percentile {CALIBRATION_PERCENTILE:g}, image-reading layers float")


class ImageReader(CalibrationDataReader):
    """Feeds uint8 image batches to the calibrator under the graph's input name."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self.batches = iter([images[i:i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def int8_path(fp32_path: str | os.PathLike) -> Path:
    """``weights/x.onnx`` -> ``weights/x.int8.onnx``."""
    p = Path(fp32_path)
    return p.with_name(p.name.removesuffix(".onnx") + ".int8.onnx")


def image_layers(proto: onnx.ModelProto) -> list[str]:
    """Names of the quantizable nodes that read the graph's input with no quantizable node between (the first
    convolution of a network, each member's first one in an ensemble)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found: list[str] = []
    seen: set[int] = set()
    weights = {t.name for t in proto.graph.initializer}  # older files list their weights among the inputs too
    frontier = [i.name for i in proto.graph.input if i.name not in weights]
    while frontier:
        for node in readers.get(frontier.pop(), []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in QUANTIZED_OPS:
                found.append(node.name)
            else:
                frontier.extend(node.output)
    return found


def quantize_file(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calibration: np.ndarray,
                  fuse: bool = True, calibrate_method: CalibrationMethod = CALIBRATION,
                  float_image_layers: bool = True) -> None:
    """Write the int8 QDQ model for ``fp32_path`` to ``out_path`` (no checks; see ``quantize_model``).

    ``fuse``: run each SiLU as one kernel (``fuse_silu``); False is only for measuring what that gains.
    ``calibrate_method`` and ``float_image_layers`` other than their defaults are only for measuring what the
    project's choice gains (``benchmarks/int8_calibration.py``)."""
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        keep_float = image_layers(onnx.load(str(prepared))) if float_image_layers else []
        extra = {"CalibPercentile": CALIBRATION_PERCENTILE} if calibrate_method == CalibrationMethod.Percentile else {}
        quantized = Path(tmp) / "quantized.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_static(str(prepared), str(quantized), ImageReader(calibration),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calibrate_method, nodes_to_exclude=keep_float, extra_options=extra)
        proto = onnx.load(str(quantized))
        if fuse:
            fuse_silu(proto)
        onnx.save(proto, str(out_path))


def fuse_silu(proto: onnx.ModelProto) -> int:
    """Write each SiLU, ``Mul(x, Sigmoid(x))``, as onnxruntime's one-kernel ``com.microsoft.QuickGelu(x,
    alpha=1)``, which computes exactly that; returns how many there were.

    onnxruntime fuses the pair itself in a float graph, but not in a QDQ one: when it loads the file it gives
    each reader of a DequantizeLinear its own copy, so Sigmoid and Mul no longer share their input and the
    pattern is gone. Fused here, the activation is one DequantizeLinear, one kernel and one QuantizeLinear
    (what that gains whitened_vgg_fast's 7 SiLUs on one thread: ``benchmarks/served_graph.py``).
    The file is for onnxruntime either way (the service's runtime); the fp32 file keeps standard ops only.
    """
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    replaced: dict[int, onnx.NodeProto] = {}  # id of the Mul -> its QuickGelu
    dropped: set[int] = set()  # ids of the Sigmoids
    for node in proto.graph.node:
        if node.op_type != "Sigmoid" or node.domain not in ("", "ai.onnx"):
            continue
        (x,), (gate,) = node.input, node.output
        users = readers.get(gate, [])
        if len(users) != 1 or users[0].op_type != "Mul" or sorted(users[0].input) != sorted([x, gate]) \
                or any(gate == out.name for out in proto.graph.output):
            continue
        mul = users[0]
        replaced[id(mul)] = onnx.helper.make_node("QuickGelu", [x], list(mul.output), name=f"{mul.name}_silu",
                                                  domain="com.microsoft", alpha=1.0)
        dropped.add(id(node))
    if replaced:
        nodes = [replaced.get(id(n), n) for n in proto.graph.node if id(n) not in dropped]
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in proto.opset_import):
            proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def images_per_second(session: ort.InferenceSession, images: np.ndarray, repeats: int = 3) -> float:
    """Best of ``repeats`` timed passes over ``images`` in batches of THROUGHPUT_BATCH (after a warm-up)."""
    session.run([LOGITS], {INPUT_NAME: images[:THROUGHPUT_BATCH]})
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict(session, images, THROUGHPUT_BATCH)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def single_image_rate(path: str | os.PathLike, images: np.ndarray, seconds: float = 2.0) -> float:
    """Images/s one image per call on one onnxruntime thread: how the service runs a lone request."""
    session = cpu_session(path, session_options(1))
    session.run([LOGITS], {INPUT_NAME: images[:1]})
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            session.run([LOGITS], {INPUT_NAME: images[done % len(images)][np.newaxis]})
            done += 1
        best = max(best, done / elapsed)
    return best


def quantize_model(fp32_path: str | os.PathLike, cifar: Cifar10, *, calibration_images: int = 512,
                   test_images: int | None = None, max_drop: float = INT8_MAX_DROP_POINTS,
                   fp32_accuracy: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Write ``NAME.int8.onnx`` beside ``fp32_path`` if it loses at most ``max_drop`` accuracy points.

    Returns the figures: both accuracies on the first ``test_images`` test images (all if None),
    images/second of both on the CPU and their ratio, and whether the file was kept. ``fp32_accuracy``:
    the fp32 file's accuracy on those images where the caller has measured it already.
    """
    if calibration_images < 1:
        raise ExportError("--calibration-images must be at least 1")
    out = int8_path(fp32_path)
    tmp = temp_path(out)
    try:
        quantize_file(fp32_path, tmp, draw_calibration_images(cifar, calibration_images))
        images, labels = first_test_images(cifar, test_images)
        sessions = {name: cpu_session(path) for name, path in (("fp32", fp32_path), ("int8", tmp))}
        accuracy = {name: float((predict(s, images) == labels).mean()) for name, s in sessions.items()
                    if name == "int8" or fp32_accuracy is None}
        accuracy.setdefault("fp32", fp32_accuracy)
        timing = timing_images(cifar)
        speed = {name: images_per_second(s, timing) for name, s in sessions.items()}
        single = {name: single_image_rate(path, timing) for name, path in (("fp32", fp32_path), ("int8", tmp))}
        drop_points = 100 * (accuracy["fp32"] - accuracy["int8"])
        figures = {
            "model": str(out),
            "test_images": int(len(labels)),
            "calibration_images": int(min(calibration_images, len(cifar.train_labels))),
            "fp32_accuracy": accuracy["fp32"],
            "int8_accuracy": accuracy["int8"],
            "accuracy_drop_points": round(drop_points, 4),
            "max_drop_points": max_drop,
            "fp32_images_per_second": round(speed["fp32"], 1),
            "int8_images_per_second": round(speed["int8"], 1),
            "throughput_ratio": round(speed["int8"] / speed["fp32"], 3),
            "fp32_single_images_per_second": round(single["fp32"], 1),
            "int8_single_images_per_second": round(single["int8"], 1),
            "single_image_speedup": round(single["int8"] / single["fp32"], 3),
            "kept": drop_points <= max_drop,
            "method": METHOD,
        }
        line = (f"int8: accuracy {100 * accuracy['int8']:.2f}% vs fp32 {100 * accuracy['fp32']:.2f}% on "
                f"{len(labels)} test images (drop {drop_points:.2f} points), throughput "
                f"x{figures['throughput_ratio']}, one image at a time x{figures['single_image_speedup']}")
        if not figures["kept"]:
            figures["model"] = None
            out.unlink(missing_ok=True)  # an older int8 file would now disagree with the fp32 model beside it
            log(f"{line}; not kept: the drop exceeds {max_drop} points")
            return figures
        proto = onnx.load(str(tmp))
        meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        meta[MetadataKey.QUANTIZATION] = json.dumps(figures, sort_keys=True)
        set_metadata(proto, meta)
        write_bytes(out, proto.SerializeToString())
        log(f"{line} -> {out}")
        return figures
    finally:
        tmp.unlink(missing_ok=True)
