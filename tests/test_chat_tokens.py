"""Rendered chats become the same token ids as transformers' apply_chat_template gives, on the
real LFM2 tokenizer: our template rendering, then our tokenizer built from a GGUF vocabulary."""
from __future__ import annotations

from pathlib import Path

import pytest

from lfm2q.chat import render_chat
from lfm2q.gguf_reader import GGUFReader
from lfm2q.tokenizer import Tokenizer
from hf_fixtures import vocab_gguf
from test_chat import CONVERSATIONS, TEMPLATES

LFM2_DIR = Path(__file__).parent / "data" / "lfm2-tokenizer"


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Tokenizer:
    path = vocab_gguf(tmp_path_factory.mktemp("vocab") / "vocab.gguf", LFM2_DIR, 65536)
    return Tokenizer.from_gguf_fields(GGUFReader(path).tokenizer_fields())


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=str(LFM2_DIR / "tokenizer.json"),
                                   bos_token="<|startoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>")


@pytest.mark.parametrize("template", ["LFM2.jinja", "LFM2.5-Instruct.jinja"])
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
def test_chat_ids_equal_transformers(ours, hf_tokenizer, template, conv):
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    messages, tools = CONVERSATIONS[conv]
    want = hf_tokenizer.apply_chat_template(messages, tools=tools, chat_template=text,
                                            add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
    rendered = render_chat(text, messages, tools=tools, add_generation_prompt=True)
    got = ours.encode(rendered)  # the template writes BOS; encode must not add a second
    assert got == list(want)
    assert got.count(ours.bos_id) == 1
