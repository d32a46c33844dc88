"""Conversation: the kept cache equals the re-rendered conversation turn after turn, context-full
policy, save/load, tool results, interrupted replies; Model.chat; perplexity against NumPy."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import lfm2q
from lfm2q.conversation import (ChatFileError, Conversation, Done, Notice, Reply, render_ids,
                                split_thinking)
from lfm2q.errors import GenerationError, Lfm2qError
from lfm2q.perplexity import perplexity
from lfm2q.sampling import SamplingParams

GREEDY = SamplingParams()  # no repetition penalty: a kept-cache turn must equal a stateless one
GREEDY_KW = dict(temperature=0.0, min_p=0.0, repetition_penalty=1.0)
LFM25_TEMPLATE = "/work/shared/reference/templates/LFM2.5-Instruct.jinja"
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def model(tiny_gguf):
    return lfm2q.load(tiny_gguf("f32"), n_ctx=1024)


def send_checked(conv: Conversation, text, notices: list | None = None):
    """One turn; at the first token the cache must hold exactly the re-rendered conversation."""
    expected = None
    reply = None
    for step in conv.send_stream(text):
        if isinstance(step, Notice) and notices is not None:
            notices.append(step)
        if expected is None and not isinstance(step, Notice):
            expected = render_ids(conv.model, conv.window(), conv.tools)
            assert conv.cached_tokens == expected
            assert conv.session.n_past == len(expected)
        if isinstance(step, Done):
            reply = step.reply
    return reply


def assert_state_is_fresh(conv: Conversation):
    """The session's state equals a fresh evaluation of its cached ids (conv windows and KV)."""
    probe = 42
    snap = conv.session.snapshot()
    kept = conv.session.eval([probe])
    conv.session.restore(snap)
    fresh = conv.model.logits(conv.cached_tokens + [probe])[-1]
    np.testing.assert_allclose(kept, fresh, rtol=1e-4, atol=1e-4)


def test_cache_equals_rerendered_conversation_over_turns(model):
    conv = Conversation(model, system="You are terse.", sampling=GREEDY, max_tokens=12)
    for i, question in enumerate(["hello there", "what is the weather like?", "and tomorrow", "thanks"]):
        before = conv.window() + [{"role": "user", "content": question}]
        reply = send_checked(conv, question)
        assert reply.result is not None and reply.finish_reason in ("stop", "length")
        assert conv.messages[-1] == {"role": "assistant", "content": reply.raw}
        # same reply as rendering the whole conversation into a fresh session
        assert model.chat(before, max_tokens=12, **GREEDY_KW).raw == reply.raw
        assert_state_is_fresh(conv)
        if i:
            assert conv.stats.last_prompt_reused > 0  # the earlier turns were not evaluated again
    assert conv.stats.turns == 4


def test_template_that_drops_past_thinking_rolls_back(model, tiny_gguf):
    m = lfm2q.load(tiny_gguf("f32"), n_ctx=1024)
    m.tokenizer.chat_template = open(LFM25_TEMPLATE).read()
    conv = Conversation(m, sampling=GREEDY, max_tokens=8)
    send_checked(conv, "first question")
    # as if the model had thought first: the template keeps this only while it is the last reply
    conv.messages[-1]["content"] = "<think>pondering it</think>" + conv.messages[-1]["content"]
    send_checked(conv, "second question")
    assert "pondering" in m.detokenize(conv.cached_tokens)
    before = conv.window() + [{"role": "user", "content": "third"}]
    reply = send_checked(conv, "third")  # the first reply's thinking leaves the rendering here
    assert "pondering" not in m.detokenize(conv.cached_tokens)
    assert m.chat(before, max_tokens=8, **GREEDY_KW).raw == reply.raw
    assert_state_is_fresh(conv)


