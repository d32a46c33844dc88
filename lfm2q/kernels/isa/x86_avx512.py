"""AVX-512 prefill kernels: 512-bit vectors over two weight rows (or two packed 8-row groups).

Why: on a CPU with AVX-512 VNNI (Ice Lake and later Xeons, Zen 4+), llama.cpp multiplies
prompt positions with 512-bit vpdpbusd, 64 byte products summed into 32-bit lanes by one
instruction. avx2.q4_k_packed_rows needs two instructions per 32 products (vpmaddubsw, then a
16-bit add) on 256-bit vectors. Here the two groups' 32-byte vectors of repack.py's layout
(unchanged: decode and the AVX2 kernels read the same bytes) are joined into one 512-bit vector,
the 4 activation bytes go to all 16 lanes, and vpdpbusd sums each sub-block of 32 weights into
its own 32-bit lanes; the 6-bit sub-block scales then go on with one 32-bit multiply per
sub-block. Same integers per super-block as avx2.q4_k_packed (sums of exact products, no
saturation on the way: |isum| <= 8 * 63 * 32 * 15 * 128 < 2^31) and the same float steps per
lane, so the outputs are the same bits as the AVX2 and row kernels.

Q6_K and Q8_0 rows (q6_k_rows2, q8_0_rows2) get the same widening without a new layout: the two
rows' 32-byte vectors side by side, each token's 32 activation bytes in both halves, and each
half computing exactly what avx2.q6_k_rows / q8_0_rows compute for its row (same 32-bit lanes,
same float steps, the horizontal sum per half in ggml's order): the same bits as decode. Q8_0
prefill takes two such pairs at once against 8 positions (q8_0_rows4), the same bits again;
so do Q4_0, Q5_0, Q4_1 and Q5_1 (q4_0_rows4, q5_0_rows4, q4_1_rows4, q5_1_rows4: avx2's row kernels' bits).

Where the CPU lacks AVX-512 VNNI every kernel here compiles to the 256-bit form of the same
steps, row by row (group by group), so callers need one path and numba never sees an
instruction the CPU lacks. Call only from functions compiled without fastmath (see avx2.py).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .x86_avx2 import (_FEATURES, _IR, F16, F32, HAVE_AVX2, HAVE_VNNI, I8, I16, I32, I64, TOKENS,
                   _arrays, _b32_dots, _b32_min_dots, _broadcast32, _q8_0_block, _data, _packed_loop, _packed_tail,
                   _q4_0_block, _q4_1_block, _q4_k_packed, _q5_0_block, _q5_1_block, _row_ptr, _token_rows)
from ..kquants import Q6_K_BYTES, QK_K
from ..q4_0 import Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES
from ..q8_0 import BLOCK_BYTES as Q8_0_BYTES
from ..repack import P_BYTES, P_D, P_DMIN, P_MN, P_QS, P_SC, Q4_0_GROUP, Q4_0_P_BYTES, Q4_0_P_D
from .llvm_ir import _packed_operands

# 512-bit vpdpbusd and vpmaddwd, and 512-bit registers the compiler may use (32 of them).
HAVE_AVX512_VNNI = HAVE_AVX2 and {"avx512f", "avx512bw", "avx512vnni"} <= _FEATURES

QUAD_TOKENS = 2 * TOKENS  # positions per call of q8_0_rows4 (16 accumulators of 32 registers)

V64I8, V32I16, V16I32, V16F32 = (ir.VectorType(I8, 64), ir.VectorType(I16, 32),
                                 ir.VectorType(I32, 16), ir.VectorType(F32, 16))


def _join(ir_, a, b):  # two vectors of n lanes -> one of 2n (a in the low half)
    n = a.type.count
    return ir_.b.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n))))


def _dpbusd(ir_, acc, u8, s8):  # acc + sums of 4 u8*s8 products per 32-bit lane, 16 lanes
    fn = ir_.fn("llvm.x86.avx512.vpdpbusd.512", V16I32, [V16I32, V16I32, V16I32])
    return ir_.b.call(fn, [acc, ir_.b.bitcast(u8, V16I32), ir_.b.bitcast(s8, V16I32)])


def _q4_k_packed16_rows(context, builder, sig, args):
    ir_ = _IR(builder)
    b = builder
    c = lambda v: ir.Constant(I64, v)  # noqa: E731
    packed_ty, packed, gi = sig.args[0], args[0], args[1]
    g0 = _row_ptr(context, b, packed_ty, packed, gi)
    g1 = _row_ptr(context, b, packed_ty, packed, b.add(gi, ir.Constant(gi.type, 1)))
    a = context.make_array(packed_ty)(context, b, packed)
    nb = b.udiv(b.extract_value(a.shape, 1), c(P_BYTES))
    toks = _token_rows(context, b, sig, args, slice(2, 5), args[5], b.mul(gi, c(8)))
    m4 = ir_.const(V64I8, 15)
    V8I8, V16I8, V8F16 = ir.VectorType(I8, 8), ir.VectorType(I8, 16), ir.VectorType(F16, 8)
    zero_i = ir.Constant(V16I32, [0] * 16)

    def both(offset, ty):  # the same field of both groups, group gi in the low lanes
        return _join(ir_, ir_.load(g0, offset, ty), ir_.load(g1, offset, ty))

    def body(k, *accs):
        pk = b.mul(k, c(P_BYTES))
        xk = b.mul(k, c(QK_K))
        d_rows = b.fpext(both(b.add(pk, c(P_D)), V8F16), V16F32)
        dm_rows = b.fpext(both(b.add(pk, c(P_DMIN)), V8F16), V16F32)
        isums = [zero_i] * len(toks)
        for ch in range(4):  # sub-blocks 2ch (low nibbles) and 2ch + 1 (high nibbles)
            s_lo, s_hi = [zero_i] * len(toks), [zero_i] * len(toks)
            for g in range(8):
                v = both(b.add(pk, c(P_QS + 32 * (8 * ch + g))), ir.VectorType(I8, 32))
                lo, hi = b.and_(v, m4), b.lshr(v, ir_.const(V64I8, 4))
                for i, (xp, _, _, _) in enumerate(toks):
                    x_lo = _broadcast32(ir_, xp, b.add(xk, c(64 * ch + 4 * g)), 16)
                    x_hi = _broadcast32(ir_, xp, b.add(xk, c(64 * ch + 32 + 4 * g)), 16)
                    s_lo[i] = _dpbusd(ir_, s_lo[i], lo, x_lo)
                    s_hi[i] = _dpbusd(ir_, s_hi[i], hi, x_hi)
            sc_lo = b.zext(both(b.add(pk, c(P_SC + 8 * (2 * ch))), V8I8), V16I32)
            sc_hi = b.zext(both(b.add(pk, c(P_SC + 8 * (2 * ch + 1))), V8I8), V16I32)
            for i in range(len(toks)):
                isums[i] = b.add(isums[i], b.add(b.mul(s_lo[i], sc_lo), b.mul(s_hi[i], sc_hi)))
        mins = [b.zext(both(b.add(pk, c(P_MN + 16 * p)), V16I8), V32I16) for p in range(4)]
        return _packed_tail(ir_, k, toks, isums, accs, mins, d_rows, dm_rows)

    _packed_loop(ir_, nb, body, toks, 16)
    return context.get_dummy_value()


@intrinsic
def q4_k_packed16_rows(typingctx, packed, gi, xq, xd, bs32, t, out):
    """out[t + i, 8gi : 8gi + 16] for i < TOKENS: rows 8gi.. (groups gi and gi + 1 of the packed
    matrix, repack.py) . x for rows t.. of xq int8[n, cols], xd f32[n, cols/256], bs32
    int16[n, cols/32]; out f32[n, rows]. Needs AVX2; 512-bit where HAVE_AVX512_VNNI."""
    if not (_arrays(2, packed, xq, xd, bs32, out) and isinstance(gi, types.Integer)
            and isinstance(t, types.Integer)):
        return None
    return types.none(packed, gi, xq, xd, bs32, t, out), _codegen


def _codegen(context, builder, sig, args):
    if HAVE_AVX512_VNNI:
        return _q4_k_packed16_rows(context, builder, sig, args)
    # No 512-bit VNNI: the AVX2 kernel on each group (same signature, same bits), so callers
    # need no second path and numba never sees an instruction the CPU lacks.
    for h in (0, 1):
        gi = builder.add(args[1], ir.Constant(args[1].type, h))
        _q4_k_packed(context, builder, sig, [args[0], gi, *args[2:]])
    return context.get_dummy_value()


# --- Q6_K and Q8_0: two rows per 512-bit vector ------------------------------------------------

class _Rows:
    """Vector steps over nr = 1 or 2 weight rows side by side (256 or 512 bits): row m in lanes
    [m * n, (m + 1) * n) of each vector of n lanes per row."""

    def __init__(self, ir_, nr):
        self.ir, self.b, self.nr = ir_, ir_.b, nr

    def vec(self, ty, n):  # n lanes per row
        return ir.VectorType(ty, n * self.nr)

    def const(self, ty, n, value):
        return self.ir.const(self.vec(ty, n), value)

    def load(self, ptrs, offset, ty):  # the same field of every row, row 0 in the low lanes
        parts = [self.ir.load(p, offset, ty) for p in ptrs]
        return parts[0] if self.nr == 1 else _join(self.ir, *parts)

    def dup(self, v):  # one vector for every row (activations)
        return v if self.nr == 1 else _join(self.ir, v, v)

    def per_row(self, scalars, n):  # scalar of row m in its n lanes
        v = ir.Constant(self.vec(scalars[0].type, 1), ir.Undefined)
        for m, x in enumerate(scalars):
            v = self.b.insert_element(v, x, ir.Constant(I32, m))
        return self.ir.lanes(v, [m for m in range(self.nr) for _ in range(n)])

    def hsums(self, v):  # ggml's hsum_float_8 of each row's 8 lanes
        return [self.ir.hsum(self.ir.lanes(v, range(8 * m, 8 * m + 8))) if self.nr == 2
                else self.ir.hsum(v) for m in range(self.nr)]


def _rows_args(context, b, sig, args, n_x, nr, n_tok=TOKENS):
    """(row pointers, row bytes, per-token [x pointers..., out pointer at column r]) of a rows
    kernel (w, r, x arrays..., [t,] out): n_tok positions t.. of 2-D activations, or the one
    position of 1-D ones (decode, no t)."""
    w_ty, w, r = sig.args[0], args[0], args[1]
    rows = [_row_ptr(context, b, w_ty, w, b.add(r, ir.Constant(r.type, m))) for m in range(nr)]
    a = context.make_array(w_ty)(context, b, w)
    row_bytes = b.extract_value(a.shape, 1)
    if sig.args[2].ndim == 1:
        xs = [_data(context, b, ty, v) for ty, v in zip(sig.args[2:2 + n_x], args[2:2 + n_x])]
        return rows, row_bytes, [xs + [b.gep(_data(context, b, sig.args[-1], args[-1]), [r])]]
    return rows, row_bytes, _token_rows(context, b, sig, args, slice(2, 2 + n_x), args[2 + n_x], r, n_tok)


def _store_rows(v, toks, accs):
    for (*_, op), acc in zip(toks, accs):
        for m, h in enumerate(v.hsums(acc)):
            v.b.store(h, v.b.gep(op, [ir.Constant(I64, m)]))


def _q6_k_rows(context, builder, sig, args, nr):
    ir_ = _IR(builder)
    v = _Rows(ir_, nr)
    b = builder
    c = lambda x: ir.Constant(I64, x)  # noqa: E731
    rows, row_bytes, toks = _rows_args(context, b, sig, args, 3, nr)
    nb = b.udiv(row_bytes, c(Q6_K_BYTES))
    m4, k3 = v.const(I8, 32, 15), v.const(I8, 32, 3)

    def shr(x, n):
        return b.lshr(x, v.const(I8, 32, n))

    def top(x):  # two high bits into place above the low four
        return b.shl(x, v.const(I8, 32, 4))

    def body(k, *accs):  # avx2._q6_k's super-block, and _kquant_rows's float steps
        o = b.mul(k, c(Q6_K_BYTES))
        xo = b.mul(k, c(QK_K))
        scales = b.sext(v.load(rows, b.add(o, c(192)), ir.VectorType(I8, 16)), v.vec(I16, 16))
        isums = [v.const(I32, 8, 0)] * len(toks)
        for h in range(2):
            ql0 = v.load(rows, b.add(o, c(64 * h)), ir.VectorType(I8, 32))
            ql1 = v.load(rows, b.add(o, c(64 * h + 32)), ir.VectorType(I8, 32))
            qh = v.load(rows, b.add(o, c(128 + 32 * h)), ir.VectorType(I8, 32))
            quarters = (b.or_(b.and_(ql0, m4), top(b.and_(qh, k3))),
                        b.or_(b.and_(ql1, m4), top(b.and_(shr(qh, 2), k3))),
                        b.or_(shr(ql0, 4), top(b.and_(shr(qh, 4), k3))),
                        b.or_(shr(ql1, 4), top(shr(qh, 6))))
            for j, q in enumerate(quarters):  # q in 0..63, stored with +32
                s = 8 * h + 2 * j  # elements 0-15 of the quarter use scale s, 16-31 s + 1
                sc = ir_.lanes(scales, [16 * m + s + e // 8 for m in range(nr) for e in range(16)])
                for i, (xp, *_) in enumerate(toks):
                    x = v.dup(ir_.load(xp, b.add(xo, c(128 * h + 32 * j)), ir.VectorType(I8, 32)))
                    isums[i] = b.add(isums[i], ir_.maddwd(ir_.maddubs(q, x), sc))
        d_w = v.per_row([ir_.f16(p, b.add(o, c(208))) for p in rows], 8)
        out = []
        for isum, acc, (_, dp, sp, _) in zip(isums, accs, toks):
            # (q - 32) . x = q . x - 32 * sum over each 16-group of scale * (sum of x's quants)
            offset = ir_.maddwd(scales, v.dup(ir_.load(sp, b.mul(k, c(16)), ir.VectorType(I16, 16))))
            isum = b.sub(isum, b.shl(offset, v.const(I32, 8, 5)))
            d = b.fmul(v.per_row([b.load(b.gep(dp, [k]))] * nr, 8), d_w)
            out.append(ir_.fma(d, b.sitofp(isum, v.vec(F32, 8)), acc))
        return out

    accs = ir_.loop(nb, body, *[v.const(F32, 8, 0.0)] * len(toks))
    # _kquant_rows adds the (unused, zero) dmin chain's sum: kept for -0.0 -> +0.0
    zero = ir.Constant(F32, 0.0)
    for (*_, op), acc in zip(toks, accs):
        for m, h in enumerate(v.hsums(acc)):
            b.store(b.fadd(h, zero), b.gep(op, [c(m)]))
    return context.get_dummy_value()


def _q8_0_rows(context, builder, sig, args, nr):
    ir_ = _IR(builder)
    v = _Rows(ir_, nr)
    b = builder
    c = lambda x: ir.Constant(I64, x)  # noqa: E731
    rows, row_bytes, toks = _rows_args(context, b, sig, args, 2, nr)
    nb = b.udiv(row_bytes, c(Q8_0_BYTES))
    zero8 = v.const(I8, 32, 0)

    def body(k, *accs):  # avx2._q8_0's block
        o = b.mul(k, c(Q8_0_BYTES))
        q = v.load(rows, b.add(o, c(2)), ir.VectorType(I8, 32))
        d_w = v.per_row([ir_.f16(p, o) for p in rows], 8)
        if nr == 2:  # no 512-bit vpsignb: |q| and x negated where q < 0 (q = 0 adds 0 anyway)
            q_abs = b.select(b.icmp_signed("<", q, zero8), b.sub(zero8, q), q)
        else:
            q_abs = ir_.sign(q, q)
        out = []
        for acc, (xp, dp, _) in zip(accs, toks):
            x = v.dup(ir_.load(xp, b.mul(k, c(32)), ir.VectorType(I8, 32)))
            if nr == 2:
                xs = b.select(b.icmp_signed("<", q, zero8), b.sub(zero8, x), x)
                sums = _dpbusd(ir_, v.const(I32, 8, 0), q_abs, xs)
            elif HAVE_VNNI:
                sums = ir_.dpbusd(v.const(I32, 8, 0), q_abs, ir_.sign(x, q))
            else:
                sums = ir_.maddwd(ir_.maddubs(q_abs, ir_.sign(x, q)), v.const(I16, 16, 1))
            d = b.fmul(d_w, v.per_row([b.load(b.gep(dp, [k]))] * nr, 8))
            out.append(ir_.fma(d, b.sitofp(sums, v.vec(F32, 8)), acc))
        return out

    accs = ir_.loop(nb, body, *[v.const(F32, 8, 0.0)] * len(toks))
    _store_rows(v, toks, accs)
    return context.get_dummy_value()


def _q8_0_quads(context, builder, sig, args):
    """Rows r..r + 3 as two 512-bit row pairs against QUAD_TOKENS positions: each activation
    vector loaded once for four rows, each weight block once for 8 positions (the fixed cost of
    a block, its loads and scales, spread over twice as many products as in _q8_0_rows).
    vpdpbusd multiplies unsigned by signed bytes, so the activations go in offset by 128
    (x ^ 0x80) and the weights as they are; each lane then starts from -128 * (the sum of its 4
    weights), computed once per block for all positions. The lane sums are the exact integers
    of _q8_0_rows' |q| . sign(x, q) (activations never hold -128), and the float steps are the
    same: the same bits, with 2 integer steps per position saved."""
    ir_ = _IR(builder)
    v = _Rows(ir_, 2)
    b = builder
    c = lambda x: ir.Constant(I64, x)  # noqa: E731
    rows, row_bytes, toks = _rows_args(context, b, sig, args, 2, 4, QUAD_TOKENS)
    pairs = (rows[:2], rows[2:])
    nb = b.udiv(row_bytes, c(Q8_0_BYTES))
    bias, zero = v.const(I8, 32, -128), v.const(I32, 8, 0)

    def body(k, *accs):  # accs: pair 0's per position, then pair 1's
        o = b.mul(k, c(Q8_0_BYTES))
        qs = [v.load(pair, b.add(o, c(2)), ir.VectorType(I8, 32)) for pair in pairs]
        d_ws = [v.per_row([ir_.f16(p, o) for p in pair], 8) for pair in pairs]
        starts = [b.sub(zero, _dpbusd(ir_, zero, bias, q)) for q in qs]  # -128 * sum of 4 weights
        out = list(accs)
        for i, (xp, dp, _) in enumerate(toks):
            xu = b.xor(v.dup(ir_.load(xp, b.mul(k, c(32)), ir.VectorType(I8, 32))), bias)
            dx = v.per_row([b.load(b.gep(dp, [k]))] * 2, 8)
            for j in range(2):
                sums = _dpbusd(ir_, starts[j], xu, qs[j])
                a = j * len(toks) + i
                out[a] = ir_.fma(b.fmul(d_ws[j], dx), b.sitofp(sums, v.vec(F32, 8)), accs[a])
        return out

    accs = ir_.loop(nb, body, *[v.const(F32, 8, 0.0)] * (2 * len(toks)))
    for j in range(2):
        for (*_, op), acc in zip(toks, accs[j * len(toks):(j + 1) * len(toks)]):
            for m, h in enumerate(v.hsums(acc)):
                b.store(h, b.gep(op, [c(2 * j + m)]))
    return context.get_dummy_value()


def _two_rows(kernel):
    """Codegen for rows r, r + 1: one 512-bit pass with AVX-512 VNNI, else a 256-bit one per row."""
    def codegen(context, builder, sig, args):
        if HAVE_AVX512_VNNI:
            return kernel(context, builder, sig, args, 2)
        for m in (0, 1):
            r = builder.add(args[1], ir.Constant(args[1].type, m))
            kernel(context, builder, sig, [args[0], r, *args[2:]], 1)
        return context.get_dummy_value()
    return codegen


@intrinsic
def q6_k_rows2(typingctx, w, r, xq, xd, bsum, t, out):
    """out[t + i, r : r + 2] for i < TOKENS: rows r, r + 1 of the Q6_K matrix w uint8[rows,
    nb*210] . x for rows t.. of xq int8[n, cols], xd f32[n, cols/256], bsum int16[n, cols/16];
    out f32[n, rows]. The bits of avx2.q6_k_rows."""
    if not (_arrays(2, w, xq, xd, bsum, out) and isinstance(r, types.Integer)
            and isinstance(t, types.Integer)):
        return None
    return types.none(w, r, xq, xd, bsum, t, out), _two_rows(_q6_k_rows)


@intrinsic
def q8_0_rows2(typingctx, w, r, xq, xd, t, out):
    """out[t + i, r : r + 2] for i < TOKENS: rows r, r + 1 of the Q8_0 matrix w uint8[rows,
    nb*34] . x for rows t.. of xq int8[n, cols], xd f32[n, cols/32]; out f32[n, rows]. The bits
    of avx2.q8_0_rows."""
    if not (_arrays(2, w, xq, xd, out) and isinstance(r, types.Integer) and isinstance(t, types.Integer)):
        return None
    return types.none(w, r, xq, xd, t, out), _two_rows(_q8_0_rows)


@intrinsic
def q8_0_row2(typingctx, w, r, xq, xd, out):
    """Decode: out[r : r + 2] = rows r, r + 1 of the Q8_0 matrix w . x, x in Q8_0 (xq int8[cols],
    xd f32[cols/32]); out f32[rows]. The bits of avx2.q8_0_row on each row; the two rows' float
    chains run side by side in one 512-bit vector (one chain per row was latency-bound)."""
    if not (_arrays(2, w) and _arrays(1, xq, xd, out) and isinstance(r, types.Integer)):
        return None
    return types.none(w, r, xq, xd, out), _two_rows(_q8_0_rows)


@intrinsic
def q8_0_rows4(typingctx, w, r, xq, xd, t, out):
    """out[t + i, r : r + 4] for i < QUAD_TOKENS: rows r..r + 3 of the Q8_0 matrix w uint8[rows,
    nb*34] . x for rows t.. of xq int8[n, cols], xd f32[n, cols/32]; out f32[n, rows]. The bits
    of avx2.q8_0_rows (without AVX-512 VNNI: that 256-bit kernel row by row, TOKENS at a time)."""
    if not (_arrays(2, w, xq, xd, out) and isinstance(r, types.Integer) and isinstance(t, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        if HAVE_AVX512_VNNI:
            return _q8_0_quads(context, builder, sig, args)
        for m in range(4):
            for h in range(0, QUAD_TOKENS, TOKENS):
                rm = builder.add(args[1], ir.Constant(args[1].type, m))
                th = builder.add(args[4], ir.Constant(args[4].type, h))
                _q8_0_rows(context, builder, sig, [args[0], rm, args[2], args[3], th, args[5]], 1)
        return context.get_dummy_value()
    return types.none(w, r, xq, xd, t, out), codegen


# --- Q4_0, Q5_0, Q4_1, Q5_1: four rows against 8 positions, as Q8_0's quads ---------------------------

def _b32_quads(block_bytes, block, with_min):
    """Codegen of <type>_rows4(w, r, xq, xd[, xs], t, out): out[t + i, r : r + 4] for i <
    QUAD_TOKENS. With AVX-512 VNNI, rows r..r + 3 as two 512-bit row pairs: each block unpacked
    once for 8 positions, each activation vector loaded once for 4 rows. Signed quants (Q5_0)
    meet x offset by 128 from lanes starting at -128 * the weights' sums (as _q8_0_quads),
    unsigned ones (Q4_1, Q5_1) meet x as it is; either way the exact lane sums of avx2's row
    kernel, then its float steps per lane (the sums of m * s for the 4 rows side by side in one
    vector per position): its bits. Without AVX-512 VNNI, avx2's row kernel row by row."""
    n_x = 3 if with_min else 2
    dots = _b32_min_dots if with_min else _b32_dots
    c = lambda x: ir.Constant(I64, x)  # noqa: E731

    def fallback(context, b, sig, args):
        ir_ = _IR(b)
        t = args[2 + n_x]
        for h in range(0, QUAD_TOKENS, TOKENS):
            at = [*args[:2 + n_x], b.add(t, ir.Constant(t.type, h)), args[-1]]
            rows, row_bytes, toks = _rows_args(context, b, sig, at, n_x, 4)
            nb = b.udiv(row_bytes, c(block_bytes))
            for m, row in enumerate(rows):
                for (*_, op), res in zip(toks, dots(ir_, row, nb, [tk[:n_x] for tk in toks], block_bytes, block)):
                    b.store(res, b.gep(op, [c(m)]))
        return context.get_dummy_value()

    def quads(context, b, sig, args):
        ir_ = _IR(b)
        v = _Rows(ir_, 2)
        rows, row_bytes, toks = _rows_args(context, b, sig, args, n_x, 4, QUAD_TOKENS)
        nb = b.udiv(row_bytes, c(block_bytes))
        n = len(toks)
        bias, zero = v.const(I8, 32, -128), v.const(I32, 8, 0)
        V4F32 = ir.VectorType(F32, 4)

        def body(k, *accs):  # accs: pair 0's per position, pair 1's, then the m * s sums per position
            o = b.mul(k, c(block_bytes))
            blocks = [block(ir_, row, o) for row in rows]
            qs = [_join(ir_, blocks[2 * j][0], blocks[2 * j + 1][0]) for j in range(2)]
            d_ws = [v.per_row([blocks[2 * j][1], blocks[2 * j + 1][1]], 8) for j in range(2)]
            if with_min:
                m4 = ir.Constant(V4F32, ir.Undefined)
                for m, blk in enumerate(blocks):
                    m4 = b.insert_element(m4, blk[2], ir.Constant(I32, m))
            else:
                starts = [b.sub(zero, _dpbusd(ir_, zero, bias, q)) for q in qs]  # -128 * sum of 4 weights
            out = list(accs)
            for i, (xp, dp, *rest) in enumerate(toks):
                x = v.dup(ir_.load(xp, b.mul(k, c(32)), ir.VectorType(I8, 32)))
                dx = v.per_row([b.load(b.gep(dp, [k]))] * 2, 8)
                for j in range(2):
                    if with_min:
                        sums = _dpbusd(ir_, zero, qs[j], x)
                    else:
                        sums = _dpbusd(ir_, starts[j], b.xor(x, bias), qs[j])
                    a = j * n + i
                    out[a] = ir_.fma(b.fmul(d_ws[j], dx), b.sitofp(sums, v.vec(F32, 8)), accs[a])
                if with_min:
                    s = ir_.splat(b.load(b.gep(rest[0], [k])), V4F32)
                    out[2 * n + i] = b.fadd(accs[2 * n + i], b.fmul(m4, s))
            return out

        init = [v.const(F32, 8, 0.0)] * (2 * n) + [ir.Constant(V4F32, [0.0] * 4)] * (n if with_min else 0)
        accs = ir_.loop(nb, body, *init)
        for j in range(2):
            for i, (*_, op) in enumerate(toks):
                for m, h in enumerate(v.hsums(accs[j * n + i])):
                    if with_min:
                        h = b.fadd(h, b.extract_element(accs[2 * n + i], ir.Constant(I32, 2 * j + m)))
                    b.store(h, b.gep(op, [c(2 * j + m)]))
        return context.get_dummy_value()

    return quads if HAVE_AVX512_VNNI else fallback


