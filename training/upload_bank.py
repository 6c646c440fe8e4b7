"""Training images as the service receives them from real clients: the upload path run through the real codecs.

``training/augment.py``'s upload damage is a tensor model of a client's resize and JPEG re-save, applied to
each view after its random crop. This bank is the real thing, made once per training set: every image saved
``copies`` times as a client would (enlarged by one of Pillow's filters or sent at 32x32, stored as lossless,
JPEG or WebP at a random quality, or, where a recipe's ``upload_bank_formats`` name them, as a 256-colour PNG or
GIF) and decoded by the service's own ``common.images.decode``. Two things the
tensor model misses come with it: a re-save is aligned with the stored image's 8x8 JPEG grid, as an upload's
is (the training images are JPEG q75 themselves, so a re-save at q50 is a double compression whose tables are
exactly twice the first's, costlier than q30: 86.2% against 87.6% for ``whitened_vgg_fast_robust`` on 2,000
test images), and every filter, encoder and the service's reducing resize are the ones users meet.

A recipe's ``Augment.upload_bank`` is the share of each batch's images replaced by one of their copies, drawn
on the training device before the crop and flip (``DeviceLoader``). Making the bank costs a few minutes on 2
cores for CIFAR-10's 50,000 images and 4 copies; it is cached beside the decoded data, keyed by the images'
hash, the copy count, the seed and ``BANK_FORMAT``.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common import images
from common.files import atomic_write
from training.augment import UPLOAD_BANK_DEFAULT_FORMATS, UPLOAD_BANK_NATIVE_SHARE
from training.data import default_cache_dir

BANK_FORMAT = 1  # bump when the same draw would give other pixels (a new filter, format or range)
SCALES = (1.25, 16.0)    # the other uploads are enlarged by a factor drawn log-uniformly from this range
FILTERS = (Image.Resampling.NEAREST, Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.HAMMING,
           Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
PALETTE_COLOURS = 256    # "palette" and "gif": as many colours as a GIF or an 8-bit PNG holds
QUALITIES = (30, 95)     # JPEG and WebP quality, uniform, both ends included


@dataclass(frozen=True)
class ClientUpload:
    """How one client sends one picture: its size, the filter it was enlarged with, its file format."""

    scale: float
    filter: Image.Resampling
    fmt: str
    quality: int

    @classmethod
    def draw(cls, rng: np.random.Generator, formats: tuple[str, ...] = UPLOAD_BANK_DEFAULT_FORMATS,
             native_share: float = UPLOAD_BANK_NATIVE_SHARE) -> ClientUpload:
        """One client among ``formats`` (``training.augment.UPLOAD_BANK_FORMATS``), drawn uniformly; sent at the
        image's own size with probability ``native_share``, and then among the lossy formats only (a lossless
        32x32 upload is the image itself)."""
        native = rng.random() < native_share
        low, high = SCALES
        scale = 1.0 if native else math.exp(rng.uniform(math.log(low), math.log(high)))
        formats = tuple(f for f in formats if f != "lossless") if native else formats
        return cls(scale=scale, filter=FILTERS[rng.integers(len(FILTERS))], fmt=formats[rng.integers(len(formats))],
                   quality=int(rng.integers(QUALITIES[0], QUALITIES[1] + 1)))

    def file(self, picture: Image.Image) -> bytes:
        """The bytes this client uploads for ``picture`` (RGB)."""
        if self.scale != 1.0:
            side = max(picture.width, round(picture.width * self.scale))
            picture = picture.resize((side, side), self.filter)
        out = io.BytesIO()
        if self.fmt == "lossless":
            picture.save(out, "BMP")  # any lossless format gives the service the same pixels; BMP is the fastest
        elif self.fmt.startswith("jpeg"):
            picture.save(out, "JPEG", quality=self.quality, subsampling=0 if self.fmt == "jpeg-444" else 2)
        elif self.fmt == "webp":
            picture.save(out, "WEBP", quality=self.quality)
        elif self.fmt == "palette":
            picture.quantize(PALETTE_COLOURS, Image.Quantize.MEDIANCUT).save(out, "PNG")
        elif self.fmt == "gif":
            picture.save(out, "GIF")  # Pillow's writer makes the palette itself
        else:
            raise ValueError(f"unknown upload format {self.fmt!r}")
        return out.getvalue()


def received(picture: np.ndarray, upload: ClientUpload) -> np.ndarray:
    """(32, 32, 3) uint8 -> what the service's decode makes of ``upload``'s file of it."""
    return images.decode(upload.file(Image.fromarray(picture)), images.MAX_PIXELS)


def _copies_of(task: tuple[np.ndarray, int, int, int, tuple[str, ...], float]) -> np.ndarray:
    pictures, first_index, copies, seed, formats, native_share = task
    out = np.empty((copies, *pictures.shape), dtype=np.uint8)
    for i, picture in enumerate(pictures):
        for copy in range(copies):
            rng = np.random.default_rng((seed, copy, first_index + i))  # the same draw whatever the chunking
            out[copy, i] = received(picture, ClientUpload.draw(rng, formats, native_share))
    return out


def make_bank(pictures: np.ndarray, copies: int, seed: int, workers: int = 1,
              formats: tuple[str, ...] = UPLOAD_BANK_DEFAULT_FORMATS,
              native_share: float = UPLOAD_BANK_NATIVE_SHARE) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (copies, N, H, W, 3) uint8: each picture as ``copies`` random clients upload it,
    each client sending one of ``formats``, at the picture's size with probability ``native_share``."""
    if copies < 1:
        raise ValueError("an upload bank needs at least one copy per image")
    chunk = 500
    tasks = [(pictures[start:start + chunk], start, copies, seed, tuple(formats), native_share)
             for start in range(0, len(pictures), chunk)]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_copies_of, tasks))
    else:
        parts = [_copies_of(task) for task in tasks]
    return np.concatenate(parts, axis=1) if parts else np.empty((copies, *pictures.shape), dtype=np.uint8)


