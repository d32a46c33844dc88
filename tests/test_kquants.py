"""K-quants: the engine's kernels on Q4_K/Q5_K/Q6_K bytes, and the converter's quantizers.

gguf-py dequantizes K-quants but cannot write them, so kernel inputs here are seeded random
blocks (any bytes are a valid K-quant block once its fp16 scales are finite).
"""
import gguf
import numpy as np
import pytest

from lfm2q.kernels import dequant_rows, dequantize, matmul, matvec
from lfm2q.kernels import dispatch as dispatch_module
from lfm2q.kernels.formats import Q4_K, Q5_K, Q6_K, block_size

KTYPES = {Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}
FP16_FIELDS = {Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,)}  # byte offsets of fp16 scales in a block
SHAPES = [(1, 256), (3, 512), (67, 768), (257, 1280), (300, 2048)]


def random_blocks(qtype, rows, cols, seed):
    """uint8[rows, row_bytes]: random quants and packed scales, small random fp16 super-scales."""
    rng = np.random.default_rng(seed)
    _, nbytes = block_size(qtype)
    raw = rng.integers(0, 256, (rows, cols // 256 * nbytes), dtype=np.uint8)
    blocks = raw.reshape(rows, -1, nbytes)
    for o in FP16_FIELDS[qtype]:
        scale = rng.uniform(-0.02, 0.02, blocks.shape[:2]).astype(np.float16)
        blocks[:, :, o:o + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return raw


# --- kernels -----------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", KTYPES, ids=KTYPES.values())
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_numpy_dequantizer_equals_gguf_py(qtype, rows, cols):
    raw = random_blocks(qtype, rows, cols, seed=rows)
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(qtype)).reshape(rows, cols)
    np.testing.assert_array_equal(dequantize(raw, qtype), expected)


@pytest.mark.parametrize("qtype", KTYPES, ids=KTYPES.values())
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_matvec_equals_dequantize_then_dot(qtype, rows, cols):
    raw = random_blocks(qtype, rows, cols, seed=cols)
    x = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
    ref = dequantize(raw, qtype).astype(np.float64) @ x.astype(np.float64)
    out = np.full(rows, np.nan, np.float32)
    matvec(raw, qtype, x, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("qtype", KTYPES, ids=KTYPES.values())
@pytest.mark.parametrize("n", [1, 5, 33])
def test_matmul_equals_dequantize_then_matmul(qtype, n, monkeypatch):
    rows, cols = 301, 512
    monkeypatch.setattr(dispatch_module, "TILE_BYTES", 64 * cols * 4)  # force several tiles
    raw = random_blocks(qtype, rows, cols, seed=n)
    x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
    ref = x.astype(np.float64) @ dequantize(raw, qtype).astype(np.float64).T
    out = np.full((n, rows), np.nan, np.float32)
    matmul(raw, qtype, x, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("qtype", KTYPES, ids=KTYPES.values())
def test_dequant_rows_is_an_exact_row_lookup(qtype):
    raw = random_blocks(qtype, 50, 512, seed=7)
    ids = np.array([0, 49, 3, 3, 17], np.int64)
    out = np.empty((ids.shape[0], 512), np.float32)
    dequant_rows(raw, qtype, ids, out)
    np.testing.assert_array_equal(out, dequantize(raw, qtype)[ids])
