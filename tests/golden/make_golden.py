"""Regenerate tests/data/golden/kquants.npz: llama.cpp's own bytes for seeded inputs.

    python tests/golden/make_golden.py --ggml-dir /path/to/llama.cpp/ggml
    python tests/golden/make_golden.py --lib /path/to/libggml-base.so

With --ggml-dir the script compiles ggml-base's C/C++ sources (gcc/g++, -O3, no -march: the
flags ggml-base gets in a default CMake build) into a shared library in a temporary directory
and calls quantize_row_<type>_ref through ctypes. One way to get the sources without git:
`pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all:` and unpack
vendor/llama.cpp/ggml from the sdist.

The inputs are not stored: `make_inputs()` re-derives them from a seed, and the test checks
their sha256 first. Stored per type: a sha256 per chunk of CHUNK_ROWS rows of output, and the
full output bytes of the first FULL_ROWS rows (all the hand-made hard rows and some random ones).

Everything here is importable without a compiler; tests/test_kquants.py uses make_inputs(),
build_ggml_lib() and ggml_quantize().
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED = 20250731
ROWS, COLS = 1152, 1024  # 1,179,648 weights per type; COLS is a multiple of 256
CHUNK_ROWS = 16
FULL_ROWS = 192
# type name -> (weights per block, bytes per block); names as in quantize_row_<name>_ref
KINDS = {"q4_0": (32, 18), "q5_0": (32, 22), "q5_1": (32, 24), "q4_K": (256, 144), "q5_K": (256, 176), "q6_K": (256, 210)}
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "kquants.npz"


def _hard_rows(rng: np.random.Generator, cols: int) -> list[np.ndarray]:
    """Rows that take the quantizers' rarely used paths."""
    g = lambda s=1.0: rng.standard_normal(cols) * s  # noqa: E731
    rows = [
        np.zeros(cols),                                            # every block all zero
        np.full(cols, 0.25), np.full(cols, -3.0), np.full(cols, 1e-8),  # constant rows
        np.where(np.arange(cols) == 5, 1e4, g()),                  # one huge outlier
        np.where(np.arange(cols) == 700, -500.0, g(0.01)),
        g(1e-8), np.linspace(-1e-8, 1e-8, cols), g(1e-6), g(1e-5),  # tiny magnitudes, fp16 subnormal d
        g(3e4), g(1e3),                                            # large magnitudes
        rng.integers(-16, 16, cols) / 2.0,                         # exact .5 steps: ties
        rng.integers(-8, 8, cols) * 1.0,                           # Q4_0's own grid (d = 1)
        rng.integers(-32, 32, cols) / 4.0, rng.integers(0, 31, cols) / 8.0,
        (rng.integers(-16, 16, cols) + 0.5) / 16.0,
        rng.uniform(0, 1, cols), rng.uniform(-1, 0, cols),          # one sign only
        np.where(np.arange(cols) % 2 == 0, 1.0, -1.0),             # alternating signs
        np.where(rng.random(cols) < 0.95, 0.0, g()),               # sparse
        np.where(np.arange(cols) % 256 == 17, 2.5, 0.0),           # one value per super-block
        np.where((np.arange(cols) // 32) % 2 == 0, 0.0, g()),      # every other sub-block zero
        np.where((np.arange(cols) // 16) % 2 == 0, g(), 0.0),
        g() * 10.0 ** ((np.arange(cols) // 32) % 8 - 4),           # scales spanning 8 decades
        g() * 10.0 ** ((np.arange(cols) // 16) % 16 - 11),
        np.linspace(-1, 1, cols), np.linspace(0, 5, cols), np.linspace(-5, 0, cols),
        np.where(np.arange(cols) % 3 == 0, 0.7, -0.7),             # two levels
        np.full(cols, -0.0),                                       # negative zeros
        np.where(np.arange(cols) % 32 == 0, -8.0, 1.0),            # block max negative
        np.where(np.arange(cols) % 32 == 31, 8.0, -1.0),           # block max positive
        np.abs(g()), -np.abs(g()),
        np.where(np.arange(cols) % 256 < 255, 1.0, 1.0 + 2 ** -20),  # almost constant
    ]
    for k in range(16):                                            # outliers at random places
        row = g(rng.uniform(1e-3, 1.0))
        row[rng.integers(0, cols, 1 + k % 3)] = rng.choice([-1, 1]) * 10.0 ** rng.uniform(1, 4)
        rows.append(row)
    for k in range(16):                                            # heavy tails
        rows.append(rng.standard_t(2 + k % 4, cols) * 10.0 ** rng.uniform(-4, 1))
    return rows


def _bf16(x: np.ndarray) -> np.ndarray:  # round f32 to bf16 precision (nearest even), as HF weights are
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


def make_inputs(seed: int = SEED, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """f32[rows, cols]: hard rows first, then Gaussian and Laplace rows with log-uniform scales,
    half of them rounded to bf16 like real checkpoints."""
    rng = np.random.default_rng(seed)
    hard = _hard_rows(rng, cols)
    n = rows - len(hard)
    scale = 10.0 ** rng.uniform(-4, 2, (n, 1))
    body = np.where(rng.random((n, 1)) < 0.7, rng.standard_normal((n, cols)), rng.laplace(size=(n, cols)))
    x = np.vstack([np.array(hard), body * scale]).astype(np.float32)
    x[1::2] = _bf16(x[1::2])
    return np.ascontiguousarray(x)


def sha256_rows(b: np.ndarray, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """uint8[n_chunks, 32]: sha256 of each run of `chunk` rows of a byte matrix."""
    return np.array([np.frombuffer(hashlib.sha256(b[i:i + chunk].tobytes()).digest(), np.uint8)
                     for i in range(0, b.shape[0], chunk)])


# --- llama.cpp side ------------------------------------------------------------------------------

GGML_BASE_SOURCES = ["ggml.c", "ggml.cpp", "ggml-alloc.c", "ggml-backend.cpp", "ggml-backend-meta.cpp",
                     "ggml-opt.cpp", "ggml-threading.cpp", "ggml-quants.c", "gguf.cpp"]


def build_ggml_lib(ggml_dir: Path, out_dir: Path) -> Path:
    """Compile ggml-base from a llama.cpp `ggml/` tree into out_dir/libggml-base-golden.so."""
    src = ggml_dir / "src"
    (out_dir / "ggml-version.h").write_text('#define GGML_VERSION "golden"\n#define GGML_COMMIT "golden"\n')
    flags = ["-O3", "-DNDEBUG", "-fPIC", "-D_GNU_SOURCE", "-D_XOPEN_SOURCE=600", "-DGGML_BUILD",
             "-DGGML_SHARED", f"-I{ggml_dir / 'include'}", f"-I{src}", f"-I{out_dir}"]
    objs = []
    for name in GGML_BASE_SOURCES:
        if not (src / name).exists():
            continue  # older trees lack some of these
        cc = ["gcc", "-std=gnu11"] if name.endswith(".c") else ["g++", "-std=gnu++17"]
        obj = out_dir / (name + ".o")
        subprocess.run(cc + flags + ["-c", str(src / name), "-o", str(obj)], check=True)
        objs.append(str(obj))
    lib = out_dir / "libggml-base-golden.so"
    subprocess.run(["g++", "-shared", "-o", str(lib), *objs, "-lm", "-lpthread", "-ldl"], check=True)
    return lib


def ggml_quantize(lib: ctypes.CDLL, kind: str, x: np.ndarray) -> np.ndarray:
    """uint8[rows, row_bytes] from llama.cpp's quantize_row_<kind>_ref, row by row."""
    x = np.ascontiguousarray(x, np.float32)
    qk, nbytes = KINDS[kind]
    out = np.zeros((x.shape[0], x.shape[1] // qk * nbytes), np.uint8)
    fn = getattr(lib, f"quantize_row_{kind}_ref")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    for r in range(x.shape[0]):
        fn(x[r].ctypes.data, out[r].ctypes.data, x.shape[1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ggml-dir", type=Path, help="a llama.cpp ggml/ directory (has include/ and src/)")
    src.add_argument("--lib", type=Path, help="an already built libggml-base shared library")
    ap.add_argument("--out", type=Path, default=GOLDEN)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        lib_path = args.lib or build_ggml_lib(args.ggml_dir.resolve(), Path(tmp))
        lib = ctypes.CDLL(str(lib_path))
        x = make_inputs()
        data = {"seed": np.int64(SEED), "shape": np.array(x.shape), "chunk_rows": np.int64(CHUNK_ROWS),
                "inputs_sha256": np.frombuffer(hashlib.sha256(x.tobytes()).digest(), np.uint8)}
        for kind in KINDS:
            b = ggml_quantize(lib, kind, x)
            data[f"{kind}_sha256"] = sha256_rows(b)
            data[f"{kind}_full"] = b[:FULL_ROWS]
            print(f"{kind}: {b.nbytes} bytes, {b.shape[0] // CHUNK_ROWS} chunks")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
