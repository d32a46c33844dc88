"""The generation loop with a scripted fake session and a byte-piece fake tokenizer."""
from __future__ import annotations

import codecs

import numpy as np
import pytest

from lfm2q.errors import GenerationError
from lfm2q.generate import GenerationResult, Step, generate_stream, generate_text
from lfm2q.sampling import SamplingParams
from lfm2q.toolcalls import parse_tool_calls

SPECIAL = {0: "<|pad|>", 1: "<|startoftext|>", 2: "<|endoftext|>", 6: "<|im_start|>", 7: "<|im_end|>",
           10: "<|tool_call_start|>", 11: "<|tool_call_end|>", 14: "<|reserved_4|>"}
V = 64


class FakeTokenizer:
    """ids 0-14: special tokens; ids 15+: byte strings added on demand by `piece(...)`."""

    def __init__(self, eos_id: int = 2):
        self.eos_id = eos_id
        self.pieces: dict[int, bytes] = {}

    def piece(self, b: bytes | str) -> int:
        b = b.encode() if isinstance(b, str) else b
        for i, p in self.pieces.items():
            if p == b:
                return i
        i = 15 + len(self.pieces)
        assert i < V
        self.pieces[i] = b
        return i

    def ids(self, *pieces) -> list[int]:
        return [self.piece(p) if isinstance(p, (str, bytes)) else p for p in pieces]

    def encode(self, text, add_bos=True):
        return ([1] if add_bos else []) + [self.piece(ch) for ch in text]

    def decode(self, ids):
        return b"".join(self.pieces.get(i, SPECIAL.get(i, "").encode()) for i in ids).decode("utf-8", "replace")

    def stream(self):
        tok = self

        class Stream:
            dec = codecs.getincrementaldecoder("utf-8")()

            def step(self, i):
                return self.dec.decode(tok.pieces.get(i, b"?"))

        return Stream()

    def token_to_id(self, s):
        return next((i for i, n in SPECIAL.items() if n == s), None)

    def is_control(self, i):
        return i in SPECIAL


class FakeSession:
    """Greedy decoding of it yields `script` in order (the last entry repeats); it never overflows."""

    def __init__(self, script: list[int], n_ctx: int = 1000, alt: int | None = None):
        self.script, self.n_ctx, self.alt = script, n_ctx, alt
        self.n_past = 0
        self.evals: list[list[int]] = []

    def eval(self, ids):
        assert ids and self.n_past + len(ids) <= self.n_ctx, "context overflow"
        self.n_past += len(ids)
        self.evals.append(list(ids))
        k = len(self.evals) - 1  # 0 after the prompt
        logits = np.zeros(V, dtype=np.float32)
        logits[self.script[min(k, len(self.script) - 1)]] = 10.0
        if self.alt is not None:
            logits[self.alt] = 5.0
        return logits

    def reset(self):
        self.n_past = 0


def run(script_pieces, stop=None, max_tokens=100, n_ctx=1000, tok=None, prompt=None, **kw):
    tok = tok or FakeTokenizer()
    script = tok.ids(*script_pieces)
    session = FakeSession(script, n_ctx)
    steps = list(generate_stream(session, tok, prompt or [1, 6], max_tokens=max_tokens, stop=stop, **kw))
    return steps, steps[-1].result, session


def test_pieces_concatenate_and_eos_stops():
    steps, r, session = run(["Hel", "lo", ",", " world", 7, "never"])
    assert isinstance(r, GenerationResult) and isinstance(steps[0], Step)
    assert "".join(s.text for s in steps) == r.text == "Hello, world"
    assert r.finish_reason == "stop" and r.stopped_by == "<|im_end|>"
    assert r.tokens[-1] == 7 and r.n_generated == len(r.tokens) == 5
    assert [s.token_id for s in steps] == r.tokens + [None]
    assert r.n_prompt == 2 and session.n_past == 2 + 4  # the end token is not evaluated
    assert r.prompt_seconds >= 0 and r.decode_seconds >= 0 and r.tokens_per_s >= 0


@pytest.mark.parametrize("end", [2, 7])
def test_end_tokens(end):
    _, r, _ = run(["a", end, "b"])
    assert r.text == "a" and r.finish_reason == "stop"


def test_tokenizer_eos_and_stop_ids():
    tok = FakeTokenizer(eos_id=14)
    _, r, _ = run(["a", 14, "b"], tok=tok)
    assert r.text == "a" and r.finish_reason == "stop"
    tok = FakeTokenizer()
    x = tok.piece("x")
    _, r, _ = run(["a", "x", "b"], tok=tok, stop_ids={x})
    assert r.text == "a" and r.tokens == tok.ids("a", "x")


def test_stop_string_split_across_tokens_never_shows():
    steps, r, _ = run(["Hel", "lo ", "ST", "O", "P", " more"], stop=["STOP"])
    assert r.text == "Hello " and r.finish_reason == "stop" and r.stopped_by == "STOP"
    assert all("S" not in s.text for s in steps)
    assert "".join(s.text for s in steps) == r.text


