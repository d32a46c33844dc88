"""One head's K or V row in the KV cache: how it is stored and read back.

A cache is c [KVH, n_ctx, HD] plus block scales cs. Three types (cache.py picks one):
  f32   c f32, no scales (cs is empty);
  f16   c uint16 fp16 bits, no scales — llama.cpp's default cache type;
  q8_0  c int8 quants in 32-element blocks, cs f32[KVH, n_ctx, HD/32] their scales: llama.cpp's
        cache type q8_0 (block_q8_0: fp16 scale, quantize_q8_0's rounding); the scale is kept
        as the f32 value of that fp16 so reading it needs no conversion. 72 bytes per 64-element
        row against fp16's 128: decode at long contexts reads the cache, so it goes faster too.

store_row(x, c, cs, g, pos) writes x f32[HD] as c[g, pos]; load_row(c, cs, g, j, row, HD)
reads c[g, j] into row f32[HD]. Both are chosen by the cache's dtype when numba compiles the
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
from .avx2 import _IR
from .half import as_f32, kv_value
from .prefetch import LINE, prefetch_line


def store_row(x, c, cs, g, pos):  # compiled through the overload below
    raise NotImplementedError("numba-only")


def load_row(c, cs, g, j, row, HD):  # compiled through the overload below
    raise NotImplementedError("numba-only")


_V32I8, _V32F32 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.FloatType(), 32)
AHEAD = 32  # cache rows prefetched ahead of use (24-48 measured equally good)


@njit(inline="always", cache=True)
def prefetch_rows(c, cs, g, j, n):
    # A KV head's rows are contiguous: rows j..j+n-1 are one range of bytes.
    n = min(n, c.shape[1] - j)
    if n > 0:
        head = c[g]
        row_bytes = c.shape[2] * c.itemsize
        for byte in range(j * row_bytes, (j + n) * row_bytes, LINE):
            prefetch_line(head, byte)
        if cs.shape[2] > 0:  # Q8_0 scales: 8 bytes a row
            prefetch_line(cs[g], j * cs.shape[2] * cs.itemsize)


@intrinsic
def _scaled_block(typingctx, qs, d, row, o):
    """row[o:o+32] = d * qs[o:o+32] (qs int8[HD], row f32[HD], C-contiguous) as one vector
    operation: LLVM left numba's loop of it scalar (one vcvtsi2ss per element). Generic
    LLVM vectors: each target picks its instructions (x86 AVX-512: vpmovsxbd, vcvtdq2ps)."""
    if not (isinstance(qs, types.Array) and qs.dtype == types.int8 and qs.layout == "C"
            and isinstance(row, types.Array) and row.dtype == types.float32 and row.layout == "C"
            and d == types.float32 and isinstance(o, types.Integer)):
        return None

    def codegen(context, b, sig, args):
        qa, da, ra, oa = args
        src = context.make_array(sig.args[0])(context, b, qa).data
        dst = context.make_array(sig.args[2])(context, b, ra).data
        v = _IR(b)
        x = b.fmul(b.sitofp(v.load(src, oa, _V32I8), _V32F32), v.splat(da, _V32F32))
        b.store(x, b.bitcast(b.gep(dst, [oa]), _V32F32.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(qs, d, row, o), codegen


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
def _load_row(c, cs, g, j, row, HD):
    if c.dtype == types.int8:
        def load_q8_0(c, cs, g, j, row, HD):
            qs = c[g, j]
            for b in range(HD // QK8_0):
                _scaled_block(qs, cs[g, j, b], row, b * QK8_0)
        return load_q8_0

    def load(c, cs, g, j, row, HD):
        for d in range(HD):
            row[d] = as_f32(c[g, j, d])
    return load


@njit(inline="always", cache=True)
def load_block(c, cs, g, j0, n_kv, rows, HD):
    KB = rows.shape[0]
    prefetch_rows(c, cs, g, j0 + AHEAD, min(KB, n_kv - j0 - AHEAD))
    for jj in range(min(KB, n_kv - j0)):
        load_row(c, cs, g, j0 + jj, rows[jj], HD)
