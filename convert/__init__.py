"""lfm2q.convert: Hugging Face LFM2 checkpoints -> GGUF files that lfm2q and llama.cpp load.

    from lfm2q.convert import convert_hf
    convert_hf("LFM2-350M/", "lfm2-350m-q8_0.gguf", "q8_0")

Modules, in data-flow order: hf (config.json + lazy safetensors), gguf_layout (the HF->GGUF
name map and lfm2.* metadata), quantize (per-tensor type choice and F32/F16/BF16/Q8_0 bytes),
vocab (tokenizer metadata), writer (the pipeline).
"""
from .quantize import OUT_TYPES, choose_type
from .writer import convert_hf

__all__ = ["convert_hf", "choose_type", "OUT_TYPES"]
