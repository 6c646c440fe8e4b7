"""airbench-style networks: a frozen 2x2 patch-whitening conv in front of three VGG-like conv groups.

Sources: Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU" (arXiv 2404.00498) and its
code, github.com/KellerJordan/cifar10-airbench (``legacy/airbench94.py``, ``legacy/airbench95.py``,
``legacy/airbench96.py``, ``airbench96_faster.py``, ``airbench94_muon.py``), which builds on
tysam-code's hlb-CIFAR10 (github.com/tysam-code/hlb-CIFAR10) and, through it, on David Page's "How to
train your ResNet" (myrtle.ai). Written from the method, no code copied. Registered as seed "airbench"
(no seed document; ``model_info(name).seed``).

Network (both models; ``WhitenedVGG`` takes every value below as a keyword argument):
- whitening: Conv2d(3 -> 24, 2x2, no padding, bias), 32x32 -> 31x31. Its 24 filters are the 12
  eigenvectors of the second-moment matrix of the 12-value 2x2 patches of training images, each
  divided by sqrt(eigenvalue + 5e-4), strongest first, followed by their 12 negatives; set by
  ``init_whitening(images)`` and frozen (``requires_grad`` False from construction on). Its bias is
  trainable: ``whitening_bias``, which airbench trains for the first 3 epochs only. Then the activation.
- three conv groups, each conv3x3 -> maxpool 2 -> BN -> act -> conv3x3 -> BN -> act (31 -> 15 -> 7
  -> 3); with ``depth=3`` a third conv3x3 -> BN follows and its output is added to the group's first
  activation before the last act (airbench96's residual). 3x3 convs have no bias, padding 1, and their
  first c_in filters start as the identity (dirac), the rest PyTorch's default init (as airbench).
- BatchNorm as in airbench: eps 1e-12, scale (weight) frozen at 1, only the shift trains. Momentum:
  airbench94's "batchnorm_momentum 0.6" is PyTorch momentum 0.4 (``bn_momentum=0.4``, fast);
  airbench96 uses PyTorch's default 0.1 (best).
- head: global max pool (airbench: MaxPool2d(3) over the 3x3 map, the same thing at 32x32), Linear(c ->
  10, no bias), times the fixed output scale 1/9.

Models:
- ``whitened_vgg_fast`` = airbench94: widths 64/256/256, 2 convs per group. 1,972,792 parameters, of
  which 1,971,352 trainable (``count_parameters``; frozen: the 288 whitening weights and the 1,152 BN
  scales); 118 M multiply-adds per image; 7.5 MiB of fp32 state.
- ``whitened_vgg_best``: airbench96's group (3 convs with the residual, BN momentum 0.1) at widths
  128/256/256. 3,573,304 parameters, 3,571,096 trainable; 257 M multiply-adds; 13.6 MiB of fp32
  state. airbench96's own widths 128/384/512 make 9.9 M parameters, 38 MiB of fp32 weights, over this
  project's 16 MiB limit per weights file (airbench95's 128/384/384 at 2 convs: 4.6 M, 17.6 MiB, also
  over); 128/256/256 is the widest airbench96-shaped network under it. ``create_model(
  "whitened_vgg_best", widths=(128, 384, 512))`` builds the original for experiments.

API for the trainer: ``init_whitening(images)`` once before training (normalized float NCHW training
images, airbench uses the first 5,000; deterministic for the same input); ``whitening_bias`` (toggle its
``requires_grad``; with set_to_none zero_grad the optimizer then skips it). The BatchNorm shifts that
airbench trains at 64x the LR are grouped by ``training.engine.parameter_groups``, as for every model.

Activation (``activation=``: gelu, gelu_tanh, relu, silu). Training speed on this project's CPU (AMD
EPYC, Zen 4, AVX512-BF16, no AMX; torch 2.13.0+cpu, 1 thread, batch 256, channels_last, forward +
loss + backward + SGD-Nesterov step, median of 5 interleaved repetitions; ``python
benchmarks/activation_bf16.py``, figures in ``benchmarks/results/activation_bf16_cpu.json``):

| images/s | fast fp32 | fast bf16 | best fp32 | best bf16 |
| --- | ---: | ---: | ---: | ---: |
| gelu | 138.1 | 269.6 | 66.4 | 126.7 |
| gelu_tanh | 132.4 | 260.7 | 65.1 | 121.0 |
| relu | 143.5 | 280.8 | 67.4 | 130.5 |
| silu | 145.5 | 279.3 | 67.0 | 127.9 |

bf16 autocast is 1.9-2.0x fp32 for every activation, GELU included: in these networks GELU does not
train slower in bf16 than in fp32. Between activations the spread is at most 4% (single samples vary
by about as much). The default is **SiLU**: in bf16 as fast as ReLU on ``fast`` (-0.5%) and 2% behind
it on ``best``, 3.6% / 0.9% ahead of GELU. ReLU, the fastest, is not the default for an accuracy
reason: this lineage moved from ReLU to smooth activations (hlb-CIFAR10 began with CELU and changed
to GELU; airbench kept GELU in every record), and with frozen BN scales and a 64x BN-bias LR a unit
whose shift goes negative gets no gradient through ReLU. SiLU is smooth and GELU-shaped (tinygrad's
hlb-CIFAR10 port swapped GELU for the sigmoid form x * sigmoid(1.702 x) at the same accuracy). The
accuracy of SiLU against GELU under airbench's schedule is not measured here; ``activation="gelu"``
is airbench's choice.

Departures from airbench, all of them:
- activation default SiLU instead of GELU (above); ``whitened_vgg_best``'s widths (above).
- Weights stay fp32 (airbench casts the network except BN to fp16); the trainer's bf16 autocast
  replaces that.
- Whitening statistics are accumulated in float64 over chunks of 500 images (airbench: one float32
  matmul over all patches), and each eigenvector's sign is fixed (largest-magnitude entry positive;
  airbench takes eigh's signs as they come), so the filters are the same on every device and LAPACK.
  Like airbench (unlike hlb-CIFAR10's centred ``torch.cov``, eps 1e-2, 50,000 images) the matrix is
  the uncentred second moment and eps is 5e-4.
- Global max pool instead of MaxPool2d(3) and padding 1 instead of "same": identical results at 32x32.
- The whitening bias starts at zero (airbench's Conv zeroes it too) and its weight, until
  ``init_whitening`` runs, is PyTorch's default init (airbench: dirac on its first 3 filters); an
  un-whitened model is only meant for shape checks and export tests.
- airbench94_muon's later changes (head weight rescaled to unit std, division by the width instead of
  1/9, Muon optimizer) are not taken: the model follows the paper's airbench94/96.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models import NUM_CLASSES, register_model

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {name!r}") from None


def _batch_norm(channels: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    """BatchNorm with the scale frozen at 1 (only the shift trains), as in airbench."""
    bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    """3x3 conv, no bias; its first ``cin`` filters start as the identity (airbench's partial dirac init)."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(cin, cout)])
    return conv


class ConvGroup(nn.Module):
    """conv -> maxpool 2 -> BN -> act, then ``depth - 1`` more conv -> BN -> act.

    With ``depth == 3`` the last two convs form a residual branch added before the last activation
    (airbench96); ``depth == 2`` is airbench94's plain group.
    """

    def __init__(self, cin: int, cout: int, depth: int, activation: str, bn_momentum: float, bn_eps: float):
        super().__init__()
        if depth not in (2, 3):
            raise ValueError(f"convs per group must be 2 or 3, not {depth}")
        self.residual = depth == 3
        self.conv1 = _conv3x3(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batch_norm(cout, bn_momentum, bn_eps)
        self.convs = nn.ModuleList(_conv3x3(cout, cout) for _ in range(depth - 1))
        self.norms = nn.ModuleList(_batch_norm(cout, bn_momentum, bn_eps) for _ in range(depth - 1))
        self.act = _activation(activation)
        self.norm_before_pool = False  # set by WhitenedVGG.folded_for_inference: same output, BN foldable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_before_pool:
            x = self.act(self.pool(self.norm1(self.conv1(x))))
        else:
            x = self.act(self.norm1(self.pool(self.conv1(x))))
        shortcut = x
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x))
            if self.residual and i == last:
                x = x + shortcut
            x = self.act(x)
        return x


