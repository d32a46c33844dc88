"""lfm2q.convert: Hugging Face LFM2 checkpoints -> GGUF files that lfm2q and llama.cpp load.

    from lfm2q.convert import convert_hf
    convert_hf("LFM2-350M/", "lfm2-350m-q4_k_m.gguf", "q4_k_m")

Modules, in data-flow order: hf (config.json + lazy safetensors), gguf_layout (the HF->GGUF
name map and lfm2.* metadata), mixes (per-tensor type choice, as llama-quantize makes it),
quantize + kquants (the bytes of each type), vocab (tokenizer metadata), writer (the pipeline).
"""
from .mixes import MIXES
from .quantize import plan_types
from .writer import convert_hf

OUT_TYPES = tuple(MIXES)  # the --type values

__all__ = ["convert_hf", "plan_types", "OUT_TYPES"]
