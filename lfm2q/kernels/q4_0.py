"""Legacy 4- and 5-bit formats: Q4_0, Q4_1, Q5_0, Q5_1. Blocks of 32 weights.

Element j < 16 of a block sits in the low nibble of qs[j], element j + 16 in its high nibble.

    Q4_0 (18 bytes):  | d: fp16 | qs[16] |                     value = d * (q - 8)
    Q4_1 (20 bytes):  | d: fp16 | m: fp16 | qs[16] |           value = d * q + m
    Q5_0 (22 bytes):  | d: fp16 | qh: u32 | qs[16] |           value = d * (q - 16)
    Q5_1 (24 bytes):  | d: fp16 | m: fp16 | qh: u32 | qs[16] | value = d * q + m

    qs[j] = q[j] & 15 | (q[j + 16] & 15) << 4;  Q5: bit j of qh (little endian) = q[j] >> 4.

Dot kernels keep a 32-lane float accumulator per row and sum it once at the end (docs/kernels.md §6).
Dequantizers compute exactly what ggml's dequantize_row_* and gguf-py compute.
"""
import numpy as np
from numba import njit

from .formats import F16_TO_F32

QK = 32
Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES = 18, 20, 22, 24

# Nibbles are split in uint8: numba widens integer arithmetic to int64, and LLVM vectorizes
# int64 -> float conversions badly.
M4, S4 = np.uint8(15), np.uint8(4)
B8 = np.float32(8.0)


@njit(error_model="numpy", inline="always")
def _f16(row, o):  # fp16 at byte o of a row -> f32
    return F16_TO_F32[np.int32(row[o]) | (np.int32(row[o + 1]) << 8)]


@njit(error_model="numpy", inline="always")
def _u32(row, o):
    return (np.uint32(row[o]) | (np.uint32(row[o + 1]) << 8)
            | (np.uint32(row[o + 2]) << 16) | (np.uint32(row[o + 3]) << 24))


