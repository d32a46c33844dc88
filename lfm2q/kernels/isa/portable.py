"""The integer kernels' interface in plain loops (kernels/intdot.py's), for any CPU.

Every instruction set's backend (x86.py, arm.py) offers these same functions, so that
kernels/dispatch.py names no instruction set: it calls `simd.<kernel>` and the selection in
isa/__init__.py decides, once, which module `simd` is. This one is the fallback where no SIMD
backend applies (an x86 without AVX2, RISC-V, ...) and the reference the others are tested
against: every function here computes the exact int32 sums of intdot.py per sub-block.

The multi-row and packed forms are the same row products in loops; they exist so dispatch can
call them unconditionally (numba compiles every branch it sees, whatever the CPU).
"""
import numpy as np
from numba import njit

from ..intdot import idot_q4_0, idot_q4_1, idot_q4_k, idot_q5_0, idot_q5_1, idot_q5_k, idot_q6_k, idot_q8_0
from ..kquants import QK_K, _f16
from ..repack import (GROUP, K8_MN, K8_QS, K8_SC, P_BYTES, P_D, P_DMIN, P_MN, P_QS, P_SC, Q4_0_GROUP,
                      Q4_0_P_BYTES, Q4_0_P_D)
from .llvm_ir import TOKENS

NAME = "portable loops"
WIDE_FORMS = False  # the pair / quad forms are the row kernels in a loop: nothing for tuning.py to pick
INTEGER_PREFILL = False  # BLAS over dequantized tiles beats these loops for prompts
PACKS_Q4_K = False  # the packed layouts only pay with SIMD row groups
PACKS_Q4_K_8X8 = False
PACKS_Q4_0 = False
Q4_0_PACK_CHUNK = 4  # (the layout of the NEON dotprod kernels these loops stand for)
PACKS_Q4_0_4X8 = False
Q8_0_DECODE_PAIRS = False
B32_DECODE_QUADS = False  # decode rows one by one (the row4 loops below only fill the interface)
Q4_0_INTEGER = False  # Q4_0 stays on its float kernel: these loops are no faster
Q4_1_Q5_INTEGER = False  # so do Q4_1, Q5_0 and Q5_1
QUAD_TOKENS = 2 * TOKENS
assert TOKENS == 4  # the *_rows functions below spell out four positions

_J = dict(error_model="numpy", fastmath=False, cache=True)


@njit(**_J)
def _one(row):  # a row as a 1-row matrix, the form intdot's kernels take
    return row.reshape(1, row.shape[0])


@njit(**_J)
def q4_k_row(row, xq, xd, bsum):  # row uint8[cols/256*144]; x in Q8_K -> f32
    return idot_q4_k(_one(row), 0, xq, xd, bsum)


@njit(**_J)
def q5_k_row(row, xq, xd, bsum):
    return idot_q5_k(_one(row), 0, xq, xd, bsum)


@njit(**_J)
def q6_k_row(row, xq, xd, bsum):
    return idot_q6_k(_one(row), 0, xq, xd, bsum)


@njit(**_J)
def q8_0_row(row, xq, xd):  # row uint8[cols/32*34]; x in Q8_0
    return idot_q8_0(_one(row), 0, xq, xd)


@njit(**_J)
def q4_0_row(row, xq, xd):  # row uint8[cols/32*18]; x in Q8_0
    return idot_q4_0(_one(row), 0, xq, xd)


@njit(**_J)
def q4_0_rows(row, xq, xd, t):
    w = _one(row)
    return (idot_q4_0(w, 0, xq[t], xd[t]), idot_q4_0(w, 0, xq[t + 1], xd[t + 1]),
            idot_q4_0(w, 0, xq[t + 2], xd[t + 2]), idot_q4_0(w, 0, xq[t + 3], xd[t + 3]))


@njit(**_J)
def q5_0_row(row, xq, xd):  # row uint8[cols/32*22]; x in Q8_0
    return idot_q5_0(_one(row), 0, xq, xd)


@njit(**_J)
def q5_0_rows(row, xq, xd, t):
    w = _one(row)
    return (idot_q5_0(w, 0, xq[t], xd[t]), idot_q5_0(w, 0, xq[t + 1], xd[t + 1]),
            idot_q5_0(w, 0, xq[t + 2], xd[t + 2]), idot_q5_0(w, 0, xq[t + 3], xd[t + 3]))


