"""Load test of the HTTP service against a bare onnxruntime loop on the same images.

    python benchmarks/serve_load.py [--models-dir weights] [--model NAME] [--duration 10]

1. Starts gunicorn exactly as ``make serve`` does (``serving/gunicorn.conf.py``) on a free loopback
   port and measures the time from launching it to the first successful ``POST /predict``.
2. For 1, 4 and 16 concurrent clients, sends single-image multipart ``POST /predict`` requests for
   ``--duration`` seconds (after ``--warmup`` seconds that are not counted) and records requests/s
   and p50/p95/p99 latency. The load comes from ``wrk`` (Debian package ``wrk``) when it is
   installed: a C client on one epoll thread, which leaves most of the shared cores to the service;
   otherwise (or with ``--client python``) each client is its own process with a minimal HTTP/1.1
   client.
3. Stops the service and runs the bare loop: one process per usable core, each decoding, resizing
   (``common.images.decode``, the service's own preprocessing) and classifying one image per
   ``session.run`` with one onnxruntime thread, with no HTTP at all. Then the served file alone on one
   thread at batch sizes 1, 4, 16 and 64: what batching can save per image on this CPU.
4. Where the CPU goes, with wrk: each level records the CPU seconds gunicorn's processes (master and
   workers, from ``/proc``) and wrk spent per answered request; the empty Flask app's best level and the
   bare loop's CPU per image (decode + model) give the floor of each part.
5. Writes everything to ``benchmarks/results/serve_load.json``; ``ratio`` is the best service
   throughput over the bare loop's.

The images are real CIFAR-10 test JPEGs (``--data``, default ``$CIFAR10_DATA``, else
``../shared/data/cifar10-jpeg.tar.gz``); ``--upscale N`` re-encodes them at NxN first, to load the
service like phone-sized uploads would.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.files import write_json  # noqa: E402  (the checkout's packages, not an installed copy)
from common.machine import usable_cpus  # noqa: E402
from common.paths import repo_relative, repo_relative_command  # noqa: E402
from serving.config import default_intra_op_threads, load_config, process_settings  # noqa: E402

# Service settings that change what is measured: a run's command line shows the ones it had set.
SETTINGS_RECORDED = ("PRECISION", "BATCH_MAX_IMAGES", "BATCH_WAIT_MS", "INTRA_OP_THREADS", "WORKER_CLASS",
                     "REUSE_PORT")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def load_images(archive: Path, count: int, upscale: int | None) -> list[bytes]:
    """``count`` test-split JPEGs from the archive, classes interleaved."""
    per_class: dict[str, list[bytes]] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 3 and parts[0] == "test" and member.isfile():
                bucket = per_class.setdefault(parts[1], [])
                if len(bucket) < count:
                    bucket.append(tar.extractfile(member).read())
    images = [img for group in zip(*per_class.values(), strict=False) for img in group][:count]
    if not images:
        raise SystemExit(f"no test images found in {archive}")
    if upscale:
        from PIL import Image

        resized = []
        for data in images:
            out = io.BytesIO()
            Image.open(io.BytesIO(data)).resize((upscale, upscale), Image.Resampling.BICUBIC).save(out, "JPEG",
                                                                                                  quality=90)
            resized.append(out.getvalue())
        images = resized
    return images


def predict_request(port: int, image: bytes, name: str) -> bytes:
    """A complete HTTP request; like browsers, curl and requests, each has its own random boundary."""
    boundary = f"----serve-load-{os.urandom(12).hex()}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"img\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: serve_load\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class HttpClient:
    """Just enough HTTP/1.1 for this benchmark: one request at a time, keep-alive when the server allows."""

    def __init__(self, port: int):
        self.port = port
        self.sock: socket.socket | None = None

    def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        try:
            sock.sendall(raw)
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before the response headers")
                buffer += chunk
            head, _, body = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed inside the response body")
                body += chunk
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _client(port: int, requests: list[bytes], offset: int, start: float, stop: float, results) -> None:
    client = HttpClient(port)
    latencies, errors, i = [], 0, offset
    while time.perf_counter() < stop:
        raw = requests[i % len(requests)]
        i += 1
        began = time.perf_counter()
        try:
            status, body = client.request(raw)
            ok = status == 200 and b'"predictions"' in body
        except OSError:
            ok = False
        ended = time.perf_counter()
        if began >= start and ended <= stop:
            if ok:
                latencies.append(ended - began)
            else:
                errors += 1
    client.close()
    results.put((latencies, errors))


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_level(port: int, requests: list[bytes], concurrency: int, warmup: float, duration: float) -> dict:
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    begin = time.perf_counter() + 0.3  # let every client process exist before the clock starts
    start, stop = begin + warmup, begin + warmup + duration
    procs = [ctx.Process(target=_client, args=(port, requests, k * 7919, start, stop, results))
             for k in range(concurrency)]
    load_before = os.getloadavg()[0]
    for p in procs:
        p.start()
    collected = [results.get(timeout=warmup + duration + 120) for _ in procs]
    for p in procs:
        p.join()
    latencies = sorted(x for lat, _ in collected for x in lat)
    errors = sum(e for _, e in collected)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / duration, 1),
        "latency_ms": {f"p{q}": round(percentile(latencies, q) * 1000, 2) for q in (50, 95, 99)},
        "mean_latency_ms": round(sum(latencies) / max(1, len(latencies)) * 1000, 2),
        "loadavg_1m_before": round(load_before, 2),
    }


WRK_SCRIPT = r"""
-- Cycles through the request bodies written by serve_load.py; reports latencies as JSON.
local bodies, headers, n = {}, {}, 0
function init(args)
  local dir = args[1]
  local count = tonumber(args[2])
  for i = 0, count - 1 do
    local f = assert(io.open(dir .. "/body-" .. i, "rb"))
    bodies[i] = f:read("*a")
    f:close()
  end
  headers["Content-Type"] = "multipart/form-data; boundary=" .. args[3]
  n = math.random(0, count - 1)
