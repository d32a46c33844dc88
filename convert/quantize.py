"""Which GGML type each tensor gets, and the functions that produce its bytes.

Two tables, so that more output types plug in without touching the pipeline:
  mixes.MIXES --type name -> (base type, general.file_type); `plan_types` picks each tensor's
              type the way llama.cpp's llama_tensor_get_type does (q4_k_m: Q4_K with some
              Q6_K, …; plain types: every matrix in that type)
  QUANTIZERS  GGMLQuantizationType -> function(float array, tensor name) -> array whose bytes
              are the tensor data

Rules shared by every type (llama.cpp's convert_hf_to_gguf and llama-quant):
  - 1-D tensors, every "*_norm.weight" and the short-conv kernel stay F32;
  - a block type is used only when the row length (the last NumPy dim, ggml ne[0]) is a multiple
    of its block size; otherwise the tensor falls back to F16, as llama.cpp's converter does for
    Q8_0 (gguf.can_quantize_to_q8_0). LFM2's released sizes never hit this; tiny test models can.

Bit-exactness: Q4_0, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K use our numba ports of ggml's reference
quantizers (kquants.py, checked against llama.cpp's bytes); Q8_0 and BF16 use gguf-py's quantizers, which reproduce ggml's reference code
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

from . import kquants, mixes
from .mixes import MIXES

QT = GGMLQuantizationType

def fits_blocks(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> bool:
    """True when every row splits into whole blocks of `qtype`."""
    block_size, _ = GGML_QUANT_SIZES[qtype]
    return shape[-1] % block_size == 0


def parse_out_type(out_type: str) -> str:
    """Normalise a --type value (case-insensitive) or raise ConvertError listing the valid ones."""
    key = str(out_type).strip().lower()
    if key not in MIXES:
        raise ConvertError(f"output type {out_type!r} is not supported; choose one of: {', '.join(MIXES)}")
    return key


def plan_types(tensors: list[tuple[str, tuple[int, ...]]], out_type: str, n_layer: int,
               n_expert: int = 0) -> list[GGMLQuantizationType]:
    """The GGML type of each (GGUF name, NumPy shape) of a whole model under `out_type`
    (n_expert: the file's expert_count, 0 for a dense model)."""
    types = mixes.plan_types(tensors, parse_out_type(out_type), n_layer, n_expert)
    return [types[name] for name, _ in tensors]


def file_type(out_type: str) -> int:
    """general.file_type for a --type value."""
    return int(MIXES[parse_out_type(out_type)][1])


def tensor_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of NumPy `shape` stored as `qtype`."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    assert n % block_size == 0, (shape, qtype)
    return n // block_size * type_size


def _to_f32(x: np.ndarray, name: str) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _to_f16(x: np.ndarray, name: str) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float16)  # round to nearest even, like ggml


# gguf-py's block quantizers work 16 rows at a time and widen each group to float32 themselves:
# passing float16 input as is avoids a float32 copy of the whole tensor.

def _to_bf16(x: np.ndarray, name: str) -> np.ndarray:
    return gguf_quants.quantize(np.ascontiguousarray(x), QT.BF16)


def _to_q8_0(x: np.ndarray, name: str) -> np.ndarray:
    return gguf_quants.quantize(np.ascontiguousarray(x), QT.Q8_0)


def _numba(quantizer):
    def run(x: np.ndarray, name: str) -> np.ndarray:
        return quantizer(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1]), name)
    return run


# GGML type -> function(float32/float16 array, tensor name) -> the tensor's bytes (C order)
QUANTIZERS: dict[GGMLQuantizationType, Callable[[np.ndarray, str], np.ndarray]] = {
    QT.F32: _to_f32,
    QT.F16: _to_f16,
    QT.BF16: _to_bf16,
    QT.Q8_0: _to_q8_0,
    QT.Q4_0: _numba(kquants.quantize_q4_0),
    QT.Q5_0: _numba(kquants.quantize_q5_0),
    QT.Q5_1: _numba(kquants.quantize_q5_1),
    QT.Q4_K: _numba(kquants.quantize_q4_k),
    QT.Q5_K: _numba(kquants.quantize_q5_k),
    QT.Q6_K: _numba(kquants.quantize_q6_k),
}


def quantize(x: np.ndarray, qtype: GGMLQuantizationType, name: str = "tensor") -> np.ndarray:
    """The stored form of tensor `x` in `qtype` (its .tobytes() is what goes into the file)."""
    return QUANTIZERS[qtype](x, name)
