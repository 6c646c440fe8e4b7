"""CIFAR-10 on disk -> uint8 arrays (cached) -> batches on the training device.

Accepted sources (``--data PATH`` or ``$CIFAR10_DATA``):

1. the canonical ``cifar-10-batches-py`` folder (or a folder containing it, or the
   ``cifar-10-python.tar.gz`` archive holding it), as users download it;
2. a class-folder tree ``train/<class>/*`` and ``test/<class>/*`` of images in any format the service
   accepts, decoded as the service decodes an upload (``common.images.decode``: the centred square
   resized to 32x32, alpha composited on white, the EXIF orientation applied);
3. a ``.tar`` / ``.tar.gz`` of such a tree, like ``../shared/data/cifar10-jpeg.tar.gz``.

Images are decoded once into (N, 32, 32, 3) uint8 arrays plus int64 labels and cached as ``.npz``
under ``$CIFAR10_CACHE`` (default ``~/.cache/cifar10-classifier``), keyed by the source's path,
sizes and modification times, so later runs start in about a second.

Training reads batches from :class:`DeviceLoader`: the whole split lives on the training device as
one uint8 tensor; shuffling, augmentation and normalization are batched tensor ops there.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from common import images
from common.files import atomic_write
from training.augment import Augment

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
CACHE_FORMAT = 4  # bump when the decoded arrays would change for the same source (4: Lanczos in common.images)
CANONICAL_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


class DataError(Exception):
    """A data source that cannot be read; the message is meant for the user as is."""


@dataclass
class Cifar10:
    train_images: np.ndarray  # (N, 32, 32, 3) uint8, RGB
    train_labels: np.ndarray  # (N,) int64, index into CLASSES
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    classes: tuple[str, ...] = CLASSES



def resolve_data_path(path: str | os.PathLike | None) -> Path:
    path = path or os.environ.get("CIFAR10_DATA")
    if not path:
        raise DataError("no data given: pass --data PATH or set CIFAR10_DATA")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(f"data path does not exist: {resolved}")
    return resolved


def default_cache_dir() -> Path:
    """Where decoded data (and the upload bank, training/upload_bank.py) is cached: ``$CIFAR10_CACHE``."""
    return Path(os.environ.get("CIFAR10_CACHE", "~/.cache/cifar10-classifier")).expanduser()


def load_cifar10(path: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None,
                 download: bool = False) -> Cifar10:
    """Load CIFAR-10 from any supported source, through the on-disk cache."""
    if download:
        path = _download(path)
    source = resolve_data_path(path).resolve()
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache / f"cifar10-{_fingerprint(source)}.npz"
    if cache_file.exists():
        try:
            with np.load(cache_file) as z:
                return Cifar10(z["train_images"], z["train_labels"], z["test_images"],
                               z["test_labels"], str(source))
        except (OSError, ValueError, KeyError, zlib.error):
            pass  # a damaged cache is rebuilt, never trusted
    data = _read_source(source)
    _write_cache(cache_file, data)
    return data


def _download(root: str | os.PathLike | None) -> Path:
    root = Path(root or os.environ.get("CIFAR10_DATA") or "~/.cache/cifar10-classifier/download").expanduser()
    try:
        from torchvision.datasets import CIFAR10
    except Exception as exc:  # a torchvision built for another torch raises RuntimeError, not ImportError
        raise DataError(f"--download needs a working torchvision ({type(exc).__name__}: {exc})") from None
    try:
        for train in (True, False):
            CIFAR10(str(root), train=train, download=True)
    except Exception as exc:
        raise DataError(f"download of CIFAR-10 into {root} failed: {exc}") from None
    return root / "cifar-10-batches-py"


def _fingerprint(source: Path) -> str:
    """Hash of the source's path and every file's size and mtime: changes when the data does."""
    h = hashlib.sha256(f"v{CACHE_FORMAT}|{source}".encode())
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"|{f.relative_to(source) if f != source else ''}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _write_cache(cache_file: Path, data: Cifar10) -> None:
    try:
        atomic_write(cache_file, lambda f: np.savez(f, train_images=data.train_images, train_labels=data.train_labels,
                                                    test_images=data.test_images, test_labels=data.test_labels))
    except OSError:
        pass  # a read-only home still trains, only without the cache


def _read_source(source: Path) -> Cifar10:
    if source.is_dir():
        if (source / "cifar-10-batches-py").is_dir():
            source = source / "cifar-10-batches-py"
        if (source / "data_batch_1").exists():
            return _read_canonical({name: (source / name).read_bytes
                                    for name in CANONICAL_FILES if (source / name).exists()}, source)
        return _read_tree(_tree_entries_from_dir(source), source)
    if tarfile.is_tarfile(source):
        return _read_archive(source)
    raise DataError(f"{source} is not a CIFAR-10 source (expected the cifar-10-batches-py folder, "
                    "a train/<class>/ + test/<class>/ tree, or a .tar/.tar.gz of one)")


def _read_archive(source: Path) -> Cifar10:
    try:
        # One sequential pass: random access into a .tar.gz re-decompresses from the start each time.
        with tarfile.open(source, "r|*") as tar:
            files = {PurePosixPath(m.name): tar.extractfile(m).read() for m in tar if m.isfile()}
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"corrupt or unreadable archive {source}: {exc}") from None
    canonical = {p.name: (lambda raw=raw: raw) for p, raw in files.items() if p.name in CANONICAL_FILES}
    if "data_batch_1" in canonical:
        return _read_canonical(canonical, source)
    return _read_tree([(p, lambda raw=raw: raw) for p, raw in files.items()], source)


def _read_canonical(files: dict, source: Path) -> Cifar10:
    """The python-pickle format of cifar-10-batches-py (see https://www.cs.toronto.edu/~kriz/cifar.html)."""
    missing = [name for name in CANONICAL_FILES if name not in files]
    if missing:
        raise DataError(f"{source}: canonical CIFAR-10 folder lacks {', '.join(missing)}")

    def unpickle(name: str) -> dict:
        try:
            return pickle.loads(files[name](), encoding="bytes")
        except Exception as exc:
            raise DataError(f"{source}: cannot read {name}: {exc}") from None

    names = [n.decode() if isinstance(n, bytes) else n for n in unpickle("batches.meta")[b"label_names"]]
    _check_class_names(names, f"{source}/batches.meta")
    remap = np.array([CLASSES.index(n) for n in names], dtype=np.int64)  # by name, not position

    def split(batch_names) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in batch_names:
            batch = unpickle(name)
            try:
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(remap[np.asarray(batch[b"labels"], dtype=np.int64)])
            except (KeyError, ValueError, IndexError) as exc:
                raise DataError(f"{source}: malformed batch {name}: {exc}") from None
        return np.concatenate(images).transpose(0, 2, 3, 1).copy(), np.concatenate(labels)

    train = split(CANONICAL_FILES[:5])
    test = split(CANONICAL_FILES[5:6])
    return Cifar10(*train, *test, str(source))


def _tree_entries_from_dir(root: Path) -> list:
    return [(PurePosixPath(p.relative_to(root).as_posix()), p.read_bytes)
            for p in root.rglob("*") if p.is_file()]


def _check_class_names(found, where: str) -> None:
    unknown = sorted(set(found) - set(CLASSES))
    missing = [c for c in CLASSES if c not in set(found)]
    problems = []
    if unknown:
        problems.append(f"unknown class(es) {', '.join(unknown)}")
    if missing:
        problems.append(f"missing class(es) {', '.join(missing)}")
    if problems:
        raise DataError(f"{where}: {'; '.join(problems)} (expected exactly: {', '.join(CLASSES)})")


def _read_tree(entries: list, source: Path) -> Cifar10:
    """Decode ``<prefix>/<split>/<class>/<file>`` entries; ``entries`` are (path, read_bytes) pairs."""
    by_split: dict[str, dict[str, list]] = {s: {} for s in SPLITS}
    for path, read in entries:
        parts = path.parts
        if len(parts) < 3 or parts[-1].startswith(".") or parts[-3] not in SPLITS:
            continue  # README files, hidden files (.DS_Store), anything outside split/class/
        by_split[parts[-3]].setdefault(parts[-2], []).append((parts[-1], str(path), read))
    if not any(by_split.values()):
        raise DataError(f"{source}: no train/<class>/ or test/<class>/ images found")
    arrays = []
    for split in SPLITS:
        _check_class_names(list(by_split[split]), f"{source} ({split})")
        arrays += _decode_split(by_split[split])
    return Cifar10(*arrays, str(source))


def _decode_split(per_class: dict[str, list]) -> tuple[np.ndarray, np.ndarray]:
    # Interleave classes (1st image of each class, 2nd of each, ...) so that any prefix of the
    # split, such as --limit N, is class balanced, and the order is the same for every form.
    ordered = []
    for label, name in enumerate(CLASSES):
        for rank, (_, path, read) in enumerate(sorted(per_class[name])):
            ordered.append((rank, label, path, read))
    ordered.sort(key=lambda item: (item[0], item[1]))
    images = np.empty((len(ordered), 32, 32, 3), dtype=np.uint8)
    for i, (_, _, path, read) in enumerate(ordered):
        images[i] = _decode_image(read(), path)
    return images, np.array([label for _, label, _, _ in ordered], dtype=np.int64)


def _decode_image(raw: bytes, path: str) -> np.ndarray:
    """One image of a class-folder set, decoded exactly as the service decodes an upload (common.images)."""
    try:
        return images.decode(raw, images.MAX_PIXELS)
    except images.ImageError as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, H, W, 3) uint8 images, in [0, 1] units."""
    pixels = images.reshape(-1, 3)
    mean = pixels.mean(0, dtype=np.float64) / 255.0
    std = pixels.std(0, dtype=np.float64) / 255.0
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def split_validation(images: np.ndarray, labels: np.ndarray, val_size: int):
    """Carve a fixed validation split (the same whatever --seed) off the training set."""
    if val_size <= 0:
        return (images, labels), None
    if val_size >= len(images):
        raise DataError(f"--val-size {val_size} leaves no training images (of {len(images)})")
    order = np.random.default_rng(20240601).permutation(len(images))
    train_idx, val_idx = np.sort(order[val_size:]), np.sort(order[:val_size])
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


class DeviceLoader:
    """Batches from one split held on ``device`` as a single uint8 NCHW tensor (airbench style).

    Each epoch's permutation comes from ``seed`` and the epoch number alone, so every DDP rank
    agrees on it and takes every ``world_size``-th index from position ``rank``; a resumed run sees
    the same order without saving loader state.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device,
                 mean, std, augment: Augment | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, undamaged_twin: bool = False, upload_bank: np.ndarray | None = None):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()
        # upload_bank (copies, N, H, W, 3) uint8: the images as clients upload them (training/upload_bank.py), of
        # which the augment's upload_bank share replaces each batch's images before the crop and flip.
        self.upload_bank = None
        if upload_bank is not None and augment is not None and augment.upload_bank:
            if upload_bank.shape[1:] != images.shape:
                raise ValueError(f"upload bank of shape {upload_bank.shape} does not match images {images.shape}")
            self.upload_bank = torch.from_numpy(np.ascontiguousarray(upload_bank)).to(device).permute(0, 1, 4, 2, 3)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.batch_size, self.augment, self.shuffle, self.drop_last = batch_size, augment, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.channels_last = seed, rank, world_size, channels_last
        self.epoch = 0
        # With undamaged_twin each batch comes with the same views before the upload-path damage (same crop,
        # flip, colour and cutout): a distillation teacher's input, so that its soft targets say what the image
        # shows rather than what a teacher never trained on damaged uploads makes of it.
        self.undamaged_twin = undamaged_twin and augment is not None and bool(
            augment.upload_resize or augment.upload_jpeg or self.upload_bank is not None)
        # Alternating flip (airbench): a fixed random half of the images is flipped in even epochs,
        # the other half in odd ones, so every image is seen both ways every two epochs.
        self.flip_parity = None
        if augment is not None and augment.alternating_flip:
            g = torch.Generator().manual_seed(seed * 100_003 + 7)
            self.flip_parity = (torch.rand(len(self.labels), generator=g) < 0.5).to(self.labels.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_sizes(self) -> list[int]:
        """Images in each batch of an epoch, in order (only the last one may be short)."""
        n = len(self.labels) // self.world_size  # this rank's share; with drop_last, len(self) stops short of it
        return [min(self.batch_size, n - start) for start in range(0, len(self) * self.batch_size, self.batch_size)]

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        per_rank = n // self.world_size
        order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        return order.to(self.labels.device)

    def __iter__(self):
        order = self._indices()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            flip_mask = None if self.flip_parity is None else self.flip_parity[idx] ^ bool(self.epoch % 2)
            if self.undamaged_twin and self.upload_bank is not None:
                yield self._bank_and_twin(idx, flip_mask)
            elif self.undamaged_twin:
                damaged, undamaged = self.prepare(self.images[idx], flip_mask, twin=True).chunk(2)
                yield damaged, self.labels[idx], undamaged
            else:
                yield self.prepare(self.uploaded(idx), flip_mask), self.labels[idx]

    def _bank_and_twin(self, idx: torch.Tensor, flip_mask: torch.Tensor | None):
        """(uploaded view, labels, the same view of the stored image): the bank's damage comes before the crop,
        so the twin replays the view's random draws (crop, flip, cutout) on the undamaged images."""
        uploaded = self.uploaded(idx)
        device = uploaded.device
        before = _rng_state(device)
        view = self.prepare(uploaded, flip_mask)
        after = _rng_state(device)
        _set_rng_state(device, before)
        twin = self.prepare(self.images[idx], flip_mask)
        _set_rng_state(device, after)
        return view, self.labels[idx], twin

    def uploaded(self, idx: torch.Tensor) -> torch.Tensor:
        """The images ``idx`` (uint8), the augment's ``upload_bank`` share of them as one of their bank copies."""
        batch = self.images[idx]
        if self.upload_bank is None:
            return batch
        n = len(idx)
        chosen = (torch.rand(n, device=batch.device) < self.augment.upload_bank).nonzero().squeeze(1)
        copy = torch.randint(0, self.upload_bank.shape[0], (len(chosen),), device=batch.device)
        batch[chosen] = self.upload_bank[copy, idx[chosen]]  # batch is a gathered copy: the split stays as it is
        return batch

    def normalized(self, count: int) -> torch.Tensor:
        """The first ``count`` images, normalized and without augmentation (for data-dependent init)."""
        x = self.images[:count].float().div(255)
        return (x - self.mean) / self.std

    def prepare(self, batch_uint8: torch.Tensor, flip_mask: torch.Tensor | None = None,
                twin: bool = False) -> torch.Tensor:
        """The batch augmented and normalized; with ``twin``, stacked over the same views without the
        upload-path damage (2N images)."""
        x = batch_uint8.float().div_(255)
        if self.augment is not None:
            x = self.augment.view(x, flip_mask)
            x = torch.cat([self.augment.upload_damage(x), x]) if twin else self.augment.upload_damage(x)
        x = (x - self.mean) / self.std
        if self.augment is not None:
            x = self.augment.after_normalize(x, copies=2 if twin else 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
