"""The service's settings: one table, parsed once.

Every setting is a field of ``Settings`` below, with its environment variable (the field's name in
capitals), type, default, bound and meaning; nothing else in the service reads the environment for a
setting. The README's settings table is this table: ``python -m serving.config`` prints it, and
tests/test_serving_config.py fails when the two differ.

One parser per type (``Int``, ``Float``, ``Bool``, ``Str``, ``Path``), each with its bound stated once
and applied the same way to every setting of that type. An empty variable counts as unset. A bad value
is a ``ConfigError`` whose one-line message names the variable, the rule and the value (never the
value of a secret); under gunicorn that line is printed and the service exits with status 1 before
anything starts.

Who reads it: under gunicorn the master parses the environment once, in serving/gunicorn.conf.py, and
``install``s the result; the workers are forked from the master, so ``active()`` hands them that very
object (gunicorn's own options, the worker class's deadlines and the app's limits alike): nothing is
re-parsed, and no setting is handed on by rewriting os.environ. Elsewhere (``create_app`` in a test,
``flask run``) ``active()`` parses the environment, plus ``create_app``'s overrides, on the spot.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from common.contract import MAX_IMAGE_PIXELS
from common.machine import usable_cpus

MIB = 1024 * 1024
# BODY_BUDGET_MB (serving/body_budget.py): bodies over BODY_SMALL bytes may fill only this share of it.
BODY_SMALL = MIB
BODY_LARGE_SHARE = 3 / 4


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and the bad value."""