def test_context_full_drops_oldest_turns_keeps_system(tiny_gguf):
    m = lfm2q.load(tiny_gguf("f32"), n_ctx=160)
    conv = Conversation(m, system="SYSTEM RULES", sampling=GREEDY, max_tokens=16)
    notices = []
    for i in range(8):
        events = []
        send_checked(conv, f"message number {i}: the quick brown fox jumps over the lazy dog", events)
        notices += [e.message for e in events if e.kind == "trimmed"]
        assert conv.last_reply.finish_reason in ("stop", "length", "context")
        assert conv.session.n_past <= m.n_ctx
        assert conv.window()[0] == {"role": "system", "content": "SYSTEM RULES"}
        assert conv.window()[1]["role"] == "user"
    assert notices and "left the context" in notices[0] and "system prompt stays" in notices[0]
    assert len(conv.messages) == 16  # the transcript keeps every message
    assert conv.stats.messages_in_context < 16
    assert_state_is_fresh(conv)

    # one message larger than the whole context: refused in one line, the chat goes on
    with pytest.raises(GenerationError) as e:
        conv.send("word " * 400)
    assert "\n" not in str(e.value) and "context" in str(e.value)
    assert conv.messages[-1]["role"] == "assistant"
    assert conv.send("short again").result is not None

    strict = Conversation(m, sampling=GREEDY, max_tokens=16, on_full="error")
    with pytest.raises(GenerationError):
        for i in range(8):
            strict.send(f"message number {i}: the quick brown fox jumps over the lazy dog")


def test_save_load_round_trip(model, tmp_path):
    settings = SamplingParams(temperature=0.0, top_k=5, seed=3)
    conv = Conversation(model, system="Sys.", tools=[WEATHER], sampling=settings, max_tokens=6)
    conv.send("one")
    conv.send("two")
    path = tmp_path / "chat.json"
    conv.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "lfm2q-chat" and len(data["messages"]) == 4

    again = Conversation.from_file(model, path)
    assert again.messages == conv.messages and again.system == "Sys." and again.tools == [WEATHER]
    assert again.sampling == settings and again.max_tokens == 6
    # a fresh conversation from the file continues exactly as the original does
    assert again.send("three").raw == conv.send("three").raw

    conv.load(path)  # back to two turns in the same conversation: the cache is reused
    conv.send("three")
    assert conv.stats.last_prompt_reused > 0
    assert_state_is_fresh(conv)

    for bad, why in [("not json", "invalid JSON"), ('{"format": "x"}', "not a saved lfm2q chat"),
                     ('{"format": "lfm2q-chat", "version": 1, "messages": [{"role": "bot", "content": "x"}]}',
                      "message 0")]:
        path.write_text(bad)
        with pytest.raises(ChatFileError, match=why) as e:
            conv.load(path)
        assert "\n" not in str(e.value)
    with pytest.raises(ChatFileError):
        conv.load(tmp_path / "missing.json")


def test_tool_result_flow(model):
    conv = Conversation(model, tools=[WEATHER], sampling=GREEDY, max_tokens=6)
    send_checked(conv, "weather in Paris?")
    conv.add_tool_result({"temperature": 21, "city": "Paris"})
    assert conv.messages[-1] == {"role": "tool", "content": '{"temperature": 21, "city": "Paris"}'}
    reply = send_checked(conv, None)  # the model answers the tool result
    assert reply.result is not None and conv.messages[-1]["role"] == "assistant"
    text = model.detokenize(conv.cached_tokens)
    assert '<|tool_response_start|>{"temperature": 21, "city": "Paris"}<|tool_response_end|>' in text
    assert "<|tool_list_start|>" in text and "get_weather" in text
    with pytest.raises(GenerationError, match="nothing to answer"):
        conv.send(None)


def test_reply_parses_thinking_and_tool_calls():
    r = Reply.from_text('<think>which tool?</think>\nSure. <|tool_call_start|>[get_weather(city="Paris"), '
                        'a.b(x=[1, {"k": null}])]<|tool_call_end|>')
    assert r.thinking == "which tool?" and r.text == "Sure. "
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("get_weather", {"city": "Paris"}),
                                                             ("a.b", {"x": [1, {"k": None}]})]
    assert split_thinking("<think>still going") == ("still going", "")
    assert split_thinking("plain") == (None, "plain")
    assert split_thinking("opened in the prompt</think> answer") == ("opened in the prompt", "answer")


