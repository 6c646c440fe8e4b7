"""Does the service keep answering while many clients stall? Measured per gunicorn worker class.

    python benchmarks/slow_clients.py [--stalled 100] [--worker-class serving.worker.ServiceWorker gthread]

For each worker class: starts the service as ``make serve`` does (2 workers), opens ``--stalled``
connections that send half their headers and stop, and as many that send full headers
(Content-Length 1,000,000) and 5 bytes of body and stop, then times ``GET /healthz`` and a
single-image ``POST /predict`` (a real CIFAR-10 test JPEG) ``--probes`` times each, with a
``--probe-timeout`` limit; a probe that times out counts as failed. Afterwards it records how each
stalled connection ended (408 answer, dropped, or still open) within ``--wait`` seconds.
Writes ``benchmarks/results/slow_clients.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import DEFAULT_DATA, free_port, load_images, predict_request, start_service, stop_service  # noqa: E402, I001


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=100, help="stalled connections of each kind")
    parser.add_argument("--worker-class", nargs="+", default=["serving.worker.ServiceWorker", "gthread"])
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--probe-timeout", type=float, default=5.0)
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to wait for the stalled connections' ends")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA") or DEFAULT_DATA))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "slow_clients.json")
    args = parser.parse_args(argv)
    image = load_images(args.data, 1, None)[0]
    runs = []
    for worker_class in args.worker_class:
        run = measure(worker_class, args, image)
        print(json.dumps(run))
        runs.append(run)
    result = {"benchmark": "slow_clients", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": "python benchmarks/slow_clients.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                          "python": platform.python_version()},
              "stalled_per_kind": args.stalled, "probe_timeout_s": args.probe_timeout, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
