"""This service against the servers people would otherwise use, on the same model, images and cores.

    python benchmarks/serve_peers.py [--model NAME] [--duration 10] [--peers service torchserve bentoml naive]

One run measures, one server at a time (started, warmed up, measured, then stopped with all its
processes before the next starts), requests/s and p50/p95/p99 latency at 1, 4 and 16 concurrent
clients (``--concurrency``) sending single-image requests for ``--duration`` seconds per level after
``--warmup`` unmeasured seconds. The load comes from ``wrk`` (one thread, epoll; Debian package
``wrk``) cycling through ``--images`` real CIFAR-10 test JPEGs, through ``benchmarks/serve_load.py``'s
own ``load_images`` and ``run_level_wrk``. The servers:

1. ``service`` (and ``service_fp32``, the same with PRECISION=fp32: how much of the lead is int8's):
   this service, started as ``make serve`` does (``gunicorn --config
   serving/gunicorn.conf.py 'serving:create_app()'`` from the repository, MODELS_DIR=weights,
   DEFAULT_MODEL=--model; PRECISION as the environment or ``--service-precision`` says, ``auto`` by
   default, so it may serve ``NAME.int8.onnx``: the JSON names the file it served).
   ``POST /predict``, multipart field ``img``.
2. ``torchserve``: TorchServe 0.12 with its stock ``image_classifier`` handler, serving the
   checkpoint ``weights/NAME.pt``: a ``.mar`` built by torch-model-archiver from a model file that
   subclasses this repository's network class (``training.models``, imported from this checkout),
   the checkpoint's state dict and an ``index_to_name.json``. The stock handler's transform is
   ImageNet's (Resize 256, CenterCrop 224, ImageNet mean/std); with ``--torchserve-preprocessing
   cifar`` (the default) the handler is the stock ``ImageClassifier`` subclassed only to set its
   ``image_processing`` to training's (Resize 32x32, the checkpoint's mean/std), the customisation
   TorchServe documents, so that it answers as the trained model does; ``stock`` keeps ImageNet's,
   which runs the network (global average pooling lets it) on 224x224 inputs, about 49x the work,
   and answers nothing the model was trained for: speed only, and the JSON says so.
   ``default_workers_per_model`` = the usable cores, ``OMP_NUM_THREADS`` = one share of the cores per
   worker, JVM heap ``-Xmx256m``, batch size 1 (the default). ``POST /predictions/NAME``, multipart
   field ``data``.
3. ``bentoml``: BentoML 1.4, an idiomatic ``@bentoml.service`` (a worker per usable core, one
   thread each) whose ``@bentoml.api`` takes ``img: PIL.Image.Image`` (BentoML reads a
   multipart/form-data field of the parameter's name), centre-crops and resizes it to 32x32 with
   Pillow and runs with onnxruntime (one intra-op thread per worker) the ONNX file this service
   served in the same run (``NAME.int8.onnx`` where int8 earns it; ``NAME.onnx`` if ``service`` is
   not among ``--peers``). ``POST /predict``, multipart field ``img``.
4. ``naive``: the Flask app most tutorials write (``--work-dir``/naive_app.py, written by this
   script): the checkpoint loaded with torch at start; per request PIL open, Resize 32x32,
   ToTensor, Normalize with the checkpoint's mean/std, ``model(x)`` under ``torch.no_grad()``, top-5
   JSON; under ``gunicorn -w 2`` sync workers, torch threads left at torch's default.
   ``POST /predict``, multipart field ``img``.

Each peer gets its own virtual environment under ``--work-dir`` (default ``/tmp/serve-peers``),
created with this interpreter's ``python -m venv`` and pip on first use (torch pinned to this
checkout's torch version, onnxruntime to its onnxruntime version), never this project's. Every
server must answer one request with 200 before it is measured; the JSON keeps that answer
(``sample``). A peer that cannot be installed, started or measured is recorded with the last lines
of its error and log, and the run goes on with the next.

Writes ``benchmarks/results/serve_peers.json`` (``--out``; machine, command, date, each server's
versions, how it ran, model file, sample answer and levels, and ``ratio_service_to_peer_at_max_clients``:
this service's req/s over each peer's at the highest concurrency, 16 by default) and a plot of
req/s against clients beside it (same name, ``.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import serve_load  # noqa: E402  (benchmarks/serve_load.py: its wrk driver and image loader)
from serve_load import DEFAULT_DATA, HttpClient, free_port, load_images, predict_request, run_level_wrk  # noqa: E402

from common.files import write_json  # noqa: E402
from common.machine import usable_cpus  # noqa: E402
from common.paths import repo_relative, repo_relative_command  # noqa: E402

PEERS = ("service", "service_fp32", "torchserve", "bentoml", "naive")
START_TIMEOUT_S = 240.0  # a JVM plus Python workers on two busy cores can take a while


class PeerError(Exception):
    """A peer that could not be installed, started or measured; the message ends with the last log lines."""


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return tail(path.read_text(errors="replace"), lines)
    except OSError:
        return ""


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- virtual environments ----------------------------------------------------------------------------

def ensure_venv(folder: Path, requirements: list[str], report: list[str]) -> tuple[Path, dict]:
    """``folder`` as a venv with ``requirements`` installed (again only when they changed); its Python and
    the installed versions of ``report``."""
    marker = folder / ".serve-peers-requirements"
    python = folder / "bin" / "python"
    wanted = "\n".join(requirements)
    if not (python.exists() and marker.exists() and marker.read_text() == wanted):
        shutil.rmtree(folder, ignore_errors=True)
        log = folder.with_suffix(".install.log")
        print(f"  installing {' '.join(requirements)} into {folder} (log: {log}) ...", flush=True)
        with open(log, "w") as out:
            steps = [[sys.executable, "-m", "venv", str(folder)],
                     [str(python), "-m", "pip", "install", "--no-input", *requirements]]
            for step in steps:
                out.write(f"$ {shlex.join(step)}\n")
                out.flush()
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
                if done.returncode != 0:
                    raise PeerError(f"{shlex.join(step[:4])} ... failed ({done.returncode}):\n{log_tail(log)}")
        marker.write_text(wanted)
    probe = ("import importlib.metadata as m, json, sys\n"
             "v = {}\n"
             "for d in sys.argv[1:]:\n"
             "    try: v[d] = m.version(d)\n"
             "    except m.PackageNotFoundError: v[d] = None\n"
             "print(json.dumps(v))")
    out = subprocess.run([str(python), "-c", probe, "python", *report], capture_output=True, text=True, timeout=60)
    versions = json.loads(out.stdout) if out.returncode == 0 else {}
    versions["python"] = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                                        capture_output=True, text=True, timeout=60).stdout.strip()
    return python, versions


def pinned(name: str) -> str:
    """``name`` at this checkout's version where it has one (same torch / onnxruntime on both sides).

    A local build (torch ``2.13.0+cpu``) is excluded: the package index's torchvision wheels only load
    with the index's own torch build of the same version (CUDA-enabled, running on the CPU here)."""
    version = dist_version(name)
    if not version:
        return name
    public, _, local = version.partition("+")
    return f"{name}=={public},!={version}" if local else f"{name}=={version}"


