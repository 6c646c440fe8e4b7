"""What the machine offers: usable CPUs, the CPU's name and its bf16 matrix units, read from the OS.

Torch-free, so the service and the benchmarks ask the same questions the same way as training does.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Linux's names for the CPU flags that make bf16 matrix arithmetic native, best first.
BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def _cpuinfo_field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo (``cpuinfo``: its text); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:  # not Linux: no flags known, so nothing is assumed
            return frozenset()
    return frozenset((_cpuinfo_field(cpuinfo, "flags") or "").split())


def bf16_units(cpuinfo: str | None = None) -> str | None:
    """The CPU's native bf16 matrix instructions ("AMX" or "AVX512-BF16"), or None."""
    flags = cpu_flags(cpuinfo)
    return next((name for flag, name in BF16_FLAGS if flag in flags), None)


def cpu_name(cpuinfo: str | None = None) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            cpuinfo = ""
    return _cpuinfo_field(cpuinfo, "model name") or platform.processor() or platform.machine()
