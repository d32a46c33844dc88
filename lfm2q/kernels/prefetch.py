"""Software prefetch: asking for cache lines before a kernel reaches them.

Decode streams every weight byte from memory once per token. The hardware prefetchers alone
left each thread waiting on memory: they follow a stream only within a 4 KiB page and only so
far ahead. Asking for the next rows' lines while the current ones are multiplied, 2 threads,
1.2 GB of weights (measured): Q8_0 11.4 -> 18.9 GB/s, Q6_K 13 -> 21, packed Q4_K 16 -> 20.
"""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .isa.llvm_ir import IR as _IR

_I8, _I32 = ir.IntType(8), ir.IntType(32)
LINE = 64  # bytes per cache line
AHEAD_BYTES = 4096  # how far ahead of a matrix-vector product's rows to ask (2-16 KiB measured alike)


@intrinsic
def prefetch_line(typingctx, a, byte):  # hint: the line at byte `byte` of C-contiguous `a` is read soon
    if not (isinstance(a, types.Array) and a.layout == "C" and isinstance(byte, types.Integer)):
        return None

    def codegen(context, b, sig, args):
        data = b.bitcast(context.make_array(sig.args[0])(context, b, args[0]).data, _I8.as_pointer())
        ptr = b.gep(data, [args[1]])
        fn = _IR(b).fn("llvm.prefetch.p0i8", ir.VoidType(), [ptr.type, _I32, _I32, _I32])
        b.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])  # read, keep, data
        return context.get_dummy_value()
    return types.void(a, byte), codegen


@njit(inline="always", cache=True)
def prefetch_rows_ahead(w, r0, r1):
    """Before rows r0..r1 of the C-contiguous 2-D matrix w are read: ask for the bytes
    AHEAD_BYTES past them, so the rows after them are on their way meanwhile."""
    row_bytes = w.shape[1] * w.itemsize
    stop = min(r1 * row_bytes + AHEAD_BYTES, w.size * w.itemsize)
    for byte in range(r0 * row_bytes + AHEAD_BYTES, stop, LINE):
        prefetch_line(w, byte)