def _b32_decode4(block_bytes, block):
    """Codegen of <type>_row4(w, r, xq, xd, out): decode, out[r : r + 4] for one position (1-D
    xq, xd): _b32_quads' two 512-bit row pairs with one position; without AVX-512 VNNI avx2's row
    kernel row by row. The bits of avx2's row kernel on each row either way."""
    quads = _b32_quads(block_bytes, block, False)
    c = lambda x: ir.Constant(I64, x)  # noqa: E731

    def rows(context, b, sig, args):
        ir_ = _IR(b)
        rws, row_bytes, toks = _rows_args(context, b, sig, args, 2, 4)
        nb = b.udiv(row_bytes, c(block_bytes))
        (*xs, op), = toks
        for m, row in enumerate(rws):
            b.store(_b32_dots(ir_, row, nb, [xs], block_bytes, block)[0], b.gep(op, [c(m)]))
        return context.get_dummy_value()

    return quads if HAVE_AVX512_VNNI else rows


def _decode4_sig(w, r, xq, xd, out):
    if not (_arrays(2, w) and _arrays(1, xq, xd, out) and isinstance(r, types.Integer)):
        return None
    return types.none(w, r, xq, xd, out)


@intrinsic
def q4_0_row4(typingctx, w, r, xq, xd, out):
    """Decode: out[r : r + 4] for rows r..r + 3 of the Q4_0 matrix w (q4_0_rows4 for one
    position); the bits of avx2.q4_0_row."""
    sig = _decode4_sig(w, r, xq, xd, out)
    return sig and (sig, _b32_decode4(Q4_0_BYTES, _q4_0_block))


