"""An image file's bytes -> the model's input: one uint8 RGB array of 32x32x3.

The service decodes every upload with ``decode`` and training decodes the images of a class-folder data
set with it too (``training.data``), so the model is trained on exactly what it will be given: the same
centred square, the same resampling, alpha on white, EXIF orientation applied.

What happens to an upload, in order. Every limit is checked from the file's header, before any pixel
is decoded:

1. Format. Pillow identifies the format from the bytes (not from the file name or content type),
   trying only the accepted formats: JPEG (and MPO, its multi-picture variant), PNG (and APNG), WebP,
   GIF, BMP, TIFF, AVIF and binary PBM/PGM/PPM/PFM, whose readers only parse headers when a file is
   opened. Any other format Pillow knows (ICO, ICNS, CUR, EPS, PSD, JPEG 2000, ...) is refused (415)
   from its signature, without running its reader: ICO's and ICNS's readers decode the embedded PNG
   inside open(), EPS's runs Ghostscript. So are the files Pillow decodes in Python rather than C
   (run-length-encoded BMP, plain-text PNM, PNM whose maxval is not 255, or 65535 for gray): about a
   second per 10 MiB. Multi-frame files (GIF, APNG, WebP, TIFF, MPO) use their first frame.
2. Dimensions. An image of more than ``max_pixels`` pixels (MAX_IMAGE_PIXELS) is refused (413).
   Pillow's own guard (``Image.MAX_IMAGE_PIXELS``) is set from the same setting while a file is
   opened, and TIFFs are opened by libtiff (Pillow's own reader builds Python objects for every strip
   of an uncompressed TIFF inside open(): 13 s and 800 MiB for a 9 MiB file of 2.4 million strips).
3. Memory. Large JPEGs are decoded at a reduced scale (libjpeg DCT scaling, by up to 8, never below
   4x the target), so a 64-megapixel JPEG decodes 1 megapixel. The memory decoding will take is then
   estimated: the decoded pixels at the bytes per pixel Pillow stores (1 for 1/L/P, 2 for 16-bit gray,
   4 for anything else, RGB included), plus what the format's decoder holds besides: 12 bytes per
   pixel for WebP, 10-12 for AVIF, one strip or tile for TIFF (and a turned copy when it has an
   EXIF orientation: its reader turns the pixels itself), and for a progressive or multi-scan JPEG
   its DCT coefficients at full size (2-8 bytes per pixel), since those cannot be decoded a part at a
   time. An image that needs more than ``max_decode_bytes`` (MAX_DECODE_BYTES, 128 MiB) is refused
   (413). With the default MAX_IMAGE_PIXELS of 64,000,000 that allows: baseline JPEG, gray, palette
   and bilevel images, and 16-bit gray PNG or TIFF, up to 64 MP; RGB or RGBA PNG, BMP, PPM and TIFF
   (and 16-bit PGM) up to 33 MP (an RGB TIFF stored in one strip, 16 MP); progressive JPEG up to
   44 MP (4:2:0) or 22 MP (4:4:4); WebP up to 8 MP; AVIF up to 9 MP (RGB), 8 MP (RGBA) or 33 MP (gray).
4. Request budget. With a ``PixelBudget`` (MAX_REQUEST_PIXELS), the pixels an image will decode
   (after JPEG scaling; a progressive JPEG's coefficients are decoded at full size, so its full size)
   are charged to the request; the image that would overrun the budget is refused (413).
5. Decoding. A truncated or corrupt file is refused (400).
6. Shrinking, before any conversion: the centred square (with the margin the filter reads) is
   box-reduced by an integer factor to within 3x of the target (as Pillow's ``reducing_gap=3`` does),
   one band of rows at a time, each band first converted to a mode that resamples correctly (palettes
   expanded, bilevel to gray, 16-bit gray to 32-bit, alpha premultiplied). No full-size copy is made,
   so a palette, RGBA or 16-bit image costs its decoded size and a few MiB. The square is then resized
   to 32x32 with Pillow's Lanczos filter, which antialiases (``RESAMPLE`` says why Lanczos). A 32x32
   image is left untouched.
7. Colour. Any mode becomes RGB: transparency (RGBA, LA, P with transparency) is composited onto
   white; 16-bit and 32-bit grayscale is scaled to 8 bits from the square's extrema (Pillow alone
   would clip it); L, 1, P, CMYK, YCbCr and the rest go through Pillow's standard conversions.
8. Orientation. The EXIF orientation is applied to the 32x32 result (turning or mirroring commutes
   with taking the centred square and resizing it), so phone photos are upright without a turned
   full-size copy (TIFF excepted, see 3).

Measured by benchmarks/image_cost.py (Pillow 13, each file decoded in a fresh process): no accepted
upload raises the peak RSS by more than about 140 MiB (before these limits: 980 MiB for a 170 KiB
WebP, 800 MiB for a TIFF, 645 MiB for an ICO, 550 MiB for a 62 KiB palette PNG), so a worker with its
models (100-150 MiB) stays near 300 MiB on any request; the slowest decodes run at about 20 ms per
megapixel on a busy 2-core machine (RGBA and palette PNG).
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from PIL import Image, JpegImagePlugin, TiffImagePlugin, UnidentifiedImageError

from common.contract import MAX_IMAGE_PIXELS

SIZE = 32
# Lanczos rather than bicubic: a client's enlargement blurs (bilinear most), and Lanczos's sharper cut-off gives back
# more of the picture. `python benchmarks/upload_robustness.py --images 500` with bicubic (its results file at commit
# 199f825) and with Lanczos (the file since): every served model's mean drop lower, the default's 0.93 -> 0.57
# points, its variants within a point 76 -> 92 of 109. 32x32 uploads are never resampled.
RESAMPLE = Image.Resampling.LANCZOS
RESAMPLE_SUPPORT = 3  # output-pixel widths the filter reads on each side of a pixel (Lanczos a=3; bicubic 2)
REDUCING_GAP = 3.0
MIB = 1024 * 1024
MAX_DECODE_BYTES = 128 * MIB  # one image's decoding memory; keeps a worker near 300 MiB RSS (see above)
MAX_PIXELS = MAX_IMAGE_PIXELS  # the largest image decoded by default (common.contract)
# Formats whose readers parse only headers in open(), in the order Pillow should try them.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "PPM")
_BAND_PIXELS = 1 << 20  # pixels converted at once while shrinking: a few MiB
_HIGH_DEPTH_GRAY = {"I", "F"}  # resampled as they are, scaled to 8 bits afterwards
_RESAMPLABLE = {"RGB", "L", "RGBA", "LA", "RGBa", "La", "CMYK", "YCbCr", "RGBX", *_HIGH_DEPTH_GRAY}
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # else 4
_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow's limits are module globals: one lock so concurrent decodes (threaded workers) never open a
# file under another decode's values, or under the defaults one of them has just restored.
_PILLOW_GLOBALS = threading.Lock()


class ImageError(ValueError):
    """An upload that cannot be classified; ``status`` is the HTTP status to answer with."""

    status = 400


class ImageTooLarge(ImageError):
    status = 413


class UnsupportedFormat(ImageError):
    status = 415


class PixelBudget:
    """The decoded pixels one request may spend on all its images (MAX_REQUEST_PIXELS).

    ``decode(..., budget=b)`` charges each image what it will decode (after JPEG scaling) before
    decoding it; the image that would overrun the budget is refused (413) and nothing is charged.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.spent = 0

    def charge(self, pixels: int) -> None:
        if self.spent + pixels > self.limit:
            raise ImageTooLarge(
                f"this image decodes {pixels:,} pixels and the images before it {self.spent:,}, more than "
                f"the {self.limit:,} one request may decode in all (MAX_REQUEST_PIXELS); send fewer or "
                f"smaller images per request")
        self.spent += pixels


