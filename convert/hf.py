"""Reading a Hugging Face LFM2 checkpoint: config.json and safetensors, lazily.

`read_config` turns either config.json key style into one frozen `HFConfig`:
  old (first LFM2 releases): full_attn_idxs, block_ff_dim, rope_theta, tie_embedding
  new (transformers v5, LFM2.5): layer_types, intermediate_size, rope_parameters.rope_theta,
                                 tie_word_embeddings
`Checkpoint` lists the tensors of model.safetensors (or of the shards named by
model.safetensors.index.json) and hands out one tensor at a time as a memory-mapped array.

This module knows config keys and the safetensors format, not LFM2 tensor names:
those live in gguf_layout.py.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lfm2q.errors import ConvertError, one_line

# transformers' Lfm2Config defaults, used when an optional key is absent.
_DEFAULTS = {
    "max_position_embeddings": 128000,
    "norm_eps": 1e-5,
    "rope_theta": 1e6,
    "conv_L_cache": 3,
    "block_auto_adjust_ff_dim": True,
    "block_ffn_dim_multiplier": 1.0,
    "block_multiple_of": 256,
    "tie": True,
}


@dataclass(frozen=True)
class HFConfig:
    """An LFM2 config.json, normalised. Legend: D hidden, V vocab, FF effective FFN width,
    H heads, KVH key/value heads, HD head dim, L conv kernel length."""
    path: Path                      # the config.json read
    hidden_size: int                # D
    num_hidden_layers: int
    num_attention_heads: int        # H
    num_key_value_heads: int        # KVH (attention layers)
    vocab_size: int                 # V = embedding rows (may exceed the tokenizer's entries)
    ff_dim: int                     # FF, effective (after auto-adjust / multiplier / rounding)
    attention_layers: tuple[bool, ...]  # per layer: True = attention, False = short conv
    context_length: int             # max_position_embeddings
    norm_eps: float
    rope_theta: float
    conv_L_cache: int               # L
    tie_embeddings: bool            # True: no lm_head, the LM head is the embedding
    # LFM2-MoE (model_type lfm2_moe): layers from num_dense_layers on route each token to
    # num_experts_per_tok of num_experts SwiGLU experts of width moe_intermediate_size
    model_type: str = "lfm2"
    num_experts: int = 0            # E (0: dense)
    num_experts_per_tok: int = 0    # K
    moe_intermediate_size: int = 0  # FFE
    num_dense_layers: int = 0
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    use_expert_bias: bool = True

    @property
    def is_moe(self) -> bool:
        return self.model_type == "lfm2_moe"

    def moe_layer(self, i: int) -> bool:
        return self.is_moe and i >= self.num_dense_layers

    @property
    def head_dim(self) -> int:      # HD
        return self.hidden_size // self.num_attention_heads


def effective_ff_dim(ff: int, auto_adjust: bool, multiplier: float | None, multiple_of: int) -> int:
    """FFN width of LFM2's SwiGLU as llama.cpp computes it (LFM2-350M: 6656 -> 4608).

    transformers rounds to multiple_of only when a multiplier is set; llama.cpp always rounds
    (inside auto_adjust). The two agree for every released config (multiplier 1.0); a checkpoint
    where they differ fails the tensor shape check with a clear message instead of converting wrong.
    """
    if auto_adjust:
        ff = int(2 * ff / 3)
        if multiplier is not None:
            ff = int(multiplier * ff)
        ff = multiple_of * ((ff + multiple_of - 1) // multiple_of)
    return ff


def read_config(hf_dir: Path) -> HFConfig:
    """Read and check `hf_dir/config.json` (either key style). Raises ConvertError."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ConvertError(f"{hf_dir}: no such folder — point to a Hugging Face LFM2 checkpoint folder")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConvertError(f"{hf_dir}: no config.json — point to a Hugging Face LFM2 checkpoint folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e}) — re-download the checkpoint") from None
    if not isinstance(raw, dict):
        raise ConvertError(f"{path}: expected a JSON object — re-download the checkpoint")

    model_type = raw.get("model_type")
    if model_type not in ("lfm2", "lfm2_moe"):
        raise ConvertError(
            f"{path}: model_type {model_type!r} is not LFM2 — only text LFM2/LFM2.5 checkpoints "
            f"(model_type 'lfm2' or 'lfm2_moe') can be converted")

    def req_int(key: str, value: Any = None) -> int:
        value = raw.get(key) if value is None else value
        if value is None:
            raise ConvertError(f"{path}: required key {key!r} is missing")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConvertError(f"{path}: {key} must be a positive integer, got {value!r}")
        return value

    def opt(key: str, default_key: str | None = None) -> Any:
        value = raw.get(key)
        return _DEFAULTS[default_key or key] if value is None else value

    hidden = req_int("hidden_size")
    n_layers = req_int("num_hidden_layers")
    n_heads = req_int("num_attention_heads")
    n_kv = req_int("num_key_value_heads")
    vocab = req_int("vocab_size")
    if hidden % n_heads != 0:
        raise ConvertError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")
    if n_heads % n_kv != 0:
        raise ConvertError(f"{path}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}")

    if model_type == "lfm2_moe":
        # Lfm2MoeMLP uses intermediate_size as it is (no auto-adjust), as llama.cpp's converter
        ff = req_int("intermediate_size", raw.get("intermediate_size", _MOE_DEFAULTS["intermediate_size"]))
        moe = _moe_fields(raw, path, req_int, n_layers)
    else:
        # Like transformers: block_ff_dim (old style) wins over intermediate_size.
        ff_key = "block_ff_dim" if raw.get("block_ff_dim") is not None else "intermediate_size"
        ff_raw = req_int(ff_key)
        multiple_of = req_int("block_multiple_of", opt("block_multiple_of"))
        multiplier = raw.get("block_ffn_dim_multiplier", _DEFAULTS["block_ffn_dim_multiplier"])
        ff = effective_ff_dim(ff_raw, bool(opt("block_auto_adjust_ff_dim")), multiplier, multiple_of)
        moe = {}

    attention_layers = _layer_kinds(raw, n_layers, path)

    # rope_parameters (new) or rope_theta (old); both absent -> transformers' default 1e6.
    rope = raw.get("rope_parameters")
    if isinstance(rope, dict) and rope.get("rope_theta") is not None:
        rope_theta = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            raise ConvertError(f"{path}: rope_type {rope['rope_type']!r} is not supported (LFM2 uses plain RoPE)")
    else:
        rope_theta = opt("rope_theta")

    # tie_embedding (old) wins over tie_word_embeddings, as in transformers.
    tie = raw.get("tie_embedding")
    if tie is None:
        tie = opt("tie_word_embeddings", "tie")

    return HFConfig(
        path=path,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        vocab_size=vocab,
        ff_dim=ff,
        attention_layers=attention_layers,
        context_length=req_int("max_position_embeddings", opt("max_position_embeddings")),
        norm_eps=float(opt("norm_eps")),
        rope_theta=float(rope_theta),
        conv_L_cache=req_int("conv_L_cache", opt("conv_L_cache")),
        tie_embeddings=bool(tie),
        model_type=model_type,
        **moe,
    )


