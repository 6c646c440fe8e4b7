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

import onnx
import torch
import torch.nn as nn

from common.contract import BATCH_DIM, IMAGE_SHAPE, INPUT_NAME, NUM_CLASSES, OUTPUTS
from common.text import first_line
from export import ExportError

DEFAULT_OPSET = 17  # onnxruntime >= 1.14 and OpenCV's DNN importer both run it
# 14: the oldest at which shape inference carries the batch dim through every registered model (at 13 it
# loses it in adaptive's reshape); 20: the newest the TorchScript exporter writes.
OPSETS = range(14, 21)


class ServableModel(nn.Module):
    """``model`` behind the training pipeline's preprocessing, taking (N, 32, 32, 3) uint8 RGB.

    The ops are those of ``training.data.DeviceLoader.prepare`` in the same order (permute, float,
    /255, -mean, /std), so the graph computes what the model saw in training, bit for bit.
    """

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).float().div(255)
        x = (x - self.mean) / self.std
        logits = self.model(x)
        return logits, logits.softmax(dim=1)


def export_graph(model: nn.Module, mean, std, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``model`` (eval mode) with its preprocessing into an ONNX model with a dynamic batch."""
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported: choose {OPSETS.start}..{OPSETS.stop - 1}")
    servable = ServableModel(model, mean, std).eval()
    example = torch.zeros((2, *IMAGE_SHAPE), dtype=torch.uint8)  # batch 2: a batch of 1 can get folded
    buffer = io.BytesIO()
    dynamic = {name: {0: BATCH_DIM} for name in (INPUT_NAME, *OUTPUTS)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy TorchScript exporter"
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(servable, (example,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUTS),
                              dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True,
                              training=torch.onnx.TrainingMode.EVAL, dynamo=False)
    except Exception as exc:  # the exporter raises many types (ValueError, RuntimeError, its own errors)
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {first_line(exc)}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "cifar10-classifier export.onnx"
    proto.doc_string = (f"CIFAR-10 classifier. Input '{INPUT_NAME}': uint8 RGB [{BATCH_DIM}, 32, 32, 3], "
                        f"normalization inside. Outputs '{OUTPUTS[0]}' and '{OUTPUTS[1]}': float32 [{BATCH_DIM}, "
                        f"{NUM_CLASSES}]; class names, provenance and parity figures in metadata_props.")
    return proto


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
