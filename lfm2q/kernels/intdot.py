"""Integer dot products of quantized weight rows with 8-bit activations (llama.cpp's
vec_dot_<type>_q8_<K|0|1>): the decode kernels for Q4_K, Q5_K, Q6_K (x in Q8_K), Q8_0, Q4_0
and Q5_0 (x in Q8_0), Q4_1 and Q5_1 (x in Q8_1: Q8_0 plus fp16 block sums, which carry the
min term m * sum(x)). Backends whose flags say so use them; elsewhere these types multiply the
rounded-float form of x with their f32 kernels. Activations come from kernels/actquant.py;
block layouts are in kquants.py, q8_0.py and q4_0.py.

Each sub-block's sum of q_w * q_x is exact in int32, then scaled in f32 once per block — the
same numbers llama.cpp computes, up to float summation order. The same products with
dequantized weights and rounded-float activations (actquant.round_activations) are the
oracle these are tested against.

Why the I32(...) around every step: numba types integer arithmetic as int64, and LLVM then
vectorizes with 64-bit lanes (4 per AVX2 register, no 64-bit multiply). Truncating each
intermediate to int32 lets LLVM narrow the whole chain to 32-bit lanes over 16-bit products,
which it turns into vpmaddwd on x86 (measured: 2x the f32 dequantize-and-dot kernel).

_opaque: Q8_0's inner loop counts to a block length read from the arrays' shapes, not to a
literal 32. With the literal, LLVM unrolls the loop completely before its vectorizer runs and
the unrolled single chain stays scalar (1.7 G weights/s instead of 4.4). The K-quant loops
carry two or four chains, which the unrolled form vectorizes well; there the literal is
faster (Q4_K 6.2 against 4.1 G weights/s; measured in one process, one thread).
"""
import numpy as np
from numba import njit

from .kquants import Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K, _f16, _scale_min
from .q4_0 import Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES
from .q8_0 import BLOCK_BYTES as Q8_0_BYTES

I32 = np.int32
M4, S4 = np.uint8(15), np.uint8(4)


@njit(error_model="numpy", inline="always")
def _bsum32(bsum, b, j):  # sum of x's quants over sub-block j (32 elements) of super-block b
    return np.int32(bsum[b * 16 + 2 * j]) + np.int32(bsum[b * 16 + 2 * j + 1])