# --- processes --------------------------------------------------------------------------------------

def launch(command: list[str], cwd: Path, env: dict, log_path: Path) -> subprocess.Popen:
    """Start a server in its own process group (so that stopping it reaches every process it started)."""
    log = open(log_path, "wb")  # noqa: SIM115 (kept open for the server's lifetime)
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server's process group, SIGKILL to whatever is left after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def multipart_request(port: int, path: str, field: str, image: bytes) -> bytes:
    boundary = f"----serve-peers-{os.urandom(8).hex()}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"test-0.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: serve_peers\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def wait_until_answering(proc: subprocess.Popen, port: int, request: bytes, log_path: Path,
                         timeout: float = START_TIMEOUT_S) -> tuple[float, bytes]:
    """Poll with ``request`` until it gets a 200; the seconds since launch and that answer's body."""
    launched = time.perf_counter()
    client = HttpClient(port)
    last = "no answer"
    while True:
        if proc.poll() is not None:
            raise PeerError(f"exited with status {proc.returncode} before answering:\n{log_tail(log_path)}")
        if time.perf_counter() - launched > timeout:
            raise PeerError(f"no 200 within {timeout:.0f} s (last: {last}):\n{log_tail(log_path)}")
        try:
            status, body = client.request(request)
            if status == 200:
                client.close()
                return time.perf_counter() - launched, body
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        client.close()
        time.sleep(0.25)