@njit(**_J)
def q4_1_row(row, xq, xd, xs):  # row uint8[cols/32*20]; x in Q8_1 (xs: its block sums)
    return idot_q4_1(_one(row), 0, xq, xd, xs)


@njit(**_J)
def q4_1_rows(row, xq, xd, xs, t):
    w = _one(row)
    return (idot_q4_1(w, 0, xq[t], xd[t], xs[t]), idot_q4_1(w, 0, xq[t + 1], xd[t + 1], xs[t + 1]),
            idot_q4_1(w, 0, xq[t + 2], xd[t + 2], xs[t + 2]), idot_q4_1(w, 0, xq[t + 3], xd[t + 3], xs[t + 3]))


@njit(**_J)
def q5_1_row(row, xq, xd, xs):  # row uint8[cols/32*24]; x in Q8_1
    return idot_q5_1(_one(row), 0, xq, xd, xs)


@njit(**_J)
def q5_1_rows(row, xq, xd, xs, t):
    w = _one(row)
    return (idot_q5_1(w, 0, xq[t], xd[t], xs[t]), idot_q5_1(w, 0, xq[t + 1], xd[t + 1], xs[t + 1]),
            idot_q5_1(w, 0, xq[t + 2], xd[t + 2], xs[t + 2]), idot_q5_1(w, 0, xq[t + 3], xd[t + 3], xs[t + 3]))


@njit(**_J)
def q4_k_rows(row, xq, xd, bsum, t):  # row . x[t + i] for i < TOKENS (2-D xq, xd, bsum)
    w = _one(row)
    return (idot_q4_k(w, 0, xq[t], xd[t], bsum[t]), idot_q4_k(w, 0, xq[t + 1], xd[t + 1], bsum[t + 1]),
            idot_q4_k(w, 0, xq[t + 2], xd[t + 2], bsum[t + 2]), idot_q4_k(w, 0, xq[t + 3], xd[t + 3], bsum[t + 3]))


@njit(**_J)
def q5_k_rows(row, xq, xd, bsum, t):
    w = _one(row)
    return (idot_q5_k(w, 0, xq[t], xd[t], bsum[t]), idot_q5_k(w, 0, xq[t + 1], xd[t + 1], bsum[t + 1]),
            idot_q5_k(w, 0, xq[t + 2], xd[t + 2], bsum[t + 2]), idot_q5_k(w, 0, xq[t + 3], xd[t + 3], bsum[t + 3]))


@njit(**_J)
def q6_k_rows(row, xq, xd, bsum, t):
    w = _one(row)
    return (idot_q6_k(w, 0, xq[t], xd[t], bsum[t]), idot_q6_k(w, 0, xq[t + 1], xd[t + 1], bsum[t + 1]),
            idot_q6_k(w, 0, xq[t + 2], xd[t + 2], bsum[t + 2]), idot_q6_k(w, 0, xq[t + 3], xd[t + 3], bsum[t + 3]))


@njit(**_J)
def q8_0_rows(row, xq, xd, t):
    w = _one(row)
    return (idot_q8_0(w, 0, xq[t], xd[t]), idot_q8_0(w, 0, xq[t + 1], xd[t + 1]),
            idot_q8_0(w, 0, xq[t + 2], xd[t + 2]), idot_q8_0(w, 0, xq[t + 3], xd[t + 3]))


@njit(**_J)
def q6_k_rows2(w, r, xq, xd, bsum, t, out):  # out[t + i, r : r + 2], i < TOKENS
    for i in range(TOKENS):
        for rr in range(r, r + 2):
            out[t + i, rr] = idot_q6_k(w, rr, xq[t + i], xd[t + i], bsum[t + i])


@njit(**_J)
def q8_0_rows2(w, r, xq, xd, t, out):  # out[t + i, r : r + 2], i < TOKENS
    for i in range(TOKENS):
        for rr in range(r, r + 2):
            out[t + i, rr] = idot_q8_0(w, rr, xq[t + i], xd[t + i])


@njit(**_J)
def q8_0_row2(w, r, xq, xd, out):  # decode: out[r : r + 2]
    out[r] = idot_q8_0(w, r, xq, xd)
    out[r + 1] = idot_q8_0(w, r + 1, xq, xd)


