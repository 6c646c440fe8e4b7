"""Test-time augmentation: a model's logits averaged over fixed views of each (normalized) image.

Modes, after airbench's ``infer`` (``tta_level`` 0, 1, 2 in github.com/KellerJordan/cifar10-airbench):

- ``none``: the model alone.
- ``flip``: the image and its horizontal mirror, weights 1/2 each.
- ``flip_translate``: six views. The image and its mirror (1/4 each), and the image translated by one
  pixel down-and-right and by one pixel up-and-left, each with its mirror (1/8 each). airbench makes
  the translations by reflect-padding the normalized batch by one pixel (``F.pad(x, (1,) * 4,
  "reflect")``) and cropping the 32x32 windows at (0, 0) and (2, 2), i.e. the row/column that moves
  in at the border is the reflection of its neighbour (row 1 at the top, row H-2 at the bottom), not
  zeros. We build exactly those windows from slices and a concatenation of the input (no Pad op):
  the same numbers, and ops that every ONNX runtime we test (onnxruntime, OpenCV's DNN) runs.

The views are stacked along the batch and go through the model in one call, so an exported graph
holds the model once (7 convs, not 42, for ``whitened_vgg_fast``; onnxruntime runs both forms at the
same speed); the logits are then weighted and summed. Probabilities are the softmax of the
averaged logits (as in airbench, which averages logits).

    >>> tta_model = TTA(model, "flip_translate")     # or with_tta(model, mode): the model itself for "none"
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import NUM_CLASSES

TTA_MODES = ("none", "flip", "flip_translate")


def check_tta(mode: str, name: str = "TTA mode") -> str:
    """``mode`` if it is one of TTA_MODES, else ValueError naming ``name`` (a flag, for a CLI's message)."""
    if mode not in TTA_MODES:
        raise ValueError(f"{name} must be one of {', '.join(TTA_MODES)}, not {mode!r}")
    return mode


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal mirror of an NCHW batch."""
    return x.flip(-1)


def shift_down_right(x: torch.Tensor) -> torch.Tensor:
    """airbench's window (0, 0) of the 1-pixel reflect-padded image: out[i, j] = x[i - 1, j - 1], reflected."""
    x = torch.cat([x[:, :, 1:2], x[:, :, :-1]], dim=2)
    return torch.cat([x[:, :, :, 1:2], x[:, :, :, :-1]], dim=3)


def shift_up_left(x: torch.Tensor) -> torch.Tensor:
    """airbench's window (2, 2) of the 1-pixel reflect-padded image: out[i, j] = x[i + 1, j + 1], reflected."""
    x = torch.cat([x[:, :, 1:], x[:, :, -2:-1]], dim=2)
    return torch.cat([x[:, :, :, 1:], x[:, :, :, -2:-1]], dim=3)


def views(x: torch.Tensor, mode: str) -> tuple[list[torch.Tensor], list[float]]:
    """The augmented batches of ``mode`` and their weights (which sum to 1)."""
    check_tta(mode)
    if mode == "none":
        return [x], [1.0]
    if mode == "flip":
        return [x, hflip(x)], [0.5, 0.5]
    down, up = shift_down_right(x), shift_up_left(x)
    return [x, hflip(x), down, hflip(down), up, hflip(up)], [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]


class TTA(nn.Module):
    """``model`` with its logits averaged over the views of ``mode`` (see the module docstring).

    Holds ``model`` as a submodule named ``model``; its state dict keys gain the prefix ``model.``.
    """

    def __init__(self, model: nn.Module, mode: str, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.model = model
        self.mode = check_tta(mode)
        self.num_classes = num_classes
        _, weights = views(torch.zeros(1, 3, 4, 4), mode)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return self.model(x)
        batches, _ = views(x, self.mode)
        logits = self.model(torch.cat(batches))
        # (views, batch, classes) with the batch taken from the input's shape, not -1: ONNX shape
        # inference then still finds the outputs' [batch, 10] (export.graph.check_graph requires it).
        logits = logits.reshape(len(batches), x.shape[0], self.num_classes)
        return (logits * self.weights.to(logits.dtype)).sum(0)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """``model`` itself for ``none`` (nothing changes), else ``TTA(model, mode)`` in the model's train/eval mode."""
    if check_tta(mode) == "none":
        return model
    return TTA(model, mode).train(model.training)
