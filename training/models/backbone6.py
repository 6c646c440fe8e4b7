"""Seed 004 (``004_168b31f191650609.txt``): ``cifar10_backbone``, six Cifar_Blocks.

Each Cifar_Block is three conv + BN + ReLU layers followed by a max-pool "if one is given"; blocks
have increasing output channels, the first takes 3 (RGB) and the last gives 512. Then global average
pooling, Linear 512->128 + ReLU + Dropout, Linear 128->10.

Ambiguities and choices:
- Channel widths are not given except the last (512). Three 3x3 convs that all output 512 channels
  alone hold 2 x 512 x 512 x 9 = 4.7M weights, i.e. more than 16 MiB in fp32; the document does not
  say each conv of a block outputs the block's width, so every block is conv(in->mid), conv(mid->mid),
  conv(mid->out) with mid = out, except the last block where mid = 192 and only its third conv widens
  to 512. Widths 32, 64, 96, 128, 192, 512 (strictly increasing, as the text says). 3,242,986
  parameters, 12.4 MiB of fp32 weights.
- Kernel size 3x3, padding 1, conv bias off (BN follows).
- Max-pool (2x2) after blocks 2, 4 and 5: 32 -> 16 -> 8 -> 4 spatial; blocks 1, 3, 6 keep size.
- "Each Cifar_Block's output is concatenated": read as the blocks being chained (the next paragraph
  says the output of one block is the input of the next); no skip concatenation.
- Dropout before the last Linear: 0.2 (not given). "softmax activation" at the end: the model
  returns logits, softmax is inside cross-entropy (the seed's loss is F.cross_entropy) and inside
  the exported ONNX graph's ``probabilities`` output.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import NUM_CLASSES, register_model

# (in, mid, out, pool) per block; see the module docstring for why block 6 narrows its middle.
DEFAULT_BLOCKS: tuple[tuple[int, int, int, bool], ...] = (
    (3, 32, 32, False),
    (32, 64, 64, True),
    (64, 96, 96, False),
    (96, 128, 128, True),
    (128, 192, 192, True),
    (192, 192, 512, False),
)


class CifarBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, pool: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in ((cin, mid), (mid, mid), (mid, cout)):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_model("backbone6", seed="004", summary="six 3-conv Cifar_Blocks to 512 ch, GAP, fc 128")
class Backbone6(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2,
                 blocks: tuple[tuple[int, int, int, bool], ...] = DEFAULT_BLOCKS):
        super().__init__()
        self.features = nn.Sequential(*(CifarBlock(*spec) for spec in blocks))
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(blocks[-1][2], 128), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
