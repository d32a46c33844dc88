"""K-quants: Q4_K, Q5_K, Q6_K. Super-blocks of 256 weights.

Q4_K (144 bytes), 8 sub-blocks of 32, value = d * sc[j] * q - dmin * m[j], q in 0..15:

    | d: fp16 | dmin: fp16 | scales[12] | qs[128] |
    0         2            4            16        144

    scales, six bits each (sc = scale, m = min; lower case bits belong to sub-blocks 0-3):
        byte 0-3:   m m s s s s s s   -> sc[0..3] low 6 bits, top 2 bits = sc[4..7] >> 4
        byte 4-7:   m m n n n n n n   -> m[0..3] low 6 bits,  top 2 bits = m[4..7] >> 4
        byte 8-11:  M M M M S S S S   -> sc[4..7] & 15 (low nibble), m[4..7] & 15 (high nibble)
    qs: four 32-byte chunks; chunk c holds sub-block 2c in its low nibbles and 2c+1 in its high
    nibbles, element l of each in byte l.

Q5_K (176 bytes): Q4_K plus one high bit per weight, q in 0..31:

    | d: fp16 | dmin: fp16 | scales[12] | qh[32] | qs[128] |
    0         2            4            16       48        176

    bit 2c of qh[l] is the high bit of element l of sub-block 2c, bit 2c+1 that of sub-block 2c+1.

Q6_K (210 bytes), 16 sub-blocks of 16, value = d * sc[j] * (q - 32), q in 0..63:

    | ql[128] | qh[64] | scales: int8[16] | d: fp16 |
    0         128      192                208       210

    Two halves of 128 weights, each with 64 bytes of ql and 32 of qh. In half h, for l < 32:
        element l      = ql[l] & 15      | (qh[l] >> 0 & 3) << 4
        element l + 32 = ql[l + 32] & 15 | (qh[l] >> 2 & 3) << 4
        element l + 64 = ql[l] >> 4      | (qh[l] >> 4 & 3) << 4
        element l + 96 = ql[l + 32] >> 4 | (qh[l] >> 6 & 3) << 4
    and element e of the half uses scales[8h + e // 16].

Dot kernels: a 32-lane float accumulator per row, one horizontal sum at the end (docs/kernels.md §6).
Q4_K/Q5_K apply `- dmin * m` per weight (one FMA more): folding it out as dmin * m[j] * sum(x
over sub-block j) only pays when those sums are made once per token; computed per row (inside
dot_q4_k) they made the kernel ~2x slower. Dequantizers compute exactly what ggml's
dequantize_row_* and gguf-py do.
"""
import numpy as np
from numba import njit

from .formats import F16_TO_F32

QK_K = 256
Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES = 144, 176, 210

# Bit twiddling in the dot kernels stays in uint8: numba widens integer arithmetic to int64,
# and LLVM then vectorizes int64 -> float conversions badly (~30% slower).
M4, S4 = np.uint8(15), np.uint8(4)
ONE, TWO, THREE, TWELVE, H48, H192 = (np.uint8(v) for v in (1, 2, 3, 12, 48, 192))
B32 = np.float32(32.0)


@njit(error_model="numpy", inline="always")
def _f16(row, o):  # fp16 at byte o of a row -> f32
    return F16_TO_F32[np.int32(row[o]) | (np.int32(row[o + 1]) << 8)]


@njit(error_model="numpy", inline="always")
def _scale_min(row, o, j):  # ggml's get_scale_min_k4 on the 12 scale bytes at row[o:] -> (sc, m)
    if j < 4:
        return np.int32(row[o + j]) & 63, np.int32(row[o + j + 4]) & 63
    sc = (np.int32(row[o + j + 4]) & 15) | ((np.int32(row[o + j - 4]) >> 6) << 4)
    m = (np.int32(row[o + j + 4]) >> 4) | ((np.int32(row[o + j]) >> 6) << 4)
    return sc, m


