"""K-quants: the engine's kernels on Q4_K/Q5_K/Q6_K bytes, and the converter's quantizers
(Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) against llama.cpp's bytes.

gguf-py dequantizes K-quants but cannot write them, so kernel inputs here are seeded random
blocks (any bytes are a valid K-quant block once its fp16 scales are finite). The quantizers are
checked against tests/data/golden/kquants.npz, made by tests/golden/make_golden.py from
llama.cpp's own ggml-quants.c; `-m llamacpp` redoes that live when LFM2Q_GGML_LIB or
LFM2Q_GGML_DIR is set.
"""
import ctypes
import hashlib
import importlib.util
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from numba import njit

from lfm2q.convert.kquants import (fp32_to_fp16, quantize_q4_0, quantize_q4_k, quantize_q5_0, quantize_q5_1,
                                   quantize_q5_k, quantize_q6_k)
from lfm2q.errors import ConvertError
from lfm2q.kernels import EXACT, dequant_rows, dequantize, matmul, matvec
from lfm2q.kernels.dispatch import activations_np
from lfm2q.kernels import dispatch as dispatch_module
from lfm2q.kernels.formats import Q4_0, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, block_size

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
@pytest.mark.parametrize("exact", [False, True], ids=["llama-rounding", "exact"])
def test_matvec_equals_dequantize_then_dot(qtype, rows, cols, exact):
    # Default: x rounded as llama.cpp rounds it for this type (the NumPy oracle of that
    # rounding), then the product; exact: f32 x.
    raw = random_blocks(qtype, rows, cols, seed=cols)
    x = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
    code = qtype | (EXACT if exact else 0)
    ref = dequantize(raw, qtype).astype(np.float64) @ activations_np(x, code).astype(np.float64)
    out = np.full(rows, np.nan, np.float32)
    matvec(raw, code, x, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("qtype", KTYPES, ids=KTYPES.values())
@pytest.mark.parametrize("n", [1, 5, 33])
@pytest.mark.parametrize("exact", [False, True], ids=["llama-rounding", "exact"])
def test_matmul_equals_dequantize_then_matmul(qtype, n, exact, monkeypatch):
    rows, cols = 301, 512
    monkeypatch.setattr(dispatch_module, "TILE_BYTES", 64 * cols * 4)  # force several tiles
    raw = random_blocks(qtype, rows, cols, seed=n)
    x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
    code = qtype | (EXACT if exact else 0)
    ref = activations_np(x, code).astype(np.float64) @ dequantize(raw, qtype).astype(np.float64).T
    out = np.full((n, rows), np.nan, np.float32)
    matmul(raw, code, x, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("qtype", KTYPES, ids=KTYPES.values())
def test_dequant_rows_is_an_exact_row_lookup(qtype):
    raw = random_blocks(qtype, 50, 512, seed=7)
    ids = np.array([0, 49, 3, 3, 17], np.int64)
    out = np.empty((ids.shape[0], 512), np.float32)
    dequant_rows(raw, qtype, ids, out)
    np.testing.assert_array_equal(out, dequantize(raw, qtype)[ids])


# --- quantizers: byte-exact against llama.cpp -----------------------------------------------------

def _load_make_golden():
    path = Path(__file__).parent / "golden" / "make_golden.py"
    spec = importlib.util.spec_from_file_location("make_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _load_make_golden()
QUANTIZERS = {"q4_0": quantize_q4_0, "q5_0": quantize_q5_0, "q5_1": quantize_q5_1, "q4_K": quantize_q4_k, "q5_K": quantize_q5_k, "q6_K": quantize_q6_k}
QTYPE_OF = {"q4_0": Q4_0, "q5_0": Q5_0, "q5_1": Q5_1, "q4_K": Q4_K, "q5_K": Q5_K, "q6_K": Q6_K}


@pytest.fixture(scope="module")
def golden():
    data = np.load(make_golden.GOLDEN)
    x = make_golden.make_inputs(int(data["seed"]), *map(int, data["shape"]))
    digest = np.frombuffer(hashlib.sha256(x.tobytes()).digest(), np.uint8)
    assert np.array_equal(digest, data["inputs_sha256"]), \
        "make_inputs() no longer reproduces the golden inputs (NumPy's random stream changed?)"
    return x, data


@pytest.mark.parametrize("kind", QUANTIZERS)
def test_quantizer_writes_llamacpp_bytes(kind, golden):
    x, data = golden
    ours = QUANTIZERS[kind](x, name="golden")
    full = data[f"{kind}_full"]
    bad_rows = np.flatnonzero((ours[:full.shape[0]] != full).any(axis=1))
    assert bad_rows.size == 0, f"{kind}: rows {bad_rows[:10].tolist()} differ from llama.cpp"
    chunks = make_golden.sha256_rows(ours, int(data["chunk_rows"]))
    bad_chunks = np.flatnonzero((chunks != data[f"{kind}_sha256"]).any(axis=1))
    assert bad_chunks.size == 0, f"{kind}: row chunks {bad_chunks[:10].tolist()} differ from llama.cpp"


@pytest.mark.llamacpp
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_quantizer_against_live_llamacpp(kind, tmp_path):
    """LFM2Q_GGML_LIB=<libggml-base.so> or LFM2Q_GGML_DIR=<llama.cpp/ggml>: fresh inputs, all bytes."""
    lib_path = os.environ.get("LFM2Q_GGML_LIB")
    if not lib_path:
        ggml_dir = os.environ.get("LFM2Q_GGML_DIR")
        if not ggml_dir:
            pytest.skip("set LFM2Q_GGML_LIB or LFM2Q_GGML_DIR")
        lib_path = make_golden.build_ggml_lib(Path(ggml_dir), tmp_path)
    lib = ctypes.CDLL(str(lib_path))
    for seed in (1, 2, 3):
        x = make_golden.make_inputs(seed, 400, 2048)
        expected = make_golden.ggml_quantize(lib, kind, x)
        bad_rows = np.flatnonzero((QUANTIZERS[kind](x) != expected).any(axis=1))
        assert bad_rows.size == 0, f"{kind} seed {seed}: rows {bad_rows[:10].tolist()} differ"


def test_q4_0_equals_gguf_py():
    # gguf-py's Q4_0 quantizer transcribes the same reference: a second, independent witness.
    # Not on blocks of -0.0 only: there ggml keeps its initial max = +0.0 and stores d = -0.0,
    # while gguf-py picks max = -0.0 and stores +0.0 (the golden rows pin ggml's choice).
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((200, 512)) * 10.0 ** rng.uniform(-6, 3, (200, 1))).astype(np.float32)
    x[::7] = rng.integers(-8, 8, (29, 512))  # ties at .5 after the + 8.5
    expected = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0).view(np.uint8).reshape(200, -1)
    np.testing.assert_array_equal(quantize_q4_0(x), expected)


@pytest.mark.parametrize("kind", QUANTIZERS)
def test_quantize_then_dequantize_is_close(kind):
    x = np.random.default_rng(3).standard_normal((20, 512)).astype(np.float32)
    back = dequantize(QUANTIZERS[kind](x), QTYPE_OF[kind])
    rel = np.sqrt(((back - x) ** 2).mean() / (x ** 2).mean())
    assert rel < {"q4_0": 0.12, "q5_0": 0.06, "q5_1": 0.05, "q4_K": 0.1, "q5_K": 0.05, "q6_K": 0.025}[kind]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_non_finite_input_names_the_tensor(kind, bad):
    x = np.ones((2, 256), np.float32)
    x[1, 7] = bad
    with pytest.raises(ConvertError, match="blk.3.ffn_down.weight"):
        QUANTIZERS[kind](x, name="blk.3.ffn_down.weight")


def test_rows_that_do_not_split_into_blocks_are_refused():
    with pytest.raises(ConvertError, match="token_embd.weight"):
        quantize_q4_k(np.ones((2, 320), np.float32), name="token_embd.weight")


def test_fp32_to_fp16_is_round_to_nearest_even():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    f = bits.view(np.float32)
    f = np.concatenate([f[np.isfinite(f)], np.float32([0.0, -0.0, 65504.0, 65520.0, 65519.99, 2.0**-24,
                                                       2.0**-25, 1.5 * 2.0**-25, 2.0**-14, 1e-8])])
    ours = _fp16_bits(f)
    with np.errstate(over="ignore"):
        expected = f.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(ours, expected)


@njit
def _fp16_bits(f):
    out = np.empty(f.shape[0], np.uint16)
    for i in range(f.shape[0]):
        out[i] = fp32_to_fp16(f[i])
    return out