@intrinsic
def q5_0_row4(typingctx, w, r, xq, xd, out):
    """Decode: q4_0_row4 for Q5_0 (nb*22 bytes); the bits of avx2.q5_0_row."""
    sig = _decode4_sig(w, r, xq, xd, out)
    return sig and (sig, _b32_decode4(Q5_0_BYTES, _q5_0_block))


def _quad_sig(w, r, t, out, *x):
    if not (_arrays(2, w, *x, out) and isinstance(r, types.Integer) and isinstance(t, types.Integer)):
        return None
    return types.none(w, r, *x, t, out)


@intrinsic
def q5_0_rows4(typingctx, w, r, xq, xd, t, out):
    """out[t + i, r : r + 4] for i < QUAD_TOKENS: rows r..r + 3 of the Q5_0 matrix w uint8[rows,
    nb*22] . x for rows t.. of xq int8[n, cols], xd f32[n, cols/32]; out f32[n, rows]. The bits
    of avx2.q5_0_row."""
    sig = _quad_sig(w, r, t, out, xq, xd)
    return sig and (sig, _b32_quads(Q5_0_BYTES, _q5_0_block, False))


@intrinsic
def q4_0_rows4(typingctx, w, r, xq, xd, t, out):
    """q5_0_rows4 for Q4_0 (nb*18 bytes): its quants as q - 8, signed as Q5_0's. The bits of
    avx2.q4_0_row."""
    sig = _quad_sig(w, r, t, out, xq, xd)
    return sig and (sig, _b32_quads(Q4_0_BYTES, _q4_0_block, False))


