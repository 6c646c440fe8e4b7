"""The served graph: uint8 RGB images in, logits and probabilities out, preprocessing inside.

A server has decoded images (Pillow gives HWC uint8 RGB), not normalized NCHW floats. Putting the
layout change, cast, scaling and the checkpoint's mean/std into the graph means no consumer can get
preprocessing wrong, and the .onnx file alone is enough to serve the model.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. It exists in every torch
this project supports (2.11 and 2.13 checked), does not need onnxscript (which the GPU machine may
lack), traces all eight registered models in well under a second each, and gives the same parity
(max |diff| of probabilities ~1e-8) as the dynamo exporter, which took 5-10x longer here. The
parity check, not the exporter choice, is what guarantees a correct file.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from common.contract import BATCH_DIM, IMAGE_SHAPE, INPUT_NAME, NUM_CLASSES, OUTPUTS
from common.text import first_line
from export import ExportError
from training.tta import TTA

DEFAULT_OPSET = 17  # onnxruntime >= 1.14 and OpenCV's DNN importer both run it
# 14: the oldest at which shape inference carries the batch dim through every registered model (at 13 it
# loses it in adaptive's reshape); 20: the newest the TorchScript exporter writes.
OPSETS = range(14, 21)


class ServableModel(nn.Module):
    """``model`` behind the training pipeline's preprocessing, taking (N, 32, 32, 3) uint8 RGB.

    The ops are those of ``training.data.DeviceLoader.prepare`` in the same order (permute, float,
    /255, -mean, /std), so the graph computes what the model saw in training, bit for bit. With
    ``raw_pixels`` the model takes the float pixels (0-255) as they are: it has the normalization
    folded into its first layer (``serving_form``).
    """

    def __init__(self, model: nn.Module, mean, std, raw_pixels: bool = False):
        super().__init__()
        self.model = model
        self.raw_pixels = raw_pixels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).float()
        if not self.raw_pixels:
            x = (x.div(255) - self.mean) / self.std
        logits = self.model(x)
        return logits, logits.softmax(dim=1)


def serving_form(model: nn.Module, mean, std) -> ServableModel:
    """``model`` (eval mode, maybe inside ``training.tta.TTA``) with its preprocessing, in the fewest ops.

    A model with ``folded_for_inference(mean, std)`` (``WhitenedVGG``) gives an equal copy that takes raw
    pixels, with the normalization and its BatchNorms folded into its convolutions (Sub, Div, three
    BatchNormalization ops and their quantize/dequantize pairs gone from the int8 file; what that gains one
    image on one thread: ``benchmarks/served_graph.py``). Any other model is used as it is.
    """
    inner = model.model if isinstance(model, TTA) else model
    fold = getattr(inner, "folded_for_inference", None)
    if fold is None:
        return ServableModel(model, mean, std)
    folded = fold(mean, std)
    return ServableModel(TTA(folded, model.mode) if isinstance(model, TTA) else folded, mean, std, raw_pixels=True)


def export_graph(model: nn.Module, mean, std, opset: int = DEFAULT_OPSET,
                 fp16_weights: bool = False, fold: bool = True) -> onnx.ModelProto:
    """Trace ``model`` (eval mode) with its preprocessing into an ONNX model with a dynamic batch.

    ``fold``: trace ``serving_form`` (the model's folded copy where it has one); False traces the model as
    trained behind the plain preprocessing (``benchmarks/served_graph.py`` times the two).

    ``fp16_weights``: the model's weights are fp16 values (an ensemble's, ``training.ensemble``) and the
    file stores them so (``store_fp16``). BatchNorm is then not folded into the convolutions by the
    exporter (that would make new fp32 values, not fp16 ones); onnxruntime folds it when it loads the file.
    """
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported: choose {OPSETS.start}..{OPSETS.stop - 1}")
    servable = (serving_form(model, mean, std) if fold else ServableModel(model, mean, std)).eval()
    # EVAL folds BatchNorm into the convolutions; PRESERVE (the model is in eval mode) keeps the stored values
    mode = torch.onnx.TrainingMode.PRESERVE if fp16_weights else torch.onnx.TrainingMode.EVAL
    example = torch.zeros((2, *IMAGE_SHAPE), dtype=torch.uint8)  # batch 2: a batch of 1 can get folded
    buffer = io.BytesIO()
    dynamic = {name: {0: BATCH_DIM} for name in (INPUT_NAME, *OUTPUTS)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy TorchScript exporter"
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # PRESERVE on a model in eval mode folds no parameter; the warning is for models in training mode
            warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
            torch.onnx.export(servable, (example,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUTS),
                              dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True,
                              training=mode, dynamo=False)
    except Exception as exc:  # the exporter raises many types (ValueError, RuntimeError, its own errors)
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {first_line(exc)}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    zero_subnormal_weights(proto)
    if fp16_weights:
        store_fp16(proto)
    proto.producer_name = "cifar10-classifier export.onnx"
    proto.doc_string = (f"CIFAR-10 classifier. Input '{INPUT_NAME}': uint8 RGB [{BATCH_DIM}, 32, 32, 3], "
                        f"normalization inside. Outputs '{OUTPUTS[0]}' and '{OUTPUTS[1]}': float32 [{BATCH_DIM}, "
                        f"{NUM_CLASSES}]; class names, provenance and parity figures in metadata_props.")
    return proto


def zero_subnormal_weights(proto: onnx.ModelProto) -> int:
    """Write float32 weights below float32's smallest normal (1.2e-38) as zero; returns how many there were.

    Weight decay drives weights that get no gradient towards zero until they are subnormal, which x86 CPUs
    multiply on a slow path (figures in ``common/inference.py``, whose sessions read any left as zero). Against
    weights of 1e-2 they change no output beyond float rounding; parity is measured on the file as written.
    """
    zeroed = 0
    for initializer in proto.graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(initializer)
        subnormal = (values != 0) & (np.abs(values) < np.finfo(np.float32).tiny)
        if subnormal.any():
            zeroed += int(subnormal.sum())
            initializer.CopyFrom(numpy_helper.from_array(np.where(subnormal, np.float32(0), values),
                                                         initializer.name))
    return zeroed


def store_fp16(proto: onnx.ModelProto, min_elements: int = 16) -> int:
    """Store each float32 initializer that fp16 holds exactly (every value survives the round trip) as fp16,
    read back through a Cast to float32: the graph computes the same numbers from half the bytes.

    Returns how many initializers changed. onnxruntime folds the Casts when it loads the file, so the
    speed is that of the fp32 file. Small tensors (under ``min_elements``) stay as they are.
    """
    casts = []
    for initializer in proto.graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(initializer)
        half = values.astype(np.float16)
        if values.size < min_elements or not np.array_equal(half.astype(np.float32), values):
            continue
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(half, f"{name}_fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}_fp16"], [name], name=f"{name}_to_fp32",
                                           to=onnx.TensorProto.FLOAT))
    nodes = casts + list(proto.graph.node)  # a Cast before every reader: the graph stays topologically sorted
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return len(casts)


def check_graph(proto: onnx.ModelProto) -> None:
    """Raise ExportError unless the model is valid and its interface is the served contract.

    Besides ``onnx.checker`` (full check), shape inference must rediscover every output's shape
    from the input alone: output shapes are cleared on a copy and must come back as [batch, 10].
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported graph fails onnx.checker: {first_line(exc)}") from None
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or _shape(inputs[0]) != [BATCH_DIM, *IMAGE_SHAPE] \
            or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise ExportError(f"exported graph input is not '{INPUT_NAME}' uint8 [{BATCH_DIM}, 32, 32, 3]")
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    for output in stripped.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=True, data_prop=True)
    outputs = {o.name: o for o in inferred.graph.output}
    for name in OUTPUTS:
        if name not in outputs:
            raise ExportError(f"exported graph has no output '{name}'")
        if outputs[name].type.tensor_type.elem_type != onnx.TensorProto.FLOAT \
                or _shape(outputs[name]) != [BATCH_DIM, NUM_CLASSES]:
            raise ExportError(f"shape inference does not resolve output '{name}' to float [{BATCH_DIM}, "
                              f"{NUM_CLASSES}] (got {_shape(outputs[name])})")


def _shape(value_info: onnx.ValueInfoProto) -> list | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in tensor.shape.dim]
