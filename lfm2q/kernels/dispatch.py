"""Matrix kernels over raw GGUF weights of any supported type.

Every kernel takes a *kernel code*: the weight's ggml type, plus EXACT to keep the activations
in f32. Without EXACT the activations are first rounded the way llama.cpp rounds them for that
weight type (kernels/actquant.py), so both engines compute the same products.

- `matvec`: decode. Fused dequantize-and-dot per row, parallel over rows; the matrix is
  never expanded to floats. K-quant and Q8_0 rows multiply integers (Q4_0, Q5_0, Q4_1 and
  Q5_1 rows too where the backend's flags say its kernels pay; Q4_1 / Q5_1 against x in Q8_1),
  through the kernels of one instruction set's backend (`simd`, kernels/isa/: AVX2 / AVX-512 VNNI on x86, NEON on
  aarch64, intdot.py's plain loops elsewhere).
- `matmul`: prefill. Where the backend has integer prefill, the matrices decode multiplies in
  integers go through the integer kernels of decode, each weight row meeting 4 prompt positions per call
  (`_imatmul`): the same bits as decode, 1.6-2x the BLAS path below on the 350M shape. Rows go
  in pairs (packed Q4_K in pairs of 8-row groups, Q8_0 in quads against 8 positions), which the
  512-bit kernels take at once where the CPU has AVX-512 VNNI (the same bits again). Otherwise
  it dequantizes an L2-sized tile of rows at a time and multiplies it with every prompt
  position at once through BLAS. Threads are ours, not BLAS's: each of n_threads workers owns
  a share of the rows and runs single-threaded BLAS on its tiles. OpenBLAS's own threads
  spin-wait between calls and, interleaved with numba's workers, ran 20x slower than one
  thread here.
- `row_dequant`: one row as f32, for the BLAS path's tiles (the embedding lookup is lookup.py).
"""
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange

from .floats import (dequant_bf16, dequant_f16, dequant_f32, dequantize_bf16_np,
                     dequantize_f16_np, dequantize_f32_np, dot_bf16, dot_f16, dot_f32)
from .actquant import (ACT_F32, ACT_Q8_0, ACT_Q8_K, QK8_0, QK_K, act_of, q8_1_sums, quantize_q8_0, quantize_q8_1,
                       quantize_q8_k, round_activation_rows, round_activations, round_activations_np)
from .formats import BF16, F16, F32, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, type_name
from .isa import TOKENS as simd_tokens, simd
from .kquants import (dequant_q4_k, dequant_q5_k, dequant_q6_k, dequantize_q4_k_np,
                      dequantize_q5_k_np, dequantize_q6_k_np, dot_q4_k, dot_q5_k, dot_q6_k)
from .q4_0 import (dequant_q4_0, dequant_q4_1, dequant_q5_0, dequant_q5_1, dequantize_q4_0_np,
                   dequantize_q4_1_np, dequantize_q5_0_np, dequantize_q5_1_np, dot_q4_0, dot_q4_1,
                   dot_q5_0, dot_q5_1)
from .q8_0 import dequant_q8_0, dequantize_q8_0_np, dot_q8_0
from .prefetch import prefetch_rows_ahead
from .repack import (GROUP, Q4_0_GROUP, packed, pair_positions_q8_0, pair_positions_q8_k, twin_chunks_q8_0,
                     twin_sums_q8_k)


@njit(error_model="numpy", fastmath=True, cache=True)
def row_dot(w, qtype, r, x):  # -> f32: row r of W (type qtype) . x
    if qtype == Q8_0:
        return dot_q8_0(w, r, x)
    if qtype == F16:
        return dot_f16(w, r, x)
    if qtype == BF16:
        return dot_bf16(w, r, x)
    if qtype == F32:
        return dot_f32(w, r, x)
    if qtype == Q4_K:
        return dot_q4_k(w, r, x)
    if qtype == Q6_K:
        return dot_q6_k(w, r, x)
    if qtype == Q5_K:
        return dot_q5_k(w, r, x)
    if qtype == Q4_0:
        return dot_q4_0(w, r, x)
    if qtype == Q4_1:
        return dot_q4_1(w, r, x)
    if qtype == Q5_0:
        return dot_q5_0(w, r, x)
    if qtype == Q5_1:
        return dot_q5_1(w, r, x)
    return np.float32(np.nan)  # unreachable: the loader rejects other types


@njit(error_model="numpy", cache=True)
def row_dequant(w, qtype, r, out):  # out f32[cols] = row r of W
    if qtype == Q8_0:
        dequant_q8_0(w, r, out)
    elif qtype == F16:
        dequant_f16(w, r, out)
    elif qtype == BF16:
        dequant_bf16(w, r, out)
    elif qtype == F32:
        dequant_f32(w, r, out)
    elif qtype == Q4_K:
        dequant_q4_k(w, r, out)
    elif qtype == Q6_K:
        dequant_q6_k(w, r, out)
    elif qtype == Q5_K:
        dequant_q5_k(w, r, out)
    elif qtype == Q4_0:
        dequant_q4_0(w, r, out)
    elif qtype == Q4_1:
        dequant_q4_1(w, r, out)
    elif qtype == Q5_0:
        dequant_q5_0(w, r, out)
    elif qtype == Q5_1:
        dequant_q5_1(w, r, out)
    else:
        out[:] = np.nan


