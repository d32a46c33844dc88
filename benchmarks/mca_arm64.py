"""Estimated cycles per 256 weights of the NEON kernels' inner loops on a Pi 5 (Cortex-A76), a
Pi 4 (Cortex-A72) and a Neoverse N2 (i8mm: smmla), from llvm-mca on their aarch64 assembly,
cross-compiled on this machine.

    .venv/bin/python benchmarks/mca_arm64.py                 # the table (about a minute)
    .venv/bin/python benchmarks/mca_arm64.py --llama /tmp/llama.cpp   # + llama.cpp's loops

No ARM board is involved: numba compiles each kernel for the aarch64 triple and the CPU named
(NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, llvmlite told the host is that CPU), in a child process
(--emit: prints the assembly as JSON; tests/test_neon.py uses it too). The loop body is the
largest block that branches back to itself; llvm-mca's steady state for it (100 iterations)
divided by the weights one iteration handles gives the figure. An estimate of the core's
pipeline only: no cache misses, no memory bandwidth (which bounds decode on a Pi).

--llama DIR: a llama.cpp checkout (not vendored here; e.g. fetched to /tmp): its
ggml_vec_dot_<type>_q8_<0|K> from ggml/src/ggml-cpu/arch/arm/quants.c, compiled with
clang --target=aarch64-linux-gnu -mcpu=<cpu> -O3 -S, through the same loop extraction; and
its repacked GEMV (ggml-cpu/arch/arm/repack.cpp) the same way, its i8mm GEMM (inline assembly
there) read from the source: the block loop of ggml_gemm_q4_0_4x8_q8_0; its i8mm GEMM for Q4_K
(ggml_gemm_q4_K_8x8_q8_K, NEON intrinsics) compiled with -mcpu=neoverse-n2+i8mm+nosve.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPUS = {"cortex-a76": "+neon,+dotprod,+fullfp16,-i8mm", "cortex-a72": "+neon,-dotprod,-fullfp16,-i8mm",
        "neoverse-n2": "+neon,+dotprod,+fullfp16,+i8mm"}
# kernel -> (weights one call's loop iteration covers per position, positions per call)
KERNELS = {"q4_0_row": (64, 1), "q4_0_rows": (64, 4), "q8_0_row": (64, 1), "q8_0_rows": (64, 4),
           "q4_k_row": (256, 1), "q4_k_rows": (256, 4), "q5_k_row": (256, 1), "q5_k_rows": (256, 4),
           "q6_k_row": (256, 1), "q6_k_rows": (256, 4), "q4_k_packed": (2048, 1), "q4_k_packed_rows": (2048, 4),
           "q4_0_packed": (256, 1), "q4_0_packed_rows": (256, 4),
           "q4_0_4x8_packed": (256, 1), "q4_0_4x8_mmla_rows": (256, 4),
           "q4_k_8x8_packed": (1024, 1), "q4_k_8x8_mmla_rows": (512, 4), "q4_k_8x8_mmla_rows8": (512, 8)}
# lane-indexed sdot, smmla: no fallback form
DOTPROD_ONLY = ("q4_k_packed", "q4_k_packed_rows", "q4_0_packed", "q4_0_packed_rows")
I8MM_ONLY = ("q4_0_4x8_packed", "q4_0_4x8_mmla_rows", "q4_k_8x8_packed", "q4_k_8x8_mmla_rows", "q4_k_8x8_mmla_rows8")

_EMIT = r"""
import json, sys
import llvmlite.binding as llvm
llvm.initialize_all_targets(); llvm.initialize_all_asmprinters()
cpu, feats = sys.argv[1], sys.argv[2]
llvm.get_process_triple = lambda: "aarch64-unknown-linux-gnu"
llvm.get_default_triple = llvm.get_process_triple
llvm.get_host_cpu_name = lambda: cpu
llvm.get_host_cpu_features = lambda: llvm.FeatureMap({f[1:]: f[0] == "+" for f in feats.split(",")})
from numba import njit, types as T
from lfm2q.kernels.isa import neon
assert neon.HAVE_DOTPROD == ("+dotprod" in feats) and neon.HAVE_I8MM == ("+i8mm" in feats)
u8, i8, f32, i16 = (T.Array(t, 1, "C") for t in (T.uint8, T.int8, T.float32, T.int16))
i8_2, f32_2, i16_2 = (T.Array(t, 2, "C") for t in (T.int8, T.float32, T.int16))
out = {}


