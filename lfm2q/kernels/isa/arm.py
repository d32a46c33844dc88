"""The aarch64 backend: the NEON row kernels (neon.py: sdot with dotprod, widening multiplies
without) under the names every backend offers (see portable.py), and the row-pair / row-quad
forms of prefill as loops over them. Selected by isa/__init__.py on aarch64.

With dotprod, Q4_K matrices are packed 8 rows a group and Q4_0 matrices 4 rows a group at
load (kernels/repack.py) for the lane-indexed sdot kernels (neon.q4_k_packed, neon.q4_0_packed:
the row kernels' bits). Without it they stay in the file's layout: the packed kernels are then
portable's loops, compiled (dispatch names them) but never called. With i8mm too, both are
packed in 8-byte chunks instead (repack.pack_q4_k_8x8, pack_q4_0_4x8): prompts through smmla,
2 rows x 2 positions an instruction (neon.q4_k_8x8_mmla_rows8, q4_0_4x8_mmla_rows), decode
through sdot on the same bytes (neon.q4_k_8x8_packed, q4_0_4x8_packed); the row kernels' bits
again. One layout per type on a CPU: the other's kernels are portable's there.
"""
from numba import njit

from .llvm_ir import TOKENS
from .neon import (HAVE_DOTPROD, HAVE_I8MM, q4_0_row, q4_0_rows, q4_k_row, q4_k_rows, q5_k_row,  # noqa: F401
                   q5_k_rows, q6_k_row, q6_k_rows, q8_0_row, q8_0_rows)

# Q4_1, Q5_0, Q5_1 stay on their float kernels here (no NEON twins yet): portable's loops
# only fill the interface dispatch compiles.
from .portable import (q4_1_row, q4_1_rows, q4_1_rows4, q5_0_row, q5_0_row4, q5_0_rows, q5_0_rows4,  # noqa: F401
                       q5_1_row, q5_1_rows, q5_1_rows4)

if HAVE_DOTPROD and not HAVE_I8MM:
    from .neon import q4_k_packed, q4_k_packed_rows  # noqa: F401
else:
    from .portable import q4_k_packed, q4_k_packed_rows  # noqa: F401
if HAVE_DOTPROD and not HAVE_I8MM:
    from .neon import q4_0_packed, q4_0_packed_rows  # noqa: F401
else:
    from .portable import q4_0_packed, q4_0_packed_rows  # noqa: F401
if HAVE_I8MM:
    from .neon import (q4_0_4x8_mmla_rows, q4_0_4x8_packed, q4_k_8x8_mmla_rows, q4_k_8x8_mmla_rows8,  # noqa: F401
                       q4_k_8x8_packed)
else:
    from .portable import (q4_0_4x8_mmla_rows, q4_0_4x8_packed, q4_k_8x8_mmla_rows, q4_k_8x8_mmla_rows8,  # noqa: F401
                           q4_k_8x8_packed)

NAME = "aarch64 NEON + dotprod + i8mm" if HAVE_I8MM else "aarch64 NEON + dotprod" if HAVE_DOTPROD else "aarch64 NEON"
WIDE_FORMS = False  # the pair / quad forms are the row kernels in a loop: nothing for tuning.py to pick
INTEGER_PREFILL = True
# Q4_K in 8-row groups: 4-byte chunks for lane-indexed sdot (neon.q4_k_packed), or with i8mm
# 8-byte chunks for smmla (neon.q4_k_8x8_*)
PACKS_Q4_K = HAVE_DOTPROD and not HAVE_I8MM
PACKS_Q4_K_8X8 = HAVE_I8MM
# Q4_0 in 4-row groups (rows % 4 != 0 stay rows): 4-byte chunks for lane-indexed sdot
# (neon.q4_0_packed), or with i8mm 8-byte chunks for smmla (neon.q4_0_4x8_*)
PACKS_Q4_0 = HAVE_DOTPROD and not HAVE_I8MM
PACKS_Q4_0_4X8 = HAVE_I8MM
Q4_0_PACK_CHUNK = 4  # PACKS_Q4_0's layout (repack.pack_q4_0x4)
Q8_0_DECODE_PAIRS = False
B32_DECODE_QUADS = False  # decode rows one by one (q4_0_row4 below only fills the interface)
Q4_0_INTEGER = True  # Q4_0 rows through neon.q4_0_row (sdot / widening multiplies)
Q4_1_Q5_INTEGER = False  # Q4_1, Q5_0, Q5_1: float kernels (the portable rows above are unused)
QUAD_TOKENS = 2 * TOKENS

_J = dict(error_model="numpy", fastmath=False, cache=True)  # no fastmath: see neon.py


@njit(**_J)
def q6_k_rows2(w, r, xq, xd, bsum, t, out):  # out[t + i, r : r + 2], i < TOKENS
    for rr in range(r, r + 2):
        res = q6_k_rows(w[rr], xq, xd, bsum, t)
        for i in range(TOKENS):
            out[t + i, rr] = res[i]


@njit(**_J)
def q8_0_rows2(w, r, xq, xd, t, out):  # out[t + i, r : r + 2], i < TOKENS
    for rr in range(r, r + 2):
        res = q8_0_rows(w[rr], xq, xd, t)
        for i in range(TOKENS):
            out[t + i, rr] = res[i]


@njit(**_J)
def q8_0_row2(w, r, xq, xd, out):  # decode: out[r : r + 2]
    out[r] = q8_0_row(w[r], xq, xd)
    out[r + 1] = q8_0_row(w[r + 1], xq, xd)


@njit(**_J)
def q8_0_rows4(w, r, xq, xd, t, out):  # out[t + i, r : r + 4], i < QUAD_TOKENS
    for rr in range(r, r + 4):
        for h in range(0, QUAD_TOKENS, TOKENS):
            res = q8_0_rows(w[rr], xq, xd, t + h)
            for i in range(TOKENS):
                out[t + h + i, rr] = res[i]


@njit(**_J)
def q4_0_rows4(w, r, xq, xd, t, out):  # out[t + i, r : r + 4], i < QUAD_TOKENS (unpacked Q4_0)
    for rr in range(r, r + 4):
        for h in range(0, QUAD_TOKENS, TOKENS):
            res = q4_0_rows(w[rr], xq, xd, t + h)
            for i in range(TOKENS):
                out[t + h + i, rr] = res[i]


@njit(**_J)
def q4_k_packed16_rows(p, gi, xq, xd, bs32, t, out):  # groups gi, gi + 1
    q4_k_packed_rows(p, gi, xq, xd, bs32, t, out)
    q4_k_packed_rows(p, gi + 1, xq, xd, bs32, t, out)


@njit(**_J)
def q4_0_row4(w, r, xq, xd, out):  # decode: out[r : r + 4] (unused: B32_DECODE_QUADS is False)
    for rr in range(r, r + 4):
        out[rr] = q4_0_row(w[rr], xq, xd)
