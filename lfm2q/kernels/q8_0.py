"""Q8_0: blocks of 32 weights, value = d * q.

    block (34 bytes):  | d: fp16 | q[0] q[1] ... q[31]: int8 |
                       0         2                          34
"""
import numpy as np
from numba import njit

from .formats import F16_TO_F32

QK = 32
BLOCK_BYTES = 34


@njit(error_model="numpy", fastmath=True, cache=True)
def dot_q8_0(w, r, x):  # w uint8[rows, cols/32*34], x f32[cols] -> f32
    # One 32-lane accumulator per row and a single horizontal sum at the end: the loop
    # body is then a straight multiply-add that LLVM vectorises.
    acc = np.zeros(QK, np.float32)
    for b in range(w.shape[1] // BLOCK_BYTES):
        o = b * BLOCK_BYTES
        d = F16_TO_F32[np.int32(w[r, o]) | (np.int32(w[r, o + 1]) << 8)]
        xo = b * QK
        for j in range(QK):
            acc[j] += d * (np.float32(np.int8(w[r, o + 2 + j])) * x[xo + j])
    return acc.sum()


@njit(error_model="numpy", cache=True)
def dequant_q8_0(w, r, out):  # out f32[cols]
    for b in range(w.shape[1] // BLOCK_BYTES):
        o = b * BLOCK_BYTES
        d = F16_TO_F32[np.int32(w[r, o]) | (np.int32(w[r, o + 1]) << 8)]
        for j in range(QK):
            out[b * QK + j] = d * np.float32(np.int8(w[r, o + 2 + j]))


def dequantize_q8_0_np(w: np.ndarray) -> np.ndarray:  # uint8[rows, nb*34] -> f32[rows, nb*32]
    rows = w.shape[0]
    blocks = w.reshape(rows, -1, BLOCK_BYTES)
    d = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    q = blocks[:, :, 2:].copy().view(np.int8).astype(np.float32)     # [rows, nb, 32]
    return (d * q).reshape(rows, -1)
