"""The integer kernels of Q5_0 (x in Q8_0), Q4_1 and Q5_1 (x in Q8_1): the AVX2 rows
(isa/x86_avx2.py) bit for bit against a NumPy transcription of ggml's AVX2 vec_dot steps, the
portable twins (isa/portable.py over intdot.py) within rounding of it; prefill equal to
decode, through dispatch; Q8_1's block sums against their definition; NaN activations
reaching every output."""
import numpy as np
import pytest
from numba import njit

from lfm2q.kernels import dispatch
from lfm2q.kernels.actquant import quantize_q8_0, quantize_q8_1
from lfm2q.kernels.dispatch import activations_np, dequantize
from lfm2q.kernels.formats import Q4_1, Q5_0, Q5_1, block_size
from lfm2q.kernels.isa import portable as P
from lfm2q.kernels.isa import x86_avx2 as avx2, x86_avx512 as avx512
from lfm2q.kernels.isa.llvm_ir import TOKENS

TYPES = {Q5_0: "Q5_0", Q4_1: "Q4_1", Q5_1: "Q5_1"}
WITH_MIN = (Q4_1, Q5_1)
# byte offsets in a block: (d, m or None, qh or None, qs)
LAYOUT = {Q5_0: (0, None, 2, 6), Q4_1: (0, 2, None, 4), Q5_1: (0, 2, 4, 8)}
on_x86 = pytest.mark.skipif(not avx2.HAVE_AVX2, reason="this CPU has no AVX2: these types decode in float")


def weights(qtype, rows, cols, seed, fill=None):
    """uint8[rows, row_bytes]: random bytes (or every byte = fill) with sane fp16 d and m."""
    rng = np.random.default_rng(seed)
    nbytes = block_size(qtype)[1]
    shape = (rows, cols // 32 * nbytes)
    raw = rng.integers(0, 256, shape, dtype=np.uint8) if fill is None else np.full(shape, fill, np.uint8)
    b = raw.reshape(rows, -1, nbytes)
    d_at, m_at, _, _ = LAYOUT[qtype]
    b[:, :, d_at:d_at + 2] = rng.uniform(0.001, 0.02, b.shape[:2]).astype(np.float16).view(np.uint8).reshape(*b.shape[:2], 2)
    if m_at is not None:
        b[:, :, m_at:m_at + 2] = rng.uniform(-0.2, 0.2, b.shape[:2]).astype(np.float16).view(np.uint8).reshape(*b.shape[:2], 2)
    return raw


def edge_weights(qtype, rows, cols):
    return {"random": weights(qtype, rows, cols, cols), "all-0xff": weights(qtype, rows, cols, 1, 0xFF),
            "all-0x00": weights(qtype, rows, cols, 2, 0x00)}


def edge_vectors(n):
    rng = np.random.default_rng(n)
    ones = np.ones(n, np.float32)
    return {"random": rng.standard_normal(n).astype(np.float32), "ones": ones, "-ones": -ones,
            "+-1": np.where(np.arange(n) % 3, 1.0, -1.0).astype(np.float32),  # quants at +-127
            "wide": (rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, n))).astype(np.float32)}


def q8(qtype, x):  # x f32[cols] -> (xq, xd, xs) as the kernels take them
    n = x.shape[0]
    xq, xd, xs = np.empty(n, np.int8), np.empty(n // 32, np.float32), np.empty(n // 32, np.float32)
    quantize_q8_1(x, xq, xd, xs)
    return xq, xd, xs


# --- the oracle: ggml's AVX2 steps (arch/x86/quants.c) in NumPy --------------------------------

def _fp16(b):  # uint8[..., 2] -> f32[...]
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def quants(w, qtype):  # -> int32[rows, nb, 32] as the kernels multiply them, d f32[rows, nb], m or None
    d_at, m_at, qh_at, qs_at = LAYOUT[qtype]
    b = w.reshape(w.shape[0], -1, block_size(qtype)[1])
    qs = b[:, :, qs_at:qs_at + 16].astype(np.int32)
    q = np.concatenate([qs & 15, qs >> 4], axis=-1)
    if qh_at is not None:
        q |= np.unpackbits(b[:, :, qh_at:qh_at + 4], axis=-1, bitorder="little").astype(np.int32) << 4
    if qtype == Q5_0:
        q -= 16
    return q, _fp16(b[:, :, d_at:d_at + 2]), None if m_at is None else _fp16(b[:, :, m_at:m_at + 2])


def fma32(a, b, c):
    """f32 a * b + c with one rounding, for a * b exact in float64 (here b is an int below 2^15):
    the float64 sum, corrected where it sits on an f32 midpoint that its error leaves."""
    with np.errstate(all="ignore"):
        p = a.astype(np.float64) * b.astype(np.float64)
        c64 = c.astype(np.float64)
        s = p + c64
        bb = s - p
        e = (p - (s - bb)) + (c64 - bb)  # TwoSum: s + e is the exact sum
        r = s.astype(np.float32)
        r64 = r.astype(np.float64)
        other = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)))
        tie = (s == (r64 + other.astype(np.float64)) / 2) & (e != 0) & ((e > 0) == (other > r))
        return np.where(tie, other, r)