# Below this many weight bytes a matrix-vector product runs on one thread: waking the other
# threads and meeting them at the barrier costs more than the rows (a tiny model, or a machine
# whose other core is busy, where a barrier can wait a whole scheduler slice).
PARALLEL_MIN_BYTES = 256 * 1024


EXACT = 256  # flag in a kernel code: f32 activations (the ggml types are all below 256)
PACKED8 = 512  # flag in a kernel code: a Q4_K matrix packed 8 rows at a time (repack.pack_q4_k8)
PACKED4 = 1024  # flag in a kernel code: a Q4_0 matrix packed 4 rows at a time (repack.pack_q4_0x4)
PACKED4X8 = 2048  # the same in 8-byte chunks, for smmla (repack.pack_q4_0_4x8)
PACKED8X8 = 16384  # a Q4_K matrix packed 8 rows at a time in 8-byte chunks, for smmla (repack.pack_q4_k_8x8)
# Variant flags in a kernel code (lfm2q/tuning.py picks them per matrix shape by measuring): the
# same bits either way, only the speed differs.
DECODE_ROWS = 4096  # decode row by row, not in the backend's row pairs / quads (AVX2, not 512-bit)
PREFILL_ROWS = 8192  # prefill row by row (group by group), not in 512-bit pairs / quads
ALL_KINDS = (True, True, True, True)  # matvec's default `kinds` (see kinds_for): every kernel


@njit(inline="always")
def activation_rounding(code):  # kernel code -> the actquant.ACT_* applied to x
    return ACT_F32 if code & EXACT else act_of(code & 255)


# The integer kernels come from one instruction set's backend, `simd` (kernels/isa/: AVX2 /
# AVX-512 on x86, NEON on aarch64, plain loops elsewhere), chosen once at import; nothing here
# names an instruction set. numba's cache is keyed by CPU, so a cached choice never reaches
# another machine. Its flags are globals, read at compile time.
SIMD_PREFILL = simd.INTEGER_PREFILL
SIMD_PACKS_Q4_K = simd.PACKS_Q4_K
SIMD_PACKS_Q4_K_8X8 = simd.PACKS_Q4_K_8X8  # (at most one of the two Q4_K layouts)
SIMD_PACKS_Q4_0 = simd.PACKS_Q4_0
SIMD_PACKS_Q4_0_4X8 = simd.PACKS_Q4_0_4X8  # (at most one of the two Q4_0 layouts)
# the packed Q4_0 kernels' activations: x's Q8_0 quants as they are (NEON), or with each block's
# sums of 4 after them (x86_avx512.q4_0_packed_x)
Q4_0_PACKED_X = simd.Q4_0_PACK_CHUNK == 16
Q8_0_DECODE_PAIRS = simd.Q8_0_DECODE_PAIRS
B32_DECODE_QUADS = simd.B32_DECODE_QUADS  # decode takes Q4_0 and Q5_0 rows four at a time
B32_DECODE_GROUPS = Q8_0_DECODE_PAIRS or B32_DECODE_QUADS  # (one global: numba drops its branch where False)
Q4_0_INTEGER = simd.Q4_0_INTEGER  # whether Q4_0 has an integer kernel worth its float twin
Q4_1_Q5_INTEGER = simd.Q4_1_Q5_INTEGER  # the same for Q4_1, Q5_0 and Q5_1


@njit(error_model="numpy", fastmath=False, cache=True)  # see isa/x86_avx2.py: no fastmath
def row_idot_k(w, qtype, r, xq, xd, bsum):  # K-quant row . x in Q8_K
    if qtype == Q4_K:
        return simd.q4_k_row(w[r], xq, xd, bsum)
    if qtype == Q6_K:
        return simd.q6_k_row(w[r], xq, xd, bsum)
    return simd.q5_k_row(w[r], xq, xd, bsum)


@njit(error_model="numpy", fastmath=False, cache=True)  # see isa/x86_avx2.py: no fastmath
def row_idot_b32(w, qtype, r, xq, xd):  # Q8_0, Q4_0 or Q5_0 row . x in Q8_0
    if qtype == Q8_0:
        return simd.q8_0_row(w[r], xq, xd)
    if qtype == Q5_0:
        return simd.q5_0_row(w[r], xq, xd)
    return simd.q4_0_row(w[r], xq, xd)


@njit(error_model="numpy", fastmath=False, cache=True)  # see isa/x86_avx2.py: no fastmath
def row_idot_b32_min(w, qtype, r, xq, xd, xs):  # Q4_1 or Q5_1 row . x in Q8_1 (xs: its block sums)
    if qtype == Q4_1:
        return simd.q4_1_row(w[r], xq, xd, xs)
    return simd.q5_1_row(w[r], xq, xd, xs)


@njit(inline="always")
def b32_integer(qtype):  # whether rows of this 32-block type multiply x in Q8_0 / Q8_1 integers
    if qtype == Q8_0:
        return True
    if qtype == Q4_0:
        return Q4_0_INTEGER
    return Q4_1_Q5_INTEGER and (qtype == Q5_0 or qtype == Q4_1 or qtype == Q5_1)


