"""AVX2 row kernels: the integer dot products of intdot.py written with x86 SIMD instructions.

Why: intdot.py's portable loops get vpmaddwd from LLVM (16 products per instruction, after
unpacking every weight to 16 bits). llama.cpp multiplies unsigned 8-bit weights with signed
8-bit activations by vpmaddubsw (32 products per instruction) and applies the sub-block scales
with one vpmaddwd, keeping 8 int32 lanes per row; no compiler finds that from scalar code, so
these kernels emit it directly as LLVM IR through numba intrinsics (llvmlite's IR builder).
Measured on 350M-shape matrices, one thread: Q4_K 1.5x the portable integer kernel.

Each kernel is one row . x, called as `<type>_row(w[r], xq, xd[, bsum]) -> f32`, computing the
same exact int32 sums per sub-block as intdot.py; only the float accumulation differs: 8 f32
lanes per row, one fused multiply-add per block, one horizontal sum at the end, in the order
llama.cpp's ggml_vec_dot_<type>_q8_<K|0> (AVX2) uses. The portable kernels stay the fallback
(ARM, old x86) and the reference these are tested against, bit for bit in the integers.

Call the kernels only from functions compiled without fastmath. An intrinsic's instructions
land in the body of the function that calls it, and numba's fastmath pass flags every float
instruction there: LLVM may then reorder the accumulation differently at each call site, and
decode and prefill no longer give the same bits (seen: 1-ulp differences on Q4_K rows).

Range checks that make the 16-bit steps exact (vpmaddubsw saturates; none of these reach it):
Q4_K q*x pairs <= 2*15*127, Q5_K 2*31*127, Q6_K (q in 0..63, the 32 taken off through x's
per-16 sums afterwards) 2*63*127;
Q8_0 |w|, |x| <= 127 (ggml rounds to +-127), so |w|*|x| pairs <= 2*127*127 < 32768;
Q4_0 |q - 8| <= 8, Q5_0 |q - 16| <= 16, Q4_1 q <= 15, Q5_1 q <= 31: pairs <= 2*31*128.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ...cpu import target
from ..kquants import Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K
from ..q4_0 import Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES
from ..q8_0 import BLOCK_BYTES as Q8_0_BYTES
from ..repack import P_BYTES, P_D, P_DMIN, P_MN, P_QS, P_SC
from .llvm_ir import (F16, F32, I8, I16, I32, I64, IR, TOKENS, V8F32, V8I32, V16I8, V16I16, V32I8,
                      _arrays, _data, _n_blocks, _offset, _result, _row_ptr, _token_rows, _tokens, _typed)


NEEDS = ("avx2", "fma", "f16c")


_FEATURES = target()[1]  # what numba compiles for (lfm2q/cpu.py)
HAVE_AVX2 = set(NEEDS) <= _FEATURES
# vpdpbusd sums 4 byte products straight into 32-bit lanes: the same integers as vpmaddubsw then
# vpmaddwd with ones (Q8_0's pairs cannot saturate, see above), one instruction instead of two.
# 256-bit vpdpbusd comes with AVX-VNNI, or with AVX-512 VNNI plus VL.
HAVE_VNNI = HAVE_AVX2 and ("avxvnni" in _FEATURES or {"avx512vnni", "avx512vl"} <= _FEATURES)

class _IR(IR):
    """IR plus the x86 integer instructions."""

    # maddubs, maddwd and fma take 256-bit vectors, or 512-bit ones (avx512.py) by their type.

    def maddubs(self, u8, s8):  # vpmaddubsw: u8*s8 products -> i16 pair sums
        n = u8.type.count
        name = "llvm.x86.avx2.pmadd.ub.sw" if n == 32 else "llvm.x86.avx512.pmaddubs.w.512"
        out = ir.VectorType(I16, n // 2)
        return self.b.call(self.fn(name, out, [u8.type, u8.type]), [u8, s8])

    def maddwd(self, a, b):  # vpmaddwd: i16*i16 products -> i32 pair sums
        n = a.type.count
        name = "llvm.x86.avx2.pmadd.wd" if n == 16 else "llvm.x86.avx512.pmaddw.d.512"
        return self.b.call(self.fn(name, ir.VectorType(I32, n // 2), [a.type, a.type]), [a, b])

    def dpbusd(self, acc, u8, s8):  # vpdpbusd: acc + sums of 4 u8*s8 products per 32-bit lane
        v8i32 = V8I32
        fn = self.fn("llvm.x86.avx512.vpdpbusd.256", v8i32, [v8i32, v8i32, v8i32])
        return self.b.call(fn, [acc, self.b.bitcast(u8, v8i32), self.b.bitcast(s8, v8i32)])

    def sign(self, a, b):  # vpsignb: a negated where b < 0, zeroed where b == 0
        return self.b.call(self.fn("llvm.x86.avx2.psign.b", V32I8, [V32I8, V32I8]), [a, b])


# --- K-quants: x in Q8_K (xq int8[cols], xd f32[cols/256], bsum int16[cols/16]) -------------

def _kquant_rows(ir_, nb, n_tok, super_block, scalar=False):
    """Per token, the sum over super-blocks of d * isum and dmin * msum, each fused into its
    own accumulator, in llama.cpp's order for the type. super_block(k) -> [(d, isum, dmin,
    msum) per token], with isum and msum either
      - <8 x i32> lanes (Q5_K, Q6_K, as ggml_vec_dot_q<5|6>_K_q8_K): 8 f32 lanes per row, d
        and dmin (negative) fused per block, the two horizontal sums added at the end; or
      - one i32 each (scalar=True; Q4_K: llama.cpp repacks Q4_K rows 8 at a time, and its
        ggml_gemv/gemm_q4_K_8x8_q8_K keep one f32 lane per row): isum * d and msum * dmin
        fused into one scalar chain each, subtracted at the end."""
    zero = ir.Constant(F32, 0.0) if scalar else ir.Constant(V8F32, [0.0] * 8)

    def body(k, *accs):
        out = []
        for (d, isum, dmin, msum), acc, acc_m in zip(super_block(k), accs[0::2], accs[1::2]):
            if scalar:
                acc = ir_.fma(ir_.b.sitofp(isum, F32), d, acc)
                acc_m = ir_.fma(ir_.b.sitofp(msum, F32), dmin, acc_m)
            else:
                acc = ir_.fma(ir_.splat(d, V8F32), ir_.b.sitofp(isum, V8F32), acc)
                if msum is not None:
                    acc_m = ir_.fma(ir_.splat(dmin, V8F32), ir_.b.sitofp(msum, V8F32), acc_m)
            out += [acc, acc_m]
        return out

    accs = ir_.loop(nb, body, *[zero] * (2 * n_tok))
    pairs = zip(accs[0::2], accs[1::2])
    if scalar:
        return [ir_.b.fsub(a, m) for a, m in pairs]
    return [ir_.b.fadd(ir_.hsum(a), ir_.hsum(m)) for a, m in pairs]


def _scales_mins_k4(ir_, w, o):
    """Q4_K/Q5_K's twelve scale bytes -> (scales, mins) as <8 x i8> each; ggml's
    get_scale_min_k4 on four 32-bit words at once."""
    b = ir_.b
    u0, u1, u2 = (ir_.load(w, b.add(o, _offset(o, 4 + 4 * k)), I32) for k in range(3))
    low6, low4, top2 = (ir.Constant(I32, m) for m in (0x3F3F3F3F, 0x0F0F0F0F, 0x03030303))
    four, six = ir.Constant(I32, 4), ir.Constant(I32, 6)
    sc_hi = b.or_(b.and_(u2, low4), b.shl(b.and_(b.lshr(u0, six), top2), four))
    m_hi = b.or_(b.and_(b.lshr(u2, four), low4), b.shl(b.and_(b.lshr(u1, six), top2), four))
    pair = ir.VectorType(I32, 2)

    def bytes8(lo, hi):
        v = b.insert_element(ir.Constant(pair, ir.Undefined), lo, ir.Constant(I32, 0))
        v = b.insert_element(v, hi, ir.Constant(I32, 1))
        return b.bitcast(v, ir.VectorType(I8, 8))

    return bytes8(b.and_(u0, low6), sc_hi), bytes8(b.and_(u1, low6), m_hi)


def _q4_q5_k(context, builder, sig, args, block_bytes, qs_at, high_bits):
    ir_ = _IR(builder)
    b = builder
    w = _data(context, b, sig.args[0], args[0])
    toks = _tokens(context, b, sig, args, 3)
    nb = _n_blocks(context, b, sig.args[0], args[0], block_bytes)
    m4, s4 = ir_.const(V32I8, 15), ir_.const(V32I8, 4)

    def super_block(k):
        o = b.mul(k, ir.Constant(I64, block_bytes))
        xo = b.mul(k, ir.Constant(I64, QK_K))
        scales, mins = _scales_mins_k4(ir_, w, o)
        sc16 = b.zext(scales, ir.VectorType(I16, 8))
        qh = ir_.load(w, b.add(o, _offset(o, 16)), V32I8) if high_bits else None
        isums = [ir.Constant(V8I32, [0] * 8)] * len(toks)
        for c in range(4):
            v = ir_.load(w, b.add(o, _offset(o, qs_at + 32 * c)), V32I8)
            lo, hi = b.and_(v, m4), b.lshr(v, s4)
            if high_bits:  # bit 2c of qh[l] tops element l of sub-block 2c, bit 2c+1 of 2c+1
                lo = b.or_(lo, b.shl(b.and_(b.lshr(qh, ir_.const(V32I8, 2 * c)), ir_.const(V32I8, 1)), s4))
                hi = b.or_(hi, b.shl(b.and_(b.lshr(qh, ir_.const(V32I8, 2 * c + 1)), ir_.const(V32I8, 1)), s4))
            sc_lo, sc_hi = ir_.lanes(sc16, [2 * c] * 16), ir_.lanes(sc16, [2 * c + 1] * 16)
            for i, (xp, _, _) in enumerate(toks):
                x_lo = ir_.load(xp, b.add(xo, _offset(xo, 64 * c)), V32I8)
                x_hi = ir_.load(xp, b.add(xo, _offset(xo, 64 * c + 32)), V32I8)
                isums[i] = b.add(isums[i], ir_.maddwd(ir_.maddubs(lo, x_lo), sc_lo))
                isums[i] = b.add(isums[i], ir_.maddwd(ir_.maddubs(hi, x_hi), sc_hi))
        # min of sub-block j times the sum of x's quants over it (two 16-sums): one vpmaddwd
        mins16 = ir_.lanes(b.zext(mins, ir.VectorType(I16, 8)), [j // 2 for j in range(16)])
        d_w, dmin_w = ir_.f16(w, o), ir_.f16(w, b.add(o, _offset(o, 2)))
        out = []
        for isum, (_, dp, sp) in zip(isums, toks):
            msum = ir_.maddwd(mins16, ir_.load(sp, b.mul(k, ir.Constant(I64, 16)), V16I16))
            dx = b.load(b.gep(dp, [k]))
            if high_bits:  # Q5_K
                out.append((b.fmul(dx, d_w), isum, b.fmul(b.fneg(dx), dmin_w), msum))
            else:  # Q4_K: whole-block integer sums, see _kquant_rows
                out.append((b.fmul(d_w, dx), ir_.isum(isum), b.fmul(dmin_w, dx), ir_.isum(msum)))
        return out

    rows = _kquant_rows(ir_, nb, len(toks), super_block, scalar=not high_bits)
    return _result(context, b, sig, rows)


def _q6_k(context, builder, sig, args):
    ir_ = _IR(builder)
    b = builder
    w = _data(context, b, sig.args[0], args[0])
    toks = _tokens(context, b, sig, args, 3)
    nb = _n_blocks(context, b, sig.args[0], args[0], Q6_K_BYTES)
    m4, k3 = ir_.const(V32I8, 15), ir_.const(V32I8, 3)

    def shr(v, n):
        return b.lshr(v, ir_.const(V32I8, n))

    def top(v):  # two high bits into place above the low four
        return b.shl(v, ir_.const(V32I8, 4))

    def super_block(k):
        o = b.mul(k, ir.Constant(I64, Q6_K_BYTES))
        xo = b.mul(k, ir.Constant(I64, QK_K))
        scales = b.sext(ir_.load(w, b.add(o, _offset(o, 192)), V16I8), V16I16)
        isums = [ir.Constant(V8I32, [0] * 8)] * len(toks)
        for h in range(2):
            ql0 = ir_.load(w, b.add(o, _offset(o, 64 * h)), V32I8)
            ql1 = ir_.load(w, b.add(o, _offset(o, 64 * h + 32)), V32I8)
            qh = ir_.load(w, b.add(o, _offset(o, 128 + 32 * h)), V32I8)
            quarters = (b.or_(b.and_(ql0, m4), top(b.and_(qh, k3))),
                        b.or_(b.and_(ql1, m4), top(b.and_(shr(qh, 2), k3))),
                        b.or_(shr(ql0, 4), top(b.and_(shr(qh, 4), k3))),
                        b.or_(shr(ql1, 4), top(shr(qh, 6))))
            for j, q in enumerate(quarters):  # q in 0..63, stored with +32
                s = 8 * h + 2 * j  # elements 0-15 of the quarter use scale s, 16-31 s + 1
                sc = ir_.lanes(scales, [s] * 8 + [s + 1] * 8)
                for i, (xp, _, _) in enumerate(toks):
                    x = ir_.load(xp, b.add(xo, _offset(xo, 128 * h + 32 * j)), V32I8)
                    isums[i] = b.add(isums[i], ir_.maddwd(ir_.maddubs(q, x), sc))
        d_w = ir_.f16(w, b.add(o, _offset(o, 208)))
        out = []
        for isum, (_, dp, sp) in zip(isums, toks):
            # (q - 32) . x = q . x - 32 * sum over each 16-group of scale * (sum of x's quants)
            offset = ir_.maddwd(scales, ir_.load(sp, b.mul(k, ir.Constant(I64, 16)), V16I16))
            isum = b.sub(isum, b.shl(offset, ir_.const(V8I32, 5)))
            out.append((b.fmul(b.load(b.gep(dp, [k])), d_w), isum, None, None))
        return out

    return _result(context, b, sig, _kquant_rows(ir_, nb, len(toks), super_block))


# --- Q8_0: x in Q8_0 (xq int8[cols], xd f32[cols/32]) ----------------------------------------

def _q8_0_block(ir_, w, o):  # Q8_0's 32 quants (int8) and its fp16 scale at byte o
    return ir_.load(w, ir_.b.add(o, _offset(o, 2)), V32I8), ir_.f16(w, o)


def _q4_0_block(ir_, w, o):
    """Q4_0's 32 quants as int8 q - 8 (element j < 16 the low nibble of byte j, j + 16 its high
    nibble) and its scale: then the Q8_0 kernel's steps, as ggml's AVX2 q4_0_q8_0 takes them."""
    b = ir_.b
    v = ir_.load(w, b.add(o, _offset(o, 2)), V16I8)
    lo = b.and_(v, ir_.const(V16I8, 15))
    hi = b.lshr(v, ir_.const(V16I8, 4))
    q = b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 32), list(range(32))))
    return b.sub(q, ir_.const(V32I8, 8)), ir_.f16(w, o)


def _nibbles(ir_, w, at):  # the 16 bytes at `at` as 32 quants 0..15: low nibbles, then high ones
    b = ir_.b
    v = ir_.load(w, at, V16I8)
    lo = b.and_(v, ir_.const(V16I8, 15))
    hi = b.lshr(v, ir_.const(V16I8, 4))
    return b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 32), list(range(32))))


def _high_bits(ir_, w, at):  # Q5_0 / Q5_1: bit j of the u32 at `at` -> byte j, as 16 or 0
    b = ir_.b
    bits = b.bitcast(ir_.load(w, at, I32), ir.VectorType(ir.IntType(1), 32))
    return b.shl(b.zext(bits, V32I8), ir_.const(V32I8, 4))


def _q5_0_block(ir_, w, o):  # Q5_0's quants as int8 q - 16 (ggml's AVX2 q5_0_q8_0), its scale
    b = ir_.b
    q = b.or_(_nibbles(ir_, w, b.add(o, _offset(o, 6))), _high_bits(ir_, w, b.add(o, _offset(o, 2))))
    return b.sub(q, ir_.const(V32I8, 16)), ir_.f16(w, o)


def _q4_1_block(ir_, w, o):  # Q4_1's quants 0..15, its scale d and min m
    return _nibbles(ir_, w, ir_.b.add(o, _offset(o, 4))), ir_.f16(w, o), ir_.f16(w, ir_.b.add(o, _offset(o, 2)))


def _q5_1_block(ir_, w, o):  # Q5_1's quants 0..31, d and m
    b = ir_.b
    q = b.or_(_nibbles(ir_, w, b.add(o, _offset(o, 8))), _high_bits(ir_, w, b.add(o, _offset(o, 4))))
    return q, ir_.f16(w, o), ir_.f16(w, b.add(o, _offset(o, 2)))


def _b32_dots(ir_, w, nb, toks, block_bytes, block):
    """Row w (nb blocks of a 32-weight type whose quants unpack to int8: Q8_0, Q4_0, Q5_0) .
    x for each token's (xq, xd) pointers in toks -> one f32 each."""
    b = ir_.b
    ones = ir_.const(V16I16, 1)

    def body(k, *accs):
        q, d_w = block(ir_, w, b.mul(k, ir.Constant(I64, block_bytes)))
        q_abs = ir_.sign(q, q)
        out = []
        for acc, (xp, dp) in zip(accs, toks):
            x = ir_.load(xp, b.mul(k, ir.Constant(I64, 32)), V32I8)
            # |w| * (x with w's sign): unsigned times signed, as vpmaddubsw needs
            if HAVE_VNNI:
                sums = ir_.dpbusd(ir.Constant(V8I32, [0] * 8), q_abs, ir_.sign(x, q))
            else:
                sums = ir_.maddwd(ir_.maddubs(q_abs, ir_.sign(x, q)), ones)
            d = b.fmul(d_w, b.load(b.gep(dp, [k])))
            out.append(ir_.fma(ir_.splat(d, V8F32), b.sitofp(sums, V8F32), acc))
        return out

    accs = ir_.loop(nb, body, *[ir.Constant(V8F32, [0.0] * 8)] * len(toks))
    return [ir_.hsum(a) for a in accs]


