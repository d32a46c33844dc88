"""Prompt matrix products through the integer kernels (dispatch._imatmul, what INTEGER_PREFILL
selects) against dequantized tiles and BLAS (the other path of dispatch.matmul), one thread,
on a 350M-like matrix per type; prints milliseconds and the ratio.

    python benchmarks/prefill_paths.py [--rows 1024] [--cols 1024] [--positions 64]

Written to decide isa/arm.py's INTEGER_PREFILL on a board. Under qemu (../shared/tools/arm64)
the ratio is a sanity check only: emulation slows float SIMD far more than integer SIMD.
"""
import argparse
import time

import numba
import numpy as np

from lfm2q.kernels import dispatch
from lfm2q.kernels.formats import Q4_K, Q5_K, Q6_K, Q8_0, block_size, type_name


def weights(qtype, rows, cols, rng):
    per, nbytes = block_size(qtype)
    w = rng.integers(0, 256, (rows, cols // per * nbytes), dtype=np.uint8)
    b = w.reshape(rows, -1, nbytes)
    for o in {Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), Q8_0: (0,)}[qtype]:
        scale = rng.uniform(0.001, 0.02, b.shape[:2]).astype(np.float16)
        b[:, :, o:o + 2] = scale.view(np.uint8).reshape(*b.shape[:2], 2)
    return w


def best(f, repeat=3):
    f()  # compile / warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--positions", type=int, default=64)
    args = ap.parse_args()
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.positions, args.cols)).astype(np.float32)
    out = np.empty((args.positions, args.rows), np.float32)
    print(f"backend: {dispatch.simd.NAME}; {args.rows}x{args.cols}, {args.positions} positions, 1 thread")
    with dispatch.single_threaded_blas():
        for qtype in (Q4_K, Q5_K, Q6_K, Q8_0):
            w = weights(qtype, args.rows, args.cols, rng)
            integer = best(lambda: dispatch._imatmul(w, qtype, x, out))
            saved = dispatch.SIMD_PREFILL
            dispatch.SIMD_PREFILL = False  # matmul's other path: tiles and BLAS
            try:
                blas = best(lambda: dispatch.matmul(w, qtype, x, out))
            finally:
                dispatch.SIMD_PREFILL = saved
            print(f"{type_name(qtype):5} integer {integer:8.1f} ms   BLAS {blas:8.1f} ms   "
                  f"BLAS/integer {blas / integer:5.2f}")


if __name__ == "__main__":
    main()
