"""Instruction sets: which one's kernels this process compiles, chosen here and nowhere else.

numba compiles every branch of a function it compiles, whatever the CPU: a run-time `if` cannot
keep an x86 intrinsic away from an aarch64 compile (LLVM aborts the process on it). So
kernels/dispatch.py never names an instruction set: it calls `simd.<kernel>`, and `simd` is
one backend module, picked once at import from the architecture and features numba compiles
for (lfm2q/cpu.py). Every backend offers the same functions (portable.py lists them):

    x86.py       AVX2 / AVX-512 VNNI intrinsics     x86-64 with AVX2, FMA and F16C
    arm.py       NEON (dotprod / i8mm where present) aarch64
    portable.py  plain loops                        anything else

The modules of the other instruction sets are still importable (tests compile them for a
foreign target), but nothing the engine compiles refers to them. llvm_ir.IR.fn refuses an
intrinsic of another architecture, as a second line of defence.
"""
from ...cpu import target
from .llvm_ir import ARCH, TOKENS  # noqa: F401

CPU_NAME, FEATURES = target()

if ARCH == "x86_64" and {"avx2", "fma", "f16c"} <= FEATURES:
    from . import x86 as simd
elif ARCH == "aarch64":
    from . import arm as simd
else:
    from . import portable as simd


def describe() -> dict:
    """What this process compiles for, for `lfm2q info` and the benchmarks."""
    return {"arch": ARCH, "cpu": CPU_NAME, "features": sorted(FEATURES), "kernels": simd.NAME}
