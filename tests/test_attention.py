"""blocks.attend (causal GQA attention over the KV cache) against NumPy's float64 softmax
attention: f32, fp16 and Q8_0 caches, decode and prefill, a sliding window, and scores spread
more than 87 apart (the exp's full range); and the rows blocks.qkv_to_cache stores, against
gguf-py's Q8_0 quantizer for the Q8_0 cache."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from lfm2q import blocks
from lfm2q.kernels.isa.x86_avx512 import HAVE_AVX512_VNNI

NO_SCALES = np.zeros((0, 0, 0), np.float32)


def q8_0_blocks(x):
    """x f32[..., HD] -> (int8 quants [..., HD], f32 scales [..., HD/32]) as gguf-py stores Q8_0."""
    raw = quants.quantize(x.reshape(-1, x.shape[-1]), GGMLQuantizationType.Q8_0).reshape(-1, 34)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32).reshape(*x.shape[:-1], -1)
    return raw[:, 2:].copy().view(np.int8).reshape(x.shape), d


def as_cache(x, cache):
    """x f32[KVH, n_ctx, HD] -> (stored array, scales, the values it holds as f32)."""
    if cache == "f32":
        return x, NO_SCALES, x
    if cache == "f16":
        h = x.astype(np.float16)
        return h.view(np.uint16), NO_SCALES, h.astype(np.float32)
    qs, d = q8_0_blocks(x)
    return qs, d, qs.astype(np.float32) * np.repeat(d, 32, axis=-1)


def q_as_scored(q, cache, HD):
    """The query rows as the K products see them: with a Q8_0 cache, 64-wide heads and AVX-512
    VNNI (integer K products, kernels/kscores.py) each head rounded to Q8_0 blocks, as
    llama.cpp rounds them for its Q8_0 K cache; otherwise q itself."""
    if cache != "q8_0" or HD != 64 or not HAVE_AVX512_VNNI:
        return q
    qs, d = q8_0_blocks(q.reshape(-1, HD))
    return (qs.astype(np.float32) * np.repeat(d, 32, axis=-1)).reshape(q.shape)


def attention_np(q, k, v, p0, window, q_scored=None):
    """q f32[n, H*HD]; k, v f32[KVH, n_ctx, HD] -> f32[n, H*HD], in float64 (scores from
    q_scored where given)."""
    q = q if q_scored is None else q_scored
    KVH, _, HD = k.shape
    n, H = q.shape[0], q.shape[1] // HD
    out = np.zeros((n, H * HD))
    for t in range(n):
        n_kv = p0 + t + 1
        first = 0 if window <= 0 else max(0, n_kv - window)
        for h in range(H):
            g = h // (H // KVH)
            s = k[g, first:n_kv].astype(np.float64) @ q[t, h * HD:(h + 1) * HD] / np.sqrt(HD)
            p = np.exp(s - s.max())
            out[t, h * HD:(h + 1) * HD] = p / p.sum() @ v[g, first:n_kv]
    return out


@pytest.mark.parametrize("cache", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("n, p0, window, spread, HD", [(1, 300, 0, 1.0, 64), (7, 40, 0, 1.0, 64),
                                                      (5, 100, 32, 1.0, 64), (3, 50, 0, 40.0, 64),
                                                      (4, 60, 0, 1.0, 32)])  # LFM2's 64, and another
def test_attend_matches_float64_attention(cache, n, p0, window, spread, HD):
    rng = np.random.default_rng(n + p0)
    H, KVH, n_ctx = 8, 2, 512
    q = (rng.standard_normal((n, H * HD)) * spread).astype(np.float32)
    k = rng.standard_normal((KVH, n_ctx, HD)).astype(np.float32)
    v = rng.standard_normal((KVH, n_ctx, HD)).astype(np.float32)
    (kc, ks, k), (vc, vs, v) = as_cache(k, cache), as_cache(v, cache)
    for c, scales in ((kc, ks), (vc, vs)):  # rows past the last query hold NaN: never read
        if cache == "q8_0":
            scales[:, p0 + n:] = np.nan
        else:
            c[:, p0 + n:] = np.float32(np.nan).astype(c.dtype) if cache == "f32" else np.float16(np.nan).view(np.uint16)
    out = np.full((n, H * HD), np.nan, np.float32)
    blocks.attend(q, kc, ks, vc, vs, p0, window, out)
    if HD == 64:  # the copy compiled for 64-wide heads (the model's head64) gives the same bits
        out64 = np.full_like(out, np.nan)
        blocks.attend(q, kc, ks, vc, vs, p0, window, out64, True)
        np.testing.assert_array_equal(out64, out)
    want = attention_np(q, k, v, p0, window, q_as_scored(q, cache, HD))
    assert np.isfinite(want).all()
    if spread > 1:  # some scores more than 87 below the largest: exp's underflow range is used
        s = k[0, :p0 + 1] @ q[0, :HD] / np.sqrt(HD)
        assert s.max() - s.min() > 87
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("cache", ["f32", "f16", "q8_0"])
def test_qkv_to_cache_stores_k_and_v_rows_as_the_cache_type_holds_them(cache):
    rng = np.random.default_rng(5)
    H, KVH, HD, n, p0, n_ctx = 4, 2, 64, 3, 5, 16
    q = rng.standard_normal((n, H * HD)).astype(np.float32)
    k = rng.standard_normal((n, KVH * HD)).astype(np.float32)
    v = (rng.standard_normal((n, KVH * HD)) * 3).astype(np.float32)
    v[1, :32] = 0.0  # an all-zero block: scale 0, quants 0
    ones, inv_freq = np.ones(HD, np.float32), (10000.0 ** (-np.arange(HD // 2) * 2 / HD)).astype(np.float32)
    kc, ks, _ = as_cache(np.zeros((KVH, n_ctx, HD), np.float32), cache)
    vc, vs, _ = as_cache(np.zeros((KVH, n_ctx, HD), np.float32), cache)
    kc, ks, vc, vs = kc.copy(), ks.copy(), vc.copy(), vs.copy()
    k_rot = k.copy()
    blocks.qkv_to_cache(q, k_rot, v.copy(), H, ones, ones, 1e-5, p0, inv_freq, kc, ks, vc, vs)
    for cached, scales, rows in ((kc, ks, k_rot), (vc, vs, v)):  # k_rot: k normed and rotated in place
        want, want_scales, _ = as_cache(rows.reshape(n, KVH, HD).transpose(1, 0, 2), cache)
        assert np.array_equal(cached[:, p0:p0 + n], want)
        assert np.array_equal(scales[:, p0:p0 + n], want_scales[:, :n] if cache == "q8_0" else NO_SCALES)
        assert not cached[:, :p0].any() and not cached[:, p0 + n:].any()


@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_dots8_gives_eight_scaled_dot_products(scale):
    from lfm2q.kernels.dots import dots8_hd64
    from numba import njit

    @njit
    def call(qh, rows, s, col, scale):
        dots8_hd64(qh, rows, s, col, scale)

    rng = np.random.default_rng(3)
    qh = rng.standard_normal(64).astype(np.float32)
    rows = rng.standard_normal((8, 64)).astype(np.float32)
    rows[3] = 0.0
    rows[5] *= 1e4
    s = np.full(24, -1.0, np.float32)
    call(qh, rows, s, 8, np.float32(scale))
    want = rows.astype(np.float64) @ qh * scale
    assert (s[:8] == -1).all() and (s[16:] == -1).all()  # only s[col:col+8] written
    assert s[8 + 3] == 0.0
    np.testing.assert_allclose(s[8:16], want, rtol=0, atol=1e-6 * np.abs(rows).sum(1).max() * np.abs(qh).max())


@pytest.mark.skipif(not HAVE_AVX512_VNNI, reason="the integer K products need AVX-512 VNNI")
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_integer_k_scores_are_exact_sums_with_fixed_float_steps(scale):
    # idots8_q8_0_hd64 against NumPy: the block sums of int8 products exactly (extremes
    # included: -128 keys against +-127 queries), then per key
    # ((dk0 * dq0) * isum0 + (dk1 * dq1) * isum1) * scale in f32, bit for bit.
    from lfm2q.kernels.kscores import idots8_q8_0_hd64
    from numba import njit

    @njit
    def call(qq, qd, qc, qi, kc, ks, g, j0, s, col, scale):
        idots8_q8_0_hd64(qq, qd, qc, qi, kc, ks, g, j0, s, col, scale)

    rng = np.random.default_rng(7)
    kc = rng.integers(-128, 128, (2, 20, 64)).astype(np.int8)  # [KV head, position, 64]
    kh = kc[1]
    kh[5] = -128
    kh[6, :32], kh[6, 32:] = 127, -128
    ks = rng.uniform(1e-3, 2, (2, 20, 2)).astype(np.float32)
    kd = ks[1]
    qq = rng.integers(-127, 128, (3, 64)).astype(np.int8)  # [query head, 64]
    qq[2, :32] = 127
    qd = rng.uniform(1e-3, 1, (3, 2)).astype(np.float32)
    qc = (128 * qq.astype(np.int32).reshape(3, 2, 32).sum(-1)).astype(np.int32)
    s = np.full((3, 24), -1.0, np.float32)
    j0, qi = 3, 2
    call(qq, qd, qc, qi, kc, ks, 1, j0, s, 8, np.float32(scale))
    isum = (kh[j0:j0 + 8].astype(np.int64).reshape(8, 2, 32) * qq[qi].astype(np.int64).reshape(2, 32)).sum(-1)
    assert np.abs(isum).max() < 2**31
    part = isum.astype(np.float32) * (kd[j0:j0 + 8] * qd[qi])
    want = (part[:, 0] + part[:, 1]) * np.float32(scale)
    assert (s[:qi] == -1).all() and (s[qi, :8] == -1).all() and (s[qi, 16:] == -1).all()  # only s[qi, 8:16]
    assert np.array_equal(s[qi, 8:16], want)
