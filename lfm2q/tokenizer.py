"""The runtime tokenizer, rebuilt from a GGUF file's tokenizer.ggml.* metadata.

A GGUF file carries the vocabulary the way llama.cpp stores it (see convert/vocab.py): one token string
and one type per embedding row, and merges as "a b" strings. From those we rebuild exactly what the HF
tokenizer.json of LFM2 describes, with the `tokenizers` library doing the BPE:
Split(Llama-3 regex, isolated) -> ByteLevel -> BPE, control tokens matched whole before any of it.
Decoding is done here over token bytes, so that streaming and whole-sequence decoding agree byte for byte.
"""

from __future__ import annotations

import codecs
from itertools import repeat
from operator import methodcaller
from collections.abc import Iterable
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lfm2q.errors import TokenizerError

# llama.cpp token types (gguf-py constants.TokenType).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# Llama-3's pre-tokenizer split; llama.cpp uses it for every `pre` below, LFM2's tokenizer.json too.
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE = ("lfm2", "llama-bpe", "llama3", "llama-v3")

# The GGUF keys a Tokenizer is built from; the loader reads only these.
TOKENIZER_KEYS = (
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template",
)


def read_tokenizer_fields(reader: gguf.GGUFReader) -> dict[str, Any]:
    """GGUF key -> Python value (str, int, bool, list) for the TOKENIZER_KEYS present in `reader`."""
    # ReaderField.contents() decodes a 65k-string array in ~0.1 s; the cost of opening a GGUF file is
    # GGUFReader() itself, which is the loader's.
    return {key: reader.fields[key].contents() for key in TOKENIZER_KEYS if key in reader.fields}


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are shifted to U+0100+
    # so that every token is a printable string ("Ġ" is a space, "Ċ" a newline).
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table


