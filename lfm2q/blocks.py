"""The LFM2 blocks as numba kernels (DESIGN.md §2), for one token (decode) and for a chunk of
prompt positions (prefill).

Decode makes one call per block: norm, projections, the block's own arithmetic, the output
projection and the residual add all happen inside it, so Python is touched ~3 times per
layer, not once per matrix. A weight arrives as (raw bytes, ggml type), see kernels/.

Dimension legend: see `Lfm2Config` (D, H, KVH, HD, FF, L); n = positions in a chunk.
"""
import math

import numpy as np
from numba import njit, prange

from .kernels.dispatch import matvec


@njit(error_model="numpy", cache=True)
def rmsnorm(x, w, eps, out):  # x f32[D], w f32[D] -> out f32[D]
    # ggml's rms_norm operation by operation (f32 squares summed in f64, f32 mean and sqrt,
    # then x * scale and * w as two roundings): its output feeds llama.cpp's 8-bit rounding of
    # the next matmul's input, where one ulp of difference can flip a quant.
    ss = 0.0
    for i in range(x.shape[0]):
        ss += np.float64(x[i] * x[i])
    mean = np.float32(ss / x.shape[0])
    inv = np.float32(1.0) / np.float32(math.sqrt(mean + np.float32(eps)))
    for i in range(x.shape[0]):
        out[i] = np.float32(x[i] * inv) * w[i]


@njit(error_model="numpy", parallel=True, fastmath=True, cache=True)
def rmsnorm_rows(x, w, eps, out):  # x f32[n, D] -> out f32[n, D]
    for t in prange(x.shape[0]):
        rmsnorm(x[t], w, eps, out[t])


@njit(error_model="numpy", fastmath=True, cache=True)
def silu_mul(g, u):  # g, u f32[..] -> g = silu(g) * u, in place
    gf = g.reshape(-1)
    uf = u.reshape(-1)
    for i in range(gf.shape[0]):
        gf[i] = gf[i] / (np.float32(1.0) + np.exp(-gf[i])) * uf[i]


# --- short convolution --------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def shortconv_mix(bcx, conv_w, state, y):
    """The gated causal depthwise convolution over a run of positions.

    bcx f32[n, 3D] = in_proj output (B | C | x), conv_w f32[D, L], state f32[L-1, D] (the
    last L-1 values of B*x before this run; updated), y f32[n, D] = C * conv(B * x).
    conv_w[:, L-1] weighs the current position, conv_w[:, 0] the oldest.
    """
    n = bcx.shape[0]
    D, L = conv_w.shape
    for t in range(n):
        for c in range(D):
            bx = bcx[t, c] * bcx[t, 2 * D + c]
            acc = conv_w[c, L - 1] * bx
            for k in range(L - 1):
                acc += conv_w[c, k] * state[k, c]
            for k in range(L - 2):
                state[k, c] = state[k + 1, c]
            if L > 1:
                state[L - 2, c] = bx
            y[t, c] = bcx[t, D + c] * acc


@njit(error_model="numpy", fastmath=True, cache=True)
def shortconv_decode(x, norm_w, eps, in_w, in_t, conv_w, state, out_w, out_t, h, bcx, y, o):
    """x f32[D] += out_proj(C * conv(B * x')) with x' = rmsnorm(x); bcx f32[1, 3D], y f32[1, D]."""
    rmsnorm(x, norm_w, eps, h)
    matvec(in_w, in_t, h, bcx[0])
    shortconv_mix(bcx, conv_w, state, y)
    matvec(out_w, out_t, y[0], o)
    x += o


# --- attention ----------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def norm_rope_heads(v, n_heads, hd, w, eps, pos, inv_freq, tmp):
    """Per-head RMSNorm then NEOX rotary embedding, in place on v f32[n_heads * hd] at `pos`.

    NEOX pairs element i with i + hd/2 (rotate_half), not neighbours.
    """
    half = hd // 2
    for h in range(n_heads):
        head = v[h * hd:(h + 1) * hd]
        rmsnorm(head, w, eps, tmp)
        for i in range(half):
            ang = pos * inv_freq[i]
            c = np.float32(math.cos(ang))
            s = np.float32(math.sin(ang))
            a = tmp[i]
            b = tmp[i + half]
            head[i] = a * c - b * s
            head[i + half] = b * c + a * s


