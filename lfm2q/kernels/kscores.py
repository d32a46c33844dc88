"""Attention's K side, per cache type: the scores of KB = 8 keys against one query head.

f32 and fp16 caches: the block's K rows are read into f32 rows once (kvrows.load_block) and
each query head takes its eight dot products with dots.dots8_hd64.

Q8_0 cache, on CPUs with AVX-512 VNNI: integer dot products, as llama.cpp's flash attention
takes them (each query head rounded to Q8_0 blocks, then vec_dot_q8_0_q8_0). Converting each
int8 K row to f32 and multiplying it in floats made the Q8_0 cache compute-bound: 27 MB of
cache at 4k positions took as long as the 49 MB fp16 one. Here a key's 64 bytes meet the query
head's 64 in one vpdpbusd straight from the cache, and one transposing tree of adds reduces the
eight keys' 16 lanes to their 2 block sums each.

vpdpbusd multiplies unsigned by signed bytes: the keys go in offset by 128 (k ^ 0x80, as
unsigned k + 128) and each block sum then takes back 128 x the query block's sum (qc, once per
query head). The integers are exact; the float steps per key are
    score = ((dk0 * dq0) * isum0 + (dk1 * dq1) * isum1) * scale
with the same operations in the same order for every key, the tail block included (its rows
are copied out first), so a query's scores do not depend on which block or job computed them:
decode and prefill give the same bits. Without AVX-512 VNNI the Q8_0 cache takes the float path
(its query heads unrounded).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .actquant import QK8_0, quantize_q8_0
from .isa.llvm_ir import F32, I32, I64, IR as _IR, _arrays, _data
from .isa.x86_avx512 import HAVE_AVX512_VNNI, V16F32, V16I32, V64I8, _dpbusd
from .dots import dots8_hd64
from .kvrows import AHEAD, load_block, prefetch_rows

KB = 8  # keys per block
HD = 64  # head size of the integer kernel (every LFM2 model's)


def quantize_query(kc, qh, qq, qd, qc):  # compiled through the overload below
    raise NotImplementedError("numba-only")


def k_block(kc, ks, g, j0, n_kv, rows, HD):  # compiled through the overload below
    raise NotImplementedError("numba-only")


def k_scores(kc, ks, g, j0, qh, qq, qd, qc, qi, rows, s, col, scale, HD):  # compiled through the overload below
    raise NotImplementedError("numba-only")


def _integer(kc):  # whether a cache of this numba type takes the integer K path
    return HAVE_AVX512_VNNI and isinstance(kc, types.Array) and kc.dtype == types.int8


@overload(quantize_query, inline="always")
def _quantize_query(kc, qh, qq, qd, qc):
    """Before a job's K blocks: query head qh f32[HD] as Q8_0 (qq int8[HD], qd f32[HD/32]) and
    qc int32[HD/32] = 128 x each block's sum of qq. A no-op for the float path."""
    if _integer(kc):
        def impl(kc, qh, qq, qd, qc):
            quantize_q8_0(qh, qq, qd)
            _offset_sums(qq, qc)
        return impl

    def noop(kc, qh, qq, qd, qc):
        pass
    return noop


@njit(cache=True)
def _offset_sums(qq, qc):  # qc[b] = 128 x the sum of block b of qq: what the offset keys add
    for b in range(qc.shape[0]):
        total = 0
        for i in range(QK8_0):
            total += qq[b * QK8_0 + i]
        qc[b] = 128 * total


@overload(k_block, inline="always")
def _k_block(kc, ks, g, j0, n_kv, rows, HD):
    """Before a K block's scores: the float path reads its rows into rows f32[KB, HD] (and
    prefetches); the integer path reads the cache itself, so it only prefetches."""
    if _integer(kc):
        def impl(kc, ks, g, j0, n_kv, rows, HD):
            if HD == 64:
                prefetch_rows(kc, ks, g, j0 + AHEAD, min(KB, n_kv - j0 - AHEAD))
            else:  # other head sizes: the float path
                load_block(kc, ks, g, j0, n_kv, rows, HD)
        return impl

    def impl_float(kc, ks, g, j0, n_kv, rows, HD):
        load_block(kc, ks, g, j0, n_kv, rows, HD)
    return impl_float


@overload(k_scores, inline="always")
def _k_scores(kc, ks, g, j0, qh, qq, qd, qc, qi, rows, s, col, scale, HD):
    """s[qi, col:col+KB] = scale * (the block's keys . query head qi), from rows (float path: qh
    the head) or from the cache at rows j0.. (integer path: qq[qi], qd[qi], qc[qi] the head; a
    block reaching past the cache's end goes through a copy of its rows, zero-padded). qi
    indexes the job's (query, head) pairs, s f32[pairs, n]: the integer kernel takes whole
    arrays and indices, as views made per call cost two atomic reference counts each."""
    if _integer(kc):
        def impl(kc, ks, g, j0, qh, qq, qd, qc, qi, rows, s, col, scale, HD):
            if HD != 64:
                _other_head_scores(qh, rows, s[qi], col, scale)
            elif j0 + KB <= kc.shape[1]:
                idots8_q8_0_hd64(qq, qd, qc, qi, kc, ks, g, j0, s, col, scale)
            else:
                kt = np.zeros((1, KB, 64), np.int8)
                st = np.zeros((1, KB, 2), np.float32)
                n = kc.shape[1] - j0
                kt[0, :n] = kc[g, j0:]
                st[0, :n] = ks[g, j0:]
                idots8_q8_0_hd64(qq, qd, qc, qi, kt, st, 0, 0, s, col, scale)
        return impl

    def impl_float(kc, ks, g, j0, qh, qq, qd, qc, qi, rows, s, col, scale, HD):
        if HD == 64:
            dots8_hd64(qh, rows, s[qi], col, scale)
        else:
            _other_head_scores(qh, rows, s[qi], col, scale)
    return impl_float