def _b32_min_dots(ir_, w, nb, toks, block_bytes, block):
    """Row w (nb blocks of a type with a min: Q4_1, Q5_1, value d * q + m) . x in Q8_1 for each
    token's (xq, xd, xs) pointers -> one f32 each, as ggml's AVX2 q4_1_q8_1 / q5_1_q8_1: the
    quants are unsigned, so vpmaddubsw takes them as they are; d_w * d_x fused into 8 lanes per
    block, m * s (x's fp16 block sum) added to one scalar, which joins the lanes' horizontal
    sum at the end."""
    b = ir_.b
    ones = ir_.const(V16I16, 1)

    def body(k, *accs):
        q, d_w, m_w = block(ir_, w, b.mul(k, ir.Constant(I64, block_bytes)))
        out = []
        for acc, summs, (xp, dp, sp) in zip(accs[0::2], accs[1::2], toks):
            summs = b.fadd(summs, b.fmul(m_w, b.load(b.gep(sp, [k]))))  # exact product: fp16 * fp16
            x = ir_.load(xp, b.mul(k, ir.Constant(I64, 32)), V32I8)
            if HAVE_VNNI:
                sums = ir_.dpbusd(ir.Constant(V8I32, [0] * 8), q, x)
            else:
                sums = ir_.maddwd(ir_.maddubs(q, x), ones)
            d = b.fmul(d_w, b.load(b.gep(dp, [k])))
            out += [ir_.fma(ir_.splat(d, V8F32), b.sitofp(sums, V8F32), acc), summs]
        return out

    accs = ir_.loop(nb, body, *[ir.Constant(V8F32, [0.0] * 8), ir.Constant(F32, 0.0)] * len(toks))
    return [b.fadd(ir_.hsum(a), m) for a, m in zip(accs[0::2], accs[1::2])]