def test_interrupted_reply_stays_and_cache_recovers(model):
    conv = Conversation(model, sampling=GREEDY, max_tokens=40)
    stream = conv.send_stream("count to a hundred")
    pieces = []
    for step in stream:
        pieces.append(step.text)
        if len(pieces) == 8:
            break
    stream.close()  # stopped between steps: the session stays as it is
    partial = "".join(pieces)
    assert conv.last_reply.interrupted and conv.last_reply.finish_reason == "interrupted"
    if partial:
        assert conv.messages[-1] == {"role": "assistant", "content": partial}
    assert conv.session.n_past == len(conv.cached_tokens)
    send_checked(conv, "go on")
    assert_state_is_fresh(conv)

    # Ctrl-C inside a step (here: the 3rd token's evaluation) may leave the state half-updated
    real_eval = conv.session.eval
    calls = {"n": 0}

    def flaky(ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_eval(ids)

    conv.session.eval = flaky
    with pytest.raises(KeyboardInterrupt):
        conv.send("again")
    conv.session.eval = real_eval
    assert conv.last_reply.interrupted
    assert conv.session.n_past == len(conv.cached_tokens)
    assert_state_is_fresh(conv)
    send_checked(conv, "once more")
    assert_state_is_fresh(conv)


def test_clear_and_set_system(model):
    conv = Conversation(model, system="A", sampling=GREEDY, max_tokens=4)
    conv.send("hi")
    conv.set_system("B")
    send_checked(conv, "hi again")  # the system prompt changed: nothing cached is reusable
    assert conv.stats.last_prompt_reused == 0
    conv.clear()
    assert conv.messages == [] and conv.session.n_past == 0 and conv.system == "B"
    send_checked(conv, "fresh")


def test_model_chat(model):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    reply = model.chat(msgs, max_tokens=5, **GREEDY_KW)
    assert reply.result.n_generated <= 5 and isinstance(reply.text, str)
    steps = list(model.chat_stream(msgs, max_tokens=5, **GREEDY_KW))
    assert isinstance(steps[-1], Done) and steps[-1].reply.raw == reply.raw
    assert "".join(s.text for s in steps) == reply.raw
    # the same prompt through generate: the template's BOS, no second one
    ids = render_ids(model, msgs)
    assert ids.count(model.tokenizer.bos_id) == 1
    assert model.generate(ids, max_tokens=5) == reply.raw
    with pytest.raises(Lfm2qError, match="unknown sampling option 'temp'"):
        model.chat(msgs, temp=1.0)
    with pytest.raises(Lfm2qError):
        model.chat(msgs, max_tokens=0)


def test_perplexity_matches_numpy(model):
    text = ("The quick brown fox jumps over the lazy dog. Bonjour le monde, merci beaucoup. "
            "def add(a, b):\n    return a + b\n") * 3
    ids = model.tokenize(text)
    n_ctx, stride = 32, 16
    r = perplexity(model, text, n_ctx=n_ctx, stride=stride)
    nll = []
    for start in range(0, len(ids) - n_ctx + 1, stride):
        window = list(ids[start:start + n_ctx])
        window[0] = model.tokenizer.bos_id
        logits = model.logits(window).astype(np.float64)  # [n_ctx, V]
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        for j in range(n_ctx // 2, n_ctx - 1):
            nll.append(-logp[j, window[j + 1]])
    nll = np.array(nll)
    assert r.n_scored == len(nll) and r.n_windows == (len(ids) - n_ctx) // stride + 1
    assert r.ppl == pytest.approx(math.exp(nll.mean()), rel=1e-4)
    assert r.ppl_stderr == pytest.approx(math.exp(nll.mean()) * nll.std() / math.sqrt(len(nll) - 1), rel=1e-3)
    with pytest.raises(GenerationError, match="shorter than one"):
        perplexity(model, "short", n_ctx=64)