def ggml_order(w, qtype, xq, xd, xs):
    """f32[rows]: ggml_vec_dot_<type>_q8_<0|1> as its AVX2 code computes it. Per block, 8 int32
    lanes of 4 products each (vpmaddubsw + vpmaddwd), d_w * d_x (f32) fused into 8 f32 lanes;
    hsum_float_8; for Q4_1 / Q5_1 plus the scalar sum of m * s over the blocks."""
    q, d_w, m_w = quants(w, qtype)
    lanes = (q * xq.reshape(-1, 32).astype(np.int32)).reshape(q.shape[0], q.shape[1], 8, 4).sum(-1)
    d = d_w * xd[None, :]
    acc = np.zeros((q.shape[0], 8), np.float32)
    for k in range(q.shape[1]):
        acc = fma32(d[:, k, None], lanes[:, k, :], acc)
    with np.errstate(all="ignore"):
        h = acc[:, 0:4] + acc[:, 4:8]
        h = h[:, 0:2] + h[:, 2:4]
        out = h[:, 0] + h[:, 1]
        if m_w is not None:
            summs = np.zeros(q.shape[0], np.float32)
            for k in range(q.shape[1]):
                summs = summs + m_w[:, k] * xs[k]
            out = out + summs
    return out


@njit(error_model="numpy", fastmath=False)  # as dispatch calls them: see isa/x86_avx2.py
def _x86_rows(w, qtype, xq, xd, xs, out):
    for r in range(w.shape[0]):
        if qtype == Q5_0:
            out[r] = avx2.q5_0_row(w[r], xq, xd)
        elif qtype == Q4_1:
            out[r] = avx2.q4_1_row(w[r], xq, xd, xs)
        else:
            out[r] = avx2.q5_1_row(w[r], xq, xd, xs)


def x86_rows(w, qtype, xq, xd, xs):
    out = np.full(w.shape[0], np.nan, np.float32)
    _x86_rows(w, qtype, xq, xd, xs, out)
    return out


def portable_rows(w, qtype, xq, xd, xs):
    if qtype == Q5_0:
        return np.array([P.q5_0_row(w[r], xq, xd) for r in range(w.shape[0])], np.float32)
    f = P.q4_1_row if qtype == Q4_1 else P.q5_1_row
    return np.array([f(w[r], xq, xd, xs) for r in range(w.shape[0])], np.float32)


def magnitudes(w, qtype, x):  # sum of |products| per row: the scale of rounding differences
    return np.abs(dequantize(w, qtype)).astype(np.float64) @ np.abs(activations_np(x, qtype)).astype(np.float64)


# --- tests --------------------------------------------------------------------------------------

def test_q8_1_sums_are_fp16_of_the_unrounded_scale_times_the_quant_sum():
    x = np.concatenate([v for v in edge_vectors(256).values()])
    x[:32] = 3000  # s = 4064 * 3000/127 overflows fp16: inf, as in ggml
    x[32:64] = 0
    xq, xd, xs = q8(Q4_1, x)
    xq0, xd0 = np.empty_like(xq), np.empty_like(xd)
    quantize_q8_0(x, xq0, xd0)
    np.testing.assert_array_equal(xq, xq0)
    np.testing.assert_array_equal(xd, xd0)
    b = x.reshape(-1, 32)
    want = ((np.abs(b).max(-1) / np.float32(127)) * xq.reshape(-1, 32).sum(-1).astype(np.float32))
    with np.errstate(over="ignore"):
        want = want.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(xs, want)
    assert np.isinf(xs[0]) and xs[1] == 0
    x[40] = np.nan
    assert np.isnan(q8(Q4_1, x)[2][1])


