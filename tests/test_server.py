"""`lfm2q serve`: the OpenAI API over HTTP, with the real `openai` client and plain httpx, against a
server on a free loopback port (uvicorn in a thread of this process) serving the built-in model.

The built-in toy model writes what it writes; to check tool calls and reasoning end to end, the
model's choices are driven: `scripted(text)` replaces the sampler inside generate.py so the model
"samples" the tokens of `text`, then its end token. Everything else (rendering, the session and
its cache, decoding, parsing, the HTTP layer) runs as in production.
"""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

import lfm2q
from lfm2q import generate as generate_module
from lfm2q.conversation import Reply

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from lfm2q.server.app import create_app  # noqa: E402
from lfm2q.server.engine import Engine  # noqa: E402
from lfm2q.server.tools import DeltaStream, pythonic_block, streamed_text  # noqa: E402
from lfm2q.toolcalls import parse_tool_calls  # noqa: E402

API_KEY = "sk-test-key"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture(scope="module")
def server():
    model = lfm2q.load(lfm2q.builtin_model_path(), n_ctx=512)
    engine = Engine(model, "lfm2q-tiny")
    config = uvicorn.Config(create_app(engine, api_key=API_KEY), host="127.0.0.1", port=0, log_level="warning",
                            access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    srv.base = f"http://127.0.0.1:{port}"
    srv.engine = engine
    yield srv
    srv.should_exit = True
    thread.join(timeout=10)
    engine.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0)


def post(server, path, body, key=API_KEY, timeout=60):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.base + path, content=content, headers=headers, timeout=timeout)


class _Scripted:
    """A Sampler stand-in that picks the tokens of a text, then the end token (or `forever`)."""

    ids: list[int] = []
    end: int = 7
    forever: int | None = None
    hold: threading.Event | None = None  # when set up: every token after the first waits for it

    def __init__(self, params):
        self.i = 0
        self.n = 0

    def sample(self, logits, recent_ids=(), allowed=None):
        self.n += 1
        if self.hold is not None and self.n > 1:
            self.hold.wait(30)
        if self.i < len(self.ids):
            self.i += 1
            return self.ids[self.i - 1]
        return self.end if self.forever is None else self.forever


@pytest.fixture
def scripted(server, monkeypatch):
    tok = server.engine.model.tokenizer

    def script(text: str | None = None, forever: int | None = None):
        _Scripted.ids = tok.encode(text, add_bos=False) if text else []
        _Scripted.end = tok.token_to_id("<|im_end|>")
        _Scripted.forever = forever
        _Scripted.hold = None
        monkeypatch.setattr(generate_module, "Sampler", _Scripted)
    return script


# --- chat ----------------------------------------------------------------------------------

