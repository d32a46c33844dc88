"""The HF -> GGUF map for LFM2: tensor names and shapes, and the `lfm2.*` metadata.

The only place in lfm2q where Hugging Face tensor names appear. GGUF names come from gguf-py's
constants (`TENSOR_NAMES`), the one source llama.cpp uses too. Spec: docs/lfm2-facts.md §5
(tensors) and §6 (metadata).

Every tensor is written in HF's [out, in] row-major layout unchanged (ggml ne[0] = in); the one
reshape is the short-conv kernel, HF [D, 1, L] -> GGUF [D, L]. No Q/K permutation: LFM2 uses
NEOX-style RoPE, which llama.cpp applies to the HF layout directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf

from .hf import HFConfig

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LFM2]  # "lfm2"

_T = gguf.MODEL_TENSOR


def _gguf(t: gguf.MODEL_TENSOR, bid: int | None = None) -> str:
    assert t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LFM2], t
    name = gguf.TENSOR_NAMES[t]
    return (name.format(bid=bid) if bid is not None else name) + ".weight"


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to convert. Shapes are NumPy order ([rows, cols]); GGUF's ne is the reverse."""
    hf_name: str
    gguf_name: str
    hf_shape: tuple[int, ...]     # as config.json says it must be in the checkpoint
    gguf_shape: tuple[int, ...]   # as written (== hf_shape except the squeezed conv kernel)


def plan_tensors(cfg: HFConfig) -> list[TensorPlan]:
    """Every tensor of the GGUF file, in file order: token_embd, blk.0 … blk.N-1, final norm,
    then output.weight only for an untied LM head."""
    D, FF, L = cfg.hidden_size, cfg.ff_dim, cfg.conv_L_cache
    HD, H, KVH = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    V = cfg.vocab_size

    def same(hf: str, t: gguf.MODEL_TENSOR, shape: tuple[int, ...], bid: int | None = None) -> TensorPlan:
        return TensorPlan(hf, _gguf(t, bid), shape, shape)

    plans = [same("model.embed_tokens.weight", _T.TOKEN_EMBD, (V, D))]
    for i, is_attn in enumerate(cfg.attention_layers):
        p = f"model.layers.{i}."
        plans.append(same(p + "operator_norm.weight", _T.ATTN_NORM, (D,), i))
        if is_attn:
            plans += [
                same(p + "self_attn.q_proj.weight", _T.ATTN_Q, (H * HD, D), i),
                same(p + "self_attn.k_proj.weight", _T.ATTN_K, (KVH * HD, D), i),
                same(p + "self_attn.v_proj.weight", _T.ATTN_V, (KVH * HD, D), i),
                same(p + "self_attn.out_proj.weight", _T.ATTN_OUT, (D, H * HD), i),
                same(p + "self_attn.q_layernorm.weight", _T.ATTN_Q_NORM, (HD,), i),
                same(p + "self_attn.k_layernorm.weight", _T.ATTN_K_NORM, (HD,), i),
            ]
        else:
            plans += [
                same(p + "conv.in_proj.weight", _T.SHORTCONV_INPROJ, (3 * D, D), i),  # rows: B, C, x
                # depthwise Conv1d weight [D, 1, L] -> [D, L]: llama.cpp's ssm_conv wants it 2-D
                TensorPlan(p + "conv.conv.weight", _gguf(_T.SHORTCONV_CONV, i), (D, 1, L), (D, L)),
                same(p + "conv.out_proj.weight", _T.SHORTCONV_OUTPROJ, (D, D), i),
            ]
        plans += [
            same(p + "ffn_norm.weight", _T.FFN_NORM, (D,), i),
            same(p + "feed_forward.w1.weight", _T.FFN_GATE, (FF, D), i),
            same(p + "feed_forward.w3.weight", _T.FFN_UP, (FF, D), i),
            same(p + "feed_forward.w2.weight", _T.FFN_DOWN, (D, FF), i),
        ]
    # HF's embedding_norm is the FINAL norm (after the last block); llama.cpp names it token_embd_norm.
    plans.append(same("model.embedding_norm.weight", _T.TOKEN_EMBD_NORM, (D,)))
    if not cfg.tie_embeddings:
        plans.append(same("lm_head.weight", _T.OUTPUT, (V, D)))
    return plans


# Checkpoint tensors that are not part of the text model (LFM2-VL / LFM2-Audio parts); as
# llama.cpp's converter, skip them. Substring match, like its ConformerAudioModel.is_audio_tensor.
_SKIP_MARKERS = ("vision_tower", "multi_modal_projector", "mm_projector", "audio", "codebook",
                 "conformer", "depth_embedding", "depthformer", "depth_linear")


def normalize_hf_name(name: str) -> str | None:
    """The checkpoint name as plan_tensors spells it, or None for a tensor to skip."""
    if any(m in name for m in _SKIP_MARKERS):
        return None
    if name.startswith("lfm."):  # LFM2-Audio checkpoints prefix the text model with "lfm."
        name = "model." + name[len("lfm."):]
    return name


def is_skipped_when_tied(name: str, cfg: HFConfig) -> bool:
    """With tied embeddings transformers ignores a stored lm_head.weight (it reuses the
    embedding); so do we."""
    return cfg.tie_embeddings and name == "lm_head.weight"


def add_model_metadata(writer: gguf.GGUFWriter, cfg: HFConfig, *, name: str, file_type: int) -> None:
    """general.* and lfm2.* keys, as llama.cpp's LFM2 converter writes them (docs/lfm2-facts.md §6).
    general.architecture is written by GGUFWriter itself."""
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.ff_dim)
    writer.add_head_count(cfg.num_attention_heads)
    # Per-layer array (INT32 elements, as gguf-py infers from Python ints): 0 marks a conv layer.
    writer.add_head_count_kv([cfg.num_key_value_heads if a else 0 for a in cfg.attention_layers])
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_shortconv_l_cache(cfg.conv_L_cache)
