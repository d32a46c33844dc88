"""fp16 values held as uint16 bits in numba code (numba has no float16 arrays).

The KV cache stores K and V in fp16 as llama.cpp's default cache does: half the memory of
f32. `kv_value(x, cache)` gives what to store in a cache of either dtype (uint16: fp16 bits
rounded to nearest even, as F16C's vcvtps2ph; float32: x itself) and `as_f32(v)` reads it
back; on x86 LLVM turns both into vcvtps2ph / vcvtph2ps and vectorizes loops over them.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_HALF, _I16, _I32, _F32 = ir.HalfType(), ir.IntType(16), ir.IntType(32), ir.FloatType()


@intrinsic
def as_f32(typingctx, v):  # uint16 fp16 bits or f32 -> f32
    if v == types.float32:
        return types.float32(v), lambda context, builder, sig, args: args[0]
    if v == types.uint16:
        def codegen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], _HALF), _F32)
        return types.float32(v), codegen
    return None


@intrinsic
def bf16_as_f32(typingctx, v):  # uint16 bf16 bits -> f32 (the top half of an fp32: exact)
    if v != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        wide = builder.shl(builder.zext(args[0], _I32), ir.Constant(_I32, 16))
        return builder.bitcast(wide, _F32)
    return types.float32(v), codegen


@intrinsic
def kv_value(typingctx, x, cache):  # f32 x as an element of `cache` (an f32 or uint16 array)
    if x != types.float32 or not isinstance(cache, types.Array):
        return None
    if cache.dtype == types.float32:
        return types.float32(x, cache), lambda context, builder, sig, args: args[0]
    if cache.dtype == types.uint16:
        def codegen(context, builder, sig, args):
            return builder.bitcast(builder.fptrunc(args[0], _HALF), _I16)
        return types.uint16(x, cache), codegen
    return None
