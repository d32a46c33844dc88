"""Tiny, seeded Hugging Face LFM2 checkpoints for tests.

`make_checkpoint(dir, ...)` writes a folder that looks like a real LFM2 download:
config.json (new or old key style), model.safetensors (or shards + index), generation_config.json,
tokenizer.json, tokenizer_config.json (with the LFM2 chat template) and special_tokens_map.json.
`hf_model(dir)` loads it back with transformers as the numerical reference.

The tokenizer is a stand-in: a byte-level BPE trained here on a few KB of generated text, built
like LFM2's real tokenizer.json (same pre-tokenizer, decoder, post-processor and special-token
ids 0-13), so code written against it also reads the real one.

Vocabulary layout, mirroring real LFM2 (64,400 tokenizer entries in a 65,536-row embedding):
    ids 0-13                 LFM2's special tokens, at LFM2's ids
    ids 14-23                <|reserved_4|> ... <|reserved_13|> (special, like LFM2's 14-500)
    ids 24-279               the 256 byte-level base tokens
    ids 280-(n-1)            learned merges, n = vocab_size - vocab_size // 16 at most
    ids n-(vocab_size-1)     NOT in the tokenizer: unused embedding rows, which a converter writes
                             as [PAD<id>] tokens (the real model's 64400-65535 gap)
If the corpus runs out of merges before n, the gap is simply larger (deterministic either way).

torch and transformers are imported lazily: importing this module is cheap.
"""
from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
CHAT_TEMPLATE_PATH = DATA_DIR / "lfm2_chat_template.jinja"

# LFM2's special tokens, in id order (ids 0-13); see /work/shared/lfm2-tokenizer/SOURCE.txt.
SPECIAL_TOKENS = [
    "<|pad|>",                  # 0  padding
    "<|startoftext|>",          # 1  BOS
    "<|endoftext|>",            # 2
    "<|fim_pre|>",              # 3
    "<|fim_mid|>",              # 4
    "<|fim_suf|>",              # 5
    "<|im_start|>",             # 6
    "<|im_end|>",               # 7  eos_token in tokenizer_config: chat stops here
    "<|tool_list_start|>",      # 8
    "<|tool_list_end|>",        # 9
    "<|tool_call_start|>",      # 10
    "<|tool_call_end|>",        # 11
    "<|tool_response_start|>",  # 12
    "<|tool_response_end|>",    # 13
]
RESERVED_TOKENS = [f"<|reserved_{i}|>" for i in range(4, 14)]  # ids 14-23
PAD_ID, BOS_ID, EOS_ID = 0, 1, 7
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 2, 6, 7

# Exactly the Split regex of LFM2's tokenizer.json (the Llama-3 pre-tokenizer).
LFM2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MIN_VOCAB_SIZE = 320  # specials + reserved + 256 bytes + a few merges, before the gap


# ---------------------------------------------------------------------------------------------
# Training text: a few KB, generated from word lists with a fixed seed.

_EN = (
    "the a of and to in is was that for on with as it by at from this be are or have not "
    "model token text small fast quick brown fox jumps over lazy dog language weights layer "
    "convolution attention cache memory number value tensor file write read convert run test "
    "hello world python code function return print list dictionary string error message "
    "morning evening weather river mountain city garden music story friend question answer"
).split()
_FR = (
    "le la les un une des et est dans pour avec sur bonjour merci beaucoup très petit grand "
    "château élève été déjà où français café crème voilà garçon fenêtre"
).split()
_DE = (
    "der die das und ist nicht mit für auf ein eine Straße Mädchen schön über größer "
    "Grüße Brücke Bäume Käse müde Frühstück"
).split()
_ZH = list("你好世界我们学习语言模型今天天气很好中文测试数据小型快速")
_EMOJI = ["🙂", "🚀", "🦙", "✅", "🎉", "🌍", "😶‍🌫️", "👍🏽"]
_CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * 2)\n",
    'x = {"key": [1, 2, 3], "name": "lfm2"}\n',
    "if (n <= 0) { return -1; }\n",
]