def default_intra_op_threads(workers: int) -> int:
    """One share of the CPUs per worker, so workers x threads does not oversubscribe the cores."""
    return max(1, usable_cpus() // max(1, workers))


# ---- one parser per type -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Int:
    min: int
    max: int | None = None
    kind: ClassVar[str] = "int"

    def bound(self) -> str:
        return f"{self.min}-{self.max}" if self.max is not None else f">= {self.min}"

    def describe(self) -> str:
        if self.max is not None:
            return f"an integer from {self.min} to {self.max}"
        return f"an integer >= {self.min}"

    def parse(self, text: str) -> int:
        number = int(text)  # "5", " 5", "+5"; not "5.0", "five" (ValueError)
        if number < self.min or (self.max is not None and number > self.max):
            raise ValueError(text)
        return number

    def show(self, value: int) -> str:
        return str(value)


@dataclass(frozen=True)
class Float:
    """A finite number with a lower bound; ``inclusive`` says whether the bound itself is allowed.

    The rule is applied to the number, never to its spelling: "0", "0.0", "0.00" and "0e0" are all zero,
    and each is accepted exactly where zero is (a setting whose zero means "off": BATCH_WAIT_MS = no
    wait, DRAIN_SECONDS = no drain) and refused exactly where it is not (a limit or timeout of zero
    would refuse or cut off every request). The settings once matched the text "0" or "0.0" for
    BATCH_WAIT_MS, so "0.00" was refused there while DRAIN_SECONDS accepted it.
    """

    min: float
    inclusive: bool
    kind: ClassVar[str] = "float"

    def bound(self) -> str:
        return f"{'>=' if self.inclusive else '>'} {self.min:g}"

    def describe(self) -> str:
        return f"a number {self.bound()}"

    def parse(self, text: str) -> float:
        number = float(text)
        if not math.isfinite(number) or number < self.min or (number == self.min and not self.inclusive):
            raise ValueError(text)
        return number + 0.0  # -0.0 is 0.0

    def show(self, value: float) -> str:
        return f"{value:g}"


@dataclass(frozen=True)
class Bool:
    kind: ClassVar[str] = "bool"
    TRUE: ClassVar[tuple[str, ...]] = ("1", "true", "yes", "on")
    FALSE: ClassVar[tuple[str, ...]] = ("0", "false", "no", "off")

    def bound(self) -> str:
        return "1 or 0"

    def describe(self) -> str:
        return "1 or 0 (or true/false, yes/no, on/off)"

    def parse(self, text: str) -> bool:
        lowered = text.lower()
        if lowered in self.TRUE:
            return True
        if lowered in self.FALSE:
            return False
        raise ValueError(text)

    def show(self, value: bool) -> str:
        return "1" if value else "0"


@dataclass(frozen=True)
class Str:
    """Text; with ``choices``, one of them (any case, kept in lower case); with ``pattern``, matching it."""

    choices: tuple[str, ...] = ()
    pattern: str | None = None
    rule: str = ""  # how the README and the error message state the pattern
    secret: bool = False  # never repeated in an error message
    kind: ClassVar[str] = "str"

    def bound(self) -> str:
        return ", ".join(self.choices) if self.choices else self.rule

    def describe(self) -> str:
        return f"one of {', '.join(self.choices)}" if self.choices else self.rule

    def parse(self, text: str) -> str:
        if self.choices:
            if text.lower() not in self.choices:
                raise ValueError(text)
            return text.lower()
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise ValueError(text)
        return text

    def show(self, value: str) -> str:
        return value


@dataclass(frozen=True)
class Path:
    what: str  # "folder" or "file": what the path names (checked where it is used)
    kind: ClassVar[str] = "path"

    def bound(self) -> str:
        return f"a {self.what}"

    def describe(self) -> str:
        return f"the path of a {self.what}"

    def parse(self, text: str) -> pathlib.Path:
        return pathlib.Path(text).expanduser()

    def show(self, value: pathlib.Path) -> str:
        return str(value)


Parser = Int | Float | Bool | Str | Path


@dataclass(frozen=True)
class Spec:
    parser: Parser
    help: str
    scope: str  # "app": the service's own limits; "process": gunicorn and the worker processes
    shown: str | None  # the default as the table shows it, where it is worked out at start (else the value)


def setting(parser: Parser, default: Any, help: str, *, scope: str = "app", shown: str | None = None) -> Any:
    return field(default=default, metadata={"spec": Spec(parser, " ".join(help.split()), scope, shown)})


# RFC 6750's token68 characters: anything else could not be sent in an Authorization header.
TOKEN = Str(pattern=r"[A-Za-z0-9._~+/=-]+", rule="a token of letters, digits and -._~+/= only", secret=True)


@dataclass(frozen=True)
class Settings:
    """Every setting of the service, parsed and checked; the table the README's settings table is made from."""

    # -- the service itself (the app and its limits) --
    models_dir: pathlib.Path = setting(
        Path("folder"), pathlib.Path("weights"),
        "folder of `<name>.onnx` files (and an optional `MANIFEST.json`), read once at start")
    default_model: str | None = setting(
        Str(rule="a loaded model's name"), None,
        "model used when a request names none; unset: `MANIFEST.json`'s `default_model`, else the first name "
        "in sorted order")
    default_topk: int = setting(Int(1), 5, "classes in an answer when the request gives no `topk`")
    max_upload_mb: float = setting(Float(0, inclusive=False), 10.0,
                                   "largest request body in MiB; a larger one gets 413 before it is read")
    body_budget_mb: float = setting(
        Float(0, inclusive=False), 64.0,
        "request-body MiB one worker holds at once, reserved by Content-Length (chunked: as it arrives) before "
        "a body is read; a body that would exceed it gets 503 with `Retry-After` at once. Bodies over 1 MiB "
        "may fill three quarters of it, the rest is kept for small requests; at least 4/3 x `MAX_UPLOAD_MB`")
    max_image_pixels: int = setting(
        Int(1), MAX_IMAGE_PIXELS,
        "largest decoded image (width x height); a larger one gets 413 before its pixels are decoded")
    max_request_pixels: int = setting(
        Int(1), 128_000_000,
        "decoded pixels all the images of one request may take (after JPEG scaling); the image that would "
        "exceed it gets 413 before it is decoded")
    max_batch: int = setting(Int(1), 64, "most images in one request (multipart parts or v2 batch rows)")
    intra_op_threads: int = setting(
        Int(1), None, "onnxruntime threads per session run", shown="usable CPUs // `WORKERS` (at least 1)")
    precision: str = setting(
        Str(choices=("auto", "fp32")), "auto",
        "`auto`: a model whose `NAME.int8.onnx` loses <= 0.3 points and is faster is served int8 as `NAME`, its "
        "fp32 file as `NAME-fp32` (else the int8 file is `NAME-int8`); `fp32`: `NAME` is always the fp32 file")
    batch_max_images: int = setting(
        Int(1), 32,
        "dynamic batching: most images of concurrent requests one onnxruntime call takes (a larger request "
        "runs alone); 1 = a call per request")
    batch_wait_ms: float = setting(
        Float(0, inclusive=True), 0.0,
        "while the service is busy, how long a call may wait for more requests to join it (0 = never waits); "
        "an idle service never waits")
    read_timeout: float = setting(Float(0, inclusive=False), 10.0,
                                  "seconds a request's body may go without sending a byte: 408")
    request_timeout: float = setting(Float(0, inclusive=False), 30.0,
                                     "seconds from a request's headers to the end of its body: 408")
    api_token: str | None = setting(
        TOKEN, None,
        "when set, `/predict`, `/v2/.../infer`, `/models` and `/metrics` need the header "
        "`Authorization: Bearer <token>` (401 otherwise)")
    api_token_file: pathlib.Path | None = setting(
        Path("file"), None, "a file whose first line is the token, instead of `API_TOKEN` (not both)")

    # -- the processes: gunicorn, the workers and their connections --
    host: str = setting(Str(rule="an address or host name"), "127.0.0.1", "the address to listen on",
                        scope="process")
    port: int = setting(Int(1, 65535), 8000, "the port to listen on", scope="process")
    workers: int = setting(Int(1), None, "worker processes", scope="process", shown="usable CPUs")
    worker_class: str = setting(
        Str(rule="a gunicorn worker class"), "serving.worker.ServiceWorker",
        "gevent with the deadlines above (serving/worker.py); another gunicorn worker class loses the "
        "slow-client protection", scope="process")
    worker_connections: int = setting(
        Int(1), 1000,
        "connections one worker holds at once (an idle one costs ~10 KiB); at the limit the connection idle "
        "longest is closed to admit a waiting client, a busy one never is. It and 128 more must fit under the "
        "open-file limit, raised to the hard limit at start: a value given that does not fit stops the start",
        scope="process", shown="`1000`, fewer where the open-file limit cannot hold that many")
    threads: int = setting(
        Int(1), 1, "threads per worker; only `WORKER_CLASS=gthread` uses them (the gevent worker runs a "
                   "greenlet per connection)", scope="process")
    keepalive: int = setting(
        Int(1), 5, "seconds an idle connection is kept, and the most a client may take to send a request's "
                   "headers; then it is dropped", scope="process")
    keepalive_requests: int = setting(
        Int(0), 100,
        "requests one connection may make; the last is answered with `Connection: close`, so connections "
        "spread over the workers again after a worker restart; 0 = no limit", scope="process")
    drain_seconds: float = setting(
        Float(0, inclusive=True), 5.0,
        "after SIGTERM: seconds of answering with `/readyz` at 503 before the listener closes (0 = none); "
        "in-flight requests then get `GRACEFUL_TIMEOUT` more", scope="process")
    graceful_timeout: float = setting(Float(0, inclusive=False), 10.0,
                                      "seconds in-flight requests may take to finish when stopping", scope="process")
    timeout: int = setting(Int(1), 30, "a worker silent this long (stuck in native code) is killed and replaced",
                           scope="process")
    # At 20000 a busy worker restarted every ~20 s and its keep-alive clients all moved to the other worker:
    # 16 clients got ~1,100 instead of ~1,900 req/s (benchmarks/serve_load.py).
    max_requests: int = setting(
        Int(0), 200_000,
        "requests a worker answers before it is replaced (plus up to 10% random jitter), so memory cannot "
        "creep; 0 = never", scope="process")
    reuse_port: bool = setting(Bool(), False, "1 = one SO_REUSEPORT socket per worker instead of one shared socket",
                               scope="process")
    access_log: bool = setting(Bool(), False, "1 = one access-log line per request on stdout, with its X-Request-ID",
                               scope="process")
    log_level: str = setting(Str(choices=("debug", "info", "warning", "error", "critical")), "info",
                             "gunicorn's and the service's log level", scope="process")

    # Not a setting: the variables that were given (the others took their defaults).
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self):
        # The largest body the service accepts must fit in the budget on its own, or it would always get 503.
        large = self.max_content_length > BODY_SMALL
        share = BODY_LARGE_SHARE if large else 1.0
        if self.max_content_length > int(self.body_budget_mb * MIB * share):
            needed = math.ceil(self.max_upload_mb / share * 100) / 100
            why = "bodies over 1 MiB may fill three quarters of the budget, so " if large else ""
            raise ConfigError(f"BODY_BUDGET_MB={self.body_budget_mb:g} is too small for MAX_UPLOAD_MB="
                              f"{self.max_upload_mb:g}: {why}a maximum-size upload would always be refused; "
                              f"set BODY_BUDGET_MB to at least {needed:g}")

    @property
    def body_budget_bytes(self) -> int:
        return int(self.body_budget_mb * MIB)

    @property
    def max_content_length(self) -> int:
        """MAX_UPLOAD_MB in bytes (Flask and Werkzeug enforce it on every body with a 413)."""
        return int(self.max_upload_mb * MIB)

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None,
                     overrides: Mapping[str, Any] | None = None) -> Settings:
        """Defaults <- ``environ`` (os.environ when None) <- ``overrides`` (keys are variable names; a value
        of None or "" means unset). Raises ConfigError naming the first bad setting."""
        environ = os.environ if environ is None else environ
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for name, item in _FIELDS.items():
            raw = overrides[name] if name in overrides else environ.get(name)
            text = "" if raw is None else str(raw).strip()
            if text:
                values[item.name] = parse(name, text)
        values["explicit"] = frozenset(name.upper() for name in values)
        workers = values.get("workers") or usable_cpus()
        values["workers"] = workers
        values.setdefault("intra_op_threads", default_intra_op_threads(workers))
        values["api_token"] = _api_token(values.get("api_token"), values.get("api_token_file"))
        return cls(**values)

    def flask_config(self) -> dict[str, Any]:
        """The service's own settings, as the app reads them (``current_app.config["MAX_BATCH"]``, ...)."""
        config = {name: getattr(self, item.name) for name, item in _FIELDS.items()
                  if spec_of(item).scope == "app"}
        for name, value in config.items():
            if isinstance(value, pathlib.Path):
                config[name] = str(value)
        config["MAX_CONTENT_LENGTH"] = self.max_content_length
        return config

    def gunicorn_options(self) -> dict[str, Any]:
        """The process settings under the names serving/gunicorn.conf.py and the benchmarks use."""
        return {"bind": self.bind, "workers": self.workers, "worker_class": self.worker_class,
                "worker_connections": self.worker_connections, "threads": self.threads,
                "keepalive": self.keepalive, "keepalive_requests": self.keepalive_requests,
                "drain_seconds": self.drain_seconds, "graceful_timeout": self.graceful_timeout,
                "timeout": self.timeout, "max_requests": self.max_requests, "reuse_port": self.reuse_port,
                "access_log": self.access_log, "log_level": self.log_level}


