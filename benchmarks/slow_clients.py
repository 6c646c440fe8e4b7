"""Does the service keep answering while many clients stall, hold idle connections or hold uploads open?

    python benchmarks/slow_clients.py [--stalled 100] [--worker-class serving.worker.ServiceWorker gthread]
    python benchmarks/slow_clients.py --attack idle uploads [--idle 3000] [--uploads 300] [--duration 30]

For each worker class: starts the service as ``make serve`` does (2 workers), opens ``--stalled``
connections that send half their headers and stop, and as many that send full headers
(Content-Length 1,000,000) and 5 bytes of body and stop, then times ``GET /healthz`` and a
single-image ``POST /predict`` (a real CIFAR-10 test JPEG) ``--probes`` times each, with a
``--probe-timeout`` limit; a probe that times out counts as failed. Afterwards it records how each
stalled connection ended (408 answer, dropped, or still open) within ``--wait`` seconds.
Writes ``benchmarks/results/slow_clients.json``.

``--attack`` (admission control; the service with its defaults, 2 workers, as ``make serve`` starts it):

- ``idle``: ``--idle`` keep-alive connections (more than 2 workers x WORKER_CONNECTIONS), each refreshed
  with a ``GET /healthz`` every KEEPALIVE - 1 s so that KEEPALIVE never closes it, and reopened at its
  next refresh when the service closes it;
- ``uploads``: ``--uploads`` concurrent uploads of ``--upload-mb`` MiB (just under MAX_UPLOAD_MB), each
  sending its headers and all of its body but the last KiB, then holding the connection open; when the
  service answers (503 at once, or 408 after READ_TIMEOUT) it uploads again after 1 s (Retry-After);
- ``idle_memory``: not an attack: one worker holds ``--idle-memory`` idle keep-alive connections, and the
  growth of its RSS per connection is what an idle connection costs (for WORKER_CONNECTIONS' default).

The attack runs in a separate process for ``--duration`` seconds after ``--ramp`` seconds of build-up;
meanwhile a fresh connection sends one ``POST /predict`` (a CIFAR-10 test JPEG) every
``--probe-every`` s (``--probe-timeout`` limit), and the workers' RSS is sampled every 0.2 s. The result
has the probes' latencies, each worker's RSS before and at its peak, the service's admission metrics
and what the attacker saw. Writes ``benchmarks/results/slow_clients_admission.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shlex
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import DEFAULT_DATA, free_port, load_images, predict_request, start_service, stop_service  # noqa: E402, I001

sys.path.insert(0, str(ROOT))
from serving.config import MIB, Settings  # noqa: E402


def stall(port: int, in_body: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if in_body:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1000000\r\n\r\n--b\r\n")
    else:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
    return sock


def probe(port: int, request: bytes, timeout: float) -> float | None:
    """Seconds to an answer on a fresh connection, or None if none came within ``timeout``."""
    began = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reply += chunk
        return time.perf_counter() - began if reply.startswith(b"HTTP/1.1 200") else None
    except OSError:
        return None


def outcome(sock: socket.socket, deadline: float) -> str:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return "still open"
    except ConnectionResetError:
        return "dropped"
    finally:
        sock.close()
    return "dropped" if not data else data.split(b"\r\n", 1)[0].decode("latin-1")


def measure(worker_class: str, args, image: bytes) -> dict:
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": "2", "WORKER_CLASS": worker_class,
           "DRAIN_SECONDS": "0"}
    log_path = Path("/tmp") / f"slow_clients_{worker_class.rsplit('.', 1)[-1]}.log"
    proc, _ = start_service(port, env, predict_request(port, image, "probe.jpg"), log_path)
    sockets = []
    try:
        sockets = [stall(port, in_body=False) for _ in range(args.stalled)]
        sockets += [stall(port, in_body=True) for _ in range(args.stalled)]
        time.sleep(0.5)
        health = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        predict = predict_request(port, image, "cat.jpg")
        predict = predict.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1)
        results = {}
        for name, request in (("healthz", health), ("predict", predict)):
            times = [probe(port, request, args.probe_timeout) for _ in range(args.probes)]
            answered = sorted(t for t in times if t is not None)
            results[name] = {"probes": len(times), "answered": len(answered),
                             "max_s": round(answered[-1], 4) if answered else None,
                             "median_s": round(answered[len(answered) // 2], 4) if answered else None}
        deadline = time.monotonic() + args.wait
        ends: dict[str, dict[str, int]] = {"in_headers": {}, "in_body": {}}
        for index, sock in enumerate(sockets):
            kind = "in_headers" if index < args.stalled else "in_body"
            end = outcome(sock, deadline)
            ends[kind][end] = ends[kind].get(end, 0) + 1
        sockets = []
    finally:
        for sock in sockets:
            sock.close()
        stop_service(proc)
    return {"worker_class": worker_class, **results, "stalled_connections_ended_within_s": args.wait,
            "stalled_connection_outcomes": ends}


# ---- admission control: the attacks ----------------------------------------------------------------------

async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 answer's status line (its body, of Content-Length bytes, read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


async def _idle_attack(port: int, count: int, refresh: float, stop: float, stats: dict) -> None:
    async def one(index: int) -> None:
        await asyncio.sleep(random.uniform(0, refresh))  # spread the refreshes over the interval
        writer = None
        while time.monotonic() < stop:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    stats["connections_opened"] += 1
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status = await asyncio.wait_for(_read_answer(reader), 30)
                stats["refreshes"] += 1
                stats["refresh_status"][status.decode()] = stats["refresh_status"].get(status.decode(), 0) + 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                stats["closed_by_service"] += 1
                if writer is not None:
                    writer.close()
                writer = None
            await asyncio.sleep(refresh)  # before KEEPALIVE runs out (or: reopen at the next refresh)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(count)))


async def _upload_attack(port: int, count: int, size: int, stop: float, stats: dict) -> None:
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
    block = b"\xff" * (256 * 1024)

    async def one(index: int) -> None:
        await asyncio.sleep(random.uniform(0, 1))
        while time.monotonic() < stop:
            writer = answer = None
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                stats["uploads_started"] += 1
                answer = asyncio.ensure_future(_read_answer(reader))
                writer.write(head)
                sent = 0
                while sent < size - 1024 and not answer.done():
                    chunk = block[:size - 1024 - sent]
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                if not answer.done():
                    stats["held_open_before_last_bytes"] += 1
                await asyncio.wait_for(asyncio.shield(answer), max(1.0, stop - time.monotonic()))
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                pass
            finally:
                if writer is not None:
                    writer.close()
            if answer is not None and answer.done() and not answer.cancelled() and answer.exception() is None:
                status = answer.result().decode()
                stats["answers"][status] = stats["answers"].get(status, 0) + 1
            else:
                stats["dropped_without_answer"] += 1
                if answer is not None:
                    answer.cancel()
            await asyncio.sleep(1.0)  # Retry-After

    await asyncio.gather(*(one(i) for i in range(count)))


def attacker_main(args) -> int:
    """The attack itself (a separate process, so that its thousands of sockets cost the prober nothing)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = time.monotonic() + args.ramp + args.duration
    stats: dict = {"connections_opened": 0, "refreshes": 0, "refresh_status": {}, "closed_by_service": 0,
                   "uploads_started": 0, "held_open_before_last_bytes": 0, "answers": {}, "dropped_without_answer": 0}
    if args.attacker == "idle":
        coroutine = _idle_attack(args.port, args.idle, args.refresh, stop, stats)
    else:
        coroutine = _upload_attack(args.port, args.uploads, int(args.upload_mb * MIB), stop, stats)
    asyncio.run(coroutine)
    print(json.dumps({k: v for k, v in stats.items() if v}))
    return 0


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_pids(master: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return sorted(found)


def admission_metrics(port: int, timeout: float = 60.0) -> dict:
    """The service's admission series from /metrics (fetched like a probe, on a fresh connection)."""
    wanted = ("cifar10_open_connections", "cifar10_idle_connections", "cifar10_connections_closed_to_admit_total",
              "cifar10_request_body_bytes_in_flight", "cifar10_refused_requests_total")
    began = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            text = b""
            while chunk := sock.recv(65536):
                text += chunk
    except OSError as exc:
        return {"error": f"{type(exc).__name__} after {time.monotonic() - began:.1f} s"}
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.decode().splitlines()
            if line.startswith(wanted)}


