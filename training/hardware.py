"""What the training machine can do: device, numeric precision, memory format and CPU threads.

On CPUs with native bf16 matrix units (AMX on Sapphire Rapids, or AVX512-BF16 on Cooper Lake and
AMD Zen 4) bf16 autocast with channels_last trains the conv nets 1.6-4.4x faster than fp32, so that
is the default there; elsewhere bf16 is emulated and slower, so fp32 is. On CUDA, bf16 autocast
where the GPU supports it (Ampere and later). Evaluation always runs in fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    name: str            # "fp32" or "bf16" (bf16 = bf16 autocast around the forward pass, fp32 weights)
    channels_last: bool
    reason: str          # one line saying why this was chosen, for the log

    @property
    def autocast(self) -> bool:
        return self.name == "bf16"


def cpu_bf16_units() -> str | None:
    """The CPU's native bf16 matrix instructions ("AMX", "AVX512-BF16"), or None."""
    cpu = getattr(torch, "cpu", None)
    if cpu is not None and getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if cpu is not None and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


def default_precision(device: torch.device) -> Precision:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", False, f"bf16 autocast: {torch.cuda.get_device_name(device)} supports it")
        return Precision("fp32", False, "fp32: this GPU has no bf16 support")
    units = cpu_bf16_units()
    if units:
        return Precision("bf16", True, f"bf16 autocast + channels_last: the CPU has {units}")
    return Precision("fp32", False, "fp32: the CPU has neither AMX nor AVX512-BF16, so bf16 would be emulated "
                                    "and slower (--precision bf16 forces it)")


def resolve_precision(device: torch.device, requested: str | None, channels_last: bool | None) -> Precision:
    """``requested`` None/"auto" picks for the device; an explicit channels_last wins over the default."""
    auto = default_precision(device)
    if requested in (None, "auto"):
        chosen = auto
    elif requested == auto.name:
        chosen = Precision(requested, auto.channels_last, f"{requested} (asked for)")
    else:
        # Forcing bf16 on the CPU keeps channels_last, which bf16 kernels want; forcing fp32 drops it.
        cl = requested == "bf16" and device.type == "cpu"
        chosen = Precision(requested, cl, f"{requested} (asked for)")
    if channels_last is not None and channels_last != chosen.channels_last:
        note = f"; channels_last {'on' if channels_last else 'off'} (asked for)"
        chosen = Precision(chosen.name, channels_last, chosen.reason + note)
    return chosen


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Intra-op threads for CPU kernels (default: every usable CPU); returns the number set."""
    n = threads or usable_cpus()
    torch.set_num_threads(n)
    return n