# transformers' Lfm2MoeConfig defaults, for the MoE keys a config.json may leave out
_MOE_DEFAULTS = {"intermediate_size": 7168, "moe_intermediate_size": 1792, "num_experts": 32,
                 "num_experts_per_tok": 4, "num_dense_layers": 2, "norm_topk_prob": True,
                 "routed_scaling_factor": 1.0, "use_expert_bias": True}


def _moe_fields(raw: dict, path: Path, req_int, n_layers: int) -> dict:
    def get(key):
        value = raw.get(key)
        return _MOE_DEFAULTS[key] if value is None else value

    n_experts = req_int("num_experts", get("num_experts"))
    k = req_int("num_experts_per_tok", get("num_experts_per_tok"))
    if k > n_experts:
        raise ConvertError(f"{path}: num_experts_per_tok {k} is more than num_experts {n_experts}")
    dense = get("num_dense_layers")
    if isinstance(dense, bool) or not isinstance(dense, int) or not 0 <= dense <= n_layers:
        raise ConvertError(f"{path}: num_dense_layers must be a whole number from 0 to {n_layers}, got {dense!r}")
    scale = get("routed_scaling_factor")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConvertError(f"{path}: routed_scaling_factor must be a number, got {scale!r}")
    for key in ("norm_topk_prob", "use_expert_bias"):
        if not isinstance(get(key), bool):
            raise ConvertError(f"{path}: {key} must be true or false, got {get(key)!r}")
    if raw.get("conv_bias"):
        raise ConvertError(f"{path}: conv_bias is true; LFM2-MoE's short convolutions have no bias "
                           "in llama.cpp's format")
    return dict(num_experts=n_experts, num_experts_per_tok=k,
                moe_intermediate_size=req_int("moe_intermediate_size", get("moe_intermediate_size")),
                num_dense_layers=dense, norm_topk_prob=get("norm_topk_prob"),
                routed_scaling_factor=float(scale), use_expert_bias=get("use_expert_bias"))


