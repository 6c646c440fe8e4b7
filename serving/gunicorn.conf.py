"""gunicorn settings for ``gunicorn --config serving/gunicorn.conf.py 'serving:create_app()'``.

Settings: the environment is parsed once, here in the master (``serving.config.Settings``, the one table
of every setting), and installed; the workers are forked from this process and read that same object
(``serving.config.active()``): the app's limits, the worker class's deadlines and gunicorn's own options
below all come from that one parse. A bad setting is one line on stderr and exit status 1.

Worker: serving.worker.ServiceWorker, gevent with read and request deadlines, so that slow or
stalled clients hold a greenlet each, never the worker (see that module for the measurements).

Start-up: before any worker is forked, the master reads MODELS_DIR's bytes once and keeps them
(serving/model_files.py): every worker, also one respawned later, serves exactly those bytes.
The models are verified and warmed once from them (in a short-lived child: the master never
imports onnxruntime, see _verify_models); a missing or corrupt model, bad metadata or an unknown
DEFAULT_MODEL is one clear log line and exit status 1.

Stopping: on SIGTERM each worker answers /readyz with 503 for DRAIN_SECONDS while still serving,
then closes its listener and finishes in-flight requests (GRACEFUL_TIMEOUT). SIGINT/SIGQUIT stop
at once.

Metrics: PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless given) is emptied at start;
the workers write their metrics there, and a dead worker's files are marked in child_exit.
"""

import dataclasses
import math
import os
import shutil
import sys
import tempfile

# Must be in the environment before any worker imports prometheus_client (prometheus_client's own
# mechanism for sharing metrics between processes, not a setting of the service).
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cifar10-serving-metrics-")

from serving import config as _config  # noqa: E402
from serving import connections as _connections  # noqa: E402
from serving import model_files  # noqa: E402


def _refuse_to_start(message: str):
    print(f"cannot start the service: {message}", file=sys.stderr)
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    sys.exit(1)


try:
    _settings = _config.install(_config.Settings.from_environ())
except _config.ConfigError as _exc:
    _refuse_to_start(str(_exc))
# Every connection is an open file: the soft limit (often 1,024) goes up to the hard limit, which the
# workers inherit, and WORKER_CONNECTIONS must fit under it (on_starting logs both limits). A value given
# that does not fit stops the start; the default is lowered to what fits.
_file_limit = _connections.raise_open_file_limit()
_lowered_from = None
if _problem := _connections.file_limit_problem(_settings.worker_connections, _file_limit):
    _fits = _connections.connections_that_fit(_file_limit)
    if "WORKER_CONNECTIONS" in _settings.explicit or _fits < 1:
        _refuse_to_start(_problem)
    _lowered_from = _settings.worker_connections
    _settings = _config.install(dataclasses.replace(_settings, worker_connections=_fits))

bind = _settings.bind
workers = _settings.workers
worker_class = _settings.worker_class
worker_connections = _settings.worker_connections
threads = _settings.threads  # only gthread uses threads
# One listening socket shared by the workers (REUSE_PORT=0, the default): a worker that is recycled or
# stopping closes nothing that other workers need, so no queued connection is reset. gevent workers
# accept one connection at a time when there are several workers, which keeps the load even
# (measured: same req/s and p99 as one SO_REUSEPORT socket per worker, benchmarks/serve_load.py).
# on_starting first checks that nothing else listens on the port, so the refusal is immediate.
reuse_port = _settings.reuse_port
timeout = _settings.timeout
keepalive = _settings.keepalive
# The master waits this long after SIGTERM before it kills workers: the drain, then in-flight requests.
graceful_timeout = math.ceil(_settings.drain_seconds + _settings.graceful_timeout)
# Recycle workers so that memory cannot creep; the jitter keeps them from restarting together.
max_requests = _settings.max_requests
max_requests_jitter = max_requests // 10
loglevel = _settings.log_level
errorlog = "-"
accesslog = "-" if _settings.access_log else None
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms request_id=%({x-request-id}o)s'
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


def _verify_models(settings: _config.Settings) -> tuple[bool, str]:
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
                registry = ModelRegistry.load(settings.models_dir, settings.default_model, settings.intra_op_threads,
                                              settings.precision)
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
    """The first TCP address someone already listens on (with SO_REUSEPORT it would be silently shared,
    without it gunicorn would retry for seconds before giving up)."""
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
    if busy := _address_in_use(server):
        server.log.error("cannot start the service: the address %s is already in use", busy)
        on_exit(server)
        sys.exit(1)
    _reset_metrics_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        # Read once, here: forked workers inherit these bytes and never read the folder again.
        model_files.pin(model_files.read_model_files(_settings.models_dir))
    except model_files.ModelLoadError as exc:
        ok, message = False, str(exc)
    else:
        ok, message = _verify_models(_settings)
    if not ok:
        server.log.error("cannot start the service: %s", message)
        on_exit(server)
        sys.exit(1)
    server.log.info("models verified: %s; %d worker(s) x %d onnxruntime thread(s)",
                    message, _settings.workers, _settings.intra_op_threads)
    if _lowered_from is not None:
        server.log.warning("WORKER_CONNECTIONS lowered from its default %d to %d: the open-file limit (%d) holds "
                           "no more; raise the hard limit (ulimit -Hn; docker run --ulimit nofile=N:N) for more",
                           _lowered_from, _settings.worker_connections, _file_limit.soft)
    hard = "unlimited" if _file_limit.hard == -1 else _file_limit.hard
    server.log.info("open-file limit %s (was %s; hard limit %s): %d worker(s) x up to %d connections "
                    "(WORKER_CONNECTIONS), each worker holding at most %g MiB of request bodies (BODY_BUDGET_MB)",
                    _file_limit.soft, _file_limit.before, hard, _settings.workers, _settings.worker_connections,
                    _settings.body_budget_mb)


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