def accepted_formats() -> list[str]:
    """The accepted formats this Pillow build can read (WebP and AVIF need their libraries)."""
    Image.init()
    return [name for name in ACCEPTED_FORMATS if name in Image.OPEN]


_FORMATS = accepted_formats()
_FORMAT_LIST = ", ".join({"WEBP": "WebP", "PPM": "PNM"}.get(name, name) for name in _FORMATS)


# --- opening: headers only ------------------------------------------------------------------------

@contextlib.contextmanager
def _pillow_limits(max_pixels: int | None) -> Iterator[list[warnings.WarningMessage]]:
    """Pillow's module-level guards set for one open(), then restored for the rest of the process:
    its decompression-bomb limit from the service's setting (some readers check it on images they read
    inside open(); WebP before allocating its canvas), and libtiff for every TIFF, because Pillow's own
    reader of uncompressed TIFFs builds Python objects per strip in open() (13 s and 800 MiB for a 9 MiB
    file of 2.4 million one-row strips). Yields the bomb warnings raised meanwhile."""
    with _PILLOW_GLOBALS:
        saved = Image.MAX_IMAGE_PIXELS, TiffImagePlugin.READ_LIBTIFF
        Image.MAX_IMAGE_PIXELS, TiffImagePlugin.READ_LIBTIFF = max_pixels, True
        try:
            # Recorded, not raised, so that the file's own oversize is reported by check_dimensions
            # with its width and height; decode() raises on any other (a reader's inner image).
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", Image.DecompressionBombWarning)
                yield caught
        finally:
            Image.MAX_IMAGE_PIXELS, TiffImagePlugin.READ_LIBTIFF = saved


