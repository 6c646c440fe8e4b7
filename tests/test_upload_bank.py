"""The upload bank: training images as real clients upload them, decoded by the service's own path."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from common import images
from training import upload_bank
from training.augment import UPLOAD_BANK_DEFAULT_FORMATS, UPLOAD_BANK_FORMATS, Augment
from training.data import DeviceLoader
from training.recipes import RECIPES, Recipe
from training.run import main as run_main
from training.upload_bank import ClientUpload, load_bank, make_bank, received


def test_a_copy_is_exactly_what_the_service_decodes_from_the_clients_file(cifar):
    picture = cifar.train_images[0]
    resaved = io.BytesIO()
    Image.fromarray(picture).save(resaved, "JPEG", quality=50)  # a 32x32 re-save, aligned with the 8x8 grid
    upload = ClientUpload(scale=1.0, filter=Image.Resampling.BICUBIC, fmt="jpeg", quality=50)
    np.testing.assert_array_equal(received(picture, upload), images.decode(resaved.getvalue(), images.MAX_PIXELS))

    enlarged = ClientUpload(scale=6.5, filter=Image.Resampling.BILINEAR, fmt="lossless", quality=90)
    big = Image.fromarray(picture).resize((208, 208), Image.Resampling.BILINEAR)
    png = io.BytesIO()
    big.save(png, "PNG")
    np.testing.assert_array_equal(received(picture, enlarged), images.decode(png.getvalue(), images.MAX_PIXELS))


def test_draws_cover_the_class_of_uploads():
    rng = np.random.default_rng(0)
    draws = [ClientUpload.draw(rng) for _ in range(2000)]
    native = [d for d in draws if d.scale == 1.0]
    assert 0.2 < len(native) / len(draws) < 0.4
    assert all(d.fmt != "lossless" for d in native)  # a lossless 32x32 upload is the image itself
    enlarged = [d.scale for d in draws if d.scale != 1.0]
    assert min(enlarged) >= upload_bank.SCALES[0] and max(enlarged) <= upload_bank.SCALES[1]
    assert min(enlarged) < 1.5 and max(enlarged) > 10
    assert {d.filter for d in draws} == set(upload_bank.FILTERS)
    assert {d.fmt for d in draws} == set(UPLOAD_BANK_DEFAULT_FORMATS)
    qualities = {d.quality for d in draws}
    assert min(qualities) == upload_bank.QUALITIES[0] and max(qualities) == upload_bank.QUALITIES[1]


def test_palette_clients_send_at_most_256_colours_as_the_service_decodes_them(cifar):
    picture = cifar.train_images[7]
    for fmt in ("palette", "gif"):
        for scale in (1.0, 3.0):
            upload = ClientUpload(scale=scale, filter=Image.Resampling.BILINEAR, fmt=fmt, quality=90)
            file = upload.file(Image.fromarray(picture))
            stored = Image.open(io.BytesIO(file))
            assert stored.format == ("PNG" if fmt == "palette" else "GIF") and stored.mode == "P"
            assert len(np.unique(np.asarray(stored.convert("RGB")).reshape(-1, 3), axis=0)) <= 256
            np.testing.assert_array_equal(received(picture, upload), images.decode(file, images.MAX_PIXELS))
    rng = np.random.default_rng(1)
    draws = [ClientUpload.draw(rng, UPLOAD_BANK_FORMATS) for _ in range(1000)]
    assert {d.fmt for d in draws} == set(UPLOAD_BANK_FORMATS)
    assert {d.fmt for d in draws if d.scale == 1.0} == set(UPLOAD_BANK_FORMATS) - {"lossless"}


def test_a_recipe_sets_the_share_of_uploads_sent_at_the_images_own_size(cifar, tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    draws = [ClientUpload.draw(rng, UPLOAD_BANK_FORMATS, native_share=0.7) for _ in range(2000)]
    native = [d for d in draws if d.scale == 1.0]
    assert 0.65 < len(native) / len(draws) < 0.75 and all(d.fmt != "lossless" for d in native)
    assert {d.fmt for d in draws if d.scale != 1.0} == set(UPLOAD_BANK_FORMATS)
    with pytest.raises(ValueError, match="probabilities"):
        Augment(upload_bank=0.5, upload_bank_native_share=1.5)
    # another share is another bank: cached apart, with more of its copies at 32x32 (re-encoded, never resized)
    monkeypatch.setenv("CIFAR10_CACHE", str(tmp_path))
    pictures = cifar.train_images[:40]
    usual = load_bank(pictures, 2, 0, workers=1, say=lambda _: None)
    all_native = load_bank(pictures, 2, 0, workers=1, say=lambda _: None, native_share=1.0)
    assert len(list(tmp_path.glob("upload-bank-*.npy"))) == 2
    assert not np.array_equal(usual, all_native)
    assert (all_native != pictures).any(axis=(2, 3, 4)).all()  # every copy of every image re-encoded lossy


def test_a_recipe_names_only_known_bank_formats_and_at_least_one_lossy():
    assert Augment(upload_bank_formats=["jpeg", "gif"]).upload_bank_formats == ("jpeg", "gif")  # a list from JSON
    with pytest.raises(ValueError, match="not bmp"):
        Augment(upload_bank_formats=("jpeg", "bmp"))
    with pytest.raises(ValueError, match="lossy"):
        Augment(upload_bank_formats=("lossless",))


def test_a_bank_of_other_formats_is_cached_apart_from_the_default(cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_CACHE", str(tmp_path))
    pictures = cifar.train_images[:30]
    default = load_bank(pictures, 1, 0, workers=1, say=lambda _: None)
    palettes = load_bank(pictures, 1, 0, workers=1, say=lambda _: None, formats=("palette", "gif"))
    assert len(list(tmp_path.glob("upload-bank-*.npy"))) == 2
    assert not np.array_equal(default, palettes)
    np.testing.assert_array_equal(load_bank(pictures, 1, 0, workers=1, say=lambda _: None), default)


def test_the_bank_is_damaged_close_to_the_picture_and_the_same_however_it_is_made(cifar):
    pictures = cifar.train_images[:520]  # two chunks of the work list
    bank = make_bank(pictures, copies=2, seed=3, workers=1)
    assert bank.shape == (2, 520, 32, 32, 3) and bank.dtype == np.uint8
    diff = np.abs(bank.astype(np.int16) - pictures[None].astype(np.int16))
    assert 0.5 < diff.mean() < 12  # every copy went through a lossy or resampling step, none lost the picture
    assert (diff.reshape(2, 520, -1).max(axis=2) > 0).mean() > 0.9
    assert not np.array_equal(bank[0], bank[1])
    np.testing.assert_array_equal(bank, make_bank(pictures, copies=2, seed=3, workers=2))
    assert not np.array_equal(bank, make_bank(pictures, copies=2, seed=4, workers=1))


def test_the_bank_is_cached_and_a_damaged_cache_is_rebuilt(cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_CACHE", str(tmp_path))
    pictures = cifar.train_images[:40]
    made = []
    real = upload_bank.make_bank
    monkeypatch.setattr(upload_bank, "make_bank", lambda *a, **k: made.append(1) or real(*a, **k))
    first = load_bank(pictures, 2, 0, workers=1, say=lambda _: None)
    again = load_bank(pictures, 2, 0, workers=1, say=lambda _: None)
    assert len(made) == 1
    np.testing.assert_array_equal(first, again)
    (cached,) = tmp_path.glob("upload-bank-*.npy")
    cached.write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(load_bank(pictures, 2, 0, workers=1, say=lambda _: None), first)
    assert len(made) == 2


def _loader(pictures, bank, share):
    augment = Augment(upload_bank=share, upload_bank_copies=len(bank))
    return DeviceLoader(pictures, np.zeros(len(pictures), dtype=np.int64), 16, torch.device("cpu"),
                        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), augment, shuffle=False, upload_bank=bank)


def test_the_loader_replaces_its_share_of_each_batch_by_bank_copies(cifar):
    pictures = cifar.train_images[:64]
    bank = np.stack([255 - pictures, pictures // 2])  # two recognisable stand-ins for client copies
    torch.manual_seed(0)
    seen = torch.cat([x for x, _ in _loader(pictures, bank, 0.5)])
    assert seen.shape == (64, 3, 32, 32) and seen.dtype == torch.float32 and 0 <= seen.min() and seen.max() <= 1
    as_uint8 = (seen * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    kind = [next(k for k, c in enumerate((pictures[i], bank[0][i], bank[1][i])) if np.array_equal(as_uint8[i], c))
            for i in range(64)]
    assert 16 < kind.count(0) < 48 and kind.count(1) > 4 and kind.count(2) > 4
    every = torch.cat([x for x, _ in _loader(pictures, bank, 1.0)])
    assert not any(np.array_equal((every[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), pictures[i])
                   for i in range(64))
    np.testing.assert_array_equal(_loader(pictures, bank, 0.5).images.permute(0, 2, 3, 1).numpy(), pictures)
    with pytest.raises(ValueError, match="does not match"):
        _loader(pictures, bank[:, :10], 0.5)


def test_the_teachers_twin_is_the_same_view_of_the_stored_image(cifar):
    """With the bank and teacher_sees_damage off, the loader yields each batch's views of the stored images with
    the same crop, flip and cutout squares as the uploaded copies the student sees."""
    pictures = cifar.train_images[:48]
    bank = pictures[None] // 2  # a stand-in copy that commutes with crop, flip and cutout: pixel // 2
    augment = Augment(crop_padding=4, pad_mode="reflect", flip=True, cutout=10, upload_bank=1.0, upload_bank_copies=1)
    loader = DeviceLoader(pictures, np.zeros(48, dtype=np.int64), 16, torch.device("cpu"), (0.0, 0.0, 0.0),
                          (1.0, 1.0, 1.0), augment, shuffle=True, undamaged_twin=True, upload_bank=bank)
    torch.manual_seed(0)
    batches = list(loader)
    assert len(batches) == 3 and all(len(batch) == 3 for batch in batches)
    for view, labels, twin in batches:
        assert view.shape == twin.shape == (16, 3, 32, 32) and labels.shape == (16,)
        np.testing.assert_array_equal((view * 255).round().numpy(), ((twin * 255).round() // 2).numpy())
        assert (twin == 0).all(1).any()  # the cutout squares are there, in both
    # The draws are the view's, not new ones: the next batch's crops differ from this one's.
    assert not torch.equal(batches[0][2], batches[1][2])
    torch.manual_seed(0)
    plain = DeviceLoader(pictures, np.zeros(48, dtype=np.int64), 16, torch.device("cpu"), (0.0, 0.0, 0.0),
                         (1.0, 1.0, 1.0), augment, shuffle=True, upload_bank=bank)
    torch.testing.assert_close(torch.cat([v for v, _ in plain]), torch.cat([b[0] for b in batches]))


def test_recipe_fields_are_validated():
    with pytest.raises(ValueError, match="probabilities"):
        Augment(upload_bank=1.5)
    with pytest.raises(ValueError, match="upload_bank_copies"):
        Augment(upload_bank=0.5, upload_bank_copies=0)
    base = RECIPES["whitened_vgg_fast_uploads"]
    assert base.augment.upload_bank > 0 and base.start_from
    mixed = dataclasses.replace(base.augment, upload_jpeg=0.3)
    with pytest.raises(ValueError, match="not both"):
        base.replace(teacher_sees_damage=False, augment=mixed)
    with pytest.raises(ValueError, match="start_from"):
        Recipe(model="tutorial", epochs=1, batch_size=4, optimizer="sgd", lr=0.1, init="imagenet",
               start_from="x.pt")


def test_a_run_starts_from_the_checkpoints_weights(fresh_checkpoint, data_archive, tmp_path):
    start = fresh_checkpoint("tutorial")
    code = run_main(["--model", "tutorial", "--start-from", str(start), "--lr", "1e-12", "--data", str(data_archive),
                     "--limit", "64", "--eval-limit", "50", "--val-size", "0", "--epochs", "1", "--batch-size", "32",
                     "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"])
    assert code == 0
    before = torch.load(start, weights_only=False)["state_dict"]
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert after["recipe"]["start_from"] == str(start)
    for name, value in before.items():
        torch.testing.assert_close(after["state_dict"][name], value, rtol=0, atol=1e-6)


def test_starting_from_another_model_is_a_one_line_error(fresh_checkpoint, data_archive, tmp_path, capsys):
    code = run_main(["--model", "tutorial", "--start-from", str(fresh_checkpoint("whitened_vgg_fast")), "--data",
                     str(data_archive), "--limit", "64", "--val-size", "0", "--epochs", "1", "--out",
                     str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "whitened_vgg_fast" in err[0] and "tutorial" in err[0]
