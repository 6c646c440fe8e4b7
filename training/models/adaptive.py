"""Seed 000 (``000_a159e1c5c8d3411f.txt``): conv + BN + PReLU blocks with "adaptive convolution".

Each block: conv 3x3 + BN + PReLU, then an adaptive convolution whose output is added to a residual
path, then BN + PReLU. The classifier is AdaptiveAvgPool2d(1) -> Flatten -> Linear, as documented.

The seed describes the adaptive convolution in one sentence: "computes channel-wise weights using a
fully connected layer and applies the softmax function. These weights are then used for performing
adaptive convolutions." Ambiguities and choices:
- What the softmax runs over. We read it as a mixture of ``num_kernels`` parallel 3x3 convolutions
  (as in dynamic/conditional convolution): global-average-pool the input, a Linear layer produces
  ``num_kernels`` logits per output channel ("channel-wise"), softmax over the kernels, and each
  output channel is the softmax-weighted sum of the parallel convs' outputs for that channel.
  ``num_kernels`` = 4.
- Residual path: identity when shapes match, else 1x1 conv (+BN) with the block's stride.
- Depth and widths are not given: three blocks of 64, 128, 256 channels, downsampling by stride 2
  in blocks 2 and 3 (32 -> 16 -> 8), which keeps the fp32 weights under 16 MiB (14.7 MiB).
- Where the block's stride is applied: in its first conv; the adaptive conv keeps the resolution.
Parameter count: 3,860,106.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import NUM_CLASSES, register_model


class AdaptiveConv2d(nn.Module):
    """Softmax-weighted mixture of parallel 3x3 convolutions, weights per sample and channel."""

    def __init__(self, channels: int, num_kernels: int = 4):
        super().__init__()
        self.num_kernels = num_kernels
        self.channels = channels
        # One conv producing all K candidate outputs at once: cheaper than K separate convs.
        self.convs = nn.Conv2d(channels, channels * num_kernels, 3, padding=1, bias=False)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, channels * num_kernels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        weights = self.gate(x).view(b, self.num_kernels, self.channels, 1, 1).softmax(dim=1)
        candidates = self.convs(x).view(b, self.num_kernels, self.channels, x.shape[2], x.shape[3])
        return (weights * candidates).sum(dim=1)


class AdaptiveBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, num_kernels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )
        self.adaptive = AdaptiveConv2d(cout, num_kernels)
        if stride == 1 and cin == cout:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.out = nn.Sequential(nn.BatchNorm2d(cout), nn.PReLU(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.adaptive(self.conv(x)) + self.residual(x))


@register_model("adaptive", seed="000", summary="conv+BN+PReLU blocks with adaptive (mixture) convs")
class AdaptiveNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (64, 128, 256),
                 num_kernels: int = 4):
        super().__init__()
        blocks = []
        cin = 3
        for i, w in enumerate(widths):
            blocks.append(AdaptiveBlock(cin, w, stride=1 if i == 0 else 2, num_kernels=num_kernels))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
