"""Build the service's image and check, from outside the container, what a service owner relies on.

    make image-test          # = python tools/image_test.py --image cifar10-serving --out build/image-test.json

With Debian's buildah (chroot isolation: no daemon, run as root), one line per check, exit status 1 if any
fails:

1. The base: the registry's python:3.12-slim where it can be pulled, else the Debian stand-in that
   ``tools/image.py base`` makes with mmdebstrap (cached: a rerun reuses it).
2. The build: ``make image IMAGE_TOOL=buildah BASE_IMAGE=...``, the command the README gives; its time and
   the image's size (every file of the image's root filesystem, as unpacked) are recorded.
3. The reference: the service run directly, as ``make serve`` runs it, answers ``/models`` and ``/predict``
   on real CIFAR-10 test JPEGs (tests/fixtures/cifar10-jpeg-small.tar.gz, one per class) for every served
   model.
4. The container, from the image's own CMD and environment, with its root filesystem read-only (the
   container's overlay mount is remounted read-only before it starts, so any write outside /tmp fails
   with EROFS) and a tmpfs at /tmp, as ``docker run --read-only --tmpfs /tmp`` and the Deployment's
   ``readOnlyRootFilesystem`` + emptyDir run it. API_TOKEN is set, as the Deployment sets it.
   Checked: the root filesystem refuses writes and /tmp takes them; /readyz turns 200; every gunicorn
   process runs as a non-root user; without the token /predict is 401; /models lists the same files
   (sha256) and /predict gives the same top-5 (labels and probabilities) as the reference; the image's
   HEALTHCHECK command succeeds; the Deployment's preStop command runs in the image; the image holds no
   torch and no training code. Then SIGTERM to the gunicorn master, as ``docker stop`` and Kubernetes send
   it: during DRAIN_SECONDS /readyz answers 503 while /predict is still served, a request that was being
   uploaded when the signal came is answered in full after the drain, and the process exits with status 0;
   the HEALTHCHECK then fails.

Where buildah is not installed the test prints why it is skipped and exits 0 (.ci/run installs it, and
mmdebstrap, from Debian's packages). ``--out`` receives the figures and every check as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import image as image_tool  # noqa: E402  (tools/image.py)

ROOT = image_tool.ROOT
FIXTURE = ROOT / "tests" / "fixtures" / "cifar10-jpeg-small.tar.gz"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "deployment.yaml"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DRAIN_SECONDS = 3.0
TOPK = 5
PROBABILITY_TOLERANCE = 1e-6


class Report:
    """One line per check; the JSON record of them."""

    def __init__(self):
        self.checks: list[dict] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        return ok

    @property
    def failed(self) -> list[str]:
        return [c["check"] for c in self.checks if not c["ok"]]


def note(message: str) -> None:
    print(f"     {message}", flush=True)


# ---- HTTP, with the standard library only ---------------------------------------------------------------------

def http(method: str, url: str, token: str | None = None, body: bytes | None = None,
         content_type: str | None = None, timeout: float = 30) -> tuple[int, dict | None]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, None


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "cifar10-image-test-" + secrets.token_hex(8)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"img\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def predict(base: str, token: str, filename: str, data: bytes, model: str | None = None) -> tuple[int, dict | None]:
    body, content_type = multipart(filename, data)
    query = f"topk={TOPK}" + (f"&model={model}" if model else "")
    return http("POST", f"{base}/predict?{query}", token, body, content_type)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> float | None:
    """Seconds until /readyz answers 200; None if the process exits or the time runs out."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if proc.poll() is not None:
            return None
        try:
            if http("GET", base + "/readyz", timeout=2)[0] == 200:
                return time.monotonic() - began
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- processes ------------------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, list[str]] | None:
    """(parent pid, argv) of ``pid`` from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1]), argv


def is_gunicorn(argv: list[str]) -> bool:
    """``gunicorn ...`` or ``python .../gunicorn ...`` (not buildah, whose own arguments name gunicorn)."""
    names = [os.path.basename(arg) for arg in argv[:2]]
    return names[:1] == ["gunicorn"] or (names[0].startswith("python") and names[1:2] == ["gunicorn"])


def descendants(pid: int) -> dict[int, tuple[int, list[str]]]:
    """Every process below ``pid``: {pid: (parent, argv)}."""
    table = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))}
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmdline) in table.items():
            if ppid == parent and child not in found:
                found[child] = (ppid, cmdline)
                frontier.append(child)
    return found


def gunicorn_processes(pid: int) -> tuple[int | None, list[int]]:
    """(the gunicorn master, its workers) below ``pid``."""
    below = {p: v for p, v in descendants(pid).items() if is_gunicorn(v[1])}
    masters = [p for p, (ppid, _) in below.items() if ppid not in below]
    if len(masters) != 1:
        return None, []
    return masters[0], sorted(p for p, (ppid, _) in below.items() if ppid == masters[0])


def ids_of(pid: int) -> tuple[int, int]:
    """(effective uid, effective gid) of ``pid``."""
    fields = {line.split(":", 1)[0]: line.split()[1:] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
              if line.startswith(("Uid:", "Gid:"))}
    return int(fields["Uid"][1]), int(fields["Gid"][1])


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size of ``pids`` together (shared pages counted once)."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def tree_size(root: Path) -> int:
    """Bytes of every regular file under ``root``, hard links once, symbolic links not followed."""
    seen, total = set(), 0
    for folder, _, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if (info.st_dev, info.st_ino) not in seen and not os.path.islink(os.path.join(folder, name)):
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


# ---- buildah --------------------------------------------------------------------------------------------------

def buildah(*args: str, check: bool = True, timeout: float | None = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=check, timeout=timeout)


def registry_base_available() -> tuple[bool, str]:
    """Whether the Dockerfile's default base can be had (already pulled, or pulled now)."""
    done = subprocess.run(["buildah", "pull", "--quiet", "--policy", "missing", image_tool.REGISTRY_BASE],
                          capture_output=True, text=True, timeout=600)
    last = (done.stderr.strip().splitlines() or ["buildah pull failed"])[-1]
    return done.returncode == 0, last