@njit(error_model="numpy", fastmath=True, cache=True)
def idot_q4_k(w, r, xq, xd, bsum):  # w uint8[rows, cols/256*144]; x as Q8_K -> f32
    row = w[r]
    acc = np.float32(0.0)
    for b in range(row.shape[0] // Q4_K_BYTES):
        o = b * Q4_K_BYTES
        isum = 0
        msum = 0
        for c in range(4):
            sc1, m1 = _scale_min(row, o + 4, 2 * c)
            sc2, m2 = _scale_min(row, o + 4, 2 * c + 1)
            q = o + 16 + 32 * c
            xo = b * QK_K + 64 * c
            s1 = I32(0)
            s2 = I32(0)
            for l in range(32):
                v = row[q + l]
                s1 = I32(s1 + I32(I32(v & M4) * I32(xq[xo + l])))
                s2 = I32(s2 + I32(I32(v >> S4) * I32(xq[xo + 32 + l])))
            isum += sc1 * s1 + sc2 * s2
            msum += m1 * _bsum32(bsum, b, 2 * c) + m2 * _bsum32(bsum, b, 2 * c + 1)
        acc += xd[b] * (_f16(row, o) * np.float32(isum) - _f16(row, o + 2) * np.float32(msum))
    return acc


@njit(error_model="numpy", fastmath=True, cache=True)
def idot_q5_k(w, r, xq, xd, bsum):  # w uint8[rows, cols/256*176]; x as Q8_K
    row = w[r]
    acc = np.float32(0.0)
    for b in range(row.shape[0] // Q5_K_BYTES):
        o = b * Q5_K_BYTES
        isum = 0
        msum = 0
        for c in range(4):
            sc1, m1 = _scale_min(row, o + 4, 2 * c)
            sc2, m2 = _scale_min(row, o + 4, 2 * c + 1)
            q = o + 48 + 32 * c
            xo = b * QK_K + 64 * c
            sh = np.uint8(2 * c)
            s1 = I32(0)
            s2 = I32(0)
            for l in range(32):
                v = row[q + l]
                h = np.uint8(row[o + 16 + l] >> sh)
                lo = I32(I32(v & M4) | I32(I32(h & np.uint8(1)) << 4))
                hi = I32(I32(v >> S4) | I32(I32(h & np.uint8(2)) << 3))
                s1 = I32(s1 + I32(lo * I32(xq[xo + l])))
                s2 = I32(s2 + I32(hi * I32(xq[xo + 32 + l])))
            isum += sc1 * s1 + sc2 * s2
            msum += m1 * _bsum32(bsum, b, 2 * c) + m2 * _bsum32(bsum, b, 2 * c + 1)
        acc += xd[b] * (_f16(row, o) * np.float32(isum) - _f16(row, o + 2) * np.float32(msum))
    return acc


@njit(error_model="numpy", fastmath=True, cache=True)
def idot_q6_k(w, r, xq, xd, bsum):  # w uint8[rows, cols/256*210]; x as Q8_K (bsum unused)
    row = w[r]
    acc = np.float32(0.0)
    for b in range(row.shape[0] // Q6_K_BYTES):
        o = b * Q6_K_BYTES
        isum = 0
        for h in range(2):
            ql = o + 64 * h
            qh = o + 128 + 32 * h
            sc = o + 192 + 8 * h
            xo = b * QK_K + 128 * h
            for g in range(2):  # elements 16g..16g+15 of each quarter share a scale
                s1 = I32(0)
                s2 = I32(0)
                s3 = I32(0)
                s4 = I32(0)
                for k in range(16):
                    l = 16 * g + k
                    a = I32(row[ql + l])
                    c = I32(row[ql + l + 32])
                    hb = I32(row[qh + l])
                    q1 = I32(I32(I32(a & 15) | I32(I32(hb & 3) << 4)) - 32)
                    q2 = I32(I32(I32(c & 15) | I32(I32(hb & 12) << 2)) - 32)
                    q3 = I32(I32(I32(a >> 4) | I32(hb & 48)) - 32)
                    q4 = I32(I32(I32(c >> 4) | I32(I32(hb & 192) >> 2)) - 32)
                    s1 = I32(s1 + I32(q1 * I32(xq[xo + l])))
                    s2 = I32(s2 + I32(q2 * I32(xq[xo + 32 + l])))
                    s3 = I32(s3 + I32(q3 * I32(xq[xo + 64 + l])))
                    s4 = I32(s4 + I32(q4 * I32(xq[xo + 96 + l])))
                isum += (np.int64(np.int8(row[sc + g])) * s1 + np.int64(np.int8(row[sc + g + 2])) * s2
                         + np.int64(np.int8(row[sc + g + 4])) * s3 + np.int64(np.int8(row[sc + g + 6])) * s4)
        acc += xd[b] * (_f16(row, o + 208) * np.float32(isum))
    return acc


@njit(error_model="numpy", fastmath=True, cache=True)
def idot_q8_0(w, r, xq, xd):  # w uint8[rows, cols/32*34]; x as Q8_0 (xd = its fp16 scales)
    row = w[r]
    acc = np.float32(0.0)
    n32 = xq.shape[0] // xd.shape[0]  # 32, see _opaque
    for b in range(row.shape[0] // Q8_0_BYTES):
        o = b * Q8_0_BYTES
        xo = b * 32
        s = I32(0)
        for j in range(n32):
            s = I32(s + I32(I32(np.int8(row[o + 2 + j])) * I32(xq[xo + j])))
        acc += (_f16(row, o) * xd[b]) * np.float32(s)
    return acc


@njit(error_model="numpy", fastmath=True, cache=True)
def idot_q4_0(w, r, xq, xd):  # w uint8[rows, cols/32*18]; x as Q8_0 -> f32 (ggml_vec_dot_q4_0_q8_0)
    row = w[r]
    acc = np.float32(0.0)
    n16 = xq.shape[0] // xd.shape[0] // 2  # 16, see _opaque
    for b in range(row.shape[0] // Q4_0_BYTES):
        o = b * Q4_0_BYTES
        xo = b * 32
        s = I32(0)
        for j in range(n16):
            v = row[o + 2 + j]
            s = I32(s + I32(I32(I32(v & M4) - 8) * I32(xq[xo + j])))
            s = I32(s + I32(I32(I32(v >> S4) - 8) * I32(xq[xo + 16 + j])))
        acc += (_f16(row, o) * xd[b]) * np.float32(s)
    return acc


@njit(error_model="numpy", inline="always")
def _q5_high(row, qh, j):  # Q5_0 / Q5_1: bit j of the u32 at byte qh, as 16 or 0
    return I32(I32(I32(row[qh + (j >> 3)] >> np.uint8(j & 7)) & 1) << 4)


@njit(error_model="numpy", fastmath=True, cache=True)
def idot_q5_0(w, r, xq, xd):  # w uint8[rows, cols/32*22]; x as Q8_0 (ggml_vec_dot_q5_0_q8_0)
    row = w[r]
    acc = np.float32(0.0)
    for b in range(row.shape[0] // Q5_0_BYTES):
        o = b * Q5_0_BYTES
        xo = b * 32
        s = I32(0)
        for j in range(16):
            v = row[o + 6 + j]
            lo = I32(I32(I32(v & M4) | _q5_high(row, o + 2, j)) - 16)
            hi = I32(I32(I32(v >> S4) | _q5_high(row, o + 2, j + 16)) - 16)
            s = I32(s + I32(lo * I32(xq[xo + j])))
            s = I32(s + I32(hi * I32(xq[xo + 16 + j])))
        acc += (_f16(row, o) * xd[b]) * np.float32(s)
    return acc


@njit(error_model="numpy", fastmath=True, cache=True)
def idot_q4_1(w, r, xq, xd, xs):  # w uint8[rows, cols/32*20]; x as Q8_1 (ggml_vec_dot_q4_1_q8_1)
    row = w[r]
    acc = np.float32(0.0)
    summs = np.float32(0.0)  # sum of m * s: the min times x's block sums (actquant.quantize_q8_1)
    n16 = xq.shape[0] // xd.shape[0] // 2  # 16, see _opaque
    for b in range(row.shape[0] // Q4_1_BYTES):
        o = b * Q4_1_BYTES
        xo = b * 32
        s = I32(0)
        for j in range(n16):
            v = row[o + 4 + j]
            s = I32(s + I32(I32(v & M4) * I32(xq[xo + j])))
            s = I32(s + I32(I32(v >> S4) * I32(xq[xo + 16 + j])))
        acc += (_f16(row, o) * xd[b]) * np.float32(s)
        summs += _f16(row, o + 2) * xs[b]
    return acc + summs


@njit(error_model="numpy", fastmath=True, cache=True)
def idot_q5_1(w, r, xq, xd, xs):  # w uint8[rows, cols/32*24]; x as Q8_1 (ggml_vec_dot_q5_1_q8_1)
    row = w[r]
    acc = np.float32(0.0)
    summs = np.float32(0.0)
    for b in range(row.shape[0] // Q5_1_BYTES):
        o = b * Q5_1_BYTES
        xo = b * 32
        s = I32(0)
        for j in range(16):
            v = row[o + 8 + j]
            lo = I32(I32(v & M4) | _q5_high(row, o + 4, j))
            hi = I32(I32(v >> S4) | _q5_high(row, o + 4, j + 16))
            s = I32(s + I32(lo * I32(xq[xo + j])))
            s = I32(s + I32(hi * I32(xq[xo + 16 + j])))
        acc += (_f16(row, o) * xd[b]) * np.float32(s)
        summs += _f16(row, o + 2) * xs[b]
    return acc + summs
