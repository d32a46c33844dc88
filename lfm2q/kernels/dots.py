"""Attention scores eight keys at a time: dots8_hd64(qh, rows, s, col, scale).

s[col:col+8] = scale * (rows[0:8] . qh) for one query head qh f32[64] and eight keys
rows f32[8, 64]. numba compiled attention's dot product as one chain of eight dependent
fused multiply-adds and a horizontal sum per key (30 ns a key, half of decode attention at
4k positions): here the eight keys' chains run side by side and one transposing tree of
shuffles and adds reduces all eight at once, so the sums come out as one vector of scores.

Each key's sum: lane l of its 8-lane accumulator sums qh[8c+l] * row[8c+l] over c = 0..7,
then the lanes are added pairwise (l, l+4), (l, l+2), (l, l+1). Generic LLVM vectors: every
target picks its own instructions.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .isa.llvm_ir import IR as _IR, _arrays

HD = 64
_F32, _I32 = ir.FloatType(), ir.IntType(32)
_V8 = ir.VectorType(_F32, 8)


@intrinsic
def dots8_hd64(typingctx, qh, rows, s, col, scale):
    if not (_arrays(1, qh, s) and _arrays(2, rows) and all(a.dtype == types.float32 for a in (qh, rows, s))
            and isinstance(col, types.Integer) and scale == types.float32):
        return None

    def codegen(context, b, sig, args):
        qa, ra, sa, ca, scale_v = args
        q = context.make_array(sig.args[0])(context, b, qa).data
        r = context.make_array(sig.args[1])(context, b, ra).data
        out = b.gep(context.make_array(sig.args[2])(context, b, sa).data, [ca])
        v = _IR(b)

        def vec(ptr, offset):
            return v.load(ptr, ir.Constant(ir.IntType(64), offset), _V8)

        def shuffle(x, y, idx):
            return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(_I32, len(idx)), idx))

        qv = [vec(q, 8 * c) for c in range(HD // 8)]
        acc = []
        for k in range(8):  # eight independent chains
            a = b.fmul(qv[0], vec(r, k * HD))
            for c in range(1, HD // 8):
                a = b.fadd(a, b.fmul(qv[c], vec(r, k * HD + 8 * c)))
            acc.append(a)
        # transposing reduction: [k0 k1] -> lanes 0-3 k0's halves summed, 4-7 k1's; and so on
        u = [b.fadd(shuffle(acc[2 * i], acc[2 * i + 1], [0, 1, 2, 3, 8, 9, 10, 11]),
                    shuffle(acc[2 * i], acc[2 * i + 1], [4, 5, 6, 7, 12, 13, 14, 15])) for i in range(4)]
        x = [b.fadd(shuffle(u[2 * i], u[2 * i + 1], [0, 1, 4, 5, 8, 9, 12, 13]),
                    shuffle(u[2 * i], u[2 * i + 1], [2, 3, 6, 7, 10, 11, 14, 15])) for i in range(2)]
        y = b.fadd(shuffle(x[0], x[1], [0, 2, 4, 6, 8, 10, 12, 14]),
                   shuffle(x[0], x[1], [1, 3, 5, 7, 9, 11, 13, 15]))
        b.store(b.fmul(y, v.splat(scale_v, _V8)), b.bitcast(out, _V8.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(qh, rows, s, col, scale), codegen