def training_text(seed: int = 1234, n_sentences: int = 160) -> str:
    """A deterministic multilingual corpus (~6 KB): English, some French, German, Chinese,
    emoji, digits, punctuation, code and newlines."""
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n_sentences):
        kind = rng.random()
        if kind < 0.55:
            words = [rng.choice(_EN) for _ in range(rng.randint(4, 12))]
            s = " ".join(words).capitalize() + rng.choice([".", "!", "?", ",", "..."])
        elif kind < 0.68:
            s = " ".join(rng.choice(_FR) for _ in range(rng.randint(3, 8))).capitalize() + "."
        elif kind < 0.80:
            s = " ".join(rng.choice(_DE) for _ in range(rng.randint(3, 8))) + "."
        elif kind < 0.88:
            s = "".join(rng.choice(_ZH) for _ in range(rng.randint(4, 10))) + "。"
        elif kind < 0.94:
            s = rng.choice(_CODE)
        else:
            s = f"{rng.randint(0, 99999)} {rng.choice(_EMOJI)} {rng.choice(_EN)} {rng.random():.3f}"
        if rng.random() < 0.2:
            s += " " + rng.choice(_EMOJI)
        lines.append(s)
        if rng.random() < 0.1:
            lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Tokenizer


@functools.lru_cache(maxsize=8)
def _tokenizer_json(target_size: int) -> str:
    """Train the stand-in BPE once per size (cached in-process) and return its tokenizer.json text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from tokenizers import Regex

    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LFM2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    specials = [
        AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for t in SPECIAL_TOKENS + RESERVED_TOKENS
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=target_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_text().splitlines(keepends=True), trainer=trainer)
    bos = SPECIAL_TOKENS[BOS_ID]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:0 $B:0", special_tokens=[(bos, BOS_ID)],
        ),
    ])
    tok.decoder = decoders.Sequence([
        decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True),
    ])
    data = json.loads(tok.to_str())
    for i, t in enumerate(SPECIAL_TOKENS + RESERVED_TOKENS):
        assert data["model"]["vocab"][t] == i, (t, i)
    return json.dumps(data, ensure_ascii=False, indent=2)


def tokenizer_size(vocab_size: int) -> int:
    """Number of ids the stand-in tokenizer covers for a given config vocab_size (the rest is a gap)."""
    return len(json.loads(_tokenizer_json(_target_size(vocab_size)))["model"]["vocab"])


def _target_size(vocab_size: int) -> int:
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is too small for the stand-in tokenizer (min {MIN_VOCAB_SIZE})")
    return vocab_size - vocab_size // 16


def make_tokenizer(dir: Path, vocab_size: int) -> None:
    """Write tokenizer.json, tokenizer_config.json (with the LFM2 chat template) and
    special_tokens_map.json into `dir`, laid out like LFM2's (see the module docstring)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    text = _tokenizer_json(_target_size(vocab_size))
    (dir / "tokenizer.json").write_text(text, encoding="utf-8")

    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, t in enumerate(SPECIAL_TOKENS + RESERVED_TOKENS)
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": SPECIAL_TOKENS[BOS_ID],
        "chat_template": CHAT_TEMPLATE_PATH.read_text(encoding="utf-8"),
        "clean_up_tokenization_spaces": True,
        "eos_token": SPECIAL_TOKENS[EOS_ID],
        "extra_special_tokens": {},
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": SPECIAL_TOKENS[PAD_ID],
        "spaces_between_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "use_default_system_prompt": False,
        "use_fast": True,
    }
    (dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")

    def special(t: str) -> dict:
        return {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    stm = {"bos_token": special(SPECIAL_TOKENS[BOS_ID]), "eos_token": special(SPECIAL_TOKENS[EOS_ID]),
           "pad_token": special(SPECIAL_TOKENS[PAD_ID])}
    (dir / "special_tokens_map.json").write_text(json.dumps(stm, indent=2), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Checkpoint

_TORCH_DTYPES = ("float32", "float16", "bfloat16")


def make_checkpoint(
    dir: Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 6,
    attn_layers: tuple[int, ...] = (2, 5),
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    tie: bool = True,
    seed: int = 0,
    dtype: str = "float32",
    config_style: str = "new",
    shards: int = 1,
    **config_overrides,
) -> Path:
    """Write a seeded random LFM2 checkpoint to `dir` and return `dir`.

    intermediate_size None -> 3 * hidden_size, which with block_multiple_of 32 gives an effective
    FFN width of 2 * hidden_size rounded up to 32 (128 for the default). config_style "old"
    rewrites config.json with the original LFM2 keys (full_attn_idxs, block_ff_dim, rope_theta,
    tie_embedding). shards > 1 splits the safetensors (model.safetensors.index.json).
    config_overrides go to transformers.Lfm2Config (e.g. max_position_embeddings, block_multiple_of).
    """
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {_TORCH_DTYPES}, got {dtype!r}")
    if config_style not in ("new", "old"):
        raise ValueError(f"config_style must be 'new' or 'old', got {config_style!r}")
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    if intermediate_size is None:
        intermediate_size = 3 * hidden_size
    layer_types = ["full_attention" if i in attn_layers else "conv" for i in range(num_hidden_layers)]
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        layer_types=layer_types,
        max_position_embeddings=4096,
        block_multiple_of=32,
        tie_word_embeddings=tie,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    kwargs.update(config_overrides)
    config = Lfm2Config(**kwargs)
    model = Lfm2ForCausalLM(config)

    # Seeded weights, independent of torch's global RNG. Norms are random around 1 (not all ones)
    # so that a missing or misplaced norm changes the logits; conv kernels are large enough to matter.
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head is the embedding: listed once
            shape = tuple(p.shape)
            if name.endswith("norm.weight"):
                w = 1.0 + 0.2 * rng.standard_normal(shape)
            elif name.endswith("conv.conv.weight"):
                w = 0.5 * rng.standard_normal(shape)
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                w = 0.3 * rng.standard_normal(shape)
            elif len(shape) == 2:
                w = rng.standard_normal(shape) / math.sqrt(shape[1])
            else:
                w = 0.1 * rng.standard_normal(shape)
            p.copy_(torch.from_numpy(w.astype(np.float32)))
    model = model.to(getattr(torch, dtype))

    save_kwargs = {}
    if shards > 1:
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        save_kwargs["max_shard_size"] = total // shards + 1
    model.save_pretrained(dir, **save_kwargs)
    if shards > 1 and not (dir / "model.safetensors.index.json").exists():
        raise RuntimeError(f"save_pretrained wrote a single file although {shards} shards were asked for")

    if config_style == "old":
        _rewrite_config_old_style(dir / "config.json")
    make_tokenizer(dir, vocab_size)
    return dir


def _rewrite_config_old_style(path: Path) -> None:
    """Turn a transformers-v5 config.json into the key style of the first LFM2 releases
    (as in /work/shared/lfm2-tokenizer/config.json)."""
    cfg = json.loads(path.read_text())
    layer_types = cfg.pop("layer_types")
    cfg["full_attn_idxs"] = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    cfg["block_ff_dim"] = cfg.pop("intermediate_size")
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg["tie_embedding"] = cfg.pop("tie_word_embeddings")
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    # Extra keys the old configs carry (unused by converters, present in the real files).
    cfg["block_dim"] = cfg["hidden_size"]
    cfg["conv_dim"] = cfg["hidden_size"]
    cfg["conv_dim_out"] = cfg["hidden_size"]
    cfg["block_norm_eps"] = cfg["norm_eps"]
    cfg["num_heads"] = cfg["num_attention_heads"]
    cfg["block_use_swiglu"] = True
    cfg["use_pos_enc"] = True
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2))


def hf_model(dir: Path):
    """Load a checkpoint folder with transformers: Lfm2ForCausalLM in eval mode, float32."""
    import torch
    from transformers import Lfm2ForCausalLM

    return Lfm2ForCausalLM.from_pretrained(Path(dir), dtype=torch.float32).eval()


def vocab_gguf(path: Path, tokenizer_dir: Path, vocab_size: int) -> Path:
    """A GGUF file holding only the tokenizer metadata written by lfm2q's add_vocab."""
    import gguf
    from lfm2q.convert.vocab import add_vocab

    writer = gguf.GGUFWriter(path, "lfm2")
    add_vocab(writer, Path(tokenizer_dir), vocab_size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
