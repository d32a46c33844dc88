"""Which GGML type each tensor gets, and the functions that produce its bytes.

Two tables, so that more output types plug in without touching the pipeline:
  OUT_TYPES   --type name -> (general.file_type, chooser(gguf_name, shape) -> GGMLQuantizationType)
  QUANTIZERS  GGMLQuantizationType -> function(float array) -> array whose bytes are the tensor data
A mix such as q4_k_m adds one OUT_TYPES entry (its chooser picks Q4_K / Q6_K per tensor) and
QUANTIZERS entries for the block types it uses.

Rules shared by every type (llama.cpp's convert_hf_to_gguf and llama-quant):
  - 1-D tensors, every "*_norm.weight" and the short-conv kernel stay F32;
  - a block type is used only when the row length (the last NumPy dim, ggml ne[0]) is a multiple
    of its block size; otherwise the tensor falls back to F16, as llama.cpp's converter does for
    Q8_0 (gguf.can_quantize_to_q8_0). LFM2's released sizes never hit this; tiny test models can.

Bit-exactness: Q8_0 and BF16 use gguf-py's quantizers, which reproduce ggml's reference code
(Q8_0: quantize_row_q8_0_ref, per 32 weights d = amax/127 in fp32, q = roundf(x/d) rounding half
away from zero, d stored as fp16; BF16: ggml_compute_fp32_to_bf16, round to nearest even with
NaNs kept quiet). tests/test_convert.py checks Q8_0 against a plain transcription of the C code.
F16 is NumPy's astype (IEEE round to nearest even, as ggml's fp32->fp16).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import quants as gguf_quants

from lfm2q.errors import ConvertError

QT = GGMLQuantizationType
Chooser = Callable[[str, tuple[int, ...]], GGMLQuantizationType]


def _always_f32(gguf_name: str, shape: tuple[int, ...]) -> bool:
    # Kernels read norms and the conv kernel as F32; llama-quant also never quantizes shortconv.conv.
    return len(shape) == 1 or gguf_name.endswith("_norm.weight") or gguf_name.endswith("shortconv.conv.weight")


def fits_blocks(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> bool:
    """True when every row splits into whole blocks of `qtype`."""
    block_size, _ = GGML_QUANT_SIZES[qtype]
    return shape[-1] % block_size == 0


def _matrices_as(qtype: GGMLQuantizationType) -> Chooser:
    """Chooser for a plain type: every matrix in `qtype`, F16 when the rows don't fit its blocks."""
    def choose(gguf_name: str, shape: tuple[int, ...]) -> GGMLQuantizationType:
        return qtype if fits_blocks(shape, qtype) else QT.F16
    return choose


# --type name -> (general.file_type, chooser for the tensors that are not forced F32)
OUT_TYPES: dict[str, tuple[LlamaFileType, Chooser]] = {
    "f32": (LlamaFileType.ALL_F32, _matrices_as(QT.F32)),
    "f16": (LlamaFileType.MOSTLY_F16, _matrices_as(QT.F16)),
    "bf16": (LlamaFileType.MOSTLY_BF16, _matrices_as(QT.BF16)),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, _matrices_as(QT.Q8_0)),
}


def parse_out_type(out_type: str) -> str:
    """Normalise a --type value (case-insensitive) or raise ConvertError listing the valid ones."""
    key = str(out_type).strip().lower()
    if key not in OUT_TYPES:
        raise ConvertError(f"output type {out_type!r} is not supported; choose one of: {', '.join(OUT_TYPES)}")
    return key


def choose_type(gguf_name: str, shape: tuple[int, ...], out_type: str) -> GGMLQuantizationType:
    """The GGML type of one tensor. `shape` is the GGUF tensor's NumPy shape ([rows, row length])."""
    if _always_f32(gguf_name, shape):
        return QT.F32
    _, chooser = OUT_TYPES[parse_out_type(out_type)]
    return chooser(gguf_name, tuple(shape))


def file_type(out_type: str) -> int:
    """general.file_type for a --type value."""
    return int(OUT_TYPES[parse_out_type(out_type)][0])


def tensor_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of NumPy `shape` stored as `qtype`."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    assert n % block_size == 0, (shape, qtype)
    return n // block_size * type_size


def _to_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _to_f16(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float16)  # round to nearest even, like ggml


# gguf-py's block quantizers work 16 rows at a time and widen each group to float32 themselves:
# passing float16 input as is avoids a float32 copy of the whole tensor.

def _to_bf16(x: np.ndarray) -> np.ndarray:
    return gguf_quants.quantize(np.ascontiguousarray(x), QT.BF16)


def _to_q8_0(x: np.ndarray) -> np.ndarray:
    return gguf_quants.quantize(np.ascontiguousarray(x), QT.Q8_0)


# GGML type -> function from a float32/float16 array to the tensor's bytes (any dtype, C order)
QUANTIZERS: dict[GGMLQuantizationType, Callable[[np.ndarray], np.ndarray]] = {
    QT.F32: _to_f32,
    QT.F16: _to_f16,
    QT.BF16: _to_bf16,
    QT.Q8_0: _to_q8_0,
}


def quantize(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """The stored form of tensor `x` in `qtype` (its .tobytes() is what goes into the file)."""
    return QUANTIZERS[qtype](x)
