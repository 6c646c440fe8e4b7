"""Accuracy on the uploads users actually send: resized, re-encoded, turned, padded, in other pixel modes.

    python benchmarks/upload_robustness.py [--images 1000] [--models NAME ...] [--variants GLOB,...]
                                           [--data PATH] [--weights DIR] [--out FILE]

For the first N test images of the JPEG copy of CIFAR-10 (the order ``training.data.load_cifar10``
gives: the k-th file of every class by name, classes interleaved, so any N is class balanced), every
*upload variant* below is made from the image's pixels, and its bytes go through the service's own
decode path, ``common.images.decode`` (with the service's default MAX_IMAGE_PIXELS and a fresh
per-request pixel budget, as ``/predict`` calls it). Each served model then classifies the decoded
32x32 arrays with onnxruntime on one thread, in batches, and the accuracy of each variant is compared
with the native upload: the archive's original 32x32 JPEG bytes, sent as they are.

A variant is a small pipeline, and its name spells it: ``x4-bicubic-pad4:3-edge-rgba-webp-q80-exif6``

1. size: ``x<s>-<filter>``, upscaled s times (1.5 to 10, beyond for large-JPEG paths) by one of
   Pillow's filters (nearest, box, bilinear, hamming, bicubic, lanczos); ``x1``: the native 32x32;
   ``x0.5``/``x0.75``: a thumbnail smaller than the model's input (resolution is lost: see 6).
2. aspect (optional): ``pad<w>:<h>-<fill>`` places the square on a wider or taller canvas (edge
   pixels repeated, white, black, or transparent), as a screenshot or a photo with background around
   the object; the service takes the centred square, so the object comes back (up to the half pixel
   an odd margin gives). ``crop<w>:<h>`` cuts the square to that aspect, as a user cropping a photo.
3. pixel mode (optional): ``rgba`` (opaque, or transparent padding), ``gray``, ``gray16`` and
   ``rgb16`` (16 bits per sample, resized in floating point: a 16-bit pipeline), ``cmyk``,
   ``palette`` (256 colours, median cut) and ``palette-alpha`` (with a transparent index).
4. format: png, jpeg-q<q> (``-progressive``, ``-444`` for no chroma subsampling), webp-q<q> or
   webp-lossless, avif-q<q>, tiff (``-lzw``, ``-deflate``, ``-jpeg-q<q>`` compression), bmp, gif,
   ppm (PGM for gray).
5. orientation (optional): ``exif<o>`` stores the pixels turned or mirrored and sets the EXIF
   orientation o (2..8) so that a viewer that honours it shows the image upright, as phones do.

6. Content: most variants carry the same picture (``content_changing: false``): a correct upload
   path should classify them as well as the native upload, and the headline figures (worst variant,
   mean drop) are over those. Grayscale, cropping to another aspect and thumbnails smaller than 32x32
   remove information (colour, part of the picture, resolution): they are reported separately.

Lossless variants often decode to exactly the native pixels: predictions are computed once per
distinct decoded image, so they cost no inference. Per variant the JSON also gives how many images
decode identical to the native upload and the mean absolute pixel difference from it.

Writes ``benchmarks/results/upload_robustness.json`` and prints the tables. Accuracy on the JPEG-q75
copy of CIFAR-10 (``../shared/data/README.md``), on the served file of each model (its int8 copy where
the manifest says that is what is served).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import hashlib
import io
import json
import math
import os
import platform
import struct
import sys
import tarfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, features  # noqa: E402

from common.files import write_text  # noqa: E402
from common.images import MAX_DECODE_BYTES, ImageError, PixelBudget, decode  # noqa: E402
from common.paths import repo_relative, repo_relative_command  # noqa: E402
from common.text import first_line  # noqa: E402
from serving.config import Settings  # noqa: E402

PROG = "upload_robustness"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "upload_robustness.json"
DEFAULT_WEIGHTS = ROOT / "weights"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIZE = 32
BATCH = 64
NATIVE = "native"
MAX_PIXELS = Settings().max_image_pixels
MAX_REQUEST_PIXELS = Settings().max_request_pixels

FILTERS = {
    "nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
}
# The transpose that stores an upright picture so that a viewer applying EXIF orientation o shows it
# upright: the inverse of the viewer's (Pillow's ImageOps.exif_transpose) transpose for o.
STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
MODES = ("rgb", "rgba", "gray", "gray16", "rgb16", "cmyk", "palette", "palette-alpha")
FILLS = ("edge", "white", "black", "transparent")
EXIF_FORMATS = {"png", "jpeg", "webp", "avif", "tiff"}  # formats whose files carry an EXIF orientation here
# What each format can store, of the modes above (a variant outside this is a mistake in VARIANTS).
FORMAT_MODES = {
    "png": set(MODES), "tiff": {"rgb", "rgba", "gray", "gray16", "cmyk"},
    "jpeg": {"rgb", "gray", "cmyk"}, "webp": {"rgb", "rgba"}, "avif": {"rgb", "rgba", "gray"},
    "bmp": {"rgb", "rgba", "gray", "palette"}, "gif": {"rgb", "gray", "palette", "palette-alpha"},
    "ppm": {"rgb", "gray", "gray16"},
}
FORMAT_PLUGIN = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "tiff": "TIFF", "bmp": "BMP",
                 "gif": "GIF", "ppm": "PPM"}
TIFF_COMPRESSION = {"raw": None, "lzw": "tiff_lzw", "deflate": "tiff_adobe_deflate", "jpeg": "jpeg"}


class UsageError(Exception):
    """A bad command line or missing input: reported in one line, exit status 2."""


class RunError(Exception):
    """A failure while running (a model file the service's loader refuses): one line, exit status 1."""


# --- variants --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    scale: float = 1.0  # 1: the native 32x32
    filter: str | None = None  # upscaling filter, for scale != 1
    aspect: tuple | None = None  # ("pad", w, h, fill) or ("crop", w, h)
    mode: str = "rgb"
    fmt: str = "png"
    quality: int | None = None  # jpeg, webp, avif, tiff-jpeg
    lossless: bool = False  # webp
    progressive: bool = False  # jpeg
    subsampling: str | None = None  # jpeg: "444"; None: the encoder's default (4:2:0)
    compression: str | None = None  # tiff: raw, lzw, deflate, jpeg
    orientation: int = 1
    group: str = ""
    native: bool = field(default=False, compare=False)  # the original bytes, as they are

    @property
    def name(self) -> str:
        if self.native:
            return NATIVE
        parts = [f"x{self.scale:g}" + (f"-{self.filter}" if self.scale != 1 else "")]
        if self.aspect:
            kind, w, h, *fill = self.aspect
            parts.append(f"{kind}{w}:{h}" + (f"-{fill[0]}" if fill else ""))
        if self.mode != "rgb":
            parts.append(self.mode)
        parts.append(self.format_token)
        if self.orientation != 1:
            parts.append(f"exif{self.orientation}")
        return "-".join(parts)

    @property
    def format_token(self) -> str:
        """The format part of the name: jpeg-q75-progressive, webp-lossless, tiff-deflate, png, ..."""
        fmt = self.fmt
        if self.fmt == "tiff" and self.compression and self.compression != "raw":
            fmt += f"-{self.compression}"
        if self.lossless:
            fmt += "-lossless"
        elif self.quality is not None:
            fmt += f"-q{self.quality}"
        if self.progressive:
            fmt += "-progressive"
        if self.subsampling:
            fmt += f"-{self.subsampling}"
        return fmt

    @property
    def content_changing(self) -> bool:
        """True when the upload no longer holds the whole picture at full colour and resolution."""
        return self.mode in ("gray", "gray16") or (self.aspect is not None and self.aspect[0] == "crop") \
            or self.scale < 1

    @property
    def lossy(self) -> bool:
        """Whether the stored pixels differ from the picture at its size (lossy codec or palette)."""
        return (self.fmt in ("jpeg", "avif") or (self.fmt == "webp" and not self.lossless)
                or self.compression == "jpeg" or self.mode in ("palette", "palette-alpha")
                or (self.fmt == "gif" and self.mode in ("rgb", "gray")))

    def check(self) -> None:
        """Raise ValueError for a variant the pipeline cannot make (a mistake in the list, not a data issue)."""
        if (self.scale != 1) != (self.filter is not None) or (self.filter and self.filter not in FILTERS):
            raise ValueError(f"{self.name}: a resized variant needs one of {sorted(FILTERS)}")
        if self.mode not in FORMAT_MODES[self.fmt]:
            raise ValueError(f"{self.name}: {self.fmt} does not store {self.mode}")
        if self.orientation != 1 and self.fmt not in EXIF_FORMATS:
            raise ValueError(f"{self.name}: {self.fmt} carries no EXIF orientation here")
        if self.aspect and self.aspect[0] == "pad" and (
                self.aspect[3] not in FILLS or (self.aspect[3] == "transparent" and self.mode != "rgba")):
            raise ValueError(f"{self.name}: padding is one of {FILLS}, transparent only with rgba")

    @property
    def description(self) -> str:
        if self.native:
            return "the archive's original 32x32 JPEG bytes, unchanged"
        what = [f"upscaled {self.scale:g}x ({self.filter})" if self.scale > 1 else
                f"downscaled to {self.scale:g}x ({self.filter})" if self.scale < 1 else "native 32x32 pixels"]
        if self.aspect:
            kind, w, h, *fill = self.aspect
            what.append(f"padded to {w}:{h} ({fill[0]})" if kind == "pad" else f"cropped to {w}:{h}")
        if self.mode != "rgb":
            what.append(self.mode)
        what.append(f"saved as {self.format_token}")
        if self.orientation != 1:
            what.append(f"stored turned with EXIF orientation {self.orientation}")
        return ", ".join(what)


def _v(scale=1.0, filter=None, fmt="png", group="", **kw) -> Variant:
    return Variant(scale=scale, filter=filter, fmt=fmt, group=group, **kw)


def encodings(size: str) -> list[dict]:
    """The formats and qualities the family uses, as keyword sets of Variant: every lossless container
    (free: they decode to the same pixels as PNG), and the lossy encoders at low, typical and high quality."""
    lossless = [dict(fmt="png"), dict(fmt="bmp"), dict(fmt="ppm"), dict(fmt="tiff", compression="raw"),
                dict(fmt="tiff", compression="lzw"), dict(fmt="tiff", compression="deflate"),
                dict(fmt="webp", lossless=True)]
    lossy = [dict(fmt="gif"), dict(fmt="webp", quality=50), dict(fmt="webp", quality=80),
             dict(fmt="jpeg", quality=50), dict(fmt="jpeg", quality=75), dict(fmt="jpeg", quality=95),
             dict(fmt="jpeg", quality=75, progressive=True), dict(fmt="avif", quality=50)]
    if size == "x4":
        lossy += [dict(fmt="jpeg", quality=95, subsampling="444"), dict(fmt="tiff", compression="jpeg", quality=90)]
    return lossless + lossy


def build_variants() -> list[Variant]:
    """The variant family (see the module docstring), native first."""
    out = [Variant(native=True, fmt="jpeg", group="native")]
    # Every encoding at the native size, and after a typical 4x bicubic upscale.
    out += [_v(group="format", **e) for e in encodings("x1")]
    # The resize round trip alone (lossless PNG): scale x filter (box is nearest at integer scales).
    out += [_v(s, f, group="resize") for s in (1.5, 2, 4, 6.5, 10)
            for f in ("nearest", "box", "bilinear", "bicubic", "lanczos")]
    out += [_v(4, "bicubic", group="resize+format", **e) for e in encodings("x4") if e != dict(fmt="png")]
    # Large JPEGs and WebPs: the service decodes JPEGs of >= 256 px at a reduced DCT scale (1/2, 1/4, 1/8).
    out += [_v(8, "bicubic", fmt="jpeg", quality=85, group="large"),
            _v(16, "bicubic", fmt="jpeg", quality=90, group="large"),
            _v(32, "lanczos", fmt="jpeg", quality=90, group="large"),
            _v(10, "bilinear", fmt="webp", quality=80, group="large")]
    # Pixel modes, at the native size and upscaled.
    modes = [dict(mode="rgba"), dict(mode="rgba", fmt="webp", lossless=True), dict(mode="rgba", fmt="webp", quality=80),
             dict(mode="rgba", fmt="tiff", compression="deflate"), dict(mode="rgba", fmt="bmp"),
             dict(mode="gray"), dict(mode="gray", fmt="jpeg", quality=90), dict(mode="gray16"),
             dict(mode="gray16", fmt="ppm"), dict(mode="rgb16"), dict(mode="cmyk", fmt="jpeg", quality=95),
             dict(mode="cmyk", fmt="tiff", compression="raw"), dict(mode="palette"), dict(mode="palette-alpha")]
    out += [_v(group="mode", **m) for m in modes]
    out += [_v(4, "bicubic", group="mode", **m) for m in modes]
    # EXIF orientation: every orientation losslessly (a correct path gives exactly the native pixels),
    # and the phone ones upscaled, in each format that carries it.
    out += [_v(orientation=o, group="orientation") for o in range(2, 9)]
    out += [_v(4, "bicubic", fmt="jpeg", quality=95, orientation=o, group="orientation") for o in (6, 8)]
    out += [_v(4, "bicubic", orientation=o, group="orientation") for o in (5, 6)]
    out += [_v(4, "bicubic", fmt=f, orientation=6, group="orientation", **kw)
            for f, kw in (("webp", dict(quality=80)), ("tiff", dict(compression="deflate")))]
    # Non-square uploads: the service classifies the centred square.
    out += [_v(4, "bicubic", aspect=("pad", 4, 3, "edge"), group="aspect"),
            _v(4, "bicubic", aspect=("pad", 3, 4, "edge"), group="aspect"),
            _v(4, "bicubic", aspect=("pad", 16, 9, "black"), group="aspect"),
            _v(4, "bicubic", aspect=("pad", 4, 3, "white"), fmt="jpeg", quality=90, group="aspect"),
            _v(4, "bicubic", aspect=("pad", 4, 3, "transparent"), mode="rgba", group="aspect"),
            _v(aspect=("pad", 4, 3, "edge"), group="aspect"),
            _v(4, "bicubic", aspect=("crop", 4, 3), group="aspect"),
            _v(4, "bicubic", aspect=("crop", 3, 4), group="aspect")]
    # Thumbnails smaller than the model's input.
    out += [_v(0.75, "bicubic", group="downscale"), _v(0.5, "bicubic", group="downscale")]
    # Combinations, as users send them.
    out += [_v(10, "lanczos", aspect=("pad", 4, 3, "edge"), fmt="jpeg", quality=85, orientation=6, group="combination"),
            _v(16, "bicubic", aspect=("pad", 3, 4, "edge"), fmt="jpeg", quality=85, orientation=8, group="combination"),
            _v(6.5, "bicubic", aspect=("pad", 4, 3, "transparent"), mode="rgba", fmt="webp", quality=80,
               group="combination"),
            _v(3, "bilinear", aspect=("pad", 16, 9, "white"), group="combination"),
            _v(2, "nearest", fmt="gif", group="combination"),
            _v(7, "box", mode="cmyk", fmt="jpeg", quality=90, group="combination"),
            _v(1.5, "bilinear", mode="rgb16", orientation=3, group="combination"),
            _v(3, "lanczos", fmt="avif", quality=50, orientation=6, group="combination"),
            _v(2.5, "hamming", mode="palette-alpha", orientation=5, group="combination"),
            _v(5, "bicubic", fmt="webp", quality=50, orientation=7, group="combination"),
            _v(4.5, "bilinear", mode="gray", fmt="jpeg", quality=75, orientation=8, group="combination")]
    names = [v.name for v in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate variants: {duplicates}")
    for v in out:
        if not v.native:
            v.check()
    return out


VARIANTS = build_variants()


def available(v: Variant) -> bool:
    """Whether this Pillow can write the variant's format (WebP and AVIF need their libraries)."""
    return v.native or FORMAT_PLUGIN[v.fmt] in Image.SAVE or (v.fmt == "avif" and features.check("avif"))


def select_variants(patterns: Sequence[str] | None) -> list[Variant]:
    """The variants whose names match any glob pattern (all for None); native always first."""
    chosen = [v for v in VARIANTS if patterns is None or v.native
              or any(fnmatch.fnmatchcase(v.name, p) for p in patterns)]
    unmatched = [p for p in patterns or () if not any(fnmatch.fnmatchcase(v.name, p) for v in VARIANTS)]
    if unmatched:
        raise UsageError(f"--variants: no variant matches {', '.join(unmatched)} "
                         "(names look like x4-bicubic-jpeg-q75; --list-variants prints them)")
    return chosen


# --- making an upload ------------------------------------------------------------------------------

def _pad(arr: np.ndarray, target: tuple[int, int], fill: str, white: float) -> tuple[np.ndarray, np.ndarray | None]:
    """arr (h, w[, c]) centred on a canvas of target (width, height); and the alpha mask for transparent fill."""
    h, w = arr.shape[:2]
    width, height = target
    left, top = (width - w) // 2, (height - h) // 2
    widths = [(top, height - h - top), (left, width - w - left)] + [(0, 0)] * (arr.ndim - 2)
    if fill == "edge":
        return np.pad(arr, widths, mode="edge"), None
    value = {"white": white, "black": 0, "transparent": 0}[fill]
    padded = np.pad(arr, widths, mode="constant", constant_values=value)
    if fill != "transparent":
        return padded, None
    mask = np.pad(np.full((h, w), 255, np.uint8), widths[:2], mode="constant", constant_values=0)
    return padded, mask


def _canvas(side: int, aspect: tuple) -> tuple[int, int]:
    kind, w, h = aspect[:3]
    if kind == "pad":  # the square's side is the canvas's shorter side
        return (round(side * w / h), side) if w >= h else (side, round(side * h / w))
    return (side, round(side * h / w)) if w >= h else (round(side * w / h), side)  # crop: within the square


def geometry(channel: Image.Image, v: Variant, white: float) -> tuple[Image.Image, Image.Image | None]:
    """One image (any mode Pillow resizes: RGB, L, F) through the variant's size, aspect and orientation;
    and the alpha mask transparent padding makes (None otherwise)."""
    img = channel
    if v.scale != 1:
        side = max(1, round(SIZE * v.scale))
        img = img.resize((side, side), FILTERS[v.filter])
    mask = None
    if v.aspect:
        width, height = _canvas(img.width, v.aspect)
        if v.aspect[0] == "pad":
            arr, alpha = _pad(np.asarray(img), (width, height), v.aspect[3], white)
            img = Image.fromarray(arr, img.mode)
            mask = Image.fromarray(alpha, "L") if alpha is not None else None
        else:
            left, top = (img.width - width) // 2, (img.height - height) // 2
            img = img.crop((left, top, left + width, top + height))
    if v.orientation != 1:
        img = img.transpose(STORE_FOR_ORIENTATION[v.orientation])
        mask = mask.transpose(STORE_FOR_ORIENTATION[v.orientation]) if mask is not None else None
    return img, mask


def _png16(samples: np.ndarray, exif: bytes | None) -> bytes:
    """A 16-bit PNG (gray or RGB) of uint16 samples, written directly: Pillow cannot write 16-bit RGB."""
    height, width = samples.shape[:2]
    colour_type = 2 if samples.ndim == 3 else 0
    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    if exif:
        out += chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    return out + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()  # fresh each time: some writers (AVIF) remove the orientation from the object they get
    exif[0x0112] = orientation
    return exif.tobytes()


def pictured(rgb: Image.Image, v: Variant) -> Image.Image | np.ndarray:
    """The upright 32x32 RGB picture as the variant stores it: resized, padded or cropped, turned, in
    its pixel mode (a uint16 array for 16-bit modes)."""
    if v.mode in ("gray16", "rgb16"):
        # A 16-bit pipeline: each channel resized in floating point from 8 bits scaled to 16.
        sources = [rgb.convert("L")] if v.mode == "gray16" else list(rgb.split())
        planes = []
        for band in sources:
            f = Image.fromarray(np.asarray(band, np.float32) * 257.0, "F")
            out, _ = geometry(f, v, 65535.0)
            planes.append(np.clip(np.rint(np.asarray(out, np.float64)), 0, 65535).astype(np.uint16))
        return planes[0] if v.mode == "gray16" else np.stack(planes, axis=-1)
    img, mask = geometry(rgb, v, 255)
    if v.mode == "rgba":
        img = img.convert("RGBA")
        if mask is not None:
            img.putalpha(mask)
        return img
    if v.mode == "gray":
        return img.convert("L")
    if v.mode == "cmyk":
        return img.convert("CMYK")
    if v.mode in ("palette", "palette-alpha"):
        colours = 255 if v.mode == "palette-alpha" else 256
        pal = img.quantize(colours, method=Image.Quantize.MEDIANCUT)
        if v.mode == "palette-alpha":  # a transparent palette entry no pixel uses: the transparency path
            pal.info["transparency"] = 255
        return pal
    return img


def make_upload(rgb: Image.Image, v: Variant, native_bytes: bytes) -> bytes:
    """The bytes a user would send for ``rgb`` (the upright 32x32 picture) as variant ``v``."""
    if v.native:
        return native_bytes
    img = pictured(rgb, v)
    exif = _exif_bytes(v.orientation) if v.orientation != 1 else None
    if isinstance(img, np.ndarray):
        if v.fmt == "png" and img.ndim == 3:
            return _png16(img, exif)
        img = Image.fromarray(img)  # uint16 gray: mode I;16
    out = io.BytesIO()
    params: dict = {}
    if exif is not None:
        params["exif"] = exif
    if v.fmt == "jpeg":
        params.update(quality=v.quality, progressive=v.progressive)
        if v.subsampling == "444":
            params["subsampling"] = 0
    elif v.fmt == "webp":
        params.update(lossless=True) if v.lossless else params.update(quality=v.quality)
    elif v.fmt == "avif":
        params.update(quality=v.quality)
    elif v.fmt == "tiff":
        compression = TIFF_COMPRESSION[v.compression or "raw"]
        if compression:
            params["compression"] = compression
        if compression == "jpeg":
            params["quality"] = v.quality
    elif v.fmt == "png" and "transparency" in img.info:
        params["transparency"] = img.info["transparency"]
    elif v.fmt == "gif" and "transparency" in img.info:
        params["transparency"] = img.info["transparency"]
    img.save(out, FORMAT_PLUGIN[v.fmt], **params)
    return out.getvalue()


def service_decode(data: bytes) -> np.ndarray:
    """What ``/predict`` does with one uploaded file: ``common.images.decode`` with the service's default
    limits and a per-request pixel budget."""
    return decode(data, MAX_PIXELS, budget=PixelBudget(MAX_REQUEST_PIXELS))


def upright_rgb(native_bytes: bytes) -> Image.Image:
    """The picture the user has: the original file's pixels (Pillow's decode)."""
    with Image.open(io.BytesIO(native_bytes)) as img:
        return img.convert("RGB")


# --- data ------------------------------------------------------------------------------------------

@dataclass
class Selection:
    names: list[str]  # archive member names, in order
    files: list[bytes]
    labels: np.ndarray

    def describe(self, source: Path) -> dict:
        per_class: dict[str, list[str]] = {}
        for name, label in zip(self.names, self.labels, strict=True):
            per_class.setdefault(CLASSES[label], []).append(PurePosixPath(name).name)
        digest = hashlib.sha256()
        for name, data in zip(self.names, self.files, strict=True):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return {
            "source": repo_relative(source),
            "rule": ("the first N test images in training.data.load_cifar10's order: the k-th file (by name) of "
                     "every class, classes interleaved in CIFAR-10 order, k = 0, 1, ..."),
            "per_class": {c: {"count": len(files), "first": files[0], "last": files[-1]}
                          for c, files in per_class.items()},
            "sha256": digest.hexdigest(),
            "sha256_of": "sha256 over the selection in order of: member name, NUL, sha256 of its bytes",
        }


def load_selection(path: Path, count: int) -> Selection:
    """The first ``count`` test images of a train/<class>/ + test/<class>/ tar(.gz) archive, read with
    tarfile (no torch), in the training loader's class-interleaved order."""
    if not path.exists():
        raise UsageError(f"data not found: {path} (pass --data PATH or set CIFAR10_DATA)")
    if not path.is_file() or not tarfile.is_tarfile(path):
        raise UsageError(f"--data must be a .tar or .tar.gz of train/<class>/ and test/<class>/ images: {path}")
    per_class: dict[str, list[tuple[str, str, bytes]]] = {c: [] for c in CLASSES}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if (member.isfile() and len(parts) >= 3 and parts[-3] == "test" and parts[-2] in per_class
                        and not parts[-1].startswith(".")):
                    per_class[parts[-2]].append((parts[-1], member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UsageError(f"cannot read {path}: {first_line(exc)}") from None
    missing = [c for c in CLASSES if not per_class[c]]
    if missing:
        raise UsageError(f"{path}: no test/<class>/ images for {', '.join(missing)}")
    ordered = []
    for label, name in enumerate(CLASSES):
        for rank, (_, member, data) in enumerate(sorted(per_class[name])):
            ordered.append((rank, label, member, data))
    ordered.sort(key=lambda item: (item[0], item[1]))
    if count > len(ordered):
        raise UsageError(f"--images {count}: {path} has only {len(ordered)} test images")
    chosen = ordered[:count]
    return Selection([m for _, _, m, _ in chosen], [d for _, _, _, d in chosen],
                     np.array([label for _, label, _, _ in chosen], dtype=np.int64))


# --- models ----------------------------------------------------------------------------------------

@dataclass
class ServedModel:
    name: str
    path: Path
    precision: str
    images_per_s: float  # the manifest's CPU figure for the served file (0: unknown): cheap models run first


def served_models(weights: Path, names: Sequence[str] | None) -> tuple[list[ServedModel], str | None]:
    """The manifest's models (its default first) or ``names``, each with the file the service serves:
    NAME.int8.onnx where the manifest's int8 ``served`` is true, else NAME.onnx."""
    manifest_path = weights / "MANIFEST.json"
    manifest: dict = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {manifest_path}: {first_line(exc)}") from None
    entries = manifest.get("models", {}) if isinstance(manifest.get("models"), dict) else {}
    default = manifest.get("default_model")
    known = sorted(entries) or sorted(p.name.removesuffix(".onnx") for p in weights.glob("*.onnx")
                                      if not p.name.endswith(".int8.onnx"))
    if names is None:
        names = ([default] if default in known else []) + [n for n in known if n != default]
    if not names:
        raise UsageError(f"no models in {repo_relative(weights)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--models: unknown model {', '.join(unknown)} "
                         f"(in {repo_relative(weights)}: {', '.join(known)})")
    models = []
    for name in dict.fromkeys(names):
        int8 = entries.get(name, {}).get("int8")
        if isinstance(int8, dict) and int8.get("served"):
            path, precision = weights / (int8.get("onnx") or f"{name}.int8.onnx"), "int8"
        else:
            path, precision = weights / (entries.get(name, {}).get("onnx") or f"{name}.onnx"), "fp32"
        if not path.is_file():
            raise UsageError(f"--models: {name}'s served file {repo_relative(path)} is missing")
        figures = int8 if precision == "int8" else entries.get(name, {})
        speed = figures.get("cpu_images_per_s") if isinstance(figures, dict) else None
        models.append(ServedModel(name, path, precision, float(speed) if isinstance(speed, int | float) else 0.0))
    return models, default


def predict(path: Path, images: np.ndarray, batch: int) -> np.ndarray:
    """Top-1 class of each image, from the model file loaded as the service loads it, on one thread."""
    from serving.models import ModelLoadError, load_model  # onnxruntime, only once there is something to run

    try:
        model = load_model(path, intra_op_threads=1)
    except ModelLoadError as exc:
        raise RunError(first_line(exc)) from None
    out = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), batch):
        out[start:start + batch] = model.probabilities(images[start:start + batch]).argmax(axis=1)
    return out


# --- the benchmark ---------------------------------------------------------------------------------

@dataclass
class Decoded:
    """Every variant's decoded arrays, stored once per distinct array."""
    unique: list[np.ndarray] = field(default_factory=list)
    index_of: dict[bytes, int] = field(default_factory=dict)
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # variant -> index into unique per image (-1: refused)
    info: dict[str, dict] = field(default_factory=dict)

    def add(self, array: np.ndarray) -> int:
        key = hashlib.blake2b(array.tobytes(), digest_size=16).digest()
        if key not in self.index_of:
            self.index_of[key] = len(self.unique)
            self.unique.append(array)
        return self.index_of[key]


def decode_variants(selection: Selection, variants: Sequence[Variant], progress=None) -> Decoded:
    decoded = Decoded()
    pictures = [upright_rgb(data) for data in selection.files]
    native_arrays: list[np.ndarray | None] = []
    for v in variants:
        start = time.perf_counter()
        rows = np.full(len(pictures), -1, dtype=np.int64)
        unique_before = len(decoded.unique)
        errors: dict[str, int] = {}
        byte_counts, identical, diffs = [], 0, []
        upload_info: dict = {}
        for i, (picture, data) in enumerate(zip(pictures, selection.files, strict=True)):
            upload = make_upload(picture, v, data)
            byte_counts.append(len(upload))
            if not upload_info:
                with Image.open(io.BytesIO(upload)) as opened:
                    upload_info = {"format": opened.format, "mode": opened.mode,
                                   "size": f"{opened.width}x{opened.height}"}
            try:
                array = service_decode(upload)
            except ImageError as exc:
                reason = f"{exc.status}: {first_line(exc)}"
                errors[reason] = errors.get(reason, 0) + 1
                array = None
            if v.native:
                native_arrays.append(array)
            if array is None:
                continue
            rows[i] = decoded.add(array)
            reference = native_arrays[i]
            if reference is not None:
                identical += bool(np.array_equal(array, reference))
                diffs.append(float(np.abs(array.astype(np.int16) - reference.astype(np.int16)).mean()))
        same_as = next((name for name, other in decoded.rows.items() if np.array_equal(other, rows)), None)
        decoded.rows[v.name] = rows
        decoded.info[v.name] = {
            "group": v.group, "description": v.description, "content_changing": v.content_changing,
            "lossy": v.lossy if not v.native else True,
            **{f"upload_{key}": value for key, value in upload_info.items()},
            "upload_mean_bytes": round(float(np.mean(byte_counts)), 1),
            "decode_errors": sum(errors.values()),
            "decode_error_reasons": "; ".join(f"{count} x {reason}" for reason, count in errors.items()) or None,
            "identical_to_native": round(identical / len(pictures), 4),
            "decodes_as": same_as,  # an earlier variant whose every image decodes to the same array
            "new_distinct_images": len(decoded.unique) - unique_before,  # what it adds to the inference
            "mean_abs_pixel_diff_vs_native": round(float(np.mean(diffs)), 3) if diffs else None,
            "seconds_make_and_decode": round(time.perf_counter() - start, 2),
        }
        if progress:
            progress(v, decoded.info[v.name])
    return decoded


def score(decoded: Decoded, labels: np.ndarray, variants: Sequence[Variant], predictions: np.ndarray) -> dict:
    """Accuracy per variant and its drop in points against native, from predictions per unique array."""
    native_rows = decoded.rows[NATIVE]
    native_pred = predictions[native_rows]
    native_acc = float((native_pred == labels).mean())
    per_variant = {}
    for v in variants:
        rows = decoded.rows[v.name]
        pred = np.where(rows >= 0, predictions[np.maximum(rows, 0)], -1)
        acc = float((pred == labels).mean())
        # Paired: images the variant loses (b) and wins (c) against native; drop = (b - c) / n.
        n = len(labels)
        lost = int(((native_pred == labels) & (pred != labels)).sum())
        won = int(((native_pred != labels) & (pred == labels)).sum())
        se = math.sqrt(max(0.0, (lost + won) / n**2 - (lost - won) ** 2 / n**3))
        per_variant[v.name] = {
            "accuracy": round(acc, 4),
            "drop_points": round(100 * (native_acc - acc), 2),
            "drop_se_points": round(100 * se, 2),
            "changed_predictions": round(float((pred != native_pred).mean()), 4),
        }
    summary = {"native_accuracy": round(native_acc, 4), "variants": per_variant}
    for label, keep in (("", lambda v: not v.native and not v.content_changing),
                        ("_content_changing", lambda v: v.content_changing)):
        chosen = [v.name for v in variants if keep(v)]
        if not chosen:
            continue
        drops = [per_variant[n]["drop_points"] for n in chosen]
        worst = max(chosen, key=lambda n: (per_variant[n]["drop_points"], per_variant[n]["changed_predictions"]))
        summary[f"worst_variant{label}"] = {"name": worst, **per_variant[worst]}
        summary[f"mean_drop_points{label}"] = round(float(np.mean(drops)), 2)
        summary[f"variants_within_1_point{label}"] = f"{sum(d <= 1.0 for d in drops)}/{len(drops)}"
    groups: dict[str, list[float]] = {}
    for v in variants:
        if not v.native:
            groups.setdefault(v.group, []).append(per_variant[v.name]["drop_points"])
    summary["mean_drop_points_by_group"] = {g: round(float(np.mean(d)), 2) for g, d in groups.items()}
    return summary


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def report_tables(result: dict) -> str:
    models = result["models"]
    summary = [[name, f"{m['native_accuracy'] * 100:.2f}", m["precision"], m.get("worst_variant", {}).get("name", "-"),
                f"{m.get('worst_variant', {}).get('drop_points', 0):+.2f}",
                f"{m.get('mean_drop_points', 0):+.2f}", m.get("variants_within_1_point", "-"),
                m.get("worst_variant_content_changing", {}).get("name", "-"),
                f"{m.get('worst_variant_content_changing', {}).get('drop_points', 0):+.2f}"]
               for name, m in models.items()]
    out = [f"{result['images']} images; drop = native accuracy - variant accuracy, in points "
           "(worst and mean over the content-preserving variants; content-changing ones apart)",
           table(summary, ["model", "native %", "file", "worst variant", "drop", "mean drop", "<=1pt",
                           "worst content-changing", "drop"])]
    names = list(models)
    rows = []
    for vname, info in result["variants"].items():
        diff = info["mean_abs_pixel_diff_vs_native"]
        rows.append([vname + (" *" if info["content_changing"] else ""), f"{info['identical_to_native'] * 100:.0f}",
                     "-" if diff is None else f"{diff:.2f}",
                     *[f"{models[n]['variants'][vname]['drop_points']:+.1f}" for n in names]])
    out.append("\nper variant: % of images decoded identical to native, mean |pixel diff|, drop in points per model "
               "(* content-changing)")
    out.append(table(rows, ["variant", "same%", "diff", *names]))
    return "\n".join(out)


def compact_json(obj, level: int = 0) -> str:
    """Indented JSON with every object or array of plain values on one line: one line per model per variant."""
    def plain(value) -> bool:
        return not isinstance(value, dict | list) or not value

    values = list(obj.values()) if isinstance(obj, dict) else obj if isinstance(obj, list) else None
    if values is None or all(plain(v) for v in values):
        return json.dumps(obj)
    pad = "  " * (level + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(key)}: {compact_json(value, level + 1)}" for key, value in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    items = [pad + compact_json(value, level + 1) for value in obj]
    return "[\n" + ",\n".join(items) + "\n" + "  " * level + "]"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(prog=f"python benchmarks/{PROG}.py", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA") or DEFAULT_DATA),
                        help="train/<class>/ + test/<class>/ tar.gz (default: $CIFAR10_DATA, else %(default)s)")
    parser.add_argument("--images", type=int, default=1000, help="test images (default %(default)s)")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="models to run (default: the manifest's default, then every other model)")
    parser.add_argument("--variants", type=lambda s: [p for p in s.split(",") if p], metavar="GLOB,...",
                        help="only the variants whose names match one of these glob patterns (native is always run)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model folder (default weights/)")
    parser.add_argument("--batch", type=int, default=BATCH, help="images per onnxruntime call (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default %(default)s)")
    parser.add_argument("--add", action="store_true",
                        help="measure only --models and merge them into the existing --out, which must hold the "
                             "same images and variants (after packaging a new model)")
    parser.add_argument("--list-variants", action="store_true", help="print the variant names and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.images < 1:
        raise UsageError(f"--images must be at least 1, got {args.images}")
    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    if args.variants == []:
        raise UsageError("--variants: give at least one pattern")
    if args.add and not args.models:
        raise UsageError("--add needs --models: the models to measure and merge")
    return args


def previous_results(path: Path, images: int, variants: dict) -> dict:
    """The results file ``--add`` merges into; refused unless it measured the same images and variants."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--add: cannot read {repo_relative(path)}: {first_line(exc)}") from None
    if previous.get("images") != images or set(previous.get("variants") or {}) != set(variants):
        raise UsageError(f"--add: {repo_relative(path)} measured other images or variants "
                         f"({previous.get('images')} images, {len(previous.get('variants') or {})} variants): "
                         "rerun every model instead")
    return previous


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    import onnxruntime as ort

    variants = [v for v in select_variants(args.variants) if available(v)]
    skipped = [v.name for v in select_variants(args.variants) if not available(v)]
    models, default = served_models(args.weights, args.models)
    selection = load_selection(args.data, args.images)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    started, load_at_start = time.perf_counter(), os.getloadavg()
    say(f"{len(selection.names)} images, {len(variants)} variants, {len(models)} models")

    start = time.perf_counter()
    decoded = decode_variants(selection, variants, progress=lambda v, info: say(
        f"  {v.name}: {info['identical_to_native'] * 100:.0f}% identical to native, "
        f"{info['decode_errors']} refused, {info['seconds_make_and_decode']:.1f} s"))
    decode_seconds = time.perf_counter() - start
    images = np.stack(decoded.unique)
    say(f"{len(images)} distinct decoded images ({len(variants) * len(selection.names)} uploads) "
        f"in {decode_seconds:.0f} s")

    command = repo_relative_command(" ".join(["python", f"benchmarks/{PROG}.py", *argv]))
    previous = previous_results(args.out, len(selection.names), decoded.info) if args.add else {}
    rerun = {m.name for m in models}
    # --add keeps every other model's results as measured; the order: the earlier ones, then these.
    results = {name: r for name, r in (previous.get("models") or {}).items() if name not in rerun}
    timings = {name: t for name, t in (previous.get("timings_s") or {}).get("inference_per_model", {}).items()
               if name not in rerun}
    order = [*results, *(m.name for m in models)]
    added = [*previous.get("added", []), {"command": command, "models": sorted(rerun)}] if args.add else []

    def assemble() -> dict:
        done = {name: results[name] for name in order if name in results}
        return {
            "benchmark": PROG,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": previous.get("command", command),
            **({"added": added} if added else {}),
            "complete": len(done) == len(order),
            "models_pending": [name for name in order if name not in results],
            "dataset": "CIFAR-10, JPEG-q75 copy (test split)",
            "images": len(selection.names),
            "selection": selection.describe(args.data),
            "decode_path": {"function": "common.images.decode", "max_pixels": MAX_PIXELS,
                            "budget": f"common.images.PixelBudget({MAX_REQUEST_PIXELS}) per upload "
                                      "(MAX_REQUEST_PIXELS)",
                            "max_decode_bytes": MAX_DECODE_BYTES},
            "inference": {"runtime": "onnxruntime CPUExecutionProvider via serving.models.load_model",
                          "intra_op_threads": 1, "batch": args.batch,
                          "served_file": "NAME.int8.onnx where the manifest's int8 'served' is true, else NAME.onnx",
                          "note": "predictions are computed once per distinct decoded image and shared by the "
                                  "variants that decode to it"},
            "environment": {"onnxruntime": ort.__version__, "pillow": Image.__version__, "numpy": np.__version__,
                            "python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "nice": os.nice(0),
                            "load_average_at_start": [round(x, 2) for x in load_at_start]},
            "default_model": default,
            "headline": "worst_variant and mean_drop_points are over the content-preserving variants "
                        "(content_changing false); the content-changing ones are summarised apart",
            "variants_skipped": skipped,
            "variants": decoded.info,
            "models": done,
            "timings_s": {"make_and_decode": round(decode_seconds, 1), "distinct_images": len(images),
                          "uploads": len(variants) * len(selection.names), "inference_per_model": timings,
                          "total": round(time.perf_counter() - started, 1)},
        }

    # The cheapest models first; the JSON is rewritten after each, so a long run leaves what it has done.
    for model in sorted(models, key=lambda m: -m.images_per_s):
        start = time.perf_counter()
        predictions = predict(model.path, images, args.batch)
        seconds = time.perf_counter() - start
        timings[model.name] = round(seconds, 1)
        results[model.name] = {
            "file": repo_relative(model.path), "precision": model.precision,
            "sha256": hashlib.sha256(model.path.read_bytes()).hexdigest(),
            **score(decoded, selection.labels, variants, predictions),
        }
        say(f"  {model.name} ({repo_relative(model.path)}): native "
            f"{results[model.name]['native_accuracy'] * 100:.2f}%, {len(images)} images in {seconds:.1f} s")
        save(args.out, assemble())
    return assemble()


def save(path: Path, result: dict) -> None:
    try:
        write_text(path, compact_json(result) + "\n")
    except OSError as exc:
        raise RunError(first_line(exc)) from None



def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        if args.list_variants:
            for v in VARIANTS:
                print(f"{v.name:60s} {v.group:14s} {'content-changing' if v.content_changing else ''}")
            return 0
        result = run(args, argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(report_tables(result))
    print(f"wrote {repo_relative(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