def _cache_file(pictures: np.ndarray, copies: int, seed: int, formats: tuple[str, ...], native_share: float) -> Path:
    key = f"v{BANK_FORMAT}|{copies}|{seed}|{pictures.shape}|{Image.__version__}|{images.RESAMPLE.name}"
    if tuple(formats) != UPLOAD_BANK_DEFAULT_FORMATS:  # the defaults' key as before: their caches stay valid
        key += f"|{','.join(formats)}"
    if native_share != UPLOAD_BANK_NATIVE_SHARE:
        key += f"|native {native_share!r}"
    digest = hashlib.sha256(key.encode())
    digest.update(np.ascontiguousarray(pictures).data)
    return default_cache_dir() / f"upload-bank-{digest.hexdigest()[:20]}.npy"


def load_bank(pictures: np.ndarray, copies: int, seed: int, workers: int | None = None, say=print,
              formats: tuple[str, ...] = UPLOAD_BANK_DEFAULT_FORMATS,
              native_share: float = UPLOAD_BANK_NATIVE_SHARE) -> np.ndarray:
    """``make_bank`` through the on-disk cache (a damaged cache file is rebuilt, never trusted)."""
    path = _cache_file(pictures, copies, seed, formats, native_share)
    expected = (copies, *pictures.shape)
    if path.exists():
        try:
            bank = np.load(path)
            if bank.shape == expected and bank.dtype == np.uint8:
                return bank
        except (OSError, ValueError):
            pass
    workers = workers or os.cpu_count() or 1
    say(f"upload bank: {len(pictures):,} images x {copies} client uploads through the service's decode "
        f"({workers} processes; cached as {path})")
    bank = make_bank(pictures, copies, seed, workers, formats, native_share)
    try:
        atomic_write(path, lambda f: np.save(f, bank))
    except OSError:
        pass  # a read-only home still trains, only without the cache
    return bank
