"""Activation rounding: what llama.cpp does to the input vector before it meets a weight.

ggml's CPU matmul converts the activation row to the weight type's `vec_dot_type` first and
then multiplies in that form (type_traits_cpu in ggml-cpu.c): 8-bit integers in 256-blocks
(Q8_K) for K-quant weights, 8-bit integers in 32-blocks (Q8_0; Q8_1 for Q4_1/Q5_1) for the
legacy quants and Q8_0. lfm2q does the same by default, so that both engines compute the same
numbers on the same file (measured on lfm2q-tiny: logits equal to 2e-7 until the first
position where a one-ulp difference upstream flips a quant) and lfm2q's decode kernels can
multiply integers (kernels/intdot.py). F16, BF16 and F32 weights multiply f32 activations:
rounding them to fp16 as ggml's vec_dot_f16 would did not bring lfm2q closer to llama.cpp's
logits on F16 files (its matmul takes another path there), and only costs precision.
`exact` mode (Model(..., exact=True)) skips the rounding and multiplies dequantized weights
with f32 activations, as transformers would.

Two forms of the same rounding:
  - integer form for decode: int8 quants, per-block scales, per-16 sums (Q8_K's bsums);
  - rounded-float form ("fake quantization") for prefill and the types without an integer
    kernel: x~ = d * q in f32, multiplied with dequantized weights through BLAS. Both give
    the same products up to float summation order.

Rounding as in ggml (ggml-quants.c quantize_row_q8_K_ref; x86 quantize_row_q8_0):
  Q8_K: max = the element of largest |x| (first one), iscale = -127/max, q = min(127,
        nearest_int(iscale * x)), d = 1/iscale (f32);
  Q8_0: amax = max |x|, d = fp16(amax/127), q = round_half_even(x * (127/amax)).
  Q8_1 keeps an fp16 sum s = fp16(amax/127 * sum q) for the min term of Q4_1/Q5_1
  (quantize_q8_1, for their integer kernels); the float form uses the exact sum (a
  difference below fp16 rounding of one term).
A block with a NaN or Inf gets a NaN scale, so bad activations still end as NaN logits.

fastmath=False is explicit on every function here: numba compiles a callee that sets no
fastmath with its first caller's flags, and under fastmath (called from matvec) LLVM may
assume no NaN, drop the isfinite checks and reorder the rounding arithmetic.
"""
import numpy as np
from numba import njit

from .formats import F16_TO_F32, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q8_0
from .rounding import fp32_to_fp16, nearest_int

ACT_F32, ACT_Q8_0, ACT_Q8_K = 0, 3, 4
QK8_0, QK_K = 32, 256


@njit(inline="always")
def act_of(qtype):  # the activation rounding llama.cpp applies before a weight of this type
    if qtype == Q4_K or qtype == Q5_K or qtype == Q6_K:
        return ACT_Q8_K
    if qtype == Q8_0 or qtype == Q4_0 or qtype == Q5_0 or qtype == Q4_1 or qtype == Q5_1:
        return ACT_Q8_0
    return ACT_F32