def _b32(block_bytes, block, dots=_b32_dots):
    """The row kernel (one token, or TOKENS of them) of a 32-weight block type."""
    n_x = 3 if dots is _b32_min_dots else 2

    def codegen(context, builder, sig, args):
        ir_ = _IR(builder)
        w = _data(context, builder, sig.args[0], args[0])
        toks = _tokens(context, builder, sig, args, n_x)
        nb = _n_blocks(context, builder, sig.args[0], args[0], block_bytes)
        return _result(context, builder, sig, dots(ir_, w, nb, toks, block_bytes, block))
    return codegen


_q8_0 = _b32(Q8_0_BYTES, _q8_0_block)
_q4_0 = _b32(Q4_0_BYTES, _q4_0_block)
_q5_0 = _b32(Q5_0_BYTES, _q5_0_block)
_q4_1 = _b32(Q4_1_BYTES, _q4_1_block, _b32_min_dots)
_q5_1 = _b32(Q5_1_BYTES, _q5_1_block, _b32_min_dots)


# --- the kernels numba code calls -------------------------------------------------------------
# <type>_row(row, xq, xd[, bsum]) -> f32: row . x for 1-D activations (decode);
# <type>_rows(row, xq, xd[, bsum], t) -> (f32,) * TOKENS: row . x[t + i] for 2-D ones (prefill),
# each token summed in exactly the order of the 1-D kernel.