def test_the_oracle_is_the_dequantized_product():
    # ggml's steps are the products of the dequantized weights with x rounded to Q8_0 (the
    # min term taking Q8_1's fp16 sums): the oracle itself checked, in float64
    for qtype in TYPES:
        w, x = weights(qtype, 9, 512, seed=3), edge_vectors(512)["random"]
        xq, xd, xs = q8(qtype, x)
        wf = dequantize(w, qtype).astype(np.float64)
        ref = wf @ activations_np(x, qtype).astype(np.float64)
        _, _, m = quants(w, qtype)
        if m is not None:  # swap the exact block sums of the float form for Q8_1's fp16 ones
            exact = (xd * xq.reshape(-1, 32).sum(-1)).astype(np.float64)
            ref += m.astype(np.float64) @ (xs.astype(np.float64) - exact)
        assert (np.abs(ggml_order(w, qtype, xq, xd, xs) - ref) / magnitudes(w, qtype, x)).max() <= 1e-6, TYPES[qtype]


@on_x86
@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_x86_row_kernels_compute_ggmls_avx2_steps_bit_for_bit(qtype):
    for cols in (32, 1024):
        for wname, w in edge_weights(qtype, 13, cols).items():
            for xname, x in edge_vectors(cols).items():
                xq, xd, xs = q8(qtype, x)
                np.testing.assert_array_equal(x86_rows(w, qtype, xq, xd, xs), ggml_order(w, qtype, xq, xd, xs),
                                              err_msg=f"{TYPES[qtype]} {cols} {wname} x {xname}")


@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_portable_twins_are_the_same_integers_and_their_4_position_form_their_bits(qtype):
    cols, n = 512, 2 * TOKENS
    x = np.random.default_rng(7).standard_normal((n, cols)).astype(np.float32)
    xq, xd, xs = (np.stack(a) for a in zip(*(q8(qtype, r) for r in x)))
    for wname, w in edge_weights(qtype, 6, cols).items():
        want = np.stack([portable_rows(w, qtype, xq[t], xd[t], xs[t]) for t in range(n)])
        for t in range(n):
            ref = ggml_order(w, qtype, xq[t], xd[t], xs[t])
            assert (np.abs(want[t] - ref) / magnitudes(w, qtype, x[t])).max() <= 1e-6, wname
        for r in range(w.shape[0]):
            got = (P.q5_0_rows(w[r], xq, xd, TOKENS) if qtype == Q5_0 else
                   (P.q4_1_rows if qtype == Q4_1 else P.q5_1_rows)(w[r], xq, xd, xs, TOKENS))
            np.testing.assert_array_equal(np.array(got, np.float32), want[TOKENS:, r], err_msg=wname)


@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_portable_quads_give_each_rows_product(qtype):
    cols, rows, n = 256, 8, 2 * TOKENS
    x = np.random.default_rng(8).standard_normal((n, cols)).astype(np.float32)
    xq, xd, xs = (np.stack(a) for a in zip(*(q8(qtype, r) for r in x)))
    for wname, w in edge_weights(qtype, rows, cols).items():
        want = np.stack([portable_rows(w, qtype, xq[t], xd[t], xs[t]) for t in range(n)])
        out = np.full_like(want, np.nan)
        for r in range(0, rows, 4):
            if qtype == Q5_0:
                P.q5_0_rows4(w, r, xq, xd, 0, out)
            else:
                (P.q4_1_rows4 if qtype == Q4_1 else P.q5_1_rows4)(w, r, xq, xd, xs, 0, out)
        scale = np.stack([magnitudes(w, qtype, r) for r in x])
        assert np.isfinite(out).all() and (np.abs(out - want) / scale).max() <= 1e-6, wname  # intdot may fuse per caller


