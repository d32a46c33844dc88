"""Mutations of small, valid LFM2 GGUF files for the loader fuzzer.

A seed file is parsed once into a `Doc` (metadata, tensor infos, the data block) and written
back with `serialize`, which also records a `Slot` for every count, length, type, shape and
offset field of the header. `mutate(seed, rng)` then applies one to three of:

    byte level      bit flips, interesting bytes, truncation, inserted / deleted / copied
                    ranges (positions biased to the header, where the parser works)
    slot level      a count, length, value type, rank, dimension, ggml type or tensor offset
                    overwritten with a boundary value (0, 1, 2**31, 2**63, 2**64-1, the file
                    size, off-by-one of the true value...) while the rest stays well formed
    semantic        the header rebuilt with a metadata value of the wrong type or range
                    (head_count_kv as a string, bos_token_id = 10**9, a vocabulary one token
                    short, block_count 2**32-1, alignment 3, NaN epsilon...) or a tensor with
                    negative / swapped / zero dims, another type, an unaligned offset
    random          random bytes, with or without the GGUF magic and a plausible header

Everything is deterministic in the `random.Random` it is given, so a case is named by
(seed file, case number) and can be replayed.
"""
from __future__ import annotations

import copy
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import GGUFValueType as VT

from lfm2q.gguf_reader import GGUFReader

_PACK = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I",
         VT.INT32: "<i", VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q",
         VT.FLOAT64: "<d"}
_INT_BITS = {VT.UINT8: (8, False), VT.INT8: (8, True), VT.UINT16: (16, False), VT.INT16: (16, True),
             VT.UINT32: (32, False), VT.INT32: (32, True), VT.UINT64: (64, False), VT.INT64: (64, True)}

U32_EDGES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 16, 31, 32, 33, 39, 40, 255, 256, 65535,
             0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
U64_EDGES = [0, 1, 2, 3, 7, 8, 31, 32, 33, 255, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
             2**62, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1]
BYTE_EDGES = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, 0x20, 0x0A]


@dataclass
class Slot:
    pos: int
    width: int      # 4 or 8 bytes
    kind: str       # version n_tensors n_kv keylen vtype itemtype count strlen ndims ne ggmltype offset


@dataclass
class Doc:
    version: int
    kvs: list       # [key, value type, value, array item type or None]
    tensors: list   # [name, ne (ggml order), ggml type, offset relative to the data block]
    data: bytes     # the tensor data block


@dataclass
class Seed:
    name: str
    raw: bytes
    doc: Doc
    slots: list[Slot]
    header_len: int  # bytes before the data block
    tensor_names: list[str] = field(default_factory=list)


def load_seed(path: Path) -> Seed:
    """Parse a valid GGUF file; its re-serialization must be byte-identical (checked)."""
    r = GGUFReader(path)
    raw = Path(path).read_bytes()
    kvs = [[k, vt, copy.deepcopy(r.fields[k]), item] for k, (vt, item) in r.field_types.items()]
    data_start = min(t.offset for t in r.tensors.values())
    tensors = [[t.name, list(reversed(t.shape)), t.qtype, t.offset - data_start] for t in r.tensors.values()]
    doc = Doc(struct.unpack_from("<I", raw, 4)[0], kvs, tensors, raw[data_start:])
    out, slots, header_len = serialize(doc)
    if out != raw:
        raise ValueError(f"{path}: re-serialization differs from the file; not usable as a seed")
    return Seed(Path(path).name, raw, doc, slots, header_len, [t[0] for t in tensors])


# --- writing ------------------------------------------------------------------------------------