def _bad_merge(m: str):
    raise TokenizerError(f"tokenizer.ggml.merges: entry {m!r} is not 'a b'; the file is damaged")


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary. Build with `Tokenizer.from_gguf_fields`."""

    def __init__(self, tokens: list[str], types: list[int], merges: list[str], *, bos_id: int | None,
                 eos_id: int | None, pad_id: int | None, add_bos: bool, chat_template: str | None):
        self._tokens = tokens          # [V] token text: byte-level for NORMAL, literal for CONTROL/USER_DEFINED
        self._types = types            # [V] llama.cpp token type
        self._bytes: list[bytes | None] = [None] * len(tokens)  # [V] filled lazily by token_bytes()
        self._byte_of = _byte_decoder()
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.add_bos = add_bos
        self.chat_template = chat_template

        # Lowest id wins should a text repeat; unused "[PAD…]" rows stay in the vocabulary so ids keep their
        # place, and are never produced: BPE only reaches multi-character tokens through merges.
        # (Built from the end so that the lowest id is the one kept: at C speed, on the path to the first token.)
        vocab = dict(zip(reversed(tokens), range(len(tokens) - 1, -1, -1)))
        # The first space from position 1 separates the parts, as in llama.cpp (a part may start with one).
        pairs = list(map(tuple, map(str.split, merges, repeat(" "), repeat(1))))  # C-speed fast path
        if min(map(len, pairs), default=2) < 2 or any(map(methodcaller("startswith", " "), merges)):
            pairs = [(m[0] + a, b) for m in merges for a, space, b in (m[1:].partition(" "),)
                     if space or _bad_merge(m)]
        # ignore_merges=False as in LFM2's tokenizer.json (llama.cpp sets it; ids differ only in rare cases).
        try:
            hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, byte_fallback=False, ignore_merges=False))
        except Exception as e:  # tokenizers raises a bare Exception, e.g. a merge of unknown tokens
            raise TokenizerError(f"tokenizer.ggml.merges do not fit tokenizer.ggml.tokens "
                                 f"({str(e).splitlines()[0][:120]})") from None
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        # Added tokens are matched in the raw text before pre-tokenization, so "<|im_end|>" is one token.
        hf.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                               for i, t in enumerate(types) if t == CONTROL])
        hf.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                       for i, t in enumerate(types) if t == USER_DEFINED])
        self._hf = hf

    @classmethod
    def from_gguf_fields(cls, fields: dict[str, Any]) -> Tokenizer:
        """Build from GGUF key -> value (as `read_tokenizer_fields` returns)."""
        model = fields.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise TokenizerError(f"tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE, as LFM2 uses) "
                                 "is supported")
        pre = fields.get("tokenizer.ggml.pre")
        if pre not in SUPPORTED_PRE:
            raise TokenizerError(f"tokenizer.ggml.pre is {pre!r}; supported: {', '.join(SUPPORTED_PRE)}")
        tokens = list(fields.get("tokenizer.ggml.tokens") or [])
        types = [int(t) for t in fields.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)]
        merges = list(fields.get("tokenizer.ggml.merges") or [])
        if not tokens or not merges:
            raise TokenizerError("tokenizer.ggml.tokens/merges are missing or empty; reconvert the model")
        if len(types) != len(tokens):
            raise TokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens; "
                                 "reconvert the model")
        ids = {}
        for name in ("bos", "eos", "padding"):
            value = fields.get(f"tokenizer.ggml.{name}_token_id")
            if value is not None and not 0 <= int(value) < len(tokens):
                raise TokenizerError(f"tokenizer.ggml.{name}_token_id {value} is outside the vocabulary")
            ids[name] = None if value is None else int(value)
        # llama.cpp adds BOS for LFM2 unless the file says otherwise.
        return cls(tokens, types, merges, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["padding"],
                   add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", True)),
                   chat_template=fields.get("tokenizer.chat_template"))

    # --- text -> ids ---

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in it ("<|im_start|>") become their ids."""
        try:
            ids = self._hf.encode(text, add_special_tokens=False).ids
        except TypeError:  # tokenizers refuses str with lone surrogates (undecodable bytes)
            bad = next((i for i, ch in enumerate(text) if 0xD800 <= ord(ch) <= 0xDFFF), -1)
            raise TokenizerError(f"text is not UTF-8 (an undecodable character at position {bad}) "
                                 "— give UTF-8 text") from None
        # Chat templates already write the BOS token; never start with two.
        if add_bos and self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids

    # --- ids -> text ---

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (may be part of a UTF-8 character); b"" for unused rows."""
        cached = self._bytes[token_id]
        if cached is None:
            text, kind = self._tokens[token_id], self._types[token_id]
            if kind == NORMAL:
                try:
                    cached = bytes(self._byte_of[c] for c in text)
                except KeyError:  # checked here, not at load: 65k tokens would slow every start
                    raise TokenizerError(f"tokenizer.ggml.tokens[{token_id}] {text!r} has a character outside "
                                         "the byte-level alphabet — the file's vocabulary is damaged") from None
            elif kind == UNUSED:
                cached = b""
            else:  # control and user-defined tokens are stored as literal text, as llama.cpp prints them
                cached = text.encode("utf-8")
            self._bytes[token_id] = cached
        return cached

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        data = b"".join(self.token_bytes(i) for i in ids if not (skip_special and self.is_control(i)))
        return data.decode("utf-8", errors="replace")

    def stream(self, skip_special: bool = False) -> StreamDecoder:
        """A decoder fed one id at a time that only ever returns whole characters."""
        return StreamDecoder(self, skip_special)

    # --- vocabulary ---

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def token_to_id(self, text: str) -> int | None:
        return self._hf.token_to_id(text)

    def id_to_token(self, token_id: int) -> str:
        return self._tokens[token_id]

    def is_control(self, token_id: int) -> bool:
        return self._types[token_id] == CONTROL


class StreamDecoder:
    """Incremental decode: a character split across tokens comes out once its last byte arrives."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        # errors="replace" matches decode(): a byte that can never become valid is emitted as U+FFFD at once.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        """Text completed by `token_id`, "" while a character is still incomplete."""
        if self._skip_special and self._tokenizer.is_control(token_id):
            return ""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """At the end of generation: the held-back bytes of an unfinished character, as U+FFFD."""
        return self._utf8.decode(b"", final=True)
