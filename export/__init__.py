"""Export trained checkpoints to self-describing ONNX models, with verified parity, and package them.

Commands:

- ``python -m export.onnx CKPT``: checkpoint -> ``weights/<arch>.onnx`` (the interface of
  ``common.contract``: uint8 NHWC ``image`` in, ``logits`` and ``probabilities`` out, preprocessing
  inside the graph, description in metadata), kept only if onnxruntime reproduces the PyTorch model;
  optional int8 variant and Triton repository.
- ``python -m export.onnx_accuracy MODEL.onnx --data PATH``: test accuracy of an exported model.
- ``python -m export.package RUN[:NAME] ...``: trained runs -> the service's ``weights/`` folder
  (slim checkpoint, ONNX file, manifest entry under NAME, published curves).

Modules, one step each: ``graph`` (build and check the graph), ``metadata`` (write and read the
description), ``parity`` (PyTorch vs onnxruntime), ``sample_images`` (which real images each step
uses), ``quantize`` (int8), ``triton`` (model repository), ``onnx_accuracy``, ``onnx`` and
``package`` (the commands). Atomic writes and one-line error messages come from ``common``.

This module holds only the exceptions, so that importing them costs nothing.
"""


class ExportError(Exception):
    """An export that cannot be done (bad input, unexportable model); the message is for the user as is."""


class ParityError(ExportError):
    """onnxruntime does not reproduce the PyTorch model closely enough; ``report`` has the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report
