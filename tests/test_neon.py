"""The NEON kernels (kernels/isa/neon.py).

On any machine: compiled for a Cortex-A76 (dotprod) and a Cortex-A72 (none), each kernel's
aarch64 assembly uses sdot, or only widening multiplies where the CPU lacks dotprod (a Pi 4
must never meet sdot: SIGILL).

On aarch64 (a Pi, or the emulated one of ../shared/tools/arm64, run once per CPU model): each
kernel against a NumPy oracle that sums the same integers exactly and takes neon.py's float
steps in neon.py's order, bit for bit, on random rows and rows at the edges (every byte 0x00 or
0xff, Q6_K scales at -128, Q8_0 quants at +-127 and -128; activations at +-127 and -128); the
4-position prefill form and dispatch's decode and prefill against the row kernels' bits; and
against the portable kernels (intdot.py) within float rounding. Packed Q4_0 (4-row groups,
kernels/repack.py): on any host its layout against the file's bytes; on aarch64 with dotprod
its kernels against a NumPy oracle reading the packed bytes and against the row kernel, bit for
bit, and a Q4_0 model's logits packed and unpacked (slow). Packed Q4_0 in 8-byte chunks (the
i8mm layout, repack.pack_q4_0_4x8, and the prompt's positions in pairs for smmla): on any host
both layouts against NumPy, and the assembly for a Neoverse N2 (smmla in the prompt loop, no
shuffles there); on aarch64 with i8mm (qemu's `max`) the smmla and sdot kernels against an
oracle reading the packed bytes and against the row kernel, bit for bit, alone and through
dispatch. The same for Q4_K in 8-byte chunks (repack.pack_q4_k_8x8, 8 rows a group, and
pair_positions_q8_k): the layout and its NumPy inverse and the paired positions on any host,
the N2 assembly (smmla with running tiles, no shuffles), and under i8mm its kernels against an
oracle on the packed bytes and the row kernel, through dispatch for 1-19 positions.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from lfm2q.kernels import dispatch, intdot
from lfm2q.kernels.dispatch import activations_np, dequantize
from lfm2q.kernels.formats import Q4_0, Q4_K, Q5_K, Q6_K, Q8_0, block_size
from lfm2q.kernels.isa import ARCH
from lfm2q.kernels.kquants import _scales_mins
from lfm2q.kernels.repack import (P_BYTES, Q4_0_P_BYTES, pack_q4_0_4x8, pack_q4_0x4, packed_q4_k8, packed_shape,
                                  pair_positions_np, pair_positions_q8_0, pair_positions_q8_k, pair_positions_q8_k_np,
                                  twin_chunks_q8_0, twin_sums_q8_k, unpack_q4_0_4x8_np, unpack_q4_0x4_np,
                                  unpack_q4_k_8x8_np)

ROOT = Path(__file__).resolve().parent.parent
TYPES = {Q4_0: "Q4_0", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K", Q8_0: "Q8_0"}
FP16_FIELDS = {Q4_0: (0,), Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), Q8_0: (0,)}
on_arm = pytest.mark.skipif(ARCH != "aarch64", reason="aarch64 code: runs on a Pi or under qemu (make test-arm64)")


# --- the assembly, for both CPU models (any host) -------------------------------------------

@pytest.fixture(scope="module")
def assembly():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import mca_arm64
    finally:
        sys.path.pop(0)
    kernels = ("q4_0_row", "q8_0_rows", "q4_k_row", "q5_k_row", "q6_k_rows")
    packed = ("q4_k_packed", "q4_0_packed", "q4_0_packed_rows")
    i8mm = ("q4_0_row", "q4_0_4x8_packed", "q4_0_4x8_mmla_rows",  # (the rest as on the A76)
            "q4_k_8x8_packed", "q4_k_8x8_mmla_rows8")
    return mca_arm64, {cpu: mca_arm64.emit(cpu, feats, i8mm if "+i8mm" in feats else kernels + packed * ("+dotprod" in feats))
                       for cpu, feats in mca_arm64.CPUS.items()}


def test_kernels_use_sdot_only_where_the_cpu_has_dotprod(assembly):
    mca, asm = assembly
    for name, text in asm["cortex-a76"].items():
        body = "\n".join(mca.loop_body(text))
        assert "sdot" in body, name
    for name in ("q4_k_packed", "q4_0_packed", "q4_0_packed_rows"):  # lane-indexed sdot
        assert ".4b[" in "\n".join(mca.loop_body(asm["cortex-a76"][name])), name
    body = mca.loop_body(asm["cortex-a76"]["q4_0_packed"])
    # no horizontal sums: 16 lane-indexed sdots for 2 blocks of 4 rows, 16 (q - 8) taken off in the convert
    assert sum(i.startswith("sdot") and ".4b[" in i for i in body) == 16
    assert not any(i.startswith(("addv", "addp", "faddp")) for i in body)
    assert any(i.startswith("scvtf") and i.endswith("#4") for i in body)
    for name, text in asm["cortex-a72"].items():
        body = "\n".join(mca.loop_body(text))
        assert "sdot" not in text, name
        assert "smull" in body, name  # widening multiplies
    for cpu in ("cortex-a76", "cortex-a72"):
        assert not any("smmla" in text for text in asm[cpu].values()), cpu  # no i8mm there: SIGILL


def test_the_i8mm_kernels_use_smmla_for_prompts_and_sdot_for_decode(assembly):
    mca, asm = assembly
    n2 = asm["neoverse-n2"]
    body = mca.loop_body(n2["q4_0_4x8_mmla_rows"])
    # 2 blocks x 2 position pairs x 2 row pairs x 4 chunks, every operand a plain load: no
    # shuffle, lane move or table lookup in the loop, no horizontal sum, 16 (q - 8) off in the convert
    assert sum(i.startswith("smmla") for i in body) == 32
    assert not any(i.split()[0] in ("zip1", "zip2", "uzp1", "uzp2", "trn1", "trn2", "ext", "tbl", "ins", "mov",
                                    "addv", "addp", "faddp") or i.startswith("dup") for i in body), body
    assert any(i.startswith("scvtf") and i.endswith("#4") for i in body)
    body = mca.loop_body(n2["q4_0_4x8_packed"])  # decode on the same bytes: 8 sdot and one addp a block,
    assert sum(i.startswith("sdot") for i in body) == 16 and sum(i.startswith("addp") for i in body) == 2
    assert not any(i.startswith(("ld1r", "dup")) for i in body), body  # x's twin chunks: plain loads
    assert not any("smmla" in i for i in body)
    assert "smmla" not in n2["q4_0_row"]  # the row kernels stay as on the Cortex-A76


def test_the_i8mm_q4_k_kernels_use_smmla_for_prompts_and_sdot_for_decode(assembly):
    mca, asm = assembly
    n2 = asm["neoverse-n2"]
    body = mca.loop_body(n2["q4_k_8x8_mmla_rows8"])  # one row pair's super-block, 8 positions
    ops = [i.split()[0] for i in body]
    # 8 sub-blocks x 4 position pairs x 4 chunks, and 2 a position pair for the mins; every
    # operand a plain load; the scale steps: 8 tbl (2 rows' steps of a sub-block in the lanes'
    # order) and 8 mla of 32 for the 32 tiles (the running tiles: no tile zeroed per sub-block)
    assert ops.count("smmla") == 128 + 8 and ops.count("tbl") == 8 and ops.count("mla") + ops.count("mul") == 32
    assert ops.count("movi") <= 8 + 2, body  # 4 running tiles, 4 mins tiles (and constants)
    assert not any(op in ("zip1", "zip2", "uzp1", "uzp2", "trn1", "trn2", "ext", "ins", "mov", "addv", "addp",
                          "faddp") or op.startswith("dup") for op in ops), body
    body = mca.loop_body(n2["q4_k_8x8_packed"])  # decode: rows 0-3 or 4-7's super-block
    ops = [i.split()[0] for i in body]
    assert ops.count("sdot") == 64 and ops.count("addp") == 8 and ops.count("smmla") == 4  # (the mins)
    assert not any(i.startswith("ld1r") and ".16b" in i for i in body), body  # x's twin chunks: plain loads


# --- the numbers (aarch64) ------------------------------------------------------------------

def weights(qtype, rows, cols, seed, fill=None):
    """uint8[rows, row_bytes]: random bytes (or every byte = fill) with sane fp16 scales."""
    rng = np.random.default_rng(seed)
    per, nbytes = block_size(qtype)
    raw = (rng.integers(0, 256, (rows, cols // per * nbytes), dtype=np.uint8) if fill is None
           else np.full((rows, cols // per * nbytes), fill, np.uint8))
    blocks = raw.reshape(rows, -1, nbytes)
    for o in FP16_FIELDS[qtype]:
        scale = rng.uniform(0.001, 0.02, blocks.shape[:2]).astype(np.float16)
        blocks[:, :, o:o + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return raw


def edge_weights(qtype, rows, cols):
    out = {"random": weights(qtype, rows, cols, seed=cols), "all-0xff": weights(qtype, rows, cols, 1, 0xFF),
           "all-0x00": weights(qtype, rows, cols, 2, 0x00)}
    if qtype == Q6_K:  # int8 scales at -128 with the largest and the smallest quants
        for name, w in list(out.items()):
            big = w.copy()
            big.reshape(rows, -1, 210)[:, :, 192:208] = 0x80
            out[name + ",scales=-128"] = big
    if qtype == Q8_0:  # quants at +-127, and -128 (ggml never writes it; the kernels take it)
        w = weights(qtype, rows, cols, 3)
        q = w.reshape(rows, -1, 34)[:, :, 2:].view(np.int8)
        q[:] = np.where(np.arange(32) % 2, 127, -127)
        out["+-127"] = w
        w = w.copy()
        w.reshape(rows, -1, 34)[:, :, 2:] = 0x80
        out["-128"] = w
    return out


def activations(cols, per, seed):
    """{name: (xq int8[cols], xd f32[cols/per], bsum int16[cols/16])}: 8-bit activations as
    the quantizers hand them over, including all -128 (which Q8_K never makes: the kernels
    still take it exactly)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, xq in {"random": rng.integers(-128, 128, cols), "+127": np.full(cols, 127),
                     "-128": np.full(cols, -128), "+-127": np.where(np.arange(cols) % 3, 127, -127)}.items():
        xq = xq.astype(np.int8)
        xd = rng.uniform(0.001, 0.05, cols // per).astype(np.float32)
        bsum = xq.reshape(-1, 16).astype(np.int16).sum(axis=1, dtype=np.int16)
        out[name] = (xq, xd, bsum)
    return out


def fp16(b):  # uint8[..., 2] -> f32[...]
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def fma32(a, b, c):  # one-rounding a * b + c in f32 (exact product in f64; double rounding is ~2^-29 rare)
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def int_quants(w, qtype):
    """(q int64[rows, nb, 256 or 32], per-16 or per-32 scales int64, mins int64 or None,
    d f32[rows, nb], dmin f32 or None) of a matrix: the integers the kernels multiply."""
    rows = w.shape[0]
    _, nbytes = block_size(qtype)
    b = w.reshape(rows, -1, nbytes)
    if qtype == Q8_0:
        return b[..., 2:].view(np.int8).astype(np.int64), None, None, fp16(b[..., 0:2]), None
    if qtype == Q4_0:
        qs = b[..., 2:].astype(np.int64)
        return np.concatenate([qs & 15, qs >> 4], axis=-1) - 8, None, None, fp16(b[..., 0:2]), None
    if qtype == Q6_K:
        ql, qh = b[..., 0:128].astype(np.int64), b[..., 128:192].astype(np.int64)
        q = np.empty(b.shape[:2] + (256,), np.int64)
        for h in range(2):
            l0, l1, hh = ql[..., 64 * h:64 * h + 32], ql[..., 64 * h + 32:64 * h + 64], qh[..., 32 * h:32 * h + 32]
            for j, v in enumerate(((l0 & 15) | ((hh & 3) << 4), (l1 & 15) | (((hh >> 2) & 3) << 4),
                                   (l0 >> 4) | (((hh >> 4) & 3) << 4), (l1 >> 4) | ((hh >> 6) << 4))):
                q[..., 128 * h + 32 * j:128 * h + 32 * j + 32] = v - 32
        return q, b[..., 192:208].view(np.int8).astype(np.int64), None, fp16(b[..., 208:210]), None
    sc, mn = (a[..., 0].astype(np.int64) for a in _scales_mins(b[..., 4:16]))
    qs_at = 16 if qtype == Q4_K else 48
    qs = b[..., qs_at:qs_at + 128].astype(np.int64).reshape(rows, -1, 4, 32)
    q = np.stack([qs & 15, qs >> 4], axis=3)  # [rows, nb, chunk c, low / high, 32]
    if qtype == Q5_K:
        qh = b[..., 16:48].astype(np.int64)
        for c in range(4):
            for hi in range(2):
                q[:, :, c, hi] |= ((qh >> (2 * c + hi)) & 1) << 4
    return q.reshape(rows, -1, 256), sc, mn, fp16(b[..., 0:2]), fp16(b[..., 2:4])


def oracle_bits(w, qtype, xq, xd, bsum):
    """f32[rows]: what neon.py computes, step for step (its module docstring)."""
    q, sc, mn, d, dmin = int_quants(w, qtype)
    rows, nb = d.shape
    if qtype == Q4_0:  # one exact sum a block, two scalar chains
        return q4_0_float_steps((q * xq.astype(np.int64).reshape(nb, 32)).sum(axis=-1), d, xd)
    if qtype == Q8_0:
        p = q * xq.astype(np.int64).reshape(nb, 32)
        lanes = p.reshape(rows, nb, 2, 4, 4).sum(axis=(2, 4))  # lane i: bytes 4i.., 16+4i..
        dk = (d * xd).astype(np.float32)
        acc = [np.zeros((rows, 4), np.float32) for _ in range(2)]
        for k in range(nb):
            acc[k % 2] = fma32(lanes[:, k].astype(np.float32), dk[:, k, None], acc[k % 2])
        v = acc[0] + acc[1]
        return (v[:, 0] + v[:, 1]) + (v[:, 2] + v[:, 3])
    x = xq.astype(np.int64).reshape(nb, 256)
    if qtype == Q6_K:
        isum = (np.repeat(sc, 16, axis=-1) * q * x).sum(axis=-1)
        msum = np.zeros_like(isum)
    else:
        isum = (np.repeat(sc, 32, axis=-1) * q * x).sum(axis=-1)
        msum = (mn * bsum.astype(np.int64).reshape(nb, 8, 2).sum(axis=-1)).sum(axis=-1)
    return k_float_steps(isum, msum, d, dmin, xd)


def k_float_steps(isum, msum, d, dmin, xd):
    """f32[rows]: neon.py's K-quant float steps over the exact sums isum, msum int64[rows, nb]
    with the rows' d, dmin f32[rows, nb] (dmin None: Q6_K) and x's xd f32[nb]."""
    rows, nb = isum.shape
    acc = np.zeros(rows, np.float32)
    accm = np.zeros(rows, np.float32)
    for k in range(nb):
        acc = fma32(isum[:, k].astype(np.float32), (d[:, k] * xd[k]).astype(np.float32), acc)
        if dmin is not None:
            accm = fma32(msum[:, k].astype(np.float32), (dmin[:, k] * xd[k]).astype(np.float32), accm)
    return acc - accm if dmin is not None else acc


def q4_0_float_steps(s, d, xd):
    """f32[rows]: neon.py's Q4_0 float steps over the exact block sums s int64[rows, nb] with
    the rows' d f32[rows, nb] and x's xd f32[nb]: acc[k % 2] = fma(f32(s), d * xd, ...)."""
    dk = (d * xd).astype(np.float32)
    acc = [np.zeros(s.shape[0], np.float32) for _ in range(2)]
    for k in range(s.shape[1]):
        acc[k % 2] = fma32(s[:, k].astype(np.float32), dk[:, k], acc[k % 2])
    return acc[0] + acc[1]


def oracle_packed_q4_0_bits(p, xq, xd):
    """f32[rows]: the packed Q4_0 kernel's result from the packed bytes alone (repack.py's
    layout read independently of pack_q4_0x4): nibbles of the XOR-0x88 bytes as signed 4-bit
    numbers are q - 8."""
    groups, nb = p.shape[0], p.shape[1] // Q4_0_P_BYTES
    b = p.reshape(groups, nb, Q4_0_P_BYTES)
    qs = b[:, :, :64].reshape(groups, nb, 4, 4, 4).astype(np.int64)  # [group, block, chunk i, row r, byte j]
    lo, hi = ((v ^ 8) - 8 for v in (qs & 15, qs >> 4))  # signed nibbles: q_lo - 8, q_hi - 8
    x = xq.astype(np.int64).reshape(nb, 2, 4, 4)  # [block, half, chunk i, byte j]
    s = (np.einsum("gkirj,kij->grk", lo, x[:, 0]) + np.einsum("gkirj,kij->grk", hi, x[:, 1]))
    d = fp16(b[:, :, 64:].reshape(groups, nb, 4, 2)).transpose(0, 2, 1)  # [group, row, block]
    return q4_0_float_steps(s.reshape(groups * 4, nb), d.reshape(groups * 4, nb), xd)


def test_packed_q4_0_layout_holds_the_files_bytes():
    # Any host: repack.py's layout, byte for byte, from the file's blocks (18 bytes: fp16 d,
    # 16 bytes of nibbles), and back (unpack_q4_0x4_np: the tests' inverse).
    rows, cols = 12, 32 * 7
    for wname, w in edge_weights(Q4_0, rows, cols).items():
        p = np.full(packed_shape(*w.shape, Q4_0), 0x5A, np.uint8)
        pack_q4_0x4(w, p)
        assert p.shape == (3, 7 * 72) and p.nbytes == w.nbytes
        blocks = w.reshape(rows, 7, 18)
        for gi, k, r in ((0, 0, 0), (2, 6, 3), (1, 3, 2)):
            o = k * 72
            row = blocks[4 * gi + r, k]
            assert bytes(p[gi, o + 64 + 2 * r:o + 66 + 2 * r]) == bytes(row[:2]), wname
            for i in range(4):
                assert bytes(p[gi, o + 16 * i + 4 * r:o + 16 * i + 4 * r + 4]) == bytes(row[2 + 4 * i:6 + 4 * i] ^ 0x88)
        np.testing.assert_array_equal(unpack_q4_0x4_np(p), w, err_msg=wname)


def test_packed_q4_0_4x8_layout_holds_the_files_bytes():
    # Any host: the i8mm layout (8-byte chunks: vector m = 2h + q holds bytes 8h.. of rows 2q,
    # 2q + 1, XOR 0x88, then the 4 scales), byte for byte, and back; 7 blocks, 3 groups.
    rows, cols = 12, 32 * 7
    for wname, w in edge_weights(Q4_0, rows, cols).items():
        p = np.full(packed_shape(*w.shape, Q4_0), 0x5A, np.uint8)
        pack_q4_0_4x8(w, p)
        blocks = w.reshape(rows, 7, 18)
        for gi in range(3):
            for k in (0, 3, 6):
                o = k * 72
                for r in range(4):
                    row = blocks[4 * gi + r, k]
                    assert bytes(p[gi, o + 64 + 2 * r:o + 66 + 2 * r]) == bytes(row[:2]), wname
                    for h in range(2):
                        at = o + 16 * (2 * h + r // 2) + 8 * (r % 2)
                        assert bytes(p[gi, at:at + 8]) == bytes(row[2 + 8 * h:10 + 8 * h] ^ 0x88), wname
        np.testing.assert_array_equal(unpack_q4_0_4x8_np(p), w, err_msg=wname)
        if wname == "random":
            assert not np.array_equal(p, packed_q4_0(w))  # not the 4x4 layout


def test_prompt_positions_pair_in_8_byte_chunks():
    # Any host: pair_positions_q8_0 against its NumPy twin and against the layout written out
    # (xi[p, 64k + 16c + 8j + e] = xq[2p + j, 32k + 8c + e], xdi[p, 4k + 2j + i] = xd[2p + j, k]),
    # an odd position count (the last one has no pair) and 5 blocks.
    rng = np.random.default_rng(4)
    for n in (7, 2, 1):
        xq = rng.integers(-128, 128, (n, 160)).astype(np.int8)
        xd = rng.uniform(0.001, 0.05, (n, 5)).astype(np.float32)
        xi, xdi = pair_positions_q8_0(xq, xd)
        want_i, want_d = pair_positions_np(xq, xd)
        assert xi.shape == (n // 2, 320) and xdi.shape == (n // 2, 20)
        np.testing.assert_array_equal(xi, want_i)
        np.testing.assert_array_equal(xdi, want_d)
        for p, k, c, j, e in ((0, 0, 0, 0, 0), (n // 2 - 1, 4, 3, 1, 7), (0, 2, 1, 1, 3)):
            if p >= 0 and n >= 2:
                assert xi[p, 64 * k + 16 * c + 8 * j + e] == xq[2 * p + j, 32 * k + 8 * c + e]
                assert xdi[p, 4 * k + 2 * j] == xdi[p, 4 * k + 2 * j + 1] == xd[2 * p + j, k]
        # decode's twin chunks: a position paired with itself
        xt = np.full(320, 99, np.int8)
        twin_chunks_q8_0(xq[n - 1], xt)
        np.testing.assert_array_equal(xt, pair_positions_np(xq[[n - 1, n - 1]], xd[[n - 1, n - 1]])[0][0])


def test_packed_q4_k_8x8_layout_holds_the_files_bytes():
    # Any host: the Q4_K i8mm layout (repack.pack_q4_k_8x8: vector (q, c, e) at 256q + 64c + 16e
    # holds bytes 16 + 32c + 8e.. of rows 2q, 2q + 1; scale steps s_j - s_(j+1) as int8, the
    # mins row by row, then d and dmin), byte for byte from the file's blocks, and back
    # (unpack_q4_k_8x8_np re-encodes the 6-bit scales); 2 groups, 3 super-blocks.
    rows, cols = 16, 256 * 3
    for wname, w in edge_weights(Q4_K, rows, cols).items():
        p = packed_q4_k8(w, chunk=8)
        assert p.shape == packed_shape(*w.shape) == (2, 3 * P_BYTES)
        blocks = w.reshape(rows, 3, 144)
        _, sc, mn, _, _ = int_quants(w, Q4_K)  # [rows, block, sub-block]
        for gi in range(2):
            for k in range(3):
                o = k * P_BYTES
                for r in range(8):
                    row = blocks[8 * gi + r, k]
                    assert bytes(p[gi, o + 1152 + 2 * r:o + 1154 + 2 * r]) == bytes(row[0:2]), wname
                    assert bytes(p[gi, o + 1168 + 2 * r:o + 1170 + 2 * r]) == bytes(row[2:4]), wname
                    for c in range(4):
                        for e in range(4):
                            at = o + 256 * (r // 2) + 64 * c + 16 * e + 8 * (r % 2)
                            assert bytes(p[gi, at:at + 8]) == bytes(row[16 + 32 * c + 8 * e:24 + 32 * c + 8 * e])
                    steps = p[gi, o + 1024 + r:o + 1088:8].view(np.int8).astype(np.int64)
                    np.testing.assert_array_equal(np.cumsum(steps[::-1])[::-1], sc[8 * gi + r, k], err_msg=wname)
                    np.testing.assert_array_equal(p[gi, o + 1088 + 8 * r:o + 1096 + 8 * r], mn[8 * gi + r, k])
        np.testing.assert_array_equal(unpack_q4_k_8x8_np(p), w, err_msg=wname)
        if wname == "random":
            assert not np.array_equal(p, packed_q4_k8(w))  # not the 4-byte-chunk layout


def sums32(bsum):  # Q8_K's sums per 16 -> per 32, int16[..., cols/32]
    return bsum.reshape(*bsum.shape[:-1], -1, 2).astype(np.int32).sum(axis=-1).astype(np.int16)


def test_q8_k_prompt_positions_pair_for_smmla():
    # Any host: pair_positions_q8_k against its NumPy twin and against the layout written out
    # (the quants as Q8_0's pairs; xdi[p, 4k + 2j + i] = xd[2p + j, k]; bsi[p, 32k + 16h + 8j + s]
    # the hi (h = 0) and lo halves of x's sum over sub-block s, 64 hi + lo exactly), odd
    # position counts, sums at their extremes; decode's twin sums: a position paired with itself.
    rng = np.random.default_rng(14)
    for n in (7, 2, 1):
        xq = rng.integers(-128, 128, (n, 512)).astype(np.int8)
        xq[0, :64] = -128  # sums of -4096 (hi -64, lo 0)
        xq[-1, 64:96] = 127
        xd = rng.uniform(0.001, 0.05, (n, 2)).astype(np.float32)
        bs32 = sums32(xq.reshape(n, -1, 16).astype(np.int16).sum(axis=2, dtype=np.int16))
        xi, xdi, bsi = pair_positions_q8_k(xq, xd, bs32)
        assert xi.shape == (n // 2, 1024) and xdi.shape == (n // 2, 8) and bsi.shape == (n // 2, 64)
        for got, want in zip((xi, xdi, bsi), pair_positions_q8_k_np(xq, xd, bs32)):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(xi, pair_positions_np(xq, np.zeros((n, 16), np.float32))[0])
        for p in range(n // 2):
            for j in range(2):
                for k in range(2):
                    assert xdi[p, 4 * k + 2 * j] == xdi[p, 4 * k + 2 * j + 1] == xd[2 * p + j, k]
                    hi = bsi[p, 32 * k + 8 * j:32 * k + 8 * j + 8].astype(np.int32)
                    lo = bsi[p, 32 * k + 16 + 8 * j:32 * k + 24 + 8 * j].astype(np.int32)
                    assert (lo >= 0).all() and (lo < 64).all()
                    np.testing.assert_array_equal(64 * hi + lo, bs32[2 * p + j, 8 * k:8 * k + 8])
        bt = np.full(64, 99, np.int8)
        twin_sums_q8_k(bs32[n - 1], bt)
        np.testing.assert_array_equal(bt, pair_positions_q8_k_np(xq[[n - 1] * 2], xd[[n - 1] * 2],
                                                                  bs32[[n - 1] * 2])[2][0])


if ARCH == "aarch64":
    from lfm2q.kernels.isa import arm, neon

    @njit(error_model="numpy", fastmath=False)  # as dispatch calls them: see neon.py
    def _neon(w, qtype, xq, xd, bsum, out):
        for r in range(w.shape[0]):
            if qtype == Q4_K:
                out[r] = neon.q4_k_row(w[r], xq, xd, bsum)
            elif qtype == Q5_K:
                out[r] = neon.q5_k_row(w[r], xq, xd, bsum)
            elif qtype == Q6_K:
                out[r] = neon.q6_k_row(w[r], xq, xd, bsum)
            elif qtype == Q8_0:
                out[r] = neon.q8_0_row(w[r], xq, xd)
            else:
                out[r] = neon.q4_0_row(w[r], xq, xd)

    @njit(error_model="numpy", fastmath=False)
    def _neon_rows(w, qtype, xq, xd, bsum, out):  # out[t, r]: TOKENS positions a call
        for t in range(0, xq.shape[0] - 3, 4):
            for r in range(w.shape[0]):
                if qtype == Q4_K:
                    res = neon.q4_k_rows(w[r], xq, xd, bsum, t)
                elif qtype == Q5_K:
                    res = neon.q5_k_rows(w[r], xq, xd, bsum, t)
                elif qtype == Q6_K:
                    res = neon.q6_k_rows(w[r], xq, xd, bsum, t)
                elif qtype == Q8_0:
                    res = neon.q8_0_rows(w[r], xq, xd, t)
                else:
                    res = neon.q4_0_rows(w[r], xq, xd, t)
                for i in range(4):
                    out[t + i, r] = res[i]

    @njit(error_model="numpy", fastmath=True)
    def _portable(w, qtype, xq, xd, bsum, out):
        for r in range(w.shape[0]):
            if qtype == Q4_K:
                out[r] = intdot.idot_q4_k(w, r, xq, xd, bsum)
            elif qtype == Q5_K:
                out[r] = intdot.idot_q5_k(w, r, xq, xd, bsum)
            elif qtype == Q6_K:
                out[r] = intdot.idot_q6_k(w, r, xq, xd, bsum)
            elif qtype == Q8_0:
                out[r] = intdot.idot_q8_0(w, r, xq, xd)
            else:
                out[r] = intdot.idot_q4_0(w, r, xq, xd)

    @njit(error_model="numpy", fastmath=False)
    def _neon_packed(p, xq, xd, out):
        for gi in range(p.shape[0]):
            neon.q4_0_packed(p, gi, xq, xd, out)

    @njit(error_model="numpy", fastmath=False)
    def _neon_packed_rows(p, xq, xd, out):  # out[t, r]: TOKENS positions a call
        for t in range(0, xq.shape[0] - 3, 4):
            for gi in range(p.shape[0]):
                neon.q4_0_packed_rows(p, gi, xq, xd, t, out)

    if neon.HAVE_I8MM:  # (smmla and its kernels compile only where the CPU has it)
        @njit(error_model="numpy", fastmath=False)
        def _neon_4x8(p, xq, xd, out):
            xt = np.empty(2 * xq.shape[0], np.int8)
            twin_chunks_q8_0(xq, xt)
            for gi in range(p.shape[0]):
                neon.q4_0_4x8_packed(p, gi, xt, xd, out)

        @njit(error_model="numpy", fastmath=False)
        def _neon_4x8_mmla(p, xi, xdi, out):  # out[t, r]: TOKENS positions a call
            for t in range(0, 2 * xi.shape[0] - 3, 4):
                for gi in range(p.shape[0]):
                    neon.q4_0_4x8_mmla_rows(p, gi, xi, xdi, t, out)

        @njit(error_model="numpy", fastmath=False)
        def _neon_8x8(p, xq, xd, bs32, out):
            xt, bt = np.empty(2 * xq.shape[0], np.int8), np.empty(xq.shape[0] // 8, np.int8)
            twin_chunks_q8_0(xq, xt)
            twin_sums_q8_k(bs32, bt)
            for gi in range(p.shape[0]):
                neon.q4_k_8x8_packed(p, gi, xt, xd, bt, out)

        @njit(error_model="numpy", fastmath=False)
        def _neon_8x8_mmla(p, xi, xdi, bsi, wide, out):  # out[t, r]: 8 (wide) or 4 positions a call
            step = 8 if wide else 4
            for t in range(0, 2 * xi.shape[0] - step + 1, step):
                for gi in range(p.shape[0]):
                    if wide:
                        neon.q4_k_8x8_mmla_rows8(p, gi, xi, xdi, bsi, t, out)
                    else:
                        neon.q4_k_8x8_mmla_rows(p, gi, xi, xdi, bsi, t, out)


def run(impl, w, qtype, xq, xd, bsum):
    out = np.full(w.shape[0], np.nan, np.float32)
    impl(w, qtype, xq, xd, bsum, out)
    return out


def per(qtype):
    return 32 if qtype in (Q8_0, Q4_0) else 256


@on_arm
@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_row_kernels_give_the_oracles_bits(qtype):
    for cols in (256, 1280):  # 1 and 5 super-blocks, 8 and 40 blocks of 32
        for wname, w in edge_weights(qtype, 19, cols).items():
            for xname, (xq, xd, bsum) in activations(cols, per(qtype), cols).items():
                np.testing.assert_array_equal(run(_neon, w, qtype, xq, xd, bsum), oracle_bits(w, qtype, xq, xd, bsum),
                                              err_msg=f"{TYPES[qtype]} {cols} {wname} x {xname}")


@on_arm
@pytest.mark.parametrize("qtype", (Q4_0, Q8_0), ids=("Q4_0", "Q8_0"))
def test_an_odd_last_block_goes_to_the_first_chain(qtype):
    cols = 32 * 7
    for wname, w in edge_weights(qtype, 5, cols).items():
        for xname, (xq, xd, bsum) in activations(cols, 32, 7).items():
            np.testing.assert_array_equal(run(_neon, w, qtype, xq, xd, bsum), oracle_bits(w, qtype, xq, xd, bsum),
                                          err_msg=f"{wname} x {xname}")


@on_arm
def test_one_block_at_unit_scales_is_the_exact_integer_dot():
    # d = 1, xd = 1, one (super-)block: the output is the int32 sum itself, with no rounding
    # (|sum| < 2^24), against the dequantized weights' integer dot.
    rng = np.random.default_rng(3)
    one = np.array([1.0], np.float16).view(np.uint8)
    for qtype in TYPES:
        p = per(qtype)
        w = weights(qtype, 9, p, seed=4)
        for o in FP16_FIELDS[qtype]:
            w[:, o:o + 2] = one
        xq = rng.integers(-128, 128, p).astype(np.int8)
        bsum = xq.reshape(-1, 16).astype(np.int16).sum(axis=1, dtype=np.int16)
        want = dequantize(w, qtype).astype(np.float64) @ xq.astype(np.float64)
        assert np.all(np.abs(want) < 2 ** 24) and np.all(want == np.round(want))
        got = run(_neon, w, qtype, xq, np.ones(1, np.float32), bsum)
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=TYPES[qtype])


@on_arm
@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_prefill_form_gives_the_row_forms_bits(qtype):
    cols, n = 512, 12
    rng = np.random.default_rng(11)
    xq = rng.integers(-128, 128, (n, cols)).astype(np.int8)
    xd = rng.uniform(0.001, 0.05, (n, cols // per(qtype))).astype(np.float32)
    bsum = xq.reshape(n, -1, 16).astype(np.int16).sum(axis=2, dtype=np.int16)
    for wname, w in edge_weights(qtype, 7, cols).items():
        out = np.full((n, 7), np.nan, np.float32)
        _neon_rows(w, qtype, xq, xd, bsum, out)
        want = np.stack([run(_neon, w, qtype, xq[t], xd[t], bsum[t]) for t in range(n)])
        np.testing.assert_array_equal(out, want, err_msg=wname)


def oracle(w, qtype, x):  # -> (products summed in float64, the sum of their magnitudes)
    wf = dequantize(w, qtype).astype(np.float64)
    xr = activations_np(x, qtype).astype(np.float64)
    return wf @ xr, np.abs(wf) @ np.abs(xr)


def quantized(x, qtype):
    from lfm2q.kernels.actquant import quantize_q8_0, quantize_q8_k
    n = x.shape[0]
    xq, bsum = np.empty(n, np.int8), np.empty(n // 16, np.int16)
    xd = np.empty(n // per(qtype), np.float32)
    if qtype in (Q8_0, Q4_0):
        quantize_q8_0(x, xq, xd)
    else:
        quantize_q8_k(x, xq, xd, bsum)
    return xq, xd, bsum


@on_arm
@pytest.mark.parametrize("qtype", (Q4_0, Q4_K, Q5_K, Q6_K, Q8_0), ids=("Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"))
def test_dispatch_decodes_and_prefills_with_the_neon_kernels(qtype):
    # matvec and matmul (integer prefill: TOKENS positions a call, row pairs, Q8_0 quads, a
    # tail of single positions) give the NEON row kernel's bits; the float64 oracle and the
    # portable kernels agree with them within float rounding. 29 rows: never packed.
    assert not dispatch.packable(qtype, 29)
    assert dispatch.simd is arm and dispatch.SIMD_PREFILL and arm.q4_k_row is neon.q4_k_row
    cols, rows = 768, 29
    for wname, w in edge_weights(qtype, rows, cols).items():
        xs = np.random.default_rng(5).standard_normal((dispatch.TOKEN_BLOCK + 11, cols)).astype(np.float32)
        xs[-1] = np.where(np.arange(cols) % 3, 1.0, -1.0)  # activations at +-127
        want = np.stack([run(_neon, w, qtype, *quantized(x, qtype)) for x in xs])
        got = np.full(rows, np.nan, np.float32)
        dispatch.matvec(w, qtype, xs[0], got)
        np.testing.assert_array_equal(got, want[0], err_msg=f"decode {wname}")
        out = np.full(want.shape, np.nan, np.float32)
        dispatch.matmul(w, qtype, xs, out)
        np.testing.assert_array_equal(out, want, err_msg=f"prefill {wname}")
        for x, a in zip(xs[:3], want):
            ref, scale = oracle(w, qtype, x)
            assert (np.abs(a - ref) / np.maximum(scale, 1e-30)).max() <= 1e-6, wname
            b = run(_portable, w, qtype, *quantized(x, qtype))
            assert (np.abs(a - b) / np.maximum(scale, 1e-30)).max() <= 1e-6, wname


@on_arm
def test_q4_0_against_the_float64_oracle():
    cols = 1024
    for wname, w in edge_weights(Q4_0, 13, cols).items():
        for x in (np.random.default_rng(2).standard_normal(cols).astype(np.float32), np.ones(cols, np.float32)):
            xq, xd, bsum = quantized(x, Q4_0)
            wf = dequantize(w, Q4_0).astype(np.float64)
            xr = xq.astype(np.float64) * np.repeat(xd, 32)
            got = run(_neon, w, Q4_0, xq, xd, bsum)
            assert (np.abs(got - wf @ xr) / np.maximum(np.abs(wf) @ np.abs(xr), 1e-30)).max() <= 1e-6, wname


@on_arm
def test_nan_activations_reach_the_output():
    for qtype in TYPES:
        w = weights(qtype, 3, 512, seed=1)
        x = np.ones(512, np.float32)
        x[300] = np.nan
        assert np.isnan(run(_neon, w, qtype, *quantized(x, qtype))).all(), TYPES[qtype]


@on_arm
def test_the_kernels_follow_the_cpus_dotprod_and_i8mm():
    from lfm2q.cpu import target
    assert neon.HAVE_DOTPROD == ("dotprod" in target()[1])
    assert ("dotprod" in arm.NAME) == neon.HAVE_DOTPROD
    assert neon.HAVE_I8MM == ("i8mm" in target()[1] and neon.HAVE_DOTPROD)
    assert ("i8mm" in arm.NAME) == neon.HAVE_I8MM
    # one Q4_0 layout: 8-byte chunks with i8mm, else 4-byte ones with dotprod
    assert (arm.PACKS_Q4_0, arm.PACKS_Q4_0_4X8) == (neon.HAVE_DOTPROD and not neon.HAVE_I8MM, neon.HAVE_I8MM)
    assert (arm.q4_0_4x8_mmla_rows is neon.q4_0_4x8_mmla_rows) == neon.HAVE_I8MM
    assert ("smmla" in dispatch.kernel_name(Q4_0)) == neon.HAVE_I8MM
    # and one Q4_K layout: 8-byte chunks with i8mm, else 4-byte ones with dotprod
    assert (arm.PACKS_Q4_K, arm.PACKS_Q4_K_8X8) == (neon.HAVE_DOTPROD and not neon.HAVE_I8MM, neon.HAVE_I8MM)
    assert (arm.q4_k_8x8_mmla_rows8 is neon.q4_k_8x8_mmla_rows8) == neon.HAVE_I8MM
    assert (arm.q4_k_packed is neon.q4_k_packed) == (neon.HAVE_DOTPROD and not neon.HAVE_I8MM)
    assert ("smmla" in dispatch.kernel_name(Q4_K)) == neon.HAVE_I8MM


@on_arm
@pytest.mark.skipif(ARCH == "aarch64" and not neon.HAVE_DOTPROD, reason="without dotprod Q4_K stays unpacked")
def test_packed_q4_k_matrices_give_the_row_kernels_bits():
    # Decode and prefill over Q4_K rows packed 8 at a time, in the layout this CPU's backend
    # packs (lane-indexed sdot; 8-byte chunks with i8mm: smmla prompts), against the row
    # kernel: 3 groups (a pair and an odd one: the dotprod prompt's group pairs), calls of 4
    # (8 with i8mm) positions and a tail; 128 groups on the parallel path.
    code = dispatch.packed_code(Q4_K)
    assert code == Q4_K | (dispatch.PACKED8X8 if neon.HAVE_I8MM else dispatch.PACKED8)
    assert dispatch.packable(Q4_K, 24) and not dispatch.packable(Q4_K, 20)
    assert not dispatch.packable(Q4_K | dispatch.EXACT, 24)
    assert "8-row packed" in dispatch.kernel_name(Q4_K)
    for rows in (24, 1024):
        assert (rows * 2 * 144 >= dispatch.PARALLEL_MIN_BYTES) == (rows == 1024)
        for wname, w in edge_weights(Q4_K, rows, 512).items():
            p = dispatch.pack(w, code)
            np.testing.assert_array_equal(p, packed_q4_k8(w, chunk=8 if neon.HAVE_I8MM else 4))
            _check_packed(p, code, w, Q4_K, wname)


def _check_packed(p, code, w, qtype, wname):
    """The packed copy p of w, through matvec and matmul (TOKENS-position calls and a tail),
    gives the row kernel's bits."""
    per, nbytes = block_size(qtype)
    rows, cols = w.shape[0], w.shape[1] // nbytes * per
    n = dispatch.TOKENS * 2 + 3
    xs = np.random.default_rng(8).standard_normal((n, cols)).astype(np.float32)
    xs[-1] = np.where(np.arange(cols) % 3, 1.0, -1.0)
    want = np.stack([run(_neon, w, qtype, *quantized(x, qtype)) for x in xs])
    got = np.full(rows, np.nan, np.float32)
    dispatch.matvec(p, code, xs[0], got)
    np.testing.assert_array_equal(got, want[0], err_msg=f"decode {wname}")
    out = np.full((n, rows), np.nan, np.float32)
    dispatch.matmul(p, code, xs, out)
    np.testing.assert_array_equal(out, want, err_msg=f"prefill {wname}")


needs_dotprod = pytest.mark.skipif(ARCH == "aarch64" and not neon.HAVE_DOTPROD,
                                   reason="without dotprod Q4_0 stays unpacked")


def packed_q4_0(w):
    p = np.empty(packed_shape(*w.shape, Q4_0), np.uint8)
    pack_q4_0x4(w, p)
    return p


@on_arm
@needs_dotprod
def test_packed_q4_0_kernel_gives_the_oracles_and_the_row_kernels_bits():
    # 3 and 5 groups; 8, 7 (an odd last block: chain 0) and 40 blocks; extreme bytes and
    # activations. Decode and the 4-position form, each against the oracle on the packed bytes
    # and the row kernel on the file's rows.
    assert arm.PACKS_Q4_0 == (not neon.HAVE_I8MM)  # (with i8mm the 4x8 layout is the one packed)
    for rows, cols in ((12, 256), (20, 224), (12, 1280)):
        for wname, w in edge_weights(Q4_0, rows, cols).items():
            p = packed_q4_0(w)
            for xname, (xq, xd, bsum) in activations(cols, 32, cols).items():
                err = f"{rows}x{cols} {wname} x {xname}"
                got = np.full(rows, np.nan, np.float32)
                _neon_packed(p, xq, xd, got)
                np.testing.assert_array_equal(got, oracle_packed_q4_0_bits(p, xq, xd), err_msg=err)
                np.testing.assert_array_equal(got, run(_neon, w, Q4_0, xq, xd, bsum), err_msg=err)
            xs = [a for a in activations(cols, 32, cols + 1).values()]
            xq, xd = np.stack([a[0] for a in xs] * 2), np.stack([a[1] for a in xs] * 2)  # 8 positions
            out = np.full((8, rows), np.nan, np.float32)
            _neon_packed_rows(p, xq, xd, out)
            none = np.zeros(cols // 16, np.int16)  # (Q4_0 has no sums per 16)
            want = np.stack([run(_neon, w, Q4_0, xq[t], xd[t], none) for t in range(8)])
            np.testing.assert_array_equal(out, want, err_msg=f"prefill {rows}x{cols} {wname}")


@on_arm
@needs_dotprod
def test_packed_q4_0_matrices_through_dispatch_give_the_row_kernels_bits():
    # matvec (serial and parallel) and matmul (TOKENS-position calls and a tail of 3) over a
    # packed matrix, in the layout this CPU's backend packs (4x8 with i8mm: smmla prompts);
    # packable: Q4_0 in whole groups of 4 rows only, never with f32 activations.
    assert dispatch.packable(Q4_0, 20) and not dispatch.packable(Q4_0, 18)
    assert not dispatch.packable(Q4_0 | dispatch.EXACT, 20)
    code = dispatch.packed_code(Q4_0)
    assert code == Q4_0 | (dispatch.PACKED4X8 if neon.HAVE_I8MM else dispatch.PACKED4)
    assert "4-row packed" in dispatch.kernel_name(Q4_0)
    for rows, cols in ((20, 224), (1024, 480)):  # 5 groups on one thread; 256 groups, parallel
        assert (rows * cols // 32 * 18 >= dispatch.PARALLEL_MIN_BYTES) == (rows == 1024)
        for wname, w in edge_weights(Q4_0, rows, cols).items():
            p = dispatch.pack(w, code)
            np.testing.assert_array_equal(p, pack_4x8(w) if neon.HAVE_I8MM else packed_q4_0(w))
            _check_packed(p, code, w, Q4_0, wname)


@on_arm
@needs_dotprod
@pytest.mark.slow
def test_a_q4_0_model_gives_the_same_logits_packed_and_unpacked(request, tmp_path, monkeypatch):
    # lfm2q quantize's Q4_0 file: loaded packed (every Q4_0 matrix of whole 4-row groups) and
    # with packing off, the prompt's and decode's logits are the same bits.
    pytest.importorskip("torch", reason="the checkpoint is built with torch (not in the wheels-only arm64 rootfs)")
    tiny_hf_dir = request.getfixturevalue("tiny_hf_dir")
    import lfm2q
    from lfm2q.convert import convert_hf
    from lfm2q.convert.requantize import quantize_gguf
    from lfm2q.gguf_model import Weight

    f32 = convert_hf(tiny_hf_dir, tmp_path / "f32.gguf", "f32")
    path = tmp_path / "q4_0.gguf"
    quantize_gguf(f32, path, "q4_0")
    ids = list(range(3, 3 + dispatch.TOKENS * 3 + 1))

    def run_model():
        m = lfm2q.load(path, n_ctx=64)
        mats = [w for L in m.weights.layers for w in vars(L).values() if isinstance(w, Weight)]
        session = m.session()
        return mats, m.logits(ids), np.stack([session.eval([t]).copy() for t in ids[:3]])

    mats, prompt, decode = run_model()
    layouts = dispatch.PACKED4 | dispatch.PACKED4X8
    assert any(w.kernel & (dispatch.PACKED4X8 if neon.HAVE_I8MM else dispatch.PACKED4) for w in mats)
    monkeypatch.setattr(dispatch, "SIMD_PACKS_Q4_0", False)
    monkeypatch.setattr(dispatch, "SIMD_PACKS_Q4_0_4X8", False)
    mats0, prompt0, decode0 = run_model()
    assert not any(w.kernel & layouts for w in mats0)
    np.testing.assert_array_equal(prompt, prompt0)
    np.testing.assert_array_equal(decode, decode0)
    np.testing.assert_array_equal(decode, prompt[:3])


# --- Q4_0 packed in 8-byte chunks (i8mm: smmla prompts, sdot decode) --------------------------

needs_i8mm = pytest.mark.skipif(ARCH == "aarch64" and not neon.HAVE_I8MM,
                                reason="without i8mm Q4_0 is not packed in 8-byte chunks")


def pack_4x8(w):
    p = np.empty(packed_shape(*w.shape, Q4_0), np.uint8)
    pack_q4_0_4x8(w, p)
    return p


def oracle_packed_q4_0_4x8_bits(p, xq, xd):
    """f32[rows]: the 4x8 kernels' result from the packed bytes alone (repack.py's layout read
    independently of pack_q4_0_4x8): vector 2h + q holds bytes 8h.. of rows 2q, 2q + 1."""
    groups, nb = p.shape[0], p.shape[1] // Q4_0_P_BYTES
    b = p.reshape(groups, nb, Q4_0_P_BYTES)
    qs = b[:, :, :64].reshape(groups, nb, 2, 4, 8).astype(np.int64)  # [group, block, h, row 2q + i, byte e]
    lo, hi = ((v ^ 8) - 8 for v in (qs & 15, qs >> 4))  # signed nibbles: q_lo - 8, q_hi - 8
    x = xq.astype(np.int64).reshape(nb, 2, 2, 8)  # [block, low / high, h, e]
    s = np.einsum("gkhre,khe->grk", lo, x[:, 0]) + np.einsum("gkhre,khe->grk", hi, x[:, 1])
    d = fp16(b[:, :, 64:].reshape(groups, nb, 4, 2)).transpose(0, 2, 1)
    return q4_0_float_steps(s.reshape(groups * 4, nb), d.reshape(groups * 4, nb), xd)


@on_arm
@needs_i8mm
def test_q4_0_4x8_kernels_give_the_oracles_and_the_row_kernels_bits():
    # 3 and 5 groups; 8, 7 (an odd last block: chain 0) and 40 blocks; extreme bytes and
    # activations. Decode (sdot) against the oracle on the packed bytes and the row kernel on
    # the file's rows; the smmla form on 8 positions (4 pairs) against the row kernel.
    assert arm.PACKS_Q4_0_4X8 and arm.q4_0_4x8_packed is neon.q4_0_4x8_packed
    for rows, cols in ((12, 256), (20, 224), (12, 1280)):
        for wname, w in edge_weights(Q4_0, rows, cols).items():
            p = pack_4x8(w)
            for xname, (xq, xd, bsum) in activations(cols, 32, cols).items():
                err = f"{rows}x{cols} {wname} x {xname}"
                got = np.full(rows, np.nan, np.float32)
                _neon_4x8(p, xq, xd, got)
                np.testing.assert_array_equal(got, oracle_packed_q4_0_4x8_bits(p, xq, xd), err_msg=err)
                np.testing.assert_array_equal(got, run(_neon, w, Q4_0, xq, xd, bsum), err_msg=err)
            xs = [a for a in activations(cols, 32, cols + 1).values()]
            xq, xd = np.stack([a[0] for a in xs] * 2), np.stack([a[1] for a in xs] * 2)  # 8 positions
            xq[5] = xq[2][::-1]  # a pair of different rows in every pair
            out = np.full((8, rows), np.nan, np.float32)
            _neon_4x8_mmla(p, *pair_positions_q8_0(xq, xd), out)
            want = np.stack([oracle_packed_q4_0_4x8_bits(p, xq[t], xd[t]) for t in range(8)])
            np.testing.assert_array_equal(out, want, err_msg=f"prefill {rows}x{cols} {wname}")
            none = np.zeros(cols // 16, np.int16)  # (Q4_0 has no sums per 16)
            rows_bits = np.stack([run(_neon, w, Q4_0, xq[t], xd[t], none) for t in range(8)])
            np.testing.assert_array_equal(out, rows_bits, err_msg=f"prefill {rows}x{cols} {wname}")


@on_arm
@needs_i8mm
def test_q4_0_4x8_prefill_through_dispatch_for_any_position_count():
    # matmul over a 4x8-packed matrix for 1-6 and 9 positions (no smmla call, one, one and a
    # tail of 1-2 decode-kernel positions, two and a tail): the row kernel's bits; rows not a
    # multiple of 4 stay unpacked (and give the same bits through the row kernels).
    code = dispatch.packed_code(Q4_0)
    cols = 32 * 5
    w = weights(Q4_0, 24, cols, seed=6)
    p = dispatch.pack(w, code)
    for n in (1, 2, 3, 4, 5, 6, 9):
        xs = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
        want = np.stack([run(_neon, w, Q4_0, *quantized(x, Q4_0)) for x in xs])
        out = np.full((n, 24), np.nan, np.float32)
        dispatch.matmul(p, code, xs, out)
        np.testing.assert_array_equal(out, want, err_msg=f"{n} positions")
    w18 = w[:18]
    assert not dispatch.packable(Q4_0, 18)
    out = np.full((9, 18), np.nan, np.float32)
    dispatch.matmul(w18, Q4_0, xs, out)
    np.testing.assert_array_equal(out, want[:, :18])


# --- Q4_K packed in 8-byte chunks (i8mm: smmla prompts, sdot decode) --------------------------

def oracle_packed_q4_k_8x8_bits(p, xq, xd, bs32):
    """f32[rows]: the Q4_K 8x8 kernels' result from the packed bytes alone (repack.py's layout
    read independently of pack_q4_k_8x8): the exact sums, then neon.py's K-quant float steps."""
    groups, nb = p.shape[0], p.shape[1] // P_BYTES
    b = p.reshape(groups, nb, P_BYTES)
    qs = b[:, :, :1024].reshape(groups, nb, 4, 4, 4, 2, 8).astype(np.int64)  # [g, k, q, c, e, row 2q + i, byte]
    q = np.stack([qs & 15, qs >> 4], axis=4)  # [g, k, q, c, hi, e, i, byte]: sub-block 2c + hi
    q = q.transpose(0, 2, 6, 1, 3, 4, 5, 7).reshape(groups * 8, nb, 256)  # [row, k, 64c + 32hi + 8e + byte]
    steps = b[:, :, 1024:1088].view(np.int8).astype(np.int64).reshape(groups, nb, 8, 8)  # [g, k, j, r]
    sc = np.cumsum(steps[:, :, ::-1], axis=2)[:, :, ::-1].transpose(0, 3, 1, 2).reshape(groups * 8, nb, 8)
    mn = b[:, :, 1088:1152].astype(np.int64).reshape(groups, nb, 8, 8).transpose(0, 2, 1, 3).reshape(groups * 8, nb, 8)
    d, dmin = (fp16(b[:, :, o:o + 16].reshape(groups, nb, 8, 2)).transpose(0, 2, 1).reshape(groups * 8, nb)
               for o in (1152, 1168))
    isum = (np.repeat(sc, 32, axis=-1) * q * xq.astype(np.int64).reshape(nb, 256)).sum(axis=-1)
    msum = (mn * bs32.astype(np.int64).reshape(nb, 8)).sum(axis=-1)
    return k_float_steps(isum, msum, d, dmin, xd)


@on_arm
@needs_i8mm
def test_q4_k_8x8_kernels_give_the_oracles_and_the_row_kernels_bits():
    # 1, 3 and 2 groups of 8 rows; 1, 2 and 5 super-blocks; extreme bytes and activations.
    # Decode (sdot) against the oracle on the packed bytes and the row kernel on the file's
    # rows; the smmla forms (8 and 4 positions a call) on 8 positions against both.
    assert arm.PACKS_Q4_K_8X8 and arm.q4_k_8x8_packed is neon.q4_k_8x8_packed
    for rows, cols in ((8, 256), (24, 512), (16, 1280)):
        for wname, w in edge_weights(Q4_K, rows, cols).items():
            p = packed_q4_k8(w, chunk=8)
            for xname, (xq, xd, bsum) in activations(cols, 256, cols).items():
                err = f"{rows}x{cols} {wname} x {xname}"
                got = np.full(rows, np.nan, np.float32)
                _neon_8x8(p, xq, xd, sums32(bsum), got)
                np.testing.assert_array_equal(got, oracle_packed_q4_k_8x8_bits(p, xq, xd, sums32(bsum)), err_msg=err)
                np.testing.assert_array_equal(got, run(_neon, w, Q4_K, xq, xd, bsum), err_msg=err)
            xs = list(activations(cols, 256, cols + 1).values())
            xq, xd, bsum = (np.stack([a[i] for a in xs] * 2) for i in range(3))  # 8 positions
            xq[5], bsum[5] = xq[2][::-1], bsum[2][::-1]  # a pair of different rows in every pair
            want = np.stack([oracle_packed_q4_k_8x8_bits(p, xq[t], xd[t], sums32(bsum[t])) for t in range(8)])
            rows_bits = np.stack([run(_neon, w, Q4_K, xq[t], xd[t], bsum[t]) for t in range(8)])
            np.testing.assert_array_equal(want, rows_bits, err_msg=f"{rows}x{cols} {wname}")
            for wide in (True, False):
                out = np.full((8, rows), np.nan, np.float32)
                _neon_8x8_mmla(p, *pair_positions_q8_k(xq, xd, sums32(bsum)), wide, out)
                np.testing.assert_array_equal(out, want, err_msg=f"prefill {rows}x{cols} {wname} wide={wide}")


@on_arm
@needs_i8mm
def test_q4_k_8x8_prefill_through_dispatch_for_any_position_count():
    # matmul over a Q4_K matrix packed for smmla for 1-9, 12, 13 and 19 positions (no smmla
    # call, a 4-position call, an 8, an 8 and a 4, tails of 1-3 decode-kernel positions): the
    # row kernel's bits; rows not a multiple of 8 stay unpacked (the same bits through the rows).
    code = dispatch.packed_code(Q4_K)
    cols = 256 * 2
    w = weights(Q4_K, 24, cols, seed=7)
    p = dispatch.pack(w, code)
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 19):
        xs = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
        want = np.stack([run(_neon, w, Q4_K, *quantized(x, Q4_K)) for x in xs])
        out = np.full((n, 24), np.nan, np.float32)
        dispatch.matmul(p, code, xs, out)
        np.testing.assert_array_equal(out, want, err_msg=f"{n} positions")
    assert not dispatch.packable(Q4_K, 20)
    out = np.full((19, 20), np.nan, np.float32)
    dispatch.matmul(w[:20], Q4_K, xs, out)
    np.testing.assert_array_equal(out, want[:, :20])