class _Out:
    def __init__(self):
        self.buf = bytearray()
        self.slots: list[Slot] = []

    def num(self, code: str, v, kind: str | None = None) -> None:
        width = struct.calcsize(code)
        if kind:
            self.slots.append(Slot(len(self.buf), width, kind))
        if code in ("<f", "<d", "<?"):
            self.buf += struct.pack(code, v)
        else:  # any Python int fits: wrap to the field's width
            self.buf += (int(v) % (1 << 8 * width)).to_bytes(width, "little")

    def string(self, s, kind: str) -> None:
        b = s if isinstance(s, bytes) else str(s).encode("utf-8", "surrogatepass")
        self.num("<Q", len(b), kind)
        self.buf += b

    def value(self, vt: int, v, item) -> None:
        if vt == VT.STRING:
            self.string(v, "strlen")
        elif vt == VT.ARRAY:
            item = VT.INT32 if item is None else item
            self.num("<I", item, "itemtype")
            self.num("<Q", len(v), "count")
            for x in v:
                inner = (_infer_item(x) if item == VT.ARRAY else None)
                self.value(item, x, inner)
        elif vt in _PACK:
            self.num(_PACK[vt], v)
        else:  # an invalid type code: write 8 arbitrary bytes, the parser must stop here
            self.buf += b"\xAB" * 8


def _infer_item(values) -> int:
    if values and isinstance(values[0], str):
        return VT.STRING
    if values and isinstance(values[0], float):
        return VT.FLOAT32
    return VT.INT32


def serialize(doc: Doc, alignment: int | None = None) -> tuple[bytes, list[Slot], int]:
    out = _Out()
    out.buf += b"GGUF"
    out.num("<I", doc.version, "version")
    out.num("<Q", len(doc.tensors), "n_tensors")
    out.num("<Q", len(doc.kvs), "n_kv")
    for key, vt, value, item in doc.kvs:
        out.string(key, "keylen")
        out.num("<I", vt, "vtype")
        out.value(vt, value, item)
    for name, ne, qtype, off in doc.tensors:
        out.string(name, "namelen")
        out.num("<I", len(ne), "ndims")
        for d in ne:
            out.num("<Q", d, "ne")
        out.num("<I", qtype, "ggmltype")
        out.num("<Q", off, "offset")
    if alignment is None:
        alignment = 32
        for key, vt, value, _ in doc.kvs:
            if key == "general.alignment" and isinstance(value, int) and 0 < value <= 4096:
                alignment = value
    header_len = len(out.buf)
    out.buf += b"\0" * (-header_len % alignment)
    out.buf += doc.data
    return bytes(out.buf), out.slots, header_len


# --- mutations ----------------------------------------------------------------------------------

def _pos(rng: random.Random, seed: Seed, n: int) -> int:
    """A position in a file of n bytes, three times out of four inside the header."""
    if rng.random() < 0.75:
        return rng.randrange(max(1, min(n, seed.header_len)))
    return rng.randrange(max(1, n))


def m_bitflip(rng, seed, data: bytearray) -> str:
    k = rng.choice([1, 1, 2, 4, 8, 32])
    for _ in range(k):
        p = _pos(rng, seed, len(data))
        if p < len(data):
            data[p] ^= 1 << rng.randrange(8)
    return f"bitflip x{k}"


def m_bytes(rng, seed, data: bytearray) -> str:
    p = _pos(rng, seed, len(data))
    n = rng.choice([1, 1, 2, 4, 8])
    for i in range(p, min(p + n, len(data))):
        data[i] = rng.choice(BYTE_EDGES)
    return f"set {n} bytes at {p}"


def m_truncate(rng, seed, data: bytearray) -> str:
    p = _pos(rng, seed, len(data)) if rng.random() < 0.7 else rng.randrange(len(data))
    del data[p:]
    return f"truncate at {p}"


def m_insert(rng, seed, data: bytearray) -> str:
    p = _pos(rng, seed, len(data))
    n = rng.choice([1, 3, 4, 8, 17, 64])
    data[p:p] = bytes(rng.randrange(256) for _ in range(n))
    return f"insert {n} at {p}"


def m_delete(rng, seed, data: bytearray) -> str:
    p = _pos(rng, seed, len(data))
    n = rng.choice([1, 3, 4, 8, 17, 64, 1000])
    del data[p:p + n]
    return f"delete {n} at {p}"


def m_copy(rng, seed, data: bytearray) -> str:
    if len(data) < 2:
        return "copy (too short)"
    src, dst = _pos(rng, seed, len(data)), _pos(rng, seed, len(data))
    n = rng.choice([4, 8, 16, 64])
    data[dst:dst + n] = data[src:src + n]
    return f"copy {n} from {src} to {dst}"