def exit_status(output: str) -> int | None:
    """The command's exit status from what ``buildah run --isolation chroot`` printed.

    On a read-only root, buildah 1.28 exits with status 2 after every command: its cleanup tries to delete
    the /run/.containerenv mount point, fails, and its error logger, unset when called from the command
    line, panics. The command's own status is what its chroot helper reported before that
    (chroot/run_common.go): "subprocess exited with status N" for N != 0, "subprocess exited on SIGNAL"
    or "process exited with error" when it did not exit normally, and nothing at all for 0.
    """
    for line in output.splitlines():
        if line.startswith("subprocess exited with status "):
            return int(line.rsplit(" ", 1)[1])
        if line.startswith(("subprocess exited on ", "process exited with error", "process failed to start")):
            return None
    return 0


class Container:
    """A buildah working container of the image, its root filesystem mounted read-only."""

    def __init__(self, image: str, work: Path):
        self.name = f"cifar10-image-test-{os.getpid()}"
        buildah("rm", self.name, check=False)
        buildah("from", "--pull-never", "--name", self.name, image)
        self.rootfs = Path(buildah("mount", self.name).stdout.strip())
        # buildah's default open-file limit in the container is 1,024, under what WORKER_CONNECTIONS' default
        # needs; Docker and containerd give 1,048,576. The container gets this machine's hard limit instead.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        self.conf = work / "containers.conf"
        self.conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={hard}:{hard}"]\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def make_read_only(self) -> None:
        """Remount the container's overlay read-only. buildah's chroot isolation bind-mounts a file at
        /run/.containerenv (as podman does in every container) and creates that mount point itself, which a
        read-only root refuses, so the empty mount point is made first: the one change to the image's files."""
        (self.rootfs / "run" / ".containerenv").touch()
        subprocess.run(["mount", "-o", "remount,ro", str(self.rootfs)], check=True, capture_output=True, text=True)

    def run_args(self, env: dict[str, str]) -> list[str]:
        args = ["buildah", "run", "--isolation", "chroot", "--mount", "type=tmpfs,destination=/tmp"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        return [*args, self.name, "--"]

    def run(self, command: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
        """``command`` in the container; its ``returncode`` is the command's own (see ``exit_status``), None when
        it did not exit normally."""
        done = subprocess.run(self.run_args(env) + command, capture_output=True, text=True, timeout=timeout,
                              env=self.env)
        done.returncode = exit_status(done.stderr)
        return done

    def start(self, command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
        with open(log_path, "wb") as log:
            return subprocess.Popen(self.run_args(env) + command, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=self.env)

    def remove(self) -> None:
        buildah("umount", self.name, check=False)
        buildah("rm", self.name, check=False)


def image_config(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image).stdout)["Docker"]["config"]


def healthcheck_command(config: dict) -> list[str] | None:
    test = (config.get("Healthcheck") or {}).get("Test") or []
    if test[:1] == ["CMD"]:
        return test[1:]
    if test[:1] == ["CMD-SHELL"]:
        return ["/bin/sh", "-c", test[1]]
    return None


def prestop_command(path: Path = DEPLOYMENT) -> list[str]:
    """The Deployment's preStop exec command, written there as a flow sequence (``command: ["sleep", "5"]``).

    Read without a YAML library, which `make serve`'s dependencies do not include; tests/test_deploy.py
    checks that this reads what a YAML parser reads.
    """
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "preStop:")
    command = next(line for line in lines[start:] if line.strip().startswith("command:"))
    return json.loads(command.split("command:", 1)[1])


# ---- the images sent ------------------------------------------------------------------------------------------

def test_jpegs() -> list[tuple[str, str, bytes]]:
    """(class, upload file name, JPEG bytes): the fixture's first test image of every class."""
    found: dict[str, tuple[str, bytes]] = {}
    with tarfile.open(FIXTURE) as archive:
        for member in archive:
            parts = member.name.split("/")
            if len(parts) == 3 and parts[0] == "test" and parts[1] in CLASSES and parts[1] not in found:
                found[parts[1]] = (parts[2], archive.extractfile(member).read())
    return [(label, f"{label}-{found[label][0]}", found[label][1]) for label in CLASSES if label in found]


def answers(base: str, token: str, jpegs, models: list[str]) -> dict:
    """What a client sees: /models' files, and /predict's top-k for every image (default model) and for the
    first image on every served model."""
    status, listing = http("GET", base + "/models", token)
    listed = (listing or {}).get("models", [])
    out = {"models_status": status, "models": {m["name"]: m["sha256"] for m in listed},
           "default": next((m["name"] for m in listed if m.get("default")), None), "predict": {}}
    requests = [(None, name, data) for _, name, data in jpegs] + [(m, jpegs[0][1], jpegs[0][2]) for m in models]
    for model, name, data in requests:
        status, body = predict(base, token, name, data, model)
        out["predict"][f"{model or '(default)'}/{name}"] = {
            "status": status, "model": (body or {}).get("model"),
            "top": [(p["label"], p["probability"]) for p in (body or {}).get("predictions", [])]}
    return out


def compare(reference: dict, seen: dict) -> tuple[bool, str, float]:
    """Same models and files; every answer with the same labels in the same order and probabilities within
    PROBABILITY_TOLERANCE. Returns (same, what differed, the largest probability difference)."""
    if seen["models"] != reference["models"] or seen["default"] != reference["default"]:
        return False, "/models differs (names, files or default)", float("nan")
    worst = 0.0
    for key, expected in reference["predict"].items():
        got = seen["predict"].get(key)
        if got is None or got["status"] != 200 or expected["status"] != 200:
            return False, f"{key}: status {got and got['status']} (reference {expected['status']})", float("nan")
        if got["model"] != expected["model"] or [t[0] for t in got["top"]] != [t[0] for t in expected["top"]]:
            return False, f"{key}: top-{TOPK} {got['top']} != {expected['top']}", float("nan")
        worst = max([worst] + [abs(a[1] - b[1]) for a, b in zip(got["top"], expected["top"], strict=True)])
    if worst > PROBABILITY_TOLERANCE:
        return False, f"probabilities differ by up to {worst:.2e}", worst
    return True, "", worst


# ---- the run --------------------------------------------------------------------------------------------------

def reference_answers(token: str, jpegs, log_path: Path) -> tuple[dict | None, str]:
    """The service run as `make serve` runs it, on a free loopback port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(HOST="127.0.0.1", PORT=str(port), API_TOKEN=token, DRAIN_SECONDS="0")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["make", "--no-print-directory", "serve"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        if wait_ready(base, proc, timeout=300) is None:
            return None, f"`make serve` did not become ready; see {log_path}"
        listing = http("GET", base + "/models", token)[1] or {}
        return answers(base, token, jpegs, [m["name"] for m in listing.get("models", [])]), ""
    finally:
        stop_group(proc)


def drain_and_stop(base: str, port: int, token: str, master: int, proc: subprocess.Popen, log_path: Path,
                   jpeg: tuple, expected: dict, report: Report, graceful_timeout: float) -> dict:
    """SIGTERM with a request mid-upload: readiness 503 and /predict still served during the drain, the
    upload answered after it, exit status 0."""
    label, name, data = jpeg
    body, content_type = multipart(name, data)
    half = len(body) // 2
    upload = socket.create_connection(("127.0.0.1", port), timeout=30)
    upload.sendall((f"POST /predict?topk={TOPK} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body[:half])
    time.sleep(0.5)  # the worker has read the headers and half the body
    os.kill(master, signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.3)
    ready, served = [], []
    while time.monotonic() - signalled < DRAIN_SECONDS - 0.6:
        ready.append(http("GET", base + "/readyz", timeout=5)[0])
        served.append(predict(base, token, name, data)[0])
        time.sleep(0.2)
    report.check("SIGTERM: /readyz answers 503 during DRAIN_SECONDS", bool(ready) and set(ready) == {503},
                 f"{len(ready)} probes in the first {DRAIN_SECONDS - 0.6:g} s of a {DRAIN_SECONDS:g} s drain: {ready}")
    report.check("SIGTERM: /predict is still served during the drain", bool(served) and set(served) == {200},
                 f"statuses {served}")
    while time.monotonic() - signalled < DRAIN_SECONDS + 1.0:
        time.sleep(0.05)
    upload.sendall(body[half:])  # the rest of the body, after the listener has closed
    response = b""
    while chunk := upload.recv(65536):
        response += chunk
    upload.close()
    answered = time.monotonic() - signalled
    head, _, payload = response.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None
    try:
        top = [(p["label"], p["probability"]) for p in json.loads(payload)["predictions"]]
    except (ValueError, KeyError):
        top = None
    same = status == 200 and top is not None and [t[0] for t in top] == [t[0] for t in expected["top"]]
    report.check("SIGTERM: a request mid-upload when the signal came is answered in full",
                 same, f"status {status}, answered {answered:.1f} s after SIGTERM with top-1 "
                       f"{top[0][0] if top else None} (reference {expected['top'][0][0]}; true class {label})")
    try:
        proc.wait(timeout=DRAIN_SECONDS + graceful_timeout + 15)
        gone = not Path(f"/proc/{master}").exists()
        code = exit_status(log_path.read_text(errors="replace")) if gone else None
    except subprocess.TimeoutExpired:
        code = None
    stopped = time.monotonic() - signalled
    report.check("SIGTERM: the process exits with status 0", code == 0,
                 f"exit status {code}, {stopped:.1f} s after SIGTERM (DRAIN_SECONDS {DRAIN_SECONDS:g})")
    return {"readyz_during_drain": ready, "predict_during_drain": served, "in_flight_status": status,
            "in_flight_answered_s": round(answered, 2), "exit_status": code, "stopped_s": round(stopped, 2)}


def check_container(image: str, config: dict, token: str, jpegs, reference: dict | None, report: Report,
                    work: Path) -> dict:
    figures: dict = {}
    container = Container(image, work)
    try:
        rootfs = container.rootfs
        figures["image_bytes"] = tree_size(rootfs)
        figures["weights_bytes"] = tree_size(rootfs / "app" / "weights")
        container.make_read_only()
        port = free_port()
        env = {"PORT": str(port), "API_TOKEN": token, "DRAIN_SECONDS": f"{DRAIN_SECONDS:g}"}

        probe = container.run(["python", "-c", (
            "import errno, pathlib, tempfile\n"
            "try:\n    pathlib.Path('/app/written').write_text('x')\n    print('written')\n"
            "except OSError as exc:\n    print(errno.errorcode[exc.errno])\n"
            "with tempfile.NamedTemporaryFile(dir='/tmp') as f:\n    f.write(b'x')\n    print('tmp ok')\n")], env)
        lines = probe.stdout.split()
        report.check("read-only root filesystem: writes outside /tmp fail, /tmp (tmpfs) takes them",
                     probe.returncode == 0 and lines == ["EROFS", "tmp", "ok"],
                     f"a write to /app gave {lines[0] if lines else probe.stderr.strip()[-200:]}")

        leftovers = container.run(["python", "-c", "import torch"], env)
        training = container.run(["python", "-c", "import training"], env)
        report.check("lean: no torch and no training code in the image",
                     "ModuleNotFoundError" in leftovers.stderr and "ModuleNotFoundError" in training.stderr,
                     "import torch and import training both fail")

        log_path = work / "container.log"
        proc = container.start(config["Cmd"], env, log_path)
        try:
            base = f"http://127.0.0.1:{port}"
            ready_s = wait_ready(base, proc, timeout=300)
            figures["start_to_ready_s"] = None if ready_s is None else round(ready_s, 2)
            if not report.check("the image's CMD serves: /readyz answers 200", ready_s is not None,
                                f"{ready_s:.1f} s after start (read-only root, tmpfs /tmp)" if ready_s else
                                f"see {log_path}: {log_path.read_text(errors='replace')[-600:]}"):
                return figures
            complaints = [line for line in log_path.read_text(errors="replace").splitlines()
                          if any(s in line for s in ("Read-only file system", "Permission denied", "[W:onnxruntime"))]
            report.check("the service's log shows no failed write and no onnxruntime warning", not complaints,
                         "; ".join(complaints)[:300])
            master, workers = gunicorn_processes(proc.pid)
            if not report.check("one gunicorn master with its workers, found from outside", master is not None,
                                f"master pid {master}, {len(workers)} workers below `buildah run` (pid {proc.pid})"):
                return figures
            ids = {pid: ids_of(pid) for pid in [master, *workers]}
            report.check("runs as a non-root user", bool(workers) and all(uid != 0 for uid, _ in ids.values()),
                         f"gunicorn master and {len(workers)} workers as uid:gid "
                         f"{sorted({f'{u}:{g}' for u, g in ids.values()})}")
            figures["run_as"] = sorted({f"{u}:{g}" for u, g in ids.values()})
            figures["workers"] = len(workers)

            body, content_type = multipart(jpegs[0][1], jpegs[0][2])
            status, _ = http("POST", base + "/predict", None, body, content_type)
            report.check("API_TOKEN is enforced: /predict without the token is refused", status == 401,
                         f"status {status}")
            seen = answers(base, token, jpegs, list(reference["models"]) if reference else [])
            if reference is not None:
                same, why, worst = compare(reference, seen)
                report.check("/predict gives the same top-5 as `make serve`", same,
                             why or f"{len(seen['predict'])} answers ({len(jpegs)} test images on the default "
                                     f"{seen['default']}, one on each of {len(seen['models'])} served models): same "
                                     f"labels in order, probabilities within {worst:.1e}")
                correct = sum(1 for (label, name, _) in jpegs
                              if (seen["predict"][f"(default)/{name}"]["top"] or [("", 0)])[0][0] == label)
                figures["default_model_top1_on_test_images"] = f"{correct}/{len(jpegs)}"
            figures["memory_pss_bytes"] = pss_bytes([master, *workers])
            figures["memory_pss_bytes_master"] = pss_bytes([master])
            figures["memory_pss_bytes_per_worker"] = [pss_bytes([pid]) for pid in workers]

            health = healthcheck_command(config)
            if health is None:
                report.check("the image's HEALTHCHECK succeeds", False, "the image has no HEALTHCHECK")
            else:
                done = container.run(health, env)
                report.check("the image's HEALTHCHECK succeeds", done.returncode == 0,
                             f"{shlex.join(health)[:60]}... exit status {done.returncode}")
            pre_stop = prestop_command()
            began = time.monotonic()
            done = container.run(pre_stop, env)
            took = time.monotonic() - began
            report.check("the Deployment's preStop command runs in the image", done.returncode == 0,
                         f"{shlex.join(pre_stop)}: exit status {done.returncode} after {took:.1f} s")

            graceful = float(os.environ.get("GRACEFUL_TIMEOUT") or 10)
            figures["stop"] = drain_and_stop(base, port, token, master, proc, log_path, jpegs[1], seen["predict"][
                f"(default)/{jpegs[1][1]}"], report, graceful)
            if health is not None:
                done = container.run(health, env)
                report.check("the HEALTHCHECK fails once the service has stopped", done.returncode != 0,
                             f"exit status {done.returncode}")
        finally:
            stop_group(proc)
    finally:
        container.remove()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="cifar10-serving")
    parser.add_argument("--base", default=None, help=f"base image (default: {image_tool.REGISTRY_BASE} where it can "
                                                     "be pulled, else the Debian stand-in)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures and checks here as JSON")
    args = parser.parse_args(argv)
    began = time.monotonic()

    if shutil.which("buildah") is None:
        print("SKIP image test: buildah is not installed (Debian: apt-get install buildah mmdebstrap; .ci/run "
              "installs both)", flush=True)
        return 0
    if os.geteuid() != 0:
        print("SKIP image test: buildah's chroot isolation and the read-only remount need root", flush=True)
        return 0

    report = Report()
    work = ROOT / "build" / "image-test"
    work.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    record: dict = {"benchmark": "image_test", "date": now,
                    "command": shlex.join(["make", "image-test", *([f"BASE_IMAGE={args.base}"] if args.base else []),
                                           *([f"IMAGE_TEST_OUT={args.out}"] if args.out else [])]),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "buildah": buildah("--version").stdout.strip(),
                                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
                    "how": {"read_only_root": "the container's overlay mount remounted read-only (mount -o remount,ro) "
                                              "after the empty /run/.containerenv mount point buildah needs was made; "
                                              "a tmpfs at /tmp (buildah run --mount type=tmpfs,destination=/tmp)",
                            "network": "buildah's chroot isolation shares this machine's network: the service "
                                       "listens on a free port given as PORT",
                            "open_files": "nofile soft = hard = this machine's hard limit (containers.conf), as "
                                          "Docker and containerd raise it; buildah's default is 1,024",
                            "drain_seconds": DRAIN_SECONDS,
                            "image_bytes": "every regular file of the image's root filesystem, unpacked"}}

    base = args.base
    began_base = time.monotonic()
    if base is None:
        available, why = registry_base_available()
        if available:
            note(f"base: {image_tool.REGISTRY_BASE} (the Dockerfile's default)")
        elif shutil.which("mmdebstrap") is None and not image_tool.buildah_has_image(image_tool.standin_tag()):
            print(f"SKIP image test: {image_tool.REGISTRY_BASE} cannot be pulled ({why}) and mmdebstrap, which makes "
                  "the stand-in base, is not installed (Debian: apt-get install mmdebstrap)", flush=True)
            return 0
        else:
            note(f"base: {image_tool.REGISTRY_BASE} cannot be pulled ({why}); using the Debian stand-in")
            base = image_tool.ensure_standin()
    record["base"] = base or image_tool.REGISTRY_BASE
    record["base_seconds"] = round(time.monotonic() - began_base, 1)

    build = ["make", "--no-print-directory", "image", "IMAGE_TOOL=buildah", f"IMAGE={args.image}",
             *([f"BASE_IMAGE={base}"] if base else [])]
    note("+ " + shlex.join(build))
    began_build = time.monotonic()
    built = subprocess.run(build, cwd=ROOT)
    record["build_seconds"] = round(time.monotonic() - began_build, 1)
    if not report.check("the image builds (make image)", built.returncode == 0,
                        f"{record['build_seconds']:.0f} s with buildah on {record['base']}"):
        return finish(report, record, args.out, began)
    config = image_config(args.image)
    record["image"] = {"name": args.image, "user": config.get("User"), "cmd": config.get("Cmd"),
                       "healthcheck": (config.get("Healthcheck") or {}).get("Test")}
    base_container = Container(base or image_tool.REGISTRY_BASE, work)
    try:
        record["base_bytes"] = tree_size(base_container.rootfs)
    finally:
        base_container.remove()

    token = secrets.token_urlsafe(24)
    jpegs = test_jpegs()
    reference, why = reference_answers(token, jpegs, work / "make-serve.log")
    report.check("the reference: `make serve` answers", reference is not None, why or
                 f"{len(reference['predict'])} answers from {len(reference['models'])} served models")
    figures = check_container(args.image, config, token, jpegs, reference, report, work)
    record.update(figures)
    if "image_bytes" in figures:
        figures_line = (f"image {figures['image_bytes'] / 1e6:.0f} MB unpacked ({record['base_bytes'] / 1e6:.0f} MB "
                        f"base + {(figures['image_bytes'] - record['base_bytes']) / 1e6:.0f} MB: weights "
                        f"{figures['weights_bytes'] / 1e6:.0f} MB, the rest the service and its dependencies)")
        if "memory_pss_bytes" in figures:
            figures_line += (f"; {figures['memory_pss_bytes'] / 2**20:.0f} MiB resident (PSS) after the checks: "
                             f"master {figures['memory_pss_bytes_master'] / 2**20:.0f} MiB, workers "
                             f"{', '.join(f'{b / 2**20:.0f}' for b in figures['memory_pss_bytes_per_worker'])} MiB")
        note(figures_line)
    return finish(report, record, args.out, began)


def finish(report: Report, record: dict, out: Path | None, began: float) -> int:
    record["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    record["machine"]["niceness"] = os.nice(0)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # every command it ran and waited for, buildah's included
    record["cpu_seconds"] = {"user": round(used.ru_utime, 1), "system": round(used.ru_stime, 1)}
    record["checks"] = report.checks
    record["passed"] = not report.failed
    record["seconds"] = round(time.monotonic() - began, 1)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
    summary = "all passed" if record["passed"] else f"{len(report.failed)} failed: {', '.join(report.failed)}"
    print(f"image test: {len(report.checks)} checks, {summary}, in {record['seconds']:.0f} s"
          + (f" (figures: {out})" if out else ""), flush=True)
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