def _q4_k(context, builder, sig, args):
    return _q4_q5_k(context, builder, sig, args, Q4_K_BYTES, 16, False)


def _q5_k(context, builder, sig, args):
    return _q4_q5_k(context, builder, sig, args, Q5_K_BYTES, 48, True)


@intrinsic
def q4_k_row(typingctx, row, xq, xd, bsum):  # row uint8[cols/256*144]
    return _typed(_q4_k, row, xq, xd, bsum)


@intrinsic
def q4_k_rows(typingctx, row, xq, xd, bsum, t):
    return _typed(_q4_k, row, xq, xd, bsum, t=t)


@intrinsic
def q5_k_row(typingctx, row, xq, xd, bsum):  # row uint8[cols/256*176]
    return _typed(_q5_k, row, xq, xd, bsum)


@intrinsic
def q5_k_rows(typingctx, row, xq, xd, bsum, t):
    return _typed(_q5_k, row, xq, xd, bsum, t=t)


@intrinsic
def q6_k_row(typingctx, row, xq, xd, bsum):  # row uint8[cols/256*210]
    return _typed(_q6_k, row, xq, xd, bsum)


@intrinsic
def q6_k_rows(typingctx, row, xq, xd, bsum, t):
    return _typed(_q6_k, row, xq, xd, bsum, t=t)


