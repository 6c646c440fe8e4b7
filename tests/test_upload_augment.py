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


def _crops(image: torch.Tensor, padding: int) -> torch.Tensor:
    """Every view random_crop (reflect) and a flip can make of one (3, H, W) image: (2 * (2p+1)^2, 3, H, W)."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image[None], (padding,) * 4, mode="reflect")[0]
    views = [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]
    return torch.stack(views + [v.flip(2) for v in views])


def test_the_undamaged_twin_is_the_students_view_before_the_upload_damage():
    """What a distillation teacher is shown with teacher_sees_damage off: each image's very crop, flip and
    cutout square, without the JPEG re-save the student's copy went through."""
    from training.data import DeviceLoader

    images = (smooth_images(32, seed=3) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    augment = Augment(crop_padding=4, pad_mode="reflect", flip=True, cutout=12, upload_jpeg=1.0,
                      upload_jpeg_quality=(30, 30))
    loader = DeviceLoader(images, np.arange(32), 32, torch.device("cpu"), (0.0,) * 3, (1.0,) * 3, augment,
                          shuffle=True, undamaged_twin=True)
    damaged, labels, undamaged = next(iter(loader))
    assert damaged.shape == undamaged.shape == (32, 3, 32, 32)
    holes_damaged, holes_undamaged = (damaged == 0).all(1), (undamaged == 0).all(1)
    assert holes_damaged.any() and torch.equal(holes_damaged, holes_undamaged)  # the same cutout squares
    originals = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    for i, label in enumerate(labels.tolist()):
        views = _crops(originals[label], 4)
        keep = ~holes_undamaged[i]
        twin_errors = (views - undamaged[i]).abs()[:, :, keep].mean(dim=(1, 2))
        student_errors = (views - damaged[i]).abs()[:, :, keep].mean(dim=(1, 2))
        assert twin_errors.min() < 1e-6  # exactly one of the crops and flips of the original: no damage
        assert student_errors.min() > 0.5 / 255  # the student's copy was re-saved at quality 30
        assert student_errors.argmin() == twin_errors.argmin()  # and it is the same view
