"""blocks.attend (causal GQA attention over the KV cache) against NumPy's float64 softmax
attention: f32, fp16 and Q8_0 caches, decode and prefill, a sliding window, and scores spread
more than 87 apart (the exp's full range); and the rows blocks.qkv_to_cache stores, against
gguf-py's Q8_0 quantizer for the Q8_0 cache."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from lfm2q import blocks

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


def attention_np(q, k, v, p0, window):
    """q f32[n, H*HD]; k, v f32[KVH, n_ctx, HD] -> f32[n, H*HD], in float64."""
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
    want = attention_np(q, k, v, p0, window)
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