@intrinsic
def q8_0_row(typingctx, row, xq, xd):  # row uint8[cols/32*34], x in Q8_0
    return _typed(_q8_0, row, xq, xd)


@intrinsic
def q8_0_rows(typingctx, row, xq, xd, t):
    return _typed(_q8_0, row, xq, xd, t=t)


@intrinsic
def q4_0_row(typingctx, row, xq, xd):  # row uint8[cols/32*18], x in Q8_0
    return _typed(_q4_0, row, xq, xd)


@intrinsic
def q4_0_rows(typingctx, row, xq, xd, t):
    return _typed(_q4_0, row, xq, xd, t=t)


@intrinsic
def q5_0_row(typingctx, row, xq, xd):  # row uint8[cols/32*22], x in Q8_0
    return _typed(_q5_0, row, xq, xd)


@intrinsic
def q5_0_rows(typingctx, row, xq, xd, t):
    return _typed(_q5_0, row, xq, xd, t=t)


@intrinsic
def q4_1_row(typingctx, row, xq, xd, xs):  # row uint8[cols/32*20], x in Q8_1 (xs: its block sums)
    return _typed(_q4_1, row, xq, xd, xs)


@intrinsic
def q4_1_rows(typingctx, row, xq, xd, xs, t):
    return _typed(_q4_1, row, xq, xd, xs, t=t)