def test_held_text_released_when_no_stop_follows():
    steps, r, _ = run(["a S", "T", "x", "ST", 7], stop=["STOP"])
    texts = [s.text for s in steps]
    assert texts[:3] == ["a ", "", "STx"]  # "S", "ST" held, then released
    assert r.text == "a STxST" and "".join(texts) == r.text  # held "ST" flushed at the end


def test_stop_string_inside_one_token_and_earliest_wins():
    _, r, _ = run(["one two three", "x"], stop=["three", "two"])
    assert r.text == "one " and r.stopped_by == "two"
    _, r, _ = run(["abc", "de"], stop=["cd", "bcdX"])
    assert r.text == "ab" and r.stopped_by == "cd"


def test_max_tokens():
    _, r, session = run(["a", "b", "c", "d"], max_tokens=3)
    assert r.text == "abc" and r.finish_reason == "length" and r.n_generated == 3
    assert session.n_past == 2 + 2
    steps, r, session = run(["a"], max_tokens=0)
    assert r.tokens == [] and r.text == "" and r.finish_reason == "length" and len(steps) == 1
    assert session.n_past == 2  # the prompt is still evaluated


def test_max_tokens_flushes_held_text():
    _, r, _ = run(["x", "ST"], max_tokens=2, stop=["STOP"])
    assert r.text == "xST" and r.finish_reason == "length"


def test_context_full_finishes_cleanly():
    prompt = [1, 6, 6]
    steps, r, session = run(["a", "b", "c", "d", "e", "f"], n_ctx=6, prompt=prompt)
    assert r.finish_reason == "context"
    assert session.n_past == 6 and r.text == "abcd" and r.n_generated == 4
    # a prompt that fills the context exactly still gives one token
    _, r, session = run(["a", "b"], n_ctx=3, prompt=prompt)
    assert r.finish_reason == "context" and r.text == "a" and session.n_past == 3


def test_argument_errors_at_call_time():
    tok, s = FakeTokenizer(), FakeSession([15])
    with pytest.raises(GenerationError, match="max_tokens=-1"):
        generate_stream(s, tok, [1], max_tokens=-1)
    with pytest.raises(GenerationError, match="empty prompt"):
        generate_stream(s, tok, [])
    with pytest.raises(GenerationError, match=r"prompt is 11 tokens .* room for 10") as e:
        generate_stream(FakeSession([15], n_ctx=10), tok, [1] * 11)
    assert "\n" not in str(e.value)
    s2 = FakeSession([15], n_ctx=10)
    s2.n_past = 8  # earlier turns already in the session
    with pytest.raises(GenerationError, match=r"prompt is 3 tokens but the context has room for 2 \(n_ctx 10, 8 in use\)"):
        generate_stream(s2, tok, [1, 2, 3])
    with pytest.raises(GenerationError, match="stop="):
        generate_stream(s, tok, [1], stop=[1])
    assert s.evals == []
    _, r, _ = run(["a", "STOP", "b"], stop="STOP")  # one string is one stop string
    assert r.text == "a" and r.stopped_by == "STOP"


def test_control_tokens_silent_markup_kept():
    steps, r, _ = run(["Sure.", 14, 10, "[f(a=", '"x")]', 11, 0, 7])
    assert r.text == 'Sure.<|tool_call_start|>[f(a="x")]<|tool_call_end|>'
    text, calls, warnings = parse_tool_calls(r.text)
    assert text == "Sure." and calls[0].name == "f" and calls[0].arguments == {"a": "x"} and not warnings


def test_utf8_split_across_tokens():
    e_acute = "é".encode()
    steps, r, _ = run(["caf", e_acute[:1], e_acute[1:], 7])
    assert [s.text for s in steps[:3]] == ["caf", "", "é"]
    assert r.text == "café"


def test_generate_text_and_sampling_settings():
    tok = FakeTokenizer()
    script = tok.ids("a", "b", 7)
    r = generate_text(FakeSession(script), tok, [1], max_tokens=10)
    assert r.text == "ab" and r.finish_reason == "stop"
    # the repetition penalty sees the prompt: the scripted token is in it, so the alternative wins
    alt = tok.piece("z")
    r = generate_text(FakeSession(script, alt=alt), tok, [1] + script[:1], max_tokens=1,
                      sampling=SamplingParams(repetition_penalty=4.0))
    assert r.text == "z"
    # seeded sampling is reproducible through the loop
    runs = [generate_text(FakeSession(script, alt=alt), tok, [1], max_tokens=5,
                          sampling=SamplingParams(temperature=5.0, seed=3)).tokens for _ in range(2)]
    assert runs[0] == runs[1]


def test_context_ids_count_for_the_repetition_penalty():
    # A kept-cache chat turn feeds only its new tokens; with context_ids the penalty window is
    # what it would be had the whole sequence been fed at once.
    tok = FakeTokenizer()
    a, b = tok.piece("a"), tok.piece("b")
    penalised = SamplingParams(repetition_penalty=4.0)  # 10/4 < 5: a seen token loses to `alt`
    first = lambda **kw: next(iter(generate_stream(FakeSession([a], alt=b), tok, [1, 6],
                                                  max_tokens=1, sampling=penalised, **kw))).token_id
    assert first() == a
    assert first(context_ids=[1, a, 6]) == b
