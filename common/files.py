"""Atomic writes: a reader (or a crash) never sees a half-written model, checkpoint, report or cache.

Everything is written to a hidden temporary file in the destination's folder, flushed to disk and
renamed over the destination (``os.replace`` is atomic within one file system); the temporary
file is removed if anything fails.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden temporary name in ``path``'s folder, so that ``os.replace`` onto ``path`` is atomic."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace ``path`` with what ``write`` writes into the binary file it is given.

    ``write`` is e.g. ``lambda f: torch.save(obj, f)``. Parent folders are created. An OSError names
    ``path``, not the temporary file; other exceptions from ``write`` pass through unchanged.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj, *, sort_keys: bool = True) -> None:
    """``obj`` as indented JSON; keys sorted unless ``sort_keys`` is False (keep the writer's order)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