@intrinsic
def q5_1_row(typingctx, row, xq, xd, xs):  # row uint8[cols/32*24], x in Q8_1
    return _typed(_q5_1, row, xq, xd, xs)


@intrinsic
def q5_1_rows(typingctx, row, xq, xd, xs, t):
    return _typed(_q5_1, row, xq, xd, xs, t=t)


def _broadcast32(ir_, base, offset, lanes=8):  # the 4 bytes at `offset` of base (i8* or i16*) in all dwords
    b = ir_.b
    word = ir_.load(b.bitcast(base, I8.as_pointer()), offset, I32)
    return ir_.splat(word, ir.VectorType(I32, lanes))


def _packed_tail(ir_, k, toks, isums, accs, mins, d_rows, dm_rows):
    """The float steps of a packed Q4_K super-block k for each token, on 8 or 16 row lanes (AVX2
    or AVX-512 kernel): the mins times x's sums per pair of sub-blocks (mins: one i16 vector per
    pair), then d * isum and dmin * msum fused into each token's two accumulators."""
    b = ir_.b
    c = lambda v: ir.Constant(I64, v)  # noqa: E731
    lanes = d_rows.type.count
    vi, vf = ir.VectorType(I32, lanes), ir.VectorType(F32, lanes)
    res = []
    for (_, dp, sp, _), isum, acc, acc_m in zip(toks, isums, accs[0::2], accs[1::2]):
        msum = ir.Constant(vi, [0] * lanes)
        for p in range(4):  # sub-blocks 2p, 2p+1: x's sums over them, as one int16 pair
            pair = b.bitcast(_broadcast32(ir_, sp, b.add(b.mul(k, c(16)), c(4 * p)), lanes), mins[p].type)
            msum = b.add(msum, ir_.maddwd(mins[p], pair))
        dx = ir_.splat(b.load(b.gep(dp, [k])), vf)
        res.append(ir_.fma(b.sitofp(isum, vf), b.fmul(d_rows, dx), acc))
        res.append(ir_.fma(b.sitofp(msum, vf), b.fmul(dm_rows, dx), acc_m))
    return res