def spec_of(item: dataclasses.Field) -> Spec:
    return item.metadata["spec"]


def parse(name: str, text: str) -> Any:
    """``text`` (stripped, not empty) as the setting ``name`` takes it. Raises ConfigError."""
    item = _FIELDS.get(name)
    if item is None:
        raise ConfigError(f"{name} is not a setting of the service")
    parser = spec_of(item).parser
    try:
        return parser.parse(text)
    except ValueError:
        shown = "" if getattr(parser, "secret", False) else f", got {text!r}"
        raise ConfigError(f"{name} must be {parser.describe()}{shown}") from None


def _api_token(token: str | None, token_file: pathlib.Path | None) -> str | None:
    """The bearer token from API_TOKEN or the first line of API_TOKEN_FILE; None when neither is set."""
    if token is not None and token_file is not None:
        raise ConfigError("set API_TOKEN or API_TOKEN_FILE, not both")
    if token_file is None:
        return token
    try:
        with open(token_file, encoding="utf-8") as handle:
            line = handle.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"API_TOKEN_FILE {str(token_file)!r} cannot be read: {exc}") from None
    try:
        return TOKEN.parse(line)
    except ValueError:
        raise ConfigError(f"API_TOKEN_FILE's first line must be {TOKEN.rule}") from None


