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

UPLOAD_JPEG_QUALITY = (40, 95)  # the JPEG qualities a re-saved upload is drawn from, unless a recipe says otherwise
# The files an upload-bank client may send (training/upload_bank.py makes them): "lossless" (any lossless format: the
# same pixels), JPEG with 4:2:0 or 4:4:4 chroma, WebP, and 256-colour palettes (PNG median cut, Pillow's GIF writer).
UPLOAD_BANK_FORMATS = ("lossless", "jpeg", "jpeg-444", "webp", "palette", "gif")
UPLOAD_BANK_DEFAULT_FORMATS = UPLOAD_BANK_FORMATS[:4]  # the bank before palettes: the recipes that trained on it
UPLOAD_BANK_NATIVE_SHARE = 0.3  # of a bank's uploads, those sent at the image's own size (the rest are enlarged)


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
    # What the upload path does to an image (common/images.py), applied last, to this share of the images:
    upload_resize: float = 0.0     # enlarged 1.5-10x by a client's filter, then shrunk back as the service does
    upload_jpeg: float = 0.0       # saved as JPEG at a random quality, then decoded
    upload_jpeg_quality: tuple[int, int] = UPLOAD_JPEG_QUALITY  # drawn from uniformly, both ends included
    # Real uploads instead of the tensor model (training/upload_bank.py): this share of the images replaced, before
    # the crop, by one of upload_bank_copies copies made through real client codecs and the service's decode.
    upload_bank: float = 0.0
    upload_bank_copies: int = 4
    upload_bank_formats: tuple[str, ...] = UPLOAD_BANK_DEFAULT_FORMATS  # drawn uniformly among these
    upload_bank_native_share: float = UPLOAD_BANK_NATIVE_SHARE  # sent at 32x32, so always re-encoded lossy

    def __post_init__(self):
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', not {self.pad_mode!r}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError("hue must be in [0, 0.5]")
        if self.alternating_flip and not self.flip:
            raise ValueError("alternating_flip needs flip=True")
        if not all(0.0 <= p <= 1.0 for p in (self.upload_resize, self.upload_jpeg, self.upload_bank,
                                             self.upload_bank_native_share)):
            raise ValueError("upload_resize, upload_jpeg, upload_bank and upload_bank_native_share are "
                             "probabilities, in [0, 1]")
        if self.upload_bank_copies < 1:
            raise ValueError("upload_bank_copies must be >= 1")
        object.__setattr__(self, "upload_jpeg_quality", tuple(self.upload_jpeg_quality))  # a list from JSON
        object.__setattr__(self, "upload_bank_formats", tuple(self.upload_bank_formats))
        unknown = sorted(set(self.upload_bank_formats) - set(UPLOAD_BANK_FORMATS))
        if unknown or not self.upload_bank_formats:
            raise ValueError(f"upload_bank_formats are some of {', '.join(UPLOAD_BANK_FORMATS)}"
                             + (f", not {', '.join(unknown)}" if unknown else ""))
        if self.upload_bank_formats == ("lossless",):
            raise ValueError("upload_bank_formats needs a lossy format: a 32x32 upload is always re-encoded")
        low, high = self.upload_jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError("upload_jpeg_quality is a (low, high) range of JPEG qualities within 1..100")

    def before_normalize(self, x: torch.Tensor, flip_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``flip_mask`` (N,) bool: which images to flip, for ``alternating_flip`` (else drawn at random)."""
        return self.upload_damage(self.view(x, flip_mask))

    def view(self, x: torch.Tensor, flip_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The geometric and colour augmentations: which view of the image the model sees."""
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self.pad_mode)
        if self.flip:
            x = random_flip(x) if flip_mask is None else torch.where(flip_mask[:, None, None, None], x.flip(3), x)
        if self.rotation:
            x = random_rotation(x, self.rotation)
        if self.brightness or self.contrast or self.saturation or self.hue:
            x = color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue)
        return x

    def upload_damage(self, x: torch.Tensor) -> torch.Tensor:
        """What the upload path does to a view: resize round trip, JPEG re-save (each to its share of images)."""
        if self.upload_resize:
            x = upload_resize(x, self.upload_resize)
        if self.upload_jpeg:
            x = jpeg_round_trip(x, self.upload_jpeg, self.upload_jpeg_quality)
        return x

    def after_normalize(self, x: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """``copies``: x holds that many stacked copies of one batch (a view and its undamaged twin), which get
        the same cutout square."""
        return cutout(x, self.cutout, copies) if self.cutout else x


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


def cutout(x: torch.Tensor, size: int, copies: int = 1) -> torch.Tensor:
    """Zero a size x size square centred at a random pixel (clipped at the border); with ``copies``, x is
    that many stacked copies of a batch and image i of every copy loses the same square."""
    n, _, h, w = x.shape
    if n % copies:
        raise ValueError(f"cutout: {n} images do not split into {copies} copies")
    top = (torch.randint(0, h, (n // copies, 1, 1), device=x.device) - size // 2).repeat(copies, 1, 1)
    left = (torch.randint(0, w, (n // copies, 1, 1), device=x.device) - size // 2).repeat(copies, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside[:, None], 0.0)


# --- The upload path: what a photo goes through between a user's disk and the model ----------------------

UPLOAD_SCALES = (1.5, 10.0)  # how much larger than 32x32 clients send an image (their own resize)
UPLOAD_FILTERS = ("nearest", "bilinear", "bicubic", "area")  # the filters their software resizes with


def _to_8_bits(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def upload_resize(x: torch.Tensor, probability: float) -> torch.Tensor:
    """A random share of the batch enlarged by a random factor with a random filter (one of each per call),
    stored in 8 bits as a client's file is, then shrunk back to the batch's size with antialiased bicubic
    filtering: close to the service's decode, not bit for bit (it uses Lanczos, which torch's interpolate lacks;
    training/upload_bank.py runs the service's own decode)."""
    n, _, h, w = x.shape
    chosen = (torch.rand(n, device=x.device) < probability).nonzero().squeeze(1)
    if chosen.numel() == 0:
        return x
    draw = torch.rand(2, device=x.device).tolist()
    scale = UPLOAD_SCALES[0] + draw[0] * (UPLOAD_SCALES[1] - UPLOAD_SCALES[0])
    mode = UPLOAD_FILTERS[min(int(draw[1] * len(UPLOAD_FILTERS)), len(UPLOAD_FILTERS) - 1)]
    size = (round(h * scale), round(w * scale))
    corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    big = _to_8_bits(F.interpolate(x[chosen], size=size, mode=mode, **corners))
    small = F.interpolate(big, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    out = x.clone()
    out[chosen] = _to_8_bits(small).to(x.dtype)
    return out


# The JPEG standard's (ITU T.81, Annex K) example quantization tables, which libjpeg scales by quality.
_LUMA_TABLE = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
               14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
               49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA_TABLE = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32
# JFIF's RGB -> YCbCr (full range, offset 128 on the chroma).
_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def _dct_matrix(device, dtype) -> torch.Tensor:
    k = torch.arange(8, device=device, dtype=dtype)
    basis = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return basis  # orthonormal: rows are the 1-D DCT-II basis vectors


def _quantization_tables(quality: torch.Tensor, table: tuple, dtype) -> torch.Tensor:
    """(N, 8, 8) libjpeg tables for per-image qualities 1..100."""
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality).to(dtype)
    base = torch.tensor(table, device=quality.device, dtype=dtype).view(1, 8, 8)
    return ((base * scale.view(-1, 1, 1) + 50) / 100).floor().clamp(1, 255)


def _blockwise(plane: torch.Tensor, tables: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Quantize (N, H, W) samples (level-shifted) in 8x8 DCT blocks with per-image (N, 8, 8) tables."""
    n, h, w = plane.shape
    blocks = plane.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coeffs = dct @ blocks @ dct.T
    t = tables.view(n, 1, 1, 8, 8)
    restored = dct.T @ ((coeffs / t).round() * t) @ dct
    return restored.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def jpeg_round_trip(x: torch.Tensor, probability: float,
                    quality_range: tuple[int, int] = UPLOAD_JPEG_QUALITY) -> torch.Tensor:
    """A random share of the batch through JPEG compression at per-image random qualities, in tensor ops on
    x's device: JFIF colour conversion, 4:2:0 chroma subsampling, 8x8 DCT quantized with the standard's
    tables at libjpeg's quality scaling, and back. What a re-saved upload loses, without an encoder; entropy
    coding is lossless and left out. Image sides must be multiples of 16 (CIFAR's 32 is)."""
    n, _, h, w = x.shape
    if h % 16 or w % 16:
        raise ValueError("jpeg_round_trip needs sides that are multiples of 16")
    chosen = (torch.rand(n, device=x.device) < probability).nonzero().squeeze(1)
    if chosen.numel() == 0:
        return x
    work = x[chosen].float()
    low, high = quality_range
    quality = torch.randint(low, high + 1, (len(chosen),), device=x.device).float()
    dct = _dct_matrix(x.device, work.dtype)
    to_ycc = torch.tensor(_RGB_TO_YCBCR, device=x.device, dtype=work.dtype)
    ycc = torch.einsum("ij,njhw->nihw", to_ycc, _to_8_bits(work) * 255)  # Y in 0..255, chroma centred on 0
    luma = _blockwise(ycc[:, 0] - 128, _quantization_tables(quality, _LUMA_TABLE, work.dtype), dct) + 128
    chroma_tables = _quantization_tables(quality, _CHROMA_TABLE, work.dtype)
    chroma = [F.interpolate(_blockwise(F.avg_pool2d(ycc[:, c:c + 1], 2)[:, 0], chroma_tables, dct)[:, None],
                            scale_factor=2, mode="bilinear", align_corners=False)[:, 0] for c in (1, 2)]
    restored = torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_ycc), torch.stack([luma, *chroma], 1))
    out = x.clone()
    out[chosen] = _to_8_bits(restored / 255).to(x.dtype)
    return out
