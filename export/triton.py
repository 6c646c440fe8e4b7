"""``--triton-repo DIR``: the exported file as a Triton Inference Server / KServe model repository entry.

Layout (Triton's, which KServe's Triton runtime also reads from a storage URI)::

    DIR/<name>/config.pbtxt      onnxruntime backend, max batch size, dynamic batching
    DIR/<name>/labels.txt        class names, one per line, in output order
    DIR/<name>/1/model.onnx      the same bytes as the verified .onnx file

The config's inputs and outputs are read from the ONNX file, not restated, so they cannot drift from
the graph. Nothing here runs Triton; the config is plain text in Triton's protobuf text format.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import onnx

from common.contract import PROBABILITIES, MetadataKey
from common.files import write_bytes
from export import ExportError

# ONNX element type -> Triton data type, for the types an exported model can have at its edges.
TRITON_TYPES = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
}
LABELS_FILE = "labels.txt"
LABELLED_OUTPUT = PROBABILITIES  # Triton's classification extension reads labels for this output
MAX_QUEUE_DELAY_US = 2000  # a request waits at most 2 ms for others to batch with


def model_name(onnx_path: str | os.PathLike) -> str:
    """Triton model name from the file name: ``weights/dwsep.onnx`` -> ``dwsep``."""
    name = Path(onnx_path).name.removesuffix(".onnx")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _tensor_config(value: onnx.ValueInfoProto, labelled: bool) -> str:
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_TYPES:
        raise ExportError(f"tensor '{value.name}' has an element type Triton config does not map")
    dims = [d.dim_value for d in tensor.shape.dim[1:]]  # the first dim is the batch, implied by max_batch_size
    if not dims or any(d <= 0 for d in dims):
        raise ExportError(f"tensor '{value.name}' needs fixed non-batch dims for Triton")
    lines = [f'    name: "{value.name}"', f"    data_type: {TRITON_TYPES[tensor.elem_type]}",
             f"    dims: [ {', '.join(map(str, dims))} ]"]
    if labelled:
        lines.append(f'    label_filename: "{LABELS_FILE}"')
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(proto: onnx.ModelProto, name: str, max_batch_size: int) -> str:
    """config.pbtxt text for ``proto`` served by Triton's onnxruntime backend."""
    if max_batch_size < 1:
        raise ExportError("--triton-max-batch must be at least 1")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    preferred = [b for b in (16, 32, 64, 128) if b <= max_batch_size] or [max_batch_size]
    return "\n".join([
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor_config(i, False) for i in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_config(o, o.name == LABELLED_OUTPUT) for o in proto.graph.output) + "\n]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        "}",
        "version_policy: { latest: { num_versions: 1 } }",
        "",
    ])


def write_triton_repository(repo: str | os.PathLike, onnx_path: str | os.PathLike, *,
                            max_batch_size: int = 256, name: str | None = None) -> Path:
    """Write (or replace) ``repo/<name>/`` for the exported ``onnx_path``; return that folder."""
    raw = Path(onnx_path).read_bytes()
    proto = onnx.load_from_string(raw)
    meta = {p.key: p.value for p in proto.metadata_props}
    if MetadataKey.CLASSES not in meta:
        raise ExportError(f"{onnx_path} has no 'classes' metadata; export it with python -m export.onnx")
    name = name or model_name(onnx_path)
    folder = Path(repo) / name
    config = triton_config(proto, name, max_batch_size)
    write_bytes(folder / "1" / "model.onnx", raw)
    write_bytes(folder / LABELS_FILE, ("\n".join(json.loads(meta[MetadataKey.CLASSES])) + "\n").encode())
    write_bytes(folder / "config.pbtxt", config.encode())
    return folder
