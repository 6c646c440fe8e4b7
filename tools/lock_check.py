"""Does the lock install anywhere? Resolve every extra from the public package index alone, on each Python.

    python tools/lock_check.py            # what `make lock-check` (and so `make test`) runs

For each Python version that ``pyproject.toml``'s classifiers list and each dependency group (the core
the service needs, then each extra), pip resolves the group's requirements against ``constraints.txt``
with ``--dry-run --report``: metadata only, no multi-GB wheels. This machine's pip configuration (a local
wheel folder, extra indexes, a site constraint file) is switched off, so what passes here passes for a
user whose pip sees only https://pypi.org. Every package of the resolution must be the locked version.

A listed Python that is not installed here is reported as skipped, by name; at least one must run.
Exit status 0 when every group resolves on every Python found, 1 otherwise (one line per failure).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_INDEX = "https://pypi.org/simple"
# Environment variables through which this workplace's pip finds local wheels, extra indexes or caps.
PIP_SITE_VARIABLES = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX",
                      "PIP_REQUIREMENT")


def _name(requirement: str) -> str:
    """The project name of a requirement, normalized as PEP 503 says (``zope.event`` is ``zope-event``)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]).lower()


def supported_pythons(pyproject: dict) -> list[str]:
    prefix = "Programming Language :: Python :: "
    return [c[len(prefix):] for c in pyproject["project"].get("classifiers", [])
            if c.startswith(prefix) and c[len(prefix):].count(".") == 1]


def dependency_groups(pyproject: dict) -> dict[str, list[str]]:
    core = list(pyproject["project"]["dependencies"])
    groups = {"core": core}
    for extra, requirements in pyproject["project"].get("optional-dependencies", {}).items():
        groups[extra] = core + list(requirements)
    return groups


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    return pins


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (3.X) that runs: on PATH, else under pyenv's root."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv_root.is_dir():
        candidates += sorted(str(p / "bin" / "python") for p in pyenv_root.glob(f"{version}.*"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def public_index_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PIP_SITE_VARIABLES}
    env["PIP_CONFIG_FILE"] = os.devnull  # no site or user pip.conf
    return env


def resolve(python: str, requirements: list[str], lock: Path) -> tuple[dict[str, str] | None, str]:
    """pip's resolution of ``requirements`` under the lock: {name: version}, or None and pip's last error line."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--only-binary=:all:",
               "--index-url", PUBLIC_INDEX, "--report", str(report), "-c", str(lock), *requirements]
        done = subprocess.run(cmd, capture_output=True, text=True, env=public_index_env())
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or ["pip failed"]
            return None, errors[0]
        items = json.loads(report.read_text())["install"]
    return {_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}, ""


def main() -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = ROOT / "constraints.txt"
    pins = read_lock(lock)
    failures, ran = [], 0
    local = sorted(f"{name}=={v}" for name, v in pins.items() if "+" in v)
    if local:
        failures.append(f"constraints.txt pins local builds that no public index has: {', '.join(local)}")
    for version in supported_pythons(pyproject):
        python = find_python(version)
        if python is None:
            print(f"Python {version}: not installed on this machine, skipped", flush=True)
            continue
        ran += 1
        for group, requirements in dependency_groups(pyproject).items():
            resolved, error = resolve(python, requirements, lock)
            if resolved is None:
                failures.append(f"Python {version}, {group}: {error}")
                continue
            unlocked = sorted(f"{n}=={v}" for n, v in resolved.items() if pins.get(n) != v)
            if unlocked:
                failures.append(f"Python {version}, {group}: resolved outside the lock: {', '.join(unlocked)}")
            else:
                print(f"Python {version}, {group}: {len(resolved)} packages, all as locked", flush=True)
    if ran == 0:
        failures.append("none of the supported Pythons is installed here")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