class WhitenedVGG(nn.Module):
    """Frozen 2x2 patch-whitening conv, three conv groups, global max pool, bias-free linear head.

    ``init_whitening(images)`` must run once before training (it sets and freezes the whitening
    weights); ``whitening_bias`` is the parameter airbench trains only during the first epochs.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (64, 256, 256), depth: int = 2,
                 activation: str = "silu", bn_momentum: float = 0.4, bn_eps: float = 1e-12,
                 whitening_kernel: int = 2, whitening_eps: float = 5e-4, output_scale: float = 1 / 9):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must give three conv groups, not {widths!r}")
        _activation(activation)  # fail early on an unknown name
        patch = 3 * whitening_kernel**2
        self.whitening_eps = whitening_eps
        self.output_scale = output_scale
        self.whiten = nn.Conv2d(3, 2 * patch, whitening_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from data by init_whitening, never trained
        with torch.no_grad():
            self.whiten.bias.zero_()
        self.whiten_act = _activation(activation)
        groups, cin = [], 2 * patch
        for width in widths:
            groups.append(ConvGroup(cin, width, depth, activation, bn_momentum, bn_eps))
            cin = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(cin, num_classes, bias=False)

    @property
    def whitening_bias(self) -> nn.Parameter:
        """The whitening conv's bias: trainable; airbench trains it only for the first 3 epochs."""
        return self.whiten.bias

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the whitening filters from ``images`` (normalized float NCHW training images) and freeze them.

        With C the second-moment matrix of all k x k patches (3k^2 values each) and C = V diag(l) V^T,
        the filters are the rows of diag(l + eps)^-1/2 V^T, strongest first, followed by their
        negatives: the first half of the outputs has (almost) identity covariance on these patches.
        Deterministic: float64 accumulation, and each eigenvector's sign fixed so that its
        largest-magnitude entry is positive.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"init_whitening needs (N, 3, H, W) images, got {tuple(images.shape)}")
        weight = self.whiten.weight
        k = weight.shape[-1]
        dim = 3 * k * k
        moment = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
        count = 0
        for chunk in images.detach().float().split(500):
            patches = F.unfold(chunk, k).transpose(1, 2).reshape(-1, dim).double()  # (c, kh, kw) order
            moment += patches.T @ patches
            count += len(patches)
        moment /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        largest = eigenvectors.abs().argmax(0)
        eigenvectors = eigenvectors * eigenvectors[largest, torch.arange(dim, device=largest.device)].sign()
        filters = eigenvectors.T / (eigenvalues.clamp_min(0) + self.whitening_eps).sqrt().unsqueeze(1)
        filters = filters.reshape(dim, 3, k, k).to(device=weight.device, dtype=weight.dtype)
        weight.copy_(torch.cat([filters, -filters]))
        weight.requires_grad_(False)

    @torch.no_grad()
    def folded_for_inference(self, mean, std) -> WhitenedVGG:
        """An eval-mode copy that computes the same logits from raw pixels (float 0-255, NCHW), in fewer ops.

        For the served graph (export.graph), where every op costs time on one image: the input normalization
        ``(x / 255 - mean) / std`` goes into the whitening conv (its padding is 0, so every output sees only
        real pixels); each group's first BatchNorm moves in front of its max pool, where the exporter folds
        it into the conv (a per-channel affine map with a positive scale commutes with max; a group with a
        scale <= 0 keeps its order); the output scale goes into the head's weights. The parity check
        compares the file with the model as trained, so the rewrite is measured on every export.
        """
        folded = copy.deepcopy(self).eval()
        column = functools.partial(torch.as_tensor, dtype=torch.float32, device=self.whiten.weight.device)
        mean, std = column(mean).view(1, 3, 1, 1), column(std).view(1, 3, 1, 1)
        weight = folded.whiten.weight
        folded.whiten.bias -= (weight * (mean / std)).sum((1, 2, 3))
        weight.mul_(1 / (255 * std))
        for group in folded.groups:
            norm = group.norm1
            group.norm_before_pool = bool((norm.weight / (norm.running_var + norm.eps).sqrt() > 0).all())
        folded.head.weight.mul_(self.output_scale)
        folded.output_scale = 1.0
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.whiten_act(self.whiten(x))
        x = self.head(self.flatten(self.pool(self.groups(x))))
        return x if self.output_scale == 1 else x * self.output_scale


FAST = dict(widths=(64, 256, 256), depth=2, bn_momentum=0.4)
BEST = dict(widths=(128, 256, 256), depth=3, bn_momentum=0.1)


@register_model("whitened_vgg_fast", seed="airbench",
                summary="airbench94: 2x2 whitening, 3 conv groups 64/256/256, max-pool head")
def whitened_vgg_fast(**kwargs) -> WhitenedVGG:
    return WhitenedVGG(**{**FAST, **kwargs})


@register_model("whitened_vgg_best", seed="airbench",
                summary="airbench96 groups (3 convs, residual) at 128/256/256")
def whitened_vgg_best(**kwargs) -> WhitenedVGG:
    return WhitenedVGG(**{**BEST, **kwargs})
