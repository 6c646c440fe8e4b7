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

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models import NUM_CLASSES, register_model


class AdaptiveConv2d(nn.Module):
    """Softmax-weighted mixture of ``num_kernels`` 3x3 convolutions, weights per sample and output channel.

    Two forms of the same function (tested equal to float tolerance):
    - *mixed kernels* (CondConv's form): mix the K kernels per sample first, then run one grouped
      convolution with one group per sample: a quarter of the convolution work for K = 4.
    - *mixed outputs*: run the K convolutions, then mix their outputs.
    Training uses mixed kernels on feature maps of 16x16 and larger, where it measured 2.5-4x faster
    (bf16, channels_last, 1 thread, batch 64), and mixed outputs on the 8x8 maps, where oneDNN's
    grouped convolution of 256 channels per group was 2.2x *slower* than the four plain ones. The
    ONNX export always traces mixed outputs: an ONNX Conv's group count is a fixed attribute, so one
    group per sample cannot follow a dynamic batch; that form is written with channel slices and
    no reshape that depends on the batch (OpenCV 5.0's importer still fails on the gate's pooling).
    """

    def __init__(self, channels: int, num_kernels: int = 4):
        super().__init__()
        self.num_kernels = num_kernels
        self.channels = channels
        # All K candidate kernels in one conv: output channel k * channels + c is kernel k of channel c.
        self.convs = nn.Conv2d(channels, channels * num_kernels, 3, padding=1, bias=False)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, channels * num_kernels)
        )

    def mixing_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """K tensors (N, C): per sample and output channel, a softmax over the K kernels.

        Written as 2-D elementwise ops over channel slices: no reshape that depends on the batch.
        """
        logits = self.gate(x)
        c = self.channels
        parts = [logits[:, k * c:(k + 1) * c] for k in range(self.num_kernels)]
        peak = functools.reduce(torch.maximum, parts)
        exps = [(part - peak).exp() for part in parts]
        total = sum(exps)
        return [e / total for e in exps]

    def forward_mixed_outputs(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.mixing_weights(x)
        candidates = self.convs(x)
        c = self.channels
        return sum(w[:, :, None, None] * candidates[:, k * c:(k + 1) * c] for k, w in enumerate(weights))

    def forward_mixed_kernels(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weights = torch.stack(self.mixing_weights(x), dim=1)                   # (N, K, C_out)
        kernels = self.convs.weight.view(self.num_kernels, c, c, 3, 3)         # (K, C_out, C_in, 3, 3)
        per_sample = torch.einsum("nko,koiyx->noiyx", weights.to(kernels.dtype), kernels)
        out = F.conv2d(x.reshape(1, b * c, h, w), per_sample.reshape(b * c, c, 3, 3), padding=1, groups=b)
        return out.view(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or x.shape[-1] < 16:
            return self.forward_mixed_outputs(x)
        return self.forward_mixed_kernels(x)


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
