"""Helpers shared by the tests/test_serving_*.py modules (this module holds no tests itself).

- ``models_dir``: ``tutorial`` and ``dwsep`` exported once per session by the real exporter
  (``export.onnx.export_checkpoint``) from the ``fresh_checkpoint`` fixture, with a MANIFEST.json.
- ``shipped_models``, ``write_manifest``: copies of the repository's own trained ``weights/*.onnx``
  (which carry a test accuracy) and a MANIFEST.json with figures, as ``export.package`` writes them.
- ``cifar_jpegs``: real CIFAR-10 test JPEG files (bytes as stored in the archive), a few per class.
- ``png_bytes``, ``noise_bytes``: small synthetic uploads.
- ``Gunicorn``: the service started as ``make serve`` starts it, on a free loopback port, stopped
  (process group and all) at teardown.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
GUNICORN = Path(sys.executable).with_name("gunicorn")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEFAULT = "dwsep"

_cache: dict[str, object] = {}


def png_bytes(size=(40, 40), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


def noise_bytes(fmt: str) -> bytes:
    """A 200x200 noise image: large enough that truncating the encoded file cuts into pixel data."""
    out = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(out, fmt)
    return out.getvalue()


def models_dir(tmp_path_factory, fresh_checkpoint) -> Path:
    """A read-only folder with tutorial.onnx, dwsep.onnx and MANIFEST.json (default dwsep); made once."""
    if "models" not in _cache:
        from export.onnx import export_checkpoint

        folder = tmp_path_factory.mktemp("serving-weights")
        for arch in ("tutorial", "dwsep"):
            export_checkpoint(fresh_checkpoint(arch), folder / f"{arch}.onnx", parity_images=32, log=lambda _: None)
        (folder / "MANIFEST.json").write_text(json.dumps({"default_model": DEFAULT, "models": {
            "tutorial": {"file": "tutorial.onnx"}, "dwsep": {"file": "dwsep.onnx"}}}))
        _cache["models"] = folder
    return _cache["models"]


def copy_models(source: Path, target: Path, names=("tutorial", "dwsep"), manifest: bool = True) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source / f"{name}.onnx", target / f"{name}.onnx")
    if manifest:
        shutil.copy(source / "MANIFEST.json", target / "MANIFEST.json")
    return target


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_metadata(source: Path, target: Path, **changes: str) -> Path:
    """A copy of the model ``source`` whose metadata keys ``changes`` are set (added if missing)."""
    import onnx

    model = onnx.load(str(source))
    props = {prop.key: prop.value for prop in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


def shipped_models(target: Path, names=("tutorial", "dwsep")) -> Path:
    """Copies of the repository's small trained models from weights/ (no manifest)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(WEIGHTS / f"{name}.onnx", target / f"{name}.onnx")
    return target


def write_manifest(folder: Path, default: str | None = None, **entries: dict) -> dict:
    """``folder/MANIFEST.json`` with an entry per keyword; each entry measured ``folder/<name>.onnx``
    (its ``onnx_sha256``) unless it says otherwise. Returns the manifest."""
    manifest = {"default_model": default, "models": {
        name: {"onnx": f"{name}.onnx", "onnx_sha256": file_sha256(folder / f"{name}.onnx"), **entry}
        for name, entry in entries.items()}}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def cifar_jpegs(archive: Path, per_class: int = 2) -> list[tuple[int, str, bytes]]:
    """[(label index, file name, JPEG bytes)], ``per_class`` test images of every class, classes interleaved."""
    key = f"jpegs-{archive}-{per_class}"
    if key not in _cache:
        found: dict[str, list[tuple[str, bytes]]] = {c: [] for c in CLASSES}
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) == 3 and parts[0] == "test" and parts[1] in found and member.isfile():
                    if len(found[parts[1]]) < per_class:
                        found[parts[1]].append((f"{parts[1]}-{parts[2]}", tar.extractfile(member).read()))
        _cache[key] = [(CLASSES.index(c), *found[c][i]) for i in range(per_class) for c in CLASSES]
    return _cache[key]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (gunicorn's workers), from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.add(int(entry.name))
    return children


class Gunicorn:
    """``gunicorn --config serving/gunicorn.conf.py 'serving:create_app()'`` from the repository root."""

    def __init__(self, log_path: Path, port: int | None = None, **env: str):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        # No drain on SIGTERM unless a test asks for one: every stop would otherwise take DRAIN_SECONDS.
        self.env = {**inherited, "HOST": "127.0.0.1", "PORT": str(self.port), "DRAIN_SECONDS": "0", **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Gunicorn:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([str(GUNICORN), "--config", "serving/gunicorn.conf.py", "serving:create_app()"],
                                     cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 90) -> Gunicorn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or a busy machine
                pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn not ready after {timeout} s:\n{self.log()}")

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def workers(self) -> set[int]:
        return child_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:
            try:  # any worker left behind by a master that died (the group is this server's own session)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
