"""tools/lock_check.py, the check `make test` runs first: its verdicts, without the network (pip is stubbed).

The real resolution against https://pypi.org runs as `make lock-check`, a prerequisite of `make test`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import lock_check  # noqa: E402


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('''
[project]
name = "x"
dependencies = ["numpy>=1", "zope.event"]
classifiers = ["Programming Language :: Python :: 3", "Programming Language :: Python :: 3.11"]
[project.optional-dependencies]
train = ["torch>=2"]
''')
    (tmp_path / "constraints.txt").write_text("numpy==2.0.0\nzope-event==6.2\n    # via x\ntorch==2.13.0\n")
    monkeypatch.setattr(lock_check, "ROOT", tmp_path)
    monkeypatch.setattr(lock_check, "find_python", lambda version: sys.executable)
    return tmp_path


def test_the_lock_passes_when_every_group_resolves_to_its_pins(project, monkeypatch, capsys):
    resolved = {"numpy": "2.0.0", "zope-event": "6.2"}
    monkeypatch.setattr(lock_check, "resolve", lambda python, reqs, lock: (
        {**resolved, **({"torch": "2.13.0"} if "torch>=2" in reqs else {})}, ""))
    assert lock_check.main() == 0
    out = capsys.readouterr().out
    assert "Python 3.11, core: 2 packages, all as locked" in out and "Python 3.11, train: 3 packages" in out


def test_a_local_build_pin_fails_whatever_pip_says(project, monkeypatch, capsys):
    (project / "constraints.txt").write_text("numpy==2.0.0\nzope-event==6.2\ntorch==2.13.0+cpu\n")
    monkeypatch.setattr(lock_check, "resolve", lambda *a: ({"numpy": "2.0.0", "zope-event": "6.2"}, ""))
    assert lock_check.main() == 1
    assert "local builds that no public index has: torch==2.13.0+cpu" in capsys.readouterr().err


def test_a_package_outside_the_lock_or_a_failed_resolution_fails(project, monkeypatch, capsys):
    answers = iter([({"numpy": "2.0.0", "zope-event": "6.2", "nvidia-cublas": "13.1"}, ""),
                    (None, "ERROR: No matching distribution found for torch==2.13.0")])
    monkeypatch.setattr(lock_check, "resolve", lambda *a: next(answers))
    assert lock_check.main() == 1
    err = capsys.readouterr().err
    assert "Python 3.11, core: resolved outside the lock: nvidia-cublas==13.1" in err
    assert "Python 3.11, train: ERROR: No matching distribution" in err


def test_pip_runs_with_the_public_index_only(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple")
    env = lock_check.public_index_env()
    assert "PIP_FIND_LINKS" not in env and "PIP_EXTRA_INDEX_URL" not in env
    assert env["PIP_CONFIG_FILE"] == lock_check.os.devnull


def test_names_are_compared_as_pep_503_normalizes_them():
    assert lock_check._name("zope.event") == lock_check._name("Zope_Event") == "zope-event"
    assert lock_check._name("tritonclient[http]>=2.40") == "tritonclient"
