"""What the training machine can do: device, numeric precision, memory format and CPU threads.

On CPUs with native bf16 matrix units (AMX on Sapphire Rapids, or AVX512-BF16 on Cooper Lake and
AMD Zen 4) bf16 autocast with channels_last trains the conv nets 1.6-4.4x faster than fp32, so that
is the default there; elsewhere bf16 is emulated and slower, so fp32 is. On CUDA, bf16 autocast
where the GPU supports it (Ampere and later). Evaluation always runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.machine import bf16_units, usable_cpus

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    name: str            # "fp32" or "bf16" (bf16 = bf16 autocast around the forward pass, fp32 weights)
    channels_last: bool
    reason: str          # one line saying why this was chosen, for the log

    @property
    def autocast(self) -> bool:
        return self.name == "bf16"


def default_precision(device: torch.device) -> Precision:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", False, f"bf16 autocast: {torch.cuda.get_device_name(device)} supports it")
        return Precision("fp32", False, "fp32: this GPU has no bf16 support")
    units = bf16_units()
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


def set_threads(threads: int | None) -> int:
    """Intra-op threads for CPU kernels (default: every usable CPU); returns the number set."""
    n = threads or usable_cpus()
    torch.set_num_threads(n)
    return n
