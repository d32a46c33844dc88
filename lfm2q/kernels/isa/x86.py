"""The x86 backend: the AVX2 row kernels (x86_avx2.py) and the 512-bit pairs, quads and packed
groups (x86_avx512.py, which compile to their 256-bit form without AVX-512 VNNI), under the
names every backend offers (see portable.py). Selected by isa/__init__.py on x86 CPUs with
AVX2, FMA and F16C.
"""
from .x86_avx2 import (HAVE_AVX2, HAVE_VNNI, q4_0_row, q4_0_rows, q4_k_packed, q4_k_packed_rows, q4_k_row, q4_k_rows,  # noqa: F401
                       q5_k_row, q5_k_rows, q6_k_row, q6_k_rows, q8_0_row, q8_0_rows,
                       q4_1_row, q4_1_rows, q5_0_row, q5_0_rows, q5_1_row, q5_1_rows)
from .portable import (q4_0_4x8_mmla_rows, q4_0_4x8_packed,  # noqa: F401
                       q4_k_8x8_mmla_rows, q4_k_8x8_mmla_rows8, q4_k_8x8_packed)  # (never called: PACKS_Q4_0_4X8, PACKS_Q4_K_8X8)
from .x86_avx512 import (HAVE_AVX512_VNNI, QUAD_TOKENS, q4_k_packed16_rows, q6_k_rows2,  # noqa: F401
                         q8_0_row2, q8_0_rows2, q8_0_rows4, q4_0_rows4, q4_1_rows4, q5_0_rows4, q5_1_rows4,
                         q4_0_row4, q5_0_row4)
from .x86_avx512 import q4_0_packed, q4_0_packed_rows, q4_0_packed_x  # noqa: F401  (called where PACKS_Q4_0)

NAME = ("x86 AVX-512 VNNI" if HAVE_AVX512_VNNI else "x86 AVX2 + VNNI" if HAVE_VNNI else "x86 AVX2")
WIDE_FORMS = HAVE_AVX512_VNNI  # decode pairs / quads and prefill pairs / quads differ from rows: tuning.py picks
INTEGER_PREFILL = True
PACKS_Q4_K = True  # Q4_K matrices packed 8 rows a group at load (kernels/repack.py)
PACKS_Q4_K_8X8 = False  # the 8-byte-chunk layouts are for NEON's smmla
# Q4_0 matrices packed 4 rows a group in 16-byte chunks (repack.pack_q4_0x16) where 512-bit vpdpbusd
# takes 4 rows at once (x86_avx512.q4_0_packed); the row kernels stay for AVX2
PACKS_Q4_0 = HAVE_AVX512_VNNI
Q4_0_PACK_CHUNK = 16
PACKS_Q4_0_4X8 = False
Q8_0_DECODE_PAIRS = True  # decode takes Q8_0 rows two at a time (x86_avx512.q8_0_row2)
# decode takes Q4_0 and Q5_0 rows four at a time (x86_avx512.q4_0_row4: two 512-bit row pairs, four
# float chains where a row alone is one fma latency a block) where the CPU has AVX-512 VNNI
B32_DECODE_QUADS = HAVE_AVX512_VNNI
Q4_0_INTEGER = True  # Q4_0 rows through the Q8_0 kernel's steps (x86_avx2.q4_0_row)
Q4_1_Q5_INTEGER = True  # Q5_0 the same way; Q4_1, Q5_1 against x in Q8_1 (x86_avx2.q4_1_row)
