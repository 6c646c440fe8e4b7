"""The bytes of MODELS_DIR, read once, so every worker serves exactly the files the service started with.

Under gunicorn the master reads the folder (every ``*.onnx`` and ``MANIFEST.json``) before it forks
anything and keeps the bytes: workers, including ones respawned hours later, build their sessions
from that copy (inherited through fork, shared copy-on-write). A file changed or deleted on disk
afterwards can then neither make a respawned worker fail nor be served by new workers only; the
worker logs the difference, and a restart loads the new files. Without gunicorn (tests, a plain
``create_app()``) the folder is read when the app is created.

Pure Python on purpose: the master imports this, and it must never import onnxruntime (see
serving/gunicorn.conf.py).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"


class ModelLoadError(RuntimeError):
    """The models cannot be served; the message is one line meant for the operator."""


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    models: dict[str, bytes]  # file stem (the model's name) -> the ONNX file's bytes
    manifest: bytes | None  # MANIFEST.json's bytes, None when there is none

    def path_of(self, name: str) -> Path:
        return self.folder / f"{name}.onnx"

    def changed_on_disk(self) -> list[str]:
        """Files that now differ from the bytes read at start (changed, added or removed)."""
        try:
            now = read_model_files(self.folder)
        except ModelLoadError:
            return [str(self.folder)]
        names = sorted(set(self.models) | set(now.models))
        changed = [f"{name}.onnx" for name in names if _digest(self.models.get(name)) != _digest(now.models.get(name))]
        if _digest(self.manifest) != _digest(now.manifest):
            changed.append(MANIFEST)
        return changed


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def read_model_files(folder: str | Path) -> ModelFiles:
    """Every ``*.onnx`` (not hidden) and the manifest in ``folder``. Raises ModelLoadError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"MODELS_DIR {str(folder)!r} is not a directory (resolved to {folder.resolve()})")
    models = {}
    for path in sorted(p for p in folder.glob("*.onnx") if not p.name.startswith(".")):
        try:
            models[path.stem] = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read model file: {exc.strerror or exc}") from None
    if not models:
        raise ModelLoadError(f"no .onnx model files in MODELS_DIR {str(folder)!r}")
    manifest_path = folder / MANIFEST
    try:
        manifest = manifest_path.read_bytes() if manifest_path.is_file() else None
    except OSError as exc:
        raise ModelLoadError(f"{manifest_path}: cannot read: {exc.strerror or exc}") from None
    return ModelFiles(folder=folder, models=models, manifest=manifest)


_pinned: ModelFiles | None = None


def pin(files: ModelFiles) -> None:
    """Make ``files`` what this process (and every process it forks from now on) serves for its folder."""
    global _pinned
    _pinned = files


def files_for(folder: str | Path) -> ModelFiles:
    """The pinned bytes if they are of ``folder``, else the folder as it is now on disk."""
    if _pinned is not None and Path(folder).resolve() == _pinned.folder.resolve():
        if changed := _pinned.changed_on_disk():
            log.warning("%s changed on disk since the service started; serving the files as they were then "
                        "(restart the service to load the new ones)", ", ".join(changed))
        return _pinned
    return read_model_files(folder)
