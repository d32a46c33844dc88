"""A checked, fast reader for GGUF headers; tensor data stays memory-mapped.

Why not `gguf.GGUFReader`: it builds a NumPy view per array element, so opening a file with
LFM2's 65,536-token vocabulary takes seconds, and it trusts the counts and lengths a file
claims. Files come from the internet and numba kernels read the tensors unchecked, so every
count, length, offset and shape is checked here against the file size before anything is
allocated or read. Names and sizes (value types, block sizes, magic) still come from gguf-py.

    file:  magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
           n_kv x (string key, u32 value type, value)
           n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
           padding to `general.alignment` | tensor data (offsets are relative to here)
    string: u64 length | utf-8 bytes        array: u32 item type | u64 count | items
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType
from gguf import GGUFValueType as VT

from .errors import GGUFError

MAX_DIMS = 4                 # ggml's GGML_MAX_DIMS
MAX_KEY_BYTES = 65_535       # a key or tensor name longer than this is corruption, not data
MAX_ARRAY_DEPTH = 2          # arrays of arrays exist in the format; deeper is corruption
# A u8 array becomes a list of Python ints, 8 bytes per one-byte item: without a cap a file could
# make us allocate ~8x its size. LFM2's largest arrays (vocabulary, merges) have ~65k items.
MAX_ARRAY_ITEMS = 1 << 24

_SCALARS = {  # value type -> (struct code, size)
    VT.UINT8: ("<B", 1), VT.INT8: ("<b", 1), VT.UINT16: ("<H", 2), VT.INT16: ("<h", 2),
    VT.UINT32: ("<I", 4), VT.INT32: ("<i", 4), VT.FLOAT32: ("<f", 4), VT.BOOL: ("<?", 1),
    VT.UINT64: ("<Q", 8), VT.INT64: ("<q", 8), VT.FLOAT64: ("<d", 8),
}
_NUMPY = {VT.UINT8: "<u1", VT.INT8: "<i1", VT.UINT16: "<u2", VT.INT16: "<i2", VT.UINT32: "<u4",
          VT.INT32: "<i4", VT.FLOAT32: "<f4", VT.BOOL: "?", VT.UINT64: "<u8", VT.INT64: "<i8",
          VT.FLOAT64: "<f8"}


def shown_name(text: str, limit: int = 80) -> str:
    """A key, name or value from a file, safe inside a one-line message: control characters
    escaped (as repr does), clipped to `limit` characters. (The fuzzer found keys with newlines
    and terminal escapes, and 64 KiB names, reaching messages verbatim.)"""
    if text.isprintable() and len(text) <= limit:
        return text
    shown = repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]   # numpy order: (rows, cols); ggml's ne reversed
    qtype: int
    offset: int              # absolute offset of the data in the file
    nbytes: int


_U64 = struct.Struct("<Q")


class GGUFReader:
    """Metadata as `fields` (key -> Python value) and tensors as zero-copy uint8 views."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                if self.size == 0:
                    raise GGUFError(f"{self.path}: the file is empty — is the download complete?")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open ({e.strerror})") from None
        self._buf = memoryview(self._map)
        self._pos = 0
        self.fields: dict = {}
        self.field_types: dict[str, tuple[VT, VT | None]] = {}  # key -> (type, array item type)
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    # --- primitive reads, each checked against the end of the file ----------------------

    def _fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what} — the file is damaged or not a GGUF file")

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self._pos + n > self.size:
            raise self._fail(f"{what} runs past the end of the file (offset {self._pos}, {n} bytes)")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def _scalar(self, vt: VT, what: str):
        code, n = _SCALARS[vt]
        return struct.unpack(code, self._take(n, what))[0]

    def _u32(self, what: str) -> int:
        return self._scalar(VT.UINT32, what)

    def _u64(self, what: str) -> int:
        return self._scalar(VT.UINT64, what)

    def _string(self, what: str, limit: int | None = None) -> str:
        n = self._u64(what + " length")
        if limit is not None and n > limit:
            raise self._fail(f"{what} claims {n} bytes")
        raw = self._take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise self._fail(f"{what} is not valid UTF-8") from None

    def _value_type(self, what: str) -> VT:
        code = self._u32(what)
        try:
            return VT(code)
        except ValueError:
            raise self._fail(f"{what} has unknown value type {code}") from None

    def _value(self, vt: VT, what: str, depth: int = 0):
        if vt == VT.STRING:
            return self._string(what)
        if vt != VT.ARRAY:
            return self._scalar(vt, what)
        if depth >= MAX_ARRAY_DEPTH:
            raise self._fail(f"{what} nests arrays too deeply")
        item = self._value_type(what + " item type")
        count = self._u64(what + " count")
        if count > MAX_ARRAY_ITEMS:
            raise self._fail(f"{what} claims {count} items")
        if item in _NUMPY:  # numbers in one go; the count is checked by _take
            nbytes = count * np.dtype(_NUMPY[item]).itemsize
            values = np.frombuffer(self._take(nbytes, what), _NUMPY[item]).tolist()
        # strings and arrays need at least 8 bytes each: reject absurd counts before looping
        elif count * 8 > self.size - self._pos:
            raise self._fail(f"{what} claims {count} items")
        elif item == VT.STRING:
            values = self._string_array(count, what)
        else:
            values = [self._value(item, what, depth + 1) for _ in range(count)]
        self._array_item = item  # the outermost array's item type, set last
        return values

    def _string_array(self, count: int, what: str) -> list[str]:
        # The vocabulary: tens of thousands of short strings, on the path to the first token.
        # One tight loop; slicing the mmap itself (bytes) decodes faster than memoryview slices.
        data, pos, end = self._map, self._pos, self.size
        out = []
        append = out.append
        length = _U64.unpack_from
        try:
            for _ in range(count):
                if pos + 8 > end:
                    raise self._fail(f"{what} item runs past the end of the file")
                (n,) = length(data, pos)
                pos += 8
                if pos + n > end:
                    raise self._fail(f"{what} item runs past the end of the file")
                append(data[pos:pos + n].decode())
                pos += n
        except UnicodeDecodeError:
            raise self._fail(f"{what} has an item that is not valid UTF-8") from None
        self._pos = pos
        return out

    # --- the file -----------------------------------------------------------------------

    def _parse(self) -> None:
        if self.size < 24 or struct.unpack("<I", self._buf[:4])[0] != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (no GGUF magic at the start) — "
                            "lfm2q reads .gguf files; convert HF checkpoints with `lfm2q convert`")
        self._pos = 4
        version = self._u32("version")
        if version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = self._u64("tensor count")
        n_kv = self._u64("metadata count")
        # every key-value takes >= 12 bytes and every tensor info >= 24: bound before looping
        if n_kv * 12 + n_tensors * 24 > self.size:
            raise self._fail(f"header claims {n_kv} metadata keys and {n_tensors} tensors")
        for _ in range(n_kv):
            key = self._string("metadata key", MAX_KEY_BYTES)
            shown = shown_name(key)
            if key in self.fields:
                raise self._fail(f"metadata key {shown} appears twice")
            vt = self._value_type(f"metadata {shown}")
            self._array_item = None
            self.fields[key] = self._value(vt, f"metadata {shown}")
            self.field_types[key] = (vt, self._array_item)
        infos = [self._tensor_info() for _ in range(n_tensors)]
        align = self.fields.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise self._fail(f"general.alignment {align!r} is not a power of two")
        data_start = -(-self._pos // align) * align
        for name, shape, qtype, rel in infos:
            if name in self.tensors:
                raise self._fail(f"tensor {shown_name(name)} appears twice")
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            if shape[-1] % block:
                raise self._fail(f"tensor {shown_name(name)} rows of {shape[-1]} are not whole {block}-blocks")
            nbytes = int(np.prod(shape, dtype=object)) // block * type_size
            start = data_start + rel
            if rel % align or start + nbytes > self.size:
                raise self._fail(f"tensor {shown_name(name)} data (offset {rel}, {nbytes} bytes) lies outside the file")
            self.tensors[name] = TensorInfo(name, shape, qtype, start, nbytes)

    def _tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string("tensor name", MAX_KEY_BYTES)
        shown = shown_name(name)
        n_dims = self._u32(f"tensor {shown} rank")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self._fail(f"tensor {shown} has {n_dims} dimensions")
        ne = [self._u64(f"tensor {shown} shape") for _ in range(n_dims)]
        if any(d == 0 for d in ne) or int(np.prod(ne, dtype=object)) > self.size * 8:
            raise self._fail(f"tensor {shown} has shape {ne}")
        qtype = self._u32(f"tensor {shown} type")
        try:
            GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        except (ValueError, KeyError):
            raise self._fail(f"tensor {shown} has unknown type {qtype}") from None
        offset = self._u64(f"tensor {shown} offset")
        return name, tuple(reversed(ne)), qtype, offset

    def tokenizer_fields(self) -> dict:
        """The `tokenizer.*` fields, as `Tokenizer.from_gguf_fields` takes them. Here on the reader (not only
        on GGUFFile) so vocab-only files, which GGUFFile rejects as models, can be read too."""
        return {k: v for k, v in self.fields.items() if k.startswith("tokenizer.")}

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process (they are re-read from the file if touched
        again): for tensors the engine has copied into another layout."""
        t = self.tensors[name]
        self.release_range(t.offset, t.nbytes)

    def release_range(self, offset: int, nbytes: int) -> None:
        """Drop the whole pages within file bytes offset .. offset+nbytes from this process (an
        expert's slice of a 3-D tensor: see model.ExpertPages)."""
        page = mmap.PAGESIZE
        start = -(-offset // page) * page  # whole pages inside the range only
        stop = (offset + nbytes) // page * page
        if stop > start and hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def data(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8[rows, row_bytes] (1-D tensors: [1, bytes]); no copy."""
        t = self.tensors[name]
        rows = int(np.prod(t.shape[:-1], dtype=np.int64)) if len(t.shape) > 1 else 1
        return np.frombuffer(self._map, np.uint8, t.nbytes, t.offset).reshape(rows, -1)
