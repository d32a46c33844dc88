"""Matrices packed a few rows at a time at load time, for the packed kernels: Q4_K in groups of
8 rows (isa/x86_avx2.q4_k_packed, isa/neon.q4_k_packed, isa/portable.q4_k_packed), and Q4_0
in groups of 4 rows where the CPU has NEON dotprod (isa/neon.q4_0_packed; layout below), both
in 8-byte chunks where it also has i8mm (isa/neon.q4_k_8x8_*, q4_0_4x8_*: smmla for prompts), and
Q4_0 in 16-byte chunks with x86 AVX-512 VNNI (isa/x86_avx512.q4_0_packed).

In a GGUF file each Q4_K row is its own run of 144-byte super-blocks, and a row kernel sums
one row at a time with the 8 lanes of a vector. Packed, one 32-byte vector holds the same 4
bytes (8 weights) of each of 8 rows: lanes are rows, 4 activation bytes broadcast to every
lane multiply all 8 rows at once (vpmaddubsw), and 8 of those products add up in 16 bits
before the sub-block scales go on with one vpmaddwd. Per weight that is half the instructions
of the row kernel, and no horizontal sums; the kernel writes 8 outputs with one store. Decode
on the 350M shape: 41.7 -> 55.8 tok/s (2 threads); the packed copy replaces the file's pages
(released after packing), so memory stays the same.
"""
import numpy as np
from numba import njit, prange

from .formats import Q4_0, Q4_K
from .kquants import Q4_K_BYTES, _scale_min
from .q4_0 import Q4_0_BYTES

GROUP = 8  # rows per group (the 8 f32 lanes of an AVX2 register)

# Per super-block k of a group, P_BYTES = 1184 bytes (8 rows' 144-byte blocks take 1152):
#   [0, 1024)     the quant bytes: dword 8*(8c + g) + r = bytes 16+32c+4g.. of row r's block
#                 (low nibbles: weights 4g.. of sub-block 2c, high nibbles: of sub-block 2c+1)
#   [1024, 1088)  scale of sub-block j of row r at 1024 + 8j + r (6 bits)
#   [1088, 1152)  min of sub-block 2p+h of row r at 1088 + 16p + 2r + h
#   [1152, 1168)  d of row r (fp16), [1168, 1184) dmin of row r (fp16)
# Decode reads this once per token like the file's own bytes (2.8% more of them), with half
# the instructions of the row kernel per weight.
P_QS, P_SC, P_MN, P_D, P_DMIN, P_BYTES = 0, 1024, 1088, 1152, 1168, 1184


