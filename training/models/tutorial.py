"""Seed 003 (``003_b639f5170cbf77cc.txt``): the PyTorch CIFAR-10 tutorial CNN and its improvements.

``tutorial`` is the official tutorial network: conv(3->6, 5x5) -> pool -> conv(6->16, 5x5) ->
pool -> fc 400->120 -> fc 120->84 -> fc 84->10, ReLU between. 62,006 parameters.

``tutorial_plus`` applies the seed's "Improvements" list. Ambiguities and choices:
- "Add more convolutional layers and use Batch Normalization": the seed gives no layer list. We use
  three VGG-style stages of two 3x3 conv + BN + ReLU each (32, 64, 128 channels), each stage ending
  in 2x2 max-pool, so the network stays small (the tutorial's spirit) but is deep enough for 80%+.
- "incorporating dropout": dropout 0.25 after each pooled stage and 0.5 before the last layer, the
  usual Keras/PyTorch CIFAR example values; the seed gives none.
- The classifier keeps the tutorial's shape (flatten -> fc -> fc 10) with one hidden layer of 256.
Parameter count: 814,570.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import NUM_CLASSES, register_model


@register_model("tutorial", seed="003", summary="PyTorch tutorial CNN (conv 6, conv 16, fc 120, 84)")
class TutorialNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("tutorial_plus", seed="003", summary="tutorial CNN improved: 6 conv+BN layers, dropout")
class TutorialPlusNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (32, 64, 128),
                 dropout: float = 0.25, head_dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += _conv_bn_relu(cin, w) + _conv_bn_relu(w, w)
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
            cin = w
        self.features = nn.Sequential(*layers)
        side = 32 // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, 256), nn.ReLU(inplace=True), nn.Dropout(head_dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