def _layer_kinds(raw: dict, n_layers: int, path: Path) -> tuple[bool, ...]:
    """Per layer, True for attention. layer_types wins; else full_attn_idxs; if both are
    missing every layer is attention (transformers' rule)."""
    layer_types = raw.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != n_layers:
            raise ConvertError(f"{path}: layer_types must list {n_layers} entries (num_hidden_layers)")
        kinds = []
        for i, t in enumerate(layer_types):
            if t not in ("conv", "full_attention"):
                raise ConvertError(f"{path}: layer_types[{i}] is {t!r}; LFM2 layers are 'conv' or 'full_attention'")
            kinds.append(t == "full_attention")
        return tuple(kinds)
    idxs = raw.get("full_attn_idxs")
    if idxs is None:
        return (True,) * n_layers
    if not isinstance(idxs, list) or not all(isinstance(i, int) and 0 <= i < n_layers for i in idxs):
        raise ConvertError(f"{path}: full_attn_idxs must be layer indices below num_hidden_layers {n_layers}")
    return tuple(i in idxs for i in range(n_layers))


# ---------------------------------------------------------------------------------------------
# safetensors

# dtype string in a safetensors header -> numpy storage dtype, for the dtypes we convert
_ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
SUPPORTED_DTYPES = tuple(_ST_DTYPES)
# bytes per element of every safetensors dtype, to check data offsets of tensors we skip too
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorEntry:
    name: str                # as stored in the file
    file: Path
    dtype: str               # safetensors dtype string: F32, F16, BF16, ...
    shape: tuple[int, ...]
    offset: int              # absolute byte offset of the data in `file`


