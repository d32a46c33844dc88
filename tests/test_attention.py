"""blocks.attend (causal GQA attention over the KV cache) against NumPy's float64 softmax
attention: f32 and fp16 caches, decode and prefill, a sliding window, and scores spread
more than 87 apart (the exp's full range)."""
import numpy as np
import pytest

from lfm2q import blocks


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


@pytest.mark.parametrize("cache", ["f32", "f16"])
@pytest.mark.parametrize("n, p0, window, spread, HD", [(1, 300, 0, 1.0, 64), (7, 40, 0, 1.0, 64),
                                                      (5, 100, 32, 1.0, 64), (3, 50, 0, 40.0, 64),
                                                      (4, 60, 0, 1.0, 32)])  # LFM2's 64, and another
def test_attend_matches_float64_attention(cache, n, p0, window, spread, HD):
    rng = np.random.default_rng(n + p0)
    H, KVH, n_ctx = 8, 2, 512
    q = (rng.standard_normal((n, H * HD)) * spread).astype(np.float32)
    k = rng.standard_normal((KVH, n_ctx, HD)).astype(np.float32)
    v = rng.standard_normal((KVH, n_ctx, HD)).astype(np.float32)
    if cache == "f16":
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
        kc, vc = k.astype(np.float16).view(np.uint16), v.astype(np.float16).view(np.uint16)
    else:
        kc, vc = k, v
    out = np.full((n, H * HD), np.nan, np.float32)
    blocks.attend(q, kc, vc, p0, window, out)
    want = attention_np(q, k, v, p0, window)
    if spread > 1:  # some scores more than 87 below the largest: exp's underflow range is used
        s = k[0, :p0 + 1] @ q[0, :HD] / np.sqrt(HD)
        assert s.max() - s.min() > 87
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-5 * np.abs(want).max())