def _packed_loop(ir_, nb, body, toks, lanes):
    """Run body over the nb super-blocks; store acc - acc_m (f32 x lanes) at each token's output."""
    vf = ir.VectorType(F32, lanes)
    accs = ir_.loop(nb, body, *[ir.Constant(vf, [0.0] * lanes)] * (2 * len(toks)))
    for (_, _, _, op), acc, acc_m in zip(toks, accs[0::2], accs[1::2]):
        ir_.b.store(ir_.b.fsub(acc, acc_m), ir_.b.bitcast(op, vf.as_pointer()), align=4)


# --- Q4_K rows packed 8 at a time at load time (repack.pack_q4_k8) ----------------------------
# Decode and prefill over the packed layout: per super-block of 8 rows, 32 vectors of 4 bytes
# from each row (low nibbles: sub-block 2c, high nibbles: 2c + 1), then the rows' 6-bit scales,
# mins in pairs of sub-blocks, and fp16 d and dmin (repack.py). Lanes are rows; 4 bytes of x
# go to every lane (vpbroadcastd) and 8 byte products add up in 16 bits (8 * 2 * 15 * 128 <
# 32768) before the scales go on with one vpmaddwd. The integer sums per super-block and the
# float steps are the row kernel's (q4_k_row), so a packed matrix gives the same bits. x comes
# as Q8_K plus its sums per 32 (int16[cols/32]); prefill runs TOKENS positions per call.

