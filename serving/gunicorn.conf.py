"""gunicorn settings for ``gunicorn --config serving/gunicorn.conf.py 'serving:create_app()'``.

Environment: HOST (127.0.0.1), PORT (8000), WORKERS (usable CPUs), WORKER_CLASS (gthread),
THREADS (1 per worker), INTRA_OP_THREADS (usable CPUs // WORKERS, at least 1), TIMEOUT (30 s),
REUSE_PORT (1: one listening socket per worker), ACCESS_LOG (off; 1 = to stdout), LOG_LEVEL
(info), plus the service's own settings (MODELS_DIR, DEFAULT_MODEL, MAX_UPLOAD_MB, ... see
serving/config.py).

Start-up: before any worker is forked, every model is loaded, verified and warmed once (in a
short-lived child: the master never imports onnxruntime, see _verify_models); a missing or corrupt
model, bad metadata or an unknown DEFAULT_MODEL is one clear log line and exit status 1. Each
worker then opens its own onnxruntime sessions.

Metrics: PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless given) is emptied at start;
the workers write their metrics there, and a dead worker's files are marked in child_exit.
"""

import os
import shutil
import sys
import tempfile

# Must be in the environment before any worker imports prometheus_client.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cifar10-serving-metrics-")

from serving.config import ConfigError, default_intra_op_threads, default_workers, load_config  # noqa: E402

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = default_workers()
# gthread for HTTP keep-alive (sync workers close every connection: 2-3x slower in
# benchmarks/serve_load.py). One thread per worker measured faster than two (the threads of a worker
# share one GIL); THREADS=2 or more lets a worker answer others while a slow client uploads.
worker_class = os.environ.get("WORKER_CLASS", "gthread")
threads = int(os.environ.get("THREADS", "1"))
# Each worker listens on its own SO_REUSEPORT socket and the kernel spreads new connections over
# them. With one shared socket, whichever worker wakes first accepts a burst of keep-alive
# connections alone (seen with 4 and with 16 benchmark clients: all on one of 2 workers).
# on_starting first checks that nothing else listens on the port, so two servers never share it.
reuse_port = os.environ.get("REUSE_PORT", "1").lower() not in ("0", "false", "no", "off")
timeout = int(os.environ.get("TIMEOUT", "30"))
graceful_timeout = 10
keepalive = 5
loglevel = os.environ.get("LOG_LEVEL", "info")
errorlog = "-"
accesslog = "-" if os.environ.get("ACCESS_LOG", "").lower() in ("1", "true", "yes", "on") else None
proc_name = "cifar10-serving"
control_socket_disable = True  # gunicorn >= 24's control socket: unused here, and one path per user collides
preload_app = False
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"  # worker heartbeats in memory, not on a (possibly slow) disk


def _reset_metrics_dir(path: str) -> None:
    """Drop the metric files of a previous run (only prometheus_client's *.db files, whatever the folder holds)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        target = os.path.join(path, name)
        if name.endswith(".db") and os.path.isfile(target):
            os.unlink(target)


def _verify_models(config: dict) -> tuple[bool, str]:
    """Load, verify and warm every model in a forked child; the master itself never imports onnxruntime.

    (onnxruntime loaded in a process that then forks leaves the children unable to exit: they hang
    or abort in its static destructors. So the master stays free of it and only the child loads it.)
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one line, leave without running any interpreter shutdown code
        os.close(read_end)
        ok, message = False, "unknown failure"
        try:
            from serving.models import ModelLoadError, ModelRegistry

            try:
                registry = ModelRegistry.load(config["MODELS_DIR"], config["DEFAULT_MODEL"], config["INTRA_OP_THREADS"])
                ok, message = True, f"{', '.join(registry.names)} (default {registry.default_name})"
            except ModelLoadError as exc:
                message = str(exc)
        except BaseException as exc:  # anything at all must reach the master as a message
            message = f"unexpected {type(exc).__name__}: {exc}"
        os.write(write_end, (("ok " if ok else "error ") + message).encode("utf-8", "replace"))
        os._exit(0 if ok else 1)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    report = b"".join(chunks).decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) == 0 and report.startswith("ok "):
        return True, report[3:]
    return False, report.removeprefix("error ") or f"model check died ({os.waitstatus_to_exitcode(status)})"


def _address_in_use(server) -> str | None:
    """The first TCP address someone already listens on (SO_REUSEPORT alone would silently share it)."""
    import socket

    for address in server.cfg.address:
        if not isinstance(address, tuple):
            continue  # a unix socket path: gunicorn itself refuses one in use
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address[:2])
            except OSError as exc:
                return f"{address[0]}:{address[1]} ({exc.strerror})"
    return None


def on_starting(server):
    if server.cfg.reuse_port and (busy := _address_in_use(server)):
        server.log.error("cannot start the service: the address %s is already in use", busy)
        on_exit(server)
        sys.exit(1)
    _reset_metrics_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # Workers run in parallel: give each its share of the cores, unless the operator chose.
    os.environ.setdefault("INTRA_OP_THREADS", str(default_intra_op_threads(server.cfg.workers)))
    try:
        config = load_config()
    except ConfigError as exc:
        ok, message = False, str(exc)
    else:
        ok, message = _verify_models(config)
    if not ok:
        server.log.error("cannot start the service: %s", message)
        on_exit(server)
        sys.exit(1)
    server.log.info("models verified: %s; %d worker(s) x %d onnxruntime thread(s)",
                    message, server.cfg.workers, config["INTRA_OP_THREADS"])


def post_fork(server, worker):
    """The service's own log lines (model loading, unexpected errors with their traceback) go to gunicorn's log."""
    import logging

    service_log = logging.getLogger("serving")
    service_log.handlers = list(server.log.error_log.handlers)
    service_log.setLevel(server.log.error_log.level)
    service_log.propagate = False


def when_ready(server):
    server.log.info("serving on %s", ", ".join(f"http://{bound}" for bound in server.cfg.bind))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""), ignore_errors=True)