@njit(**_J)
def q8_0_rows4(w, r, xq, xd, t, out):  # out[t + i, r : r + 4], i < QUAD_TOKENS
    for i in range(QUAD_TOKENS):
        for rr in range(r, r + 4):
            out[t + i, rr] = idot_q8_0(w, rr, xq[t + i], xd[t + i])


@njit(**_J)
def q4_0_rows4(w, r, xq, xd, t, out):  # out[t + i, r : r + 4], i < QUAD_TOKENS
    for i in range(QUAD_TOKENS):
        for rr in range(r, r + 4):
            out[t + i, rr] = idot_q4_0(w, rr, xq[t + i], xd[t + i])


@njit(**_J)
def q5_0_rows4(w, r, xq, xd, t, out):  # out[t + i, r : r + 4], i < QUAD_TOKENS
    for i in range(QUAD_TOKENS):
        for rr in range(r, r + 4):
            out[t + i, rr] = idot_q5_0(w, rr, xq[t + i], xd[t + i])


@njit(**_J)
def q4_1_rows4(w, r, xq, xd, xs, t, out):  # out[t + i, r : r + 4], i < QUAD_TOKENS
    for i in range(QUAD_TOKENS):
        for rr in range(r, r + 4):
            out[t + i, rr] = idot_q4_1(w, rr, xq[t + i], xd[t + i], xs[t + i])


@njit(**_J)
def q5_1_rows4(w, r, xq, xd, xs, t, out):  # out[t + i, r : r + 4], i < QUAD_TOKENS
    for i in range(QUAD_TOKENS):
        for rr in range(r, r + 4):
            out[t + i, rr] = idot_q5_1(w, rr, xq[t + i], xd[t + i], xs[t + i])