@njit(error_model="numpy", parallel=True, fastmath=True, cache=True)
def attend(q, kc, vc, p0, window, out):
    """Causal attention of n queries at positions p0..p0+n-1 over the cache.

    q f32[n, H*HD] (normed, rotated), kc/vc f32[KVH, n_ctx, HD] holding positions
    0..p0+n-1, window 0 or the sliding-window size -> out f32[n, H*HD].
    """
    n = q.shape[0]
    KVH, _, HD = kc.shape
    H = q.shape[1] // HD
    group = H // KVH
    scale = np.float32(1.0 / math.sqrt(HD))
    for job in prange(n * H):
        t = job // H
        h = job % H
        kvh = h // group
        n_kv = p0 + t + 1
        first = 0 if window <= 0 else max(0, n_kv - window)
        qh = q[t, h * HD:(h + 1) * HD]
        scores = np.empty(n_kv - first, np.float32)
        m = np.float32(-np.inf)
        for j in range(first, n_kv):
            s = np.float32(0.0)
            for d in range(HD):
                s += qh[d] * kc[kvh, j, d]
            s *= scale
            scores[j - first] = s
            m = max(m, s)
        total = np.float32(0.0)
        for j in range(scores.shape[0]):
            e = np.exp(scores[j] - m)
            scores[j] = e
            total += e
        oh = out[t, h * HD:(h + 1) * HD]
        oh[:] = 0.0
        for j in range(first, n_kv):
            p = scores[j - first] / total
            for d in range(HD):
                oh[d] += p * vc[kvh, j, d]


@njit(error_model="numpy", fastmath=True, cache=True)
def qkv_to_cache(q, k, v, n_head, qn_w, kn_w, eps, p0, inv_freq, kc, vc, tmp):
    """Norm and rotate q, k rows for positions p0.. and store k, v in the caches.

    q f32[n, H*HD], k/v f32[n, KVH*HD]; kc/vc f32[KVH, n_ctx, HD].
    """
    KVH, _, HD = kc.shape
    for t in range(q.shape[0]):
        pos = p0 + t
        norm_rope_heads(q[t], n_head, HD, qn_w, eps, pos, inv_freq, tmp)
        norm_rope_heads(k[t], KVH, HD, kn_w, eps, pos, inv_freq, tmp)
        for g in range(KVH):
            kc[g, pos, :] = k[t, g * HD:(g + 1) * HD]
            vc[g, pos, :] = v[t, g * HD:(g + 1) * HD]


@njit(error_model="numpy", fastmath=True, cache=True)
def attention_decode(x, norm_w, eps, wq, tq, wk, tk, wv, tv, wo, to, qn_w, kn_w, n_head,
                     kc, vc, pos, window, inv_freq, h, q, k, v, att, o, tmp):
    """x f32[D] += attn_output(attention(x')) for the token at `pos`; q/att f32[1, H*HD],
    k/v f32[1, KVH*HD]."""
    rmsnorm(x, norm_w, eps, h)
    matvec(wq, tq, h, q[0])
    matvec(wk, tk, h, k[0])
    matvec(wv, tv, h, v[0])
    qkv_to_cache(q, k, v, n_head, qn_w, kn_w, eps, pos, inv_freq, kc, vc, tmp)
    attend(q, kc, vc, pos, window, att)
    matvec(wo, to, att[0], o)
    x += o


# --- feed-forward -------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def ffn_decode(x, norm_w, eps, wg, tg, wu, tu, wd, td, h, g, u, o):
    """x f32[D] += ffn_down(silu(ffn_gate(x')) * ffn_up(x')), x' = rmsnorm(x); g/u f32[FF]."""
    rmsnorm(x, norm_w, eps, h)
    matvec(wg, tg, h, g)
    matvec(wu, tu, h, u)
    silu_mul(g, u)
    matvec(wd, td, g, o)
    x += o