@intrinsic
def q4_1_rows4(typingctx, w, r, xq, xd, xs, t, out):
    """q5_0_rows4 for Q4_1 (nb*20 bytes), x in Q8_1 (xs f32[n, cols/32]: its block sums). The
    bits of avx2.q4_1_row."""
    sig = _quad_sig(w, r, t, out, xq, xd, xs)
    return sig and (sig, _b32_quads(Q4_1_BYTES, _q4_1_block, True))


@intrinsic
def q5_1_rows4(typingctx, w, r, xq, xd, xs, t, out):
    """q4_1_rows4 for Q5_1 (nb*24 bytes). The bits of avx2.q5_1_row."""
    sig = _quad_sig(w, r, t, out, xq, xd, xs)
    return sig and (sig, _b32_quads(Q5_1_BYTES, _q5_1_block, True))


# --- Q4_0 rows packed 4 at a time (repack.pack_q4_0x16) ----------------------------------------
# Why: a Q4_0 row kernel unpacks each 18-byte block alone, converts its fp16 scale alone and
# sums 8 lanes per row at the end: ~12 vector instructions a row-block, which kept decode
# compute-bound (22.7 GB/s one thread, in cache, against Q4_K's packed 57.6). Packed, one 64-byte
# load holds a block of 4 rows (row r's 16 quant bytes in 128-bit quarter r) and their 4 scales
# sit together: one vpdpbusd multiplies 4 rows by the block's first 16 activations (broadcast to
# every quarter), a second by the last 16, one convert gives the 4 scales.
#
# The lanes are the row kernel's: quarter r, dword i of the low-nibble sums is avx2.q4_0_row's
# lane i of row r (elements 4i..4i+3), of the high-nibble sums its lane 4 + i. vpdpbusd takes
# the weights unsigned (n = q + 8, 0..15) against signed x, and starts from -8 * the sum of each
# lane's 4 activations (q4_0_packed_x puts them after each block's 32 quants): n . x - 8 sum(x)
# = q . x, exactly. Then the row kernel's float steps per lane (d_w * d_x, one fma a block),
# and its horizontal sum (hsum_float_8's order) for 4 rows at once: the same bits.

