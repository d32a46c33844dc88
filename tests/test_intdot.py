"""The integer row kernels, portable (kernels/intdot.py) and AVX2 (kernels/isa/x86_avx2.py), against the
NumPy oracle "dequantized weights . x rounded as llama.cpp rounds it", on random blocks and on
blocks at the edges of the 8- and 16-bit ranges the SIMD steps rely on (all-ones quants, the
largest scales, activations at +-127)."""
import numpy as np
import pytest
from numba import njit

from lfm2q.kernels import dispatch, intdot
from lfm2q.kernels.isa import x86_avx2 as avx2, x86_avx512 as avx512
from lfm2q.kernels.actquant import quantize_q8_0, quantize_q8_k
from lfm2q.kernels.dispatch import activations_np, dequantize
from lfm2q.kernels.formats import Q4_0, Q4_K, Q5_K, Q6_K, Q8_0, block_size
from lfm2q.kernels.repack import packed_q4_k8

TYPES = {Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K", Q8_0: "Q8_0", Q4_0: "Q4_0"}
FP16_FIELDS = {Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), Q8_0: (0,), Q4_0: (0,)}


@njit(error_model="numpy", fastmath=True)
def _portable(w, qtype, xq, xd, bsum, out):
    for r in range(w.shape[0]):
        if qtype == Q4_K:
            out[r] = intdot.idot_q4_k(w, r, xq, xd, bsum)
        elif qtype == Q5_K:
            out[r] = intdot.idot_q5_k(w, r, xq, xd, bsum)
        elif qtype == Q6_K:
            out[r] = intdot.idot_q6_k(w, r, xq, xd, bsum)
        elif qtype == Q4_0:
            out[r] = intdot.idot_q4_0(w, r, xq, xd)
        else:
            out[r] = intdot.idot_q8_0(w, r, xq, xd)


@njit(error_model="numpy", fastmath=False)  # as dispatch calls them: see isa/x86_avx2.py
def _avx2(w, qtype, xq, xd, bsum, out):
    for r in range(w.shape[0]):
        if qtype == Q4_K:
            out[r] = avx2.q4_k_row(w[r], xq, xd, bsum)
        elif qtype == Q5_K:
            out[r] = avx2.q5_k_row(w[r], xq, xd, bsum)
        elif qtype == Q6_K:
            out[r] = avx2.q6_k_row(w[r], xq, xd, bsum)
        elif qtype == Q4_0:
            out[r] = avx2.q4_0_row(w[r], xq, xd)
        else:
            out[r] = avx2.q8_0_row(w[r], xq, xd)


IMPLS = {"portable": _portable, "avx2": _avx2}