@on_x86
@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_decode_through_dispatch_is_the_row_kernel_serial_and_parallel(qtype):
    assert dispatch.integer_prefill(qtype) and not dispatch.integer_prefill(qtype | dispatch.EXACT)
    assert dispatch.kernel_name(qtype).startswith("integer rows x Q8_" + ("0" if qtype == Q5_0 else "1"))
    cols = 1024
    for rows in (7, 600):  # under and over PARALLEL_MIN_BYTES
        w = weights(qtype, rows, cols, seed=rows)
        assert (w.nbytes < dispatch.PARALLEL_MIN_BYTES) == (rows == 7)
        for xname, x in edge_vectors(cols).items():
            out = np.full(rows, np.nan, np.float32)
            dispatch.matvec(w, qtype, x, out)
            np.testing.assert_array_equal(out, ggml_order(w, qtype, *q8(qtype, x)), err_msg=f"{rows} {xname}")


@on_x86
@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_prefill_gives_decodes_bits_for_every_position(qtype):
    # TOKENS positions per call, blocks of TOKEN_BLOCK, a tail of single positions, an odd
    # last group of rows
    cols, rows = 768, 29
    for wname, w in edge_weights(qtype, rows, cols).items():
        for n in (1, TOKENS + 1, dispatch.TOKEN_BLOCK + 3):
            x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
            x[-1] = edge_vectors(cols)["+-1"]
            out = np.full((n, rows), np.nan, np.float32)
            dispatch.matmul(w, qtype, x, out)
            want = np.stack([ggml_order(w, qtype, *q8(qtype, r)) for r in x])
            np.testing.assert_array_equal(out, want, err_msg=f"{wname} n={n}")


def test_nan_activations_reach_every_output():
    cols = 512
    x = np.ones(cols, np.float32)
    x[300] = np.nan
    for qtype in TYPES:
        w = weights(qtype, 3, cols, seed=1)
        xq, xd, xs = q8(qtype, x)
        assert np.isnan(portable_rows(w, qtype, xq, xd, xs)).all(), TYPES[qtype]
        out = np.zeros(3, np.float32)
        dispatch.matvec(w, qtype, x, out)
        assert np.isnan(out).all(), TYPES[qtype]
        pre = np.zeros((TOKENS + 1, 3), np.float32)
        dispatch.matmul(w, qtype, np.stack([x] * (TOKENS + 1)), pre)
        assert np.isnan(pre).all(), TYPES[qtype]
        if avx2.HAVE_AVX2:
            assert np.isnan(x86_rows(w, qtype, xq, xd, xs)).all(), TYPES[qtype]


_AVX2_ONLY = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from lfm2q.kernels.isa import x86_avx2 as avx2, x86_avx512 as avx512
from test_intdot_b32 import quad_outputs
assert avx2.HAVE_AVX2 and not avx2.HAVE_VNNI and not avx512.HAVE_AVX512_VNNI
np.savez(sys.argv[2], *quad_outputs())
"""


def quad_outputs():
    """Prefill of 43 rows (10 quads and 3 single rows) at 15 positions (one call of
    QUAD_TOKENS, one of TOKENS, a tail of 3) per type, checked against the oracle."""
    from lfm2q.kernels.isa.x86_avx512 import QUAD_TOKENS
    assert QUAD_TOKENS == 8 and TOKENS == 4
    x = np.random.default_rng(5).standard_normal((15, 512)).astype(np.float32)
    outs = []
    for qtype in TYPES:
        w = weights(qtype, 43, 512, seed=5)
        out = np.full((15, 43), np.nan, np.float32)
        dispatch.matmul(w, qtype, x, out)
        np.testing.assert_array_equal(out, np.stack([ggml_order(w, qtype, *q8(qtype, r)) for r in x]))
        outs.append(out)
    return outs


@pytest.mark.skipif(not avx512.HAVE_AVX512_VNNI, reason="no AVX-512 VNNI here: the tests above run the AVX2 path")
def test_quads_give_the_same_bits_with_and_without_avx512(tmp_path):
    # The quads compiled for a CPU with AVX2 only (numba told so: vpmaddubsw + vpmaddwd row by
    # row) against their 512-bit vpdpbusd form in this process; both against the oracle.
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+f16c,+popcnt,+sse4.1,+sse4.2,+ssse3,+bmi,+bmi2")
    subprocess.run([sys.executable, "-c", _AVX2_ONLY, str(Path(__file__).parent), str(tmp_path / "o.npz")],
                   env=env, check=True)
    avx2_only = np.load(tmp_path / "o.npz")
    for i, out in enumerate(quad_outputs()):
        np.testing.assert_array_equal(avx2_only[f"arr_{i}"], out)