def _q4_0_packed16(context, b, sig, args):
    ir_ = _IR(b)
    c = lambda v: ir.Constant(I64, v)  # noqa: E731
    prow, nb, toks = _packed_operands(context, b, sig, args, Q4_0_P_BYTES, Q4_0_GROUP, 2)
    V4I32, V4F32, V16I8 = ir.VectorType(I32, 4), ir.VectorType(F32, 4), ir.VectorType(I8, 16)
    m4, eight = ir_.const(V64I8, 15), ir_.const(V64I8, 8)
    quarters = [i for _ in range(4) for i in range(4)]  # a 128-bit part in every quarter
    per_row = [r for r in range(4) for _ in range(4)]   # lane r of 4 in quarter r
    every16 = [j for _ in range(4) for j in range(16)]  # 16 bytes in every quarter

    def body(k, *accs):
        pk = b.mul(k, c(Q4_0_P_BYTES))
        v = ir_.load(prow, pk, V64I8)  # stored XOR 0x88: nibble ^ 8 gives n back
        lo = b.xor(b.and_(v, m4), eight)
        hi = b.xor(b.and_(b.lshr(v, ir_.const(V64I8, 4)), m4), eight)
        d4 = b.fpext(b.bitcast(ir_.load(prow, b.add(pk, c(Q4_0_P_D)), ir.VectorType(I16, 4)),
                               ir.VectorType(F16, 4)), V4F32)
        d_rows = ir_.lanes(d4, per_row)
        xo = b.mul(k, c(64))  # block k's 32 quants and 8 sums in every position's q4_0_packed_x row
        out = []
        for (xp, dp, _), acc_lo, acc_hi in zip(toks, accs[0::2], accs[1::2]):
            x_lo = ir_.lanes(ir_.load(xp, xo, V16I8), every16)
            x_hi = ir_.lanes(ir_.load(xp, b.add(xo, c(16)), V16I8), every16)
            c_lo = ir_.lanes(ir_.load(xp, b.add(xo, c(32)), V4I32), quarters)
            c_hi = ir_.lanes(ir_.load(xp, b.add(xo, c(48)), V4I32), quarters)
            d = b.fmul(d_rows, ir_.splat(b.load(b.gep(dp, [k])), V16F32))
            out.append(ir_.fma(d, b.sitofp(_dpbusd(ir_, c_lo, lo, x_lo), V16F32), acc_lo))
            out.append(ir_.fma(d, b.sitofp(_dpbusd(ir_, c_hi, hi, x_hi), V16F32), acc_hi))
        return out

    zero = ir.Constant(V16F32, [0.0] * 16)
    accs = ir_.loop(nb, body, *[zero] * (2 * len(toks)))
    for (*_, op), acc_lo, acc_hi in zip(toks, accs[0::2], accs[1::2]):
        s = b.fadd(acc_lo, acc_hi)  # lane 4r + i: row r's x_i + x_{i+4}
        h = b.fadd(ir_.lanes(s, [4 * r + i for r in range(4) for i in (0, 1)]),
                   ir_.lanes(s, [4 * r + i for r in range(4) for i in (2, 3)]))
        res = b.fadd(ir_.lanes(h, [0, 2, 4, 6]), ir_.lanes(h, [1, 3, 5, 7]))
        b.store(res, b.bitcast(op, V4F32.as_pointer()), align=4)
    return context.get_dummy_value()


