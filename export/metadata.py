"""The model's description, stored in ONNX ``metadata_props`` so that the .onnx file is self-contained.

The keys are ``common.contract.MetadataKey`` (all values strings, as ONNX requires): ``classes``
(JSON list, canonical order), ``arch``, ``source_checkpoint_sha256``, ``test_accuracy`` (decimal,
"" if unknown), ``opset``, ``parity`` (JSON report), ``mean`` and ``std`` (JSON lists, [0, 1] units,
RGB), ``epochs`` (epochs trained), ``input_format``, ``exported_at``, ``torch_version``, ``tta`` (only
in a graph with test-time augmentation inside: ``flip`` or ``flip_translate``; absent means none),
and for int8 files ``quantization`` (JSON: its accuracy and speed against the fp32 model, whose
``parity`` report and other keys it carries over).

Reading needs only onnxruntime, which is what the service has.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import onnx

from common.contract import INPUT_FORMAT, JSON_METADATA_KEYS, NO_TTA, MetadataKey

if TYPE_CHECKING:  # the type only: reading metadata must not import torch
    from training.checkpoint import Checkpoint


def build_metadata(ckpt: Checkpoint, *, sha256: str, opset: int, parity: dict, exported_at: str,
                   torch_version: str, tta: str = NO_TTA) -> dict[str, str]:
    """Every key the serving side relies on, as strings, from a checkpoint and export facts."""
    accuracy = ckpt.get("test_accuracy")
    props = {
        MetadataKey.CLASSES: json.dumps(list(ckpt["classes"])),
        MetadataKey.ARCH: str(ckpt["arch"]),
        MetadataKey.SOURCE_CHECKPOINT_SHA256: sha256,
        MetadataKey.TEST_ACCURACY: "" if accuracy is None else f"{float(accuracy):.4f}",
        MetadataKey.OPSET: str(opset),
        MetadataKey.PARITY: json.dumps(parity, sort_keys=True),
        MetadataKey.MEAN: json.dumps([float(m) for m in ckpt["mean"]]),
        MetadataKey.STD: json.dumps([float(s) for s in ckpt["std"]]),
        MetadataKey.EPOCHS: str(int(ckpt.get("epoch", 0))),
        MetadataKey.INPUT_FORMAT: INPUT_FORMAT,
        MetadataKey.EXPORTED_AT: exported_at,
        MetadataKey.TORCH_VERSION: torch_version,
    }
    if tta != NO_TTA:
        props[MetadataKey.TTA] = tta
    return props


def set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the model's metadata_props with ``props`` (string keys and values)."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in props.items()})


def read_metadata(path: str | os.PathLike) -> dict:
    """An exported file's metadata with the JSON keys decoded (via onnxruntime, no onnx needed)."""
    from common.inference import cpu_session  # onnxruntime's settings for the process follow its first session

    raw = cpu_session(path).get_modelmeta().custom_metadata_map
    return decode(raw)


def decode(raw: dict[str, str]) -> dict:
    """String metadata -> values: JSON keys parsed, ``test_accuracy`` a float or None."""
    meta: dict = dict(raw)
    for key in JSON_METADATA_KEYS:
        if key in meta:
            meta[key] = json.loads(meta[key])
    accuracy = meta.get(MetadataKey.TEST_ACCURACY)
    if accuracy is not None:
        meta[MetadataKey.TEST_ACCURACY] = float(accuracy) if accuracy else None
    return meta