end
function request()
  n = (n + 1) % #bodies
  return wrk.format("POST", "/predict", headers, bodies[n])
end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.status + summary.errors.timeout
  io.write(string.format('WRK-JSON {"requests": %d, "errors": %d, "seconds": %f, "p50": %f, "p95": %f, '
    .. '"p99": %f, "mean": %f}\n', summary.requests, errors, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, latency.mean / 1e3))
end
"""
WRK_BOUNDARY = "serve-load-wrk-boundary-7f3a9c"


def process_tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of ``root_pid`` and all its descendants (gunicorn's master and workers)."""
    parents, times = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(times.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_level_wrk(port: int, images: list[bytes], concurrency: int, warmup: float, duration: float,
                  server_pid: int | None = None) -> dict:
    """The same load from wrk (C, one thread, epoll): the client takes far less of the shared CPU.

    With ``server_pid`` (gunicorn's master) the measured part also records the server's and wrk's CPU
    per request."""
    folder = Path(tempfile.mkdtemp(prefix="serve-load-wrk-"))
    for i, data in enumerate(images):
        (folder / f"body-{i}").write_bytes(
            (f"--{WRK_BOUNDARY}\r\nContent-Disposition: form-data; name=\"img\"; filename=\"test-{i}.jpg\"\r\n"
             f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{WRK_BOUNDARY}--\r\n".encode())
    (folder / "load.lua").write_text(WRK_SCRIPT)
    url = f"http://127.0.0.1:{port}"

    def wrk(seconds: float) -> dict:
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                              "-s", str(folder / "load.lua"), url, "--", str(folder), str(len(images)), WRK_BOUNDARY],
                             capture_output=True, text=True, timeout=seconds + 60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("WRK-JSON ")), None)
        if out.returncode != 0 or line is None:
            raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
        return json.loads(line[len("WRK-JSON "):])

    if warmup:
        wrk(warmup)
    load_before = os.getloadavg()[0]
    server_before = process_tree_cpu_seconds(server_pid) if server_pid else None
    client_before = children_cpu_seconds()
    r = wrk(duration)
    cpu = {}
    if server_pid and r["requests"]:
        cpu = {"server_cpu_ms_per_request": round((process_tree_cpu_seconds(server_pid) - server_before)
                                                  / r["requests"] * 1000, 3),
               "client_cpu_ms_per_request": round((children_cpu_seconds() - client_before) / r["requests"] * 1000, 3)}
    return {
        "concurrency": concurrency,
        "requests": r["requests"],
        "errors": r["errors"],
        "requests_per_s": round(r["requests"] / r["seconds"], 1),
        "latency_ms": {"p50": round(r["p50"], 2), "p95": round(r["p95"], 2), "p99": round(r["p99"], 2)},
        "mean_latency_ms": round(r["mean"], 2),
        "loadavg_1m_before": round(load_before, 2),
        **cpu,
    }


def _bare_worker(model_path: str, images: list[bytes], offset: int, start: float, stop: float,
                 max_pixels: int, results) -> None:
    import numpy as np
    import onnxruntime as ort

    from common.contract import INPUT_NAME, PROBABILITIES
    from common.images import decode
    from serving.models import session_options

    session = ort.InferenceSession(model_path, sess_options=session_options(1), providers=["CPUExecutionProvider"])
    for data in images[:8]:  # warm-up
        session.run([PROBABILITIES], {INPUT_NAME: decode(data, max_pixels)[np.newaxis]})
    done, i = 0, offset
    while time.perf_counter() < start:
        time.sleep(0.001)
    cpu_start = time.process_time()
    while time.perf_counter() < stop:
        session.run([PROBABILITIES], {INPUT_NAME: decode(images[i % len(images)], max_pixels)[np.newaxis]})
        i += 1
        done += 1
    results.put((done, time.process_time() - cpu_start))


