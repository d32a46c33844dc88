"""The integer kernels against the float path, one thread, on a 350M-like matrix per type.

Prefill: dispatch._imatmul (what INTEGER_PREFILL selects) against dequantized tiles and BLAS
(the other path of dispatch.matmul). Decode: the integer row kernels (x quantized to Q8_K /
Q8_0 / Q8_1, then dispatch's integer matvec) against the float kernels over x in its rounded
float form (what matvec runs for a type whose backend flag is off). Prints milliseconds and
the ratios.

    python benchmarks/prefill_paths.py [--rows 1024] [--cols 1024] [--positions 64]

Written to decide isa/arm.py's INTEGER_PREFILL and the Q4_0_INTEGER / Q4_1_Q5_INTEGER flags
on a board. Under qemu (../shared/tools/arm64) the ratios are a sanity check only: emulation
slows float SIMD far more than integer SIMD.
"""
import argparse
import time

import numba
import numpy as np

from lfm2q.kernels import dispatch
from lfm2q.kernels.actquant import (ACT_Q8_K, act_of, quantize_q8_0, quantize_q8_1, quantize_q8_k,
                                    round_activations)
from lfm2q.kernels.formats import Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, block_size, type_name

TYPES = (Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)
SCALES = {Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), Q8_0: (0,), Q4_0: (0,), Q4_1: (0, 2),
          Q5_0: (0,), Q5_1: (0, 2)}  # byte offsets of each block's fp16 fields


def weights(qtype, rows, cols, rng):
    per, nbytes = block_size(qtype)
    w = rng.integers(0, 256, (rows, cols // per * nbytes), dtype=np.uint8)
    b = w.reshape(rows, -1, nbytes)
    for o in SCALES[qtype]:
        scale = rng.uniform(0.001, 0.02, b.shape[:2]).astype(np.float16)
        b[:, :, o:o + 2] = scale.view(np.uint8).reshape(*b.shape[:2], 2)
    return w


def best(f, repeat=3, calls=1):  # ms a call: the fastest of `repeat` runs of `calls` calls
    f()  # compile / warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - t0) / calls)
    return min(times) * 1e3


def decode_paths(w, qtype, x):
    """(integer, float) decode of one position, as callables: matvec's two branches."""
    n, rows = x.shape[0], w.shape[0]
    out = np.empty(rows, np.float32)
    xq, xr = np.empty(n, np.int8), np.empty(n, np.float32)
    kquant = act_of(qtype) == ACT_Q8_K
    xd = np.empty(n // (256 if kquant else 32), np.float32)
    xs, bsum = np.empty(n // 32, np.float32), np.empty(n // 16, np.int16)

    def integer():
        if kquant:
            quantize_q8_k(x, xq, xd, bsum)
            dispatch._imatvec_k_serial(w, qtype, xq, xd, bsum, out)
        elif qtype in (Q4_1, Q5_1):
            quantize_q8_1(x, xq, xd, xs)
            dispatch._imatvec_b32_min_serial(w, qtype, xq, xd, xs, out)
        else:
            quantize_q8_0(x, xq, xd)
            dispatch._imatvec_b32_serial(w, qtype, xq, xd, out)

    def floats():
        round_activations(x, act_of(qtype), xr)
        dispatch._matvec_serial(w, qtype, xr, out)
    return integer, floats


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
        for qtype in TYPES:
            w = weights(qtype, args.rows, args.cols, rng)
            integer1, floats1 = decode_paths(w, qtype, x[0])
            dec_int, dec_float = best(integer1, 5, 20), best(floats1, 5, 20)
            integer = best(lambda: dispatch._imatmul(w, qtype, x, out))
            saved = dispatch.SIMD_PREFILL
            dispatch.SIMD_PREFILL = False  # matmul's other path: tiles and BLAS
            try:
                blas = best(lambda: dispatch.matmul(w, qtype, x, out))
            finally:
                dispatch.SIMD_PREFILL = saved
            print(f"{type_name(qtype):5} prefill: integer {integer:7.1f} ms  BLAS {blas:7.1f} ms  "
                  f"BLAS/integer {blas / integer:5.2f}   decode: integer {dec_int:6.3f} ms  "
                  f"float {dec_float:6.3f} ms  float/integer {dec_float / dec_int:5.2f}")


if __name__ == "__main__":
    main()