def _signature_matches(name: str, prefix: bytes) -> bool:
    accept = Image.OPEN[name][1]
    try:
        recognised = accept is not None and accept(prefix)
    except Exception:  # a signature check that cannot handle these bytes: not that format
        return False
    return bool(recognised) and not isinstance(recognised, str)  # a str: "recognised, but unsupported here"


def refused_format(prefix: bytes) -> str | None:
    """The name of a format Pillow knows but the service refuses, recognised from the file's first bytes
    by that format's signature check alone (its reader does not run). None for a signature an accepted
    format shares (MPO's is JPEG's): such a file is a damaged file of the accepted format."""
    if any(_signature_matches(name, prefix) for name in _FORMATS):
        return None
    return next((name for name in sorted(set(Image.OPEN) - set(_FORMATS)) if _signature_matches(name, prefix)), None)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The upload opened by an accepted format's reader (headers read, no pixels decoded)."""
    try:
        with _pillow_limits(max_pixels) as bomb_warnings:
            img = Image.open(io.BytesIO(data), formats=_FORMATS)
    except Image.DecompressionBombError as exc:  # over twice the limit: Pillow's guard raised in open()
        size = header_size(data)
        if size is None:
            raise ImageTooLarge(f"image dimensions are too large ({exc}); refused before decoding") from None
        width, height = size
        raise ImageTooLarge(too_many_pixels(width, height, max_pixels)) from None
    except UnidentifiedImageError:
        name = refused_format(data[:16])
        if name is not None:
            raise UnsupportedFormat(f"{name} images are not accepted; send one of: {_FORMAT_LIST}") from None
        raise ImageError("not an image: the data is in no format the service can read "
                         f"({_FORMAT_LIST})") from None
    except Exception as exc:  # a malformed header makes Pillow's plugins raise many exception types
        raise ImageError(f"the image header is corrupt ({type(exc).__name__})") from None
    check_dimensions(img, max_pixels)
    inner = [w for w in bomb_warnings if issubclass(w.category, Image.DecompressionBombWarning)]
    if inner:  # not the file's own size (checked above): an image its reader read inside open()
        img.close()
        raise ImageTooLarge(f"the file holds an image that is too large ({inner[0].message}); "
                            "refused before decoding")
    return img


