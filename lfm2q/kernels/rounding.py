"""ggml's scalar rounding helpers, bit for bit: shared by the converter's quantizers and the
engine's activation rounding, both of which must match llama.cpp exactly.
"""
import numpy as np
from numba import njit


@njit(inline="always")
def nearest_int(f):  # f32 -> int, round half to even (|f| <= 4194303 in ggml's asserts)
    val = np.float32(f) + np.float32(12582912.0)
    i = np.int64(np.float32(val).view(np.int32))
    return (i & 0x007FFFFF) - 0x00400000


@njit(inline="always")
def fp32_to_fp16(f):  # f32 -> fp16 bits as int, ggml_compute_fp32_to_fp16 (round to nearest even)
    base = (abs(np.float32(f)) * np.float32(2.0 ** 112)) * np.float32(2.0 ** -110)
    w = np.int64(np.float32(f).view(np.uint32))
    shl1_w = (w + w) & 0xFFFFFFFF
    sign = w & 0x80000000
    bias = shl1_w & 0xFF000000
    if bias < 0x71000000:
        bias = 0x71000000
    base = np.uint32((bias >> 1) + 0x07800000).view(np.float32) + base
    bits = np.int64(np.float32(base).view(np.uint32))
    nonsign = ((bits >> 13) & 0x00007C00) + (bits & 0x00000FFF)
    if shl1_w > 0xFF000000:
        nonsign = 0x7E00
    return ((sign >> 16) | nonsign) & 0xFFFF

