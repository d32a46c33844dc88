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
MOE_ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LFM2MOE]  # "lfm2moe"

_T = gguf.MODEL_TENSOR


def arch_of(cfg: HFConfig) -> str:
    return MOE_ARCH if cfg.is_moe else ARCH


def _gguf(t: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = ".weight") -> str:
    # LFM2's tensors, and LFM2-MoE's expert ones (gguf-py's lfm2moe list lacks output.weight,
    # which llama.cpp's lfm2moe loader takes when present)
    assert t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LFM2] or t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LFM2MOE], t
    name = gguf.TENSOR_NAMES[t]
    return (name.format(bid=bid) if bid is not None else name) + suffix


@dataclass(frozen=True)
class Part:
    """One expert's matrix inside a stacked GGUF tensor: checkpoint tensor `hf_name`, or its
    `index`-th entry (fused 3-D checkpoints), rows `rows[0]:rows[1]` of it (fused gate_up)."""
    hf_name: str
    hf_shape: tuple[int, ...]
    index: int | None = None
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to convert. Shapes are NumPy order ([rows, cols]); GGUF's ne is the reverse.
    A 3-D expert tensor lists its experts as `parts` (stacked in order, written one by one);
    `zeros` marks a tensor the checkpoint does not have and the GGUF needs (an expert bias)."""
    hf_name: str
    gguf_name: str
    hf_shape: tuple[int, ...]     # as config.json says it must be in the checkpoint
    gguf_shape: tuple[int, ...]   # as written (== hf_shape except the squeezed conv kernel)
    parts: tuple[Part, ...] = ()
    zeros: bool = False

    def sources(self) -> dict[str, tuple[int, ...]]:
        """Checkpoint name -> shape of every stored tensor this one is made of."""
        if self.zeros:
            return {}
        if self.parts:
            return {p.hf_name: p.hf_shape for p in self.parts}
        return {self.hf_name: self.hf_shape}


def plan_tensors(cfg: HFConfig, fused_experts: bool = False) -> list[TensorPlan]:
    """Every tensor of the GGUF file, in file order: token_embd, blk.0 … blk.N-1, final norm,
    then output.weight only for an untied LM head. fused_experts: the checkpoint stores each
    MoE layer's experts as transformers' 3-D gate_up_proj / down_proj, not one tensor per
    expert (the hub's layout, which save_pretrained writes too)."""
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
        plans.append(same(p + "ffn_norm.weight", _T.FFN_NORM, (D,), i))
        if cfg.moe_layer(i):
            plans += _expert_plans(cfg, i, fused_experts)
            continue
        plans += [
            same(p + "feed_forward.w1.weight", _T.FFN_GATE, (FF, D), i),
            same(p + "feed_forward.w3.weight", _T.FFN_UP, (FF, D), i),
            same(p + "feed_forward.w2.weight", _T.FFN_DOWN, (D, FF), i),
        ]
    # HF's embedding_norm is the FINAL norm (after the last block); llama.cpp names it token_embd_norm.
    plans.append(same("model.embedding_norm.weight", _T.TOKEN_EMBD_NORM, (D,)))
    if not cfg.tie_embeddings:
        plans.append(same("lm_head.weight", _T.OUTPUT, (V, D)))
    return plans


def _expert_plans(cfg: HFConfig, i: int, fused: bool) -> list[TensorPlan]:
    """A MoE layer's router, selection bias and stacked experts, as llama.cpp's LFM2MoeModel
    converter names and stacks them (experts.{e}.w1 -> ffn_gate_exps[e], w3 -> ffn_up_exps,
    w2 -> ffn_down_exps)."""
    D, E, FFE = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
    p = f"model.layers.{i}.feed_forward."
    bias = TensorPlan(p + "expert_bias", _gguf(_T.FFN_EXP_PROBS_B, i, ".bias"), (E,), (E,),
                      zeros=not cfg.use_expert_bias)  # no bias: zeros choose as none does
    plans = [TensorPlan(p + "gate.weight", _gguf(_T.FFN_GATE_INP, i), (E, D), (E, D)), bias]
    if fused:
        gate_up, down = p + "experts.gate_up_proj", p + "experts.down_proj"
        sources = {
            _T.FFN_GATE_EXP: (gate_up, (E, 2 * FFE, D), (0, FFE)),
            _T.FFN_UP_EXP: (gate_up, (E, 2 * FFE, D), (FFE, 2 * FFE)),
            _T.FFN_DOWN_EXP: (down, (E, D, FFE), None),
        }
        for t, (name, shape, rows) in sources.items():
            out = (E,) + ((FFE, D) if t != _T.FFN_DOWN_EXP else (D, FFE))
            plans.append(TensorPlan(name, _gguf(t, i), shape, out,
                                    parts=tuple(Part(name, shape, e, rows) for e in range(E))))
        return plans
    for t, w, shape in ((_T.FFN_GATE_EXP, "w1", (FFE, D)), (_T.FFN_UP_EXP, "w3", (FFE, D)),
                        (_T.FFN_DOWN_EXP, "w2", (D, FFE))):
        parts = tuple(Part(f"{p}experts.{e}.{w}.weight", shape) for e in range(E))
        plans.append(TensorPlan(parts[0].hf_name, _gguf(t, i), shape, (E,) + shape, parts=parts))
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
    """general.* and lfm2.* (lfm2moe.*) keys, as llama.cpp's LFM2 (LFM2MoeModel) converter writes
    them (docs/lfm2-facts.md §6). general.architecture is written by GGUFWriter itself."""
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
    if cfg.is_moe:
        writer.add_expert_count(cfg.num_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
        writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        writer.add_leading_dense_block_count(cfg.num_dense_layers)
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        # llama.cpp's converter writes neither (its lfm2moe graph always normalises, never
        # scales); written only where a config departs from that, so lfm2q runs it as
        # transformers does (llama.cpp would ignore them)
        if not cfg.norm_topk_prob:
            writer.add_expert_weights_norm(False)
        if cfg.routed_scaling_factor != 1.0:
            writer.add_expert_weights_scale(cfg.routed_scaling_factor)
