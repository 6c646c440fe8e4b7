"""Seed 002 (``002_efd34f304ead9883.txt``): a model developed in three stages.

- ``staged_baseline``: "a simple CNN as our baseline": two conv + ReLU + max-pool layers (32, 64
  channels) and a two-layer classifier.
- ``staged_attention``: "additional convolutional layers and ... attention mechanisms", "blocks and
  layers": three blocks of two 3x3 convs (64, 128, 256 channels) followed by squeeze-and-excitation
  channel attention, then max-pool.
- ``staged_advanced``: stage 3 adds "batch normalization, dropout" (and the training techniques in
  its recipe: augmentation, LR scheduler) to the stage-2 architecture.

The seed gives no layer sizes at all; every width above is our choice. Ambiguities and choices:
- Attention mechanism: the seed says "attention mechanisms" without naming one. We use
  squeeze-and-excitation (reduction 16): cheap, exports to ONNX with plain ops, well studied.
- Stage 2 has no BN or dropout, because the seed introduces them only in stage 3.
- Dropout in stage 3: 0.1 after each block, 0.3 before the classifier.
Parameter counts: baseline 545,098; attention 1,159,722; advanced 1,160,618.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import NUM_CLASSES, register_model


@register_model("staged_baseline", seed="002", summary="stage 1: simple two-conv CNN")
class StagedBaseline(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SqueezeExcite(nn.Module):
    """Channel attention: rescale each channel by a gate computed from its global average."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def _attention_block(cin: int, cout: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(2):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    layers += [SqueezeExcite(cout), nn.MaxPool2d(2)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _StagedAttentionNet(nn.Module):
    def __init__(self, num_classes: int, widths: tuple[int, ...], batch_norm: bool,
                 dropout: float, head_dropout: float):
        super().__init__()
        blocks, cin = [], 3
        for w in widths:
            blocks.append(_attention_block(cin, w, batch_norm, dropout))
            cin = w
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if head_dropout:
            head.append(nn.Dropout(head_dropout))
        head.append(nn.Linear(cin, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("staged_attention", seed="002", summary="stage 2: conv blocks + squeeze-excitation")
class StagedAttention(_StagedAttentionNet):
    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (64, 128, 256)):
        super().__init__(num_classes, widths, batch_norm=False, dropout=0.0, head_dropout=0.0)


@register_model("staged_advanced", seed="002", summary="stage 3: stage 2 + batch norm + dropout")
class StagedAdvanced(_StagedAttentionNet):
    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (64, 128, 256),
                 dropout: float = 0.1, head_dropout: float = 0.3):
        super().__init__(num_classes, widths, batch_norm=True, dropout=dropout, head_dropout=head_dropout)
