"""Re-quantize an F32/F16/BF16 LFM2 (or LFM2-MoE) GGUF to another type mix (`lfm2q quantize`).

Metadata is copied key by key with its stored value type; tensors are read from the memory
map, dequantized, and quantized one at a time (peak memory about one tensor; a 3-D expert
tensor one expert at a time), into a temp file renamed at the end — the same pipeline rules as
`convert_hf`.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from lfm2q.errors import ConvertError
from lfm2q.gguf_model import GGUFFile
from lfm2q.kernels import dequantize

from . import quantize
from .writer import Chunked, write_atomically

_SOURCE_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                 gguf.GGMLQuantizationType.BF16)
# written afresh by GGUFWriter or for the new file
_SKIP_KEYS = ("general.architecture", "general.file_type", "general.alignment")


def quantize_gguf(src, dst, out_type: str, progress: bool = False) -> Path:
    """Write `src` (an F32/F16/BF16 LFM2 GGUF) as `dst` with the `out_type` mix; return dst."""
    key = quantize.parse_out_type(out_type)
    src, dst = Path(src), Path(dst)
    f = GGUFFile(src)  # a fully checked LFM2 file
    reader = f.reader
    for t in reader.tensors.values():
        if t.qtype not in _SOURCE_TYPES and len(t.shape) == 2:
            raise ConvertError(f"{src}: tensor {t.name} is already {gguf.GGMLQuantizationType(t.qtype).name}; "
                               "quantize from an F32/F16/BF16 file or the HF checkpoint (lfm2q convert)")
    if dst.resolve() == src.resolve():
        raise ConvertError(f"{dst}: the output would overwrite the input — choose another path")
    if not dst.parent.is_dir():
        raise ConvertError(f"{dst.parent}: output folder does not exist — create it first")

    writer = gguf.GGUFWriter(path=None, arch=f.arch)
    for k, value in reader.fields.items():
        if k in _SKIP_KEYS:
            continue
        vt, item = reader.field_types[k]
        writer.add_key_value(k, value, vt, sub_type=item)
    writer.add_file_type(quantize.file_type(key))
    plan = [(t.name, t.shape) for t in reader.tensors.values()]
    qtypes = quantize.plan_types(plan, key, f.config.n_layer, n_expert=f.config.n_expert)
    for (name, shape), qtype in zip(plan, qtypes):
        writer.add_tensor_info(name, shape, np.dtype(np.float32), quantize.tensor_nbytes(shape, qtype),
                               raw_dtype=qtype)

    def one(name, raw, src_type, shape, qtype):
        return quantize.quantize(dequantize(raw, src_type).reshape(shape), qtype, name)

    def stored():
        for (name, shape), qtype in zip(plan, qtypes):
            raw, src_type = reader.data(name), reader.tensors[name].qtype
            if len(shape) == 3:  # experts: [E * rows, row bytes] -> one expert's rows at a time
                E, rows = shape[0], shape[1]
                yield Chunked(quantize.tensor_nbytes(shape, qtype),
                              (one(name, raw[e * rows:(e + 1) * rows], src_type, shape[1:], qtype)
                               for e in range(E)))
            else:
                yield one(name, raw, src_type, shape, qtype)

    write_atomically(writer, dst, [name for name, _ in plan], stored(), progress)
    return dst
