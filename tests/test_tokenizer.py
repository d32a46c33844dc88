"""lfm2q/tokenizer.py against the HF `tokenizers` reference, through a real GGUF round trip.

Once per module: the real LFM2 tokenizer files (tests/data/lfm2-tokenizer) -> add_vocab -> a GGUF file
-> GGUFReader -> read_tokenizer_fields -> Tokenizer. Every sample must give the ids HF gives from
tokenizer.json itself (its post-processor prepends BOS, as ours does).
"""
from __future__ import annotations

import random
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer as HFTokenizer

from hf_fixtures import vocab_gguf
from lfm2q.errors import TokenizerError
from lfm2q.tokenizer import Tokenizer, read_tokenizer_fields

LFM2_DIR = Path(__file__).parent / "data" / "lfm2-tokenizer"

SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:45 p.m. on Tuesday!",
    "arabic": "مرحبا بالعالم، كيف حالك اليوم؟ أنا بخير شكراً.",
    "chinese": "你好，世界！今天天气很好，我们去公园散步吧。",
    "french": "Ça va très bien, merci ! L'été dernier, nous sommes allés à Montréal.",
    "german": "Größenwahnsinnige Straßenbahnfahrer überqueren die Brücke.",
    "japanese": "こんにちは、世界。東京タワーは高いです。カタカナとひらがな。",
    "korean": "안녕하세요, 세계! 오늘 날씨가 정말 좋네요.",
    "spanish": "¿Dónde está la biblioteca? ¡Mañana será otro día, señor Muñoz!",
    "code": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    if a:\n\treturn a + b  # tab\n    return {'k': [1, 2]}\n",
    "emoji": "Family 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵🇺🇸, skin 👍🏽, plain 😀🎉 and ❤️ done",
    "whitespace": "a  b   c    d\n\n\ne \n \n\t \r\n  trailing   ",
    "numbers": "1 12 123 1234 12345 1234567 3.14159 -42 1,000,000 0x1F",
    "contractions": "I'll go, you'd say, DON'T stop, she's here, we've WON'T it's I'M",
    "chat": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "user_defined": "Mathias writes python; pythonic Mathias.",
    "empty": "",
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    path = vocab_gguf(tmp_path_factory.mktemp("tok") / "vocab.gguf", LFM2_DIR, 65536)
    from lfm2q.gguf_reader import GGUFReader as OurReader  # gguf-py's takes seconds on 65k tokens
    return Tokenizer.from_gguf_fields(OurReader(path).tokenizer_fields())


@pytest.mark.slow  # gguf-py's reader takes ~30 s on a 65k vocabulary; tests/test_gguf_reader.py does a small one
def test_fields_from_our_reader_equal_gguf_py(tok, tmp_path):
    # lfm2q's own header reader must hand the tokenizer exactly what gguf-py reads.
    from lfm2q.gguf_reader import GGUFReader as OurReader
    path = vocab_gguf(tmp_path / "vocab.gguf", LFM2_DIR, 65536)
    ours = OurReader(path).tokenizer_fields()
    theirs = read_tokenizer_fields(gguf.GGUFReader(path))
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert list(ours[k]) == list(theirs[k]) if isinstance(ours[k], list) else ours[k] == theirs[k], k


@pytest.fixture(scope="module")
def hf() -> HFTokenizer:
    return HFTokenizer.from_file(str(LFM2_DIR / "tokenizer.json"))


@pytest.mark.parametrize("name", SAMPLES)
def test_ids_match_hf(tok, hf, name):
    text = SAMPLES[name]
    assert tok.encode(text) == hf.encode(text).ids
    assert tok.encode(text, add_bos=False) == hf.encode(text, add_special_tokens=False).ids


def test_random_mixtures_match_hf(tok, hf):
    # Seeded shuffles of the samples' pieces: pre-token boundaries the fixed samples don't hit.
    rng = random.Random(0)
    pieces = " ".join(SAMPLES.values()).split(" ") + [" ", "\n", "\t", "  ", "'s", "123"]
    for _ in range(200):
        text = "".join(rng.choice(pieces) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 12)))
        assert tok.encode(text) == hf.encode(text).ids, repr(text)