def header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header, read again without Pillow's guard, to name them in the refusal
    (not for WebP, whose reader allocates its canvas when it opens: its guard is what stopped it)."""
    try:
        with _pillow_limits(None), Image.open(io.BytesIO(data), formats=[f for f in _FORMATS if f != "WEBP"]) as img:
            return img.size
    except Exception:
        return None


def too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    return (f"image is {width}x{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed "
            "(MAX_IMAGE_PIXELS); refused before decoding")


def check_dimensions(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width < 1 or height < 1:
        img.close()
        raise ImageError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        img.close()
        raise ImageTooLarge(too_many_pixels(width, height, max_pixels))


def refuse_python_decoders(img: Image.Image) -> None:
    """Refuse files whose pixels Pillow decodes in Python (its registered Python decoders): about a
    second per few MiB, and their buffers are copied twice."""
    codecs = {tile[0] for tile in img.tile}
    slow = sorted(codecs & set(Image.DECODERS))
    if slow:
        raise UnsupportedFormat(f"this kind of {img.format} file ({slow[0]} encoding) is not accepted: "
                                "Pillow decodes it slowly, in Python; send PNG or JPEG")


# --- cost: known before decoding -------------------------------------------------------------------

class DecodeCost(NamedTuple):
    pixels: int  # what decoding will produce (and, for budgets, the work it does)
    bytes: int  # peak memory the decoder and the decoded image take, estimated


def is_jpeg(img: Image.Image) -> bool:
    return isinstance(img, JpegImagePlugin.JpegImageFile)  # MPO included


def scale_jpeg_while_decoding(img: Image.Image, size: int) -> None:
    """Ask libjpeg for a reduced scale (1/2, 1/4 or 1/8) that still leaves at least 4x the target."""
    if is_jpeg(img) and min(img.size) >= 8 * size:
        img.draft(None, (4 * size, 4 * size))


def _first_scan_components(data: bytes) -> int | None:
    """How many colour components a JPEG's first scan holds (its SOS header), walking the marker
    segments before it; None when there is no scan."""
    pos = 2  # after SOI
    while pos + 4 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:
            return data[pos + 4]
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def _jpeg_coefficient_bytes(img: Image.Image, data: bytes, full_size: tuple[int, int]) -> int:
    """The whole-image DCT coefficient buffer libjpeg keeps for a progressive or multi-scan JPEG (one
    whose first scan lacks a component), at full size whatever the output scale; 0 for other JPEGs."""
    factors = [(h, v) for _, h, v, _ in getattr(img, "layer", [])] or [(1, 1)]
    multi_scan = "progressive" in img.info or (_first_scan_components(data) or len(factors)) < len(factors)
    if not multi_scan:
        return 0
    width, height = full_size
    h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
    blocks = sum(math.ceil(width * h / (8 * h_max)) * math.ceil(height * v / (8 * v_max)) for h, v in factors)
    return blocks * 64 * 2  # 64 coefficients of 2 bytes per 8x8 block


def _tag_int(tags, tag: int, default: int) -> int:
    value = tags.get(tag, default)
    value = value[0] if isinstance(value, tuple) and value else value
    return value if isinstance(value, int) and value > 0 else default


def _tiff_buffer_bytes(img: Image.Image) -> int:
    """What libtiff holds besides the image: one strip or tile of raw samples (at least 4 bytes per
    pixel: its RGBA path) and the strip or tile offset tables."""
    tags, (width, height) = img.tag_v2, img.size
    if 322 in tags and 323 in tags:  # tiled
        tile_width, tile_height = _tag_int(tags, 322, width), _tag_int(tags, 323, height)
        chunk_pixels = tile_width * tile_height
        chunks = math.ceil(width / tile_width) * math.ceil(height / tile_height)
    else:
        rows = min(_tag_int(tags, 278, height), height)
        chunk_pixels, chunks = width * rows, math.ceil(height / rows)
    bits = tags.get(258, (8,))
    raw_bytes = math.ceil(sum(bits) / 8) if isinstance(bits, tuple) else 4
    return chunk_pixels * max(4, raw_bytes) + chunks * 32


def decode_cost(img: Image.Image, data: bytes, full_size: tuple[int, int]) -> DecodeCost:
    """Pixels decoding will produce and its peak memory, from the header (after JPEG scaling is set)."""
    width, height = img.size
    pixels = width * height
    image_bytes = pixels * _BYTES_PER_PIXEL.get(img.mode, 4)
    extra = 0
    if is_jpeg(img):
        extra = _jpeg_coefficient_bytes(img, data, full_size)
        if extra:  # entropy decoding runs at full size too
            pixels = full_size[0] * full_size[1]
    elif img.format == "WEBP":
        extra = pixels * 12  # libwebp's two RGBA canvases and the RGBA copy Pillow is given
    elif img.format == "AVIF":
        # the RGB(A) copy Pillow is given, and the YUV planes (up to 16 bits) libavif decodes into
        extra = image_bytes + pixels * 2 * len(img.getbands())
    elif img.format == "TIFF":
        extra = _tiff_buffer_bytes(img)
        if img.tag_v2.get(_ORIENTATION, 1) != 1:  # turned by Pillow at full size as it loads
            extra += image_bytes
    return DecodeCost(pixels, image_bytes + extra)


def check_memory(img: Image.Image, full_size: tuple[int, int], cost: DecodeCost, max_decode_bytes: int) -> None:
    if cost.bytes > max_decode_bytes:
        width, height = full_size
        raise ImageTooLarge(
            f"decoding this {width}x{height} {img.format} image ({img.mode}) takes about "
            f"{math.ceil(cost.bytes / MIB)} MiB, more than the {max_decode_bytes // MIB} MiB one image may "
            f"use; refused before decoding (a smaller image, or a baseline JPEG, decodes within it)")


# --- pixels: shrink first, convert small -----------------------------------------------------------

def orientation_of(img: Image.Image) -> int:
    """The EXIF orientation of a loaded image (1 = upright). It is applied to the 32x32 result; TIFF's
    reader is the exception: it turns the full-size pixels itself when it loads them (and then reports 1)."""
    orientation = img.getexif().get(_ORIENTATION, 1)
    return orientation if orientation in _TRANSPOSE_FOR_ORIENTATION else 1


def expanded(img: Image.Image) -> Image.Image:
    """The image in a mode that resamples correctly: palettes expanded, bilevel to gray, 16-bit gray to
    32-bit (Pillow reduces neither P, 1 nor I;16), rare modes to RGB."""
    mode = img.mode
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if mode == "PA":
        return img.convert("RGBA")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16"):
        return img.convert("I")
    return img if mode in _RESAMPLABLE else img.convert("RGB")


def premultiplied(img: Image.Image) -> Image.Image:
    """RGBA/LA with colour premultiplied by alpha, as Pillow resamples them: transparent pixels' colour
    must not bleed into their neighbours."""
    return img.convert(img.mode[:-1] + "a") if img.mode in ("RGBA", "LA") else img


def centred_square(width: int, height: int) -> tuple[float, float, float, float]:
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def reduction_factor(side: float, size: int) -> int:
    """Pillow's reducing_gap rule: box-reduce by the largest integer that keeps REDUCING_GAP x the target."""
    return max(1, int(side / size / REDUCING_GAP))


