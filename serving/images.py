"""Uploaded bytes -> the model's input: one uint8 RGB array of 32x32x3.

What happens to an upload, in order:

1. Pillow identifies the format from the bytes (not from the file name or content type). Every
   format Pillow reads is accepted (PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF, ICO, ...) except EPS,
   whose reader runs Ghostscript. Multi-frame files (GIF, APNG, WebP, TIFF) use their first frame.
2. Decompression-bomb guard: the dimensions come from the header, and an image of more than
   MAX_IMAGE_PIXELS pixels is refused (413) before any pixel is decoded.
3. Large JPEGs are decoded at a reduced scale (libjpeg DCT scaling, never below 4x the target);
   then the pixels are decoded. A truncated or corrupt file is refused (400).
4. The EXIF orientation tag is applied, so phone photos are upright.
5. The largest centred square is cropped (no distortion; a 32x32 image is left untouched) and
   resized to 32x32 with Pillow's bicubic filter, which antialiases when it shrinks (with
   ``reducing_gap=3``: a box-filter reduction to within 3x of the target first, then bicubic).
   Resizing happens in the image's own mode (palettes expanded first; alpha premultiplied).
6. Any mode becomes RGB: transparency (RGBA, LA, P with transparency) is composited onto white;
   16-bit and 32-bit grayscale is scaled to 8 bits (Pillow alone would clip it); L, 1, P, CMYK,
   YCbCr and the rest are converted with Pillow's standard conversions.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 32
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
# EPS is the one reader that shells out (to Ghostscript); no upload should start a subprocess.
_EXCLUDED_FORMATS = {"EPS"}
_COMMON_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_HIGH_DEPTH_GRAY = {"I;16", "I", "F"}  # resized as they are, scaled to 8 bits afterwards
_RESIZABLE = {"RGB", "L", "RGBA", "LA", "CMYK", "YCbCr", "RGBX", *_HIGH_DEPTH_GRAY}


class ImageError(ValueError):
    """An upload that cannot be classified; ``status`` is the HTTP status to answer with."""

    status = 400


class ImageTooLarge(ImageError):
    status = 413


def readable_formats() -> list[str]:
    """Every format Pillow can open (minus EPS); the common ones first, since Pillow tries them in order."""
    Image.init()
    available = set(Image.OPEN) - _EXCLUDED_FORMATS
    common = [name for name in _COMMON_FORMATS if name in available]
    return common + sorted(available - set(common))


_FORMATS = readable_formats()


def _scale_to_uint8(values: np.ndarray, low: float, high: float, sixteen_bit: bool) -> np.ndarray:
    """High-depth gray to 0..255, from the whole image's extrema: 16-bit data scaled by 1/257, float
    data in [0, 1] by 255, data already in 0..255 kept, anything else stretched from its minimum to maximum."""
    values = values.astype(np.float64)
    if sixteen_bit or (low >= 0 and 255 < high <= 65535):
        scaled = values / 257.0
    elif low >= 0 and high <= 1.0 and values.dtype.kind == "f":
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.nan_to_num(np.rint(scaled)), 0, 255).astype(np.uint8)


def resizable(img: Image.Image) -> Image.Image:
    """The image in a mode that resizes correctly: palettes expanded, bilevel to gray, rare modes to RGB."""
    mode = img.mode
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16") and mode != "I;16":
        return img.convert("I")  # big-endian or native 16-bit: Pillow resizes only little-endian I;16
    if mode in ("RGBa", "La", "PA"):
        return img.convert("RGBA")
    return img if mode in _RESIZABLE else img.convert("RGB")


def square_resize(img: Image.Image, size: int = SIZE) -> Image.Image:
    """The centred square, resized to size x size (antialiased bicubic; RGBA/LA with premultiplied alpha)."""
    width, height = img.size
    if (width, height) == (size, size):
        return img
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return img.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side), reducing_gap=REDUCING_GAP)


def to_rgb(small: Image.Image, extrema: tuple | None = None, sixteen_bit: bool = False) -> Image.Image:
    """A resized image as RGB: transparency composited onto white, high-depth gray scaled to 8 bits."""
    mode = small.mode
    if mode == "RGB":
        return small
    if mode in _HIGH_DEPTH_GRAY:
        low, high = extrema if extrema is not None else small.getextrema()
        return Image.fromarray(_scale_to_uint8(np.asarray(small), low, high, sixteen_bit), "L").convert("RGB")
    if mode in ("RGBA", "LA"):
        rgba = small.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return small.convert("RGB")


def prepare(img: Image.Image, size: int = SIZE) -> np.ndarray:
    """A decoded, upright image -> (size, size, 3) uint8 RGB. Resizing comes first, in the image's own
    mode, so that a large upload is never converted (and copied) at full size."""
    sixteen_bit = img.mode.startswith("I;16")
    img = resizable(img)
    extrema = img.getextrema() if img.mode in _HIGH_DEPTH_GRAY else None
    return np.asarray(to_rgb(square_resize(img, size), extrema, sixteen_bit), dtype=np.uint8)


def decode(data: bytes, max_pixels: int, size: int = SIZE) -> np.ndarray:
    """The upload as a (size, size, 3) uint8 RGB array. Raises ImageError / ImageTooLarge."""
    if not data:
        raise ImageError("the file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image dimensions are too large ({exc}); refused before decoding") from None
    except UnidentifiedImageError:
        raise ImageError("not an image: the data is in no format the service can read "
                         "(PNG, JPEG, WebP, GIF, BMP, TIFF, ...)") from None
    except Exception as exc:  # a malformed header makes Pillow's plugins raise many exception types
        raise ImageError(f"the image header is corrupt ({type(exc).__name__})") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageError(f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(f"image is {width}x{height} = {width * height:,} pixels, more than the "
                                f"{max_pixels:,} allowed (MAX_IMAGE_PIXELS); refused before decoding")
        try:
            if img.format == "JPEG" and min(width, height) >= 8 * size:
                img.draft(None, (4 * size, 4 * size))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no full-size copy when there is nothing to turn
            array = prepare(img, size)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"image dimensions are too large to decode ({exc})") from None
        except Exception as exc:  # truncated data, bad compressed streams, unsupported mode conversions
            reason = "the image data is truncated" if "truncated" in str(exc) else \
                f"the image data is corrupt or unsupported ({type(exc).__name__}: {str(exc)[:120]})"
            raise ImageError(reason) from None
    if array.shape != (size, size, 3):
        raise ImageError(f"the image could not be converted to RGB (got shape {array.shape})")
    return array
