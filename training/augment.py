"""Batched data augmentation: a few tensor ops over a whole batch on the training device.

Every op takes a float batch ``x`` (N, 3, H, W) with values in [0, 1] (``cutout``: normalized
values) and draws one random parameter per image from the global torch RNG of ``x``'s device, so
a resumed run that restores the RNG state replays the same augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """What a recipe documents; all off by default (the test-time pipeline)."""

    crop_padding: int = 0          # random 32x32 crop from the image padded by this many pixels
    pad_mode: str = "constant"     # "constant" (zeros) or "reflect"
    flip: bool = False             # horizontal flip with probability 1/2
    alternating_flip: bool = False  # with flip: each image flipped every other epoch, half of them from epoch 1
    rotation: float = 0.0          # uniform random rotation in [-rotation, +rotation] degrees
    brightness: float = 0.0        # color jitter factors as in torchvision's ColorJitter
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0               # fraction of a full turn, at most 0.5
    cutout: int = 0                # side of a square zeroed (after normalization) at a random place

    def __post_init__(self):
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', not {self.pad_mode!r}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError("hue must be in [0, 0.5]")
        if self.alternating_flip and not self.flip:
            raise ValueError("alternating_flip needs flip=True")

    def before_normalize(self, x: torch.Tensor, flip_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``flip_mask`` (N,) bool: which images to flip, for ``alternating_flip`` (else drawn at random)."""
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self.pad_mode)
        if self.flip:
            x = random_flip(x) if flip_mask is None else torch.where(flip_mask[:, None, None, None], x.flip(3), x)
        if self.rotation:
            x = random_rotation(x, self.rotation)
        if self.brightness or self.contrast or self.saturation or self.hue:
            x = color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue)
        return x

    def after_normalize(self, x: torch.Tensor) -> torch.Tensor:
        return cutout(x, self.cutout) if self.cutout else x


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype) * (high - low) + low


def random_crop(x: torch.Tensor, padding: int, pad_mode: str = "constant") -> torch.Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode=pad_mode)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_rotation(x: torch.Tensor, degrees: float) -> torch.Tensor:
    angle = _uniform(x.shape[0], -degrees, degrees, x) * (math.pi / 180)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 hue: float) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and hue changes, in that fixed order."""
    n = x.shape[0]

    def factor(strength: float) -> torch.Tensor:
        return _uniform(n, max(0.0, 1 - strength), 1 + strength, x).view(n, 1, 1, 1)

    if brightness:
        x = (x * factor(brightness)).clamp(0, 1)
    if contrast:
        mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        f = factor(contrast)
        x = (f * x + (1 - f) * mean).clamp(0, 1)
    if saturation:
        f = factor(saturation)
        x = (f * x + (1 - f) * _grayscale(x)).clamp(0, 1)
    if hue:
        x = _rotate_hue(x, _uniform(n, -hue, hue, x) * 2 * math.pi)
    return x


# RGB <-> YIQ: a hue shift is a rotation of the chroma (I, Q) plane. Cheaper than an HSV round trip
# and batched as one 3x3 matrix per image; differs from HSV hue only in how saturated colours clip.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _rotate_hue(x: torch.Tensor, radians: torch.Tensor) -> torch.Tensor:
    to_yiq = torch.tensor(_RGB_TO_YIQ, device=x.device, dtype=x.dtype)
    to_rgb = torch.linalg.inv(to_yiq)
    cos, sin = radians.cos(), radians.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack([
        torch.stack([one, zero, zero], 1),
        torch.stack([zero, cos, -sin], 1),
        torch.stack([zero, sin, cos], 1),
    ], 1)
    matrix = to_rgb @ rotation @ to_yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size x size square centred at a random pixel (clipped at the border)."""
    n, _, h, w = x.shape
    top = torch.randint(0, h, (n, 1, 1), device=x.device) - size // 2
    left = torch.randint(0, w, (n, 1, 1), device=x.device) - size // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside[:, None], 0.0)
