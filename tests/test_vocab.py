"""convert/vocab.py: the GGUF tokenizer metadata written from HF tokenizer files.

The real LFM2 tokenizer (tests/data/lfm2-tokenizer) checks the counts against
docs/lfm2-facts.md §7; small hand-made tokenizer folders check the error paths and where the chat
template comes from.
The values are checked in the writer's key/value table; test_tokenizer.py reads a written file back.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from lfm2q.convert.vocab import add_vocab
from lfm2q.errors import ConvertError

LFM2_DIR = Path(__file__).parent / "data" / "lfm2-tokenizer"
VOCAB_SIZE = 65536  # LFM2 config.json: embedding rows; the tokenizer has 64,400 entries


def written(writer: gguf.GGUFWriter) -> dict:
    """Key -> value that add_vocab put into the writer (the file's KV section, before writing)."""
    return {key: v.value for key, v in writer.kv_data[0].items()}


@pytest.fixture(scope="module")
def lfm2_kv(tmp_path_factory) -> dict:
    writer = gguf.GGUFWriter(tmp_path_factory.mktemp("vocab") / "v.gguf", "lfm2")
    add_vocab(writer, LFM2_DIR, VOCAB_SIZE)
    return written(writer)


def test_lfm2_model_and_counts(lfm2_kv):
    assert lfm2_kv["tokenizer.ggml.model"] == "gpt2"
    assert lfm2_kv["tokenizer.ggml.pre"] == "lfm2"
    tokens, types = lfm2_kv["tokenizer.ggml.tokens"], lfm2_kv["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == VOCAB_SIZE
    assert types.count(gguf.TokenType.CONTROL) == 505
    assert types.count(gguf.TokenType.USER_DEFINED) == 2
    assert len(lfm2_kv["tokenizer.ggml.merges"]) == 63683


def test_lfm2_special_tokens(lfm2_kv):
    tokens, types = lfm2_kv["tokenizer.ggml.tokens"], lfm2_kv["tokenizer.ggml.token_type"]
    assert tokens[:8] == ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>",
                          "<|fim_suf|>", "<|im_start|>", "<|im_end|>"]
    assert (tokens[64011], types[64011]) == ("Mathias", gguf.TokenType.USER_DEFINED)
    assert (tokens[64014], types[64014]) == ("python", gguf.TokenType.USER_DEFINED)
    assert (tokens[64399], types[64399]) == ("<|file_end|>", gguf.TokenType.CONTROL)
    assert lfm2_kv["tokenizer.ggml.bos_token_id"] == 1
    assert lfm2_kv["tokenizer.ggml.eos_token_id"] == 7  # <|im_end|>, from tokenizer_config eos_token
    assert lfm2_kv["tokenizer.ggml.padding_token_id"] == 0
    assert lfm2_kv["tokenizer.ggml.add_bos_token"] is True
    assert lfm2_kv["tokenizer.ggml.add_eos_token"] is False


def test_lfm2_padding_rows_are_unused(lfm2_kv):
    tokens, types = lfm2_kv["tokenizer.ggml.tokens"], lfm2_kv["tokenizer.ggml.token_type"]
    unused = [i for i, t in enumerate(types) if t == gguf.TokenType.UNUSED]
    assert unused == list(range(64400, 65536))
    assert tokens[64400] == "[PAD64400]" and tokens[65535] == "[PAD65535]"


def test_lfm2_merges_and_template_match_the_files(lfm2_kv):
    hf = json.loads((LFM2_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    assert lfm2_kv["tokenizer.ggml.merges"] == [" ".join(pair) for pair in hf["model"]["merges"]]
    assert lfm2_kv["tokenizer.chat_template"] == (LFM2_DIR / "chat_template.jinja").read_text(encoding="utf-8")


# --- small hand-made tokenizer folders ---

def tiny_tokenizer(merges_as_pairs: bool = True) -> dict:
    """A 9-entry byte-level BPE tokenizer.json with LFM2's pre-tokenizer."""
    lfm2 = json.loads((LFM2_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {"<|pad|>": 0, "<|startoftext|>": 1, "<|im_end|>": 2, "a": 3, "b": 4, "Ġ": 5, "ab": 6, "Ġab": 7,
             "python": 8}
    merges = [["a", "b"], ["Ġ", "ab"]]
    added = [{"id": i, "content": t, "special": True} for t, i in list(vocab.items())[:3]]
    added.append({"id": 8, "content": "python", "special": False})
    return {
        "added_tokens": added,
        "pre_tokenizer": lfm2["pre_tokenizer"],
        "model": {"type": "BPE", "vocab": vocab,
                  "merges": merges if merges_as_pairs else [" ".join(m) for m in merges]},
    }


def make_dir(path: Path, tokenizer: dict | str | None, config: dict | None = None, jinja: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        text = tokenizer if isinstance(tokenizer, str) else json.dumps(tokenizer)
        (path / "tokenizer.json").write_text(text, encoding="utf-8")
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if jinja is not None:
        (path / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    return path


def run(hf_dir: Path, vocab_size: int = 16) -> dict:
    writer = gguf.GGUFWriter(hf_dir / "out.gguf", "lfm2")
    add_vocab(writer, hf_dir, vocab_size)
    return written(writer)


CONFIG = {"bos_token": "<|startoftext|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|pad|>"}


@pytest.mark.parametrize("as_pairs", [True, False])
def test_tiny_tokenizer(tmp_path, as_pairs):
    kv = run(make_dir(tmp_path, tiny_tokenizer(as_pairs), CONFIG))
    assert kv["tokenizer.ggml.merges"] == ["a b", "Ġ ab"]
    assert kv["tokenizer.ggml.token_type"][:10] == [3, 3, 3, 1, 1, 1, 1, 1, 4, 5]
    assert kv["tokenizer.ggml.tokens"][9:] == [f"[PAD{i}]" for i in range(9, 16)]
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert kv["tokenizer.ggml.add_bos_token"] is True  # the LFM2 default when the config is silent
    assert "tokenizer.chat_template" not in kv


def test_chat_template_sources(tmp_path):
    listed = {**CONFIG, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    assert run(make_dir(tmp_path / "list", tiny_tokenizer(), listed))["tokenizer.chat_template"] == "D"
    plain = {**CONFIG, "chat_template": "C"}
    assert run(make_dir(tmp_path / "plain", tiny_tokenizer(), plain))["tokenizer.chat_template"] == "C"
    both = make_dir(tmp_path / "both", tiny_tokenizer(), plain, jinja="J")
    assert run(both)["tokenizer.chat_template"] == "J"  # chat_template.jinja wins


def assert_one_line_naming(err: pytest.ExceptionInfo, name: str):
    message = str(err.value)
    assert "\n" not in message and name in message


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ConvertError) as err:
        run(make_dir(tmp_path, None, CONFIG))
    assert_one_line_naming(err, "tokenizer.json")


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_corrupt_json(tmp_path, name):
    hf_dir = make_dir(tmp_path, tiny_tokenizer(), CONFIG)
    (hf_dir / name).write_text('{"model": {"type": "BPE", ', encoding="utf-8")
    with pytest.raises(ConvertError) as err:
        run(hf_dir)
    assert_one_line_naming(err, name)


def test_vocab_larger_than_vocab_size(tmp_path):
    hf_dir = tmp_path / "lfm2"
    shutil.copytree(LFM2_DIR, hf_dir)
    with pytest.raises(ConvertError) as err:
        run(hf_dir, vocab_size=64000)
    assert_one_line_naming(err, "tokenizer.json")
    assert "64399" in str(err.value)


def test_non_bpe_model(tmp_path):
    tok = tiny_tokenizer()
    tok["model"]["type"] = "Unigram"
    with pytest.raises(ConvertError) as err:
        run(make_dir(tmp_path, tok, CONFIG))
    assert_one_line_naming(err, "tokenizer.json")
    assert "Unigram" in str(err.value)


def test_other_pre_tokenizer_is_refused(tmp_path):
    tok = tiny_tokenizer()
    tok["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    with pytest.raises(ConvertError) as err:
        run(make_dir(tmp_path, tok, CONFIG))
    assert_one_line_naming(err, "tokenizer.json")


def test_unknown_special_token(tmp_path):
    with pytest.raises(ConvertError) as err:
        run(make_dir(tmp_path, tiny_tokenizer(), {**CONFIG, "eos_token": "<|nope|>"}))
    assert_one_line_naming(err, "tokenizer_config.json")
