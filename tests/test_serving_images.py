"""What the service does to an uploaded file before the model sees it (serving/images.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile
from test_serving_support import cifar_jpegs

from serving.images import ImageError, ImageTooLarge, decode

MAX = 64_000_000
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def mean_color(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1, 3).mean(axis=0)


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


def test_exif_orientation_is_applied():
    # Stored landscape: left half red, right half blue. EXIF 6 = "rotate 90 degrees clockwise to view",
    # so the upright picture is portrait with red on top; its centre square is red above blue.
    stored = Image.new("RGB", (64, 32), RED)
    stored.paste(BLUE, (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode(encode(stored, "JPEG", quality=95, exif=exif), MAX).astype(int)
    np.testing.assert_allclose(mean_color(out[:12]), RED, atol=12)
    np.testing.assert_allclose(mean_color(out[-12:]), BLUE, atol=12)
    # without the tag the same pixels would be read as red left, blue right
    plain = decode(encode(stored, "JPEG", quality=95), MAX).astype(int)
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


def test_downscaling_antialiases():
    # 1-pixel black/white stripes: an antialiasing filter averages them to gray, point sampling would not.
    stripes = np.zeros((320, 320, 3), np.uint8)
    stripes[:, ::2] = 255
    out = decode(encode(Image.fromarray(stripes), "PNG"), MAX).astype(int)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 3


def test_non_square_images_are_centre_cropped_not_squashed():
    img = Image.new("RGB", (96, 32), RED)
    img.paste(GREEN, (32, 0, 64, 32))
    img.paste(BLUE, (64, 0, 96, 32))
    np.testing.assert_array_equal(decode(encode(img, "PNG"), MAX), np.broadcast_to(GREEN, (32, 32, 3)))


def test_small_images_are_upscaled():
    out = decode(encode(Image.new("RGB", (7, 5), BLUE), "PNG"), MAX)
    np.testing.assert_array_equal(out, np.broadcast_to(BLUE, (32, 32, 3)))


def test_large_jpeg_decoded_at_reduced_scale_matches_full_decode():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    photo = Image.fromarray(coarse).resize((1600, 1200), Image.Resampling.BICUBIC)
    data = encode(photo, "JPEG", quality=92)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(
        (32, 32), Image.Resampling.BICUBIC, box=(200, 0, 1400, 1200))).astype(int)
    assert np.abs(decode(data, MAX).astype(int) - full).mean() < 4


def test_decompression_bomb_is_refused_before_any_pixel_is_decoded(monkeypatch):
    bomb = encode(Image.new("1", (20_000, 20_000)), "PNG")  # 400 megapixels in a small file
    assert len(bomb) < 100_000

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLarge) as err:
        decode(bomb, MAX)
    assert err.value.status == 413


def test_the_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (50, 40)), "PNG")
    assert decode(data, 2000).shape == (32, 32, 3)
    with pytest.raises(ImageTooLarge, match="50x40 = 2,000 pixels"):
        decode(data, 1999)


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
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n", "not an image"),  # EPS would run Ghostscript
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image|corrupt"),
])
def test_non_images_are_refused(data, message):
    with pytest.raises(ImageError, match=message) as err:
        decode(data, MAX)
    assert err.value.status == 400
