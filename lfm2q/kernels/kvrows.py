"""One head's K or V row in the KV cache: how it is stored and read back.

A cache is c [KVH, n_ctx, HD] plus block scales cs. Three types (cache.py picks one):
  f32   c f32, no scales (cs is empty);
  f16   c uint16 fp16 bits, no scales — llama.cpp's default cache type;
  q8_0  c int8 quants in 32-element blocks, cs f32[KVH, n_ctx, HD/32] their scales: llama.cpp's
        cache type q8_0 (block_q8_0: fp16 scale, quantize_q8_0's rounding); the scale is kept
        as the f32 value of that fp16 so reading it needs no conversion. 72 bytes per 64-element
        row against fp16's 128: decode at long contexts reads the cache, so it goes faster too.

store_row(x, c, cs, g, pos) writes x f32[HD] as c[g, pos]; load_row(c, cs, g, j, rows, jj, HD)
reads c[g, j] into rows[jj] (rows f32[KB, HD]). Both are chosen by the cache's dtype when numba compiles the
caller, and inlined there (the caller's fastmath and its literal HD apply).
load_block(c, cs, g, j0, n_kv, rows, HD) reads rows j0.. (up to KB = len(rows), stopping at
n_kv) into rows f32[KB, HD], having asked for the rows AHEAD positions on (prefetch_rows):
attention reads each row once, and the hardware prefetchers alone left decode attention at 4k
positions waiting on memory (2 threads: 4.7 -> 3.2 ms for 6 layers' fp16 K and V, measured).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .actquant import QK8_0, quantize_q8_0
from .isa.llvm_ir import IR as _IR
from .half import as_f32, kv_value
from .prefetch import LINE, prefetch_line


def store_row(x, c, cs, g, pos):  # compiled through the overload below
    raise NotImplementedError("numba-only")


def load_row(c, cs, g, j, rows, jj, HD):  # compiled through the overload below
    raise NotImplementedError("numba-only")


_V32I8, _V32F32 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.FloatType(), 32)
AHEAD = 32  # cache rows prefetched ahead of use (24-48 measured equally good)


@njit(inline="always", cache=True)
def prefetch_rows(c, cs, g, j, n):
    # A KV head's rows are contiguous: rows j..j+n-1 are one range of bytes.
    # Byte offsets into the whole arrays: views (c[g]) cost two atomic reference counts each,
    # per block of keys (measured: half of the prefetching's 4 ns a key).
    n = min(n, c.shape[1] - j)
    if n > 0:
        row_bytes = c.shape[2] * c.itemsize
        start = (g * c.shape[1] + j) * row_bytes
        for byte in range(start, start + n * row_bytes, LINE):
            prefetch_line(c, byte)
        if cs.shape[2] > 0:  # Q8_0 scales: 8 bytes a row
            prefetch_line(cs, (g * cs.shape[1] + j) * cs.shape[2] * cs.itemsize)


@intrinsic
def _scaled_block(typingctx, c, g, j, d, rows, jj, o):
    """rows[jj, o:o+32] = d * c[g, j, o:o+32] (c int8[KVH, n_ctx, HD], rows f32[KB, HD],
    C-contiguous) as one vector operation: LLVM left numba's loop of it scalar (one vcvtsi2ss
    per element). Whole arrays and indices, no views: a view made per row costs two atomic
    reference counts, which had cost as much as the conversion. Generic LLVM vectors: each
    target picks its instructions (x86 AVX-512: vpmovsxbd, vcvtdq2ps)."""
    if not (isinstance(c, types.Array) and c.dtype == types.int8 and c.layout == "C" and c.ndim == 3
            and isinstance(rows, types.Array) and rows.dtype == types.float32 and rows.layout == "C"
            and rows.ndim == 2 and d == types.float32
            and all(isinstance(i, types.Integer) for i in (g, j, jj, o))):
        return None

    def codegen(context, b, sig, args):
        ca, ga, ja, da, ra, jja, oa = args
        i64 = lambda x: b.sext(x, ir.IntType(64)) if x.type.width < 64 else x  # noqa: E731
        src_a, dst_a = context.make_array(sig.args[0])(context, b, ca), context.make_array(sig.args[4])(context, b, ra)
        n_ctx, hd = (i64(b.extract_value(src_a.shape, k)) for k in (1, 2))
        src = b.gep(src_a.data, [b.add(b.mul(b.add(b.mul(i64(ga), n_ctx), i64(ja)), hd), i64(oa))])
        dst = b.gep(dst_a.data, [b.add(b.mul(i64(jja), i64(b.extract_value(dst_a.shape, 1))), i64(oa))])
        v = _IR(b)
        x = b.fmul(b.sitofp(v.load(src, ir.Constant(ir.IntType(64), 0), _V32I8), _V32F32), v.splat(da, _V32F32))
        b.store(x, b.bitcast(dst, _V32F32.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(c, g, j, d, rows, jj, o), codegen


@overload(store_row, inline="always")
def _store_row(x, c, cs, g, pos):
    if c.dtype == types.int8:
        def store_q8_0(x, c, cs, g, pos):
            quantize_q8_0(x, c[g, pos], cs[g, pos])
        return store_q8_0

    def store(x, c, cs, g, pos):  # f32 as is, fp16 rounded to nearest even
        for d in range(x.shape[0]):
            c[g, pos, d] = kv_value(x[d], c)
    return store


@overload(load_row, inline="always")
def _load_row(c, cs, g, j, rows, jj, HD):
    if c.dtype == types.int8:
        def load_q8_0(c, cs, g, j, rows, jj, HD):
            for b in range(HD // QK8_0):
                _scaled_block(c, g, j, cs[g, j, b], rows, jj, b * QK8_0)
        return load_q8_0

    def load(c, cs, g, j, rows, jj, HD):
        for d in range(HD):
            rows[jj, d] = as_f32(c[g, j, d])
    return load


@njit(inline="always", cache=True)
def load_block(c, cs, g, j0, n_kv, rows, HD):
    KB = rows.shape[0]
    prefetch_rows(c, cs, g, j0 + AHEAD, min(KB, n_kv - j0 - AHEAD))
    for jj in range(min(KB, n_kv - j0)):
        load_row(c, cs, g, j0 + jj, rows, jj, HD)