def run(impl, w, qtype, x):
    n = x.shape[0]
    xq = np.empty(n, np.int8)
    bsum = np.empty(n // 16, np.int16)
    if qtype in (Q8_0, Q4_0):
        xd = np.empty(n // 32, np.float32)
        quantize_q8_0(x, xq, xd)
    else:
        xd = np.empty(n // 256, np.float32)
        quantize_q8_k(x, xq, xd, bsum)
    out = np.full(w.shape[0], np.nan, np.float32)
    IMPLS[impl](w, qtype, xq, xd, bsum, out)
    return out


def weights(qtype, rows, cols, seed, fill=None):
    """uint8[rows, row_bytes]: random bytes (or every byte = fill) with sane fp16 scales."""
    rng = np.random.default_rng(seed)
    per, nbytes = block_size(qtype)
    raw = (rng.integers(0, 256, (rows, cols // per * nbytes), dtype=np.uint8) if fill is None
           else np.full((rows, cols // per * nbytes), fill, np.uint8))
    blocks = raw.reshape(rows, -1, nbytes)
    for o in FP16_FIELDS[qtype]:
        scale = rng.uniform(0.001, 0.02, blocks.shape[:2]).astype(np.float16)
        blocks[:, :, o:o + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    if qtype == Q8_0 and fill is None:  # ggml writes quants in -127..127, never -128
        q = blocks[:, :, 2:].view(np.int8)
        q[q == -128] = -127
    return raw


def oracle(w, qtype, x):  # -> (products summed in float64, the sum of their magnitudes)
    wf = dequantize(w, qtype).astype(np.float64)
    xr = activations_np(x, qtype).astype(np.float64)
    return wf @ xr, np.abs(wf) @ np.abs(xr)


def edge_vectors(n):
    ones = np.ones(n, np.float32)
    flipped = ones.copy()
    flipped[0] = -1.0                   # Q8_K maps the extreme (first largest) to -127: others +127
    rng = np.random.default_rng(n)
    return {"random": rng.standard_normal(n).astype(np.float32), "ones": ones, "flipped": flipped,
            "-ones": -ones}


def edge_weights(qtype, rows, cols):
    out = {"random": weights(qtype, rows, cols, seed=cols), "all-0xff": weights(qtype, rows, cols, 1, 0xFF),
           "all-0x00": weights(qtype, rows, cols, 2, 0x00)}
    if qtype == Q6_K:  # int8 scales at -128 with the largest and the smallest quants
        for name, w in list(out.items()):
            big = w.copy()
            big.reshape(rows, -1, 210)[:, :, 192:208] = 0x80
            out[name + ",scales=-128"] = big
    if qtype == Q8_0:  # quants at +-127
        w = weights(qtype, rows, cols, 3)
        q = w.reshape(rows, -1, 34)[:, :, 2:].view(np.int8)
        q[:] = np.where(np.arange(32) % 2, 127, -127)
        out["+-127"] = w
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_row_kernels_equal_the_oracle(impl, qtype):
    if impl == "avx2" and not avx2.HAVE_AVX2:
        pytest.skip("this CPU has no AVX2: the portable kernels are the ones in use")
    rows, cols = 37, 1024
    for wname, w in edge_weights(qtype, rows, cols).items():
        for xname, x in edge_vectors(cols).items():
            got = run(impl, w, qtype, x)
            ref, scale = oracle(w, qtype, x)
            err = np.abs(got - ref) / np.maximum(scale, 1e-30)
            assert err.max() <= 1e-6, (wname, xname, err.max())


@pytest.mark.skipif(not avx2.HAVE_AVX2, reason="this CPU has no AVX2")
@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_avx2_and_portable_kernels_agree(qtype):
    for cols in (256, 768, 4608):
        w = weights(qtype, 65, cols, seed=cols)
        x = np.random.default_rng(cols).standard_normal(cols).astype(np.float32)
        a, b = run("avx2", w, qtype, x), run("portable", w, qtype, x)
        _, scale = oracle(w, qtype, x)
        assert (np.abs(a - b) / scale).max() <= 1e-6


def test_nan_activations_reach_the_output():
    for qtype in TYPES:
        w = weights(qtype, 3, 512, seed=1)
        x = np.ones(512, np.float32)
        x[300] = np.nan
        for impl in IMPLS:
            if impl == "avx2" and not avx2.HAVE_AVX2:
                continue
            assert np.isnan(run(impl, w, qtype, x)).all(), (TYPES[qtype], impl)


def test_matvec_uses_the_avx2_kernels_where_the_cpu_has_them():
    from lfm2q.kernels.isa import ARCH, portable, x86

    assert (dispatch.simd is x86) == (ARCH == "x86_64" and avx2.HAVE_AVX2)
    if dispatch.simd is x86:
        assert dispatch.SIMD_PREFILL and dispatch.SIMD_PACKS_Q4_K
    if ARCH not in ("x86_64", "aarch64"):
        assert dispatch.simd is portable


@pytest.mark.skipif(not avx2.HAVE_AVX2, reason="this CPU has no AVX2: the portable kernels decode")
def test_q8_0_decode_in_row_pairs_gives_the_row_kernels_bits():
    # Large Q8_0 matrices decode two rows at a time (avx512.q8_0_row2; an odd last row alone).
    cols = 768
    for wname, w in edge_weights(Q8_0, 29, cols).items():
        for xname, x in edge_vectors(cols).items():
            xq, xd = np.empty(cols, np.int8), np.empty(cols // 32, np.float32)
            quantize_q8_0(x, xq, xd)
            out = np.full(29, np.nan, np.float32)
            dispatch._imatvec_b32_parallel(w, Q8_0, xq, xd, out)
            np.testing.assert_array_equal(out, run("avx2", w, Q8_0, x), err_msg=f"{wname} x {xname}")


@pytest.mark.skipif(not avx2.HAVE_AVX2, reason="this CPU has no AVX2: prefill multiplies through BLAS")
@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_prefill_kernel_gives_decodes_bits_for_every_position(qtype):
    # TOKENS positions per call, blocks of TOKEN_BLOCK, a tail of single positions, rows in
    # pairs (Q6_K and Q8_0 pairs 512 bits wide where the CPU has AVX-512 VNNI) and an odd last
    # row: every position's products are summed exactly as the decode kernel sums them.
    cols = 768
    for wname, w in edge_weights(qtype, 29, cols).items():
        for n in (1, dispatch.TOKENS + 1, dispatch.TOKEN_BLOCK + 3):
            x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
            x[-1, :] = np.where(np.arange(cols) % 3, 1.0, -1.0)  # Q8 activations at +-127
            out = np.full((n, 29), np.nan, np.float32)
            dispatch.matmul(w, qtype, x, out)
            np.testing.assert_array_equal(out, np.stack([run("avx2", w, qtype, x[t]) for t in range(n)]),
                                          err_msg=f"{wname} n={n}")


@pytest.mark.skipif(not avx2.HAVE_AVX2, reason="this CPU has no AVX2: Q4_K matrices stay unpacked")
def test_packed_q4_k_matrices_give_the_row_kernels_bits():
    # Decode and prefill over Q4_K rows packed 8 at a time (the load-time layout) against the
    # row kernel, at the 16-bit edge too (quants 15, scales 63, activations at -128 / +127).
    rows, cols, n = 24, 512, dispatch.TOKENS * 2 + 3
    code = Q4_K | dispatch.PACKED8
    for wname, w in edge_weights(Q4_K, rows, cols).items():
        p = packed_q4_k8(w)
        for xname, x1 in edge_vectors(cols).items():
            want = run("avx2", w, Q4_K, x1)
            got = np.full(rows, np.nan, np.float32)
            dispatch.matvec(p, code, x1, got)
            np.testing.assert_array_equal(got, want, err_msg=f"decode {wname} x {xname}")
            x = np.stack([x1 * (1 + t) for t in range(n)])
            out = np.full((n, rows), np.nan, np.float32)
            dispatch.matmul(p, code, x, out)
            np.testing.assert_array_equal(out, np.stack([run("avx2", w, Q4_K, r) for r in x]),
                                          err_msg=f"prefill {wname} x {xname}")


@pytest.mark.skipif(not avx512.HAVE_AVX512_VNNI, reason="no AVX-512 VNNI here: Q4_0 matrices stay in rows")
def test_packed_q4_0_matrices_give_the_row_kernels_bits():
    # x86_avx512.q4_0_packed: 4 rows a 512-bit vector (repack.pack_q4_0x16), weights unsigned
    # against x from -8 * its sums of 4; decode, prefill (TOKENS a call, then a tail), the
    # quants at 0 / 15 and activations at -127 / +127, against the AVX2 row kernel.
    from lfm2q.kernels.repack import unpack_q4_0x16_np
    assert dispatch.packable(Q4_0, 20) and not dispatch.packable(Q4_0, 18)
    assert dispatch.packed_code(Q4_0) == Q4_0 | dispatch.PACKED4
    rows, cols, n = 20, 512, dispatch.TOKENS * 2 + 3
    code = dispatch.packed_code(Q4_0)
    for wname, w in edge_weights(Q4_0, rows, cols).items():
        p = dispatch.pack(w, code)
        np.testing.assert_array_equal(unpack_q4_0x16_np(p), w)
        for xname, x1 in edge_vectors(cols).items():
            got = np.full(rows, np.nan, np.float32)
            dispatch.matvec(p, code, x1, got)
            np.testing.assert_array_equal(got, run("avx2", w, Q4_0, x1), err_msg=f"decode {wname} x {xname}")
            x = np.stack([x1 * (1 + t) for t in range(n)])
            out = np.full((n, rows), np.nan, np.float32)
            dispatch.matmul(p, code, x, out)
            np.testing.assert_array_equal(out, np.stack([run("avx2", w, Q4_0, r) for r in x]),
                                          err_msg=f"prefill {wname} x {xname}")
    x = np.ones(cols, np.float32)
    x[100] = np.nan
    got = np.zeros(rows, np.float32)
    dispatch.matvec(dispatch.pack(weights(Q4_0, rows, cols, seed=3), code), code, x, got)
    assert np.isnan(got).all()


_AVX2_ONLY = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from lfm2q.kernels.isa import x86_avx2 as avx2, x86_avx512 as avx512
from test_intdot import wide_kernel_outputs
assert avx2.HAVE_AVX2 and not avx512.HAVE_AVX512_VNNI
np.savez(sys.argv[2], *wide_kernel_outputs())
"""


def wide_kernel_outputs():
    """Prefill through each kernel avx512.py widens: packed Q4_K (5 groups: 2 pairs and an odd
    one), Q6_K (41 rows: 20 pairs and an odd one), Q8_0 and Q4_0 (43 rows: 10 quads, then a pair
    (Q8_0) or rows one by one, and an odd one); 15 positions (3 calls of TOKENS, or for Q8_0 quads one of QUAD_TOKENS and one of
    TOKENS, then a tail of 3); and Q8_0 decode in row pairs."""
    assert avx512.QUAD_TOKENS == 8 and dispatch.TOKENS == 4
    x = np.random.default_rng(5).standard_normal((15, 512)).astype(np.float32)
    outs = []
    for qtype, rows in ((Q4_K, 40), (Q6_K, 41), (Q8_0, 43), (Q4_0, 43)):
        w = weights(qtype, rows, 512, seed=5)
        out = np.full((15, rows), np.nan, np.float32)
        if qtype == Q4_K:
            dispatch.matmul(packed_q4_k8(w), Q4_K | dispatch.PACKED8, x, out)
        else:
            dispatch.matmul(w, qtype, x, out)
        np.testing.assert_array_equal(out, np.stack([run("avx2", w, qtype, r) for r in x]))
        outs.append(out)
        if qtype == Q8_0:  # decode in row pairs
            xq, xd = np.empty(512, np.int8), np.empty(16, np.float32)
            quantize_q8_0(x[0], xq, xd)
            one = np.full(rows, np.nan, np.float32)
            dispatch._imatvec_b32_parallel(w, Q8_0, xq, xd, one)
            np.testing.assert_array_equal(one, run("avx2", w, qtype, x[0]))
            outs.append(one)
    return outs


@pytest.mark.skipif(not avx512.HAVE_AVX512_VNNI, reason="no AVX-512 VNNI here: the tests above run the AVX2 path")
def test_wide_prefill_kernels_give_the_same_bits_with_and_without_avx512(tmp_path):
    # The kernels of avx512.py compiled for a CPU with AVX2 only (numba told so: each falls
    # back to 256-bit steps row by row) against their 512-bit form in this process; both
    # against the decode kernel.
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+f16c,+popcnt,+sse4.1,+sse4.2,+ssse3,+bmi,+bmi2")
    subprocess.run([sys.executable, "-c", _AVX2_ONLY, str(Path(__file__).parent), str(tmp_path / "o.npz")],
                   env=env, check=True)
    avx2_only = np.load(tmp_path / "o.npz")
    for i, out in enumerate(wide_kernel_outputs()):
        np.testing.assert_array_equal(avx2_only[f"arr_{i}"], out)


def test_packing_keeps_every_byte_of_the_q4_k_rows():
    from lfm2q.kernels.repack import P_BYTES
    w = weights(Q4_K, 16, 768, seed=9)
    p = packed_q4_k8(w).reshape(2, 3, P_BYTES)  # [group, super-block, packed bytes]
    b = w.reshape(2, 8, 3, 144)            # [group, row, super-block, block bytes]
    qs = p[:, :, :1024].reshape(2, 3, 4, 8, 8, 4)  # [group, k, chunk c, dword g, row r, byte]
    np.testing.assert_array_equal(qs.transpose(0, 4, 1, 2, 3, 5).reshape(2, 8, 3, 128), b[..., 16:])
    np.testing.assert_array_equal(p[:, :, 1152:1168].reshape(2, 3, 8, 2).transpose(0, 2, 1, 3), b[..., 0:2])
    np.testing.assert_array_equal(p[:, :, 1168:1184].reshape(2, 3, 8, 2).transpose(0, 2, 1, 3), b[..., 2:4])
    from lfm2q.kernels.kquants import _scales_mins
    sc, mn = _scales_mins(b.reshape(16, 3, 144)[:, :, 4:16])  # f32[rows, nb, 8, 1]
    sc = sc[..., 0].reshape(2, 8, 3, 8)
    mn = mn[..., 0].reshape(2, 8, 3, 8)
    np.testing.assert_array_equal(p[:, :, 1024:1088].reshape(2, 3, 8, 8).transpose(0, 3, 1, 2), sc)
    pairs = p[:, :, 1088:1152].reshape(2, 3, 4, 8, 2).transpose(0, 3, 1, 2, 4).reshape(2, 8, 3, 8)
    np.testing.assert_array_equal(pairs, mn)
