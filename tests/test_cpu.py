"""lfm2q/cpu.py: the aarch64 CPU numba is told to compile for, from the kernel's hwcaps."""
from lfm2q.cpu import _aarch64_config, parse_cpuinfo

# As a Raspberry Pi 5's and a Pi 4's kernels print /proc/cpuinfo (first processor shown).
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1
"""
PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""


def test_hwcaps_name_the_cpu_and_its_features():
    pi5, pi4 = parse_cpuinfo(PI5), parse_cpuinfo(PI4)
    assert pi5.name == "cortex-a76" and {"neon", "dotprod", "fullfp16"} <= pi5.features
    assert "i8mm" not in pi5.features
    assert pi4.name == "cortex-a72" and pi4.features == {"neon", "crc"}


def test_dotprod_follows_the_hwcaps_not_the_cpu_name():
    # LLVM found "neon" only (as it did on a Cortex-A76): the hwcaps add dotprod
    name, flags = _aarch64_config(parse_cpuinfo(PI5), "cortex-a76", {"neon"})
    assert name == "cortex-a76"
    assert "+dotprod" in flags.split(",") and "-i8mm" in flags.split(",")
    # a Pi 4: dotprod is turned off explicitly, whatever the name implies
    name, flags = _aarch64_config(parse_cpuinfo(PI4), "cortex-a72", {"neon", "dotprod"})
    assert "-dotprod" in flags.split(",") and "+dotprod" not in flags.split(",")


def test_under_qemu_llvm_says_generic_and_the_part_names_the_cpu():
    name, flags = _aarch64_config(parse_cpuinfo(PI5), "generic", set())
    assert name == "cortex-a76" and "+dotprod" in flags.split(",")
    name, _ = _aarch64_config(parse_cpuinfo("Features\t: fp asimd\n"), "generic", set())
    assert name == "generic"


def test_a_cross_compile_on_another_host_keeps_the_targets_features():
    # numba told it compiles for a Cortex-A76 on this (non-ARM) host: the host's own hwcaps
    # must not be read as ARM ones (they switched dotprod off)
    import platform
    import subprocess
    import sys

    if platform.machine() in ("aarch64", "arm64"):
        import pytest
        pytest.skip("on aarch64 the hwcaps are this machine's own")
    code = """
import llvmlite.binding as llvm
llvm.initialize_all_targets(); llvm.initialize_all_asmprinters()
llvm.get_process_triple = lambda: "aarch64-unknown-linux-gnu"
llvm.get_host_cpu_name = lambda: "cortex-a76"
llvm.get_host_cpu_features = lambda: llvm.FeatureMap({"neon": True, "dotprod": True})
import numba
from lfm2q import cpu
cpu.configure()
print(numba.config.CPU_NAME, cpu.target()[1] >= {"neon", "dotprod"})
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["None", "True"], p.stdout + p.stderr[-2000:]
