"""isa/portable.py: the interface every instruction set's backend offers, in plain loops. Its
multi-row, multi-position and packed forms must give each row's own product (intdot.py's,
tested against the NumPy oracle in test_intdot.py), so that a backend may implement any of
them and fall back to these for the rest."""
import numpy as np
import pytest

from lfm2q.kernels.actquant import quantize_q8_0, quantize_q8_k
from lfm2q.kernels.dispatch import dequantize
from lfm2q.kernels.formats import Q4_0, Q4_K, Q5_K, Q6_K, Q8_0
from lfm2q.kernels.isa import portable as P
from lfm2q.kernels.isa.llvm_ir import TOKENS
from lfm2q.kernels.repack import (packed, packed_q4_k8, pair_positions_q8_0, pair_positions_q8_k, twin_chunks_q8_0,
                                  twin_sums_q8_k)
from test_intdot import edge_weights, oracle

ROW = {Q4_K: P.q4_k_row, Q5_K: P.q5_k_row, Q6_K: P.q6_k_row, Q8_0: P.q8_0_row, Q4_0: P.q4_0_row}
ROWS = {Q4_K: P.q4_k_rows, Q5_K: P.q5_k_rows, Q6_K: P.q6_k_rows, Q8_0: P.q8_0_rows, Q4_0: P.q4_0_rows}
NAMES = {Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K", Q8_0: "Q8_0", Q4_0: "Q4_0"}
KQUANT = (Q4_K, Q5_K, Q6_K)


def activations(qtype, x):  # f32[n, cols] -> (xq, xd, bsum) as the kernels take them
    n, cols = x.shape
    xq = np.empty((n, cols), np.int8)
    bsum = np.zeros((n, cols // 16), np.int16)
    if qtype in KQUANT:
        xd = np.empty((n, cols // 256), np.float32)
        for t in range(n):
            quantize_q8_k(x[t], xq[t], xd[t], bsum[t])
    else:
        xd = np.empty((n, cols // 32), np.float32)
        for t in range(n):
            quantize_q8_0(x[t], xq[t], xd[t])
    return xq, xd, bsum


def row_products(qtype, w, xq, xd, bsum):  # out f32[n, rows] through the 1-D row kernel
    out = np.empty((xq.shape[0], w.shape[0]), np.float32)
    for t in range(xq.shape[0]):
        for r in range(w.shape[0]):
            args = (xq[t], xd[t], bsum[t]) if qtype in KQUANT else (xq[t], xd[t])
            out[t, r] = ROW[qtype](w[r], *args)
    return out


@pytest.mark.parametrize("qtype", NAMES, ids=NAMES.values())
def test_row_kernels_equal_the_oracle_and_multi_position_forms_equal_them(qtype):
    cols, rows, n = 512, 6, 2 * TOKENS
    x = np.random.default_rng(5).standard_normal((n, cols)).astype(np.float32)
    xq, xd, bsum = activations(qtype, x)
    for name, w in edge_weights(qtype, rows, cols).items():
        want = row_products(qtype, w, xq, xd, bsum)
        ref, scale = oracle(w, qtype, x[0])
        assert (np.abs(want[0] - ref) / np.maximum(scale, 1e-30)).max() <= 1e-6, name
        for r in range(rows):
            args = (xq, xd, bsum) if qtype in KQUANT else (xq, xd)
            got = ROWS[qtype](w[r], *args, TOKENS)
            np.testing.assert_array_equal(np.array(got, np.float32), want[TOKENS:2 * TOKENS, r], err_msg=name)


def _close(got, want, scale, name):  # the same integers; intdot's float steps may fuse differently
    assert np.isfinite(got).all(), name
    assert (np.abs(got - want) / np.maximum(scale, 1e-30)).max() <= 1e-6, name


def test_pairs_and_quads_give_each_rows_product():
    cols, rows = 512, 8
    for qtype in (Q6_K, Q8_0):
        x = np.random.default_rng(qtype).standard_normal((2 * TOKENS, cols)).astype(np.float32)
        xq, xd, bsum = activations(qtype, x)
        for name, w in edge_weights(qtype, rows, cols).items():
            want = row_products(qtype, w, xq, xd, bsum)
            scale = np.abs(dequantize(w, qtype)).astype(np.float64).sum(axis=1) * np.abs(x).max() * 2
            out = np.full_like(want, np.nan)
            for r in range(0, rows, 2):
                if qtype == Q6_K:
                    P.q6_k_rows2(w, r, xq, xd, bsum, 0, out)
                    P.q6_k_rows2(w, r, xq, xd, bsum, TOKENS, out)
                else:
                    P.q8_0_rows2(w, r, xq, xd, 0, out)
                    P.q8_0_rows2(w, r, xq, xd, TOKENS, out)
            _close(out, want, scale, name)
            if qtype == Q8_0:
                quad = np.full_like(want, np.nan)
                for r in range(0, rows, 4):
                    P.q8_0_rows4(w, r, xq, xd, 0, quad)
                _close(quad, want, scale, name)
                dec = np.full(rows, np.nan, np.float32)
                for r in range(0, rows, 2):
                    P.q8_0_row2(w, r, xq[0], xd[0], dec)
                _close(dec, want[0], scale, name)


def test_packed_q4_k_groups_give_each_rows_product():
    cols, rows, n = 512, 32, TOKENS
    x = np.random.default_rng(9).standard_normal((n, cols)).astype(np.float32)
    xq, xd, bsum = activations(Q4_K, x)
    b2 = bsum.reshape(n, -1, 2).astype(np.int32)
    bs32 = (b2[:, :, 0] + b2[:, :, 1]).astype(np.int16)
    for name, w in edge_weights(Q4_K, rows, cols).items():
        want = row_products(Q4_K, w, xq, xd, bsum)
        p = packed_q4_k8(w)
        _, scale = oracle(w, Q4_K, x[0])
        dec = np.full(rows, np.nan, np.float32)
        for gi in range(rows // 8):
            P.q4_k_packed(p, gi, xq[0], xd[0], bs32[0], dec)
        # the same integers; the float steps of intdot's row kernel (which may fuse them)
        assert (np.abs(dec - want[0]) / np.maximum(scale, 1e-30)).max() <= 1e-6, name
        out = np.full((n, rows), np.nan, np.float32)
        for gi in range(0, rows // 8, 2):
            P.q4_k_packed16_rows(p, gi, xq, xd, bs32, 0, out)
        np.testing.assert_array_equal(out[0], dec, err_msg=name)
        assert np.isfinite(out).all()


def test_packed_q4_0_groups_give_each_rows_product():
    # 3 groups of 4 rows, 7 blocks: the same integers as the row kernel (idot_q4_0), its float
    # steps without fastmath (the row kernel's may fuse); the 4-position form gives decode's bits.
    cols, rows, n = 224, 12, TOKENS
    x = np.random.default_rng(10).standard_normal((n, cols)).astype(np.float32)
    xq, xd, bsum = activations(Q4_0, x)
    for name, w in edge_weights(Q4_0, rows, cols).items():
        want = row_products(Q4_0, w, xq, xd, bsum)
        p = packed(w, Q4_0)
        _, scale = oracle(w, Q4_0, x[0])
        dec = np.full(rows, np.nan, np.float32)
        for gi in range(rows // 4):
            P.q4_0_packed(p, gi, xq[0], xd[0], dec)
        _close(dec, want[0], scale, name)
        out = np.full((n, rows), np.nan, np.float32)
        for gi in range(rows // 4):
            P.q4_0_packed_rows(p, gi, xq, xd, 0, out)
        np.testing.assert_array_equal(out[0], dec, err_msg=name)
        assert np.isfinite(out).all()


def test_q4_0_4x8_groups_give_the_4x4_groups_bits():
    # The 8-byte-chunk layout (i8mm's) and its prompt form over the paired positions
    # (repack.pair_positions_q8_0): the same sums and steps as the 4x4 layout's kernels, so
    # the same bits; 3 groups, 7 blocks, 8 positions (4 pairs: two calls).
    cols, rows, n = 224, 12, 2 * TOKENS
    x = np.random.default_rng(12).standard_normal((n, cols)).astype(np.float32)
    xq, xd, _ = activations(Q4_0, x)
    xi, xdi = pair_positions_q8_0(xq, xd)
    for name, w in edge_weights(Q4_0, rows, cols).items():
        p4, p8 = packed(w, Q4_0), packed(w, Q4_0, chunk=8)
        want = np.full((n, rows), np.nan, np.float32)
        for t in range(n):
            for gi in range(rows // 4):
                P.q4_0_packed(p4, gi, xq[t], xd[t], want[t])
        dec = np.full(rows, np.nan, np.float32)
        xt = np.empty(2 * cols, np.int8)
        twin_chunks_q8_0(xq[3], xt)
        for gi in range(rows // 4):
            P.q4_0_4x8_packed(p8, gi, xt, xd[3], dec)
        np.testing.assert_array_equal(dec, want[3], err_msg=name)
        out = np.full((n, rows), np.nan, np.float32)
        for t in range(0, n, TOKENS):
            for gi in range(rows // 4):
                P.q4_0_4x8_mmla_rows(p8, gi, xi, xdi, t, out)
        np.testing.assert_array_equal(out, want, err_msg=name)


def test_q4_k_8x8_groups_give_the_packed_groups_bits():
    # The Q4_K layout in 8-byte chunks (i8mm's) through decode (its activations paired with
    # themselves) and the 4- and 8-position prompt forms over the paired positions
    # (repack.pair_positions_q8_k): the same sums and steps as the 4-byte-chunk layout's
    # kernel, so the same bits; 3 groups, 2 super-blocks, 12 positions (an 8 and a 4 call).
    cols, rows, n = 512, 24, 3 * TOKENS
    x = np.random.default_rng(13).standard_normal((n, cols)).astype(np.float32)
    xq, xd, bsum = activations(Q4_K, x)
    bs32 = bsum.reshape(n, -1, 2).astype(np.int32).sum(axis=2).astype(np.int16)
    xi, xdi, bsi = pair_positions_q8_k(xq, xd, bs32)
    for name, w in edge_weights(Q4_K, rows, cols).items():
        p4, p8 = packed_q4_k8(w), packed_q4_k8(w, chunk=8)
        want = np.full((n, rows), np.nan, np.float32)
        for t in range(n):
            for gi in range(rows // 8):
                P.q4_k_packed(p4, gi, xq[t], xd[t], bs32[t], want[t])
        dec = np.full(rows, np.nan, np.float32)
        xt, bt = np.empty(2 * cols, np.int8), np.empty(cols // 8, np.int8)
        twin_chunks_q8_0(xq[5], xt)
        twin_sums_q8_k(bs32[5], bt)
        for gi in range(rows // 8):
            P.q4_k_8x8_packed(p8, gi, xt, xd[5], bt, dec)
        np.testing.assert_array_equal(dec, want[5], err_msg=name)
        out = np.full((n, rows), np.nan, np.float32)
        for gi in range(rows // 8):
            P.q4_k_8x8_mmla_rows8(p8, gi, xi, xdi, bsi, 0, out)
            P.q4_k_8x8_mmla_rows(p8, gi, xi, xdi, bsi, 2 * TOKENS, out)
        np.testing.assert_array_equal(out, want, err_msg=name)
