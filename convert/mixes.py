"""Type mixes: which GGML type each LFM2 tensor gets under llama-quantize's file types.

A transcription of llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp), no importance
matrix, no overrides, restricted to what LFM2's tensors reach:

  - kept as they are (F32 here): 1-D tensors (the MoE `exp_probs_b.bias` too), `*_norm.weight`,
    `shortconv.conv.weight`, the MoE router `ffn_gate_inp.weight`;
  - unquantized mixes (f32, f16, bf16): every other tensor in that type;
  - token_embd with tied embeddings (no output.weight), and output.weight: Q6_K, unless the
    mix's type is Q8_0 (stays) or its row is not a multiple of the mix type's block (Q8_0);
  - attn_v, counted over the attention layers in layer order (i of n):
        q4_k_m, q5_k_m: Q6_K where use_more_bits(i, n);   q4_k_s: Q5_K for i < 4;
  - ffn_down, counted over all layers (i = layer, n = n_layer):
        q4_k_m, q5_k_m: Q6_K where use_more_bits(i, n);   q4_k_s: Q5_K for i < n/8;
  - everything else: the mix's base type;
  - models with exactly 8 experts (llama.cpp's Mixtral rule, n_expert == 8): attn_v and attn_k
    Q8_0 under every quantized mix; attn_output Q5_K under q4_k_m and q4_k_s;
  - then the shape fallback: a row that does not split into the chosen type's blocks takes
    Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and F16 when even 32 does not divide it.

LFM2-MoE's 3-D expert tensors (ffn_{gate,up,down}_exps) go through the same rules as their dense
namesakes: ffn_down_exps counts as ffn_down (llama.cpp reads its layer from the name when the
model has experts, out of n_layer), gate and up get the base type.

llama-quantize visits tensors sorted by layer number (then name), so its attn_v counter is the
position of the layer among the attention layers and its ffn_down counter is the layer index;
choose_type takes those from the name and `attn_layers` instead of counting.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

QT = GGMLQuantizationType

# mix name -> (base type, general.file_type)
MIXES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (QT.F32, LlamaFileType.ALL_F32),
    "f16": (QT.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (QT.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (QT.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q6_k": (QT.Q6_K, LlamaFileType.MOSTLY_Q6_K),
    "q5_k_m": (QT.Q5_K, LlamaFileType.MOSTLY_Q5_K_M),
    "q4_k_m": (QT.Q4_K, LlamaFileType.MOSTLY_Q4_K_M),
    "q4_k_s": (QT.Q4_K, LlamaFileType.MOSTLY_Q4_K_S),
    "q4_0": (QT.Q4_0, LlamaFileType.MOSTLY_Q4_0),
}

# tensor_type_fallback: the 32-block type a 256-block type falls back to
_FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}
_UNQUANTIZED = (QT.F32, QT.F16, QT.BF16)
_LAYER = re.compile(r"^blk\.(\d+)\.")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers that get more bits: the first and last eighth, and every
    third one in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def keeps_type(name: str, shape: tuple[int, ...]) -> bool:
    """Tensors llama-quantize never quantizes (tensor_allows_quantization); lfm2q stores them F32."""
    # ggml_n_dims: ne is the NumPy shape reversed, and trailing ne of 1 do not count
    n_dims = max((i + 1 for i, d in enumerate(reversed(shape)) if d > 1), default=1)
    return (n_dims < 2 or not name.endswith("weight") or "_norm.weight" in name
            or "shortconv.conv.weight" in name or "ffn_gate_inp.weight" in name)


def _block(qtype: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def _fallback(qtype: GGMLQuantizationType, ncols: int) -> GGMLQuantizationType:
    if ncols % _block(qtype) == 0:
        return qtype
    qtype = _FALLBACK.get(qtype, qtype)
    return qtype if ncols % _block(qtype) == 0 else QT.F16


def choose_type(name: str, shape: tuple[int, ...], mix: str, n_layer: int,
                attn_layers: Sequence[int], tied_embeddings: bool = True,
                n_expert: int = 0) -> GGMLQuantizationType:
    """The GGML type llama-quantize gives GGUF tensor `name` of NumPy `shape` ([rows, row length],
    [experts, rows, row length]) under `mix`. n_layer: blocks in the model; attn_layers: indices
    of the attention layers; tied_embeddings: the file has no output.weight (token_embd is then
    treated as the output); n_expert: the model's expert count (0 or 1: dense)."""
    try:
        base, _ = MIXES[mix]
    except KeyError:
        raise ValueError(f"unknown mix {mix!r}; choose one of: {', '.join(MIXES)}") from None
    if keeps_type(name, shape):
        return QT.F32
    if base in _UNQUANTIZED:
        return base
    ncols = shape[-1]
    qtype = base
    if name == "output.weight" or (tied_embeddings and name == "token_embd.weight"):
        if ncols % _block(base) != 0:
            qtype = QT.Q8_0
        elif base != QT.Q8_0:
            qtype = QT.Q6_K
    elif "attn_v.weight" in name:
        i, n = sorted(attn_layers).index(_layer(name)), len(attn_layers)
        if mix in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
            qtype = QT.Q6_K
        elif mix == "q4_k_s" and i < 4:
            qtype = QT.Q5_K
        if n_expert == 8:
            qtype = QT.Q8_0
    elif "attn_k.weight" in name:
        if n_expert == 8:
            qtype = QT.Q8_0
    elif "attn_output.weight" in name:
        if n_expert == 8 and mix in ("q4_k_m", "q4_k_s"):
            qtype = QT.Q5_K
    elif "ffn_down" in name:
        i = _layer(name)
        if mix in ("q4_k_m", "q5_k_m") and use_more_bits(i, n_layer):
            qtype = QT.Q6_K
        elif mix == "q4_k_s" and i < n_layer // 8:
            qtype = QT.Q5_K
    return _fallback(qtype, ncols)


def _layer(name: str) -> int:
    m = _LAYER.match(name)
    if m is None:
        raise ValueError(f"{name}: expected a blk.N. tensor name")
    return int(m.group(1))


def plan_types(tensors: Iterable[tuple[str, tuple[int, ...]]], mix: str, n_layer: int,
               n_expert: int = 0) -> dict[str, GGMLQuantizationType]:
    """Types for a whole model given (GGUF name, NumPy shape) pairs; the attention layers and
    tied embeddings are read off the names. n_expert: the model's expert count (0: dense)."""
    tensors = list(tensors)
    names = {name for name, _ in tensors}
    attn_layers = sorted({_layer(n) for n in names if "attn_v.weight" in n})
    tied = "output.weight" not in names
    return {name: choose_type(name, tuple(shape), mix, n_layer, attn_layers, tied, n_expert)
            for name, shape in tensors}