# One thread: ~4 GB/s here, so the 350M file's Q4_K matrices pack in ~0.05 s, and a serial
# function compiles in a fraction of a parallel one's time (first run).
@njit(error_model="numpy", cache=True)
def pack_q4_k8(w, out):
    """Q4_K matrix w uint8[rows, nb*144] (rows a multiple of 8) -> out uint8[rows/8, nb*P_BYTES]."""
    nb = w.shape[1] // Q4_K_BYTES
    for gi in range(w.shape[0] // GROUP):
        dst = out[gi]
        d32 = dst.view(np.uint32)
        rows = w[gi * GROUP:(gi + 1) * GROUP]
        w32 = rows.view(np.uint32)  # [8, nb*36]
        for k in range(nb):
            o = k * Q4_K_BYTES
            p = k * P_BYTES
            # the quant dwords in the order they are stored: a group's load touches the 8
            # rows' blocks once, and the writes run straight through (first-token cost)
            q = (p + P_QS) // 4
            for cg in range(32):  # dword g of the 32 quant bytes c = cg // 8
                src = (o + 16) // 4 + 8 * (cg // 8) + cg % 8
                for r in range(GROUP):
                    d32[q + 8 * cg + r] = w32[r, src]
            for r in range(GROUP):
                row = rows[r]
                for j in range(8):
                    s, m = _scale_min(row, o + 4, j)
                    dst[p + P_SC + 8 * j + r] = s
                    dst[p + P_MN + 16 * (j // 2) + 2 * r + (j % 2)] = m
                for i in range(2):
                    dst[p + P_D + 2 * r + i] = row[o + i]           # d
                    dst[p + P_DMIN + 2 * r + i] = row[o + 2 + i]    # dmin


# --- Q4_K, 8 rows a group in 8-byte chunks (NEON i8mm) ----------------------------------------
# `smmla` (see the Q4_0 4x8 layout below) multiplies 2 positions' 8 activation bytes by 2 rows'
# 8 weights. So each 16-byte vector of the quants holds 8 bytes of each of 2 rows (llama.cpp's
# block_q4_Kx8 with blck_size_interleave 8), and the mins are laid out to be an smmla operand
# too (x's sums per 32 split into two int8 halves, pair_positions_q8_k):
#
# Per super-block k of a group, P_BYTES = 1184 bytes as the 4-byte-chunk layout above:
#   [0, 1024)     vector (q, c, e) at 256q + 64c + 16e: bytes 16 + 32c + 8e.. (8 of them) of row
#                 2q's block, then the same 8 of row 2q + 1's (low nibbles: weights 8e.. of
#                 sub-block 2c, high nibbles: of sub-block 2c + 1)
#   [1024, 1088)  scale step of sub-block j of row r at 1024 + 8j + r: s_j - s_(j+1) as an int8
#                 (s_j its 6-bit scale, s_8 = 0; the kernels' running tiles take steps)
#   [1088, 1152)  min of sub-block j of row r at 1088 + 8r + j (6 bits: row r's 8 mins in a row)
#   [1152, 1184)  d, dmin of row r (fp16) at 1152 + 2r, 1168 + 2r (as P_D, P_DMIN)
# A row pair's quants are 256 contiguous bytes (the kernels take one pair after another), its
# sub-blocks 2c and 2c + 1 the 64 at 256q + 64c.
K8_QS, K8_SC, K8_MN = 0, 1024, 1088


@njit(error_model="numpy", cache=True)
def pack_q4_k_8x8(w, out):
    """Q4_K matrix w uint8[rows, nb*144] (rows a multiple of 8) -> out uint8[rows/8, nb*P_BYTES]
    in the layout above (single-threaded, as pack_q4_k8)."""
    nb = w.shape[1] // Q4_K_BYTES
    for gi in range(w.shape[0] // GROUP):
        dst = out[gi]
        d64 = dst.view(np.uint64)
        rows = w[gi * GROUP:(gi + 1) * GROUP]
        w64 = rows.view(np.uint64)  # [8, nb*18]: 144-byte blocks are whole 8-byte words
        for k in range(nb):
            o = k * Q4_K_BYTES
            p = k * P_BYTES
            for c in range(4):
                for q in range(4):
                    for e in range(4):
                        at = (p + K8_QS + 256 * q + 64 * c + 16 * e) // 8
                        src = (o + 16 + 32 * c + 8 * e) // 8
                        d64[at] = w64[2 * q, src]
                        d64[at + 1] = w64[2 * q + 1, src]
            for r in range(GROUP):
                row = rows[r]
                after = np.int32(0)  # s_(j+1)
                for j in range(7, -1, -1):
                    s, m = _scale_min(row, o + 4, j)
                    dst[p + K8_SC + 8 * j + r] = np.uint8((s - after) & 255)
                    dst[p + K8_MN + 8 * r + j] = m
                    after = s
                for i in range(2):
                    dst[p + P_D + 2 * r + i] = row[o + i]
                    dst[p + P_DMIN + 2 * r + i] = row[o + 2 + i]


def unpack_q4_k_8x8_np(p: np.ndarray) -> np.ndarray:
    """NumPy inverse of pack_q4_k_8x8 (tests): packed uint8[rows/8, nb*1184] -> uint8[rows,
    nb*144], the 6-bit scales and mins packed back into ggml's 12 bytes."""
    groups, nb = p.shape[0], p.shape[1] // P_BYTES
    b = p.reshape(groups, nb, P_BYTES).astype(np.int32)
    qs = b[:, :, :1024].reshape(groups, nb, 4, 4, 4, 2, 8)  # [group, block, q, c, e, row in pair, byte]
    qs = qs.transpose(0, 2, 5, 1, 3, 4, 6).reshape(groups, GROUP, nb, 128)  # row 2q + i: bytes 32c + 8e..
    steps = p.reshape(groups, nb, P_BYTES)[:, :, K8_SC:K8_SC + 64].view(np.int8).astype(np.int32)
    sc = np.cumsum(steps.reshape(groups, nb, 8, GROUP)[:, :, ::-1], axis=2)[:, :, ::-1]  # s_j = steps j..7
    sc = sc.transpose(0, 3, 1, 2)  # [g, row, block, j]
    mn = b[:, :, K8_MN:K8_MN + 64].reshape(groups, nb, GROUP, 8).transpose(0, 2, 1, 3)
    lo, hi = sc[..., 4:], mn[..., 4:]  # sub-blocks 4-7: their low 4 bits in bytes 8-11, top 2 over 0-7
    scales = np.concatenate([sc[..., :4] | (lo >> 4) << 6, mn[..., :4] | (hi >> 4) << 6,
                             (lo & 15) | (hi & 15) << 4], axis=-1)
    d = b[:, :, P_D:P_D + 16].reshape(groups, nb, GROUP, 2).transpose(0, 2, 1, 3)
    dmin = b[:, :, P_DMIN:P_DMIN + 16].reshape(groups, nb, GROUP, 2).transpose(0, 2, 1, 3)
    out = np.concatenate([d, dmin, scales, qs], axis=-1).astype(np.uint8)
    return out.reshape(groups * GROUP, nb * Q4_K_BYTES)


# A prompt's Q8_K activations for the smmla kernels, once per matrix product: positions in
# pairs, quants as pair_positions_q8_0 lays them (by blocks of 32, the Q4_K sub-blocks), the
# scales per super-block each twice, and x's sums per 32 (|s| <= 32 * 128, int16) as two int8
# numbers s = 64 hi + lo (hi = s >> 6 in -64..63, lo = s & 63), 8 sub-blocks of 2 positions
# in a 16-byte smmla operand each, against the 8 mins of 2 rows (K8_MN):
#   xi[p, 64b + 16e + 8j + i]   = xq[2p + j, 32b + 8e + i]        (b < cols/32, e < 4, i < 8)
#   xdi[p, 4k + 2j + i]         = xd[2p + j, k]                   (i < 2)
#   bsi[p, 32k + 16h + 8j + s]  = hi (h = 0) or lo (h = 1) of bs32[2p + j, 8k + s]
# Decode pairs its one position with itself: twin_chunks_q8_0 for the quants, twin_sums_q8_k.

@njit(error_model="numpy", cache=True)
def pair_positions_q8_k(xq, xd, bs32):
    """xq int8[n, cols], xd f32[n, cols/256], bs32 int16[n, cols/32] (Q8_K rows) -> (xi
    int8[n//2, 2*cols], xdi f32[n//2, 4*cols/256], bsi int8[n//2, 4*cols/32]): the layout above.
    One thread, 8-byte words: the copy takes ~0.05 ns a byte of x on x86 (its new pages more),
    and a parallel loop would add a second of first-run compile per CPU."""
    pairs, cols = xq.shape[0] // 2, xq.shape[1]
    nb = xd.shape[1]
    xi = np.empty((pairs, 2 * cols), np.int8)
    xdi = np.empty((pairs, 4 * nb), np.float32)
    bsi = np.empty((pairs, 32 * nb), np.int8)
    w, x64 = xi.view(np.uint64), xq.view(np.uint64)  # chunk c of position 2p + j -> word 2c + j of pair p
    for p in range(pairs):
        for j in range(2):
            for c in range(cols // 8):
                w[p, 2 * c + j] = x64[2 * p + j, c]
            for k in range(nb):
                xdi[p, 4 * k + 2 * j] = xd[2 * p + j, k]
                xdi[p, 4 * k + 2 * j + 1] = xd[2 * p + j, k]
            _split_sums(bs32[2 * p + j], bsi[p], 8 * j)
    return xi, xdi, bsi


@njit(error_model="numpy", inline="always")
def _split_sums(bs32, out, at):  # out[32k + 16h + at + s] = hi / lo of bs32[8k + s]
    for k in range(bs32.shape[0] // 8):
        for s in range(8):
            v = np.int32(bs32[8 * k + s])
            out[32 * k + at + s] = v >> 6
            out[32 * k + 16 + at + s] = v & 63


@njit(error_model="numpy", cache=True)
def twin_sums_q8_k(bs32, out):
    """bs32 int16[cols/32] (one position) -> out int8[cols/8]: pair_positions_q8_k's bsi for the
    position paired with itself (decode's smmla over the mins)."""
    _split_sums(bs32, out, 0)
    _split_sums(bs32, out, 8)


def pair_positions_q8_k_np(xq: np.ndarray, xd: np.ndarray, bs32: np.ndarray):
    """NumPy twin of pair_positions_q8_k (tests)."""
    pairs, nb = xq.shape[0] // 2, xd.shape[1]
    xi, _ = pair_positions_np(xq, np.zeros((xq.shape[0], xq.shape[1] // 32), np.float32))
    xdi = np.repeat(xd[:2 * pairs].reshape(pairs, 2, nb).transpose(0, 2, 1), 2, axis=-1)  # [p, k, 2j + i]
    s = bs32[:2 * pairs].astype(np.int32).reshape(pairs, 2, nb, 8)  # [p, j, k, sub-block]
    halves = np.stack([s >> 6, s & 63], axis=1)  # [p, h, j, k, s]
    bsi = halves.transpose(0, 3, 1, 2, 4).astype(np.int8)  # [p, k, h, j, s]
    return xi, np.ascontiguousarray(xdi.reshape(pairs, 4 * nb)), np.ascontiguousarray(bsi.reshape(pairs, 32 * nb))


# --- Q4_0, 4 rows a group (NEON dotprod) ------------------------------------------------------
# A Q4_0 row is a run of 18-byte blocks (fp16 d, 16 bytes of nibbles: element j < 16 in the low
# nibble of byte j, j + 16 in its high one). A row kernel multiplies one row with 16-byte
# vectors and must sum their lanes; packed, each 16-byte vector holds 4 bytes of each of 4 rows,
# so `sdot v.4s, w.16b, x.4b[i]` (x's bytes 4i..4i+3 broadcast to every lane) multiplies all 4
# rows at once into 4 row lanes: no horizontal sums, one convert and one fma a block for 4 rows.
#
# Per block k of a group (Q4_0_P_BYTES = 72, the 4 rows' own 4 * 18 bytes: no overhead):
#   [0, 64)   chunk i < 4 at 16i: bytes 4i..4i+3 of row r's qs at 16i + 4r, each XOR 0x88
#   [64, 72)  d of row r (fp16) at 64 + 2r
# XOR 0x88 flips each nibble's top bit, so that a nibble read as a signed 4-bit number is q - 8:
# byte << 4 is 16 (q_lo - 8) as an int8, byte & 0xF0 is 16 (q_hi - 8), with no subtraction;
# the kernel takes the factor 16 off exactly in its fixed-point convert (scvtf #4).
Q4_0_GROUP, Q4_0_P_BYTES, Q4_0_P_D = 4, 72, 64


@njit(error_model="numpy", parallel=True, cache=True)
def _pack_q4_0(w, out, chunk):
    """Q4_0 matrix w uint8[rows, nb*18] (rows a multiple of 4) -> out uint8[rows/4, nb*72]: each
    block's 16 quant bytes in chunks of `chunk` bytes (4 or 8), chunk m of row r in 16-byte
    vector m * chunk/4 + r // (16/chunk), at (r % (16/chunk)) * chunk; XOR 0x88; then the 4 d."""
    nb = w.shape[1] // Q4_0_BYTES
    per = 16 // chunk  # rows per 16-byte vector
    for gi in prange(w.shape[0] // Q4_0_GROUP):
        dst = out[gi]
        for r in range(Q4_0_GROUP):
            row = w[gi * Q4_0_GROUP + r]
            for k in range(nb):
                o = k * Q4_0_BYTES
                p = k * Q4_0_P_BYTES
                for m in range(16 // chunk):
                    at = p + 16 * (m * (chunk // 4) + r // per) + (r % per) * chunk
                    for j in range(chunk):
                        dst[at + j] = row[o + 2 + chunk * m + j] ^ np.uint8(0x88)
                dst[p + Q4_0_P_D + 2 * r] = row[o]
                dst[p + Q4_0_P_D + 2 * r + 1] = row[o + 1]


def pack_q4_0x4(w, out):
    """Q4_0 in 4-byte chunks: vector i holds bytes 4i..4i+3 of every row (lane-indexed sdot)."""
    _pack_q4_0(w, out, 4)


def unpack_q4_0x4_np(p: np.ndarray) -> np.ndarray:
    """NumPy inverse of pack_q4_0x4 (tests): packed uint8[rows/4, nb*72] -> uint8[rows, nb*18]."""
    groups, nb = p.shape[0], p.shape[1] // Q4_0_P_BYTES
    b = p.reshape(groups, nb, Q4_0_P_BYTES)
    qs = (b[:, :, :64].reshape(groups, nb, 4, Q4_0_GROUP, 4) ^ 0x88).transpose(0, 3, 1, 2, 4)
    d = b[:, :, 64:].reshape(groups, nb, Q4_0_GROUP, 2).transpose(0, 2, 1, 3)
    out = np.concatenate([d, qs.reshape(groups, Q4_0_GROUP, nb, 16)], axis=-1)
    return out.reshape(groups * Q4_0_GROUP, nb * Q4_0_BYTES)


# --- Q4_0, 4 rows a group in 8-byte chunks (NEON i8mm) -----------------------------------------
# `smmla v.4s, a.16b, b.16b` multiplies a 2x8 int8 matrix (a's bytes 0-7, 8-15) by the
# transpose of another (b's) into 2x2 int32 lanes: lane 2i + j += a row i . b row j. With a =
# 8 quants of 2 positions and b = the same 8 quants' weights of 2 rows, one instruction does 2
# rows x 2 positions x 8 weights. So each 16-byte vector of a block holds 8 bytes of each of 2
# rows (llama.cpp's block_q4_0x4 with blck_size_interleave 8), read with plain loads:
#
# Per block k of a group (Q4_0_P_BYTES = 72, as the 4x4 layout; d at the same place):
#   [0, 64)   vector m < 4 at 16m: bytes 8h..8h+7 of rows 2q and 2q + 1 (h = m // 2, q = m % 2),
#             row 2q's at 16m, row 2q + 1's at 16m + 8, each XOR 0x88 (as above)
#   [64, 72)  d of row r (fp16) at 64 + 2r
# A vector's low nibbles are elements 8h..8h+7 of its 2 rows, its high nibbles 16+8h..16+8h+7.
# Decode reads the same bytes with sdot, against x's 8-byte chunks each twice (twin_chunks_q8_0).

# --- Q4_0, 4 rows a group in 16-byte chunks (x86 AVX-512 VNNI) --------------------------------
# x86_avx512.q4_0_packed: one 64-byte vector a block, row r's 16 quant bytes in its 128-bit
# quarter r (XOR 0x88 as above, d at the same place), so that a 16-byte activation broadcast
# meets all 4 rows in one vpdpbusd and the 4 scales convert in one instruction.

def pack_q4_0x16(w, out):
    """Q4_0 in 16-byte chunks: bytes 16r..16r+15 of a block are row r's 16 quant bytes."""
    _pack_q4_0(w, out, 16)


def unpack_q4_0x16_np(p: np.ndarray) -> np.ndarray:
    """NumPy inverse of pack_q4_0x16 (tests): packed uint8[rows/4, nb*72] -> uint8[rows, nb*18]."""
    groups, nb = p.shape[0], p.shape[1] // Q4_0_P_BYTES
    b = p.reshape(groups, nb, Q4_0_P_BYTES)
    qs = (b[:, :, :64].reshape(groups, nb, Q4_0_GROUP, 16) ^ 0x88).transpose(0, 2, 1, 3)
    d = b[:, :, 64:].reshape(groups, nb, Q4_0_GROUP, 2).transpose(0, 2, 1, 3)
    return np.concatenate([d, qs], axis=-1).reshape(groups * Q4_0_GROUP, nb * Q4_0_BYTES)


def pack_q4_0_4x8(w, out):
    """Q4_0 in 8-byte chunks (the layout above, for smmla)."""
    _pack_q4_0(w, out, 8)


def unpack_q4_0_4x8_np(p: np.ndarray) -> np.ndarray:
    """NumPy inverse of pack_q4_0_4x8 (tests): packed uint8[rows/4, nb*72] -> uint8[rows, nb*18]."""
    groups, nb = p.shape[0], p.shape[1] // Q4_0_P_BYTES
    b = p.reshape(groups, nb, Q4_0_P_BYTES)
    qs = b[:, :, :64].reshape(groups, nb, 2, 2, 2, 8) ^ 0x88  # [group, block, h, pair q, row in pair, byte]
    qs = qs.transpose(0, 3, 4, 1, 2, 5).reshape(groups, Q4_0_GROUP, nb, 16)  # row 2q + i, bytes 8h + j
    d = b[:, :, 64:].reshape(groups, nb, Q4_0_GROUP, 2).transpose(0, 2, 1, 3)
    out = np.concatenate([d, qs], axis=-1)
    return out.reshape(groups * Q4_0_GROUP, nb * Q4_0_BYTES)


# The activations of a prompt for the smmla kernels, once per matrix product: positions in
# pairs (2p, 2p + 1), each block's 8-byte chunks of the two interleaved, so that every smmla
# operand is one plain load (the 2 positions x 8 quants the weights' vectors meet):
#   xi[p, 64k + 16c + 8j + e] = xq[2p + j, 32k + 8c + e]        (c < 4 chunks, e < 8)
#   xdi[p, 4k + 2j + i]       = xd[2p + j, k]                   (i < 2: each scale twice, the
#                                                                lanes of a 2x2 smmla tile)
# An odd last position has no pair (the kernels take it alone, from xq and xd).

@njit(error_model="numpy", parallel=True, cache=True)
def pair_positions_q8_0(xq, xd):
    """xq int8[n, cols], xd f32[n, cols/32] (Q8_0 rows) -> (xi int8[n//2, 2*cols], xdi
    f32[n//2, 4*cols/32]): the layout above."""
    pairs, cols = xq.shape[0] // 2, xq.shape[1]
    nb = xd.shape[1]
    xi = np.empty((pairs, 2 * cols), np.int8)
    xdi = np.empty((pairs, 4 * nb), np.float32)
    for p in prange(pairs):
        for j in range(2):
            src, dsrc = xq[2 * p + j], xd[2 * p + j]
            for k in range(nb):
                for c in range(4):
                    for e in range(8):
                        xi[p, 64 * k + 16 * c + 8 * j + e] = src[32 * k + 8 * c + e]
                xdi[p, 4 * k + 2 * j] = dsrc[k]
                xdi[p, 4 * k + 2 * j + 1] = dsrc[k]
    return xi, xdi


@njit(error_model="numpy", cache=True)
def twin_chunks_q8_0(xq, out):
    """xq int8[cols] (one position) -> out int8[2*cols]: the position paired with itself in
    pair_positions_q8_0's layout, each 8-byte chunk twice (out[16c + 8j + e] = xq[8c + e]), so
    that decode's sdot meets the 2 rows of a weight vector with plain loads (no ld1r, which
    takes a SIMD pipe too: llvm-mca on the Neoverse N2, 28.2 -> 24.2 cycles per 256 weights)."""
    for c in range(xq.shape[0] // 8):
        for j in range(2):
            for e in range(8):
                out[16 * c + 8 * j + e] = xq[8 * c + e]


def pair_positions_np(xq: np.ndarray, xd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of pair_positions_q8_0 (tests)."""
    pairs, cols = xq.shape[0] // 2, xq.shape[1]
    nb = cols // 32
    x = xq[:2 * pairs].reshape(pairs, 2, nb, 4, 8).transpose(0, 2, 3, 1, 4)  # [p, k, c, j, e]
    d = np.repeat(xd[:2 * pairs].reshape(pairs, 2, nb).transpose(0, 2, 1), 2, axis=-1)  # [p, k, 2j + i]
    return np.ascontiguousarray(x.reshape(pairs, 2 * cols)), np.ascontiguousarray(d.reshape(pairs, 4 * nb))


# --- any packed type ---------------------------------------------------------------------------

def packed_shape(rows: int, row_bytes: int, qtype: int = Q4_K) -> tuple[int, int]:
    """Shape of the packed copy of a Q4_K (or Q4_0) matrix of rows x row_bytes (rows a
    multiple of its group)."""
    if qtype == Q4_0:
        return rows // Q4_0_GROUP, row_bytes // Q4_0_BYTES * Q4_0_P_BYTES
    return rows // GROUP, row_bytes // Q4_K_BYTES * P_BYTES


def packed(w, qtype, out=None, chunk=4):
    """The packed copy of a Q4_K or Q4_0 matrix w, in out (uint8[packed_shape]) or a new array,
    in 4-byte chunks (pack_q4_k8, pack_q4_0x4: lane-indexed sdot), 8-byte ones (pack_q4_k_8x8,
    pack_q4_0_4x8: smmla) or, Q4_0 only, 16-byte ones (pack_q4_0x16: AVX-512 VNNI)."""
    if qtype == Q4_0:
        if out is None:
            out = np.empty(packed_shape(*w.shape, Q4_0), np.uint8)
        {4: pack_q4_0x4, 8: pack_q4_0_4x8, 16: pack_q4_0x16}[chunk](w, out)
        return out
    return packed_q4_k8(w, out, chunk)


def packed_q4_k8(w, out=None, chunk=4):
    """The packed copy of the Q4_K matrix w (uint8[rows, nb*144], rows a multiple of 8), in
    out (uint8[packed_shape]) or a new array: 4-byte chunks (pack_q4_k8, lane-indexed sdot) or
    8-byte ones (pack_q4_k_8x8, smmla)."""
    if out is None:
        out = np.empty(packed_shape(*w.shape), np.uint8)
    (pack_q4_k_8x8 if chunk == 8 else pack_q4_k8)(w, out)
    return out