def wrap(k, n):  # a numba function calling kernel k with its n arguments
    if n == 3:
        return njit(fastmath=False)(lambda r, q, d: k(r, q, d))
    if n == 4:
        return njit(fastmath=False)(lambda r, q, d, s: k(r, q, d, s))
    return njit(fastmath=False)(lambda r, q, d, s, t: k(r, q, d, s, t))


u8_2 = T.Array(T.uint8, 2, "C")
for name in sys.argv[3].split(","):
    kq = "_k_" in name
    if name == "q4_k_packed":
        f = njit(fastmath=False)(lambda p, g, q, d, s, o: neon.q4_k_packed(p, g, q, d, s, o))
        sig = (u8_2, T.int64, i8, f32, i16, f32)
    elif name == "q4_k_packed_rows":
        f = njit(fastmath=False)(lambda p, g, q, d, s, t, o: neon.q4_k_packed_rows(p, g, q, d, s, t, o))
        sig = (u8_2, T.int64, i8_2, f32_2, i16_2, T.int64, f32_2)
    elif name == "q4_0_packed":
        f = njit(fastmath=False)(lambda p, g, q, d, o: neon.q4_0_packed(p, g, q, d, o))
        sig = (u8_2, T.int64, i8, f32, f32)
    elif name == "q4_0_4x8_packed":
        f = njit(fastmath=False)(lambda p, g, q, d, o: neon.q4_0_4x8_packed(p, g, q, d, o))
        sig = (u8_2, T.int64, i8, f32, f32)
    elif name == "q4_0_4x8_mmla_rows":
        f = njit(fastmath=False)(lambda p, g, q, d, t, o: neon.q4_0_4x8_mmla_rows(p, g, q, d, t, o))
        sig = (u8_2, T.int64, i8_2, f32_2, T.int64, f32_2)
    elif name == "q4_k_8x8_packed":
        f = njit(fastmath=False)(lambda p, g, q, d, s, o: neon.q4_k_8x8_packed(p, g, q, d, s, o))
        sig = (u8_2, T.int64, i8, f32, i8, f32)
    elif name.startswith("q4_k_8x8_mmla_rows"):
        k = getattr(neon, name)
        f = njit(fastmath=False)(lambda p, g, q, d, s, t, o: k(p, g, q, d, s, t, o))
        sig = (u8_2, T.int64, i8_2, f32_2, i8_2, T.int64, f32_2)
    elif name == "q4_0_packed_rows":
        f = njit(fastmath=False)(lambda p, g, q, d, t, o: neon.q4_0_packed_rows(p, g, q, d, t, o))
        sig = (u8_2, T.int64, i8_2, f32_2, T.int64, f32_2)
    elif name.endswith("_rows"):
        sig = (u8, i8_2, f32_2, i16_2, T.int64) if kq else (u8, i8_2, f32_2, T.int64)
    else:
        sig = (u8, i8, f32, i16) if kq else (u8, i8, f32)
    if "packed" not in name and "mmla" not in name:
        f = wrap(getattr(neon, name), len(sig))
    f.compile(sig)
    out[name] = f.inspect_asm(sig)