def _slot_value(rng, slot: Slot, old: int, size: int) -> int:
    if slot.width == 4:
        pool = U32_EDGES + [rng.randrange(2**32)]
    else:
        pool = U64_EDGES + [size, size - 1, size + 1, size // 2, rng.randrange(2**64)]
    pool += [old + 1, old - 1, old * 2, old // 2, old + 32, old ^ 0x80]
    return rng.choice(pool) % (1 << 8 * slot.width)


def m_slot(rng, seed, data: bytearray) -> str:
    slots = seed.slots
    kinds = sorted({s.kind for s in slots})
    kind = rng.choice(kinds)  # pick a kind first so rare ones (version, n_kv) get their share
    slot = rng.choice([s for s in slots if s.kind == kind])
    if slot.pos + slot.width > len(data):
        return f"slot {kind} (cut)"
    old = int.from_bytes(data[slot.pos:slot.pos + slot.width], "little")
    if kind in ("vtype", "itemtype") and rng.random() < 0.6:
        new = rng.randrange(14)  # every value type and a few invalid ones
    elif kind == "ggmltype" and rng.random() < 0.6:
        new = rng.randrange(42)
    elif kind == "ndims" and rng.random() < 0.6:
        new = rng.randrange(7)
    else:
        new = _slot_value(rng, slot, old, len(data))
    data[slot.pos:slot.pos + slot.width] = new.to_bytes(slot.width, "little")
    return f"slot {kind}@{slot.pos}: {old} -> {new}"


# --- semantic mutations: rebuild the header with one value changed ------------------------------

def _kv(doc: Doc, key: str):
    for kv in doc.kvs:
        if kv[0] == key:
            return kv
    return None


def _set(doc: Doc, key: str, vt: int, value, item=None) -> None:
    kv = _kv(doc, key)
    if kv is None:
        doc.kvs.append([key, vt, value, item])
    else:
        kv[1:] = [vt, value, item]


_WRONG_VALUES = [  # (value type, value, item type) of every other kind
    (VT.STRING, "2", None), (VT.STRING, "", None), (VT.STRING, "lots", None),
    (VT.FLOAT32, 2.5, None), (VT.FLOAT32, float("nan"), None), (VT.FLOAT32, float("inf"), None),
    (VT.FLOAT64, -1e300, None), (VT.FLOAT32, -0.0, None),
    (VT.BOOL, True, None), (VT.BOOL, False, None),
    (VT.INT32, -1, None), (VT.INT32, -(2**31), None), (VT.INT64, -(2**63), None),
    (VT.UINT32, 0, None), (VT.UINT32, 2**32 - 1, None), (VT.UINT64, 2**64 - 1, None),
    (VT.UINT64, 10**9, None), (VT.UINT32, 10**9, None), (VT.UINT8, 255, None),
    (VT.ARRAY, [], VT.INT32), (VT.ARRAY, [1, 2], VT.INT32), (VT.ARRAY, ["a", "b"], VT.STRING),
    (VT.ARRAY, [[1], [2]], VT.ARRAY), (VT.ARRAY, [1.5] * 6, VT.FLOAT32), (VT.ARRAY, [-1] * 6, VT.INT32),
    (VT.ARRAY, [True] * 6, VT.BOOL),
]

_NUMERIC_KEYS = ["lfm2.block_count", "lfm2.context_length", "lfm2.embedding_length",
                 "lfm2.feed_forward_length", "lfm2.attention.head_count", "lfm2.attention.head_count_kv",
                 "lfm2.attention.layer_norm_rms_epsilon", "lfm2.rope.freq_base", "lfm2.vocab_size",
                 "lfm2.shortconv.l_cache", "lfm2.attention.sliding_window", "general.alignment",
                 "general.file_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                 "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token"]
_STRING_KEYS = ["general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template",
                "general.name"]
_ARRAY_KEYS = ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
               "lfm2.attention.head_count_kv"]


def s_wrong_value(rng, doc: Doc) -> str:
    key = rng.choice(_NUMERIC_KEYS + _STRING_KEYS + _ARRAY_KEYS)
    vt, value, item = rng.choice(_WRONG_VALUES)
    _set(doc, key, vt, copy.deepcopy(value), item)
    return f"{key} = {VT(vt).name} {value!r:.40}"


def s_edge_number(rng, doc: Doc) -> str:
    key = rng.choice(_NUMERIC_KEYS)
    value = rng.choice([0, 1, 2, 3, 5, 7, 64, 65, 100, 10**6, 10**9, 2**31 - 1, 2**32 - 1])
    vt = rng.choice([VT.UINT32, VT.UINT64, VT.INT32])
    if vt == VT.INT32 and rng.random() < 0.5:
        value = -value
    if vt == VT.INT32:
        value = max(-(2**31), min(2**31 - 1, value))
    if vt == VT.UINT32:
        value %= 2**32
    _set(doc, key, vt, value)
    return f"{key} = {VT(vt).name} {value}"


def s_float_key(rng, doc: Doc) -> str:
    key = rng.choice(["lfm2.attention.layer_norm_rms_epsilon", "lfm2.rope.freq_base"])
    value = rng.choice([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-45, 1e38])
    _set(doc, key, VT.FLOAT32, value)
    return f"{key} = {value}"


def s_token_ids(rng, doc: Doc) -> str:
    key = rng.choice(["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                      "tokenizer.ggml.padding_token_id"])
    value = rng.choice([10**9, 2**32 - 1, 512, 511, 320, 319, 65536])
    _set(doc, key, VT.UINT32, value)
    if rng.random() < 0.3:
        _set(doc, key, VT.INT32, -1)
        value = -1
    return f"{key} = {value}"


def s_vocab(rng, doc: Doc) -> str:
    toks = _kv(doc, "tokenizer.ggml.tokens")
    types = _kv(doc, "tokenizer.ggml.token_type")
    merges = _kv(doc, "tokenizer.ggml.merges")
    choice = rng.randrange(10)
    if choice == 0 and toks:
        toks[2] = toks[2][:-1]
        return "vocabulary one token short"
    if choice == 1 and toks:
        toks[2] = toks[2] + ["extra"]
        return "vocabulary one token long"
    if choice == 2 and types:
        types[2] = types[2][: len(types[2]) // 2]
        return "token_type half length"
    if choice == 3 and types:
        types[2] = [rng.choice([-1, 0, 2, 6, 99, 2**31 - 1]) for _ in types[2]]
        return "token_type values out of range"
    if choice == 4 and merges:
        merges[2] = merges[2] + ["nospace", "zzq xxy", " ", ""]
        return "merges with bad entries"
    if choice == 5 and toks:
        i = rng.randrange(len(toks[2]))
        toks[2][i] = rng.choice(["", " ", "\0", "<|im_end|>", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
                                 "a" * 10000])
        return f"token {i} replaced"
    if choice == 6 and toks:
        toks[2] = []
        return "empty vocabulary"
    if choice == 7 and types:
        for i in rng.sample(range(len(types[2])), min(50, len(types[2]))):
            types[2][i] = rng.choice([3, 4, 5])
        return "token types reshuffled"
    if choice == 8 and toks:
        toks[1:] = [VT.ARRAY, list(range(len(toks[2]))), VT.INT32]
        return "tokens as integers"
    if merges:
        merges[2] = [m[::-1] for m in merges[2]]
        return "merges reversed"
    return "vocab (nothing to change)"


def s_drop_or_duplicate_key(rng, doc: Doc) -> str:
    i = rng.randrange(len(doc.kvs))
    if rng.random() < 0.5:
        key = doc.kvs.pop(i)[0]
        return f"drop {key}"
    doc.kvs.insert(rng.randrange(len(doc.kvs) + 1), copy.deepcopy(doc.kvs[i]))
    return f"duplicate {doc.kvs[i][0]}"


def s_tensor(rng, doc: Doc) -> str:
    t = rng.choice(doc.tensors)
    name, ne, qtype, off = t
    choice = rng.randrange(11)
    if choice == 0:
        t[1] = list(reversed(ne))
        return f"{name}: dims swapped"
    if choice == 1:
        i = rng.randrange(len(ne))
        t[1][i] = rng.choice([0, 1, 2**64 - 1, 2**64 - ne[i], 2**63, ne[i] + 1, ne[i] - 1, ne[i] * 2,
                              2**32 + ne[i]])
        return f"{name}: ne[{i}] = {t[1][i]}"
    if choice == 2:
        t[1] = ne + [1] if rng.random() < 0.5 else ne[:-1] or [1]
        return f"{name}: rank {len(t[1])}"
    if choice == 3:
        t[2] = rng.choice([int(q) for q in GGML_QUANT_SIZES] + [99, 2**31])
        return f"{name}: type {t[2]}"
    if choice == 4:
        t[3] = off + rng.choice([1, 4, 16, -32, 32])
        return f"{name}: offset {t[3]}"
    if choice == 5:
        t[3] = rng.choice(doc.tensors)[3]
        return f"{name}: offset of another tensor"
    if choice == 6:
        t[0] = rng.choice(doc.tensors)[0]
        return f"{name}: renamed to a duplicate"
    if choice == 7:
        doc.tensors.remove(t)
        return f"{name}: dropped"
    if choice == 8:
        t[1] = [1] * len(ne)
        return f"{name}: shape all ones"
    if choice == 9:
        t[0] = rng.choice(["", "x" * 70000, "blk.99.ffn_up.weight", "output.weight", name + "\n"])
        return f"{name}: renamed to {t[0][:30]!r}"
    t[1] = [2**62, 4]
    return f"{name}: shape [2**62, 4]"


def s_version(rng, doc: Doc) -> str:
    doc.version = rng.choice([0, 1, 2, 4, 2**31])
    return f"version {doc.version}"


SEMANTIC = [s_wrong_value, s_wrong_value, s_edge_number, s_edge_number, s_float_key, s_token_ids,
            s_vocab, s_vocab, s_drop_or_duplicate_key, s_tensor, s_tensor, s_tensor, s_version]
BYTE = [m_bitflip, m_bitflip, m_bytes, m_truncate, m_insert, m_delete, m_copy]


def m_semantic(rng, seed: Seed) -> tuple[bytearray, str]:
    doc = copy.deepcopy(seed.doc)
    what = []
    for _ in range(rng.choice([1, 1, 1, 2])):
        try:
            what.append(rng.choice(SEMANTIC)(rng, doc))
        except (TypeError, ValueError, IndexError, AttributeError):  # an earlier change made it moot
            what.append("(skipped)")
    try:
        raw, _, _ = serialize(doc, alignment=32)
    except (TypeError, ValueError, OverflowError, struct.error):  # two changes that cannot be written together
        raw = seed.raw
        what.append("(unwritable; seed kept)")
    return bytearray(raw), "; ".join(what)


def m_random(rng, seed: Seed) -> tuple[bytearray, str]:
    n = rng.choice([0, 1, 3, 4, 23, 24, 25, 64, 300, 4096])
    body = bytearray(rng.randrange(256) for _ in range(n))
    kind = rng.randrange(3)
    if kind == 0:
        return body, f"random {n} bytes"
    head = b"GGUF" + struct.pack("<IQQ", rng.choice([2, 3]), rng.randrange(4), rng.randrange(4))
    if kind == 1:
        return bytearray(head) + body, f"GGUF header + random {n} bytes"
    cut = rng.randrange(seed.header_len)
    return bytearray(seed.raw[:cut]) + body, f"seed header[:{cut}] + random {n} bytes"


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    """One mutated file and a description of what was done to it."""
    try:
        return _mutate(seed, rng)
    except Exception as e:  # a mutator bug must not end a campaign: fall back to a bit flip
        data = bytearray(seed.raw)
        return bytes(data), f"(mutator failed: {type(e).__name__}) {m_bitflip(rng, seed, data)}"


def _mutate(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    r = rng.random()
    if r < 0.05:
        data, what = m_random(rng, seed)
        return bytes(data), what
    if r < 0.35:
        data, what = m_semantic(rng, seed)
        steps = [what]
        if rng.random() < 0.2:
            steps.append(rng.choice(BYTE)(rng, seed, data))
        return bytes(data), "; ".join(steps)
    data = bytearray(seed.raw)
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = m_slot if rng.random() < 0.5 else rng.choice(BYTE)
        steps.append(op(rng, seed, data))
    return bytes(data), "; ".join(steps)


def case_rng(run_seed: int, case: int) -> random.Random:
    return random.Random(run_seed * 1_000_003 + case)


__all__ = ["Seed", "Doc", "load_seed", "serialize", "mutate", "case_rng"]