def summarize(times: list[float | None]) -> dict:
    answered = sorted(t for t in times if t is not None)
    return {"probes": len(times), "answered": len(answered),
            "max_s": round(answered[-1], 4) if answered else None,
            "median_s": round(answered[len(answered) // 2], 4) if answered else None,
            "over_1s": sum(1 for t in times if t is None or t > 1.0),
            "each_s": [None if t is None else round(t, 3) for t in times]}


def measure_attack(attack: str, args, image: bytes) -> dict:
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": "2", "DRAIN_SECONDS": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    settings = Settings.from_environ(env)
    proc, _ = start_service(port, env, predict_request(port, image, "probe.jpg"),
                            Path("/tmp") / f"slow_clients_{attack}.log")
    attacker = None
    try:
        workers = worker_pids(proc.pid)
        probe_request = predict_request(port, image, "cat.jpg").replace(
            b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1)
        # Every worker first serves /predict, alone and 8 at a time (batching, its inference threads), so that
        # its baseline is that of a worker in service, not of one that has only loaded its models.
        for _ in range(5):
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: probe(port, probe_request, args.probe_timeout), range(8)))
        quiet = [probe(port, probe_request, args.probe_timeout) for _ in range(40)]
        time.sleep(2.0)
        before = {pid: rss_mib(pid) for pid in workers}
        peak = dict(before)
        sampling = threading.Event()

        def sample():
            while not sampling.wait(0.2):
                for pid in workers:
                    value = rss_mib(pid)
                    if value is not None:
                        peak[pid] = max(peak[pid], value)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        attacker = subprocess.Popen([sys.executable, __file__, "--attacker", attack, "--port", str(port),
                                     "--idle", str(args.idle), "--uploads", str(args.uploads),
                                     "--upload-mb", str(args.upload_mb), "--refresh", str(settings.keepalive - 1),
                                     "--ramp", str(args.ramp), "--duration", str(args.duration)],
                                    stdout=subprocess.PIPE, text=True)
        time.sleep(args.ramp)
        probes, end = [], time.monotonic() + args.duration
        while time.monotonic() < end:
            began = time.monotonic()
            probes.append(probe(port, probe_request, args.probe_timeout))
            time.sleep(max(0.0, args.probe_every - (time.monotonic() - began)))
        service_metrics = admission_metrics(port)
        seen = json.loads(attacker.communicate(timeout=120)[0].strip().splitlines()[-1])
        attacker = None
        sampling.set()
        sampler.join()
        workers_mib = {str(pid): {"rss_before_mib": round(before[pid], 1), "rss_peak_mib": round(peak[pid], 1),
                                  "growth_mib": round(peak[pid] - before[pid], 1)} for pid in workers}
    finally:
        if attacker is not None:
            attacker.kill()
        stop_service(proc)
    result = {"attack": attack, "service": {"workers": settings.workers,
                                            "worker_connections": settings.worker_connections,
                                            "keepalive_s": settings.keepalive, "max_upload_mb": settings.max_upload_mb,
                                            "body_budget_mb": getattr(settings, "body_budget_mb", None),
                                            "read_timeout_s": settings.read_timeout},
              "probes_without_attack": summarize(quiet), "probes_during_attack": summarize(probes),
              "probe_every_s": args.probe_every, "workers": workers_mib, "service_metrics_at_end": service_metrics,
              "attacker": seen}
    if attack == "idle":
        result["idle_connections"] = args.idle
        result["refresh_every_s"] = settings.keepalive - 1
    else:
        result["uploads"] = args.uploads
        result["upload_mib"] = args.upload_mb
        largest = max(w["growth_mib"] for w in workers_mib.values())
        if getattr(settings, "body_budget_mb", None) is not None:
            result["largest_worker_growth_over_budget_mib"] = round(largest - settings.body_budget_mb, 1)
    return result


