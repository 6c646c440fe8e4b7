"""Seed 001 (``001_22ca5388991f995e.txt``): strided CNN with depthwise-separable blocks.

The layer list is reproduced in order: six plain 3x3 conv + BN + ReLU layers (16, 32, 64, 64, 64,
96 channels; the 2nd and 6th with stride 2), dropout 0.05 after each except the fifth, then four
depthwise-separable blocks (3x3 depthwise + 1x1 pointwise + BN + ReLU; the 3rd with stride 2; the
last one depthwise only), global average pooling and a 1x1 conv head to 10 classes.

Where the document is ambiguous or inconsistent, and what was chosen:
- Padding of the depthwise convs (layers 24, 30, 36, 42). The document says padding 0, but at 32x32
  input the spatial size then runs 8 -> 6 -> 4 -> 1, and the last 3x3 conv cannot run on a 1x1 map.
  We use padding 1 on every depthwise conv (8 -> 8 -> 8 -> 4 -> 4), the smallest change that runs.
- Layers 24/30/36/42 are "3x3, 96->96" / "128->128" convs that the document itself calls the
  depthwise half of separable convolutions; a full 3x3 conv there would add ~520k parameters. We use
  depthwise convs (groups = channels), as the text says.
- Parameter count. The document states 154,544 trainable parameters; its layer list as written adds
  up to more. With conv bias off before BN (the bias is redundant with BN's shift) this module has
  204,858: the six plain convs with their BNs and the head alone are 154,458 (within 86 of the stated
  figure), so the stated total most likely left out the depthwise-separable section (50,400). We keep
  that section because the text describes it in detail; ``width`` scales every layer if a smaller
  model is wanted.
- Dropout: 0.05 where the list shows a Dropout layer (not after conv 5, nor after the last block).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import NUM_CLASSES, register_model


def _conv_bn_relu(cin: int, cout: int, stride: int, dropout: float | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _separable(cin: int, cout: int | None, stride: int, dropout: float | None) -> nn.Sequential:
    """Depthwise 3x3 (+ pointwise 1x1 when ``cout`` is given) + BN + ReLU (+ dropout)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)]
    if cout is not None:
        layers.append(nn.Conv2d(cin, cout, 1, bias=False))
    out = cout if cout is not None else cin
    layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@register_model("dwsep", seed="001", summary="strided CNN + depthwise-separable blocks, dropout 0.05")
class DepthwiseSeparableNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.05, width: float = 1.0):
        super().__init__()

        def c(n: int) -> int:
            return max(1, round(n * width))

        d = dropout
        self.features = nn.Sequential(
            _conv_bn_relu(3, c(16), 1, d),          # Conv2d-1 .. Dropout-4
            _conv_bn_relu(c(16), c(32), 2, d),      # Conv2d-5 .. Dropout-8    (16x16)
            _conv_bn_relu(c(32), c(64), 1, d),      # Conv2d-9 .. Dropout-12
            _conv_bn_relu(c(64), c(64), 1, d),      # Conv2d-13 .. Dropout-16
            _conv_bn_relu(c(64), c(64), 1, None),   # Conv2d-17 .. ReLU-19
            _conv_bn_relu(c(64), c(96), 2, d),      # Conv2d-20 .. Dropout-23  (8x8)
            _separable(c(96), c(128), 1, d),        # Conv2d-24/25 .. Dropout-28
            _separable(c(128), c(128), 1, d),       # Conv2d-30/31 .. Dropout-34
            _separable(c(128), c(128), 2, d),       # Conv2d-36/37 .. Dropout-40 (4x4)
            _separable(c(128), None, 1, None),      # Conv2d-42 .. ReLU-44
        )
        self.pool = nn.AdaptiveAvgPool2d(1)         # AdaptiveAvgPool2d-45
        self.head = nn.Conv2d(c(128), num_classes, 1)  # Conv2d-46
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.head(self.pool(self.features(x))))