def sample_of(body: bytes) -> dict:
    try:
        return {"status": 200, "json": json.loads(body)}
    except ValueError:
        return {"status": 200, "text": body[:500].decode("utf-8", "replace")}


@contextlib.contextmanager
def wrk_target(path: str, field: str):
    """serve_load's wrk script aimed at another URL path and form field name (TorchServe wants
    ``/predictions/NAME`` and ``data``): the bodies serve_load writes are rewritten once, as wrk loads them."""
    original = serve_load.WRK_SCRIPT
    script = original.replace('"/predict"', json.dumps(path))
    read = 'bodies[i] = f:read("*a")'
    script = script.replace(read, f"bodies[i] = (f:read(\"*a\"):gsub('name=\"img\"', 'name=\"{field}\"', 1))")
    if original.count('"/predict"') != 1 or original.count(read) != 1:
        raise PeerError("benchmarks/serve_load.py's WRK_SCRIPT changed; update serve_peers.wrk_target")
    serve_load.WRK_SCRIPT = script
    try:
        yield
    finally:
        serve_load.WRK_SCRIPT = original


def measure_levels(port: int, images: list[bytes], args, path: str = "/predict", field: str = "img") -> list[dict]:
    levels = []
    for clients in args.concurrency:
        with wrk_target(path, field) if (path, field) != ("/predict", "img") else contextlib.nullcontext():
            try:
                r = run_level_wrk(port, images, clients, args.warmup, args.duration)
            except SystemExit as exc:  # serve_load's way of saying wrk failed
                levels.append({"clients": clients, "error": str(exc)})
                print(f"  {clients:>3} clients: {exc}", flush=True)
                continue
        level = {"clients": clients, "requests": r["requests"], "requests_per_s": r["requests_per_s"],
                 "p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"],
                 "p99_ms": r["latency_ms"]["p99"], "mean_ms": r["mean_latency_ms"], "errors": r["errors"],
                 "loadavg_1m_before": r["loadavg_1m_before"]}
        levels.append(level)
        print(f"  {clients:>3} clients: {level['requests_per_s']:>8.1f} req/s  p50 {level['p50_ms']:.2f}  "
              f"p99 {level['p99_ms']:.2f} ms  errors {level['errors']}", flush=True)
    return levels


def serve_and_measure(record: dict, command: list[str], cwd: Path, env: dict, log_path: Path, port: int,
                      probe: bytes, images: list[bytes], args, path: str = "/predict", field: str = "img",
                      after_ready=None) -> None:
    """Start, check one answer, warm up, measure every level, stop: the common part of every peer."""
    record["run"]["command"] = shlex.join(command)
    record["log"] = str(log_path)
    print(f"  starting: {shlex.join(command)}", flush=True)
    proc = launch(command, cwd, env, log_path)
    try:
        ready_s, body = wait_until_answering(proc, port, probe, log_path)
        record["start_to_first_answer_s"] = round(ready_s, 2)
        record["sample"] = sample_of(body)
        if after_ready:
            after_ready(record)
        client = HttpClient(port)  # a few sequential requests: lazy initialisation out of the way
        for _ in range(20):
            status, body = client.request(probe)
            if status != 200:
                raise PeerError(f"warm-up request answered {status}: {body[:300]!r}\n{log_tail(log_path)}")
        client.close()
        print(f"  answering {ready_s:.1f} s after launch; sample: {json.dumps(record['sample'])[:160]}", flush=True)
        record["levels"] = measure_levels(port, images, args, path, field)
    finally:
        stop_group(proc)
    record["status"] = "ok"


