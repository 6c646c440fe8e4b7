"""CPU features come from the OS's flag list, not from torch internals; a machine without one assumes nothing."""

from common import machine

AMX_CPU = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512_bf16 amx_bf16 amx_tile\n"
ZEN4_CPU = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_CPU = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2686 v4\nflags\t\t: fpu avx2 fma\n"


def test_bf16_units_are_read_from_the_cpu_flags_best_first():
    assert machine.bf16_units(AMX_CPU) == "AMX"
    assert machine.bf16_units(ZEN4_CPU) == "AVX512-BF16"
    assert machine.bf16_units(OLD_CPU) is None
    assert machine.cpu_name(ZEN4_CPU) == "AMD EPYC 9R14"


def test_without_a_cpuinfo_file_no_unit_is_assumed(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    assert machine.cpu_flags() == frozenset() and machine.bf16_units() is None
    assert machine.cpu_name()  # the platform's own name instead


def test_usable_cpus_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert machine.usable_cpus() == 3