@pytest.mark.parametrize("name", SAMPLES)
def test_decode_round_trips(tok, hf, name):
    text = SAMPLES[name]
    assert tok.decode(tok.encode(text, add_bos=False)) == text
    ids = tok.encode(text)
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False)
    assert tok.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True)


def test_stream_matches_decode_without_broken_characters(tok):
    ids = tok.encode("".join(SAMPLES.values()))
    # The test only means something if some token ends inside a UTF-8 character.
    assert any(not _is_utf8(tok.token_bytes(i)) for i in ids)
    decoder = tok.stream()
    pieces = [decoder.step(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + decoder.flush() == tok.decode(ids)


def test_stream_holds_a_split_character_until_complete(tok):
    # "😀" is four bytes; feed them as four single-byte tokens.
    byte_ids = _single_byte_ids(tok, "😀".encode())
    decoder = tok.stream()
    assert [decoder.step(i) for i in byte_ids] == ["", "", "", "😀"]
    decoder = tok.stream()
    assert decoder.step(byte_ids[0]) == "" and decoder.flush() == "\ufffd"  # generation ended mid-character


def test_stream_skip_special(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    decoder = tok.stream(skip_special=True)
    assert "".join(decoder.step(i) for i in ids) == "user\nhi" == tok.decode(ids, skip_special=True)


def test_bos_added_once(tok):
    assert (tok.bos_id, tok.add_bos) == (1, True)
    assert tok.encode("Hello") == [1, 36309]
    assert tok.encode("Hello", add_bos=False) == [36309]
    assert tok.encode("") == [1]
    # A rendered chat template already starts with <|startoftext|>: no second BOS.
    assert tok.encode("<|startoftext|><|im_start|>user\n") == [1, 6] + tok.encode("user\n", add_bos=False)


def test_special_tokens_and_vocab(tok):
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (7, 0, 65536)
    assert tok.token_to_id("<|im_end|>") == 7 and tok.id_to_token(6) == "<|im_start|>"
    assert tok.token_to_id("<think>") is None  # not an LFM2 token
    assert tok.is_control(7) and not tok.is_control(64014) and not tok.is_control(1000)
    assert tok.encode("<|im_end|>", add_bos=False) == [7]
    assert tok.chat_template == (LFM2_DIR / "chat_template.jinja").read_text(encoding="utf-8")


def test_unused_rows_keep_their_ids_but_are_never_produced(tok):
    assert tok.id_to_token(64400) == "[PAD64400]" and tok.id_to_token(65535) == "[PAD65535]"
    assert tok.decode([64400, 65535]) == ""
    assert max(tok.encode("[PAD64400] [PAD65535]")) < 64400


def test_no_bos_when_the_file_says_so():
    fields = _tiny_fields()
    fields["tokenizer.ggml.add_bos_token"] = False
    assert Tokenizer.from_gguf_fields(fields).encode("ab") == [6]


@pytest.mark.parametrize(("key", "value"), [("tokenizer.ggml.model", "llama"), ("tokenizer.ggml.model", "bert"),
                                            ("tokenizer.ggml.pre", "qwen2"), ("tokenizer.ggml.pre", None)])
def test_unsupported_model_or_pre(key, value):
    fields = {**_tiny_fields(), key: value}
    with pytest.raises(TokenizerError, match=repr(value).replace("(", r"\(")):
        Tokenizer.from_gguf_fields(fields)


def _tiny_fields() -> dict:
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "lfm2",
            "tokenizer.ggml.tokens": ["<|pad|>", "<|startoftext|>", "<|im_end|>", "a", "b", "Ġ", "ab"],
            "tokenizer.ggml.token_type": [3, 3, 3, 1, 1, 1, 1], "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _single_byte_ids(tok: Tokenizer, data: bytes) -> list[int]:
    """Ids of the single-byte tokens spelling `data` (every byte-level vocabulary has all 256)."""
    by_bytes = {tok.token_bytes(i): i for i in range(tok.vocab_size) if len(tok.id_to_token(i)) == 1}
    return [by_bytes[bytes([b])] for b in data]