# --- the servers --------------------------------------------------------------------------------------

def run_service(record: dict, ctx: dict, args, precision: str | None = None) -> None:
    """This service; ``precision`` (else ``--service-precision``, else the environment's) sets PRECISION."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "MODELS_DIR": "weights",
           "DEFAULT_MODEL": args.model}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if precision or args.service_precision:
        env["PRECISION"] = precision or args.service_precision
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = [str(gunicorn), "--config", "serving/gunicorn.conf.py", "serving:create_app()"]
    from serving.config import default_intra_op_threads, load_config, process_settings

    settings, config = process_settings(env), load_config(environ=env)
    record["versions"] = {d: dist_version(d) for d in ("gunicorn", "gevent", "flask", "onnxruntime", "pillow")}
    record["versions"]["python"] = platform.python_version()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        record["versions"]["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                                   capture_output=True, text=True, timeout=30).stdout.strip()
    record["run"] = {"env": {k: env[k] for k in ("HOST", "MODELS_DIR", "DEFAULT_MODEL", "PRECISION") if k in env},
                     "workers": settings["workers"], "worker_class": settings["worker_class"],
                     "threads": settings["threads"],
                     "intra_op_threads": int(env.get("INTRA_OP_THREADS",
                                                     default_intra_op_threads(settings["workers"]))),
                     "batch_max_images": config["BATCH_MAX_IMAGES"], "batch_wait_ms": config["BATCH_WAIT_MS"],
                     "handler": "serving/ (onnxruntime; decode with common.images.decode)"}
    record["preprocessing"] = ("common.images.decode: Pillow decode, shrink to 32x32 RGB uint8; the ONNX graph "
                               "scales and normalizes with the checkpoint's mean/std (export/graph.py)")
    record["comparable"] = True

    def served_file(rec: dict) -> None:
        models = json.loads(HttpClient(port).request(b"GET /models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")[1])
        info = next(m for m in models["models"] if m["name"] == models["default_model"])
        served = serve_load.served_model_file(ROOT / "weights", info["sha256"])
        rec["model_file"] = repo_relative(served)
        if precision is None:  # BentoML then serves the very file this service served
            ctx["served_onnx"] = served
        rec["precision"] = info.get("precision")
        status, _ = HttpClient(port).request(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        rec["readyz"] = status

    log = ctx["work"] / "service.log"
    serve_and_measure(record, command, ROOT, env, log, port, predict_request(port, ctx["images"][0], "test-0.jpg"),
                      ctx["images"], args, after_ready=served_file)


TORCHSERVE_MODEL_FILE = '''"""{arch} for TorchServe's stock handler: this repository's network class, as trained."""
import sys

sys.path.insert(0, {root!r})
from training.models import create_model  # noqa: E402

_Network = type(create_model({arch!r}, **{kwargs!r}))


class Cifar10Network(_Network):  # the handler wants one class here, built with no arguments
    def __init__(self):
        super().__init__(**{kwargs!r})
'''


TORCHSERVE_CIFAR_HANDLER = '''"""TorchServe's stock ImageClassifier, its transform set to training's preprocessing."""
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class Cifar10Classifier(ImageClassifier):
    image_processing = transforms.Compose([
        transforms.Resize((32, 32)),
        transforms.ToTensor(),
        transforms.Normalize({mean!r}, {std!r}),
    ])
'''


def as_tuples(value):
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def run_torchserve(record: dict, ctx: dict, args) -> None:
    import torch

    work = ctx["work"] / "torchserve"
    shutil.rmtree(work, ignore_errors=True)
    (work / "model-store").mkdir(parents=True)
    python, record["versions"] = ensure_venv(
        ctx["work"] / "venv-torchserve",
        # pyyaml: the backend worker imports it, and torchserve does not declare it
        ["torchserve==0.12.*", "torch-model-archiver==0.12.*", pinned("torch"), "torchvision", "captum", "pillow",
         "pyyaml"],
        ["torchserve", "torch-model-archiver", "torch", "torchvision", "captum", "pillow"])
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60)
    record["versions"]["java"] = tail(java.stderr, 1) if java.returncode == 0 else None
    if java.returncode != 0:
        raise PeerError("no java on PATH (Debian: apt-get install -y openjdk-17-jre-headless)")

    ckpt = torch.load(ctx["checkpoint"], map_location="cpu", weights_only=True)
    kwargs = {k: as_tuples(v) for k, v in (ckpt.get("model_kwargs") or {}).items()}
    (work / "model.py").write_text(TORCHSERVE_MODEL_FILE.format(arch=ckpt["arch"], root=str(ROOT), kwargs=kwargs))
    torch.save(ckpt["state_dict"], work / f"{args.model}.pth")
    (work / "index_to_name.json").write_text(json.dumps({str(i): c for i, c in enumerate(ckpt["classes"])}))
    if args.torchserve_preprocessing == "cifar":
        handler = str(work / "cifar10_handler.py")
        Path(handler).write_text(TORCHSERVE_CIFAR_HANDLER.format(mean=list(ckpt["mean"]), std=list(ckpt["std"])))
    else:
        handler = "image_classifier"
    archiver = [str(python.with_name("torch-model-archiver")), "--model-name", args.model, "--version", "1.0",
                "--model-file", str(work / "model.py"), "--serialized-file", str(work / f"{args.model}.pth"),
                "--handler", handler, "--extra-files", str(work / "index_to_name.json"),
                "--export-path", str(work / "model-store"), "--force"]
    done = subprocess.run(archiver, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise PeerError(f"torch-model-archiver failed ({done.returncode}):\n{tail(done.stdout + done.stderr)}")

    workers = args.torchserve_workers or usable_cpus()
    threads = max(1, usable_cpus() // workers)
    port, management, metrics, grpc, grpc_management = (free_port() for _ in range(5))
    properties = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": grpc, "grpc_management_port": grpc_management,
        "initial_worker_port": 20000 + port % 20000,
        "model_store": str(work / "model-store"),
        "load_models": f"{args.model}={args.model}.mar",
        "default_workers_per_model": workers,
        "vmargs": "-Xmx256m -XX:+ExitOnOutOfMemoryError",
        "disable_token_authorization": "true",
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
    }
    (work / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    env = {**os.environ, "PATH": f"{python.parent}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": str(threads),
           "LOG_LOCATION": str(work / "logs"), "METRICS_LOCATION": str(work / "logs"), "TS_DISABLE_TOKEN_AUTH": "true"}
    command = [str(python.with_name("torchserve")), "--start", "--foreground", "--ncs", "--disable-token-auth",
               "--ts-config", str(work / "config.properties"), "--model-store", str(work / "model-store"),
               "--models", f"{args.model}={args.model}.mar"]
    record["model_file"] = repo_relative(ctx["checkpoint"])
    stock = args.torchserve_preprocessing == "stock"
    if not stock:
        record["name"] = "TorchServe 0.12, stock ImageClassifier handler with a 32x32 transform"
    record["run"] = {"workers": workers, "torch_threads_per_worker": threads,
                     "handler": "image_classifier (stock)" if stock else
                                "stock ImageClassifier subclassed to set image_processing (cifar10_handler.py)",
                     "batch_size": 1, "config_properties": properties, "env": {"OMP_NUM_THREADS": str(threads)},
                     "archive": f"torch-model-archiver --handler {Path(handler).name}; model.py subclasses "
                                f"training.models {ckpt['arch']!r} (imported from this checkout); "
                                f"state dict from {repo_relative(ctx['checkpoint'])}; index_to_name.json"}
    if stock:
        record["preprocessing"] = ("stock image_classifier: PIL open, Resize(256), CenterCrop(224), ToTensor, "
                                   "Normalize(ImageNet mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]); the "
                                   "network runs on 3x224x224 (global average pooling lets it), not the 3x32x32 with "
                                   f"the checkpoint's mean {ckpt['mean']} / std {ckpt['std']} it was trained on")
        record["comparable"] = ("speed only: about 49x the convolution work of a 32x32 input, and its answers are "
                                "not the trained model's (accuracy is not measured here)")
    else:
        record["preprocessing"] = ("stock VisionHandler.preprocess (PIL open) with image_processing = "
                                   "Resize((32, 32)), ToTensor, Normalize(checkpoint mean "
                                   f"{ckpt['mean']}, std {ckpt['std']}) as training; "
                                   "stock inference (eager torch, no_grad) and postprocess (softmax top 5)")
        record["comparable"] = True
    path = f"/predictions/{args.model}"
    serve_and_measure(record, command, work, env, work / "torchserve.log", port,
                      multipart_request(port, path, "data", ctx["images"][0]), ctx["images"], args, path, "data")


BENTOML_SERVICE = '''"""CIFAR-10 ONNX classifier, an idiomatic BentoML 1.4 service (from benchmarks/serve_peers.py)."""
import os

import bentoml
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

MODEL = os.environ["PEER_ONNX"]
CLASSES = {classes!r}


@bentoml.service(workers={workers}, threads={threads}, traffic={{"timeout": 30}})
class Classifier:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = {intra_op}
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(MODEL, sess_options=options, providers=["CPUExecutionProvider"])

    @bentoml.api
    def predict(self, img: Image.Image) -> dict:
        pixels = ImageOps.fit(img.convert("RGB"), (32, 32), Image.Resampling.BILINEAR)
        batch = np.asarray(pixels, dtype=np.uint8)[np.newaxis]
        probabilities = self.session.run(["probabilities"], {{"image": batch}})[0][0]
        top = np.argsort(-probabilities)[:5]
        return {{"predictions": [{{"label": CLASSES[i], "probability": float(probabilities[i])}} for i in top]}}
'''


def run_bentoml(record: dict, ctx: dict, args) -> None:
    work = ctx["work"] / "bentoml"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    python, record["versions"] = ensure_venv(
        ctx["work"] / "venv-bentoml", ["bentoml==1.4.*", pinned("onnxruntime"), "pillow", "numpy"],
        ["bentoml", "onnxruntime", "pillow", "numpy"])
    onnx_file = ctx.get("served_onnx") or ROOT / "weights" / f"{args.model}.onnx"
    if not onnx_file.is_file():
        raise PeerError(f"no {repo_relative(onnx_file)}")
    workers, threads, intra_op = usable_cpus(), 1, 1
    (work / "service.py").write_text(BENTOML_SERVICE.format(classes=ctx["classes"], workers=workers, threads=threads,
                                                            intra_op=intra_op))
    port = free_port()
    env = {**os.environ, "PEER_ONNX": str(onnx_file), "BENTOML_HOME": str(work / "home"),
           "BENTOML_DO_NOT_TRACK": "True", "PATH": f"{python.parent}:{os.environ.get('PATH', '')}"}
    command = [str(python.with_name("bentoml")), "serve", "service:Classifier", "--host", "127.0.0.1",
               "--port", str(port)]
    record["model_file"] = repo_relative(onnx_file)
    record["run"] = {"workers": workers, "threads_per_worker": threads, "onnxruntime_intra_op_threads": intra_op,
                     "handler": "@bentoml.service class, @bentoml.api predict(img: PIL.Image.Image) -> dict",
                     "service_file": str(work / "service.py"),
                     "request": "POST /predict, multipart/form-data field img"}
    record["preprocessing"] = ("BentoML decodes the upload to a PIL image; ImageOps.fit to 32x32 (centre crop, "
                               "bilinear), uint8 RGB into the ONNX graph, which normalizes like training")
    record["comparable"] = True
    serve_and_measure(record, command, work, env, work / "bentoml.log", port,
                      predict_request(port, ctx["images"][0], "test-0.jpg"), ctx["images"], args)


NAIVE_APP = '''"""The Flask + PyTorch app most tutorials write (written by benchmarks/serve_peers.py)."""
import os
import sys

import torch
from flask import Flask, jsonify, request
from PIL import Image
from torchvision import transforms

sys.path.insert(0, os.environ["NAIVE_REPO"])
from training.models import create_model  # noqa: E402

checkpoint = torch.load(os.environ["NAIVE_CHECKPOINT"], map_location="cpu", weights_only=True)
model = create_model(checkpoint["arch"], **checkpoint.get("model_kwargs", {}))
model.load_state_dict(checkpoint["state_dict"])
model.eval()
classes = checkpoint["classes"]
transform = transforms.Compose([
    transforms.Resize((32, 32)),
    transforms.ToTensor(),
    transforms.Normalize(checkpoint["mean"], checkpoint["std"]),
])

app = Flask(__name__)


@app.route("/predict", methods=["POST"])
def predict():
    image = Image.open(request.files["img"].stream).convert("RGB")
    x = transform(image).unsqueeze(0)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)[0]
    top = torch.topk(probabilities, 5)
    return jsonify(predictions=[{"label": classes[i], "probability": p}
                                for p, i in zip(top.values.tolist(), top.indices.tolist())])
'''


def run_naive(record: dict, ctx: dict, args) -> None:
    python, record["versions"] = ensure_venv(
        ctx["work"] / "venv-naive", ["flask", "gunicorn", pinned("torch"), "torchvision", "pillow"],
        ["flask", "gunicorn", "torch", "torchvision", "pillow"])
    app_file = ctx["work"] / "naive_app.py"
    app_file.write_text(NAIVE_APP)
    threads = subprocess.run([str(python), "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, timeout=120).stdout.strip()
    port = free_port()
    env = {**os.environ, "NAIVE_REPO": str(ROOT), "NAIVE_CHECKPOINT": str(ctx["checkpoint"])}
    command = [str(python.with_name("gunicorn")), "-w", "2", "-b", f"127.0.0.1:{port}", "naive_app:app"]
    record["model_file"] = repo_relative(ctx["checkpoint"])
    record["run"] = {"workers": 2, "worker_class": "sync", "threads": 1,
                     "torch_threads_per_worker": f"torch default ({threads})",
                     "handler": f"Flask view in {app_file}: torch eager, one image per request"}
    record["preprocessing"] = ("PIL open, convert RGB, Resize((32, 32)), ToTensor, Normalize with the checkpoint's "
                               "mean/std, as training does")
    record["comparable"] = True
    serve_and_measure(record, command, ctx["work"], env, ctx["work"] / "naive.log", port,
                      predict_request(port, ctx["images"][0], "test-0.jpg"), ctx["images"], args)


RUNNERS = {"service": ("this service (gunicorn + serving/, onnxruntime)", run_service),
           "service_fp32": ("this service, fp32 file (PRECISION=fp32)",
                            lambda record, ctx, args: run_service(record, ctx, args, precision="fp32")),
           "torchserve": ("TorchServe 0.12, stock image_classifier handler", run_torchserve),
           "bentoml": ("BentoML 1.4 service, onnxruntime", run_bentoml),
           "naive": ("naive Flask + eager torch under gunicorn -w 2", run_naive)}


def run_peer(key: str, ctx: dict, args) -> dict:
    name, runner = RUNNERS[key]
    record: dict = {"key": key, "name": name, "status": "failed", "versions": {}, "run": {}}
    print(f"{name}:", flush=True)
    began = time.perf_counter()
    try:
        runner(record, ctx, args)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: B036 (SystemExit from serve_load included: record it, go on)
        detail = str(exc) if isinstance(exc, PeerError) else tail(traceback.format_exc(), 15)
        if record.get("log") and not isinstance(exc, PeerError):
            detail += "\n--- server log ---\n" + log_tail(Path(record["log"]))
        record["error"] = detail
        print(f"  FAILED: {detail}", flush=True)
    record["seconds"] = round(time.perf_counter() - began, 1)
    return record


# --- results ------------------------------------------------------------------------------------------

def plot(servers: list[dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for server in servers:
        points = [(lv["clients"], lv["requests_per_s"]) for lv in server.get("levels", []) if "requests_per_s" in lv]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=server["name"])
    ax.set_xscale("log", base=2)
    clients = sorted({lv["clients"] for server in servers for lv in server.get("levels", [])})
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.minorticks_off()
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests/s")
    ax.set_title(f"{model}: single-image requests on {usable_cpus()} shared cores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ratios(servers: list[dict]) -> dict:
    def at_max(server: dict) -> float | None:
        levels = [lv for lv in server.get("levels", []) if "requests_per_s" in lv]
        return max(levels, key=lambda lv: lv["clients"])["requests_per_s"] if levels else None

    ours = next((at_max(s) for s in servers if s["key"] == "service"), None)
    out = {}
    for server in servers:
        theirs = at_max(server)
        if server["key"] != "service":
            out[server["key"]] = round(ours / theirs, 2) if ours and theirs else None
    return out


def main(argv: list[str] | None = None) -> int:
    manifest = json.loads((ROOT / "weights" / "MANIFEST.json").read_text())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=manifest["default_model"],
                        help="model name in weights/ (default: weights/MANIFEST.json's default_model, %(default)s)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA") or DEFAULT_DATA))
    parser.add_argument("--images", type=int, default=500, help="distinct test images to cycle through")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS), help="servers to run, in order")
    parser.add_argument("--service-precision", choices=("auto", "fp32"),
                        help="PRECISION for this service (default: the environment's, else the service's auto)")
    parser.add_argument("--torchserve-preprocessing", choices=("cifar", "stock"), default="cifar",
                        help="cifar: the stock handler with training's 32x32 transform (default); stock: its "
                             "ImageNet 224x224 transform unchanged (speed only)")
    parser.add_argument("--torchserve-workers", type=int, help="TorchServe workers (default: usable cores)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/serve-peers"),
                        help="peers' virtual environments, generated files and logs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_peers.json")
    args = parser.parse_args(argv)
    # SIGTERM as Ctrl-C, so that the running server's process group is stopped on the way out
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if not shutil.which("wrk"):
        raise SystemExit("serve_peers: needs wrk (Debian package wrk)")
    checkpoint = ROOT / "weights" / f"{args.model}.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"serve_peers: no {repo_relative(checkpoint)}")

    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="wrk-", dir=work))
    tempfile.tempdir = str(scratch)  # serve_load.run_level_wrk's request bodies go here, removed at the end
    images = load_images(args.data, args.images, None)
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ctx = {"work": work, "images": images, "checkpoint": checkpoint, "classes": list(ckpt["classes"])}
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        servers = [run_peer(key, ctx, args) for key in args.peers]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        tempfile.tempdir = None

    command = shlex.join(["python", "benchmarks/serve_peers.py", *(sys.argv[1:] if argv is None else argv)])
    result = {
        "benchmark": "serve_peers",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": repo_relative_command(command),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(), "loadavg_at_start": load_at_start,
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "model": args.model,
        "checkpoint": repo_relative(checkpoint),
        "images": {"count": len(images), "source": repo_relative(args.data),
                   "mean_bytes": round(sum(map(len, images)) / len(images))},
        "load": {"client": f"wrk {serve_load.__name__}.run_level_wrk: -t1, one connection per client, keep-alive "
                           "where the server allows", "concurrency": args.concurrency,
                 "duration_s": args.duration, "warmup_s": args.warmup},
        "servers": servers,
        "ratio_service_to_peer_at_max_clients": ratios(servers),
        "max_clients": max(args.concurrency),
        "seconds": round(time.perf_counter() - started, 1),
        "note": "each server ran alone (started, warmed up, measured, stopped with its process group); wrk and the "
                "server share the same cores, so loadavg_1m_before shows how busy the machine was at each level. "
                "Only speed is measured, not accuracy: see each server's preprocessing and comparable.",
    }
    write_json(args.out, result, sort_keys=False)
    try:
        plot(servers, args.out.with_suffix(".png"), args.model)
    except Exception as exc:  # the JSON is the result; a plot that fails is reported, not fatal
        print(f"plot failed: {exc}", flush=True)
    print(json.dumps(result["ratio_service_to_peer_at_max_clients"]))
    print(f"wrote {repo_relative(args.out)} and {repo_relative(args.out.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
