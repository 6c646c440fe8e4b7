"""The Dockerfile and its build context, checked without a Docker engine (none runs here).

What is checked is what would make the image wrong or the build fail: the base, the install step
(the same core-only ``pip install .`` as ``make serve``), a non-root user, the health check, the
port, the command, and that every file the Dockerfile copies is present and not excluded by
.dockerignore while training code, checkpoints and virtual environments are.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from test_serving_support import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def only(keyword: str) -> list[str]:
    return [args for key, args in instructions() if key == keyword]


def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def in_build_context(path: str) -> bool:
    """Docker's .dockerignore rules: the last pattern matching the path or one of its parents decides."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for negate, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            included = negate
    return included


def test_slim_python_base_non_root_user_port_and_healthcheck():
    # The base is an argument (`make image-test` builds on a stand-in where no registry answers); its default
    # is the slim Python image, and the ARG comes before FROM, where Docker allows it to name the base.
    keys = [key for key, _ in instructions()]
    (arg,) = [args for key, args in instructions() if key == "ARG" and args.startswith("BASE_IMAGE=")]
    assert keys.index("ARG") < keys.index("FROM")
    assert re.fullmatch(r"BASE_IMAGE=python:3\.\d+-slim(-\w+)?", arg)
    assert only("FROM") == ["${BASE_IMAGE}"]
    users = only("USER")
    # numeric: Kubernetes' runAsNonRoot refuses to start an image whose user it cannot verify as non-root
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1])
    assert only("EXPOSE") == ["8000"]
    (healthcheck,) = only("HEALTHCHECK")
    assert "/readyz" in healthcheck and "CMD" in healthcheck
    env = " ".join(only("ENV"))
    assert "HOST=0.0.0.0" in env and "PORT=8000" in env


def test_installs_only_the_serving_dependencies_with_pip_install_dot():
    installs = [args for args in only("RUN") if "pip install" in args]
    assert len(installs) == 1
    command = shlex.split(installs[0].split("&&")[0])
    assert command[-1] == "." and not any("[" in arg or arg in ("torch", "torchvision") for arg in command)


def test_runs_gunicorn_with_the_service_config():
    (cmd,) = only("CMD")
    assert json.loads(cmd) == ["gunicorn", "--config", "serving/gunicorn.conf.py", "serving:create_app()"]


def test_everything_copied_is_in_the_build_context():
    sources = []
    for args in only("COPY"):
        sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert {"pyproject.toml", "serving", "weights"} <= set(sources)
    for source in sources:
        assert in_build_context(source), f"{source} is excluded by .dockerignore"
        if source != "weights":  # the lead fills weights/ before building; it may be empty in a fresh checkout
            assert (ROOT / source).exists(), f"{source} is copied by the Dockerfile but missing"
    for path in ("serving/__init__.py", "serving/gunicorn.conf.py", "serving/static/index.html",
                 "weights/dwsep.onnx", "weights/MANIFEST.json"):
        assert in_build_context(path), path


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "training/run.py", "tests/conftest.py",
                                  "runs/dwsep/best.pt", "serving/__pycache__/api.cpython-311.pyc",
                                  "weights/dwsep.pt"])
def test_development_files_stay_out_of_the_build_context(path):
    assert not in_build_context(path)