json.dump(out, sys.stdout)
"""


def emit(cpu: str, features: str, kernels=None) -> dict[str, str]:
    """{kernel: aarch64 assembly of a function calling it} for that CPU, compiled in a child."""
    if kernels is None:
        kernels = [k for k in KERNELS if ("+dotprod" in features or k not in DOTPROD_ONLY)
                   and ("+i8mm" in features or k not in I8MM_ONLY)]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=str(ROOT))
        res = subprocess.run([sys.executable, "-c", _EMIT, cpu, features, ",".join(kernels)],
                             env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cross-compiling for {cpu} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


_BRANCH = re.compile(r"^\s*(b\.\w+|cbnz|cbz|tbnz|tbz|b)\s+(?:.*,\s*)?(\.LBB\w+)\s*$")


def _loops(asm: str) -> list[tuple[int, int, list[str]]]:
    """(first line, last line, instructions) of every loop: a label and a branch back to it
    with no call between (error paths that jump back are not loops)."""
    lines = asm.splitlines()
    labels, out = {}, []
    for i, line in enumerate(lines):
        m = re.match(r"^(\.LBB\w+):", line)
        if m:
            labels[m.group(1)] = i
            continue
        m = _BRANCH.match(line)
        if m and m.group(2) in labels:
            body = [s.strip() for s in lines[labels[m.group(2)] + 1:i + 1]]
            body = [s for s in body if s and not s.startswith((".", "//", "@")) and not s.endswith(":")]
            if not any(s.split()[0] in ("bl", "blr", "ret") for s in body):
                out.append((labels[m.group(2)], i, body))
    return out


def _simd_dots(body: list[str]) -> int:
    return sum(s.split()[0] in ("sdot", "smmla", "smull", "smull2", "smlal", "smlal2") for s in body if s)


def loop_body(asm: str) -> list[str]:
    """The instructions of the main loop: the one with the most integer dot instructions
    (then the longest), from its label to the branch back to it."""
    loops = _loops(asm)
    return max(loops, key=lambda lp: (_simd_dots(lp[2]), len(lp[2])))[2] if loops else []


def clang_loop_cycles(asm: str, cpu: str, inner_trips: int = 1, depth: int = 1) -> float:
    """llvm-mca's cycles per iteration of the main loop of a function compiled by clang (the
    loop at `depth` with the most integer dot instructions), from its verbose-asm loop
    comments ("Loop Header", "in Loop: Header=", "Parent Loop"): the loop's own blocks once,
    plus each loop inside it (left rolled by clang) inner_trips times."""
    own: dict[str, list[str]] = {}
    parent: dict[str, str | None] = {}
    current = header = None
    for line in asm.splitlines():
        m = re.match(r"^(?:\.L(BB\w+)|// (%bb\.\d+)):(.*)$", line)
        text = line.strip()
        if m:
            label, rest = m.group(1) or m.group(2), m.group(3)
            h = re.search(r"Header=(BB\w+)", rest)
            current = h.group(1) if h else (label if "Loop" in rest else None)
            header = label if current == label else None
            text = rest.strip()
        if header and text.startswith("//"):  # a loop header's comments: its parents, outermost first
            parent.setdefault(header, None)
            p = re.search(r"Parent Loop (BB\w+)", text)
            if p:
                parent[header] = p.group(1)
            continue
        header = None
        if current and text and not text.startswith((".", "//")):
            own.setdefault(current, []).append(text)

    def kids(h):
        return [c for c, p in parent.items() if p == h]

    def level(h):
        return 1 if parent[h] is None else 1 + level(parent[h])

    def total(h):
        return mca_cycles(own.get(h, []), cpu) + sum(inner_trips * total(c) for c in kids(h))

    def dots(h):
        return _simd_dots(own.get(h, [])) + sum(dots(c) for c in kids(h))

    loops = [h for h in parent if level(h) == depth]
    return total(max(loops, key=lambda h: (dots(h), len(own.get(h, [])))))


def loop_cycles(asm: str, cpu: str) -> float:
    """llvm-mca's cycles per iteration of the main loop of a numba kernel (a single loop)."""
    return mca_cycles(loop_body(asm), cpu)


# LLVM has no Cortex-A76 scheduling model (it times -mcpu=cortex-a76 with the Cortex-A57's,
# which has one load pipe and 3-wide dispatch); the Neoverse N1 is the same core design
# (Arm's "Ares": 4-wide decode, 2 load pipes, 2 128-bit SIMD pipes) and has one since LLVM 17.
# The Neoverse N2 (Armv9: i8mm; 2 128-bit SIMD pipes, as the Cortex-A710) has its own model.
MCA_MODEL = {"cortex-a76": "neoverse-n1", "cortex-a72": "cortex-a72", "neoverse-n2": "neoverse-n2"}


def llvm_mca() -> str:
    """The newest llvm-mca installed (Debian: llvm-19 has the Neoverse N1 model)."""
    found = sorted((int(m.group(1)), p) for p in Path("/usr/bin").glob("llvm-mca-*")
                   if (m := re.fullmatch(r"llvm-mca-(\d+)", p.name)))
    return str(found[-1][1]) if found else "llvm-mca"