def test_chat_stream_matches_non_stream_and_usage(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the river."}]
    r = client.chat.completions.create(model="lfm2q-tiny", messages=msgs, max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and text
    u = r.usage
    assert u.completion_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    ids = lfm2q.conversation.render_ids(client_model(client), msgs)
    assert u.prompt_tokens == len(ids)

    chunks = list(client.chat.completions.create(model="lfm2q-tiny", messages=msgs, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens


_MODEL = {}


def client_model(client):
    return _MODEL["model"]


@pytest.fixture(autouse=True)
def _model(server):
    _MODEL["model"] = server.engine.model


def test_sse_wire_format(server):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions(client, server):
    r = client.completions.create(model="lfm2q-tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
    m = server.engine.model
    assert r.choices[0].text == m.generate("Once upon a time", max_tokens=12)  # greedy: the same text
    assert r.usage.prompt_tokens == len(m.tokenize("Once upon a time"))
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="x", prompt="Once upon a time", max_tokens=12, temperature=0, stream=True))
    assert streamed == r.choices[0].text
    r = client.completions.create(model="x", prompt="Once upon a time", max_tokens=40, temperature=0, stop=[","])
    assert "," not in r.choices[0].text


def test_seed_and_penalties(client):
    ask = dict(model="x", prompt="Once upon a time", max_tokens=16, temperature=1.0, top_p=0.95,
               extra_body={"min_p": 0.0})
    a = client.completions.create(seed=42, **ask).choices[0].text
    assert client.completions.create(seed=42, **ask).choices[0].text == a  # the same seed, the same text
    assert len({client.completions.create(seed=s, **ask).choices[0].text for s in (1, 2, 3)} | {a}) > 1


def test_presence_and_frequency_penalties_as_llama_cpp():
    import numpy as np

    from lfm2q.sampling import Sampler, SamplingParams

    rng = np.random.default_rng(0)
    logits = rng.normal(size=50).astype(np.float32)
    recent = [3, 3, 3, 7, 9, 9]
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    want = logits.copy()
    for tid, count in ((3, 3), (7, 1), (9, 2)):
        want[tid] -= 0.5 + 0.25 * count
    np.testing.assert_allclose(Sampler(p)._penalized(logits, recent), want, rtol=0, atol=1e-6)
    with pytest.raises(lfm2q.GenerationError, match="presence_penalty=3"):
        SamplingParams(presence_penalty=3)


def test_prompt_cache_reuse(client):
    msgs = [{"role": "user", "content": "Tell me a story about a fox."}]
    first = client.chat.completions.create(model="x", messages=msgs, max_tokens=16, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0 or first.usage.prompt_tokens_details.cached_tokens >= 0
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model="x", messages=msgs, max_tokens=8, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # the first prompt at least came from the cache (and the reply, when it re-tokenizes the same)
    assert cached >= first.usage.prompt_tokens
    assert cached < second.usage.prompt_tokens


# --- tools and reasoning ---------------------------------------------------------------------

def test_tools_are_rendered_into_the_template(server):
    ids = lfm2q.conversation.render_ids(server.engine.model, [{"role": "user", "content": "Weather?"}], [WEATHER])
    text = server.engine.model.detokenize(ids)
    assert 'List of tools: <|tool_list_start|>[{"type": "function", "function": {"name": "get_weather"' in text


def test_tool_calls_round_trip(client, scripted):
    raw = '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>Checking.'
    scripted(raw)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="x", messages=msgs, tools=[WEATHER], max_tokens=64)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = msg.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"} and msg.content == "Checking."

    scripted(raw)  # streamed: the same call, as a tool_calls delta
    chunks = list(client.chat.completions.create(model="x", messages=msgs, tools=[WEATHER], max_tokens=64,
                                                 stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == \
        [(0, "get_weather", {"city": "Paris"})]
    assert "".join(d.content or "" for d in deltas) == "Checking."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    scripted("It is sunny in Paris.")  # the call and its result go back in
    prompt_before = r.usage.prompt_tokens
    back = msgs + [{"role": "assistant", "content": msg.content, "tool_calls": [call.model_dump()]},
                   {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
    r2 = client.chat.completions.create(model="x", messages=back, tools=[WEATHER], max_tokens=64)
    assert r2.choices[0].message.content == "It is sunny in Paris." and r2.choices[0].finish_reason == "stop"
    # the call was written back as the model wrote it: the whole earlier reply came from the cache
    assert r2.usage.prompt_tokens_details.cached_tokens >= prompt_before + len(
        client_model(client).tokenize(raw, add_bos=False)) - 1


def test_reasoning_content(client, scripted):
    scripted("<think>The user greets me.</think>Hello!")
    msgs = [{"role": "user", "content": "Hi"}]
    m = client.chat.completions.create(model="x", messages=msgs, max_tokens=64).choices[0].message
    assert m.content == "Hello!" and m.model_extra["reasoning_content"] == "The user greets me."
    scripted("<think>The user greets me.</think>Hello!")
    deltas = [c.choices[0].delta for c in client.chat.completions.create(model="x", messages=msgs, max_tokens=64,
                                                                          stream=True) if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "The user greets me."
    assert "".join(d.content or "" for d in deltas) == "Hello!"


@pytest.mark.parametrize("raw", [
    "plain text only",
    "<think>plan</think>\n\nanswer <b>bold</b>",
    '<|tool_call_start|>[f(a=1), g(b="x")]<|tool_call_end|>after',
    'before <|tool_call_start|>[not a call<|tool_call_end|> after',
    '<|tool_call_start|>[f(a=1)] junk<|tool_call_end|>',
    "<think>never closed",
    '<|tool_call_start|>[f(a=1)]',
])
def test_stream_deltas_add_up_to_the_whole_parse(raw):
    whole = Reply.from_text(raw)
    for step in (1, 2, 5):
        ds = DeltaStream()
        deltas = [d for i in range(0, len(raw), step) for d in ds.feed(raw[i:i + step])] + ds.finish(whole)
        assert (streamed_text(deltas, "content") or "") == whole.text
        assert streamed_text(deltas, "reasoning_content") == (whole.thinking or None)
        calls = [c for d in deltas for c in d.get("tool_calls", [])]
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
            [(c.name, c.arguments) for c in whole.tool_calls]


def test_pythonic_block_parses_back():
    calls = [("get_weather", {"city": "Zürich \"centre\"", "days": 3, "metric": True, "extra": None,
                              "tags": ["a", 1.5], "opts": {"k": False}})]
    _, parsed, warnings = parse_tool_calls(pythonic_block(calls))
    assert not warnings and [(c.name, c.arguments) for c in parsed] == calls


# --- one engine, a queue, cancelling -----------------------------------------------------------

def test_health_and_models_answer_during_a_generation(server, scripted):
    scripted(forever=server.engine.model.tokenize("a", add_bos=False)[0])
    body = {"messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 400, "stream": True}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        t = time.perf_counter()
        health = httpx.get(server.base + "/health", timeout=5).json()
        models = httpx.get(server.base + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
        assert time.perf_counter() - t < 2
        assert health["status"] == "ok" and health["busy"] is True
        assert models.json()["data"][0]["id"] == "lfm2q-tiny"
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert _last_job(server, "Go on forever.").finish == "length"


def _last_job(server, first_message: str):
    """The engine's record of the latest job that began with `first_message`, once it is done."""
    deadline = time.time() + 20
    while time.time() < deadline:
        done = [j for j in server.engine.finished
                if getattr(j.request, "messages", [{}])[0].get("content") == first_message]
        if done and server.engine.busy is None:
            return done[-1]
        time.sleep(0.02)
    raise AssertionError(f"no finished job for {first_message!r}")


def test_disconnect_stops_within_one_token(server, scripted):
    scripted(forever=server.engine.model.tokenize("a", add_bos=False)[0])
    body = {"messages": [{"role": "user", "content": "Never stop."}], "max_tokens": 450, "stream": True}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    job = _last_job(server, "Never stop.")
    assert job.finish == "cancelled" and job.produced < 450
    assert job.tokens_after_cancel is not None and job.tokens_after_cancel <= 1
    # and the server goes on serving
    assert post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 2}).status_code == 200


def test_a_queued_request_whose_client_left_never_runs(server, scripted):
    scripted(forever=server.engine.model.tokenize("a", add_bos=False)[0])
    _Scripted.hold = hold = threading.Event()  # the first job stays busy until the queued one is given up
    body = {"messages": [{"role": "user", "content": "Hold the engine."}], "max_tokens": 300, "stream": True}
    try:
        with httpx.stream("POST", server.base + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            with pytest.raises(httpx.TimeoutException):  # gives up while queued behind the stream
                post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Impatient."}]},
                     timeout=0.3)
            deadline = time.time() + 20  # the server polls for gone clients every 0.25 s
            while not any(j.cancelled.is_set() and j.request.messages[0]["content"] == "Impatient."
                          for j in list(server.engine._jobs.queue) if j is not None):
                assert time.time() < deadline, "the queued request of a gone client was never cancelled"
                time.sleep(0.02)
            assert server.engine.busy is not None  # still behind the first job
            hold.set()
            rest = [line for line in lines if line]
    finally:
        hold.set()
    assert rest[-1] == "data: [DONE]"
    job = _last_job(server, "Impatient.")
    assert job.finish == "cancelled" and job.produced == 0


def test_concurrent_requests_queue_in_order(client, server):
    results, threads = {}, []

    def ask(i):
        r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": f"Question {i}?"}],
                                           max_tokens=6, temperature=0)
        results[i] = r.choices[0].message.content

    for i in range(3):
        threads.append(threading.Thread(target=ask, args=(i,)))
        threads[-1].start()
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [0, 1, 2]
    _last_job(server, "Question 2?")
    done = [j.request.messages[-1]["content"] for j in server.engine.finished[-3:]]
    assert done == ["Question 0?", "Question 1?", "Question 2?"]


# --- errors ----------------------------------------------------------------------------------

def _error(r, status=400):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_bad_requests_get_openai_errors(server):
    chat = "/v1/chat/completions"
    user = [{"role": "user", "content": "Hi"}]
    assert _error(post(server, chat, b"{not json"))["type"] == "invalid_request_error"
    e = _error(post(server, chat, {"messages": [{"role": "wizard", "content": "Hi"}]}))
    assert e["param"] == "messages[0].role" and e["code"] == "invalid_value" and "'wizard'" in e["message"]
    e = _error(post(server, chat, {"messages": user, "temperature": "hot"}))
    assert e == {"message": "Invalid type for 'temperature': expected a number, but got a string instead.",
                 "type": "invalid_request_error", "param": "temperature", "code": "invalid_type"}
    e = _error(post(server, chat, {"messages": user, "n": 2}))
    assert e["param"] == "n" and "n=1" in e["message"]
    e = _error(post(server, chat, {"messages": [{"role": "user", "content": "word " * 600}]}))
    assert e["code"] == "context_length_exceeded" and "context holds 512" in e["message"]
    e = _error(post(server, chat, {"messages": user, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "not": {"required": ["a"]}}}}}))
    assert e["param"] == "response_format" and "not" in e["message"] and "\n" not in e["message"]
    e = _error(post(server, chat, {"messages": user, "response_format": {"type": "xml"}}))
    assert e["param"] == "response_format"
    e = _error(post(server, chat, {"messages": user, "tool_choice": {"type": "function", "function": {"name": "nope"}},
                                   "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}))
    assert e["param"] == "tool_choice"
    assert post(server, chat, {"messages": user, "max_tokens": 2, "response_format": {"type": "text"}}).status_code == 200
    e = _error(post(server, "/v1/completions", {"prompt": 5}))
    assert e["param"] == "prompt" and e["code"] == "invalid_type"
    # the server is still serving
    assert post(server, chat, {"messages": user, "max_tokens": 2}).status_code == 200


def test_api_key(server):
    user = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert _error(post(server, "/v1/chat/completions", user, key=None), 401)["code"] == "invalid_api_key"
    assert _error(post(server, "/v1/chat/completions", user, key="wrong"), 401)["code"] == "invalid_api_key"
    assert httpx.get(server.base + "/v1/models", timeout=5).status_code == 401
    assert httpx.get(server.base + "/health", timeout=5).status_code == 200  # health stays open, as llama-server's


def test_one_log_line_per_request(server, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lfm2q.server"):
        post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        post(server, "/v1/chat/completions", b"nope")
        deadline = time.time() + 5  # the line is written once the response has gone out
        while time.time() < deadline and len([r for r in caplog.records if r.name == "lfm2q.server"]) < 2:
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "lfm2q.server"]
    assert len(lines) == 2
    assert '"POST /v1/chat/completions" 200' in lines[0] and "prompt" in lines[0] and "completion" in lines[0]
    assert '"POST /v1/chat/completions" 400' in lines[1] and "JSON" in lines[1]


# --- the command -----------------------------------------------------------------------------

def test_lfm2q_serve_command(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LFM2Q_API_KEY": "k-123"}
    proc = subprocess.Popen([sys.executable, "-m", "lfm2q", "serve", "--port", str(port), "--ctx", "256"],
                            env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        c = openai.OpenAI(base_url=base + "/v1", api_key="k-123", max_retries=0)
        assert c.models.list().data[0].id == "lfm2q-tiny-q4_k_m"  # the built-in model, by its file name
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert r.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
        # the same port again: a one-line error before loading anything
        busy = subprocess.run([sys.executable, "-m", "lfm2q", "serve", "--port", str(port)], capture_output=True,
                              text=True, timeout=60)
        assert busy.returncode == 1 and busy.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    log = [line for line in err.splitlines() if '"POST /v1/chat/completions"' in line or '"GET /v1/models"' in line]
    assert len(log) == 3 and " 200 " in log[1] and " 401 " in log[2], err


def test_response_format_json_schema_gives_valid_json(client):
    # The built-in demo model writes nonsense unconstrained; constrained, every reply parses
    # and validates, greedy and sampled, streamed and not (constrain.py via structured.py).
    import jsonschema

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    msgs = [{"role": "user", "content": "Extract: Ada Lovelace, 36"}]
    for kw in ({"temperature": 0}, {"temperature": 0.8, "seed": 3}):
        r = client.chat.completions.create(model="lfm2q-tiny", messages=msgs, response_format=fmt,
                                           max_tokens=120, **kw)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="lfm2q-tiny", messages=msgs, response_format=fmt, max_tokens=120, temperature=0, stream=True))
    greedy = client.chat.completions.create(model="lfm2q-tiny", messages=msgs, response_format=fmt,
                                            max_tokens=120, temperature=0)
    assert streamed == greedy.choices[0].message.content
    r = client.chat.completions.create(model="lfm2q-tiny", messages=msgs, response_format={"type": "json_object"},
                                       max_tokens=120, temperature=0)
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_tool_choice_required_always_returns_a_call(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"]}}}]
    r = client.chat.completions.create(model="lfm2q-tiny", messages=[{"role": "user", "content": "Weather?"}],
                                       tools=tools, tool_choice="required", max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
