"""F32, F16 and BF16 rows: row dot products and row dequantization, plus NumPy oracles.

A row is `w[r]` of a `uint8[rows, row_bytes]` view; `x` is float32[cols].
"""
import numpy as np
from numba import njit

from .formats import F16_TO_F32


@njit(error_model="numpy", fastmath=True, cache=True)
def dot_f32(w, r, x):  # w uint8[rows, 4*cols], x f32[cols] -> f32
    wf = w[r].view(np.float32)
    acc = np.zeros(16, np.float32)
    n = x.shape[0]
    n16 = n - n % 16
    for i in range(0, n16, 16):
        for j in range(16):
            acc[j] += wf[i + j] * x[i + j]
    s = acc.sum()
    for i in range(n16, n):
        s += wf[i] * x[i]
    return s


@njit(error_model="numpy", fastmath=True, cache=True)
def dot_f16(w, r, x):  # w uint8[rows, 2*cols]
    wh = w[r].view(np.uint16)
    acc = np.zeros(16, np.float32)
    n = x.shape[0]
    n16 = n - n % 16
    for i in range(0, n16, 16):
        for j in range(16):
            acc[j] += F16_TO_F32[wh[i + j]] * x[i + j]
    s = acc.sum()
    for i in range(n16, n):
        s += F16_TO_F32[wh[i]] * x[i]
    return s


@njit(error_model="numpy", fastmath=True, cache=True)
def dot_bf16(w, r, x):  # w uint8[rows, 2*cols]; bf16 is the top half of an fp32
    wh = w[r].view(np.uint16)
    bits = np.empty(16, np.uint32)
    f = bits.view(np.float32)
    acc = np.zeros(16, np.float32)
    n = x.shape[0]
    n16 = n - n % 16
    for i in range(0, n16, 16):
        for j in range(16):
            bits[j] = np.uint32(wh[i + j]) << 16
        for j in range(16):
            acc[j] += f[j] * x[i + j]
    s = acc.sum()
    for i in range(n16, n):
        bits[0] = np.uint32(wh[i]) << 16
        s += f[0] * x[i]
    return s


@njit(error_model="numpy", cache=True)
def dequant_f32(w, r, out):  # out f32[cols]
    out[:] = w[r].view(np.float32)


@njit(error_model="numpy", cache=True)
def dequant_f16(w, r, out):
    wh = w[r].view(np.uint16)
    for i in range(out.shape[0]):
        out[i] = F16_TO_F32[wh[i]]


@njit(error_model="numpy", cache=True)
def dequant_bf16(w, r, out):
    wh = w[r].view(np.uint16)
    bits = out.view(np.uint32)
    for i in range(out.shape[0]):
        bits[i] = np.uint32(wh[i]) << 16


# --- NumPy oracles -------------------------------------------------------------------------

def dequantize_f32_np(w: np.ndarray) -> np.ndarray:  # uint8[rows, 4*cols] -> f32[rows, cols]
    return w.view(np.float32).copy()


def dequantize_f16_np(w: np.ndarray) -> np.ndarray:
    return w.view(np.float16).astype(np.float32)


def dequantize_bf16_np(w: np.ndarray) -> np.ndarray:
    return (w.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
