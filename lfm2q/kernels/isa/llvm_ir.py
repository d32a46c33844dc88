"""LLVM IR building blocks shared by every instruction set's kernels (x86_avx2, x86_avx512, neon)
and by the ISA-neutral ones (prefetch, attention dots): types, an IR builder helper, and how a
kernel reaches its arrays' bytes.

`IR.fn` is where every intrinsic a kernel calls gets declared, so it is also the one place that
refuses an intrinsic of another architecture: LLVM would abort the whole process on it ("Do
not know how to split the result of this operator!" for llvm.x86.* on aarch64); here it
is a Python error naming the intrinsic and the target, at compile time.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils

from ...cpu import arch

ARCH = arch()  # the architecture numba compiles for (x86_64, aarch64, ...)
_PREFIX_ARCH = {"llvm.x86.": "x86_64", "llvm.aarch64.": "aarch64"}


def _check_target(name: str) -> None:
    for prefix, want in _PREFIX_ARCH.items():
        if name.startswith(prefix) and ARCH != want:
            raise NotImplementedError(f"lfm2q kernel bug: intrinsic {name} requested while compiling "
                                      f"for {ARCH}; the ISA selection (kernels/isa/__init__.py) must not reach it")


# Prefill multiplies each weight row with TOKENS prompt positions at once: the weights are
# loaded and unpacked once for all of them. 4 keeps the accumulators in AVX2's 16 registers.
TOKENS = 4


I8, I16, I32, I64, F16, F32 = (ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64),
                               ir.HalfType(), ir.FloatType())
V32I8, V16I8, V16I16, V8I32, V8F32 = (ir.VectorType(I8, 32), ir.VectorType(I8, 16),
                                      ir.VectorType(I16, 16), ir.VectorType(I32, 8),
                                      ir.VectorType(F32, 8))


class IR:
    """The few ISA-neutral vector operations the kernels are made of, over one IR builder
    (each instruction set's module adds its own, e.g. x86_avx2._IR)."""

    def __init__(self, builder):
        self.b = builder

    def fn(self, name, ret, args):
        _check_target(name)
        return cgutils.get_or_insert_function(self.b.module, ir.FunctionType(ret, args), name)

    def const(self, vty, value):
        return ir.Constant(vty, [value] * vty.count)

    def load(self, base, offset, ty):  # ty at byte/element `offset` of pointer `base`, unaligned
        ptr = self.b.bitcast(self.b.gep(base, [offset]), ty.as_pointer())
        return self.b.load(ptr, align=1)

    def f16(self, base, offset):  # an fp16 at byte `offset` -> f32
        return self.b.fpext(self.b.bitcast(self.load(base, offset, I16), F16), F32)

    def lanes(self, vec, idx):  # shufflevector picking lanes idx of vec
        return self.b.shuffle_vector(vec, ir.Constant(vec.type, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, len(idx)), list(idx)))

    def splat(self, scalar, vty):
        v = self.b.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(I32, 0))
        return self.lanes(v, [0] * vty.count)

    def fma(self, a, b, c):  # a * b + c, one rounding (one f32, or a vector of them)
        t = a.type
        name = f"llvm.fma.v{t.count}f32" if isinstance(t, ir.VectorType) else "llvm.fma.f32"
        return self.b.call(self.fn(name, t, [t, t, t]), [a, b, c])

    def isum(self, v):  # <8 x i32> -> i32 (exact: any order)
        q = self.b.add(self.lanes(v, [0, 1, 2, 3]), self.lanes(v, [4, 5, 6, 7]))
        h = self.b.add(self.lanes(q, [0, 1]), self.lanes(q, [2, 3]))
        return self.b.add(self.b.extract_element(h, ir.Constant(I32, 0)),
                          self.b.extract_element(h, ir.Constant(I32, 1)))

    def hsum(self, v):  # ggml's hsum_float_8 order: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))
        b = self.b
        q = b.fadd(self.lanes(v, [0, 1, 2, 3]), self.lanes(v, [4, 5, 6, 7]))
        h = b.fadd(self.lanes(q, [0, 1]), self.lanes(q, [2, 3]))
        return b.fadd(b.extract_element(h, ir.Constant(I32, 0)),
                      b.extract_element(h, ir.Constant(I32, 1)))

    def loop(self, count, body, *init):
        """Run body(index, *carried) -> carried for index in range(count); returns the carried
        values (kept in stack slots, which LLVM promotes to registers)."""
        slots = [cgutils.alloca_once_value(self.b, v) for v in init]
        with cgutils.for_range(self.b, count) as loop:
            new = body(loop.index, *[self.b.load(s) for s in slots])
            for s, v in zip(slots, new):
                self.b.store(v, s)
        return [self.b.load(s) for s in slots]