@intrinsic
def q4_0_packed(typingctx, packed, gi, xk, xd, out):
    """out[4gi : 4gi + 4]: the rows of packed Q4_0 group gi (repack.pack_q4_0x16) . x, xk int8[2 *
    cols] as q4_0_packed_x makes it from x's Q8_0 quants, xd f32[cols/32]; x86_avx2.q4_0_row's
    bits. Needs AVX-512 VNNI (x86.py packs Q4_0 only then)."""
    if not (_arrays(2, packed) and _arrays(1, xk, xd, out) and isinstance(gi, types.Integer)):
        return None
    return types.none(packed, gi, xk, xd, out), _q4_0_packed16


@intrinsic
def q4_0_packed_rows(typingctx, packed, gi, xk, xd, t, out):
    """out[t + i, 4gi : 4gi + 4] for i < TOKENS: q4_0_packed for rows t.. of xk int8[n, 2 * cols],
    xd f32[n, cols/32]; out f32[n, rows]."""
    if not (_arrays(2, packed, xk, xd, out) and isinstance(gi, types.Integer) and isinstance(t, types.Integer)):
        return None
    return types.none(packed, gi, xk, xd, t, out), _q4_0_packed16


@njit(error_model="numpy", cache=True)
def q4_0_packed_x(xq, out):
    """x's Q8_0 quants xq int8[cols] -> out int8[2 * cols], the activations of q4_0_packed: per
    block k, its 32 quants at 64k, then at 64k + 32 the 8 int32 -8 * (x[32k + 4i] + .. + x[32k + 4i + 3])."""
    o32 = out.view(np.int32)
    for k in range(xq.shape[0] // 32):
        for j in range(32):
            out[64 * k + j] = xq[32 * k + j]
        for i in range(8):
            s = np.int32(0)
            for j in range(4):
                s += np.int32(xq[32 * k + 4 * i + j])
            o32[16 * k + 8 + i] = -8 * s
