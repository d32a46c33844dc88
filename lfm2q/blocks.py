"""The LFM2 blocks as numba kernels (docs/lfm2-facts.md §2), for one token (decode) and for a chunk of
prompt positions (prefill).

Decode makes one call per block: norm, projections, the block's own arithmetic, the output
projection and the residual add all happen inside it, so Python is touched ~3 times per
layer, not once per matrix. A weight arrives as (raw bytes, ggml type), see kernels/.

Dimension legend: see `Lfm2Config` (D, H, KVH, HD, FF, L); n = positions in a chunk.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .kernels.dispatch import ALL_KINDS, PARALLEL_MIN_BYTES, matvec
from .kernels.actquant import QK8_0
from .kernels.kscores import KB, k_block, k_scores, quantize_query
from .kernels.kvrows import load_block, store_row

# --- llama.cpp's float arithmetic -------------------------------------------------------------
# llama.cpp rounds each matrix's input to 8 bits (kernels/actquant.py), so an input one ulp
# off can flip a quant and the conv/attention state carries that on. The element-wise ops
# below therefore follow ggml's CPU code (x86 AVX2+FMA build) operation by operation, fused
# multiply-adds included, where that costs little. They set fastmath=False explicitly: numba
# lets a callee without its own fastmath setting inherit the caller's, and the first compiled
# (and cached) version of a signature is then shared by every caller.

F32 = np.float32


@intrinsic
def fma32(typingctx, a, b, c):  # f32 a*b + c rounded once (llvm.fma, vfmadd on x86)
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f], ir.FunctionType(f, [f, f, f]))
        return builder.call(fn, args)
    return sig, codegen


@intrinsic
def _f32_bits(typingctx, a):  # f32 -> its bits as u32
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, a):  # u32 bits -> f32
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


# ggml_v_expf's constants (a minimax exp after ARM's optimized-routines: 2^n * (1 + poly(b)))
_SHIFT = F32(float.fromhex("0x1.8p23"))
_LOG2E = F32(float.fromhex("0x1.715476p+0"))
_LN2_HI = F32(float.fromhex("0x1.62e4p-1"))
_LN2_LO = F32(float.fromhex("0x1.7f7d1cp-20"))
_C1 = F32(float.fromhex("0x1.ffffecp-1"))
_C2 = F32(float.fromhex("0x1.fffdb6p-2"))
_C3 = F32(float.fromhex("0x1.555e66p-3"))
_C4 = F32(float.fromhex("0x1.573e2ep-5"))
_C5 = F32(float.fromhex("0x1.0e4020p-7"))


@njit(error_model="numpy", fastmath=False, cache=True)
def _expf_parts(x):  # -> (n, j, k, e): x = n*ln2 + b, exp(x) = k * (1 + j) with k = 2^n
    z = fma32(x, _LOG2E, _SHIFT)          # n + shift: the shift rounds x*log2(e) to an integer
    n = z - _SHIFT
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))   # x - n*ln2 in two parts
    e = _f32_bits(z) << np.uint32(23)     # 2^n as exponent bits
    k = _bits_f32(e + np.uint32(0x3F800000))
    u = b * b
    j = fma32(fma32(fma32(_C5, b, _C4), u, fma32(_C3, b, _C2)), u, _C1 * b)
    return n, j, k, e


@njit(error_model="numpy", fastmath=False, cache=True)
def ggml_expf(x):  # f32 -> f32: one lane of ggml_v_expf (AVX2), ~1.5 ulp, bit for bit
    n, j, k, e = _expf_parts(x)
    # |n| > 126: 2^n split in two factors so neither over/underflows on its own; > 192:
    # the result is 0 or inf.
    an = abs(n)
    g = np.uint32(0x82000000) if n <= F32(0.0) else np.uint32(0)
    s1 = _bits_f32(g + np.uint32(0x7F000000))
    s2 = _bits_f32(e - g)
    big = s1 * s1 if an > F32(192.0) else fma32(s2, j, s2) * s1
    return big if an > F32(126.0) else fma32(j, k, k)


@njit(error_model="numpy", fastmath=False, cache=True)
def ggml_expf_small(x):  # ggml_expf for |x| <= 87 (then |n| <= 126): the last line alone
    n, j, k, e = _expf_parts(x)
    return fma32(j, k, k)


# Bits of 87.0f: |x| <= 87 keeps |x * log2(e)| <= 125.6, so n stays within ggml_expf's small range.
_EXPF_SMALL_MAX = np.uint32(0x42AE0000)


@njit(error_model="numpy", fastmath=False, nogil=True, cache=True)
def rmsnorm(x, w, eps, out):  # x f32[D], w f32[D] -> out f32[D]
    # ggml's rms_norm then mul (f32 squares summed in f64, f32 mean, scale = 1/sqrtf(mean +
    # eps) in f32, then x * scale and * w as two roundings).
    ss = 0.0
    for i in range(x.shape[0]):
        ss += np.float64(x[i] * x[i])
    mean = F32(ss / x.shape[0])
    inv = F32(1.0) / F32(math.sqrt(np.float64(mean + F32(eps))))
    for i in range(x.shape[0]):
        out[i] = F32(x[i] * inv) * w[i]


@njit(error_model="numpy", fastmath=True, cache=True)
def rmsnorm_rows(x, w, eps, out):  # x f32[n, D] -> out f32[n, D]
    # Serial: cheap, and a parallel region's OpenMP threads keep spinning into the BLAS
    # matmul that follows in prefill, where they compete with our own workers.
    for t in range(x.shape[0]):
        rmsnorm(x[t], w, eps, out[t])


@njit(error_model="numpy", fastmath=False, cache=True)
def silu_mul(g, u):  # g, u f32[..] -> g = silu(g) * u, in place
    # ggml_vec_swiglu_f32: (x / (1 + ggml_v_expf(0 - x))) * u. (Its scalar tail, for rows not
    # a multiple of 8 long, uses libm's expf; LFM2's n_ff is a multiple of 8.)
    gf = g.reshape(-1)
    uf = u.reshape(-1)
    # Vectorized, ggml_expf's large-|n| branch costs more than the rest: its unused lanes
    # compute with subnormal floats, each a microcode assist (5 ns an element, 0.7 without).
    # So look first whether any |x| > 87 (or NaN), as integers, and only then take it.
    wide = False
    for i in range(gf.shape[0]):
        wide |= (_f32_bits(gf[i]) & np.uint32(0x7FFFFFFF)) > _EXPF_SMALL_MAX
    if wide:
        for i in range(gf.shape[0]):
            x = gf[i]
            gf[i] = (x / (F32(1.0) + ggml_expf(F32(0.0) - x))) * uf[i]
    else:
        for i in range(gf.shape[0]):
            x = gf[i]
            gf[i] = (x / (F32(1.0) + ggml_expf_small(F32(0.0) - x))) * uf[i]


@njit(error_model="numpy", parallel=True, fastmath=False, cache=True)
def silu_mul_rows(g, u):  # g, u f32[n, FF]: silu_mul per position, positions in parallel
    for t in prange(g.shape[0]):
        silu_mul(g[t], u[t])


# --- short convolution --------------------------------------------------------------------

@njit(error_model="numpy", fastmath=False, cache=True)
def shortconv_mix(bcx, conv_w, state, y):
    """The gated causal depthwise convolution over a run of positions.

    bcx f32[n, 3D] = in_proj output (B | C | x), conv_w f32[D, L], state f32[L-1, D] (the
    last L-1 values of B*x before this run; updated), y f32[n, D] = C * conv(B * x).
    conv_w[:, L-1] weighs the current position, conv_w[:, 0] the oldest. As ggml_ssm_conv:
    an f32 sum from the oldest tap on, each step a fused multiply-add.
    """
    n = bcx.shape[0]
    D, L = conv_w.shape
    for t in range(n):
        for c in range(D):
            bx = bcx[t, c] * bcx[t, 2 * D + c]
            acc = F32(0.0)
            for k in range(L - 1):
                acc = fma32(state[k, c], conv_w[c, k], acc)
            acc = fma32(bx, conv_w[c, L - 1], acc)
            for k in range(L - 2):
                state[k, c] = state[k + 1, c]
            if L > 1:
                state[L - 2, c] = bx
            y[t, c] = bcx[t, D + c] * acc


@njit(error_model="numpy", fastmath=True, nogil=True, cache=True)
def shortconv_decode(x, norm_w, eps, in_w, in_t, conv_w, state, out_w, out_t, h, bcx, y, o, kinds=ALL_KINDS):
    """x f32[D] += out_proj(C * conv(B * x')) with x' = rmsnorm(x); bcx f32[1, 3D], y f32[1, D]."""
    rmsnorm(x, norm_w, eps, h)
    matvec(in_w, in_t, h, bcx[0], kinds)
    shortconv_mix(bcx, conv_w, state, y)
    matvec(out_w, out_t, y[0], o, kinds)
    x += o


# --- attention ----------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, cache=True)
def norm_rope_heads(v, n_heads, hd, w, eps, pos, inv_freq):
    """Per-head RMSNorm then NEOX rotary embedding, in place on v f32[n_heads * hd] at `pos`.

    NEOX pairs element i with i + hd/2 (rotate_half), not neighbours.
    """
    half = hd // 2
    for h in range(n_heads):
        head = v[h * hd:(h + 1) * hd]
        rmsnorm(head, w, eps, head)  # in place: it reads all of x before writing
    for i in range(half):  # each angle's cos and sin once for all heads (they were half of prefill's q/k work)
        ang = pos * inv_freq[i]
        c = np.float32(math.cos(ang))
        s = np.float32(math.sin(ang))
        for h in range(n_heads):
            a = v[h * hd + i]
            b = v[h * hd + i + half]
            v[h * hd + i] = a * c - b * s
            v[h * hd + i + half] = b * c + a * s


@njit(error_model="numpy", fastmath=False, cache=True)
def softmax_exp(s, m):  # s f32[n] -> exp(s - m) in place (ggml_v_expf, as ggml's soft_max)
    # Vectorized, ggml_expf's large-|x| branch is slow (see silu_mul): taken only when some
    # score lies more than 87 below the largest.
    low = False
    for j in range(s.shape[0]):
        low |= s[j] - m < F32(-87.0)
    if low:
        for j in range(s.shape[0]):
            s[j] = ggml_expf(s[j] - m)
    else:
        for j in range(s.shape[0]):
            s[j] = ggml_expf_small(s[j] - m)


QT = 8  # prompt queries per attention job (each K/V block loaded once for all of them)


@njit(error_model="numpy", fastmath=True, inline="always", cache=True)
def _attend_group(q, kc, ks, vc, vs, t0, nq, g, p0, first, group, HD, out):
    """attend's job: queries t0..t0+nq-1 (positions p0+t..), heads g*group.. (the GQA group of
    KV head g), over cache positions first..; query t sees up to position p0+t. KB keys at a
    time: each block's K rows are read from the cache once for the whole group and all nq
    queries (kernels/kvrows.py), their scores computed eight at a time (kernels/kscores.py:
    f32 dot products for f32 and fp16 caches, integer ones straight from a Q8_0 cache on CPUs
    with AVX-512 VNNI, the query heads rounded to Q8_0 first); then V rows likewise, each output element summing the
    block's KB products in registers before it is stored. A query's own arithmetic does not
    depend on nq (a block's rows past its position get weight 0): decode (nq = 1) and prefill
    give the same bits."""
    scale = np.float32(1.0 / math.sqrt(HD))
    seen = p0 + t0 + 1 - first  # positions query t0 sees; query t0 + i sees seen + i
    n_last = seen + nq - 1
    nb = (n_last + KB - 1) // KB
    scores = np.empty((nq * group, nb * KB), np.float32)  # row i * group + gh: query i, head gh
    rows = np.zeros((KB, HD), np.float32)  # a tail block's unused rows: scored, never weighted
    # the query heads in Q8_0 blocks, for integer K products (Q8_0 cache; else left unused)
    qq = np.empty((nq * group, HD), np.int8)
    qd = np.empty((nq * group, HD // QK8_0), np.float32)
    qc = np.empty((nq * group, HD // QK8_0), np.int32)
    for i in range(nq):
        for gh in range(group):
            h = g * group + gh
            qi = i * group + gh
            quantize_query(kc, q[t0 + i, h * HD:(h + 1) * HD], qq[qi], qd[qi], qc[qi])
    for b in range(nb):
        k_block(kc, ks, g, first + b * KB, first + n_last, rows, HD)
        for i in range(nq):
            if b * KB >= seen + i:
                continue  # the block lies past query i's position
            qg = q[t0 + i, g * group * HD:(g + 1) * group * HD]  # the group's heads, one after another
            for gh in range(group):
                k_scores(kc, ks, g, first + b * KB, qg[gh * HD:(gh + 1) * HD], qq, qd, qc, i * group + gh,
                         rows, scores, b * KB, scale, HD)
    for i in range(nq):
        n = seen + i
        for gh in range(group):
            sc = scores[i * group + gh, :n]
            m = np.float32(-np.inf)
            for j in range(n):
                m = max(m, sc[j])
            softmax_exp(sc, m)
            total = np.float32(0.0)
            for j in range(n):
                total += sc[j]
            for j in range(n):
                sc[j] /= total
            scores[i * group + gh, n:] = 0.0  # the rest of its last block, and blocks past it: weight 0
        out[t0 + i, g * group * HD:(g + 1) * group * HD] = 0.0
    rows[:] = 0.0  # (a K row's inf or NaN times weight 0 would still be NaN)
    for b in range(nb):
        load_block(vc, vs, g, first + b * KB, first + n_last, rows, HD)
        for i in range(nq):
            if b * KB >= seen + i:
                continue
            og = out[t0 + i, g * group * HD:(g + 1) * group * HD]
            for gh in range(group):
                p = scores[i * group + gh, b * KB:(b + 1) * KB]
                for d in range(HD):
                    a = og[gh * HD + d]
                    for jj in range(KB):
                        a += p[jj] * rows[jj, d]
                    og[gh * HD + d] = a


@njit(error_model="numpy", parallel=True, fastmath=True, cache=True)
def attend(q, kc, ks, vc, vs, p0, window, out, head64=None):
    """Causal attention of n queries at positions p0..p0+n-1 over the cache.

    q f32[n, H*HD] (normed, rotated), kc/vc [KVH, n_ctx, HD] with their block scales ks/vs
    (kernels/kvrows.py: f32, fp16 bits or Q8_0) holding positions 0..p0+n-1, window 0 or the
    sliding-window size -> out f32[n, H*HD].

    One job per (QT consecutive queries, KV head): the query heads that share a KV head (GQA)
    go through its keys and values together, so each cache row is read once per job, not once
    per head and query (with a sliding window the queries start at different rows: one query
    a job). Decode (one query) and prefill run the same job code: the same bits.
    """
    n = q.shape[0]
    KVH, _, HD = kc.shape
    group = q.shape[1] // HD // KVH
    per = QT if window <= 0 else 1
    tiles = (n + per - 1) // per
    for job in prange(tiles * KVH):
        t0 = job // KVH * per
        g = job % KVH
        nq = min(per, n - t0)
        first = 0 if window <= 0 else max(0, p0 + t0 + 1 - window)
        _attend_job(q, kc, ks, vc, vs, t0, nq, g, p0, first, group, out, head64)


# A job is a call, not inlined into attend's prange (numba's parallel passes over a big body
# are slow), and only one copy of its body is compiled: head64=True says the head size is 64,
# LFM2's, a constant that lets LLVM unroll the row loops; None, any size. numba drops the
# branch on `None` before typing it. (The two copies took a quarter of a first run's compile.)
@njit(error_model="numpy", fastmath=True, cache=True)
def _attend_job(q, kc, ks, vc, vs, t0, nq, g, p0, first, group, out, head64):
    if head64 is not None:
        _attend_group(q, kc, ks, vc, vs, t0, nq, g, p0, first, group, 64, out)
    else:
        _attend_group(q, kc, ks, vc, vs, t0, nq, g, p0, first, group, kc.shape[2], out)


@njit(error_model="numpy", fastmath=True, cache=True)
def qkv_to_cache(q, k, v, n_head, qn_w, kn_w, eps, p0, inv_freq, kc, ks, vc, vs):
    """Norm and rotate q, k rows for positions p0.. and store k, v in the caches.

    q f32[n, H*HD], k/v f32[n, KVH*HD]; kc/vc [KVH, n_ctx, HD] and their block scales ks/vs
    (kernels/kvrows.py).
    """
    KVH, _, HD = kc.shape
    for t in range(q.shape[0]):
        pos = p0 + t
        norm_rope_heads(q[t], n_head, HD, qn_w, eps, pos, inv_freq)
        norm_rope_heads(k[t], KVH, HD, kn_w, eps, pos, inv_freq)
        for g in range(KVH):
            store_row(k[t, g * HD:(g + 1) * HD], kc, ks, g, pos)
            store_row(v[t, g * HD:(g + 1) * HD], vc, vs, g, pos)


@njit(error_model="numpy", fastmath=True, nogil=True, cache=True)
def attention_decode(x, norm_w, eps, wq, tq, wk, tk, wv, tv, wo, to, qn_w, kn_w, n_head,
                     kc, ks, vc, vs, pos, window, inv_freq, h, q, k, v, att, o, kinds=ALL_KINDS, head64=None):
    """x f32[D] += attn_output(attention(x')) for the token at `pos`; q/att f32[1, H*HD],
    k/v f32[1, KVH*HD]."""
    rmsnorm(x, norm_w, eps, h)
    matvec(wq, tq, h, q[0], kinds)
    matvec(wk, tk, h, k[0], kinds)
    matvec(wv, tv, h, v[0], kinds)
    qkv_to_cache(q, k, v, n_head, qn_w, kn_w, eps, pos, inv_freq, kc, ks, vc, vs)
    attend(q, kc, ks, vc, vs, pos, window, att, head64)
    matvec(wo, to, att[0], o, kinds)
    x += o


# --- feed-forward -------------------------------------------------------------------------

@njit(error_model="numpy", fastmath=True, nogil=True, cache=True)
def ffn_decode(x, norm_w, eps, wg, tg, wu, tu, wd, td, h, g, u, o, kinds=ALL_KINDS):
    """x f32[D] += ffn_down(silu(ffn_gate(x')) * ffn_up(x')), x' = rmsnorm(x); g/u f32[FF]."""
    rmsnorm(x, norm_w, eps, h)
    matvec(wg, tg, h, g, kinds)
    matvec(wu, tu, h, u, kinds)
    silu_mul(g, u)
    matvec(wd, td, g, o, kinds)
    x += o


# --- mixture of experts (LFM2-MoE) -----------------------------------------------------------
# The router as llama.cpp's build_moe_ffn runs it for lfm2moe (sigmoid gating): p = sigmoid(
# logits); the top K of p + exp_probs_b choose the experts (the bias steers the choice only);
# their weights are the unbiased p, divided by their sum (ggml sums in f64, and clamps the sum
# to 2^-14 so it never divides by ~0), then scaled when the scale is neither 0 nor 1. With
# exact=True, transformers' Lfm2MoeTopKRouter instead: sum + 1e-6 in f32.

_MIN_WEIGHT_SUM = F32(6.103515625e-5)


@njit(error_model="numpy", fastmath=False, cache=True)
def route(logits, bias, k, norm, scale, exact, sel, wsel):
    """logits f32[E], bias f32[E] -> sel int64[K] (experts, best first), wsel f32[K]."""
    E = logits.shape[0]
    p = np.empty(E, np.float32)
    score = np.empty(E, np.float32)
    for i in range(E):
        p[i] = F32(1.0) / (F32(1.0) + F32(math.exp(-logits[i])))  # ggml_vec_sigmoid_f32
        score[i] = p[i] + bias[i]
    taken = np.zeros(E, np.bool_)
    for j in range(k):
        best = -1
        for i in range(E):  # K passes over E scores: K, E are small (4 of 32)
            if not taken[i] and (best < 0 or score[i] > score[best]):
                best = i
        taken[best] = True
        sel[j] = best
        wsel[j] = p[best]
    if norm:
        if exact:
            s32 = F32(0.0)
            for j in range(k):
                s32 += wsel[j]
            s32 = s32 + F32(1e-6)
        else:
            s = 0.0
            for j in range(k):
                s += np.float64(wsel[j])
            s32 = max(F32(s), _MIN_WEIGHT_SUM)
        for j in range(k):
            wsel[j] = wsel[j] / s32
    if scale != 0.0 and scale != 1.0:
        for j in range(k):
            wsel[j] = wsel[j] * F32(scale)


@njit(error_model="numpy", fastmath=False, cache=True)
def route_rows(logits, bias, k, norm, scale, exact, sel, wsel):  # logits f32[n, E] -> [n, K]
    for t in range(logits.shape[0]):
        route(logits[t], bias, k, norm, scale, exact, sel[t], wsel[t])


@njit(error_model="numpy", fastmath=True, cache=True)
def router_rows(h, wr, tr, logits, kinds=ALL_KINDS):
    """logits f32[n, E] = the router wr [E, D] on each row of h f32[n, D], through decode's
    matrix-vector kernel: a position's routing is bit for bit decode's (a BLAS product sums in
    another order, and an ulp in a routing weight reaches the residual stream unrounded)."""
    for t in range(h.shape[0]):
        matvec(wr, tr, h[t], logits[t], kinds)


@njit(error_model="numpy", fastmath=False, cache=True)
def weighted_add(acc, o, w, first):
    """acc f32[D] (= or +=) o * w: ggml multiplies each expert's output by its weight, then adds
    the experts in their top-K order, each step rounded (no fused multiply-add)."""
    if first:
        for i in range(acc.shape[0]):
            acc[i] = o[i] * w
    else:
        for i in range(acc.shape[0]):
            acc[i] = acc[i] + o[i] * w


@njit(inline="always")
def _chunk_rows(row_bytes):  # rows per task: under matvec's serial threshold, so it never nests
    return max(1, (PARALLEL_MIN_BYTES - 1) // row_bytes)


@njit(error_model="numpy", parallel=True, fastmath=True, cache=True)
def experts_matvec(wa, ta, wb, tb, sel, xa, xb, per_expert_x, oa, ob, kinds=ALL_KINDS):
    """oa[j] = wa[sel[j]] @ x, ob[j] = wb[sel[j]] @ x for the K chosen experts j (wb may be wa:
    then ob is not written when tb < 0), x = xa (or xa[j] when per_expert_x), in ONE parallel
    region: each task is a run of rows of one expert's matrix, run by matvec's serial kernel
    (the same per-row sums as a whole-matrix matvec). Decode's experts otherwise cost 3K
    parallel regions a layer, each a barrier that waits out a busy core's scheduler slice."""
    K = sel.shape[0]
    rows = wa.shape[1]
    step = _chunk_rows(wa.shape[2])
    n_chunks = (rows + step - 1) // step
    n_mats = 2 if tb >= 0 else 1
    for task in prange(n_mats * K * n_chunks):
        m = task // (K * n_chunks)
        rest = task % (K * n_chunks)
        j = rest // n_chunks
        r0 = (rest % n_chunks) * step
        r1 = min(rows, r0 + step)
        e = sel[j]
        x = xa[j] if per_expert_x else xa[0]
        if m == 0:
            matvec(wa[e, r0:r1], ta, x, oa[j, r0:r1], kinds)
        else:
            matvec(wb[e, r0:r1], tb, xb[0], ob[j, r0:r1], kinds)


@njit(error_model="numpy", fastmath=True, nogil=True, cache=True)
def moe_decode(x, norm_w, eps, wr, tr, bias, wg, tg, wu, tu, wd, td, k, norm, scale, exact,
               h, logits, sel, wsel, g, u, o, acc, kinds=ALL_KINDS):
    """x f32[D] += sum_j w_j * down_j(silu(gate_j(x')) * up_j(x')) over the K routed experts,
    x' = rmsnorm(x). wr [E, D] the router; wg/wu [E, FFE, D] and wd [E, D, FFE] the experts'
    bytes: only the K chosen experts' rows are read. logits f32[E], sel int64[K], wsel f32[K],
    g/u f32[K, FFE], o f32[K, D], acc f32[D]."""
    rmsnorm(x, norm_w, eps, h)
    matvec(wr, tr, h, logits, kinds)
    route(logits, bias, k, norm, scale, exact, sel, wsel)
    hx = h.reshape(1, -1)
    experts_matvec(wg, tg, wu, tu, sel, hx, hx, False, g, u, kinds)
    for j in range(k):
        silu_mul(g[j], u[j])
    experts_matvec(wd, td, wd, -1, sel, g, g, True, o, o, kinds)
    for j in range(k):
        weighted_add(acc, o[j], wsel[j], j == 0)
    x += acc


@njit(error_model="numpy", fastmath=False, cache=True)
def moe_combine_rows(y, wsel, x):
    """x f32[n, D] += sum_j wsel[t, j] * y[t, j] for y f32[n, K, D] (prefill's expert outputs per
    position and slot), in slot order as decode adds them."""
    n, K, D = y.shape
    acc = np.empty(D, np.float32)
    for t in range(n):
        for j in range(K):
            weighted_add(acc, y[t, j], wsel[t, j], j == 0)
        for i in range(D):
            x[t, i] += acc[i]