@njit(**_J)
def q4_k_packed(p, gi, xq, xd, bs32, out):
    """out[8gi + r] for r < 8: the rows of packed group gi (repack.py's layout) . x in Q8_K
    (xq int8[cols], xd f32[cols/256], bs32 int16[cols/32]: x's sums per 32)."""
    g = p[gi]
    nb = g.shape[0] // P_BYTES
    for r in range(GROUP):
        acc = np.float32(0.0)
        for k in range(nb):
            base = k * P_BYTES
            isum = 0
            msum = 0
            for j in range(8):  # sub-block j: the low (j even) or high nibbles of chunk j // 2
                c, hi = j // 2, j % 2
                s = 0
                for gg in range(8):
                    for b4 in range(4):
                        v = np.int32(g[base + P_QS + 32 * (8 * c + gg) + 4 * r + b4])
                        q = (v >> 4) if hi else (v & 15)
                        s += q * np.int32(xq[k * QK_K + 64 * c + 32 * hi + 4 * gg + b4])
                isum += np.int32(g[base + P_SC + 8 * j + r]) * s
                msum += np.int32(g[base + P_MN + 16 * (j // 2) + 2 * r + hi]) * np.int32(bs32[k * 8 + j])
            d = _f16(g, base + P_D + 2 * r)
            dmin = _f16(g, base + P_DMIN + 2 * r)
            acc += xd[k] * (d * np.float32(isum) - dmin * np.float32(msum))
        out[GROUP * gi + r] = acc


@njit(**_J)
def q4_k_packed_rows(p, gi, xq, xd, bs32, t, out):  # out[t + i, 8gi : 8gi + 8], i < TOKENS
    for i in range(TOKENS):
        q4_k_packed(p, gi, xq[t + i], xd[t + i], bs32[t + i], out[t + i])


@njit(**_J)
def q4_k_packed16_rows(p, gi, xq, xd, bs32, t, out):  # groups gi, gi + 1
    for h in range(2):
        q4_k_packed_rows(p, gi + h, xq, xd, bs32, t, out)


@njit(**_J)
def q4_0_packed(p, gi, xq, xd, out):
    """out[4gi + r] for r < 4: the rows of packed Q4_0 group gi (repack.py's layout) . x in
    Q8_0 (xq int8[cols], xd f32[cols/32]): each block's exact sum, then idot_q4_0's steps."""
    g = p[gi]
    nb = g.shape[0] // Q4_0_P_BYTES
    for r in range(Q4_0_GROUP):
        acc = np.float32(0.0)
        for k in range(nb):
            base = k * Q4_0_P_BYTES
            s = 0
            for i in range(4):
                for j in range(4):
                    v = np.int32(g[base + 16 * i + 4 * r + j] ^ np.uint8(0x88))  # the file's byte 4i + j
                    s += ((v & 15) - 8) * np.int32(xq[32 * k + 4 * i + j])
                    s += ((v >> 4) - 8) * np.int32(xq[32 * k + 16 + 4 * i + j])
            acc += (_f16(g, base + Q4_0_P_D + 2 * r) * xd[k]) * np.float32(s)
        out[Q4_0_GROUP * gi + r] = acc


@njit(**_J)
def q4_0_packed_rows(p, gi, xq, xd, t, out):  # out[t + i, 4gi : 4gi + 4], i < TOKENS
    for i in range(TOKENS):
        q4_0_packed(p, gi, xq[t + i], xd[t + i], out[t + i])


@njit(**_J)
def q4_0_row4(w, r, xq, xd, out):  # decode: out[r : r + 4] (unused: B32_DECODE_QUADS is False)
    for rr in range(r, r + 4):
        out[rr] = idot_q4_0(w, rr, xq, xd)


@njit(**_J)
def q5_0_row4(w, r, xq, xd, out):
    for rr in range(r, r + 4):
        out[rr] = idot_q5_0(w, rr, xq, xd)


@njit(**_J)
def _q4_0_4x8_sum(g, base, r, xq, xo):
    """Row r's exact sum over one block of a 4x8 group (repack.pack_q4_0_4x8) . xq[xo:xo + 32]."""
    s = 0
    for h in range(2):
        at = base + 16 * (2 * h + r // 2) + 8 * (r % 2)
        for j in range(8):
            v = np.int32(g[at + j] ^ np.uint8(0x88))  # the file's byte 8h + j
            s += ((v & 15) - 8) * np.int32(xq[xo + 8 * h + j])
            s += ((v >> 4) - 8) * np.int32(xq[xo + 16 + 8 * h + j])
    return s


@njit(**_J)
def q4_0_4x8_packed(p, gi, xt, xd, out):
    """out[4gi + r] for r < 4: the rows of packed Q4_0 group gi (repack.py's 4x8 layout) . x
    in Q8_0 (its quants as repack.twin_chunks_q8_0 makes them: xt int8[2*cols]): each block's
    exact sum, then q4_0_packed's steps."""
    g = p[gi]
    xq = np.empty(32, np.int8)
    for r in range(Q4_0_GROUP):
        acc = np.float32(0.0)
        for k in range(g.shape[0] // Q4_0_P_BYTES):
            base = k * Q4_0_P_BYTES
            for c in range(4):
                for e in range(8):
                    xq[8 * c + e] = xt[64 * k + 16 * c + e]
            s = _q4_0_4x8_sum(g, base, r, xq, 0)
            acc += (_f16(g, base + Q4_0_P_D + 2 * r) * xd[k]) * np.float32(s)
        out[Q4_0_GROUP * gi + r] = acc


@njit(**_J)
def q4_0_4x8_mmla_rows(p, gi, xi, xdi, t, out):
    """out[t + i, 4gi : 4gi + 4] for i < TOKENS (t even), from x's positions in pairs
    (repack.pair_positions_q8_0): q4_0_4x8_packed's steps, reading the pairs' layout."""
    g = p[gi]
    nb = g.shape[0] // Q4_0_P_BYTES
    xq = np.empty(32, np.int8)
    for i in range(TOKENS):
        pair, j = (t + i) // 2, (t + i) % 2
        for r in range(Q4_0_GROUP):
            acc = np.float32(0.0)
            for k in range(nb):
                for c in range(4):
                    for e in range(8):
                        xq[8 * c + e] = xi[pair, 64 * k + 16 * c + 8 * j + e]
                base = k * Q4_0_P_BYTES
                s = _q4_0_4x8_sum(g, base, r, xq, 0)
                acc += (_f16(g, base + Q4_0_P_D + 2 * r) * xdi[pair, 4 * k + 2 * j]) * np.float32(s)
            out[t + i, Q4_0_GROUP * gi + r] = acc


@njit(**_J)
def _q4_k_8x8_block(g, base, r, xq, bs, xd, acc):
    """acc + row r's super-block at base of a group packed in 8-byte chunks (repack.pack_q4_k_8x8)
    . one position's 256 quants xq and sums per 32 bs int32[8]: the exact sums, then
    q4_k_packed's float steps."""
    isum = 0
    msum = 0
    scale = 0
    for j in range(7, -1, -1):  # the scale of sub-block j: its step plus the scale of j + 1
        scale += np.int32(np.int8(g[base + K8_SC + 8 * j + r]))
        c, hi = j // 2, j % 2
        s = 0
        for e in range(4):
            at = base + K8_QS + 256 * (r // 2) + 64 * c + 16 * e + 8 * (r % 2)
            for i in range(8):
                v = np.int32(g[at + i])  # the file's byte 16 + 32c + 8e + i
                q = (v >> 4) if hi else (v & 15)
                s += q * np.int32(xq[64 * c + 32 * hi + 8 * e + i])
        isum += scale * s
        msum += np.int32(g[base + K8_MN + 8 * r + j]) * bs[j]
    d = _f16(g, base + P_D + 2 * r)
    dmin = _f16(g, base + P_DMIN + 2 * r)
    return acc + xd * (d * np.float32(isum) - dmin * np.float32(msum))


@njit(**_J)
def q4_k_8x8_packed(p, gi, xt, xd, bt, out):
    """out[8gi + r] for r < 8: the rows of group gi in 8-byte chunks . x in Q8_K, its quants
    as repack.twin_chunks_q8_0 makes them (xt int8[2*cols]) and its sums per 32 as
    repack.twin_sums_q8_k (bt int8[cols/8]): q4_k_packed's sums and steps."""
    g = p[gi]
    xq = np.empty(256, np.int8)
    bs = np.empty(8, np.int32)
    for r in range(GROUP):
        acc = np.float32(0.0)
        for k in range(g.shape[0] // P_BYTES):
            for i in range(256):  # element i = 8c + e of the super-block: chunk c's first copy
                xq[i] = xt[512 * k + 16 * (i // 8) + i % 8]
            for j in range(8):
                bs[j] = 64 * np.int32(bt[32 * k + j]) + np.int32(bt[32 * k + 16 + j])
            acc = _q4_k_8x8_block(g, k * P_BYTES, r, xq, bs, xd[k], acc)
        out[GROUP * gi + r] = acc


@njit(**_J)
def _q4_k_8x8_pairs(p, gi, xi, xdi, bsi, t, positions, out):
    """out[t + i, 8gi : 8gi + 8] for i < positions (t even), from x's positions in pairs
    (repack.pair_positions_q8_k): q4_k_8x8_packed's steps, reading the pairs' layout."""
    g = p[gi]
    xq = np.empty(256, np.int8)
    bs = np.empty(8, np.int32)
    for i in range(positions):
        pair, j = (t + i) // 2, (t + i) % 2
        for r in range(GROUP):
            acc = np.float32(0.0)
            for k in range(g.shape[0] // P_BYTES):
                for e in range(256):
                    xq[e] = xi[pair, 512 * k + 16 * (e // 8) + 8 * j + e % 8]
                for s in range(8):
                    bs[s] = 64 * np.int32(bsi[pair, 32 * k + 8 * j + s]) + np.int32(bsi[pair, 32 * k + 16 + 8 * j + s])
                acc = _q4_k_8x8_block(g, k * P_BYTES, r, xq, bs, xdi[pair, 4 * k + 2 * j], acc)
            out[t + i, GROUP * gi + r] = acc


@njit(**_J)
def q4_k_8x8_mmla_rows(p, gi, xi, xdi, bsi, t, out):  # out[t + i, 8gi : 8gi + 8], i < TOKENS
    _q4_k_8x8_pairs(p, gi, xi, xdi, bsi, t, TOKENS, out)


@njit(**_J)
def q4_k_8x8_mmla_rows8(p, gi, xi, xdi, bsi, t, out):  # i < 2 * TOKENS
    _q4_k_8x8_pairs(p, gi, xi, xdi, bsi, t, 2 * TOKENS, out)