def region_around(img: Image.Image, box: tuple[float, ...], factor: int, size: int) -> tuple[int, int, int, int]:
    """The box widened by the pixels the resampling filter reads around it, within the image."""
    scale = (box[2] - box[0]) / factor / size
    margin = factor * (math.ceil(RESAMPLE_SUPPORT * max(scale, 1.0)) + 1)
    width, height = img.size
    return (max(0, math.floor(box[0] - margin)), max(0, math.floor(box[1] - margin)),
            min(width, math.ceil(box[2] + margin)), min(height, math.ceil(box[3] + margin)))


def shrink(img: Image.Image, region: tuple[int, int, int, int], factor: int) -> tuple[Image.Image, tuple | None]:
    """The region, expanded, premultiplied and box-reduced by factor, one band of rows at a time so that
    no conversion is made at full size; and the extrema of high-depth gray (for scaling it to 8 bits)."""
    x0, y0, x1, y1 = region
    rows = factor * max(1, _BAND_PIXELS // ((x1 - x0) * factor))
    out, low, high = None, math.inf, -math.inf
    for top in range(y0, y1, rows):
        band = premultiplied(expanded(img.crop((x0, top, x1, min(top + rows, y1)))))
        if band.mode in _HIGH_DEPTH_GRAY:
            band_low, band_high = band.getextrema()
            low, high = min(low, band_low), max(high, band_high)
        if factor > 1:
            band = band.reduce(factor)
        if rows >= y1 - y0:
            out = band
        else:
            if out is None:
                out = Image.new(band.mode, (math.ceil((x1 - x0) / factor), math.ceil((y1 - y0) / factor)))
            out.paste(band, (0, (top - y0) // factor))
    return out, ((low, high) if low <= high else None)


def _scale_to_uint8(values: np.ndarray, low: float, high: float, sixteen_bit: bool) -> np.ndarray:
    """High-depth gray to 0..255, from the extrema of the square: 16-bit data scaled by 1/257, float
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


def to_rgb(small: Image.Image, extrema: tuple | None = None, sixteen_bit: bool = False) -> Image.Image:
    """A resized image as RGB: transparency composited onto white, high-depth gray scaled to 8 bits."""
    mode = small.mode
    if mode in ("RGBa", "La"):
        small, mode = small.convert(mode[:-1] + "A"), mode[:-1] + "A"
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


def square_resize(img: Image.Image, size: int = SIZE) -> tuple[Image.Image, tuple | None]:
    """The centred square at size x size (antialiased ``RESAMPLE``, shrunk first as ``shrink`` says), in a
    resampled mode (RGBa/La premultiplied), and the square's extrema for high-depth gray."""
    width, height = img.size
    if (width, height) == (size, size):
        small = expanded(img)
        return small, None
    box = centred_square(width, height)
    factor = reduction_factor(box[2] - box[0], size)
    region = region_around(img, box, factor, size)
    reduced, extrema = shrink(img, region, factor)
    inner = tuple((value - region[i % 2]) / factor for i, value in enumerate(box))
    return reduced.resize((size, size), RESAMPLE, box=inner), extrema


def prepare(img: Image.Image, size: int = SIZE, orientation: int = 1) -> np.ndarray:
    """A decoded image -> (size, size, 3) uint8 RGB, turned upright by its EXIF ``orientation``."""
    sixteen_bit = img.mode.startswith("I;16")
    small, extrema = square_resize(img, size)
    rgb = to_rgb(small, extrema, sixteen_bit)
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        rgb = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    return np.asarray(rgb, dtype=np.uint8)


def decode(data: bytes, max_pixels: int, size: int = SIZE, *, budget: PixelBudget | None = None,
           max_decode_bytes: int = MAX_DECODE_BYTES) -> np.ndarray:
    """The upload as a (size, size, 3) uint8 RGB array; every limit is checked before pixels are
    decoded. Raises ImageError (400), ImageTooLarge (413) or UnsupportedFormat (415)."""
    if not data:
        raise ImageError("the file is empty")
    img = open_image(data, max_pixels)
    with img:
        refuse_python_decoders(img)
        full_size = img.size
        scale_jpeg_while_decoding(img, size)
        cost = decode_cost(img, data, full_size)
        check_memory(img, full_size, cost, max_decode_bytes)
        if budget is not None:
            budget.charge(cost.pixels)
        try:
            img.load()
            array = prepare(img, size, orientation_of(img))
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"image dimensions are too large to decode ({exc})") from None
        except Exception as exc:  # truncated data, bad compressed streams, unsupported mode conversions
            reason = "the image data is truncated" if "truncated" in str(exc) else \
                f"the image data is corrupt or unsupported ({type(exc).__name__}: {str(exc)[:120]})"
            raise ImageError(reason) from None
    if array.shape != (size, size, 3):
        raise ImageError(f"the image could not be converted to RGB (got shape {array.shape})")
    return array


def to_png(array: np.ndarray) -> bytes:
    """A decoded upload (``decode``'s uint8 RGB array) as PNG bytes: lossless, the very pixels the model is given."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()
