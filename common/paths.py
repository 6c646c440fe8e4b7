"""Paths as results files record them: relative to the repository, so that they read the same on every
machine (``../shared/data/cifar10-jpeg.tar.gz``, not ``/work/shared/data/cifar10-jpeg.tar.gz``).

The repository is the checkout this module lies in; exports and benchmarks run from one.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO_ROOT = Path(os.path.abspath(__file__)).parents[1]


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` (absolute, or relative to the working directory) relative to the repository, with
    forward slashes; a path outside the repository gets ``..`` steps."""
    absolute = os.path.abspath(os.path.expanduser(path))
    return Path(os.path.relpath(absolute, REPO_ROOT)).as_posix()


def repo_relative_command(command: str) -> str:
    """A recorded command line with every absolute path in it (``/x`` or ``--flag=/x``) made repo-relative."""
    return shlex.join(_relative_argument(arg) for arg in shlex.split(command))


def _relative_argument(arg: str) -> str:
    flag, eq, value = arg.partition("=")
    if eq and flag.startswith("-") and os.path.isabs(value):
        return f"{flag}={repo_relative(value)}"
    return repo_relative(arg) if os.path.isabs(arg) else arg
