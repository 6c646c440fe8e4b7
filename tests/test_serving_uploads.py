"""What the service does to an uploaded file before the model sees it (common/images.py)."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from hostile_images import bmp_rle8, handmade_png, icon_holding, tiff_of_one_row_strips, transparent_palette
from PIL import IcoImagePlugin, Image, ImageFile, TiffImagePlugin
from test_serving_support import cifar_jpegs

from common import images as uploads
from common.images import ImageError, ImageTooLarge, PixelBudget, UnsupportedFormat, decode

MAX = 64_000_000
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def mean_color(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1, 3).mean(axis=0)


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)


@pytest.fixture(scope="module")
def cifar_image(data_archive) -> tuple[bytes, np.ndarray]:
    """A real CIFAR-10 test JPEG and its pixels as Pillow decodes them (as training saw them)."""
    _, _, data = cifar_jpegs(data_archive)[3]
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_32x32_cifar_jpeg_reaches_the_model_unchanged(cifar_image):
    data, pixels = cifar_image
    out = decode(data, MAX)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                                          ("WEBP", {"lossless": True}), ("PPM", {})])
def test_lossless_formats_give_the_same_pixels(cifar_image, fmt, options):
    _, pixels = cifar_image
    np.testing.assert_array_equal(decode(encode(Image.fromarray(pixels), fmt, **options), MAX), pixels)


def test_lossy_webp_and_jpeg_are_read(cifar_image):
    _, pixels = cifar_image
    for fmt in ("WEBP", "JPEG"):
        out = decode(encode(Image.fromarray(pixels), fmt, quality=95), MAX)
        assert np.abs(out.astype(int) - pixels).mean() < 6, fmt


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_allclose(mean_color(decode(data, MAX)), RED, atol=2)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
@pytest.mark.parametrize("width", [64, 1280])  # 1280: shrunk before it is turned
def test_exif_orientation_is_applied(fmt, width):
    # Stored landscape: left half red, right half blue. EXIF 6 = "rotate 90 degrees clockwise to view",
    # so the upright picture is portrait with red on top; its centre square is red above blue.
    stored = Image.new("RGB", (width, width // 2), RED)
    stored.paste(BLUE, (width // 2, 0, width, width // 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode(encode(stored, fmt, exif=exif), MAX).astype(int)
    np.testing.assert_allclose(mean_color(out[:12]), RED, atol=12)
    np.testing.assert_allclose(mean_color(out[-12:]), BLUE, atol=12)
    # without the tag the same pixels would be read as red left, blue right
    plain = decode(encode(stored, fmt), MAX).astype(int)
    np.testing.assert_allclose(mean_color(plain[:, :12]), RED, atol=12)


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent black
    img.paste((0, 0, 255, 255), (0, 0, 16, 32))  # opaque blue left half
    out = decode(encode(img, "PNG"), MAX)
    np.testing.assert_array_equal(out[:, :16], np.broadcast_to(BLUE, (32, 16, 3)))
    np.testing.assert_array_equal(out[:, 16:], np.broadcast_to(WHITE, (32, 16, 3)))


def test_a_large_transparent_image_is_resized_then_composited_on_white():
    img = Image.new("RGBA", (640, 480), (255, 0, 0, 0))  # transparent *red*: must not bleed into the result
    img.paste((0, 0, 255, 255), (0, 0, 320, 480))  # opaque blue: the left half of the centre square
    out = decode(encode(img, "PNG"), MAX).astype(int)
    np.testing.assert_allclose(mean_color(out[:, :12]), BLUE, atol=1)
    np.testing.assert_allclose(mean_color(out[:, 20:]), WHITE, atol=1)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 2  # only blue and white mix: no red tint at the edge


def test_gray_with_alpha_and_palette_with_transparency():
    la = Image.new("LA", (32, 32), (0, 0))
    np.testing.assert_array_equal(decode(encode(la, "PNG"), MAX), np.full((32, 32, 3), 255, np.uint8))
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.paste(0, (0, 0, 16, 32))  # left half: transparent palette entry -> white
    out = decode(encode(palette, "PNG", transparency=0), MAX)
    np.testing.assert_array_equal(out[0, 0], WHITE)
    np.testing.assert_array_equal(out[0, 31], GREEN)


@pytest.mark.parametrize("mode, value, expected", [("L", 77, (77, 77, 77)), ("1", 1, WHITE),
                                                   ("P", 0, (10, 20, 30))])
def test_gray_bilevel_and_palette_images_become_rgb(mode, value, expected):
    img = Image.new(mode, (32, 32), value)
    if mode == "P":
        img.putpalette([10, 20, 30] + [0] * 765)
    out = decode(encode(img, "PNG"), MAX)
    np.testing.assert_array_equal(out, np.broadcast_to(expected, (32, 32, 3)))


def test_cmyk_jpeg_becomes_rgb():
    out = decode(encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95), MAX)
    np.testing.assert_allclose(mean_color(out), RED, atol=8)  # no black, full magenta + yellow = red


def test_16_bit_gray_is_scaled_not_clipped():
    # Pillow's own I;16 -> RGB conversion clips at 255, which would turn this mid-gray white.
    img = Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16))
    assert Image.open(io.BytesIO(encode(img, "PNG"))).mode == "I;16"
    np.testing.assert_array_equal(decode(encode(img, "PNG"), MAX), np.full((32, 32, 3), 128, np.uint8))
    gradient = Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16))
    out = decode(encode(gradient, "TIFF"), MAX)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and len(np.unique(out)) > 200


def test_big_endian_16_bit_tiff_and_float_images():
    values = np.full((40, 40), 65535, dtype=">u2")
    values[:, :20] = 0
    big_endian = Image.frombytes("I;16B", (40, 40), values.tobytes())
    out = decode(encode(big_endian, "TIFF"), MAX)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    floats = Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32), "F")
    out = decode(encode(floats, "TIFF"), MAX)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


@pytest.mark.parametrize("mode", ["RGB", "P", "1", "RGBA"])
def test_downscaling_antialiases(mode):
    # 1-pixel black/white stripes: an antialiasing filter averages them to gray, point sampling would not
    # (Pillow resizes palette and bilevel images by point sampling: they are expanded first).
    stripes = np.zeros((320, 320), np.uint8)
    stripes[:, ::2] = 255
    out = decode(encode(Image.fromarray(stripes).convert(mode), "PNG"), MAX).astype(int)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 3


def test_images_are_shrunk_in_bands_with_the_same_result(monkeypatch):
    # Large images are expanded and reduced a band of rows at a time (no full-size copy); the bands
    # must join without a seam: the result is the same as one band's.
    noise = np.random.default_rng(1).integers(0, 256, size=(300, 400, 4), dtype=np.uint8)
    data = encode(Image.fromarray(noise, "RGBA"), "PNG")
    whole = decode(data, MAX)
    monkeypatch.setattr(uploads, "_BAND_PIXELS", 1000)
    np.testing.assert_array_equal(decode(data, MAX), whole)


def test_a_large_palette_image_is_reduced_before_it_is_expanded(monkeypatch):
    # 16 megapixels of palette indices (a few KiB of PNG): expanding them to RGBA at full size would
    # take 64 MiB; only bands of about a megapixel may be converted.
    png = handmade_png(4000, 4000, 3, extra_chunks=transparent_palette())  # 0: red, transparent; 1: green
    assert len(png) < 100_000
    converted = []
    convert = Image.Image.convert

    def recording_convert(self, mode=None, *args, **kwargs):
        converted.append(self.width * self.height)
        return convert(self, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", recording_convert)
    start = time.perf_counter()
    out = decode(png, MAX)
    assert time.perf_counter() - start < 2
    np.testing.assert_array_equal(out, np.full((32, 32, 3), 255, np.uint8))  # transparent -> white
    assert converted and max(converted) <= 2 * uploads._BAND_PIXELS


def test_a_large_16_bit_gray_image_is_reduced_and_scaled():
    # Pillow cannot box-reduce I;16 itself: it is expanded to 32-bit a band at a time.
    img = Image.fromarray(np.full((900, 1200), 32896, dtype=np.uint16))
    np.testing.assert_array_equal(decode(encode(img, "PNG"), MAX), np.full((32, 32, 3), 128, np.uint8))


def test_non_square_images_are_centre_cropped_not_squashed():
    img = Image.new("RGB", (96, 32), RED)
    img.paste(GREEN, (32, 0, 64, 32))
    img.paste(BLUE, (64, 0, 96, 32))
    np.testing.assert_array_equal(decode(encode(img, "PNG"), MAX), np.broadcast_to(GREEN, (32, 32, 3)))


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (97, 61), (1000, 700)])
def test_the_banded_shrink_gives_pillows_own_resize_of_the_centred_square(size):
    """The decode crops a margin around the square and box-reduces it in bands to save memory; the pixels must be
    Pillow's resize of the whole image (its filter reads RESAMPLE_SUPPORT output pixels past the square's edge)."""
    width, height = size
    noise = Image.fromarray(np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8))
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    pillow = np.asarray(noise.resize((32, 32), uploads.RESAMPLE, box=box, reducing_gap=uploads.REDUCING_GAP))
    diff = np.abs(decode(encode(noise, "PNG"), MAX).astype(int) - pillow)
    # Reduced by 2 first (1000x700), Pillow aligns its reduce box to the whole image, the decode to the margin.
    assert diff.max() <= (2 if side >= 3 * 2 * 32 else 0)


def test_small_images_are_upscaled():
    out = decode(encode(Image.new("RGB", (7, 5), BLUE), "PNG"), MAX)
    np.testing.assert_array_equal(out, np.broadcast_to(BLUE, (32, 32, 3)))


def test_large_jpeg_decoded_at_reduced_scale_matches_full_decode():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    photo = Image.fromarray(coarse).resize((1600, 1200), Image.Resampling.BICUBIC)
    data = encode(photo, "JPEG", quality=92)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(
        (32, 32), uploads.RESAMPLE, box=(200, 0, 1400, 1200))).astype(int)
    assert np.abs(decode(data, MAX).astype(int) - full).mean() < 4


def test_decompression_bomb_is_refused_before_any_pixel_is_decoded(no_pixel_decoding):
    bomb = encode(Image.new("1", (20_000, 20_000)), "PNG")  # 400 megapixels in a small file
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge, match="20000x20000 = 400,000,000 pixels, more than the 64,000,000") as err:
        decode(bomb, MAX)
    assert err.value.status == 413


def test_the_pixel_limit_is_configurable():
    pillows_own = Image.MAX_IMAGE_PIXELS
    data = encode(Image.new("RGB", (50, 40)), "PNG")
    assert decode(data, 2000).shape == (32, 32, 3)
    with pytest.raises(ImageTooLarge, match="50x40 = 2,000 pixels"):
        decode(data, 1999)
    assert Image.MAX_IMAGE_PIXELS == pillows_own  # set from the setting only while the service opens a file


def test_an_icon_holding_a_huge_png_is_refused_without_running_the_icon_reader(monkeypatch):
    # Pillow's ICO reader decodes the embedded PNG inside Image.open(): 169 megapixels here, from a
    # 21 KiB file (2 s and 680 MiB when it was accepted). Icons are refused from their signature.
    hostile = icon_holding(handmade_png(13_000, 13_000, 0, depth=1))
    assert len(hostile) < 40_000

    def icon_reader(self):
        raise AssertionError("the ICO reader ran")

    monkeypatch.setattr(IcoImagePlugin.IcoImageFile, "_open", icon_reader)
    start = time.perf_counter()
    with pytest.raises(UnsupportedFormat, match="ICO images are not accepted; send one of: JPEG, PNG") as err:
        decode(hostile, MAX)
    assert err.value.status == 415 and time.perf_counter() - start < 0.5


@pytest.mark.parametrize("data, kind", [
    (b"\0\0\1\0" + b"\0" * 60, "ICO"),
    (b"icns" + b"\0" * 60, "ICNS"),
    (b"8BPS\0\1" + b"\0" * 60, "PSD"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n", "EPS"),  # EPS would run Ghostscript
])
def test_formats_outside_the_accepted_list_are_refused_by_name(data, kind):
    with pytest.raises(UnsupportedFormat, match=f"^{kind} images are not accepted") as err:
        decode(data, MAX)
    assert err.value.status == 415


@pytest.mark.parametrize("data, encoding", [(bmp_rle8(40, 40), "bmp_rle"),
                                            (b"P2\n2 2\n255\n0 64 128 255\n", "ppm_plain")])
def test_files_pillow_decodes_in_python_are_refused(data, encoding):
    assert Image.open(io.BytesIO(data)).tile[0][0] == encoding  # valid files
    with pytest.raises(UnsupportedFormat, match=f"{encoding} encoding.*not accepted") as err:
        decode(data, MAX)
    assert err.value.status == 415


def test_a_tiff_of_many_strips_is_read_by_libtiff_without_python_objects_per_strip():
    # Pillow's own reader of uncompressed TIFFs builds a tile object per strip in open(): for
    # 2.4 million strips (9 MiB) that was 13 s and 800 MiB. libtiff reads them in C.
    data = tiff_of_one_row_strips(20, 200_000)
    tracemalloc.start()
    try:
        out = decode(data, MAX)
        with pytest.raises(ImageTooLarge, match="20x200000 = 4,000,000 pixels"):  # over twice the limit
            decode(data, 1_000_000)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, np.zeros((32, 32, 3), np.uint8))
    assert python_peak < 5_000_000
    assert TiffImagePlugin.READ_LIBTIFF is False  # the process's setting is left as it was


def test_images_that_would_take_too_much_memory_to_decode_are_refused_before_decoding(no_pixel_decoding):
    # 6000 x 6000 RGBA: 36 megapixels are within MAX_IMAGE_PIXELS, but Pillow stores 4 bytes a pixel
    rgba = handmade_png(6000, 6000, 6, rows=1)
    with pytest.raises(ImageTooLarge, match=r"6000x6000 PNG image \(RGBA\) takes about 138 MiB, more than "
                                            r"the 128 MiB one image may use; refused before decoding") as err:
        decode(rgba, MAX)
    assert err.value.status == 413
    with pytest.raises(ImageTooLarge, match="takes about"):  # the cap is a parameter
        decode(handmade_png(2000, 2000, 6, rows=1), MAX, max_decode_bytes=10 * uploads.MIB)


def test_progressive_jpeg_and_webp_are_costed_by_their_decoders_memory():
    photo = Image.linear_gradient("L").resize((1024, 1024)).convert("RGB")
    baseline, progressive = encode(photo, "JPEG"), encode(photo, "JPEG", progressive=True)
    limit = 3 * uploads.MIB
    # A baseline JPEG decodes at 1/8 scale (128x128); a progressive one keeps every DCT coefficient
    # at full size (3 bytes a pixel at 4:2:0), and WebP's decoder 16 bytes a pixel.
    assert decode(baseline, MAX, max_decode_bytes=limit).shape == (32, 32, 3)
    with pytest.raises(ImageTooLarge, match=r"1024x1024 JPEG image \(RGB\) takes about 4 MiB, more than the 3 MiB"):
        decode(progressive, MAX, max_decode_bytes=limit)
    with pytest.raises(ImageTooLarge, match=r"1024x1024 WEBP image \(RGB\) takes about 16 MiB"):
        decode(encode(photo, "WEBP"), MAX, max_decode_bytes=15 * uploads.MIB)
    assert decode(encode(photo, "WEBP"), MAX, max_decode_bytes=16 * uploads.MIB).shape == (32, 32, 3)


def test_a_pixel_budget_is_charged_what_each_image_decodes():
    budget = PixelBudget(120_000)
    decode(encode(Image.new("RGB", (200, 200)), "PNG"), MAX, budget=budget)
    assert budget.spent == 40_000
    decode(encode(Image.new("RGB", (2048, 2048)), "JPEG"), MAX, budget=budget)  # decoded at 1/8 scale
    assert budget.spent == 40_000 + 256 * 256
    with pytest.raises(ImageTooLarge, match=r"this image decodes 40,000 pixels and the images before it "
                                            r"105,536, more than the 120,000 one request may decode in all "
                                            r"\(MAX_REQUEST_PIXELS\)") as err:
        decode(encode(Image.new("RGB", (200, 200)), "PNG"), MAX, budget=budget)
    assert err.value.status == 413 and budget.spent == 105_536  # the refused image is not charged
    assert decode(encode(Image.new("RGB", (50, 50)), "PNG"), MAX, budget=PixelBudget(2500)).shape == (32, 32, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(cifar_image, fmt):
    _, pixels = cifar_image
    big = Image.fromarray(pixels).resize((256, 256))
    data = encode(big, fmt)
    with pytest.raises(ImageError, match="truncated|corrupt") as err:
        decode(data[: len(data) * 2 // 3], MAX)
    assert err.value.status == 400


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, this is not an image\n" * 20, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image|corrupt"),
])
def test_non_images_are_refused(data, message):
    with pytest.raises(ImageError, match=message) as err:
        decode(data, MAX)
    assert err.value.status == 400
