"""NEON row kernels for aarch64: the integer dot products of intdot.py with 128-bit SIMD.

Why: intdot.py's portable loops leave LLVM to find widening multiplies in scalar code. NEON
multiplies 16 signed bytes by 16 signed bytes into 4 int32 lanes in one `sdot` where the CPU
has the dot-product extension (Pi 5: Cortex-A76; most cores since 2018), and in four
(`smull`, `smull2`, `saddlp`/`sadalp` twice, one `addp` a group) on Pi 4-class cores without
it (Cortex-A72). These kernels emit either form as LLVM IR through numba intrinsics, chosen
by the features numba compiles for (lfm2q/cpu.py reads them from the kernel's hwcaps): a Pi 4
never meets `sdot` (SIGILL).

Both forms compute the same thing, lane for lane: `_IR.dot4(acc, pairs)` adds to int32 lane i
the products of bytes 4i..4i+3 of every 16-byte pair (the widening form pairs its partial sums
with one `addp` so that its lanes hold the same bytes as `sdot`'s). So a Pi 4 and a Pi 5 give
the same bits, and every integer sum is exact (no 16-bit step can saturate: each product of
two int8 fits int16, and the pair sums are taken in int32).

Each kernel is one row . x, as every backend offers it (portable.py):
`<type>_row(row, xq, xd[, bsum]) -> f32` for one position (decode) and
`<type>_rows(row, xq, xd[, bsum], t) -> (f32,) * TOKENS` for positions t.. (prefill), each
position summed by exactly the steps of the row form: decode and prefill give the same bits.

The integer sums per sub-block are intdot.py's exactly. The float steps, in this fixed order
(tests/test_neon.py reproduces them in NumPy bit for bit):
  - K-quants (Q4_K, Q5_K, Q6_K), per super-block k with isum, msum its exact int32 sums:
        acc  = fma(f32(isum), d_w * xd[k], acc)
        accm = fma(f32(msum), dmin_w * xd[k], accm)        (not for Q6_K, whose offset 32
    result acc - accm (Q6_K: acc).                          is subtracted from the quants)
    For Q4_K these are x86_avx2.q4_k_row's steps: the same bits as on x86.
  - Q8_0, per block k of 32: s = dot4 lanes (4 int32: bytes 4i..4i+3 and 16+4i..),
        acc_(k%2) = fma(f32(s), splat(d_w * xd[k]), acc_(k%2))     (two 4-lane chains)
    result: with v = acc_0 + acc_1, (v0 + v1) + (v2 + v3).
  - Q4_0, per block k of 32 with s its exact int32 sum (one number: what the packed kernel's
    row lane holds, so packed and unpacked rows give the same bits),
        acc_(k%2) = fma(f32(s), d_w * xd[k], acc_(k%2))            (two scalar chains)
    result acc_0 + acc_1. An odd last block goes to chain 0 (Q8_0 too).

Call the kernels only from functions compiled without fastmath (see x86_avx2.py: the
intrinsic's float instructions land in the caller and would be reordered per call site).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ...cpu import target
from ..kquants import Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K
from ..q4_0 import Q4_0_BYTES
from ..q8_0 import BLOCK_BYTES as Q8_0_BYTES
from ..repack import K8_MN, K8_QS, K8_SC, P_BYTES, P_D, P_DMIN, P_MN, P_QS, P_SC, Q4_0_P_BYTES, Q4_0_P_D
from .llvm_ir import (F32, I8, I16, I32, I64, IR, TOKENS, V16I8, _arrays, _data, _n_blocks, _offset,
                      _packed_operands, _result, _row_ptr, _token_rows, _tokens, _typed)

_FEATURES = target()[1]  # what numba compiles for (lfm2q/cpu.py)
HAVE_DOTPROD = "dotprod" in _FEATURES
# smmla (FEAT_I8MM: Neoverse N2 / V1 / V2, Cortex-A510 / A710 / X2 and later, Apple M2+, Graviton 3+):
# the i8mm kernels decode with sdot too, and every core with i8mm has dotprod
HAVE_I8MM = HAVE_DOTPROD and "i8mm" in _FEATURES

V8I8, V8I16, V4I16, V4I32, V4F32 = (ir.VectorType(I8, 8), ir.VectorType(I16, 8), ir.VectorType(I16, 4),
                                    ir.VectorType(I32, 4), ir.VectorType(F32, 4))
_LO, _HI = list(range(8)), list(range(8, 16))


class _IR(IR):
    """IR plus the aarch64 NEON integer steps."""

    def sdot(self, acc, a, b):  # acc.4s + sums of 4 int8 products per lane
        fn = self.fn("llvm.aarch64.neon.sdot.v4i32.v16i8", V4I32, [V4I32, V16I8, V16I8])
        return self.b.call(fn, [acc, a, b])

    def smmla(self, acc, a, b):  # acc.4s + a (2x8 int8) times b (2x8) transposed: lane 2i + j += a_i . b_j
        fn = self.fn("llvm.aarch64.neon.smmla.v4i32.v16i8", V4I32, [V4I32, V16I8, V16I8])
        return self.b.call(fn, [acc, a, b])

    def tbl(self, table, idx):  # byte i = table[idx[i]], 0 where idx[i] > 15
        fn = self.fn("llvm.aarch64.neon.tbl1.v16i8", V16I8, [V16I8, V16I8])
        return self.b.call(fn, [table, idx])

    def smull(self, a, b):  # <8 x i8> * <8 x i8> -> <8 x i16>, exact
        return self.b.call(self.fn("llvm.aarch64.neon.smull.v8i16", V8I16, [V8I8, V8I8]), [a, b])

    def saddlp(self, v):  # <8 x i16> -> <4 x i32>: sums of adjacent pairs
        return self.b.call(self.fn("llvm.aarch64.neon.saddlp.v4i32.v8i16", V4I32, [V8I16]), [v])

    def addp(self, a, b):  # [a0+a1, a2+a3, b0+b1, b2+b3]
        return self.b.call(self.fn("llvm.aarch64.neon.addp.v4i32", V4I32, [V4I32, V4I32]), [a, b])

    def dot4(self, acc, pairs, narrow=False):
        """acc (<4 x i32>, or None for zeros) + for each (a, b) of <16 x i8>: lane i gets the
        products of bytes 4i..4i+3. sdot with dotprod; else smull per half, the pair sums
        accumulated in int32 (saddlp, then add: LLVM's sadalp), one addp to regroup.
        narrow=True (the caller's bound: every lane's products, summed over the pairs, fit
        int16): the halves' products accumulate in int16 first (smlal), then one saddlp."""
        b = self.b
        if HAVE_DOTPROD:
            acc = ir.Constant(V4I32, [0] * 4) if acc is None else acc
            for u, v in pairs:
                acc = self.sdot(acc, u, v)
            return acc
        halves = []
        for idx in (_LO, _HI):
            prods = [self.smull(self.lanes(u, idx), self.lanes(v, idx)) for u, v in pairs]
            if narrow:
                p = prods[0]
                for q in prods[1:]:
                    p = b.add(p, q)  # smlal
                halves.append(self.saddlp(p))
            else:
                p = self.saddlp(prods[0])
                for q in prods[1:]:
                    p = b.add(p, self.saddlp(q))  # sadalp
                halves.append(p)
        s = self.addp(*halves)
        return s if acc is None else b.add(acc, s)

    def lane_sums(self, pairs, narrow=False):
        """<4 x i32> whose lanes add up to the exact sum of every product of pairs: dot4
        without the lane regrouping (which only the lanes' identity needs)."""
        if HAVE_DOTPROD:
            return self.dot4(None, pairs)
        b = self.b
        halves = []
        for idx in (_LO, _HI):
            prods = [self.smull(self.lanes(u, idx), self.lanes(v, idx)) for u, v in pairs]
            p = prods[0]
            if narrow:
                for q in prods[1:]:
                    p = b.add(p, q)  # smlal
                halves.append(self.saddlp(p))
            else:
                p = self.saddlp(p)
                for q in prods[1:]:
                    p = b.add(p, self.saddlp(q))  # sadalp
                halves.append(p)
        return b.add(*halves)

    def cvt_fixed(self, v, bits):  # <4 x i32> -> <4 x f32> v / 2^bits (scvtf #bits: one rounding)
        fn = self.fn("llvm.aarch64.neon.vcvtfxs2fp.v4f32.v4i32", V4F32, [V4I32, I32])
        return self.b.call(fn, [v, ir.Constant(I32, bits)])

    def opaque_ptr(self, p):  # p through an empty inline asm with side effects: a new pointer
        return self.b.asm(ir.FunctionType(p.type, [p.type]), "", "=r,0", [p], True)

    def opaque(self, v):
        """v through an empty inline asm: LLVM cannot look into it, so the lanes taken of it
        stay lanes of a vector register (mla by element) instead of being rebuilt per use."""
        return self.b.asm(ir.FunctionType(v.type, [v.type]), "", "=w,0", [v], False)

    def addv(self, v):  # <N x i32> -> i32, exact
        name = f"llvm.vector.reduce.add.v{v.type.count}i32"
        return self.b.call(self.fn(name, I32, [v.type]), [v])

    def hsum4(self, v):  # (v0 + v1) + (v2 + v3)
        b = self.b
        h = b.fadd(self.lanes(v, [0, 2]), self.lanes(v, [1, 3]))
        return b.fadd(b.extract_element(h, ir.Constant(I32, 0)), b.extract_element(h, ir.Constant(I32, 1)))

    def smull4(self, a, b):  # <4 x i16> * <4 x i16> -> <4 x i32>, exact
        return self.b.call(self.fn("llvm.aarch64.neon.smull.v4i32", V4I32, [V4I16, V4I16]), [a, b])

    # K-quant sub-blocks: sum_j scale_j * (q . x over sub-block j), exact in int32 lanes whose
    # split does not matter (the super-block's sum is taken with addv at the end).

    def kscales(self, v16):
        """<8 x i16> sub-block scales -> the form kdot takes: with dotprod two <4 x i32>
        (mla by element), else the <8 x i16> itself (smlal by element); opaque either way."""
        if HAVE_DOTPROD:
            return [self.opaque(self.b.sext(self.lanes(v16, list(range(4 * h, 4 * h + 4))), V4I32))
                    for h in range(2)]
        return [self.opaque(v16)]

    def kdot(self, acc, pairs, scales, j):
        """acc + scale j * the products of pairs (None: start). dotprod: sdot, then mla by
        element. Else the halves' products summed in int16 (caller's bound: every int16 lane's
        products fit), then widened times the scale (smull/smlal by element) into two int32
        accumulators."""
        b = self.b
        if HAVE_DOTPROD:
            m = b.mul(self.dot4(None, pairs), self.lanes(scales[j // 4], [j % 4] * 4))
            return m if acc is None else b.add(acc, m)
        p = None
        for u, v in pairs:
            for idx in (_LO, _HI):
                prod = self.smull(self.lanes(u, idx), self.lanes(v, idx))
                p = prod if p is None else b.add(p, prod)  # smlal
        sc = self.lanes(scales[j // 8], [j % 8] * 4)
        lo, hi = self.smull4(self.lanes(p, [0, 1, 2, 3]), sc), self.smull4(self.lanes(p, [4, 5, 6, 7]), sc)
        return (lo, hi) if acc is None else (b.add(acc[0], lo), b.add(acc[1], hi))

    def ksum(self, acc):  # kdot's accumulators -> i32
        return self.addv(acc if HAVE_DOTPROD else self.b.add(acc[0], acc[1]))

    def vconst(self, value, vty=V16I8):
        return self.const(vty, value)


def _c(v):
    return ir.Constant(I64, v)


# --- K-quants: x in Q8_K (xq int8[cols], xd f32[cols/256], bsum int16[cols/16]) -------------

def _kquant_loop(ir_, nb, xds, super_block, with_mins):
    """Per token (xds: its xd pointers), the fixed float steps of the module docstring over
    the nb super-blocks; super_block(k) -> ([(isum, msum or None) per token], d_w, dmin_w)."""
    b = ir_.b
    zero = ir.Constant(F32, 0.0)

    def body(k, *accs):
        sums, d_w, dmin_w = super_block(k)
        out = []
        for i, (isum, msum) in enumerate(sums):
            dx = b.load(b.gep(xds[i], [k]))
            out.append(ir_.fma(b.sitofp(isum, F32), b.fmul(d_w, dx), accs[2 * i]))
            out.append(ir_.fma(b.sitofp(msum, F32), b.fmul(dmin_w, dx), accs[2 * i + 1])
                       if with_mins else accs[2 * i + 1])
        return out

    accs = ir_.loop(nb, body, *[zero] * (2 * len(xds)))
    return [b.fsub(a, m) if with_mins else a for a, m in zip(accs[0::2], accs[1::2])]


def _scales_mins_k4(ir_, w, o):
    """Q4_K/Q5_K's twelve scale bytes -> (scales, mins) as two <4 x i32> each (sub-blocks
    0-3, 4-7); ggml's get_scale_min_k4 on four 32-bit words at once."""
    b = ir_.b
    u0, u1, u2 = (ir_.load(w, b.add(o, _offset(o, 4 + 4 * k)), I32) for k in range(3))
    low6, low4, top2 = (ir.Constant(I32, m) for m in (0x3F3F3F3F, 0x0F0F0F0F, 0x03030303))
    four, six = ir.Constant(I32, 4), ir.Constant(I32, 6)
    sc_hi = b.or_(b.and_(u2, low4), b.shl(b.and_(b.lshr(u0, six), top2), four))
    m_hi = b.or_(b.and_(b.lshr(u2, four), low4), b.shl(b.and_(b.lshr(u1, six), top2), four))
    pair = ir.VectorType(I32, 2)

    def bytes8(lo, hi):  # two words -> <8 x i8> -> <8 x i16>
        v = b.insert_element(ir.Constant(pair, ir.Undefined), lo, ir.Constant(I32, 0))
        v = b.insert_element(v, hi, ir.Constant(I32, 1))
        return b.zext(b.bitcast(v, V8I8), V8I16)

    return bytes8(b.and_(u0, low6), sc_hi), bytes8(b.and_(u1, low6), m_hi)


def _token_groups(ir_, w, n, size):
    """[(token indices, weight pointer)]: prefill's positions in groups of `size`, each group
    unpacking the weights anew from a pointer LLVM cannot prove equal to the last (an opaque
    copy), so that fewer vectors stay live (Q4_K without dotprod: 4 positions at once spill,
    llvm-mca on the Cortex-A72 has 68.9 cycles per 256 weights and position against 58.9 in
    pairs; the other kernels are fastest with all 4, benchmarks/mca_arm64.py)."""
    out = []
    for g0 in range(0, n, size):
        out.append((list(range(g0, min(n, g0 + size))), w if g0 == 0 else ir_.opaque_ptr(w)))
    return out


def _q4_q5_k(context, builder, sig, args, block_bytes, qs_at, high_bits):
    ir_ = _IR(builder)
    b = builder
    w = _data(context, b, sig.args[0], args[0])
    toks = _tokens(context, b, sig, args, 3)
    nb = _n_blocks(context, b, sig.args[0], args[0], block_bytes)
    m4, s4, one = ir_.vconst(15), ir_.vconst(4), ir_.vconst(1)

    def super_block(k):
        o = b.mul(k, _c(block_bytes))
        xo = b.mul(k, _c(QK_K))
        sc16, mn16 = _scales_mins_k4(ir_, w, o)
        scales = ir_.kscales(sc16)
        isums = [None] * len(toks)
        size = 2 if not (HAVE_DOTPROD or high_bits) else len(toks)
        for group, wg in _token_groups(ir_, w, len(toks), size):
            qh = [ir_.load(wg, b.add(o, _offset(o, 16 + 16 * h)), V16I8) for h in range(2)] if high_bits else None
            for c in range(4):
                v = [ir_.load(wg, b.add(o, _offset(o, qs_at + 32 * c + 16 * h)), V16I8) for h in range(2)]
                lo = [b.and_(u, m4) for u in v]
                hi = [b.lshr(u, s4) for u in v]
                if high_bits:  # bit 2c of qh[l] tops element l of sub-block 2c, bit 2c+1 of 2c+1
                    lo = [b.or_(q, b.shl(b.and_(b.lshr(h, ir_.vconst(2 * c)), one), s4)) for q, h in zip(lo, qh)]
                    hi = [b.or_(q, b.shl(b.and_(b.lshr(h, ir_.vconst(2 * c + 1)), one), s4)) for q, h in zip(hi, qh)]
                for i in group:
                    xp = toks[i][0]
                    x = [ir_.load(xp, b.add(xo, _offset(xo, 64 * c + 16 * h)), V16I8) for h in range(4)]
                    # a sub-block's 32 products of |q x| <= 31 * 128: four per int16 lane fit
                    isums[i] = ir_.kdot(isums[i], [(lo[0], x[0]), (lo[1], x[1])], scales, 2 * c)
                    isums[i] = ir_.kdot(isums[i], [(hi[0], x[2]), (hi[1], x[3])], scales, 2 * c + 1)
        mins = b.sext(mn16, ir.VectorType(I32, 8))
        sums = []
        for isum, (_, _, sp) in zip(isums, toks):
            # x's sums per 32 (pairs of its sums per 16) times the sub-blocks' mins
            bs = [ir_.load(sp, b.add(b.mul(k, _c(16)), _c(8 * h)), V8I16) for h in range(2)]
            even, odd = (b.shuffle_vector(bs[0], bs[1], ir.Constant(ir.VectorType(I32, 8), list(range(h, 16, 2))))
                         for h in range(2))
            pairs = b.add(even, odd)  # |sum| <= 32 * 128: int16 (ggml's vpaddq_s16 too)
            msum = ir_.addv(b.mul(b.sext(pairs, ir.VectorType(I32, 8)), mins))
            sums.append((ir_.ksum(isum), msum))
        return sums, ir_.f16(w, o), ir_.f16(w, b.add(o, _offset(o, 2)))

    return _result(context, b, sig, _kquant_loop(ir_, nb, [dp for _, dp, _ in toks], super_block, True))


def _q6_k(context, builder, sig, args):
    ir_ = _IR(builder)
    b = builder
    w = _data(context, b, sig.args[0], args[0])
    toks = _tokens(context, b, sig, args, 3)
    nb = _n_blocks(context, b, sig.args[0], args[0], Q6_K_BYTES)
    m4, k3 = ir_.vconst(15), ir_.vconst(3)
    v16i32 = ir.VectorType(I32, 16)

    def shr(v, n):
        return b.lshr(v, ir_.vconst(n))

    def top(v):  # two high bits into place above the low four
        return b.shl(v, ir_.vconst(4))

    def super_block(k):
        o = b.mul(k, _c(Q6_K_BYTES))
        xo = b.mul(k, _c(QK_K))
        sc8 = ir_.load(w, b.add(o, _offset(o, 192)), V16I8)
        scales = ir_.kscales(b.sext(ir_.lanes(sc8, _LO), V8I16)) + ir_.kscales(b.sext(ir_.lanes(sc8, _HI), V8I16))
        isums = [None] * len(toks)
        for group, wg in _token_groups(ir_, w, len(toks), len(toks)):
            for h in range(2):
                for g in range(2):  # elements 16g..16g+15 of each quarter: one scale each
                    ql0 = ir_.load(wg, b.add(o, _offset(o, 64 * h + 16 * g)), V16I8)
                    ql1 = ir_.load(wg, b.add(o, _offset(o, 64 * h + 32 + 16 * g)), V16I8)
                    qh = ir_.load(wg, b.add(o, _offset(o, 128 + 32 * h + 16 * g)), V16I8)
                    quarters = (b.or_(b.and_(ql0, m4), top(b.and_(qh, k3))),
                                b.or_(b.and_(ql1, m4), top(b.and_(shr(qh, 2), k3))),
                                b.or_(shr(ql0, 4), top(b.and_(shr(qh, 4), k3))),
                                b.or_(shr(ql1, 4), top(shr(qh, 6))))
                    for j, q in enumerate(quarters):  # q in 0..63, stored with +32: taken off below
                        for i in group:
                            xp = toks[i][0]
                            x = ir_.load(xp, b.add(xo, _offset(xo, 128 * h + 32 * j + 16 * g)), V16I8)
                            # 16 products of |q x| <= 63 * 128: two per int16 lane fit
                            isums[i] = ir_.kdot(isums[i], [(q, x)], scales, 8 * h + 2 * j + g)
        sc = b.sext(sc8, v16i32)
        sums = []
        for isum, (_, _, sp) in zip(isums, toks):
            # (q - 32) . x = q . x - 32 * sum over the 16-groups of scale * (x's sum over it)
            bs = b.sext(ir_.load(sp, b.mul(k, _c(16)), ir.VectorType(I16, 16)), v16i32)
            offset = ir_.addv(b.mul(bs, sc))
            sums.append((b.sub(ir_.ksum(isum), b.shl(offset, ir.Constant(I32, 5))), None))
        return sums, ir_.f16(w, b.add(o, _offset(o, 208))), None

    return _result(context, b, sig, _kquant_loop(ir_, nb, [dp for _, dp, _ in toks], super_block, False))


# --- Q8_0 and Q4_0: x in Q8_0 (xq int8[cols], xd f32[cols/32]) --------------------------------

def _blocks32(context, builder, sig, args, block_bytes, weights, narrow):
    """The Q8_0-activation kernels: weights(o) -> the block's two <16 x i8> quant vectors
    (elements 0-15, 16-31) at byte o; the float steps of the module docstring. narrow: two
    products a lane fit int16 (Q4_0: |q x| <= 8 * 128; not Q8_0, whose 2 * 128 * 128 does not)."""
    ir_ = _IR(builder)
    b = builder
    w = _data(context, b, sig.args[0], args[0])
    toks = _tokens(context, b, sig, args, 2)
    nb = _n_blocks(context, b, sig.args[0], args[0], block_bytes)

    def block(k, accs):
        o = b.mul(k, _c(block_bytes))
        q0, q1 = weights(ir_, w, o)
        d_w = ir_.f16(w, o)
        out = []
        for acc, (xp, dp) in zip(accs, toks):
            xo = b.mul(k, _c(32))
            x0, x1 = ir_.load(xp, xo, V16I8), ir_.load(xp, b.add(xo, _c(16)), V16I8)
            s = ir_.dot4(None, [(q0, x0), (q1, x1)], narrow=narrow)
            d = b.fmul(d_w, b.load(b.gep(dp, [k])))
            out.append(ir_.fma(b.sitofp(s, V4F32), ir_.splat(d, V4F32), acc))
        return out

    n = len(toks)
    half = b.udiv(nb, _c(2))

    def pair(j, *accs):  # blocks 2j (chain 0) and 2j + 1 (chain 1)
        k = b.mul(j, _c(2))
        return block(k, accs[:n]) + block(b.add(k, _c(1)), accs[n:])

    zero = ir.Constant(V4F32, [0.0] * 4)
    accs = ir_.loop(half, pair, *[zero] * (2 * n))
    tail = ir_.loop(b.sub(nb, b.mul(half, _c(2))),  # an odd last block: chain 0
                    lambda j, *a: block(b.add(b.mul(half, _c(2)), j), a), *accs[:n])
    return _result(context, b, sig, [ir_.hsum4(b.fadd(a0, a1)) for a0, a1 in zip(tail, accs[n:])])


def _q8_0_quants(ir_, w, o):
    b = ir_.b
    return ir_.load(w, b.add(o, _c(2)), V16I8), ir_.load(w, b.add(o, _c(18)), V16I8)


def _q4_0_quants(ir_, w, o):  # element j < 16: low nibble of qs[j], j + 16: its high nibble; q - 8
    b = ir_.b
    qs = ir_.load(w, b.add(o, _c(2)), V16I8)
    eight = ir_.vconst(8)
    return b.sub(b.and_(qs, ir_.vconst(15)), eight), b.sub(b.lshr(qs, ir_.vconst(4)), eight)


def _q4_k(context, builder, sig, args):
    return _q4_q5_k(context, builder, sig, args, Q4_K_BYTES, 16, False)


def _q5_k(context, builder, sig, args):
    return _q4_q5_k(context, builder, sig, args, Q5_K_BYTES, 48, True)


def _q8_0(context, builder, sig, args):
    return _blocks32(context, builder, sig, args, Q8_0_BYTES, _q8_0_quants, False)


def _q4_0(context, builder, sig, args):
    """Q4_0 rows, Q4_0's float steps of the module docstring. The blocks go in pairs (2j chain
    0, 2j + 1 chain 1): two addp put the pair's exact sums in the lanes of one <2 x i32>, and
    the two scalar chains run as the lanes of one <2 x f32> (fma lane for lane: the same bits
    as two scalar chains, with one convert, multiply and fma for both)."""
    ir_ = _IR(builder)
    b = builder
    w = _data(context, b, sig.args[0], args[0])
    toks = _tokens(context, b, sig, args, 2)
    nb = _n_blocks(context, b, sig.args[0], args[0], Q4_0_BYTES)
    V2I16, V2F16, V2I32, V2F32 = (ir.VectorType(t, 2) for t in (I16, ir.HalfType(), I32, F32))

    def sums(k):  # per token: <4 x i32> lanes summing to block k's products (|q x| <= 8 * 128)
        o = b.mul(k, _c(Q4_0_BYTES))
        q0, q1 = _q4_0_quants(ir_, w, o)
        xo = b.mul(k, _c(32))
        return [ir_.lane_sums([(q0, ir_.load(xp, xo, V16I8)), (q1, ir_.load(xp, b.add(xo, _c(16)), V16I8))],
                              narrow=True) for xp, _ in toks]

    def pair(j, *accs):
        k = b.mul(j, _c(2))
        k1 = b.add(k, _c(1))
        s0, s1 = sums(k), sums(k1)
        d2 = ir.Constant(V2I16, ir.Undefined)
        for h, kk in enumerate((k, k1)):
            d2 = b.insert_element(d2, ir_.load(w, b.mul(kk, _c(Q4_0_BYTES)), I16), ir.Constant(I32, h))
        d2 = b.fpext(b.bitcast(d2, V2F16), V2F32)
        out = []
        for acc, a0, a1, (_, dp) in zip(accs, s0, s1, toks):
            t = ir_.addp(a0, a1)  # |sum| <= 32 * 8 * 128: exact in f32
            t = ir_.lanes(ir_.addp(t, t), [0, 1])
            xd2 = b.load(b.bitcast(b.gep(dp, [k]), V2F32.as_pointer()), align=4)
            out.append(ir_.fma(b.sitofp(t, V2F32), b.fmul(d2, xd2), acc))
        return out

    half = b.udiv(nb, _c(2))
    accs = ir_.loop(half, pair, *[ir.Constant(V2F32, [0.0] * 2)] * len(toks))
    zero = ir.Constant(I32, 0)

    def last(j, *chain0):  # an odd last block: chain 0
        k = b.add(b.mul(half, _c(2)), j)
        d_w = ir_.f16(w, b.mul(k, _c(Q4_0_BYTES)))
        return [ir_.fma(b.sitofp(ir_.addv(v), F32), b.fmul(d_w, b.load(b.gep(dp, [k]))), acc)
                for acc, v, (_, dp) in zip(chain0, sums(k), toks)]

    tail = ir_.loop(b.sub(nb, b.mul(half, _c(2))), last, *[b.extract_element(a, zero) for a in accs])
    return _result(context, b, sig, [b.fadd(t0, b.extract_element(a, ir.Constant(I32, 1)))
                                     for t0, a in zip(tail, accs)])


# --- the kernels numba code calls -------------------------------------------------------------

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


# --- Q4_K rows packed 8 at a time at load time (repack.pack_q4_k8), with dotprod -------------
# Per super-block of a group of 8 rows, each 32 bytes of the packed quants hold 4 bytes (8
# weights) of every row: rows 0-3 in the first 16, rows 4-7 in the next. One lane-indexed
# `sdot v.4s, w.16b, x.4b[g]` multiplies 4 rows by 4 activation bytes into 4 row lanes, so
# there are no horizontal sums at all, and the sub-block scales go on per row with one `mla`.
# The integer sums and the float steps per row are q4_k_row's, lane for lane (the same bits).

def _q4_k_packed(context, builder, sig, args):
    ir_ = _IR(builder)
    b = builder
    prow, nb, toks = _packed_operands(context, b, sig, args, P_BYTES, 8, 3)
    m4, s4 = ir_.vconst(15), ir_.vconst(4)
    V4F16 = ir.VectorType(ir.HalfType(), 4)
    zero = ir.Constant(V4I32, [0] * 4)

    def rows4(p, off, h):  # <4 x i32> of bytes off + 4h .. off + 4h + 3 at p (zero-extended)
        return b.zext(ir_.load(p, b.add(off, _c(4 * h)), ir.VectorType(I8, 4)), V4I32)

    def body(k, *accs):
        pk = b.mul(k, _c(P_BYTES))
        xk = b.mul(k, _c(QK_K))
        isums = [[zero, zero] for _ in toks]
        for group, pg in _token_groups(ir_, prow, len(toks), 2):
            for ch in range(4):
                sc = [[rows4(pg, b.add(pk, _c(P_SC + 8 * j)), h) for h in range(2)] for j in (2 * ch, 2 * ch + 1)]
                xs = {i: [b.bitcast(ir_.load(toks[i][0], b.add(xk, _c(64 * ch + 16 * q)), V16I8), V4I32)
                          for q in range(4)] for i in group}  # lo g 0-3, lo g 4-7, hi g 0-3, hi g 4-7
                part = {i: [[zero, zero], [zero, zero]] for i in group}  # [lo / hi][rows 0-3 / 4-7]
                for g in range(8):
                    v = [ir_.load(pg, b.add(pk, _c(P_QS + 32 * (8 * ch + g) + 16 * h)), V16I8) for h in range(2)]
                    q = [[b.and_(u, m4) for u in v], [b.lshr(u, s4) for u in v]]
                    for i in group:
                        for hi in range(2):
                            xl = b.bitcast(ir_.lanes(xs[i][2 * hi + g // 4], [g % 4] * 4), V16I8)
                            for h in range(2):
                                part[i][hi][h] = ir_.sdot(part[i][hi][h], q[hi][h], xl)
                for i in group:
                    for h in range(2):
                        isums[i][h] = b.add(isums[i][h], b.add(b.mul(part[i][0][h], sc[0][h]),
                                                               b.mul(part[i][1][h], sc[1][h])))
        d_rows = [b.fpext(b.bitcast(ir_.load(prow, b.add(pk, _c(P_D + 8 * h)), ir.VectorType(I16, 4)), V4F16),
                          V4F32) for h in range(2)]
        dm_rows = [b.fpext(b.bitcast(ir_.load(prow, b.add(pk, _c(P_DMIN + 8 * h)), ir.VectorType(I16, 4)),
                                     V4F16), V4F32) for h in range(2)]
        mins = [[b.zext(ir_.load(prow, b.add(pk, _c(P_MN + 16 * p + 8 * h)), V8I8), V8I16) for h in range(2)]
                for p in range(4)]  # [pair p][rows 0-3 / 4-7]: (min of 2p, of 2p + 1) per row
        out = []
        for i, (_, dp, sp, _) in enumerate(toks):
            dx = ir_.splat(b.load(b.gep(dp, [k])), V4F32)
            msum = [zero, zero]
            for p in range(4):  # x's sums over sub-blocks 2p, 2p + 1 as an int16 pair in every dword
                word = ir_.load(b.bitcast(sp, I8.as_pointer()), b.add(b.mul(k, _c(16)), _c(4 * p)), I32)
                pair = b.bitcast(ir_.splat(word, ir.VectorType(I32, 2)), V4I16)
                for h in range(2):
                    m = mins[p][h]
                    t = ir_.addp(ir_.smull4(ir_.lanes(m, [0, 1, 2, 3]), pair),
                                 ir_.smull4(ir_.lanes(m, [4, 5, 6, 7]), pair))
                    msum[h] = b.add(msum[h], t)
            for h in range(2):
                out.append(ir_.fma(b.sitofp(isums[i][h], V4F32), b.fmul(d_rows[h], dx), accs[4 * i + 2 * h]))
                out.append(ir_.fma(b.sitofp(msum[h], V4F32), b.fmul(dm_rows[h], dx), accs[4 * i + 2 * h + 1]))
        return out

    accs = ir_.loop(nb, body, *[ir.Constant(V4F32, [0.0] * 4)] * (4 * len(toks)))
    for i, (_, _, _, op) in enumerate(toks):
        for h in range(2):
            res = b.fsub(accs[4 * i + 2 * h], accs[4 * i + 2 * h + 1])
            b.store(res, b.bitcast(b.gep(op, [_c(4 * h)]), V4F32.as_pointer()), align=4)
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


# --- Q4_0 rows packed 4 at a time at load time (repack.pack_q4_0x4), with dotprod -------------
# Each 16 bytes of a packed block hold 4 bytes of each of 4 rows (repack.py's layout): one
# `sdot v.4s, w.16b, x.4b[i]` multiplies the 4 rows by x's bytes 4i..4i+3 into 4 row lanes, 8
# of them the whole block. The nibbles come out of the XOR-0x88 bytes as 16 (q - 8) with one
# shl or and; the sum, 16 s, is exact (|16 s| <= 2^19 < 2^24) and `scvtf #4` gives f32(s)
# exactly. Then per row lane the float steps of q4_0_row, block for block: acc_(k%2) =
# fma(f32(s), d_w * xd[k], acc_(k%2)), result acc_0 + acc_1 (the same bits).

def _q4_0_packed(context, builder, sig, args):
    ir_ = _IR(builder)
    b = builder
    prow, nb, toks = _packed_operands(context, b, sig, args, Q4_0_P_BYTES, 4, 2)
    s4, top = ir_.vconst(4), ir_.vconst(-16)  # 0xF0
    zero = ir.Constant(V4I32, [0] * 4)
    V4F16 = ir.VectorType(ir.HalfType(), 4)

    def block(k, accs):
        pk = b.mul(k, _c(Q4_0_P_BYTES))
        v = [ir_.load(prow, b.add(pk, _c(16 * i)), V16I8) for i in range(4)]
        q = [[b.shl(u, s4) for u in v], [b.and_(u, top) for u in v]]  # 16 (q - 8): elements 0-15, 16-31
        d_rows = b.fpext(b.bitcast(ir_.load(prow, b.add(pk, _c(Q4_0_P_D)), ir.VectorType(I16, 4)), V4F16), V4F32)
        out = []
        for acc, (xp, dp, _) in zip(accs, toks):
            xo = b.mul(k, _c(32))
            x = [b.bitcast(ir_.load(xp, b.add(xo, _c(16 * h)), V16I8), V4I32) for h in range(2)]
            s = zero
            for h in range(2):
                for i in range(4):
                    s = ir_.sdot(s, q[h][i], b.bitcast(ir_.lanes(x[h], [i] * 4), V16I8))
            dd = b.fmul(d_rows, ir_.splat(b.load(b.gep(dp, [k])), V4F32))
            out.append(ir_.fma(ir_.cvt_fixed(s, 4), dd, acc))
        return out

    n = len(toks)
    half = b.udiv(nb, _c(2))

    def pair(j, *accs):  # blocks 2j (chain 0) and 2j + 1 (chain 1)
        k = b.mul(j, _c(2))
        return block(k, accs[:n]) + block(b.add(k, _c(1)), accs[n:])

    accs = ir_.loop(half, pair, *[ir.Constant(V4F32, [0.0] * 4)] * (2 * n))
    tail = ir_.loop(b.sub(nb, b.mul(half, _c(2))),  # an odd last block: chain 0
                    lambda j, *acc: block(b.add(b.mul(half, _c(2)), j), acc), *accs[:n])
    for a0, a1, (_, _, op) in zip(tail, accs[n:], toks):
        b.store(b.fadd(a0, a1), b.bitcast(op, V4F32.as_pointer()), align=4)
    return context.get_dummy_value()


@intrinsic
def q4_0_packed(typingctx, packed, gi, xq, xd, out):
    """out[4gi : 4gi + 4] = rows 4gi.. . x, from packed uint8[rows/4, nb*72] (repack.py's
    Q4_0 layout); x in Q8_0 (xq int8[cols], xd f32[cols/32]); out f32[rows]."""
    if not (_arrays(2, packed) and _arrays(1, xq, xd, out) and isinstance(gi, types.Integer)):
        return None
    return types.none(packed, gi, xq, xd, out), _q4_0_packed


@intrinsic
def q4_0_packed_rows(typingctx, packed, gi, xq, xd, t, out):
    """out[t + i, 4gi : 4gi + 4] for i < TOKENS: q4_0_packed for rows t.. of 2-D xq, xd, out
    f32[n, rows]."""
    if not (_arrays(2, packed, xq, xd, out) and isinstance(gi, types.Integer) and isinstance(t, types.Integer)):
        return None
    return types.none(packed, gi, xq, xd, t, out), _q4_0_packed


# --- Q4_0 rows packed 4 at a time in 8-byte chunks (repack.pack_q4_0_4x8), with i8mm ---------
# Each 16 bytes of a packed block hold 8 bytes of each of 2 rows. Prompts: one `smmla` takes 2
# positions' 8 activation bytes (repack.pair_positions_q8_0's vectors) times the 2 rows' 8
# weights into a 2x2 tile of int32 lanes [p0 r0, p0 r1, p1 r0, p1 r1], 8 of them a block for 4
# rows x 2 positions, every operand a plain load. Decode: `sdot` of a weight vector with the
# same 8 activation bytes in both halves (repack.twin_chunks_q8_0, once per product) puts each
# row's sum in 2 lanes, and one addp a block regroups them into 4 row lanes. As in the 4x4
# kernel, the nibbles come out of the XOR-0x88 bytes as 16 (q - 8), `scvtf #4` takes the 16 off
# exactly, and every lane (one row, one position) then takes q4_0_row's float steps block for
# block: the same bits.

def _q4_0_blocks(ir_, nb, block, n_accs, acc_ty):
    """Q4_0's two chains over nb blocks: block(k, accs) -> accs for pairs of blocks (2j chain
    0, 2j + 1 chain 1), an odd last one in chain 0; returns (chain 0, chain 1) accumulators."""
    b = ir_.b
    half = b.udiv(nb, _c(2))

    def pair(j, *accs):
        k = b.mul(j, _c(2))
        return block(k, accs[:n_accs]) + block(b.add(k, _c(1)), accs[n_accs:])

    accs = ir_.loop(half, pair, *[ir.Constant(acc_ty, [0.0] * acc_ty.count)] * (2 * n_accs))
    tail = ir_.loop(b.sub(nb, b.mul(half, _c(2))),
                    lambda j, *acc: block(b.add(b.mul(half, _c(2)), j), acc), *accs[:n_accs])
    return tail, accs[n_accs:]


def _q4_0_4x8_weights(ir_, prow, pk):
    """Block pk's 4 vectors as [low / high nibbles][h][row pair q], each 16 (q - 8)."""
    b = ir_.b
    s4, top = ir_.vconst(4), ir_.vconst(-16)  # 0xF0
    v = [ir_.load(prow, b.add(pk, _c(16 * m)), V16I8) for m in range(4)]  # m = 2h + q
    return [[[b.shl(v[2 * h + q], s4) for q in range(2)] for h in range(2)],
            [[b.and_(v[2 * h + q], top) for q in range(2)] for h in range(2)]]


def _q4_0_4x8_packed(context, builder, sig, args):
    ir_ = _IR(builder)
    b = builder
    prow, nb, toks = _packed_operands(context, b, sig, args, Q4_0_P_BYTES, 4, 2)
    (xp, dp, op), = toks
    zero = ir.Constant(V4I32, [0] * 4)
    V4F16 = ir.VectorType(ir.HalfType(), 4)

    def block(k, accs):
        pk = b.mul(k, _c(Q4_0_P_BYTES))
        q = _q4_0_4x8_weights(ir_, prow, pk)
        xo = b.mul(k, _c(64))
        sums = [zero, zero]  # rows 0-1, 2-3: each row's sum in two lanes
        for hi in range(2):
            for h in range(2):  # x's elements 16 hi + 8h.. in both halves
                x = ir_.load(xp, b.add(xo, _c(16 * (2 * hi + h))), V16I8)
                sums = [ir_.sdot(sums[qq], q[hi][h][qq], x) for qq in range(2)]
        s = ir_.addp(*sums)  # [r0, r1, r2, r3]
        d_rows = b.fpext(b.bitcast(ir_.load(prow, b.add(pk, _c(Q4_0_P_D)), ir.VectorType(I16, 4)), V4F16), V4F32)
        dd = b.fmul(d_rows, ir_.splat(b.load(b.gep(dp, [k])), V4F32))
        return [ir_.fma(ir_.cvt_fixed(s, 4), dd, accs[0])]

    (a0,), (a1,) = _q4_0_blocks(ir_, nb, block, 1, V4F32)
    b.store(b.fadd(a0, a1), b.bitcast(op, V4F32.as_pointer()), align=4)
    return context.get_dummy_value()


def _paired_operands(context, b, sig, args, block_bytes, n_x, n_pairs):
    """An smmla kernel's operands (p, gi, n_x arrays of positions in pairs, t, out): group gi's
    bytes, its blocks (block_bytes each), t, and for each of n_pairs pairs from t / 2 the
    pointers to its rows of the n_x arrays."""
    prow = _row_ptr(context, b, sig.args[0], args[0], args[1])
    a = context.make_array(sig.args[0])(context, b, args[0])
    nb = b.udiv(cgutils.unpack_tuple(b, a.shape)[1], _c(block_bytes))
    t = args[2 + n_x]
    xs = slice(2, 2 + n_x)
    pairs = [[_row_ptr(context, b, ty, v, b.add(b.udiv(t, _c(2)), _c(p))) for ty, v in zip(sig.args[xs], args[xs])]
             for p in range(n_pairs)]
    return prow, nb, t, pairs


def _q4_0_4x8_mmla(context, builder, sig, args):
    """TOKENS positions t.. (TOKENS / 2 pairs of repack.pair_positions_q8_0's rows t / 2..)."""
    ir_ = _IR(builder)
    b = builder
    prow, nb, t, pairs = _paired_operands(context, b, sig, args, Q4_0_P_BYTES, 2, TOKENS // 2)
    zero = ir.Constant(V4I32, [0] * 4)
    V2I32, V4F16 = ir.VectorType(I32, 2), ir.VectorType(ir.HalfType(), 4)

    def block(k, accs):  # accs: [pair p][row pair q] tiles [p0 rq0, p0 rq1, p1 rq0, p1 rq1]
        pk = b.mul(k, _c(Q4_0_P_BYTES))
        q = _q4_0_4x8_weights(ir_, prow, pk)
        # [d_2q, d_2q+1] twice, the tiles' weight scales (ld1r of two fp16)
        d = [b.fpext(b.bitcast(ir_.splat(ir_.load(prow, b.add(pk, _c(Q4_0_P_D + 4 * qq)), I32), V2I32), V4F16),
                     V4F32) for qq in range(2)]
        out = []
        for p, (xp, dp) in enumerate(pairs):
            xo = b.mul(k, _c(64))
            x = [ir_.load(xp, b.add(xo, _c(16 * c)), V16I8) for c in range(4)]  # elements 8c.. of both
            xd = b.load(b.bitcast(b.gep(dp, [b.mul(k, _c(4))]), V4F32.as_pointer()), align=4)
            for qq in range(2):
                s = zero
                for c in range(4):  # elements 8c..: low nibbles of h = c for c < 2, high of h = c - 2
                    s = ir_.smmla(s, x[c], q[c // 2][c % 2][qq])
                out.append(ir_.fma(ir_.cvt_fixed(s, 4), b.fmul(d[qq], xd), accs[2 * p + qq]))
        return out

    n = TOKENS  # tiles: TOKENS / 2 pairs x 2 row pairs
    chain0, chain1 = _q4_0_blocks(ir_, nb, block, n, V4F32)
    out_ty, out = sig.args[-1], args[-1]
    col = b.mul(args[1], _c(4))
    for p in range(TOKENS // 2):
        tiles = [b.fadd(chain0[2 * p + qq], chain1[2 * p + qq]) for qq in range(2)]
        for j in range(2):  # position 2p + j: lanes 2j, 2j + 1 of both tiles (rows 0-1, 2-3)
            row = b.shuffle_vector(tiles[0], tiles[1], ir.Constant(ir.VectorType(I32, 4), [2 * j, 2 * j + 1,
                                                                                       4 + 2 * j, 5 + 2 * j]))
            ptr = b.gep(_row_ptr(context, b, out_ty, out, b.add(t, _c(2 * p + j))), [col])
            b.store(row, b.bitcast(ptr, V4F32.as_pointer()), align=4)
    return context.get_dummy_value()


@intrinsic
def q4_0_4x8_packed(typingctx, packed, gi, xt, xd, out):
    """out[4gi : 4gi + 4] = rows 4gi.. . x, from packed uint8[rows/4, nb*72] (repack.py's
    4x8 layout), with sdot; x in Q8_0, its quants as repack.twin_chunks_q8_0 makes them (xt
    int8[2*cols]), xd f32[cols/32]; out f32[rows]."""
    if not (_arrays(2, packed) and _arrays(1, xt, xd, out) and isinstance(gi, types.Integer)):
        return None
    return types.none(packed, gi, xt, xd, out), _q4_0_4x8_packed


@intrinsic
def q4_0_4x8_mmla_rows(typingctx, packed, gi, xi, xdi, t, out):
    """out[t + i, 4gi : 4gi + 4] for i < TOKENS (t even), with smmla: x's positions in pairs
    as repack.pair_positions_q8_0 makes them (xi int8[n/2, 2*cols], xdi f32[n/2, 4*cols/32]);
    out f32[n, rows]."""
    if not (_arrays(2, packed, xi, xdi, out) and isinstance(gi, types.Integer) and isinstance(t, types.Integer)):
        return None
    return types.none(packed, gi, xi, xdi, t, out), _q4_0_4x8_mmla


# --- Q4_K rows packed 8 at a time in 8-byte chunks (repack.pack_q4_k_8x8), with i8mm ---------
# Each 16 bytes of a group's quants hold 8 bytes of each of 2 rows (repack.py's layout), one row
# pair's super-block after another.
#
# Prompts: one `smmla` takes 2 positions' 8 activation bytes (repack.pair_positions_q8_k's
# vectors) times the 2 rows' 8 weights into a 2x2 tile of int32 lanes [p0 r0, p0 r1, p1 r0,
# p1 r1], 4 of them a sub-block. The tile runs over the whole super-block: after sub-block j it
# holds C_j, the sums over sub-blocks 0..j, and sum_j s_j T_j = sum_j C_j (s_j - s_(j+1)), so
# one `mla` a sub-block by the lanes' scale steps (repack.K8_SC; one `tbl` and a shift from the
# 16 step bytes of two sub-blocks) gives the scaled sum with no tile to zero per sub-block (a
# `movi` in every 6 instructions of the sub-block's, the other way). The mins: x's sums per 32
# as 64 hi + lo (two int8 vectors of 8 sub-blocks x 2 positions) against the 8 mins of 2 rows,
# two `smmla` and a shift a tile. A row pair runs through all super-blocks before the next: its
# float accumulators, 4 position pairs', stay in registers.
#
# Decode: `sdot` of each weight vector with x's 8 bytes twice (repack.twin_chunks_q8_0) puts a
# row's sums in 2 lanes [r0, r0, r1, r1], running over the super-block as the prompt's tiles; one
# `addp` of two row pairs' gives 4 rows' C_j for one `mla`; the mins by `smmla` against the
# position paired with itself (repack.twin_sums_q8_k).
#
# Every (row, position) lane holds q4_k_row's exact isum and msum and then takes its float
# steps super-block for super-block: the same bits. Prompts go 8 positions a call (4 pairs: 8.6
# cycles per 256 weights and position by llvm-mca on the Neoverse N2, 10.8 for 4 a call), then 4.
MMLA_TOKENS = 2 * TOKENS


def _scale_steps(ir_, sc, rows, h):
    """<4 x i32>: the scale steps (repack.K8_SC, int8) of `rows` (4 rows of the group) for
    sub-block 2c + h, from sc, the 16 bytes of sub-blocks 2c, 2c + 1: one tbl puts each in the
    top byte of its lane (0xFF indices read as 0), an arithmetic shift sign-extends it."""
    idx = ir.Constant(V16I8, [v for r in rows for v in (255, 255, 255, 8 * h + r)])
    return ir_.b.ashr(ir_.b.bitcast(ir_.tbl(sc, idx), V4I32), ir_.const(V4I32, 24))


def _q4_k_8x8_weights(ir_, wk, q, c):
    """Row pair q's sub-blocks 2c, 2c + 1 at wk (a super-block): [low / high nibbles][chunk e]."""
    b = ir_.b
    v = [ir_.load(wk, _c(K8_QS + 256 * q + 64 * c + 16 * e), V16I8) for e in range(4)]
    return [[b.and_(u, ir_.vconst(15)) for u in v], [b.lshr(u, ir_.vconst(4)) for u in v]]


def _mins_tile(ir_, mins, bs):
    """The exact sums of 8 mins x x's sums per 32: smmla of the (hi, lo) halves (repack.py)."""
    b = ir_.b
    zero = ir.Constant(V4I32, [0] * 4)
    return ir_.smmla(b.shl(ir_.smmla(zero, bs[0], mins), ir_.const(V4I32, 6)), bs[1], mins)


def _at(b, ptr, k, size):  # &ptr[k * size]: a super-block's base, the constant offsets from it
    return b.gep(ptr, [b.mul(k, _c(size))])  # fold into the loads (an add of k << 9 became an orr)


def _q4_k_8x8_mmla(context, builder, sig, args, n):
    """2n positions t.. (n pairs t / 2.. of repack.pair_positions_q8_k's rows)."""
    ir_ = _IR(builder)
    b = builder
    prow, nb, t, pairs = _paired_operands(context, b, sig, args, P_BYTES, 3, n)
    zero = ir.Constant(V4I32, [0] * 4)
    V2I32, V4F16 = ir.VectorType(I32, 2), ir.VectorType(ir.HalfType(), 4)

    def pair_of_rows(wk, at):  # fp16 [v_2q, v_2q+1] twice -> <4 x f32> (ld1r of two fp16)
        return b.fpext(b.bitcast(ir_.splat(ir_.load(wk, _c(at), I32), V2I32), V4F16), V4F32)

    def body(k, *accs, q):  # accs: (acc, accm) per position pair, tiles [p0 r0, p0 r1, p1 r0, p1 r1]
        wk = _at(b, prow, k, P_BYTES)
        xks = [_at(b, xp, k, 512) for xp, _, _ in pairs]  # 8 blocks of 32 x 2 positions a super-block
        isums = [zero] * n
        runs = [zero] * n  # per position pair: the tile's sums over sub-blocks 0..j so far
        for c in range(4):
            sc = ir_.load(wk, _c(K8_SC + 16 * c), V16I8)
            steps = [_scale_steps(ir_, sc, [2 * q, 2 * q + 1] * 2, h) for h in range(2)]
            w = _q4_k_8x8_weights(ir_, wk, q, c)
            for p, xk in enumerate(xks):
                for h in range(2):  # sub-block 2c + h: 32 weights of 2 rows, 4 smmla
                    for e in range(4):
                        runs[p] = ir_.smmla(runs[p], ir_.load(xk, _c(64 * (2 * c + h) + 16 * e), V16I8), w[h][e])
                    isums[p] = b.add(isums[p], b.mul(runs[p], steps[h]))  # |.| <= 8 * 63 * 8 * 32 * 15 * 128 < 2^28
        mins = ir_.load(wk, _c(K8_MN + 16 * q), V16I8)
        d, dmin = pair_of_rows(wk, P_D + 4 * q), pair_of_rows(wk, P_DMIN + 4 * q)
        out = []
        for p, (_, dp, bp) in enumerate(pairs):
            bk = _at(b, bp, k, 32)
            msum = _mins_tile(ir_, mins, [ir_.load(bk, _c(16 * h), V16I8) for h in range(2)])
            xd = b.load(b.bitcast(_at(b, dp, k, 4), V4F32.as_pointer()), align=4)
            out.append(ir_.fma(b.sitofp(isums[p], V4F32), b.fmul(d, xd), accs[2 * p]))
            out.append(ir_.fma(b.sitofp(msum, V4F32), b.fmul(dmin, xd), accs[2 * p + 1]))
        return out

    tiles = []  # [row pair q][position pair p]
    for q in range(4):
        accs = ir_.loop(nb, lambda k, *accs, q=q: body(k, *accs, q=q), *[ir.Constant(V4F32, [0.0] * 4)] * (2 * n))
        tiles.append([b.fsub(accs[2 * p], accs[2 * p + 1]) for p in range(n)])
    out_ty, out = sig.args[-1], args[-1]
    col = b.mul(args[1], _c(8))
    for p in range(n):
        for j in range(2):  # position 2p + j: lanes 2j, 2j + 1 of each row pair's tile
            ptr = b.gep(_row_ptr(context, b, out_ty, out, b.add(t, _c(2 * p + j))), [col])
            for half in range(2):  # rows 0-3, 4-7
                row = b.shuffle_vector(tiles[2 * half][p], tiles[2 * half + 1][p],
                                       ir.Constant(ir.VectorType(I32, 4), [2 * j, 2 * j + 1, 4 + 2 * j, 5 + 2 * j]))
                b.store(row, b.bitcast(b.gep(ptr, [_c(4 * half)]), V4F32.as_pointer()), align=4)
    return context.get_dummy_value()


def _q4_k_8x8_packed(context, builder, sig, args):
    ir_ = _IR(builder)
    b = builder
    prow, nb, toks = _packed_operands(context, b, sig, args, P_BYTES, 8, 3)
    (xp, dp, bp, op), = toks
    zero = ir.Constant(V4I32, [0] * 4)
    V4F16 = ir.VectorType(ir.HalfType(), 4)

    def rows4(wk, at):  # fp16 of 4 rows -> <4 x f32>
        return b.fpext(b.bitcast(ir_.load(wk, _c(at), ir.VectorType(I16, 4)), V4F16), V4F32)

    def body(k, acc, accm, half):  # rows 4 half.. (row pairs 2 half, 2 half + 1)
        wk, xk, bk = _at(b, prow, k, P_BYTES), _at(b, xp, k, 512), _at(b, bp, k, 32)
        isum = zero
        runs = [zero, zero]  # per row pair [r0, r0, r1, r1] (bytes 0-3, 4-7 of each row's chunks), sub-blocks 0..j
        for c in range(4):
            sc = ir_.load(wk, _c(K8_SC + 16 * c), V16I8)
            w = [_q4_k_8x8_weights(ir_, wk, q, c) for q in (2 * half, 2 * half + 1)]
            for h in range(2):
                for e in range(4):
                    x = ir_.load(xk, _c(64 * (2 * c + h) + 16 * e), V16I8)
                    runs = [ir_.sdot(runs[i], w[i][h][e], x) for i in range(2)]
                steps = _scale_steps(ir_, sc, range(4 * half, 4 * half + 4), h)
                isum = b.add(isum, b.mul(ir_.addp(runs[0], runs[1]), steps))  # 4 rows
        bs = [ir_.load(bk, _c(16 * h), V16I8) for h in range(2)]
        m = [_mins_tile(ir_, ir_.load(wk, _c(K8_MN + 16 * q), V16I8), bs) for q in (2 * half, 2 * half + 1)]
        msum = b.shuffle_vector(m[0], m[1], ir.Constant(ir.VectorType(I32, 4), [0, 1, 4, 5]))
        dx = ir_.splat(b.load(b.gep(dp, [k])), V4F32)
        return [ir_.fma(b.sitofp(isum, V4F32), b.fmul(rows4(wk, P_D + 8 * half), dx), acc),
                ir_.fma(b.sitofp(msum, V4F32), b.fmul(rows4(wk, P_DMIN + 8 * half), dx), accm)]

    for half in range(2):
        acc, accm = ir_.loop(nb, lambda k, acc, accm, half=half: body(k, acc, accm, half),
                             *[ir.Constant(V4F32, [0.0] * 4)] * 2)
        b.store(b.fsub(acc, accm), b.bitcast(b.gep(op, [_c(4 * half)]), V4F32.as_pointer()), align=4)
    return context.get_dummy_value()


@intrinsic
def q4_k_8x8_packed(typingctx, packed, gi, xt, xd, bt, out):
    """out[8gi : 8gi + 8] = rows 8gi.. . x, from packed uint8[rows/8, nb*P_BYTES] (repack.py's
    8x8 layout), with sdot; x in Q8_K, its quants as repack.twin_chunks_q8_0 makes them (xt
    int8[2*cols]), xd f32[cols/256], its sums per 32 as repack.twin_sums_q8_k makes them (bt
    int8[cols/8]); out f32[rows]."""
    if not (_arrays(2, packed) and _arrays(1, xt, xd, bt, out) and isinstance(gi, types.Integer)):
        return None
    return types.none(packed, gi, xt, xd, bt, out), _q4_k_8x8_packed


def _mmla_typed(packed, gi, xi, xdi, bsi, t, out, positions):
    if not (_arrays(2, packed, xi, xdi, bsi, out) and isinstance(gi, types.Integer)
            and isinstance(t, types.Integer)):
        return None
    return (types.none(packed, gi, xi, xdi, bsi, t, out),
            lambda context, builder, sig, args: _q4_k_8x8_mmla(context, builder, sig, args, positions // 2))


@intrinsic
def q4_k_8x8_mmla_rows(typingctx, packed, gi, xi, xdi, bsi, t, out):
    """out[t + i, 8gi : 8gi + 8] for i < TOKENS (t even), with smmla: x's positions in pairs
    as repack.pair_positions_q8_k makes them (xi int8[n/2, 2*cols], xdi f32[n/2, 4*cols/256],
    bsi int8[n/2, cols/8]); out f32[n, rows]."""
    return _mmla_typed(packed, gi, xi, xdi, bsi, t, out, TOKENS)


@intrinsic
def q4_k_8x8_mmla_rows8(typingctx, packed, gi, xi, xdi, bsi, t, out):
    """q4_k_8x8_mmla_rows for MMLA_TOKENS positions t.. (the bulk of a prompt)."""
    return _mmla_typed(packed, gi, xi, xdi, bsi, t, out, MMLA_TOKENS)