_FIELDS = {item.name.upper(): item for item in dataclasses.fields(Settings) if "spec" in item.metadata}


# ---- one parse per process tree ------------------------------------------------------------------------

_installed: Settings | None = None


def install(settings: Settings) -> Settings:
    """Make ``settings`` what ``active()`` returns in this process and in every process it forks from now on."""
    global _installed
    _installed = settings
    return settings


def active(overrides: Mapping[str, Any] | None = None) -> Settings:
    """The installed settings (under gunicorn: the master's one parse); else, or with ``overrides``, the
    environment's, parsed now."""
    if _installed is not None and not overrides:
        return _installed
    return Settings.from_environ(overrides=overrides)


# ---- views kept for the benchmarks (serve_load.py, serve_peers.py) and tests ---------------------------

def load_config(overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The app's settings as a Flask config dict: defaults <- environment <- ``overrides``; any other key of
    ``overrides`` (TESTING, ...) is passed through unchanged. Raises ConfigError."""
    settings = (Settings.from_environ(environ, overrides) if environ is not None or overrides
                else active())
    config = settings.flask_config()
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            config.setdefault(key, value)
    return config


def process_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """gunicorn's settings (``Settings.gunicorn_options``) of ``environ``. Raises ConfigError."""
    return Settings.from_environ(environ).gunicorn_options()


# ---- the table, as the README shows it ----------------------------------------------------------------

def markdown_table() -> str:
    """The settings table in Markdown, one row per setting, in the order of ``Settings``."""
    lines = ["| variable | type | default | bound | meaning |", "| --- | --- | --- | --- | --- |"]
    defaults = Settings.__dataclass_fields__
    for name, item in _FIELDS.items():
        spec = spec_of(item)
        default = defaults[item.name].default
        shown = spec.shown or ("(none)" if default is None else f"`{spec.parser.show(default)}`")
        lines.append(f"| `{name}` | {spec.parser.kind} | {shown} | {spec.parser.bound()} | {spec.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m serving.config: the table for the README
    sys.stdout.write(markdown_table())