class Checkpoint:
    """The tensors of an HF checkpoint folder, read lazily and memory-mapped.

    Names, dtypes and shapes come from `safetensors.safe_open` (which also validates each header);
    the data is read with `np.memmap` at the offsets of the header. Why not `get_tensor`: the
    safetensors NumPy backend cannot return BF16 (NumPy has no bfloat16) and it copies; mapping
    the bytes ourselves gives one zero-copy path for F32, F16 and BF16 (BF16 bits << 16 = float32).
    """

    def __init__(self, hf_dir: Path):
        self.dir = Path(hf_dir)
        self.files = _safetensors_files(self.dir)
        self.entries: dict[str, TensorEntry] = {}
        index = self._read_index()
        for f in self.files:
            for entry in _read_header(f):
                if entry.name in self.entries:
                    raise ConvertError(f"{f}: tensor {entry.name!r} is also in {self.entries[entry.name].file.name}")
                self.entries[entry.name] = entry
        if index is not None:
            for name, fname in sorted(index.items()):
                e = self.entries.get(name)
                if e is None or e.file.name != fname:
                    raise ConvertError(
                        f"{self.dir / fname}: tensor {name!r} listed in model.safetensors.index.json is not in "
                        f"that file — re-download the checkpoint")

    def _read_index(self) -> dict[str, str] | None:
        path = self.dir / "model.safetensors.index.json"
        if not path.is_file() or (self.dir / "model.safetensors").is_file():
            return None
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ConvertError(f"{path}: not a valid safetensors index (no weight_map) — re-download it") from None
        return weight_map

    def names(self) -> list[str]:
        return list(self.entries)

    def check_dtype(self, name: str) -> None:
        e = self.entries[name]
        if e.dtype not in _ST_DTYPES:
            raise ConvertError(
                f"{e.file}: tensor {name!r} has dtype {e.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")

    def load(self, name: str) -> np.ndarray:
        """One tensor as a float32 or float16 array. F32/F16 are memory-mapped views (no copy);
        BF16 is widened to float32 (its bits are the top half of a float32)."""
        self.check_dtype(name)
        e = self.entries[name]
        np_dtype = _ST_DTYPES[e.dtype]
        count = math.prod(e.shape)
        try:
            data = np.memmap(e.file, dtype=np_dtype, mode="r", offset=e.offset, shape=(count,))
        except (OSError, ValueError) as err:
            raise ConvertError(f"{e.file}: cannot read tensor {name!r} ({err}) — re-download the file") from None
        if e.dtype == "BF16":
            wide = data.astype(np.uint32)
            wide <<= 16  # in place: one float32-sized copy, not two
            data = wide.view(np.float32)
        return data.reshape(e.shape)


def _safetensors_files(hf_dir: Path) -> list[Path]:
    single = hf_dir / "model.safetensors"
    if single.is_file():
        return [single]
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise ConvertError(f"{index}: not a valid safetensors index (no weight_map) — re-download it") from None
        missing = [n for n in names if not (hf_dir / n).is_file()]
        if missing:
            raise ConvertError(f"{hf_dir / missing[0]}: shard listed in {index.name} is missing — re-download it")
        return [hf_dir / n for n in names]
    found = sorted(hf_dir.glob("*.safetensors"))
    if found:
        return found
    raise ConvertError(
        f"{hf_dir}: no model.safetensors (or shards with model.safetensors.index.json) — "
        f"only safetensors checkpoints are supported")


def _read_header(path: Path) -> list[TensorEntry]:
    """Validate a safetensors file with safe_open and return its tensors with absolute data offsets.
    File layout: u64 little-endian header length N, N bytes of JSON, then the data block."""
    from safetensors import SafetensorError, safe_open

    corrupt = f"{path}: not a valid safetensors file"
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConvertError(f"{corrupt} ({one_line(e)}) — re-download it") from None

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ConvertError(f"{corrupt} (shorter than 8 bytes) — re-download it")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise ConvertError(f"{corrupt} (header longer than the file) — re-download it")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConvertError(f"{corrupt} (header is not JSON) — re-download it") from None
    data_start = 8 + n

    entries = []
    for name, (dtype, shape) in meta.items():
        info = header.get(name)
        if not isinstance(info, dict) or len(info.get("data_offsets", ())) != 2:
            raise ConvertError(f"{corrupt} (no data_offsets for tensor {name!r}) — re-download it")
        begin, end = info["data_offsets"]
        itemsize = _ITEMSIZE.get(dtype)
        if (itemsize is not None and end - begin != math.prod(shape) * itemsize) or data_start + end > size:
            raise ConvertError(f"{corrupt} (tensor {name!r} lies outside the file) — re-download it")
        entries.append(TensorEntry(name=name, file=path, dtype=dtype, shape=shape, offset=data_start + begin))
    return entries