def _q4_k_packed(context, builder, sig, args):
    ir_ = _IR(builder)
    b = builder
    c = lambda v: ir.Constant(I64, v)  # noqa: E731
    prow = _row_ptr(context, b, sig.args[0], args[0], args[1])  # group gi's packed bytes
    a = context.make_array(sig.args[0])(context, b, args[0])
    nb = b.udiv(cgutils.unpack_tuple(b, a.shape)[1], c(P_BYTES))
    r0 = b.mul(args[1], c(8))
    if sig.args[2].ndim == 1:  # one token
        out_ty, out = sig.args[-1], args[-1]
        toks = [[_data(context, b, ty, v) for ty, v in zip(sig.args[2:5], args[2:5])]
                + [b.gep(_data(context, b, out_ty, out), [r0])]]
    else:
        toks = _token_rows(context, b, sig, args, slice(2, 5), args[5], r0)
    m4 = ir_.const(V32I8, 15)
    pair_lanes = [r // 2 for r in range(16)]  # sub-block scale of row r in lanes 2r, 2r+1
    V8I8, V8F16 = ir.VectorType(I8, 8), ir.VectorType(F16, 8)

    def body(k, *accs):
        pk = b.mul(k, c(P_BYTES))
        xk = b.mul(k, c(QK_K))
        scales = [b.zext(ir_.lanes(ir_.load(prow, b.add(pk, c(P_SC + 8 * j)), V8I8), pair_lanes), V16I16)
                  for j in range(8)]
        mins = [b.zext(ir_.load(prow, b.add(pk, c(P_MN + 16 * p)), V16I8), V16I16) for p in range(4)]
        d_rows = b.fpext(ir_.load(prow, b.add(pk, c(P_D)), V8F16), V8F32)
        dm_rows = b.fpext(ir_.load(prow, b.add(pk, c(P_DMIN)), V8F16), V8F32)
        # Each unpacked weight vector meets every token before the next is loaded: the
        # per-token 16-bit sums stay in registers instead of 64 unpacked vectors.
        isums = [ir.Constant(V8I32, [0] * 8)] * len(toks)
        for ch in range(4):
            p_lo, p_hi = [None] * len(toks), [None] * len(toks)
            for g in range(8):
                v = ir_.load(prow, b.add(pk, c(P_QS + 32 * (8 * ch + g))), V32I8)
                lo, hi = b.and_(v, m4), b.lshr(v, ir_.const(V32I8, 4))
                for i, (xp, _, _, _) in enumerate(toks):
                    x_lo = b.bitcast(_broadcast32(ir_, xp, b.add(xk, c(64 * ch + 4 * g))), V32I8)
                    x_hi = b.bitcast(_broadcast32(ir_, xp, b.add(xk, c(64 * ch + 32 + 4 * g))), V32I8)
                    q_lo, q_hi = ir_.maddubs(lo, x_lo), ir_.maddubs(hi, x_hi)
                    p_lo[i] = q_lo if p_lo[i] is None else b.add(p_lo[i], q_lo)
                    p_hi[i] = q_hi if p_hi[i] is None else b.add(p_hi[i], q_hi)
            for i in range(len(toks)):
                isums[i] = b.add(isums[i], ir_.maddwd(p_lo[i], scales[2 * ch]))
                isums[i] = b.add(isums[i], ir_.maddwd(p_hi[i], scales[2 * ch + 1]))
        return _packed_tail(ir_, k, toks, isums, accs, mins, d_rows, dm_rows)

    _packed_loop(ir_, nb, body, toks, 8)
    return context.get_dummy_value()


@intrinsic
def q4_k_packed(typingctx, packed, gi, xq, xd, bs32, out):
    """out[8gi : 8gi + 8] = rows 8gi.. . x, from packed uint8[rows/8, nb*P_BYTES] (repack.py);
    x in Q8_K (xq int8[cols], xd f32[cols/256]) with bs32 int16[cols/32]; out f32[rows]."""
    if not (_arrays(2, packed) and _arrays(1, xq, xd, bs32, out) and isinstance(gi, types.Integer)):
        return None
    return types.none(packed, gi, xq, xd, bs32, out), _q4_k_packed


@intrinsic
def q4_k_packed_rows(typingctx, packed, gi, xq, xd, bs32, t, out):
    """out[t + i, 8gi : 8gi + 8] for i < TOKENS: q4_k_packed for rows t.. of 2-D xq, xd, bs32,
    out f32[n, rows]."""
    if not (_arrays(2, packed, xq, xd, bs32, out) and isinstance(gi, types.Integer)
            and isinstance(t, types.Integer)):
        return None
    return types.none(packed, gi, xq, xd, bs32, t, out), _q4_k_packed