@njit(error_model="numpy", fastmath=False, cache=True)
def quantize_q8_0(x, xq, xd):  # x f32[cols] -> xq int8[cols], xd f32[cols/32] (fp16 values)
    for b in range(x.shape[0] // QK8_0):
        o = b * QK8_0
        amax = np.float32(0.0)
        finite = True
        for j in range(QK8_0):
            v = x[o + j]
            if not np.isfinite(v):
                finite = False
            amax = max(amax, abs(v))
        d = F16_TO_F32[fp32_to_fp16(amax / np.float32(127.0))]
        inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
        for j in range(QK8_0):
            xq[o + j] = np.int8(np.rint(x[o + j] * inv)) if finite else np.int8(0)
        xd[b] = d if finite else np.float32(np.nan)


@njit(error_model="numpy", fastmath=False, cache=True)
def q8_1_sums(x, xq, xs):  # x f32[cols] and its Q8_0 quants xq -> xs f32[cols/32]: Q8_1's sums
    # x86 quantize_row_q8_1: Q8_1 is Q8_0's quants and d plus s = fp16(amax/127 * sum of the
    # quants), with amax/127 before its fp16 rounding. Q4_1 / Q5_1 add m * s per block.
    for b in range(x.shape[0] // QK8_0):
        o = b * QK8_0
        amax = np.float32(0.0)
        finite = True
        t = 0
        for j in range(QK8_0):
            v = x[o + j]
            if not np.isfinite(v):
                finite = False
            amax = max(amax, abs(v))
            t += np.int32(xq[o + j])
        s = (amax / np.float32(127.0)) * np.float32(t)
        xs[b] = F16_TO_F32[fp32_to_fp16(s)] if finite else np.float32(np.nan)


@njit(error_model="numpy", fastmath=False, cache=True)
def quantize_q8_1(x, xq, xd, xs):  # quantize_q8_0 plus Q8_1's block sums xs f32[cols/32]
    quantize_q8_0(x, xq, xd)
    q8_1_sums(x, xq, xs)


@njit(error_model="numpy", fastmath=False, cache=True)
def quantize_q8_k(x, xq, xd, bsum):  # -> xq int8[cols], xd f32[cols/256], bsum int16[cols/16]
    for b in range(x.shape[0] // QK_K):
        o = b * QK_K
        amax = np.float32(0.0)
        mx = np.float32(0.0)
        finite = True
        for j in range(QK_K):
            v = x[o + j]
            if not np.isfinite(v):
                finite = False
            elif abs(v) > amax:
                amax = abs(v)
                mx = v
        if amax == 0 or not finite:
            xq[o:o + QK_K] = 0
            bsum[b * 16:b * 16 + 16] = 0
            xd[b] = np.float32(0.0) if finite else np.float32(np.nan)
            continue
        iscale = np.float32(-127.0) / mx
        for j in range(QK_K):
            xq[o + j] = np.int8(min(127, nearest_int(iscale * x[o + j])))
        for s in range(16):  # |sum| <= 16 * 127: fits int16, as ggml's block_q8_K.bsums
            t = 0
            for j in range(16):
                t += np.int32(xq[o + 16 * s + j])
            bsum[b * 16 + s] = t
        xd[b] = np.float32(1.0) / iscale


@njit(error_model="numpy", fastmath=False, cache=True)
def round_activations(x, act, out):  # out f32[cols] = x as the weight multiplies it (the float form)
    n = x.shape[0]
    if act == ACT_Q8_0:
        xq = np.empty(n, np.int8)
        xd = np.empty(n // QK8_0, np.float32)
        quantize_q8_0(x, xq, xd)
        for i in range(n):
            out[i] = xd[i // QK8_0] * np.float32(xq[i])
    elif act == ACT_Q8_K:
        xq = np.empty(n, np.int8)
        xd = np.empty(n // QK_K, np.float32)
        bsum = np.empty(n // 16, np.int16)
        quantize_q8_k(x, xq, xd, bsum)
        for i in range(n):
            out[i] = xd[i // QK_K] * np.float32(xq[i])
    else:
        out[:] = x


@njit(error_model="numpy", fastmath=False, nogil=True, cache=True)
def round_activation_rows(x, act, out):  # x f32[n, cols] -> out, row by row
    # Serial: a numba parallel region here left its threads spinning into the BLAS work that
    # follows (prefill 12% slower); the rounding itself is ~2% of a matmul.
    for i in range(x.shape[0]):
        round_activations(x[i], act, out[i])


# --- NumPy oracle ------------------------------------------------------------------------------

def round_activations_np(x: np.ndarray, act: int) -> np.ndarray:
    """The float form of the rounding for x f32[..., cols], written with NumPy for tests."""
    x = np.asarray(x, np.float32)
    if act == ACT_F32:
        return x.copy()
    if act == ACT_Q8_0:
        b = x.reshape(*x.shape[:-1], -1, QK8_0)
        amax = np.abs(b).max(-1, keepdims=True)
        d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
        return (d * np.rint(b * inv)).astype(np.float32).reshape(x.shape)
    if act == ACT_Q8_K:
        b = x.reshape(*x.shape[:-1], -1, QK_K)
        first = np.abs(b).argmax(-1)[..., None]
        mx = np.take_along_axis(b, first, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.float32(-127) / mx
            q = np.minimum(127, np.rint(b * iscale))
            out = np.where(mx != 0, (np.float32(1) / iscale) * q, np.float32(0))
        return out.astype(np.float32).reshape(x.shape)
    raise ValueError(f"unknown activation rounding {act}")