def measure_idle_memory(args, image: bytes) -> dict:
    """Worker memory per idle keep-alive connection: one worker holds ``--idle-memory`` connections, each after
    one ``GET /healthz`` (KEEPALIVE long enough that none expires); its RSS before and after."""
    count = args.idle_memory
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": "1", "DRAIN_SECONDS": "0",
           "WORKER_CONNECTIONS": str(count + 100), "KEEPALIVE": "300", "KEEPALIVE_REQUESTS": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc, _ = start_service(port, env, predict_request(port, image, "probe.jpg"), Path("/tmp/slow_clients_memory.log"))
    held: list[socket.socket] = []
    try:
        (worker,) = worker_pids(proc.pid)
        for _ in range(20):
            probe(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10)
        time.sleep(1.0)
        before = rss_mib(worker)
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(sock)
        for sock in held:
            answer = b""
            while b'"ok"' not in answer:
                answer += sock.recv(4096)
        time.sleep(2.0)
        after = rss_mib(worker)
        service_metrics = admission_metrics(port)
    finally:
        for sock in held:
            sock.close()
        stop_service(proc)
    return {"attack": "idle_memory", "idle_connections_held_by_one_worker": count, "rss_before_mib": round(before, 1),
            "rss_after_mib": round(after, 1), "kib_per_idle_connection": round((after - before) * 1024 / count, 1),
            "service_metrics": service_metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=100, help="stalled connections of each kind")
    parser.add_argument("--worker-class", nargs="+", default=["serving.worker.ServiceWorker", "gthread"])
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--probe-timeout", type=float, default=5.0)
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to wait for the stalled connections' ends")
    parser.add_argument("--attack", nargs="+", choices=("idle", "uploads", "idle_memory"),
                        help="admission control: idle connections, held-open uploads, or the memory one idle "
                             "connection costs (instead of stalled clients)")
    parser.add_argument("--idle-memory", type=int, default=2000,
                        help="idle connections one worker holds for --attack idle_memory")
    parser.add_argument("--idle", type=int, default=3000, help="idle keep-alive connections (--attack idle)")
    parser.add_argument("--uploads", type=int, default=300, help="concurrent held-open uploads (--attack uploads)")
    parser.add_argument("--upload-mb", type=float, default=9.5, help="size of each upload in MiB")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of probing during an attack")
    parser.add_argument("--ramp", type=float, default=8.0, help="seconds the attack builds up before probing")
    parser.add_argument("--probe-every", type=float, default=0.5)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA") or DEFAULT_DATA))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--note", help="recorded in the result (e.g. which serving code was measured)")
    parser.add_argument("--attacker", choices=("idle", "uploads"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--refresh", type=float, default=4.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attacker:
        return attacker_main(args)
    image = load_images(args.data, 1, None)[0]
    command = shlex.join(["python", "benchmarks/slow_clients.py", *(argv if argv is not None else sys.argv[1:])])
    machine = {"usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
               "python": platform.python_version(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    if args.attack:
        runs = []
        for attack in args.attack:
            run = measure_idle_memory(args, image) if attack == "idle_memory" else measure_attack(attack, args, image)
            print(json.dumps(run))
            runs.append(run)
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result = {"benchmark": "slow_clients_admission", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": command, "note": args.note, "machine": machine, "probe_timeout_s": args.probe_timeout,
                  "duration_s": args.duration, "runs": runs}
        out = args.out or ROOT / "benchmarks" / "results" / "slow_clients_admission.json"
    else:
        runs = []
        for worker_class in args.worker_class:
            run = measure(worker_class, args, image)
            print(json.dumps(run))
            runs.append(run)
        result = {"benchmark": "slow_clients", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": command, "machine": machine,
                  "stalled_per_kind": args.stalled, "probe_timeout_s": args.probe_timeout, "runs": runs}
        out = args.out or ROOT / "benchmarks" / "results" / "slow_clients.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