@njit(error_model="numpy", fastmath=True, cache=True)
def _other_head_scores(qh, rows, s, col, scale):  # dots8_hd64 for any head size
    for jj in range(rows.shape[0]):
        acc = np.float32(0.0)
        for d in range(rows.shape[1]):
            acc += qh[d] * rows[jj, d]
        s[col + jj] = acc * scale


def _hsum_pairs(b, x, y):  # two i32 vectors of n lanes -> n lanes: x's adjacent pairs summed, then y's
    n = x.type.count
    even = ir.Constant(ir.VectorType(I32, n), list(range(0, 2 * n, 2)))
    odd = ir.Constant(ir.VectorType(I32, n), list(range(1, 2 * n, 2)))
    return b.add(b.shuffle_vector(x, y, even), b.shuffle_vector(x, y, odd))


@intrinsic
def idots8_q8_0_hd64(typingctx, qq, qd, qc, qi, kc, ks, g, j0, s, col, scale):
    """s[qi, col:col+8] = scale * (keys j0..j0+7 of KV head g . query head qi), 64-element heads
    in two Q8_0 blocks: qq int8[pairs, 64], qd f32[pairs, 2], qc int32[pairs, 2] (128 x qq's block
    sums); kc int8[KVH, n, 64] and ks f32[KVH, n, 2] the cache and its scales (j0 + 8 <= n);
    s f32[pairs, m]. AVX-512 VNNI only."""
    if not (_arrays(2, qq, qd, qc, s) and _arrays(3, kc, ks) and qq.dtype == types.int8
            and qd.dtype == types.float32 and qc.dtype == types.int32 and kc.dtype == types.int8
            and ks.dtype == types.float32 and s.dtype == types.float32
            and all(isinstance(a, types.Integer) for a in (qi, g, j0, col)) and scale == types.float32):
        return None

    def codegen(context, b, sig, args):
        qqa, qda, qca, qia, kca, ksa, ga, j0a, sa, cola, scale_v = args
        v = _IR(b)
        c = lambda k: ir.Constant(I64, k)  # noqa: E731
        i64 = lambda x: b.sext(x, I64) if x.type.width < 64 else x  # noqa: E731
        qi_, g_, j0_, col_ = (i64(x) for x in (qia, ga, j0a, cola))
        n_ctx = i64(b.extract_value(context.make_array(sig.args[4])(context, b, kca).shape, 1))
        row0 = b.add(b.mul(g_, n_ctx), j0_)  # cache row (g, j0), counted from the start
        q = v.load(_data(context, b, sig.args[0], qqa), b.mul(qi_, c(64)), V64I8)
        dq = v.load(_data(context, b, sig.args[1], qda), b.mul(qi_, c(2)), ir.VectorType(F32, 2))
        qc2 = v.load(_data(context, b, sig.args[2], qca), b.mul(qi_, c(2)), ir.VectorType(I32, 2))
        pattern = ir.Constant(ir.VectorType(I32, 16), [k % 2 for k in range(16)])
        dq16 = b.shuffle_vector(dq, dq, pattern)     # lane 2*key + block: that block's dq
        qc16 = b.shuffle_vector(qc2, qc2, pattern)
        rows = b.gep(_data(context, b, sig.args[4], kca), [b.mul(row0, c(64))])
        dk = v.load(_data(context, b, sig.args[5], ksa), b.mul(row0, c(2)), V16F32)
        flip = v.const(V64I8, -128)
        zero = ir.Constant(V16I32, [0] * 16)
        # key k's 16 lanes: lanes 0-7 its block 0 (4 byte products each), 8-15 its block 1
        acc = [_dpbusd(v, zero, b.xor(v.load(rows, c(64 * k), V64I8), flip), q) for k in range(KB)]
        u = [_hsum_pairs(b, acc[2 * i], acc[2 * i + 1]) for i in range(4)]
        x = [_hsum_pairs(b, u[2 * i], u[2 * i + 1]) for i in range(2)]
        isum = b.sub(_hsum_pairs(b, x[0], x[1]), qc16)  # lane 2*key + block: exact block sum
        part = b.fmul(b.sitofp(isum, V16F32), b.fmul(dk, dq16))
        half = ir.VectorType(F32, KB)
        even, odd = (ir.Constant(ir.VectorType(I32, KB), list(range(h, 2 * KB, 2))) for h in (0, 1))
        total = b.fadd(b.shuffle_vector(part, part, even), b.shuffle_vector(part, part, odd))  # block 0 + block 1
        score = b.fmul(total, v.splat(scale_v, half))
        s_row = b.mul(qi_, i64(b.extract_value(context.make_array(sig.args[8])(context, b, sa).shape, 1)))
        out = b.gep(_data(context, b, sig.args[8], sa), [b.add(s_row, col_)])
        b.store(score, b.bitcast(out, half.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(qq, qd, qc, qi, kc, ks, g, j0, s, col, scale), codegen
