"""The model's description, stored in ONNX ``metadata_props`` so that the .onnx file is self-contained.

Keys (all values are strings, as ONNX requires): ``classes`` (JSON list, canonical order), ``arch``,
``source_checkpoint_sha256``, ``test_accuracy`` (decimal, "" if unknown), ``opset``, ``parity`` (JSON
report), ``mean`` and ``std`` (JSON lists, [0, 1] units, RGB), ``epochs`` (epochs trained),
``input_format``, ``exported_at``, ``torch_version``, ``tta`` (only in a graph with test-time
augmentation inside: ``flip`` or ``flip_translate``; absent means none), and for int8 files
``quantization`` (JSON: its accuracy and speed against the fp32 model, whose ``parity`` report and
other keys it carries over).

Reading needs only onnxruntime, which is what the service has.
"""

from __future__ import annotations

import json
import os

import onnx

JSON_KEYS = ("classes", "parity", "mean", "std", "quantization")
INPUT_FORMAT = "uint8 RGB, [batch, 32, 32, 3] (channels last, as decoded by Pillow); normalization is in the graph"


def build_metadata(ckpt: dict, *, sha256: str, opset: int, parity: dict, exported_at: str,
                   torch_version: str, tta: str = "none") -> dict[str, str]:
    """Every key the serving side relies on, as strings, from a checkpoint dict and export facts."""
    accuracy = ckpt.get("test_accuracy")
    props = {
        "classes": json.dumps(list(ckpt["classes"])),
        "arch": str(ckpt["arch"]),
        "source_checkpoint_sha256": sha256,
        "test_accuracy": "" if accuracy is None else f"{float(accuracy):.4f}",
        "opset": str(opset),
        "parity": json.dumps(parity, sort_keys=True),
        "mean": json.dumps([float(m) for m in ckpt["mean"]]),
        "std": json.dumps([float(s) for s in ckpt["std"]]),
        "epochs": str(int(ckpt.get("epoch", 0))),
        "input_format": INPUT_FORMAT,
        "exported_at": exported_at,
        "torch_version": torch_version,
    }
    if tta != "none":
        props["tta"] = tta
    return props


def set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the model's metadata_props with ``props`` (string keys and values)."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in props.items()})


def read_metadata(path: str | os.PathLike) -> dict:
    """An exported file's metadata with the JSON keys decoded (via onnxruntime, no onnx needed)."""
    import onnxruntime as ort

    raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    return decode(raw)


def decode(raw: dict[str, str]) -> dict:
    """String metadata -> values: JSON keys parsed, ``test_accuracy`` a float or None."""
    meta: dict = dict(raw)
    for key in JSON_KEYS:
        if key in meta:
            meta[key] = json.loads(meta[key])
    if "test_accuracy" in meta:
        meta["test_accuracy"] = float(meta["test_accuracy"]) if meta["test_accuracy"] else None
    return meta
