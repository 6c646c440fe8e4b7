"""The three data forms, the cache, bad sources, and the on-device batch pipeline.

The forms are read from the committed fixtures (``tests/fixtures``, real CIFAR-10 images): the class-folder
archive, the same tree unpacked, and the canonical ``cifar-10-batches-py`` pickles as an archive, a folder and
a folder holding it. Two checks compare the fixtures with the full data set and skip without it.
"""

import gzip
import importlib.util
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training import data as data_module
from training.augment import Augment, cutout, random_crop, random_flip
from training.data import CLASSES, DataError, DeviceLoader, load_cifar10, split_validation

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_cifar_fixture", FIXTURES / "make_cifar_fixture.py")
fixture_maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture_maker)
TRAIN, TEST = 10 * fixture_maker.TRAIN_PER_CLASS, 10 * fixture_maker.TEST_PER_CLASS
CANONICAL_TRAIN = 10 * fixture_maker.CANONICAL_TRAIN_PER_CLASS
CANONICAL_TEST = 10 * fixture_maker.CANONICAL_TEST_PER_CLASS


@pytest.fixture(scope="module")
def small_archive(data_archive, tmp_path_factory) -> Path:
    """A copy of the committed class-folder archive (a copy: one test changes its modification time)."""
    out = tmp_path_factory.mktemp("small") / "cifar-small.tar.gz"
    shutil.copyfile(data_archive, out)
    return out


@pytest.fixture(scope="module")
def small_tree(small_archive, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    with tarfile.open(small_archive) as tar:
        tar.extractall(root, filter="data")
    (root / "README.txt").write_text("not an image, outside any class folder: ignored")
    return root


@pytest.fixture(scope="module")
def canonical_archive(tmp_path_factory) -> Path:
    """A copy of the committed ``cifar-10-python.tar.gz``-style archive of canonical pickles."""
    out = tmp_path_factory.mktemp("canonical") / "cifar-10-python.tar.gz"
    shutil.copyfile(fixture_maker.CANONICAL_FIXTURE, out)
    return out


@pytest.fixture(scope="module")
def canonical_folder(canonical_archive, tmp_path_factory) -> Path:
    """The ``cifar-10-batches-py`` folder, unpacked as users unpack the download."""
    root = tmp_path_factory.mktemp("canonical-folder")
    with tarfile.open(canonical_archive) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar-10-batches-py"


def write_canonical(folder: Path, train_x, train_y, test_x, test_y, label_names=CLASSES) -> Path:
    """The cifar-10-batches-py pickle layout, labels given as indices into ``label_names``."""
    folder.mkdir(parents=True)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)

    def dump(name, x, y):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": [int(v) for v in y], b"batch_label": name.encode()}, f)

    for i, part in enumerate(np.array_split(np.arange(len(train_x)), 5), start=1):
        dump(f"data_batch_{i}", train_x[part], train_y[part])
    dump("test_batch", test_x, test_y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in label_names]}, f)
    return folder