# --- Q4_K ------------------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def dot_q4_k(w, r, x):  # w uint8[rows, cols/256*144], x f32[cols] -> f32
    row = w[r]
    acc = np.zeros(32, np.float32)
    for b in range(row.shape[0] // Q4_K_BYTES):
        o = b * Q4_K_BYTES
        d = _f16(row, o)
        dmin = _f16(row, o + 2)
        for c in range(4):
            sc1, m1 = _scale_min(row, o + 4, 2 * c)
            sc2, m2 = _scale_min(row, o + 4, 2 * c + 1)
            d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
            q = o + 16 + 32 * c
            xo = b * QK_K + 64 * c
            for l in range(32):
                v = row[q + l]
                acc[l] += ((d1 * np.float32(np.uint8(v & M4)) - dm1) * x[xo + l]
                           + (d2 * np.float32(np.uint8(v >> S4)) - dm2) * x[xo + 32 + l])
    return acc.sum()


@njit(error_model="numpy", cache=True)
def dequant_q4_k(w, r, out):  # out f32[cols]
    row = w[r]
    for b in range(row.shape[0] // Q4_K_BYTES):
        o = b * Q4_K_BYTES
        d = _f16(row, o)
        dmin = _f16(row, o + 2)
        for c in range(4):
            sc1, m1 = _scale_min(row, o + 4, 2 * c)
            sc2, m2 = _scale_min(row, o + 4, 2 * c + 1)
            d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
            q = o + 16 + 32 * c
            y = b * QK_K + 64 * c
            for l in range(32):
                v = np.int32(row[q + l])
                out[y + l] = d1 * np.float32(v & 15) - dm1
                out[y + 32 + l] = d2 * np.float32(v >> 4) - dm2


# --- Q5_K ------------------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def dot_q5_k(w, r, x):  # w uint8[rows, cols/256*176]
    row = w[r]
    acc = np.zeros(32, np.float32)
    for b in range(row.shape[0] // Q5_K_BYTES):
        o = b * Q5_K_BYTES
        d = _f16(row, o)
        dmin = _f16(row, o + 2)
        for c in range(4):
            sc1, m1 = _scale_min(row, o + 4, 2 * c)
            sc2, m2 = _scale_min(row, o + 4, 2 * c + 1)
            d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
            q = o + 48 + 32 * c
            xo = b * QK_K + 64 * c
            sh = np.uint8(2 * c)
            for l in range(32):
                v = row[q + l]
                h = np.uint8(row[o + 16 + l] >> sh)
                lo = np.uint8(np.uint8(v & M4) | np.uint8((h & ONE) << S4))
                hi = np.uint8(np.uint8(v >> S4) | np.uint8((h & TWO) << THREE))
                acc[l] += (d1 * np.float32(lo) - dm1) * x[xo + l] + (d2 * np.float32(hi) - dm2) * x[xo + 32 + l]
    return acc.sum()


@njit(error_model="numpy", cache=True)
def dequant_q5_k(w, r, out):
    row = w[r]
    for b in range(row.shape[0] // Q5_K_BYTES):
        o = b * Q5_K_BYTES
        d = _f16(row, o)
        dmin = _f16(row, o + 2)
        for c in range(4):
            sc1, m1 = _scale_min(row, o + 4, 2 * c)
            sc2, m2 = _scale_min(row, o + 4, 2 * c + 1)
            d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
            q = o + 48 + 32 * c
            y = b * QK_K + 64 * c
            for l in range(32):
                v = np.int32(row[q + l])
                h = np.int32(row[o + 16 + l]) >> (2 * c)
                out[y + l] = d1 * np.float32((v & 15) | ((h & 1) << 4)) - dm1
                out[y + 32 + l] = d2 * np.float32((v >> 4) | ((h & 2) << 3)) - dm2


# --- Q6_K ------------------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def dot_q6_k(w, r, x):  # w uint8[rows, cols/256*210]
    row = w[r]
    acc = np.zeros(32, np.float32)
    for b in range(row.shape[0] // Q6_K_BYTES):
        o = b * Q6_K_BYTES
        d = _f16(row, o + 208)
        for h in range(2):
            ql = o + 64 * h
            qh = o + 128 + 32 * h
            sc = o + 192 + 8 * h
            xo = b * QK_K + 128 * h
            for g in range(2):  # lanes 16g..16g+15 share their four scales
                s1 = d * np.float32(np.int8(row[sc + g]))
                s2 = d * np.float32(np.int8(row[sc + g + 2]))
                s3 = d * np.float32(np.int8(row[sc + g + 4]))
                s4 = d * np.float32(np.int8(row[sc + g + 6]))
                for k in range(16):
                    l = 16 * g + k
                    a = row[ql + l]
                    c = row[ql + l + 32]
                    hb = row[qh + l]
                    q1 = np.uint8(np.uint8(a & M4) | np.uint8((hb & THREE) << S4))
                    q2 = np.uint8(np.uint8(c & M4) | np.uint8((hb & TWELVE) << TWO))
                    q3 = np.uint8(np.uint8(a >> S4) | np.uint8(hb & H48))
                    q4 = np.uint8(np.uint8(c >> S4) | np.uint8((hb & H192) >> TWO))
                    acc[l] += (s1 * (np.float32(q1) - B32) * x[xo + l] + s2 * (np.float32(q2) - B32) * x[xo + 32 + l]
                               + s3 * (np.float32(q3) - B32) * x[xo + 64 + l]
                               + s4 * (np.float32(q4) - B32) * x[xo + 96 + l])
    return acc.sum()


@njit(error_model="numpy", cache=True)
def dequant_q6_k(w, r, out):
    row = w[r]
    for b in range(row.shape[0] // Q6_K_BYTES):
        o = b * Q6_K_BYTES
        d = _f16(row, o + 208)
        for h in range(2):
            ql = o + 64 * h
            qh = o + 128 + 32 * h
            sc = o + 192 + 8 * h
            y = b * QK_K + 128 * h
            for l in range(32):
                g = l // 16
                a = np.int32(row[ql + l])
                c = np.int32(row[ql + l + 32])
                hb = np.int32(row[qh + l])
                out[y + l] = d * np.float32(np.int8(row[sc + g])) * np.float32(((a & 15) | ((hb & 3) << 4)) - 32)
                out[y + 32 + l] = (d * np.float32(np.int8(row[sc + g + 2]))
                                   * np.float32(((c & 15) | ((hb & 12) << 2)) - 32))
                out[y + 64 + l] = d * np.float32(np.int8(row[sc + g + 4])) * np.float32(((a >> 4) | (hb & 48)) - 32)
                out[y + 96 + l] = (d * np.float32(np.int8(row[sc + g + 6]))
                                   * np.float32(((c >> 4) | ((hb & 192) >> 2)) - 32))


# --- NumPy oracles ---------------------------------------------------------------------------

def _fp16(b: np.ndarray) -> np.ndarray:  # uint8[..., 2] -> f32[..., 1]
    return b.copy().view(np.float16).astype(np.float32)


def _scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # uint8[rows, nb, 12] -> 2 x f32[rows, nb, 8, 1]
    s = s.astype(np.int32)
    lo, hi, mix = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([lo & 63, (mix & 15) | ((lo >> 6) << 4)], axis=-1)
    m = np.concatenate([hi & 63, (mix >> 4) | ((hi >> 6) << 4)], axis=-1)
    return sc.astype(np.float32)[..., None], m.astype(np.float32)[..., None]


def _q4_nibbles(qs: np.ndarray) -> np.ndarray:  # uint8[rows, nb, 128] -> int32[rows, nb, 8, 32]
    q = qs.astype(np.int32).reshape(*qs.shape[:2], 4, 1, 32)
    return np.concatenate([q & 15, q >> 4], axis=-2).reshape(*qs.shape[:2], 8, 32)


def dequantize_q4_k_np(w: np.ndarray) -> np.ndarray:  # uint8[rows, nb*144] -> f32[rows, nb*256]
    b = w.reshape(w.shape[0], -1, Q4_K_BYTES)
    d, dmin = _fp16(b[..., 0:2])[..., None], _fp16(b[..., 2:4])[..., None]
    sc, m = _scales_mins(b[..., 4:16])
    q = _q4_nibbles(b[..., 16:]).astype(np.float32)
    return ((d * sc) * q - dmin * m).reshape(w.shape[0], -1)


def dequantize_q5_k_np(w: np.ndarray) -> np.ndarray:  # uint8[rows, nb*176] -> f32[rows, nb*256]
    b = w.reshape(w.shape[0], -1, Q5_K_BYTES)
    d, dmin = _fp16(b[..., 0:2])[..., None], _fp16(b[..., 2:4])[..., None]
    sc, m = _scales_mins(b[..., 4:16])
    qh = b[..., 16:48].astype(np.int32)[..., None, :] >> np.arange(8).reshape(8, 1)  # [rows, nb, 8, 32]
    q = (_q4_nibbles(b[..., 48:]) | ((qh & 1) << 4)).astype(np.float32)
    return ((d * sc) * q - dmin * m).reshape(w.shape[0], -1)


def dequantize_q6_k_np(w: np.ndarray) -> np.ndarray:  # uint8[rows, nb*210] -> f32[rows, nb*256]
    b = w.reshape(w.shape[0], -1, Q6_K_BYTES)
    rows, nb = b.shape[:2]
    ql = b[..., :128].astype(np.int32).reshape(rows, nb, 2, 1, 64)
    ql = np.concatenate([ql & 15, ql >> 4], axis=-2).reshape(rows, nb, 2, 4, 32)  # [half, quarter, l]
    qh = b[..., 128:192].astype(np.int32).reshape(rows, nb, 2, 1, 32) >> (2 * np.arange(4)).reshape(4, 1)
    q = ((ql | ((qh & 3) << 4)) - 32).astype(np.float32).reshape(rows, nb, 16, 16)
    sc = b[..., 192:208].view(np.int8).astype(np.float32)[..., None]  # [rows, nb, 16, 1]
    d = _fp16(b[..., 208:210])[..., None]
    return ((d * sc) * q).reshape(rows, -1)