# --- Q4_0 ------------------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def dot_q4_0(w, r, x):  # w uint8[rows, cols/32*18], x f32[cols] -> f32
    row = w[r]
    acc = np.zeros(QK, np.float32)
    for b in range(row.shape[0] // Q4_0_BYTES):
        o = b * Q4_0_BYTES
        d = _f16(row, o)
        xo = b * QK
        for j in range(16):
            q = row[o + 2 + j]
            acc[j] += d * ((np.float32(np.uint8(q & M4)) - B8) * x[xo + j])
            acc[j + 16] += d * ((np.float32(np.uint8(q >> S4)) - B8) * x[xo + 16 + j])
    return acc.sum()


@njit(error_model="numpy", cache=True)
def dequant_q4_0(w, r, out):  # out f32[cols]
    row = w[r]
    for b in range(row.shape[0] // Q4_0_BYTES):
        o = b * Q4_0_BYTES
        d = _f16(row, o)
        for j in range(16):
            q = np.int32(row[o + 2 + j])
            out[b * QK + j] = np.float32((q & 15) - 8) * d
            out[b * QK + 16 + j] = np.float32((q >> 4) - 8) * d


# --- Q4_1 ------------------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def dot_q4_1(w, r, x):  # w uint8[rows, cols/32*20]
    row = w[r]
    acc = np.zeros(QK, np.float32)
    for b in range(row.shape[0] // Q4_1_BYTES):
        o = b * Q4_1_BYTES
        d = _f16(row, o)
        m = _f16(row, o + 2)
        xo = b * QK
        for j in range(16):
            q = row[o + 4 + j]
            acc[j] += (d * np.float32(np.uint8(q & M4)) + m) * x[xo + j]
            acc[j + 16] += (d * np.float32(np.uint8(q >> S4)) + m) * x[xo + 16 + j]
    return acc.sum()


@njit(error_model="numpy", cache=True)
def dequant_q4_1(w, r, out):
    row = w[r]
    for b in range(row.shape[0] // Q4_1_BYTES):
        o = b * Q4_1_BYTES
        d = _f16(row, o)
        m = _f16(row, o + 2)
        for j in range(16):
            q = np.int32(row[o + 4 + j])
            out[b * QK + j] = np.float32(q & 15) * d + m
            out[b * QK + 16 + j] = np.float32(q >> 4) * d + m


# --- Q5_0 ------------------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def dot_q5_0(w, r, x):  # w uint8[rows, cols/32*22]
    row = w[r]
    acc = np.zeros(QK, np.float32)
    for b in range(row.shape[0] // Q5_0_BYTES):
        o = b * Q5_0_BYTES
        d = _f16(row, o)
        qh = _u32(row, o + 2)
        xo = b * QK
        for j in range(16):
            q = np.int32(row[o + 6 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            acc[j] += d * (np.float32(((q & 15) | h0) - 16) * x[xo + j])
            acc[j + 16] += d * (np.float32(((q >> 4) | h1) - 16) * x[xo + 16 + j])
    return acc.sum()


@njit(error_model="numpy", cache=True)
def dequant_q5_0(w, r, out):
    row = w[r]
    for b in range(row.shape[0] // Q5_0_BYTES):
        o = b * Q5_0_BYTES
        d = _f16(row, o)
        qh = _u32(row, o + 2)
        for j in range(16):
            q = np.int32(row[o + 6 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            out[b * QK + j] = np.float32(((q & 15) | h0) - 16) * d
            out[b * QK + 16 + j] = np.float32(((q >> 4) | h1) - 16) * d


# --- Q5_1 ------------------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def dot_q5_1(w, r, x):  # w uint8[rows, cols/32*24]
    row = w[r]
    acc = np.zeros(QK, np.float32)
    for b in range(row.shape[0] // Q5_1_BYTES):
        o = b * Q5_1_BYTES
        d = _f16(row, o)
        m = _f16(row, o + 2)
        qh = _u32(row, o + 4)
        xo = b * QK
        for j in range(16):
            q = np.int32(row[o + 8 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            acc[j] += (d * np.float32((q & 15) | h0) + m) * x[xo + j]
            acc[j + 16] += (d * np.float32((q >> 4) | h1) + m) * x[xo + 16 + j]
    return acc.sum()


@njit(error_model="numpy", cache=True)
def dequant_q5_1(w, r, out):
    row = w[r]
    for b in range(row.shape[0] // Q5_1_BYTES):
        o = b * Q5_1_BYTES
        d = _f16(row, o)
        m = _f16(row, o + 2)
        qh = _u32(row, o + 4)
        for j in range(16):
            q = np.int32(row[o + 8 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            out[b * QK + j] = np.float32((q & 15) | h0) * d + m
            out[b * QK + 16 + j] = np.float32((q >> 4) | h1) * d + m


# --- NumPy oracles ---------------------------------------------------------------------------

def _blocks(w: np.ndarray, nbytes: int) -> np.ndarray:  # uint8[rows, nb*nbytes] -> [rows, nb, nbytes]
    return w.reshape(w.shape[0], -1, nbytes)


def _fp16(b: np.ndarray) -> np.ndarray:  # uint8[..., 2] -> f32[..., 1]
    return b.copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:  # uint8[rows, nb, 16] -> int32[rows, nb, 32]
    q = qs.astype(np.int32)
    return np.concatenate([q & 15, q >> 4], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:  # uint8[rows, nb, 4] -> int32[rows, nb, 32], 0 or 16
    bits = np.unpackbits(qh, axis=-1, bitorder="little")
    return bits.astype(np.int32) << 4


def dequantize_q4_0_np(w: np.ndarray) -> np.ndarray:  # -> f32[rows, cols]
    b = _blocks(w, Q4_0_BYTES)
    q = (_nibbles(b[:, :, 2:]) - 8).astype(np.float32)
    return (q * _fp16(b[:, :, :2])).reshape(w.shape[0], -1)


def dequantize_q4_1_np(w: np.ndarray) -> np.ndarray:
    b = _blocks(w, Q4_1_BYTES)
    q = _nibbles(b[:, :, 4:]).astype(np.float32)
    return (q * _fp16(b[:, :, 0:2]) + _fp16(b[:, :, 2:4])).reshape(w.shape[0], -1)


def dequantize_q5_0_np(w: np.ndarray) -> np.ndarray:
    b = _blocks(w, Q5_0_BYTES)
    q = ((_nibbles(b[:, :, 6:]) | _high_bits(b[:, :, 2:6])) - 16).astype(np.float32)
    return (q * _fp16(b[:, :, :2])).reshape(w.shape[0], -1)


def dequantize_q5_1_np(w: np.ndarray) -> np.ndarray:
    b = _blocks(w, Q5_1_BYTES)
    q = (_nibbles(b[:, :, 8:]) | _high_bits(b[:, :, 4:8])).astype(np.float32)
    return (q * _fp16(b[:, :, 0:2]) + _fp16(b[:, :, 2:4])).reshape(w.shape[0], -1)