def assert_same(a, b):
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_archive_and_tree_load_to_identical_arrays(small_archive, small_tree, tmp_path):
    from_archive = load_cifar10(small_archive, cache_dir=tmp_path / "c1")
    assert from_archive.train_images.shape == (TRAIN, 32, 32, 3) and from_archive.train_images.dtype == np.uint8
    assert from_archive.test_images.shape == (TEST, 32, 32, 3)
    assert np.bincount(from_archive.train_labels).tolist() == [TRAIN // 10] * 10
    assert np.bincount(from_archive.test_labels).tolist() == [TEST // 10] * 10
    from_tree = load_cifar10(small_tree, cache_dir=tmp_path / "c2")
    assert_same(from_archive, from_tree)


def test_canonical_archive_folder_and_its_parent_hold_the_same_real_images(small_archive, canonical_archive,
                                                                          canonical_folder, tmp_path):
    """The canonical fixture holds the decoded pixels of the JPEG fixture's first images: all forms agree."""
    jpegs = load_cifar10(small_archive, cache_dir=tmp_path / "c1")
    from_archive = load_cifar10(canonical_archive, cache_dir=tmp_path / "c2")
    assert from_archive.train_images.shape == (CANONICAL_TRAIN, 32, 32, 3)
    assert from_archive.test_images.shape == (CANONICAL_TEST, 32, 32, 3)
    np.testing.assert_array_equal(from_archive.train_images, jpegs.train_images[:CANONICAL_TRAIN])
    np.testing.assert_array_equal(from_archive.train_labels, jpegs.train_labels[:CANONICAL_TRAIN])
    np.testing.assert_array_equal(from_archive.test_images, jpegs.test_images[:CANONICAL_TEST])
    np.testing.assert_array_equal(from_archive.test_labels, jpegs.test_labels[:CANONICAL_TEST])
    for source in (canonical_folder, canonical_folder.parent):  # the folder itself, or the folder holding it
        assert_same(from_archive, load_cifar10(source, cache_dir=tmp_path / "c3"))


def test_canonical_fixture_reads_as_torchvision_reads_it(canonical_folder, tmp_path):
    """torchvision's CIFAR10 reader written out (pickle with encoding="latin1", str keys): the pickles are
    shaped as the originals, not only as this project's loader (encoding="bytes") expects."""
    def load(name):
        with open(canonical_folder / name, "rb") as f:
            return pickle.load(f, encoding="latin1")

    batches = [load(f"data_batch_{i}") for i in range(1, 6)]
    assert all(set(b) == {"batch_label", "labels", "data", "filenames"} for b in batches)
    assert [b["batch_label"] for b in batches] == [f"training batch {i} of 5" for i in range(1, 6)]
    images = np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
    labels = [label for b in batches for label in b["labels"]]
    meta = load("batches.meta")
    assert meta["label_names"] == list(CLASSES) and meta["num_vis"] == 3072
    assert meta["num_cases_per_batch"] == len(batches[0]["labels"])
    ours = load_cifar10(canonical_folder, cache_dir=tmp_path)
    np.testing.assert_array_equal(images, ours.train_images)
    assert labels == ours.train_labels.tolist()
    assert load("test_batch")["batch_label"] == "testing batch 1 of 1"


def test_canonical_labels_map_by_name_not_position(small_archive, tmp_path):
    """Canonical pickles whose batches.meta lists the classes in another order."""
    d = load_cifar10(small_archive, cache_dir=tmp_path / "c1")
    shuffled_names = CLASSES[::-1]
    to_local = {CLASSES.index(n): i for i, n in enumerate(shuffled_names)}
    canonical = write_canonical(
        tmp_path / "cifar-10-batches-py", d.train_images, [to_local[v] for v in d.train_labels],
        d.test_images, [to_local[v] for v in d.test_labels], shuffled_names)
    assert_same(d, load_cifar10(canonical, cache_dir=tmp_path / "c2"))


def test_fixture_is_the_start_of_the_full_data_set(cifar_full, data_archive, tmp_path):
    """Where the full archive is present: the fixture's images are its first ones, so slices agree."""
    small = load_cifar10(data_archive, cache_dir=tmp_path)
    np.testing.assert_array_equal(small.train_images, cifar_full.train_images[:TRAIN])
    np.testing.assert_array_equal(small.train_labels, cifar_full.train_labels[:TRAIN])
    np.testing.assert_array_equal(small.test_images, cifar_full.test_images[:TEST])
    np.testing.assert_array_equal(small.test_labels, cifar_full.test_labels[:TEST])


def test_committed_fixtures_are_what_the_generator_makes(full_data):
    """tests/fixtures/make_cifar_fixture.py run again gives the committed files (their tar bytes: gzip may
    differ between zlib builds)."""
    import hashlib

    if full_data.is_dir() or hashlib.sha256(full_data.read_bytes()).hexdigest() != fixture_maker.SOURCE_SHA256:
        pytest.skip(f"the fixtures are made from cifar10-jpeg.tar.gz (sha256 {fixture_maker.SOURCE_SHA256[:12]}...); "
                    f"{full_data} is another source")
    for path, tar_bytes in fixture_maker.build(full_data).items():
        assert gzip.decompress(path.read_bytes()) == tar_bytes, f"{path.name} is stale: run {fixture_maker.__file__}"


def test_prefix_of_the_training_split_is_class_balanced(small_archive, tmp_path):
    d = load_cifar10(small_archive, cache_dir=tmp_path)
    assert sorted(d.train_labels[:10].tolist()) == list(range(10))


def test_decoded_pixels_match_pillow(small_tree, tmp_path):
    from PIL import Image

    d = load_cifar10(small_tree, cache_dir=tmp_path)
    first_cat = sorted((small_tree / "test" / "cat").iterdir())[0]
    expected = np.asarray(Image.open(first_cat).convert("RGB"))
    index = int(np.flatnonzero(d.test_labels == CLASSES.index("cat"))[0])
    np.testing.assert_array_equal(d.test_images[index], expected)


def test_second_load_comes_from_the_cache_and_a_changed_source_is_reread(small_archive, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_cifar10(small_archive, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(source):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(data_module, "_read_source", no_decoding)
    assert_same(first, load_cifar10(small_archive, cache_dir=cache))
    monkeypatch.undo()
    os.utime(small_archive, ns=(1, 1))  # a newer/different source file must not be served stale
    load_cifar10(small_archive, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2


def test_unknown_and_missing_class_folders_are_named(small_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(small_tree, tree)
    (tree / "train" / "cat").rename(tree / "train" / "kitten")
    with pytest.raises(DataError) as err:
        load_cifar10(tree, cache_dir=tmp_path / "c")
    assert "unknown class(es) kitten" in str(err.value) and "missing class(es) cat" in str(err.value)


def test_bad_sources_give_one_line_errors(small_archive, tmp_path):
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(small_archive.read_bytes()[: small_archive.stat().st_size // 2])
    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(os.urandom(4096))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    for source, expected in ((tmp_path / "nope", "does not exist"), (corrupt, "corrupt"),
                             (random_bytes, "not a CIFAR-10 source"), (empty_dir, "no train/<class>/")):
        with pytest.raises(DataError) as err:
            load_cifar10(source, cache_dir=tmp_path / "c")
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_an_undecodable_image_is_named(small_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(small_tree, tree)
    (tree / "test" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_cifar10(tree, cache_dir=tmp_path / "c")


def test_missing_data_argument_uses_the_environment(monkeypatch, small_archive, tmp_path):
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    with pytest.raises(DataError, match="--data"):
        load_cifar10(None, cache_dir=tmp_path)
    monkeypatch.setenv("CIFAR10_DATA", str(small_archive))
    assert len(load_cifar10(None, cache_dir=tmp_path).train_labels) == TRAIN


def test_validation_split_is_fixed_and_disjoint():
    x = np.arange(100).reshape(100, 1, 1, 1).repeat(3, 3).astype(np.uint8)
    y = np.arange(100) % 10
    (tx, _), (vx, _) = split_validation(x, y, 20)
    (tx2, _), (vx2, _) = split_validation(x, y, 20)
    assert len(vx) == 20 and len(tx) == 80
    np.testing.assert_array_equal(vx, vx2)
    assert not set(tx[:, 0, 0, 0]) & set(vx[:, 0, 0, 0])
    with pytest.raises(DataError):
        split_validation(x, y, 100)


def loader_for(n: int, **kwargs) -> DeviceLoader:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(32, 1).repeat(32, 2).repeat(3, 3)
    return DeviceLoader(images, np.arange(n), batch_size=kwargs.pop("batch_size", 8), device=torch.device("cpu"),
                        mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255), **kwargs)


def test_loader_visits_every_image_once_per_epoch_in_a_new_order():
    loader = loader_for(50, shuffle=True)
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        labels = torch.cat([y for _, y in loader])
        assert sorted(labels.tolist()) == list(range(50))
        orders.append(labels.tolist())
    assert orders[0] != orders[1]
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    assert torch.allclose(x[:, 0, 0, 0], y.float())  # normalization (x/255 - 0) / (1/255) == raw value


def test_distributed_ranks_take_disjoint_shards_of_the_same_permutation():
    shards = []
    for rank in range(2):
        loader = loader_for(50, shuffle=True, rank=rank, world_size=2, batch_size=4)
        loader.set_epoch(3)
        shards.append(torch.cat([y for _, y in loader]).tolist())
    assert len(shards[0]) == len(shards[1]) == 25
    assert not set(shards[0]) & set(shards[1])


def test_augmentations_keep_shape_and_range_and_do_what_they_say():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    assert torch.equal(random_crop(x, 0), x)
    cropped = random_crop(x, 4, "reflect")
    assert cropped.shape == x.shape
    # every crop is a shifted window of the reflect-padded image
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(16):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 9, 9, 32, 32)
        assert (windows == cropped[i][:, None, None]).flatten(3).all(3).all(0).any()
    flipped = random_flip(x)
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(2)) for f, o in zip(flipped, x, strict=True))
    holes = cutout(torch.ones(64, 3, 32, 32), 8)
    zeros = (holes == 0).all(1).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() > 0  # full 8x8 squares, clipped at the border
    full = Augment(crop_padding=4, pad_mode="reflect", flip=True, rotation=15, brightness=0.2, contrast=0.2,
                   saturation=0.2, hue=0.1)
    out = full.before_normalize(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_color_jitter_hue_keeps_gray_pixels_gray():
    from training.augment import color_jitter

    gray = torch.rand(8, 1, 32, 32).repeat(1, 3, 1, 1)
    out = color_jitter(gray, 0, 0, 0, 0.5)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)


def test_canonical_folder_missing_a_batch_is_named(canonical_folder, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(canonical_folder, folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(folder, cache_dir=tmp_path / "c")


def _odd_images() -> dict[str, bytes]:
    """Files a class-folder data set may hold that a 32x32 RGB JPEG is not: other sizes and shapes, alpha,
    palettes, 16-bit gray, an EXIF orientation."""
    from PIL import Image

    def encode(img, fmt, **params) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **params)
        return buf.getvalue()

    wide = Image.linear_gradient("L").resize((96, 48)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown upright after a quarter turn
    return {
        "wide.png": encode(wide, "PNG"),
        "translucent.png": encode(Image.new("RGBA", (64, 48), (200, 10, 10, 128)), "PNG"),
        "palette.gif": encode(wide.convert("P"), "GIF"),
        "gray16.png": encode(Image.linear_gradient("L").resize((40, 40)).convert("I;16"), "PNG"),
        "turned.jpg": encode(wide, "JPEG", quality=90, exif=exif),
    }


def test_class_folder_images_are_decoded_exactly_as_the_service_decodes_uploads(tmp_path):
    """One decode (common.images) for training data and uploads: what the model trains on is what it is given."""
    from common import images

    files = _odd_images()
    for split in ("train", "test"):
        for cls in CLASSES:
            folder = tmp_path / "tree" / split / cls
            folder.mkdir(parents=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
    d = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "c")
    assert d.train_images.shape == (10 * len(files), 32, 32, 3)
    for rank, name in enumerate(sorted(files)):  # classes interleaved: rank k of every class, then k + 1
        expected = images.decode(files[name], images.MAX_PIXELS)
        np.testing.assert_array_equal(d.test_images[10 * rank], expected, err_msg=name)
    translucent = d.test_images[10 * sorted(files).index("translucent.png")]
    assert tuple(translucent[5, 5]) != (200, 10, 10)  # alpha composited on white, not dropped


@pytest.mark.parametrize("hostile", ["icon", "too_many_pixels", "truncated"])
def test_a_file_the_service_would_refuse_is_refused_in_a_data_set_too_and_named(tmp_path, hostile):
    from hostile_images import handmade_png, icon_holding

    data = {"icon": icon_holding(handmade_png(16, 16, 2)),
            "too_many_pixels": handmade_png(9000, 9000, 0, rows=1),
            "truncated": handmade_png(64, 64, 2)[:-40]}[hostile]
    for split in ("train", "test"):
        for cls in CLASSES:
            folder = tmp_path / "tree" / split / cls
            folder.mkdir(parents=True)
            (folder / "fine.png").write_bytes(_odd_images()["wide.png"])
    (tmp_path / "tree" / "train" / "cat" / "hostile.png").write_bytes(data)
    with pytest.raises(DataError, match=r"hostile\.png") as err:
        load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "c")
    assert "\n" not in str(err.value)