def served_model_file(models_dir: Path, sha256: str) -> Path:
    """The file in ``models_dir`` whose bytes the service reported serving, so both sides run the same model."""
    import hashlib

    for path in sorted(models_dir.glob("*.onnx")):
        if hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
            return path
    raise SystemExit(f"serve_load: no file in {models_dir} has the served model's sha256 {sha256[:12]}")


def bare_loop(model_path: Path, images: list[bytes], processes: int, duration: float, max_pixels: int) -> dict:
    ctx = mp.get_context("spawn")  # fresh interpreters: no onnxruntime state inherited across fork
    results = ctx.Queue()
    start = time.perf_counter() + 5.0  # spawn + imports + session creation happen before the clock starts
    stop = start + duration
    procs = [ctx.Process(target=_bare_worker, args=(str(model_path), images, k * 7919, start, stop, max_pixels,
                                                    results)) for k in range(processes)]
    load_before = os.getloadavg()[0]
    for p in procs:
        p.start()
    counts, cpu = zip(*[results.get(timeout=duration + 120) for _ in procs], strict=True)
    for p in procs:
        p.join()
    return {"processes": processes, "images": sum(counts), "images_per_s": round(sum(counts) / duration, 1),
            "cpu_ms_per_image": round(sum(cpu) / max(1, sum(counts)) * 1000, 3),
            "loadavg_1m_before": round(load_before, 2)}