def mca_cycles(body: list[str], cpu: str, iterations: int = 100) -> float:
    """llvm-mca's cycles per iteration of a loop body on that CPU (its MCA_MODEL)."""
    res = subprocess.run([llvm_mca(), "-mtriple=aarch64-linux-gnu", f"-mcpu={MCA_MODEL[cpu]}",
                          f"-iterations={iterations}"],
                         input="\n".join(body) + "\n", capture_output=True, text=True, check=True)
    total = int(re.search(r"Total Cycles:\s+(\d+)", res.stdout).group(1))
    return total / iterations


def llama_asm(src: Path, cpu: str, file: str = "quants.c") -> str | None:
    """llama.cpp's (or ggml's) ggml-cpu/arch/arm/<file> compiled for cpu (assembly text), or
    None if no clang / aarch64 libc headers (Debian: clang-14, libc6-dev-arm64-cross and for
    repack.cpp libstdc++-12-dev-arm64-cross)."""
    clang = shutil.which("clang") or shutil.which("clang-14")
    if clang is None:
        return None
    cxx = file.endswith(".cpp")
    if cxx:
        clang = shutil.which("clang++") or shutil.which("clang++-14") or clang
    g = src / "ggml" if (src / "ggml").is_dir() else src
    sysroot = Path("/usr/aarch64-linux-gnu")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.s"
        cxx_inc = sorted(sysroot.glob("include/c++/*"))
        cmd = [clang, "--target=aarch64-linux-gnu", f"-mcpu={cpu}", "-O3", "-S", "-w",
               *(["-std=c++17", "-isystem", str(cxx_inc[-1]), "-isystem", str(cxx_inc[-1] / "aarch64-linux-gnu")]
                 if cxx and cxx_inc else []),  # C++'s headers before C's (#include_next)
               *(["--sysroot", str(sysroot), "-isystem", str(sysroot / "include")] if sysroot.is_dir() else []),
               "-I", str(g / "include"), "-I", str(g / "src"), "-I", str(g / "src/ggml-cpu"),
               str(g / "src/ggml-cpu/arch/arm" / file), "-o", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"llama.cpp's {file} did not build for {cpu}: {res.stderr[-500:]}", file=sys.stderr)
            return None
        return out.read_text()


def llama_inline_loop(src: Path, fn: str, label: str = "3") -> list[str]:
    """The instructions of loop `label` ("3:" ... "bgt 3b") in the inline assembly of llama.cpp's
    repack.cpp function fn, read from the source (its `.inst` words as the mnemonics their
    comments give: the assembler of older toolchains lacks smmla)."""
    g = src / "ggml" if (src / "ggml").is_dir() else src
    text = (g / "src/ggml-cpu/arch/arm/repack.cpp").read_text()
    start = text.find(f"void {fn}(")
    if start < 0:
        return []
    body = text[start:text.find("\n}\n", start)]
    lines = re.findall(r'^\s*"([^"]*)"', body, re.M)
    try:
        first = next(i for i, s in enumerate(lines) if s.startswith(f"{label}:"))
        last = next(i for i in range(first, len(lines)) if lines[i].startswith(f"bgt {label}b"))
    except StopIteration:
        return []
    out = [f"{label}:"]  # (the branch back names it)
    for s in lines[first + 1:last + 1]:
        s = s.replace("\\n", "").strip()
        if s.startswith(".inst"):
            s = s.split("//", 1)[1].strip()
        if s:
            out.append(s)
    return out


def function_asm(asm: str, name: str) -> str:
    m = re.search(rf"^{name}:[^\n]*\n(.*?)^\.Lfunc_end\d+:", asm, re.M | re.S)
    return m.group(1) if m else ""


# our kernel -> (llama.cpp's function, weights per iteration of its main loop, trips of the
# loop inside it: `for j < QK_K/64` in Q4_K / Q5_K, `QK_K/128` in Q6_K, when left rolled)
LLAMA = {"q4_0_row": ("ggml_vec_dot_q4_0_q8_0", 64, 1), "q8_0_row": ("ggml_vec_dot_q8_0_q8_0", 64, 1),
         "q4_k_row": ("ggml_vec_dot_q4_K_q8_K", 256, 4), "q5_k_row": ("ggml_vec_dot_q5_K_q8_K", 256, 4),
         "q6_k_row": ("ggml_vec_dot_q6_K_q8_K", 256, 2)}
