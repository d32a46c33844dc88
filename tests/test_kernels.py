"""Each numba kernel against its NumPy twin, and the NumPy twins against gguf-py.

Shapes are awkward on purpose: row counts that don't divide the thread count or the prefill
tile, row lengths that are not multiples of 16 (floats), single rows and single positions.
"""
import gguf
import numpy as np
import pytest

from lfm2q.kernels import EXACT, BF16, F16, F32, Q8_0, dequant_rows, dequantize, matmul, matvec
from lfm2q.kernels.formats import Q4_0, Q4_1, Q5_0, Q5_1
from lfm2q.kernels.actquant import quantize_q8_1
from lfm2q.kernels.dispatch import activations_np
from lfm2q.kernels import dispatch as matmul_module

TYPES = {F32: "F32", F16: "F16", BF16: "BF16", Q8_0: "Q8_0",
         Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1"}  # K-quants: tests/test_kquants.py
SHAPES = [(1, 32), (3, 64), (67, 96), (257, 160), (1000, 1024)]


def random_weight(qtype, rows, cols, seed):
    """Raw GGUF bytes of a random matrix, quantized by gguf-py (an independent writer)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 3.0, (rows, 1)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType(qtype))
    return np.ascontiguousarray(raw.view(np.uint8).reshape(rows, -1))


def q8_1_shift(raw, code, x):
    """What Q8_1's fp16 block sums add to the float-form products (f64[..., rows]): the integer
    kernels of Q4_1 / Q5_1 multiply the min by them, as llama.cpp does; the float form by the
    exact sums of the rounded x. Zero for the other codes and where those types run in float."""
    qtype = code & 255
    if code & EXACT or qtype not in (Q4_1, Q5_1) or not matmul_module.Q4_1_Q5_INTEGER:
        return 0.0
    nbytes = {Q4_1: 20, Q5_1: 24}[qtype]
    m = raw.reshape(raw.shape[0], -1, nbytes)[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    shift = []
    for xr in np.atleast_2d(x):
        xq, xd, xs = np.empty(xr.shape[0], np.int8), np.empty(xr.shape[0] // 32, np.float32), np.empty(xr.shape[0] // 32, np.float32)
        quantize_q8_1(xr, xq, xd, xs)
        exact = xd.astype(np.float64) * xq.reshape(-1, 32).sum(-1)
        shift.append(m @ (xs.astype(np.float64) - exact))
    return np.stack(shift).reshape(*x.shape[:-1], raw.shape[0])


@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_numpy_dequantizer_equals_gguf_py(qtype, rows, cols):
    raw = random_weight(qtype, rows, cols, seed=rows)
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(qtype)).reshape(rows, cols)
    np.testing.assert_array_equal(dequantize(raw, qtype), expected)


@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("exact", [False, True], ids=["llama-rounding", "exact"])
def test_matvec_equals_dequantize_then_dot(qtype, rows, cols, exact):
    # Default: x rounded as llama.cpp rounds it for this type (the NumPy oracle of that
    # rounding), then the product; exact: f32 x.
    raw = random_weight(qtype, rows, cols, seed=cols)
    x = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
    code = qtype | (EXACT if exact else 0)
    ref = dequantize(raw, qtype).astype(np.float64) @ activations_np(x, code).astype(np.float64)
    ref += q8_1_shift(raw, code, x)
    out = np.full(rows, np.nan, np.float32)
    matvec(raw, code, x, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
@pytest.mark.parametrize("n", [1, 5, 33])
@pytest.mark.parametrize("exact", [False, True], ids=["llama-rounding", "exact"])
def test_matmul_equals_dequantize_then_matmul(qtype, n, exact, monkeypatch):
    rows, cols = 301, 96
    monkeypatch.setattr(matmul_module, "TILE_BYTES", 64 * cols * 4)  # force several tiles and workers
    raw = random_weight(qtype, rows, cols, seed=n)
    x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
    code = qtype | (EXACT if exact else 0)
    ref = activations_np(x, code).astype(np.float64) @ dequantize(raw, qtype).astype(np.float64).T
    ref += q8_1_shift(raw, code, x)
    out = np.full((n, rows), np.nan, np.float32)
    matmul(raw, code, x, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_dequant_rows_is_an_exact_row_lookup(qtype):
    raw = random_weight(qtype, 50, 64, seed=7)
    ids = np.array([0, 49, 3, 3, 17], np.int64)
    out = np.empty((ids.shape[0], 64), np.float32)
    dequant_rows(raw, qtype, ids, out)
    np.testing.assert_array_equal(out, dequantize(raw, qtype)[ids])


def test_q8_0_extremes_dequantize_exactly():
    # zero rows, constant rows, one outlier, tiny magnitudes: the scale path must hold up.
    rows = np.zeros((4, 64), np.float32)
    rows[1] = 0.25
    rows[2, 5] = 1e4
    rows[3] = np.linspace(-1e-6, 1e-6, 64)
    raw = np.ascontiguousarray(gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q8_0).view(np.uint8))
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
    out = np.empty_like(expected)
    dequant_rows(raw, Q8_0, np.arange(4, dtype=np.int64), out)
    np.testing.assert_array_equal(out, expected)