def one_thread_batch_rates(model_path: Path, images: list[bytes], max_pixels: int, sizes=(1, 4, 16, 64),
                           seconds: float = 2.0) -> dict[str, float]:
    """Images/s of ``session.run`` alone (decoded images, one onnxruntime thread) per batch size: the
    most that dynamic batching can save per image on this CPU."""
    import numpy as np
    import onnxruntime as ort

    from common.contract import INPUT_NAME, PROBABILITIES
    from common.images import decode
    from serving.models import session_options

    session = ort.InferenceSession(str(model_path), sess_options=session_options(1),
                                   providers=["CPUExecutionProvider"])
    decoded = np.stack([decode(data, max_pixels) for data in images[:64]])
    rates = {}
    for size in sizes:
        batch = np.resize(decoded, (size, *decoded.shape[1:]))
        session.run([PROBABILITIES], {INPUT_NAME: batch})
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run([PROBABILITIES], {INPUT_NAME: batch})
            done += size
        rates[str(size)] = round(done / (time.perf_counter() - start), 1)
    return rates


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(port: int, env: dict, probe: bytes, log_path: Path,
                  app: str = "serving:create_app()") -> tuple[subprocess.Popen, float]:
    """Launch gunicorn; return it and the seconds from launch to the first successful prediction."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(log_path, "wb")  # noqa: SIM115 (kept open for the server's lifetime)
    launched = time.perf_counter()
    proc = subprocess.Popen([str(gunicorn), "--config", "serving/gunicorn.conf.py", app],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = HttpClient(port)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {proc.returncode}; see {log_path}")
        if time.perf_counter() - launched > 120:
            stop_service(proc)
            raise SystemExit(f"no prediction within 120 s; see {log_path}")
        try:
            status, _ = client.request(probe)
            if status == 200:
                return proc, time.perf_counter() - launched
        except OSError:
            pass
        client.close()
        time.sleep(0.02)


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def get_json(port: int, path: str) -> dict:
    client = HttpClient(port)
    status, body = client.request(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    client.close()
    if status != 200:
        raise SystemExit(f"GET {path} answered {status}")
    return json.loads(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "weights"))
    parser.add_argument("--model", help="model to load (default: the service's default model)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA") or DEFAULT_DATA))
    parser.add_argument("--images", type=int, default=500, help="distinct test images to cycle through")
    parser.add_argument("--upscale", type=int, help="re-encode the images at NxN pixels first")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the service's default)")
    parser.add_argument("--worker-class", help="gunicorn worker class (default: the service's default)")
    parser.add_argument("--threads", type=int, help="threads per gunicorn worker (gthread)")
    parser.add_argument("--intra-op-threads", type=int, help="onnxruntime threads per session run in the service")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python",
                        help="load generator: wrk (Debian package wrk; default when installed) or Python processes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args(argv)

    models_dir = Path(args.models_dir).resolve()
    images = load_images(args.data, args.images, args.upscale)
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "MODELS_DIR": str(models_dir)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if args.model:
        env["DEFAULT_MODEL"] = args.model
    for key, value in (("WORKERS", args.workers), ("WORKER_CLASS", args.worker_class), ("THREADS", args.threads),
                       ("INTRA_OP_THREADS", args.intra_op_threads)):
        if value:
            env[key] = str(value)
    requests = [predict_request(port, data, f"test-{i}.jpg") for i, data in enumerate(images)]

    def measure(concurrency: int, server: subprocess.Popen) -> dict:
        if args.client == "wrk":
            return run_level_wrk(port, images, concurrency, args.warmup, args.duration, server.pid)
        return run_level(port, requests, concurrency, args.warmup, args.duration)

    log_path = Path(tempfile.mkdtemp(prefix="serve-load-")) / "gunicorn.log"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting gunicorn on 127.0.0.1:{port} with {models_dir} ...", flush=True)
    proc, first_prediction_s = start_service(port, env, requests[0], log_path)
    try:
        models = get_json(port, "/models")
        model = models["default_model"]
        info = next(m for m in models["models"] if m["name"] == model)
        print(f"first prediction {first_prediction_s:.2f} s after launch; model {model}", flush=True)
        levels = []
        for concurrency in args.concurrency:
            level = measure(concurrency, proc)
            levels.append(level)
            print(f"  {concurrency:>3} clients: {level['requests_per_s']:>8.1f} req/s  "
                  f"p50 {level['latency_ms']['p50']:.2f}  p95 {level['latency_ms']['p95']:.2f}  "
                  f"p99 {level['latency_ms']['p99']:.2f} ms  errors {level['errors']}", flush=True)
    finally:
        stop_service(proc)

    # The same gunicorn settings around an app that only reads the upload: HTTP + Flask alone.
    floor_proc, _ = start_service(port, env, requests[0], log_path.with_name("floor.log"), "benchmarks.empty_app:app")
    try:
        floor_level = max((measure(c, floor_proc) for c in args.concurrency), key=lambda level: level["requests_per_s"])
    finally:
        stop_service(floor_proc)
    floor = floor_level["requests_per_s"]
    print(f"  empty Flask app under the same gunicorn: {floor:.1f} req/s", flush=True)

    max_pixels = int(os.environ.get("MAX_IMAGE_PIXELS", "64000000"))
    served_file = served_model_file(models_dir, info["sha256"])  # NAME.int8.onnx where the service serves int8
    bare = bare_loop(served_file, images, usable_cpus(), args.duration, max_pixels)
    print(f"  bare loop ({bare['processes']} processes): {bare['images_per_s']:.1f} images/s", flush=True)
    batch_rates = one_thread_batch_rates(served_file, images, max_pixels)
    print(f"  {served_file.name} alone, one thread, images/s by batch size: {batch_rates}", flush=True)
    best = max(level["requests_per_s"] for level in levels)
    ratio = round(best / bare["images_per_s"], 3) if bare["images_per_s"] else None
    print(f"  best service throughput / bare loop = {ratio}", flush=True)

    settings = process_settings(env)  # what gunicorn.conf.py made of the same environment
    app_settings = load_config(environ=env)
    workers = settings["workers"]
    result = {
        "benchmark": "serve_load",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": repo_relative_command(shlex.join([
            *(f"{key}={os.environ[key]}" for key in SETTINGS_RECORDED if os.environ.get(key)),
            "python", "benchmarks/serve_load.py", *(sys.argv[1:] if argv is None else argv)])),
        "machine": {"usable_cpus": usable_cpus(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "service": {"workers": workers, "worker_class": settings["worker_class"],
                    "threads": settings["threads"],
                    "batch_max_images": app_settings["BATCH_MAX_IMAGES"],
                    "batch_wait_ms": app_settings["BATCH_WAIT_MS"],
                    "intra_op_threads": int(env.get("INTRA_OP_THREADS", default_intra_op_threads(workers))),
                    "model": model, "arch": info.get("arch"), "model_sha256": info.get("sha256"),
                    "model_file": repo_relative(served_file), "precision": info.get("precision")},
        "images": {"count": len(images), "source": repo_relative(args.data), "upscaled_to": args.upscale,
                   "mean_bytes": round(sum(map(len, images)) / len(images))},
        "start_to_first_prediction_s": round(first_prediction_s, 3),
        "levels": levels,
        "client": args.client,
        "empty_flask_app_requests_per_s": floor,
        "empty_flask_app_best_level": floor_level,
        "bare_loop": bare,
        "one_thread_images_per_s_by_batch_size": batch_rates,
        "best_service_requests_per_s": best,
        "ratio_service_to_bare": ratio,
        "target_ratio": 0.8,
        "note": "client processes, gunicorn and the bare loop share the same cores; loadavg_1m_before shows "
                "how busy the machine was when each measurement started; server_cpu_ms_per_request is the CPU "
                "of gunicorn's master and workers per answered request over the measured seconds, "
                "client_cpu_ms_per_request wrk's",
    }
    write_json(args.out, result, sort_keys=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
