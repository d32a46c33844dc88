"""F32, F16 and BF16 rows: row dot products and row dequantization, plus NumPy oracles.

A row is `w[r]` of a `uint8[rows, row_bytes]` view; `x` is float32[cols].

F16 elements are widened by the CPU's own conversion (half.as_f32: LLVM's fpext, vectorized to
F16C's vcvtph2ps on x86 and NEON's fcvtl on aarch64), not a 65,536-entry table: a table makes
every element a scalar load from 256 KB, which kept the loop from vectorizing (exact either
way: every fp16 value is an f32 value).
"""
import numpy as np
from numba import njit

from .half import as_f32, bf16_as_f32


# One sum per row, left to LLVM: with fastmath it vectorizes and splits the reduction over as
# many accumulators as the vector width wants (an explicit 16-lane array accumulator kept it from
# vectorizing: 3.5x slower for F32 rows, 4x for F16, measured on 2048x2048 on an AMD EPYC).

@njit(error_model="numpy", fastmath=True, cache=True)
def dot_f32(w, r, x):  # w uint8[rows, 4*cols], x f32[cols] -> f32
    wf = w[r].view(np.float32)
    s = np.float32(0.0)
    for i in range(x.shape[0]):
        s += wf[i] * x[i]
    return s


@njit(error_model="numpy", fastmath=True, cache=True)
def dot_f16(w, r, x):  # w uint8[rows, 2*cols]
    wh = w[r].view(np.uint16)
    s = np.float32(0.0)
    for i in range(x.shape[0]):
        s += as_f32(wh[i]) * x[i]
    return s


@njit(error_model="numpy", fastmath=True, cache=True)
def dot_bf16(w, r, x):  # w uint8[rows, 2*cols]; bf16 is the top half of an fp32
    wh = w[r].view(np.uint16)
    s = np.float32(0.0)
    for i in range(x.shape[0]):
        s += bf16_as_f32(wh[i]) * x[i]
    return s


@njit(error_model="numpy", cache=True)
def dequant_f32(w, r, out):  # out f32[cols]
    out[:] = w[r].view(np.float32)


@njit(error_model="numpy", cache=True)
def dequant_f16(w, r, out):
    wh = w[r].view(np.uint16)
    for i in range(out.shape[0]):
        out[i] = as_f32(wh[i])


@njit(error_model="numpy", cache=True)
def dequant_bf16(w, r, out):
    wh = w[r].view(np.uint16)
    for i in range(out.shape[0]):
        out[i] = bf16_as_f32(wh[i])


# --- NumPy oracles -------------------------------------------------------------------------

def dequantize_f32_np(w: np.ndarray) -> np.ndarray:  # uint8[rows, 4*cols] -> f32[rows, cols]
    return w.view(np.float32).copy()


def dequantize_f16_np(w: np.ndarray) -> np.ndarray:
    return w.view(np.float16).astype(np.float32)


def dequantize_bf16_np(w: np.ndarray) -> np.ndarray:
    return (w.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