def _arrays(ndim, *arrays):  # the kernels index raw pointers: C-contiguous arrays only
    return all(isinstance(a, types.Array) and a.ndim == ndim and a.layout == "C" for a in arrays)


def _data(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr).data


def _row_ptr(context, builder, arrty, arr, index):  # &arr[index, 0] of a C-contiguous 2D array
    a = context.make_array(arrty)(context, builder, arr)
    stride = cgutils.unpack_tuple(builder, a.strides)[0]
    raw = builder.gep(builder.bitcast(a.data, I8.as_pointer()), [builder.mul(index, stride)])
    return builder.bitcast(raw, a.data.type)


def _n_blocks(context, builder, rowty, row, block_bytes):
    a = context.make_array(rowty)(context, builder, row)
    return builder.udiv(cgutils.unpack_tuple(builder, a.shape)[0], ir.Constant(I64, block_bytes))


def _offset(v, k):
    return ir.Constant(v.type, k)


def _tokens(context, builder, sig, args, n_arrays):
    """Pointers (xq, xd[, bsum]) for each token the kernel multiplies: one token for 1-D
    activation arrays, or TOKENS consecutive rows t.. of 2-D ones (the last argument is t)."""
    arrs = list(zip(sig.args[1:1 + n_arrays], args[1:1 + n_arrays]))
    if sig.args[1].ndim == 1:
        return [[_data(context, builder, ty, v) for ty, v in arrs]]
    t = args[1 + n_arrays]
    return [[_row_ptr(context, builder, ty, v, builder.add(t, ir.Constant(t.type, i))) for ty, v in arrs]
            for i in range(TOKENS)]


def _token_rows(context, builder, sig, args, xs, t, col, count=None):
    """For each of `count` (TOKENS) positions t.. of 2-D activation arrays args[xs] (a slice):
    the pointers to their rows, then &out[t + i, col] (out: the last argument, f32[n, rows])."""
    out_ty, out = sig.args[-1], args[-1]
    rows = []
    for i in range(count or TOKENS):
        ti = builder.add(t, ir.Constant(t.type, i))
        rows.append([_row_ptr(context, builder, ty, v, ti) for ty, v in zip(sig.args[xs], args[xs])]
                    + [builder.gep(_row_ptr(context, builder, out_ty, out, ti), [col])])
    return rows


def _packed_operands(context, b, sig, args, block_bytes, group_rows, n_x):
    """A packed kernel's operands (p, gi, n_x activation arrays, [t,] out): group gi's bytes,
    its blocks (block_bytes each), and per token the activation pointers and the output's
    pointer at the group's first row (one token, or TOKENS from position t)."""
    c = lambda v: ir.Constant(I64, v)  # noqa: E731
    prow = _row_ptr(context, b, sig.args[0], args[0], args[1])  # group gi's packed bytes
    a = context.make_array(sig.args[0])(context, b, args[0])
    nb = b.udiv(cgutils.unpack_tuple(b, a.shape)[1], c(block_bytes))
    r0 = b.mul(args[1], c(group_rows))
    xs = slice(2, 2 + n_x)
    if sig.args[2].ndim == 1:  # one token
        toks = [[_data(context, b, ty, v) for ty, v in zip(sig.args[xs], args[xs])]
                + [b.gep(_data(context, b, sig.args[-1], args[-1]), [r0])]]
    else:
        toks = _token_rows(context, b, sig, args, xs, args[2 + n_x], r0)
    return prow, nb, toks


def _result(context, builder, sig, values):
    if len(values) == 1:
        return values[0]
    return context.make_tuple(builder, sig.return_type, values)


def _typed(codegen, row, *arrays, t=None):
    """(signature, codegen) for numba: f32 for one token (1-D activations), a TOKENS-tuple for
    rows t.. of 2-D ones; None (no match) for any other argument types."""
    if t is None and _arrays(1, row, *arrays):
        return types.float32(row, *arrays), codegen
    if t is not None and _arrays(1, row) and _arrays(2, *arrays) and isinstance(t, types.Integer):
        return types.UniTuple(types.float32, TOKENS)(row, *arrays, t), codegen
    return None
