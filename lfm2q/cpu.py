"""What CPU the kernels are compiled for: its architecture, LLVM name and features.

numba compiles for the host CPU that LLVM detects, unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
name another. On x86 LLVM's detection (CPUID) is complete. On aarch64 it is not: LLVM reads
/proc/cpuinfo's "CPU part" for the name, and its feature list can miss what the kernel's hwcaps
say (on a Cortex-A76 it reported `neon` without `dotprod`); under qemu-user the guest even sees
the x86 host's /proc/cpuinfo and LLVM says `generic`. So on aarch64 the features are read from
the kernel's hwcaps (getauxval(AT_HWCAP / AT_HWCAP2), which /proc/cpuinfo prints as "Features":
asimd, asimddp, i8mm, asimdhp) and handed to numba here, before its code generator is made: dotprod is then used on a Pi 5 and never on a
Pi 4 (where `sdot` would be SIGILL).

Must run before the first @njit decorator executes (lfm2q/numba_cache.py calls configure()).
A NUMBA_CPU_NAME set by the user wins, as numba documents.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

# hwcap name in /proc/cpuinfo -> LLVM's feature name (aarch64)
HWCAP_TO_LLVM = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimdhp": "fullfp16",  # half-precision arithmetic in NEON (fphp: the scalar form)
    "sve": "sve",
    "asimdrdm": "rdm",
    "crc32": "crc",
    "aes": "aes",
    "sha2": "sha2",
    "lrcpc": "rcpc",
    "atomics": "lse",
    "bf16": "bf16",
}

# /proc/cpuinfo "CPU part" (MIDR part number, ARM Ltd implementer 0x41) -> LLVM CPU name.
ARM_PARTS = {
    0xD03: "cortex-a53", 0xD04: "cortex-a35", 0xD05: "cortex-a55", 0xD07: "cortex-a57",
    0xD08: "cortex-a72", 0xD09: "cortex-a73", 0xD0A: "cortex-a75", 0xD0B: "cortex-a76",
    0xD0C: "neoverse-n1", 0xD0D: "cortex-a77", 0xD40: "neoverse-v1", 0xD41: "cortex-a78",
    0xD44: "cortex-x1", 0xD46: "cortex-a510", 0xD47: "cortex-a710", 0xD48: "cortex-x2",
    0xD49: "neoverse-n2", 0xD4B: "cortex-a78c", 0xD4D: "cortex-a715", 0xD4E: "cortex-x3",
    0xD4F: "neoverse-v2", 0xD80: "cortex-a520", 0xD81: "cortex-a720", 0xD82: "cortex-x4",
}


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says of an aarch64 CPU: its LLVM name (None if unknown) and the
    LLVM names of its hwcap features."""
    name: str | None
    features: frozenset[str]


def parse_cpuinfo(text: str) -> CpuInfo:
    """/proc/cpuinfo of an aarch64 Linux -> CpuInfo (the first CPU's entries; big.LITTLE
    boards list several parts, and the kernel's hwcaps are the features all cores share)."""
    features: set[str] = set()
    name = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "Features" and not features:
            features = {HWCAP_TO_LLVM[f] for f in value.split() if f in HWCAP_TO_LLVM}
        elif key == "CPU part" and name is None:
            try:
                name = ARM_PARTS.get(int(value.strip(), 16))
            except ValueError:
                pass
    return CpuInfo(name, frozenset(features))


# Linux's aarch64 hwcap bits (arch/arm64/include/uapi/asm/hwcap.h) -> LLVM feature names
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP_BITS = {1: "neon", 7: "crc", 8: "lse", 10: "fullfp16", 12: "rdm", 15: "rcpc", 20: "dotprod", 22: "sve"}
_HWCAP2_BITS = {13: "i8mm", 14: "bf16"}


def auxv_features() -> frozenset[str] | None:
    """The kernel's hwcaps from the auxiliary vector (getauxval), as LLVM feature names; None
    where it cannot be read. Unlike /proc/cpuinfo, qemu-user sets these for the CPU it
    emulates, so they are right under emulation too."""
    import ctypes

    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    hw, hw2 = getauxval(_AT_HWCAP), getauxval(_AT_HWCAP2)
    if not hw:
        return None
    return frozenset([f for bit, f in _HWCAP_BITS.items() if hw >> bit & 1]
                     + [f for bit, f in _HWCAP2_BITS.items() if hw2 >> bit & 1])


def arch() -> str:
    """'x86_64', 'aarch64' or another machine name: the architecture LLVM compiles for."""
    import llvmlite.binding as llvm

    triple = llvm.get_process_triple()
    head = triple.split("-", 1)[0]
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(head, head)


def _aarch64_config(info: CpuInfo, llvm_name: str, llvm_features: set[str]) -> tuple[str, str]:
    """(NUMBA_CPU_NAME, NUMBA_CPU_FEATURES) for an aarch64 CPU: LLVM's name if it knows the
    CPU, else the one the MIDR part names, else generic; the features LLVM found plus the
    hwcaps. A feature the kernel does not list is turned off explicitly, so a CPU name that
    implies it (cortex-a76 -> dotprod) cannot switch it back on behind the hwcaps' back."""
    name = llvm_name if llvm_name not in ("", "generic") else (info.name or "generic")
    on = set(llvm_features) | set(info.features) | {"neon"}
    if info.features:  # trust the kernel's list for the features our kernels choose by
        on -= {"dotprod", "i8mm", "fullfp16"} - set(info.features)
    flags = [f"+{f}" for f in sorted(on)]
    flags += [f"-{f}" for f in sorted({"dotprod", "i8mm", "fullfp16"} - on)]
    return name, ",".join(flags)


def configure() -> None:
    """On aarch64 Linux, tell numba the CPU the hwcaps describe (see the module docstring).
    Does nothing on other architectures, or when NUMBA_CPU_NAME is set."""
    import numba

    if os.environ.get("NUMBA_CPU_NAME") or numba.config.CPU_NAME is not None:
        return
    # The hwcaps and /proc/cpuinfo describe the machine this process runs on: only an aarch64
    # one (a board, or qemu-user, whose uname says aarch64) has them. A process that compiles
    # for aarch64 on another host (tests/foreign_target.py, benchmarks/mca_arm64.py) would
    # read the host's x86 hwcaps as ARM ones and switch dotprod off.
    if arch() != "aarch64" or platform.machine() not in ("aarch64", "arm64"):
        return
    try:
        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        info = CpuInfo(None, frozenset())
    aux = auxv_features()
    if aux:  # the same hwcaps; also right under qemu-user, whose /proc/cpuinfo is the host's
        info = CpuInfo(info.name, aux)
    import llvmlite.binding as llvm

    llvm_features = {k for k, v in llvm.get_host_cpu_features().items() if v}
    name, features = _aarch64_config(info, llvm.get_host_cpu_name(), llvm_features)
    numba.config.CPU_NAME = name
    numba.config.CPU_FEATURES = features


def target() -> tuple[str, frozenset[str]]:
    """(LLVM CPU name, enabled features) numba compiles for: NUMBA_CPU_NAME / _FEATURES if
    set (by the user, or by configure()), else the host's as LLVM detects it."""
    import llvmlite.binding as llvm
    import numba

    if numba.config.CPU_NAME not in (None, "host"):
        flags = (numba.config.CPU_FEATURES or "").split(",")
        return numba.config.CPU_NAME, frozenset(f[1:] for f in flags if f.startswith("+"))
    return llvm.get_host_cpu_name(), frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)


def machine() -> str:
    """The CPU's marketing name where the OS tells it (for reports), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
