"""Q4_K rows regrouped 8 at a time for the prefill kernel avx2.q4_k_8rows.

In a GGUF file each Q4_K row is its own run of 144-byte super-blocks. Prefill multiplies every
row with many prompt positions, so it pays to regroup 8 rows once per matrix product into a
scratch layout where one 32-byte vector holds the same 4 weights of all 8 rows (lanes = rows)
and the scales and mins sit ready for vpmaddwd; avx2.py says why that halves the multiplies.
The regrouping reads each weight byte once per product and costs ~2% of the prefill.

Per super-block k of the group (nb = cols / 256):
    qs[k*2048 + 256*j + 32*g + 4*r + e] = weight 4g+e of sub-block j of row r, as a byte 0..15
    sc[k*128 + 16*j + 2*r + {0,1}]      = the 6-bit scale of sub-block j of row r (twice)
    mn[k*128 + 16*j + 2*r + {0,1}]      = the 6-bit min of sub-block j of row r (twice)
    d[k*8 + r], dmin[k*8 + r]           = the super-block's two fp16 factors as f32
"""
import numpy as np
from numba import njit

from .kquants import Q4_K_BYTES, _f16, _scale_min

GROUP = 8  # rows per group (the 8 f32 lanes of an AVX2 register)
LOW_NIBBLES = np.uint32(0x0F0F0F0F)


def q4_k8_buffers(nb: int):
    """Empty (qs, sc, mn, d, dmin) for one group of rows with nb super-blocks each."""
    return (np.empty(nb * 2048, np.uint8), np.empty(nb * 128, np.int16), np.empty(nb * 128, np.int16),
            np.empty(nb * GROUP, np.float32), np.empty(nb * GROUP, np.float32))


@njit(error_model="numpy", cache=True)
def repack_q4_k8(w, r0, qs, sc, mn, d, dmin):
    """Rows r0..r0+7 of the Q4_K matrix w (uint8[rows, nb*144]) into the layout above."""
    nb = w.shape[1] // Q4_K_BYTES
    q32 = qs.view(np.uint32)  # word (k*512 + 64*j + 8*g + r) holds 4 weights of row r
    for r in range(GROUP):
        row = w[r0 + r]
        w32 = row.view(np.uint32)  # 144-byte super-blocks: whole words
        for k in range(nb):
            o = k * Q4_K_BYTES
            d[k * GROUP + r] = _f16(row, o)
            dmin[k * GROUP + r] = _f16(row, o + 2)
            for j in range(8):
                s, m = _scale_min(row, o + 4, j)
                at = k * 128 + 16 * j + 2 * r
                sc[at] = s
                sc[at + 1] = s
                mn[at] = m
                mn[at + 1] = m
            for c in range(4):  # 32 bytes: sub-block 2c in the low nibbles, 2c+1 in the high
                src = (o + 16 + 32 * c) // 4
                for g in range(8):
                    v = w32[src + g]
                    q32[k * 512 + 64 * (2 * c) + 8 * g + r] = v & LOW_NIBBLES
                    q32[k * 512 + 64 * (2 * c + 1) + 8 * g + r] = (v >> np.uint32(4)) & LOW_NIBBLES
