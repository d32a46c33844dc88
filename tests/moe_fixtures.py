"""Tiny, seeded Hugging Face LFM2-MoE checkpoints (model_type lfm2_moe) for tests.

`make_moe_checkpoint(dir, ...)` writes a folder as LiquidAI/LFM2-8B-A1B is laid out on the hub:
config.json, model.safetensors with one tensor per expert (`experts.{e}.w1/w2/w3`, which is
what transformers' save_pretrained writes), the router `feed_forward.gate.weight`, the
selection bias `feed_forward.expert_bias`, and the stand-in tokenizer of hf_fixtures.
`fused=True` rewrites the experts as transformers' in-memory 3-D `gate_up_proj` / `down_proj`.
`hf_moe_model(dir)` loads it back with transformers as the numerical reference.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hf_fixtures import BOS_ID, EOS_ID, PAD_ID, make_tokenizer


def make_moe_checkpoint(
    dir: Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 5,
    attn_layers: tuple[int, ...] = (1, 4),
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 96,
    moe_intermediate_size: int = 32,
    num_experts: int = 6,
    num_experts_per_tok: int = 2,
    num_dense_layers: int = 2,
    vocab_size: int = 512,
    tie: bool = True,
    seed: int = 0,
    fused: bool = False,
    **config_overrides,
) -> Path:
    """Write a seeded random LFM2-MoE checkpoint to `dir` and return `dir`."""
    import torch
    from transformers import Lfm2MoeConfig, Lfm2MoeForCausalLM

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        moe_intermediate_size=moe_intermediate_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        layer_types=["full_attention" if i in attn_layers else "conv" for i in range(num_hidden_layers)],
        num_experts=num_experts, num_experts_per_tok=num_experts_per_tok,
        num_dense_layers=num_dense_layers, max_position_embeddings=4096, tie_word_embeddings=tie,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    kwargs.update(config_overrides)
    model = Lfm2MoeForCausalLM(Lfm2MoeConfig(**kwargs))

    # As hf_fixtures: norms random around 1, sizeable conv kernels; the router's logits ~N(0, 1)
    # and a selection bias large enough to change which experts win.
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            shape = tuple(p.shape)
            if "inv_freq" in name:
                continue
            if name.endswith("norm.weight"):
                w = 1.0 + 0.2 * rng.standard_normal(shape)
            elif name.endswith("conv.conv.weight"):
                w = 0.5 * rng.standard_normal(shape)
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                w = 0.3 * rng.standard_normal(shape)
            elif name.endswith("expert_bias"):
                w = 0.3 * rng.standard_normal(shape)
            elif len(shape) >= 2:
                w = rng.standard_normal(shape) / math.sqrt(shape[-1])
            else:
                w = 0.1 * rng.standard_normal(shape)
            p.copy_(torch.from_numpy(w.astype(np.float32)))
    model.save_pretrained(dir)
    if fused:
        _fuse_experts(dir / "model.safetensors", num_experts)
    make_tokenizer(dir, vocab_size)
    return dir


def _fuse_experts(path: Path, n_experts: int) -> None:
    """Per-expert w1/w3/w2 -> transformers' 3-D gate_up_proj [E, 2 FFE, D] / down_proj [E, D, FFE]."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    layers = sorted({k.split(".experts.")[0] for k in tensors if ".experts." in k})
    for p in layers:
        w = {n: [tensors.pop(f"{p}.experts.{e}.{n}.weight") for e in range(n_experts)] for n in ("w1", "w2", "w3")}
        tensors[f"{p}.experts.gate_up_proj"] = np.stack([np.concatenate([g, u]) for g, u in zip(w["w1"], w["w3"])])
        tensors[f"{p}.experts.down_proj"] = np.stack(w["w2"])
    save_file(tensors, str(path), metadata={"format": "pt"})


def hf_moe_model(dir: Path):
    """Load a checkpoint folder with transformers: Lfm2MoeForCausalLM in eval mode, float32."""
    import torch
    from transformers import Lfm2MoeForCausalLM

    return Lfm2MoeForCausalLM.from_pretrained(Path(dir), dtype=torch.float32).eval()


def config_of(dir: Path) -> dict:
    return json.loads((Path(dir) / "config.json").read_text())