# repack.cpp's GEMV over its repacked layouts (dotprod only): the loop over super-blocks (or
# blocks) of one group of rows, at depth 2 -> (row, function, weights per iteration, trips)
LLAMA_REPACK = {"q4_k_packed": ("ggml_gemv_q4_K_8x4_q8_K", 2048, 4),
                "q4_0_packed": ("ggml_gemv_q4_0_4x4_q8_0", 128, 1),
                "q4_0_4x8_packed": ("ggml_gemv_q4_0_4x8_q8_0", 128, 1),
                "q4_k_8x8_packed": ("ggml_gemv_q4_K_8x8_q8_K", 2048, 4)}
# repack.cpp's i8mm GEMM (inline assembly): row -> (function, weights per position and
# iteration of its block loop, positions): one block of 4 weight rows against 16 positions
LLAMA_GEMM = {"q4_0_4x8_mmla_rows": ("ggml_gemm_q4_0_4x8_q8_0", 128, 16)}
# repack.cpp's i8mm GEMM in NEON intrinsics, compiled by clang with i8mm (clang 14 leaves it
# out of -mcpu=neoverse-n2) and without SVE (its SVE path runs only with 256-bit vectors; the
# N2's are 128): row -> (function, weights per position and iteration of its loop over
# super-blocks (depth 3: positions in 4s, rows in 8s, super-blocks), positions, trips of the
# sub-block loop inside it)
LLAMA_GEMM_NEON = {"q4_k_8x8_mmla_rows8": ("ggml_gemm_q4_K_8x8_q8_K", 2048, 4, 4)}
I8MM_MCPU = {"neoverse-n2": "neoverse-n2+i8mm+nosve"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emit", action="store_true", help="print the kernels' assembly as JSON")
    ap.add_argument("--cpu", default="cortex-a76", choices=CPUS)
    ap.add_argument("--llama", type=Path, help="a llama.cpp source tree to compare with")
    args = ap.parse_args()
    if args.emit:
        json.dump(emit(args.cpu, CPUS[args.cpu]), sys.stdout)
        return
    rows = {}
    for cpu, feats in CPUS.items():
        asm = emit(cpu, feats)
        lasm = llama_asm(args.llama, cpu) if args.llama else None
        rasm = llama_asm(args.llama, cpu, "repack.cpp") if args.llama and "+dotprod" in feats else None
        for name, (weights, positions) in KERNELS.items():
            if name not in asm:
                continue
            cyc = loop_cycles(asm[name], cpu)
            rows.setdefault(name, {})[cpu] = 256 * cyc / (weights * positions)
            if lasm and name in LLAMA:
                fn, lw, trips = LLAMA[name]
                rows[name][cpu + " llama"] = 256 * clang_loop_cycles(function_asm(lasm, fn), cpu, trips) / lw
        for name, (fn, lw, trips) in LLAMA_REPACK.items() if rasm else ():
            if name in asm:
                cyc = clang_loop_cycles(function_asm(rasm, fn), cpu, trips, 2)
                rows.setdefault(name, {})[cpu + " llama"] = 256 * cyc / lw
        for name, (fn, lw, positions) in LLAMA_GEMM.items() if args.llama and name in asm else ():
            body = llama_inline_loop(args.llama, fn)
            if body:
                rows.setdefault(name, {})[cpu + " llama"] = 256 * mca_cycles(body, cpu) / (lw * positions)
        iasm = llama_asm(args.llama, I8MM_MCPU[cpu], "repack.cpp") if args.llama and cpu in I8MM_MCPU else None
        for name, (fn, lw, positions, trips) in LLAMA_GEMM_NEON.items() if iasm and name in asm else ():
            cyc = clang_loop_cycles(function_asm(iasm, fn), cpu, trips, 3)
            rows.setdefault(name, {})[cpu + " llama"] = 256 * cyc / (lw * positions)
    cols = [c for cpu in CPUS for c in (cpu, cpu + " llama") if any(c in r for r in rows.values())]
    print("cycles per 256 weights per position (llvm-mca estimate, loop body only)")
    print(f"{'kernel':20}" + "".join(f"{c:>20}" for c in cols))
    for name, r in rows.items():
        print(f"{name:20}" + "".join(f"{r[c]:>20.1f}" if c in r else f"{'':>20}" for c in cols))


if __name__ == "__main__":
    main()
