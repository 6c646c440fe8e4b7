"""The upload-path augmentation: what a client's resize and a JPEG re-save do to an image, in tensor ops."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import Augment, jpeg_round_trip, upload_resize


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Photo-like test images: low-frequency colour fields with some texture, in [0, 1] on 8-bit levels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
    x = x + 0.05 * torch.rand(n, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round() / 255


@pytest.mark.parametrize("op", [upload_resize, jpeg_round_trip])
def test_keeps_shape_dtype_device_and_8_bit_range(op):
    x = smooth_images(16)
    out = op(x, 1.0)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal((out * 255).round(), out * 255)  # 8-bit levels, as a decoded upload has
    assert not torch.equal(out, x)
    assert torch.equal(op(x, 0.0), x)  # probability 0: nothing changes


def test_probability_picks_a_share_of_the_batch():
    torch.manual_seed(0)
    x = smooth_images(400)
    changed = (jpeg_round_trip(x, 0.25) != x).flatten(1).any(1).float().mean().item()
    assert 0.15 < changed < 0.35


@pytest.mark.parametrize("quality", [40, 75, 90])
def test_jpeg_round_trip_loses_what_pillows_jpeg_loses(quality):
    x = smooth_images(32, seed=1)
    ours = jpeg_round_trip(x, 1.0, (quality, quality))
    pillow = []
    for img in (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy():
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, "JPEG", quality=quality)  # Pillow's default 4:2:0, as most cameras
        pillow.append(np.asarray(Image.open(buffer)))
    pillow = torch.tensor(np.stack(pillow)).permute(0, 3, 1, 2).float() / 255
    loss_ours, loss_pillow = ((ours - x).abs().mean() * 255).item(), ((pillow - x).abs().mean() * 255).item()
    assert loss_ours == pytest.approx(loss_pillow, rel=0.35)  # as much damage as a real encoder does
    assert ((ours - pillow).abs().mean() * 255).item() < max(1.0, 0.5 * loss_pillow)  # and the same damage


def test_resize_round_trip_is_near_the_original_but_not_equal():
    torch.manual_seed(0)
    x = smooth_images(32)
    out = upload_resize(x, 1.0)
    error = ((out - x).abs().mean() * 255).item()
    assert 0.0 < error < 8.0  # a blur and ringing of a few levels, not a different image


def test_recipe_field_is_validated_and_applied_last():
    with pytest.raises(ValueError, match="probabilities"):
        Augment(upload_jpeg=1.5)
    with pytest.raises(ValueError, match="qualities"):
        Augment(upload_jpeg=0.5, upload_jpeg_quality=(60, 40))
    assert Augment(upload_jpeg_quality=[30, 95]).upload_jpeg_quality == (30, 95)  # as read back from JSON
    torch.manual_seed(0)
    x = smooth_images(8)
    out = Augment(flip=True, upload_resize=1.0, upload_jpeg=1.0).before_normalize(x)
    assert out.shape == x.shape and torch.equal((out * 255).round(), out * 255)


def test_recipe_quality_range_sets_how_hard_the_re_save_is():
    x = smooth_images(32, seed=2)

    def damage(qualities):
        torch.manual_seed(0)
        out = Augment(upload_jpeg=1.0, upload_jpeg_quality=qualities).before_normalize(x)
        return ((out - x).abs().mean() * 255).item()

    assert damage((10, 10)) > 2 * damage((95, 95)) > 0