@njit(error_model="numpy", parallel=True, fastmath=True, cache=True)
def _matvec_parallel(w, qtype, x, out):
    for r in prange(w.shape[0]):
        prefetch_rows_ahead(w, r, r + 1)
        out[r] = row_dot(w, qtype, r, x)


@njit(error_model="numpy", fastmath=True, cache=True)
def _matvec_serial(w, qtype, x, out):
    for r in range(w.shape[0]):
        prefetch_rows_ahead(w, r, r + 1)
        out[r] = row_dot(w, qtype, r, x)


@njit(error_model="numpy", fastmath=False, cache=True)  # see isa/x86_avx2.py: no fastmath
def rows_idot_k(row, qtype, xq, xd, bsum, t):  # K-quant row . x[t + i], i < TOKENS
    if qtype == Q4_K:
        return simd.q4_k_rows(row, xq, xd, bsum, t)
    if qtype == Q6_K:
        return simd.q6_k_rows(row, xq, xd, bsum, t)
    return simd.q5_k_rows(row, xq, xd, bsum, t)


@njit(error_model="numpy", parallel=True, fastmath=True, cache=True)
def _imatvec_k_parallel(w, qtype, xq, xd, bsum, out):
    for r in prange(w.shape[0]):
        prefetch_rows_ahead(w, r, r + 1)
        out[r] = row_idot_k(w, qtype, r, xq, xd, bsum)


@njit(error_model="numpy", fastmath=True, cache=True)
def _imatvec_k_serial(w, qtype, xq, xd, bsum, out):
    for r in range(w.shape[0]):
        prefetch_rows_ahead(w, r, r + 1)
        out[r] = row_idot_k(w, qtype, r, xq, xd, bsum)


@njit(inline="always")
def decode_group(qtype, grouped):  # rows per call of decode's grouped kernels (1: row by row)
    if not grouped:
        return 1
    if qtype == Q8_0:
        return 2 if Q8_0_DECODE_PAIRS else 1
    return 4 if B32_DECODE_QUADS else 1


