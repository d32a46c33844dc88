"""HF tokenizer files -> GGUF tokenizer metadata, written the way llama.cpp's converter does for LFM2.

llama.cpp (`convert_hf_to_gguf.py` `_set_vocab_gpt2` + gguf-py `SpecialVocab`) stores a byte-level BPE
vocabulary as: model "gpt2", pre "lfm2" (the Llama-3 split regex), one token string and one token type
per embedding row, merges as "a b" strings, special ids, add_bos/add_eos and the chat template. We read
tokenizer.json as plain JSON rather than through transformers so conversion needs no model code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from lfm2q.errors import ConvertError

# The Split regex of LFM2's pre-tokenizer; identical to Llama-3's, which llama.cpp selects with pre "lfm2".
# Any other regex would tokenize differently at run time, so we refuse it instead of writing a wrong file.
LFM2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TOKENIZER_PRE = "lfm2"


def add_vocab(writer: gguf.GGUFWriter, hf_dir: Path, vocab_size: int) -> None:
    """Write tokenizer.ggml.* and tokenizer.chat_template for the HF checkpoint in `hf_dir`.

    `vocab_size` is the number of embedding rows (config.json); the token list is padded to it with
    "[PAD{id}]" entries of type UNUSED, as llama.cpp does, so token ids and embedding rows line up.
    """
    hf_dir = Path(hf_dir)
    tok_path = hf_dir / "tokenizer.json"
    tok = _read_json(tok_path, required=True)
    cfg_path = hf_dir / "tokenizer_config.json"
    cfg = _read_json(cfg_path, required=False) or {}

    model = tok.get("model") if isinstance(tok, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise ConvertError(f"{tok_path}: no model.vocab; is this a Hugging Face tokenizer.json?")
    if model.get("type") != "BPE":
        raise ConvertError(f"{tok_path}: tokenizer model is {model.get('type')!r}, only byte-level 'BPE' is supported")
    _check_pre_tokenizer(tok, tok_path)

    tokens, types = _tokens_and_types(tok, tok_path, vocab_size)
    merges = _merges(model.get("merges"), tok_path)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(TOKENIZER_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    token_ids = {t: i for i, t in enumerate(tokens)}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        token_id = _special_id(cfg.get(key), token_ids, cfg_path, key)
        if token_id is not None:
            add(token_id)
    # llama.cpp adds BOS for pre "lfm2" whatever the config says; the HF post-processor does too.
    writer.add_add_bos_token(bool(cfg.get("add_bos_token", True)))
    writer.add_add_eos_token(bool(cfg.get("add_eos_token", False)))

    template = _chat_template(hf_dir, cfg, cfg_path)
    if template is not None:
        writer.add_chat_template(template)


def _read_json(path: Path, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise ConvertError(f"{path}: file not found; the checkpoint folder needs its tokenizer files")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); re-download it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: cannot read it ({e}); check the file") from None


def _check_pre_tokenizer(tok: dict, path: Path) -> None:
    # The runtime rebuilds Split(regex, Isolated) + ByteLevel(use_regex=False); check the file is exactly that.
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    byte_level = any(s.get("type") == "ByteLevel" for s in steps)
    if not byte_level or regexes != [LFM2_SPLIT_REGEX]:
        raise ConvertError(f"{path}: pre-tokenizer is not LFM2's (Llama-3 split regex + ByteLevel); not supported")


def _tokens_and_types(tok: dict, path: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    by_id: dict[int, str] = {}
    for text, i in tok["model"]["vocab"].items():
        by_id[int(i)] = text
    added = {}
    for a in tok.get("added_tokens") or []:
        by_id[int(a["id"])] = a["content"]
        added[int(a["id"])] = a
    if by_id and max(by_id) >= vocab_size:
        raise ConvertError(f"{path}: token id {max(by_id)} does not fit vocab_size {vocab_size} from config.json")

    tokens, types = [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            # Embedding rows the tokenizer never produces: keep ids aligned with rows, mark them unused.
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            # Like llama.cpp: special added tokens, and ones that look like "<|...|>", are control tokens.
            control = added[i].get("special", False) or (text.startswith("<|") and text.endswith("|>"))
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _merges(merges: Any, path: Path) -> list[str]:
    if not isinstance(merges, list):
        raise ConvertError(f"{path}: model.merges is missing; a BPE tokenizer needs its merges")
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m):
            # Newer tokenizer.json stores pairs so parts may contain spaces; the GGUF format is "a b",
            # so a literal space becomes U+0120 as gguf-py's SpecialVocab does (byte-level text never has one).
            out.append(" ".join(s.replace(" ", "\u0120") for s in m))
        else:
            raise ConvertError(f"{path}: model.merges entry {m!r} is neither 'a b' nor ['a', 'b']")
    return out


def _special_id(value: Any, token_ids: dict[str, int], path: Path, key: str) -> int | None:
    if isinstance(value, dict):  # older configs store {"content": "<|...|>", "__type": "AddedToken", ...}
        value = value.get("content")
    if value is None:
        return None
    if value not in token_ids:
        raise ConvertError(f"{path}: {key} {value!r} is not in the vocabulary of tokenizer.json")
    return token_ids[value]


def _chat_template(hf_dir: Path, cfg: dict, cfg_path: Path) -> str | None:
    # chat_template.jinja is what transformers itself saves now, so it wins over the older config field.
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = cfg.get("chat_template")
    if template is None:
        legacy = _read_json(hf_dir / "chat_template.json", required=False)
        template = legacy.get("chat_template") if isinstance(legacy, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise ConvertError(f"{cfg_path}: chat_template is a {type(template).__name__}, expected a string")
    return template