@njit(error_model="numpy", fastmath=False, cache=True)  # see isa/x86_avx2.py: no fastmath
def group_idot_b32(w, qtype, r, xq, xd, out):  # decode: out[r : r + decode_group(qtype, True)]
    if qtype == Q8_0:
        simd.q8_0_row2(w, r, xq, xd, out)
    elif qtype == Q5_0:
        simd.q5_0_row4(w, r, xq, xd, out)
    else:
        simd.q4_0_row4(w, r, xq, xd, out)


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatvec_b32_parallel(w, qtype, xq, xd, out, grouped=True):  # Q8_0 / Q4_0 / Q5_0 rows . x in Q8_0
    rows = w.shape[0]
    g = decode_group(qtype, grouped) if B32_DECODE_GROUPS else 1
    if B32_DECODE_GROUPS and g > 1:  # Q8_0 rows in pairs (x86_avx512.q8_0_row2), Q4_0 / Q5_0 in quads
        for task in prange(-(-rows // g)):  # (q4_0_row4): each row's kernel bits
            r0 = g * task
            prefetch_rows_ahead(w, r0, r0 + g)
            if r0 + g <= rows:
                group_idot_b32(w, qtype, r0, xq, xd, out)
            else:
                for r in range(r0, rows):
                    out[r] = row_idot_b32(w, qtype, r, xq, xd)
    else:
        for r in prange(rows):
            prefetch_rows_ahead(w, r, r + 1)
            out[r] = row_idot_b32(w, qtype, r, xq, xd)


@njit(error_model="numpy", fastmath=True, cache=True)
def _imatvec_b32_serial(w, qtype, xq, xd, out):
    for r in range(w.shape[0]):
        prefetch_rows_ahead(w, r, r + 1)
        out[r] = row_idot_b32(w, qtype, r, xq, xd)


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatvec_b32_min_parallel(w, qtype, xq, xd, xs, out):  # Q4_1 / Q5_1 rows . x in Q8_1
    for r in prange(w.shape[0]):
        prefetch_rows_ahead(w, r, r + 1)
        out[r] = row_idot_b32_min(w, qtype, r, xq, xd, xs)


@njit(error_model="numpy", fastmath=False, cache=True)
def _imatvec_b32_min_serial(w, qtype, xq, xd, xs, out):
    for r in range(w.shape[0]):
        prefetch_rows_ahead(w, r, r + 1)
        out[r] = row_idot_b32_min(w, qtype, r, xq, xd, xs)


@njit(error_model="numpy", cache=True)
def _sums32(bsum):  # Q8_K sums per 16 -> per 32 (int16[.., cols/32]), for the packed kernels
    out = np.empty(bsum.shape[:-1] + (bsum.shape[-1] // 2,), np.int16)
    b2 = bsum.reshape(-1, 2)
    o1 = out.reshape(-1)
    for i in range(o1.shape[0]):
        o1[i] = b2[i, 0] + b2[i, 1]
    return out


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatvec_packed_parallel(p, xq, xd, bs32, out):
    for gi in prange(p.shape[0]):
        prefetch_rows_ahead(p, gi, gi + 1)
        simd.q4_k_packed(p, gi, xq, xd, bs32, out)


@njit(error_model="numpy", fastmath=False, cache=True)
def _imatvec_packed_serial(p, xq, xd, bs32, out):
    for gi in range(p.shape[0]):
        prefetch_rows_ahead(p, gi, gi + 1)
        simd.q4_k_packed(p, gi, xq, xd, bs32, out)


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatvec_q4_k_8x8_parallel(p, xt, xd, bt, out):  # Q4_K groups in 8-byte chunks (PACKED8X8) . x in Q8_K
    for gi in prange(p.shape[0]):  # (xt, bt: its quants and sums per 32 paired with themselves)
        prefetch_rows_ahead(p, gi, gi + 1)
        simd.q4_k_8x8_packed(p, gi, xt, xd, bt, out)


@njit(error_model="numpy", fastmath=False, cache=True)
def _imatvec_q4_k_8x8_serial(p, xt, xd, bt, out):
    for gi in range(p.shape[0]):
        prefetch_rows_ahead(p, gi, gi + 1)
        simd.q4_k_8x8_packed(p, gi, xt, xd, bt, out)


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatvec_q4_0_packed_parallel(p, xq, xd, out):  # packed Q4_0 groups (PACKED4) . x in Q8_0
    for gi in prange(p.shape[0]):
        prefetch_rows_ahead(p, gi, gi + 1)
        simd.q4_0_packed(p, gi, xq, xd, out)


@njit(error_model="numpy", fastmath=False, cache=True)
def _imatvec_q4_0_packed_serial(p, xq, xd, out):
    for gi in range(p.shape[0]):
        prefetch_rows_ahead(p, gi, gi + 1)
        simd.q4_0_packed(p, gi, xq, xd, out)


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatvec_q4_0_4x8_parallel(p, xt, xd, out):  # packed Q4_0 groups (PACKED4X8) . x in Q8_0 (xt: twin chunks)
    for gi in prange(p.shape[0]):
        prefetch_rows_ahead(p, gi, gi + 1)
        simd.q4_0_4x8_packed(p, gi, xt, xd, out)


@njit(error_model="numpy", fastmath=False, cache=True)
def _imatvec_q4_0_4x8_serial(p, xt, xd, out):
    for gi in range(p.shape[0]):
        prefetch_rows_ahead(p, gi, gi + 1)
        simd.q4_0_4x8_packed(p, gi, xt, xd, out)


@njit(error_model="numpy", fastmath=True, nogil=True, cache=True)
def matvec(w, code, x, out, kinds=ALL_KINDS):  # W uint8[rows, row_bytes], x f32[cols] -> out f32[rows]
    """kinds: which kernels to compile, `kinds_for` the model's kernel codes (default: all).
    numba drops a branch on an argument that is `None` before typing it, so a kernel the
    opened file never uses is never compiled (a third of a first run's compile was the float
    rows of eleven types in a file that used none). A code whose kernel `kinds` leaves out
    writes NaN."""
    _matvec(w, code, x, out, kinds[0], kinds[1], kinds[2], kinds[3])


@njit(error_model="numpy", fastmath=True, cache=True)
def _matvec(w, code, x, out, k_rows, b32_rows, b32_min_rows, float_rows):
    qtype = code & 255
    act = activation_rounding(code)
    serial = w.shape[0] * w.shape[1] < PARALLEL_MIN_BYTES
    n = x.shape[0]
    if k_rows is not None and act == ACT_Q8_K:
        xq = np.empty(n, np.int8)
        xd = np.empty(n // QK_K, np.float32)
        bsum = np.empty(n // 16, np.int16)
        quantize_q8_k(x, xq, xd, bsum)
        if SIMD_PACKS_Q4_K and code & PACKED8:  # (as PACKED4 below)
            bs32 = _sums32(bsum)
            if serial:
                _imatvec_packed_serial(w, xq, xd, bs32, out)
            else:
                _imatvec_packed_parallel(w, xq, xd, bs32, out)
        elif SIMD_PACKS_Q4_K_8X8 and code & PACKED8X8:
            xt = np.empty(2 * n, np.int8)
            twin_chunks_q8_0(xq, xt)
            bt = np.empty(n // 8, np.int8)
            twin_sums_q8_k(_sums32(bsum), bt)
            if serial:
                _imatvec_q4_k_8x8_serial(w, xt, xd, bt, out)
            else:
                _imatvec_q4_k_8x8_parallel(w, xt, xd, bt, out)
        elif serial:
            _imatvec_k_serial(w, qtype, xq, xd, bsum, out)
        else:
            _imatvec_k_parallel(w, qtype, xq, xd, bsum, out)
    elif b32_min_rows is not None and act == ACT_Q8_0 and b32_integer(qtype) and (qtype == Q4_1 or qtype == Q5_1):
        xq = np.empty(n, np.int8)
        xd = np.empty(n // QK8_0, np.float32)
        xs = np.empty(n // QK8_0, np.float32)
        quantize_q8_1(x, xq, xd, xs)
        if serial:
            _imatvec_b32_min_serial(w, qtype, xq, xd, xs, out)
        else:
            _imatvec_b32_min_parallel(w, qtype, xq, xd, xs, out)
    elif b32_rows is not None and act == ACT_Q8_0 and b32_integer(qtype):
        xq = np.empty(n, np.int8)
        xd = np.empty(n // QK8_0, np.float32)
        quantize_q8_0(x, xq, xd)
        if SIMD_PACKS_Q4_0 and code & PACKED4:  # (a False global: numba drops the branch untyped)
            xk = xq
            if Q4_0_PACKED_X:
                xk = np.empty(2 * n, np.int8)
                simd.q4_0_packed_x(xq, xk)
            if serial:
                _imatvec_q4_0_packed_serial(w, xk, xd, out)
            else:
                _imatvec_q4_0_packed_parallel(w, xk, xd, out)
        elif SIMD_PACKS_Q4_0_4X8 and code & PACKED4X8:
            xt = np.empty(2 * n, np.int8)
            twin_chunks_q8_0(xq, xt)
            if serial:
                _imatvec_q4_0_4x8_serial(w, xt, xd, out)
            else:
                _imatvec_q4_0_4x8_parallel(w, xt, xd, out)
        elif serial:
            _imatvec_b32_serial(w, qtype, xq, xd, out)
        else:
            _imatvec_b32_parallel(w, qtype, xq, xd, out, code & DECODE_ROWS == 0)
    elif float_rows is not None:
        _float_matvec(w, qtype, act, x, out, serial)
    else:
        out[:] = np.nan


@njit(error_model="numpy", fastmath=True, cache=True)
def _float_matvec(w, qtype, act, x, out, serial):  # matvec's float kernels (every type's)
    xr = np.empty(x.shape[0], np.float32)
    if act == ACT_F32:
        xr[:] = x
    else:  # the float form of the rounding, then the f32 kernel
        round_activations(x, act, xr)
    if serial:
        _matvec_serial(w, qtype, xr, out)
    else:
        _matvec_parallel(w, qtype, xr, out)


def integer_decode(code: int) -> bool:
    """Whether matvec multiplies this kernel code through integer kernels, never float rows
    (b32_integer for the 32-block types). (Plain Python, as the rest down to `kinds_for`.)"""
    qtype = code & 255
    return (not code & EXACT
            and (qtype in (Q4_K, Q5_K, Q6_K, Q8_0) or (qtype == Q4_0 and Q4_0_INTEGER)
                 or (qtype in (Q4_1, Q5_0, Q5_1) and Q4_1_Q5_INTEGER)))


def kinds_for(codes) -> tuple:
    """matvec's `kinds` for a model whose matrices have these kernel codes: (K-quant rows,
    32-block integer rows against Q8_0, the same against Q8_1 (Q4_1, Q5_1), float rows), each
    True where a code needs it and None where none does (then numba never compiles it). The
    float rows go together: one switch over the types inside a parallel loop (flags per type
    through numba's parallel lowering failed)."""
    codes = list(codes)
    ints = [c & 255 for c in codes if integer_decode(c)]
    k_rows = any(t in (Q4_K, Q5_K, Q6_K) for t in ints)
    b32_rows = any(t in (Q8_0, Q4_0, Q5_0) for t in ints)
    b32_min_rows = any(t in (Q4_1, Q5_1) for t in ints)
    float_rows = len(ints) < len(codes)
    return tuple(True if need else None for need in (k_rows, b32_rows, b32_min_rows, float_rows))


# Prefill with the integer kernels (where the backend has them): each weight row meets TOKENS prompt positions
# per kernel call, so its bytes are loaded and unpacked once for all of them; positions go in
# blocks of TOKEN_BLOCK, whose 8-bit activations stay in L2 while every row passes by. Each
# position is summed exactly as decode sums it: prefill and decode give the same bits.
TOKENS = simd_tokens
TOKEN_BLOCK = 64


@njit(error_model="numpy", parallel=True, cache=True)
def _quantize_rows(x, kquant):  # x f32[n, cols] -> (xq, xd, bsum): Q8_K rows, or Q8_0 rows
    n, cols = x.shape
    per = QK_K if kquant else QK8_0
    xq = np.empty((n, cols), np.int8)
    xd = np.empty((n, cols // per), np.float32)
    bsum = np.empty((n, cols // 16), np.int16)
    # ~1.5 ns an element: serial, it was a fifth of a 512-row Q4_K product on one thread
    for t in prange(n):
        if kquant:
            quantize_q8_k(x[t], xq[t], xd[t], bsum[t])
        else:
            quantize_q8_0(x[t], xq[t], xd[t])
    return xq, xd, bsum


@njit(error_model="numpy", parallel=True, cache=True)
def _q8_1_sum_rows(x, xq):  # Q8_1's block sums of each row of x (in Q8_0: xq), f32[n, cols/32]
    xs = np.empty((x.shape[0], x.shape[1] // QK8_0), np.float32)
    for t in prange(x.shape[0]):
        q8_1_sums(x[t], xq[t], xs[t])
    return xs


@njit(error_model="numpy", fastmath=False, cache=True)  # see isa/x86_avx2.py: no fastmath
def rows_idot_b32(row, qtype, xq, xd, xs, t):  # 32-block row . x[t + i], i < TOKENS
    if qtype == Q8_0:
        return simd.q8_0_rows(row, xq, xd, t)
    if qtype == Q5_0:
        return simd.q5_0_rows(row, xq, xd, t)
    if qtype == Q4_1:
        return simd.q4_1_rows(row, xq, xd, xs, t)
    if qtype == Q5_1:
        return simd.q5_1_rows(row, xq, xd, xs, t)
    return simd.q4_0_rows(row, xq, xd, t)


@njit(error_model="numpy", fastmath=False, cache=True)  # see isa/x86_avx2.py: no fastmath
def rows4_idot_b32(w, qtype, r, xq, xd, xs, t, out):  # out[t + i, r : r + 4], i < QUAD_TOKENS
    if qtype == Q8_0:
        simd.q8_0_rows4(w, r, xq, xd, t, out)
    elif qtype == Q4_0:
        simd.q4_0_rows4(w, r, xq, xd, t, out)
    elif qtype == Q5_0:
        simd.q5_0_rows4(w, r, xq, xd, t, out)
    elif qtype == Q4_1:
        simd.q4_1_rows4(w, r, xq, xd, xs, t, out)
    else:
        simd.q5_1_rows4(w, r, xq, xd, xs, t, out)


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatmul(w, qtype, x, out, wide=True):  # W uint8[rows, row_bytes], x f32[n, cols] -> out f32[n, rows]
    n = x.shape[0]
    kquant = qtype == Q4_K or qtype == Q5_K or qtype == Q6_K
    with_min = qtype == Q4_1 or qtype == Q5_1  # x in Q8_1: Q8_0 plus block sums
    xq, xd, bsum = _quantize_rows(x, kquant)
    xs = _q8_1_sum_rows(x, xq) if with_min else np.empty((n, 0), np.float32)
    rows = w.shape[0]
    for t0 in range(0, n, TOKEN_BLOCK):
        t1 = min(n, t0 + TOKEN_BLOCK)
        # A task is four rows: a Q8_0, Q4_0, Q5_0, Q4_1 or Q5_1 quad runs as one against 8 positions
        # at a time, Q6_K and Q8_0 pairs against TOKENS (512-bit with AVX-512 VNNI, isa/x86_avx512.py), the rest row
        # by row. The same bits either way.
        for task in prange(-(-rows // 4)):
            r0 = 4 * task
            r1 = min(r0 + 4, rows)
            t = t0
            if wide and r1 - r0 == 4 and (qtype == Q8_0 or qtype == Q4_0 or qtype == Q5_0 or with_min):
                while t + simd.QUAD_TOKENS <= t1:
                    rows4_idot_b32(w, qtype, r0, xq, xd, xs, t, out)
                    t += simd.QUAD_TOKENS
            while t + TOKENS <= t1:
                r = r0
                while wide and r + 2 <= r1 and qtype in (Q6_K, Q8_0):
                    if qtype == Q6_K:
                        simd.q6_k_rows2(w, r, xq, xd, bsum, t, out)
                    else:
                        simd.q8_0_rows2(w, r, xq, xd, t, out)
                    r += 2
                for rr in range(r, r1):
                    if kquant:
                        res = rows_idot_k(w[rr], qtype, xq, xd, bsum, t)
                    else:
                        res = rows_idot_b32(w[rr], qtype, xq, xd, xs, t)
                    for i in range(TOKENS):
                        out[t + i, rr] = res[i]
                t += TOKENS
            while t < t1:
                for r in range(r0, r1):
                    if kquant:
                        out[t, r] = row_idot_k(w, qtype, r, xq[t], xd[t], bsum[t])
                    elif with_min:
                        out[t, r] = row_idot_b32_min(w, qtype, r, xq[t], xd[t], xs[t])
                    else:
                        out[t, r] = row_idot_b32(w, qtype, r, xq[t], xd[t])
                t += 1


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatmul_packed(p, x, out, wide=True):  # _imatmul for a packed Q4_K matrix (PACKED8)
    n = x.shape[0]
    xq, xd, bsum = _quantize_rows(x, True)
    bs32 = _sums32(bsum)
    # A task is two groups, 16 rows: one 512-bit kernel call where the CPU has AVX-512 VNNI
    # (isa/x86_avx512.py: 2.2-2.8x the AVX2 kernel's speed), else the AVX2 kernel twice.
    groups = p.shape[0]
    for task in prange(-(-groups // 2)):
        g0 = 2 * task
        t = 0
        while t + TOKENS <= n:
            if wide and g0 + 1 < groups:
                simd.q4_k_packed16_rows(p, g0, xq, xd, bs32, t, out)
            else:
                for gi in range(g0, min(g0 + 2, groups)):
                    simd.q4_k_packed_rows(p, gi, xq, xd, bs32, t, out)
            t += TOKENS
        while t < n:
            for gi in range(g0, min(g0 + 2, groups)):
                simd.q4_k_packed(p, gi, xq[t], xd[t], bs32[t], out[t])
            t += 1


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatmul_q4_0_packed(p, x, out):  # _imatmul for a packed Q4_0 matrix (PACKED4)
    n = x.shape[0]
    xq, xd, _ = _quantize_rows(x, False)
    if Q4_0_PACKED_X:
        xk = np.empty((n, 2 * x.shape[1]), np.int8)
        for t in range(n):
            simd.q4_0_packed_x(xq[t], xk[t])
        xq = xk
    for gi in prange(p.shape[0]):  # a task is one group of 4 rows, TOKENS positions a call
        t = 0
        while t + TOKENS <= n:
            simd.q4_0_packed_rows(p, gi, xq, xd, t, out)
            t += TOKENS
        while t < n:
            simd.q4_0_packed(p, gi, xq[t], xd[t], out[t])
            t += 1


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatmul_q4_0_4x8(p, x, out):  # _imatmul for a Q4_0 matrix packed for smmla (PACKED4X8)
    n = x.shape[0]
    xq, xd, _ = _quantize_rows(x, False)
    xi, xdi = pair_positions_q8_0(xq, xd)  # positions in pairs, once for every group
    n4 = n - n % TOKENS
    xt = np.empty((n - n4, 2 * x.shape[1]), np.int8)  # the last n % TOKENS: decode's kernel (the same bits)
    for i in range(n - n4):
        twin_chunks_q8_0(xq[n4 + i], xt[i])
    for gi in prange(p.shape[0]):  # a task is one group of 4 rows, TOKENS positions a call
        for t in range(0, n4, TOKENS):
            simd.q4_0_4x8_mmla_rows(p, gi, xi, xdi, t, out)
        for t in range(n4, n):
            simd.q4_0_4x8_packed(p, gi, xt[t - n4], xd[t], out[t])


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)  # see isa/x86_avx2.py
def _imatmul_q4_k_8x8(p, x, out):  # _imatmul for a Q4_K matrix packed for smmla (PACKED8X8)
    n = x.shape[0]
    xq, xd, bsum = _quantize_rows(x, True)
    bs32 = _sums32(bsum)
    xi, xdi, bsi = pair_positions_q8_k(xq, xd, bs32)  # positions in pairs, once for every group
    n8 = n - n % (2 * TOKENS)  # 8 positions a call (q4_k_8x8_mmla_rows8), then 4, then the
    n4 = n - n % TOKENS  # last n % 4 through decode's kernel (the same bits)
    xt = np.empty((n - n4, 2 * x.shape[1]), np.int8)
    bt = np.empty((n - n4, x.shape[1] // 8), np.int8)
    for i in range(n - n4):
        twin_chunks_q8_0(xq[n4 + i], xt[i])
        twin_sums_q8_k(bs32[n4 + i], bt[i])
    for gi in prange(p.shape[0]):  # a task is one group of 8 rows
        for t in range(0, n8, 2 * TOKENS):
            simd.q4_k_8x8_mmla_rows8(p, gi, xi, xdi, bsi, t, out)
        for t in range(n8, n4, TOKENS):
            simd.q4_k_8x8_mmla_rows(p, gi, xi, xdi, bsi, t, out)
        for t in range(n4, n):
            simd.q4_k_8x8_packed(p, gi, xt[t - n4], xd[t], bt[t - n4], out[t])


@njit(error_model="numpy", nogil=True, cache=True)
def _dequant_range(w, qtype, r0, out):  # out f32[n, cols] = W[r0 : r0+n]; runs without the GIL
    for i in range(out.shape[0]):
        row_dequant(w, qtype, r0 + i, out[i])


TILE_BYTES = 256 * 1024  # a dequantized tile stays in a core's L2 next to x and the output


def _matmul_rows(w, qtype, x, out, start, stop, tile):
    buf = np.empty((tile, x.shape[1]), np.float32)
    res = np.empty((x.shape[0], tile), np.float32)
    for r0 in range(start, stop, tile):
        n = min(tile, stop - r0)
        _dequant_range(w, qtype, r0, buf[:n])
        np.matmul(x, buf[:n].T, out=res[:, :n])
        out[:, r0:r0 + n] = res[:, :n]


_pool: ThreadPoolExecutor | None = None


def integer_prefill(code: int) -> bool:
    """Whether matmul multiplies this kernel code through the integer kernels (_imatmul).
    (Plain Python: called at load time, before any numba function has been loaded.)"""
    return SIMD_PREFILL and integer_decode(code)  # prefill runs decode's integer kernels


def packable(code: int, rows: int) -> bool:
    """Whether a matrix of this kernel code is packed at load time (repack.packed): Q4_K or
    Q4_0 where the backend packs that type, f32 activations not asked for, whole groups of rows
    (8 for Q4_K, 4 for Q4_0)."""
    return (((SIMD_PACKS_Q4_K or SIMD_PACKS_Q4_K_8X8) and code == Q4_K and rows % GROUP == 0)
            or ((SIMD_PACKS_Q4_0 or SIMD_PACKS_Q4_0_4X8) and code == Q4_0 and rows % Q4_0_GROUP == 0))


def packed_code(code: int) -> int:
    """The kernel code of a packable matrix's packed copy."""
    if code & 255 == Q4_0:
        return code | (PACKED4X8 if SIMD_PACKS_Q4_0_4X8 else PACKED4)
    return code | (PACKED8X8 if SIMD_PACKS_Q4_K_8X8 else PACKED8)


def pack(w: np.ndarray, code: int, out: np.ndarray | None = None) -> np.ndarray:
    """The packed copy of a packable matrix w in the layout of its packed kernel code (packed_code)."""
    if code & (PACKED4X8 | PACKED8X8):
        chunk = 8
    else:
        chunk = simd.Q4_0_PACK_CHUNK if code & 255 == Q4_0 else 4
    return packed(w, code & 255, out, chunk=chunk)


def matmul(w: np.ndarray, code: int, x: np.ndarray, out: np.ndarray) -> None:
    """out[n, rows] = x[n, cols] @ W.T over numba.get_num_threads() workers.

    The activations are rounded first (the integer form for _imatmul, else the float form),
    so prefill computes what decode's integer kernels compute. Call it with BLAS limited to
    one thread (`single_threaded_blas`).
    """
    global _pool
    qtype = code & 255
    if code & PACKED8:
        _imatmul_packed(w, x, out, code & PREFILL_ROWS == 0)
        return
    if code & PACKED4:
        _imatmul_q4_0_packed(w, x, out)
        return
    if code & PACKED4X8:
        _imatmul_q4_0_4x8(w, x, out)
        return
    if code & PACKED8X8:
        _imatmul_q4_k_8x8(w, x, out)
        return
    if integer_prefill(code):
        _imatmul(w, qtype, x, out, code & PREFILL_ROWS == 0)
        return
    act = activation_rounding(code)
    if act != ACT_F32:
        xr = np.empty_like(x)
        round_activation_rows(x, act, xr)
        x = xr
    rows, cols = out.shape[1], x.shape[1]
    tile = max(16, min(rows, TILE_BYTES // (4 * cols)))
    n_tiles = -(-rows // tile)
    workers = min(numba.get_num_threads(), n_tiles)
    if workers <= 1:
        _matmul_rows(w, qtype, x, out, 0, rows, tile)
        return
    if _pool is None or _pool._max_workers < workers:
        _pool = ThreadPoolExecutor(max_workers=numba.config.NUMBA_NUM_THREADS,
                                   thread_name_prefix="lfm2q")
    per = -(-n_tiles // workers) * tile
    jobs = [_pool.submit(_matmul_rows, w, qtype, x, out, r, min(rows, r + per), tile)
            for r in range(0, rows, per)]
    for job in jobs:
        job.result()


def kernel_name(qtype: int) -> str:
    """Which kernel decode uses for weights of this type on this CPU, in words (`lfm2q info`)."""
    name = simd.NAME
    if qtype == Q4_K and SIMD_PACKS_Q4_K:
        return f"integer, 8-row packed groups ({name})"
    if qtype == Q4_K and SIMD_PACKS_Q4_K_8X8:
        return f"integer, 8-row packed groups, 8-byte chunks: smmla prompts, sdot decode ({name})"
    if qtype in (Q4_K, Q5_K, Q6_K):
        return f"integer rows x Q8_K ({name})"
    if qtype == Q4_0 and SIMD_PACKS_Q4_0:
        return f"integer, 4-row packed groups x Q8_0 ({name})"
    if qtype == Q4_0 and SIMD_PACKS_Q4_0_4X8:
        return f"integer, 4-row packed groups x Q8_0, 8-byte chunks: smmla prompts, sdot decode ({name})"
    if qtype == Q8_0 or (qtype == Q4_0 and Q4_0_INTEGER) or (qtype == Q5_0 and Q4_1_Q5_INTEGER):
        return f"integer rows x Q8_0 ({name})" + (", row pairs" if qtype == Q8_0 and Q8_0_DECODE_PAIRS else "")
    if qtype in (Q4_1, Q5_1) and Q4_1_Q5_INTEGER:
        return f"integer rows x Q8_1 ({name})"
    if qtype in (Q4_0, Q4_1, Q5_0, Q5_1):
        return "float rows x Q8_0-rounded activations"
    return "float rows"


def single_threaded_blas():
    """A context in which NumPy's BLAS uses one thread (our workers are the parallelism)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="blas")


_NUMPY_DEQUANT = {F32: dequantize_f32_np, F16: dequantize_f16_np,
                  BF16: dequantize_bf16_np, Q8_0: dequantize_q8_0_np,
                  Q4_0: dequantize_q4_0_np, Q4_1: dequantize_q4_1_np, Q5_0: dequantize_q5_0_np,
                  Q5_1: dequantize_q5_1_np, Q4_K: dequantize_q4_k_np, Q5_K: dequantize_q5_k_np,
                  Q6_K: dequantize_q6_k_np}


def dequantize(w: np.ndarray, qtype: int) -> np.ndarray:
    """NumPy oracle: the whole matrix as f32[rows, cols]. For tests and tools, never decode."""
    try:
        return _NUMPY_DEQUANT[qtype](w)
    except KeyError:
        raise ValueError(f"no NumPy dequantizer for {type_name(qtype)}") from None


def activations_np(x: np.ndarray, code: int) -> np.ndarray:
    """NumPy oracle: x as the kernels given `code` multiply it (f32 with EXACT, else rounded
    as llama.cpp rounds it for the weight type). For tests and tools."""
    return x if code & EXACT else round_activations_np(x, act_of(code & 255))
