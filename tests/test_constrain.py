"""Structured output (lfm2q/constrain.py): every constrained output parses and validates.

Two kinds of model: the built-in one (a trained toy) and a random-weight fixture model, which
writes garbage unless constrained. Greedy and sampled decoding, several seeds. The models run
on one thread here: at this size, two threads spend more time waiting on each other.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re

import jsonschema
import numba
import numpy as np
import pytest
from rich.console import Console

import lfm2q
from lfm2q import constrain
from lfm2q.builtin import builtin_model_path
from lfm2q.cli import run_cli
from lfm2q.constrain import ConstraintError
from lfm2q.conversation import Conversation, Done
from lfm2q.errors import Lfm2qError
from lfm2q.generate import generate_stream, generate_text
from lfm2q.repl import Repl
from lfm2q.sampling import Sampler, SamplingParams
from structured_schemas import SCHEMAS

PROMPT = "Extract the data as JSON:"
SEEDS = (0, 1)
DECODINGS = [None, *SEEDS]  # None: greedy


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.fixture(scope="module")
def builtin():
    return lfm2q.load(builtin_model_path(), n_ctx=256)


@pytest.fixture(scope="module")
def random_model(tiny_gguf):
    return lfm2q.load(tiny_gguf("f32"), n_ctx=1024)


@pytest.fixture(params=["builtin", "random_model"])
def model(request):
    return request.getfixturevalue(request.param)


def sampling(seed):
    # temperature 1 with nothing cut: the widest draw, so sampled runs wander the most
    return SamplingParams() if seed is None else SamplingParams(temperature=1.0, seed=seed)


def run(model, constraint, seed=None, max_tokens=150, prompt=PROMPT):
    return generate_text(model.session(), model.tokenizer, model.tokenize(prompt), max_tokens=max_tokens,
                         sampling=sampling(seed), constraint=constraint)


# --- JSON schemas ------------------------------------------------------------------------------

def test_there_are_twenty_schemas_from_real_use():
    assert len(SCHEMAS) >= 20
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_output_validates(model, name):
    schema = SCHEMAS[name]
    c = constrain.json_schema(schema, model.tokenizer)
    for seed in DECODINGS:
        r = run(model, c, seed)
        assert r.finish_reason == "stop", (seed, r.text)
        jsonschema.validate(json.loads(r.text), schema)


def test_greedy_under_a_mask_is_deterministic(builtin):
    c = constrain.json_schema(SCHEMAS["recipe"], builtin.tokenizer)
    a, b = run(builtin, c), run(builtin, c)
    assert a.tokens == b.tokens and a.text == b.text


def test_unconstrained_random_model_writes_no_json(random_model):
    # the point of the random model: without the mask its output is not JSON
    r = run(random_model, None, max_tokens=40)
    with pytest.raises(ValueError):
        json.loads(r.text)


def test_json_object_response_format(model):
    c = constrain.from_response_format({"type": "json_object"}, model.tokenizer)
    # any object: random text keys never end by themselves, so check what can be: a prefix
    r = run(model, c, max_tokens=60)
    assert r.text.startswith("{")
    if r.finish_reason == "stop":
        assert isinstance(json.loads(r.text), dict)


def test_streaming_yields_the_non_streaming_text(builtin, random_model):
    for m in (builtin, random_model):
        for seed in DECODINGS:
            kw = dict(max_tokens=120, json_schema=SCHEMAS["invoice_items"], temperature=0 if seed is None else 1.0,
                      seed=seed)
            assert "".join(m.generate(PROMPT, stream=True, **kw)) == m.generate(PROMPT, **kw)


def test_cut_by_max_tokens_is_length_and_the_partial_text(builtin):
    c = constrain.json_schema({"type": "object", "properties": {"story": {"type": "string"}},
                               "required": ["story"]}, builtin.tokenizer)
    r = run(builtin, c, max_tokens=12)
    assert r.finish_reason == "length" and r.n_generated == 12
    assert r.text == builtin.detokenize(r.tokens) and r.text.startswith('{"story": "')


# --- the mask in the sampler, and where end tokens may come ------------------------------------

def test_mask_comes_before_every_other_filter():
    logits = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], dtype=np.float32)
    allowed = np.array([False, False, True, False, True, True])
    for params in (SamplingParams(), SamplingParams(temperature=1.0, top_k=1, seed=0),
                   SamplingParams(temperature=1.0, top_p=0.1, seed=0),
                   SamplingParams(temperature=1.0, min_p=0.9, seed=0)):
        # top_k=1 / top_p / min_p alone would keep only id 0; after the mask they keep id 2
        assert Sampler(params).sample(logits, (), allowed) == 2
    # the penalty works on the masked logits: id 2 penalized below id 4? (3/10 = 0.3 < 1)
    assert Sampler(SamplingParams(repetition_penalty=10.0)).sample(logits, [2], allowed) == 4
    ids, p = Sampler(SamplingParams(temperature=1.0)).distribution(logits, (), allowed)
    assert sorted(ids.tolist()) == [2, 4, 5] and abs(p.sum() - 1) < 1e-9
    draws = {Sampler(SamplingParams(temperature=5.0, seed=s)).sample(logits, (), allowed) for s in range(50)}
    assert draws <= {2, 4, 5} and len(draws) == 3
    # logits rows past the tokenizer's vocabulary (a shorter mask) are never picked
    wide = np.concatenate([logits, np.float32([50.0, 60.0])])
    assert Sampler(SamplingParams()).sample(wide, (), allowed) == 2


class EndLovingSession:
    """A model that always wants to stop: the end token has the largest logit."""

    def __init__(self, vocab: int, end_id: int) -> None:
        self.n_past, self.n_ctx, self.vocab, self.end_id = 0, 512, vocab, end_id

    def eval(self, ids):
        self.n_past += len(ids)
        x = np.linspace(0, 1, self.vocab, dtype=np.float32)
        x[self.end_id] = 100.0
        return x


def test_end_tokens_only_where_the_grammar_may_end(builtin):
    tok = builtin.tokenizer

    def gen(pattern):
        return generate_text(EndLovingSession(builtin.config.n_vocab, tok.eos_id), tok, [1, 2], max_tokens=20,
                             constraint=constrain.regex(pattern, tok))

    # (ab)+ may end after "ab": the model gets its end token right there, not before
    r = gen(r"(ab)+")
    assert r.text == "ab" and r.finish_reason == "stop" and r.tokens[-1] == tok.eos_id
    # [a-z]{3} cannot go on after 3 letters: generation stops there without asking the model
    r = gen(r"[a-z]{3}")
    assert re.fullmatch(r"[a-z]{3}", r.text) and r.finish_reason == "stop" and r.stopped_by is None
    assert tok.eos_id not in r.tokens


# --- regex and Lark ----------------------------------------------------------------------------

REGEXES = [r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r"#[0-9a-f]{6}", r"(yes|no|maybe)", r"\+33 [0-9]{9}",
           r"[A-Z][a-z]{2,6} [A-Z][a-z]{2,6}", r"([0-9]{1,3}\.){3}[0-9]{1,3}"]


def test_regex_outputs_match(model):
    for pattern in REGEXES:
        c = constrain.regex(pattern, model.tokenizer)
        for seed in DECODINGS:
            r = run(model, c, seed, max_tokens=40)
            assert r.finish_reason == "stop" and re.fullmatch(pattern, r.text), (pattern, seed, r.text)


ARITHMETIC = r"""
start: expr
expr: term (("+" | "-") term)*
term: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"""
CSV = r"""
start: row ("\n" row){1,2}
row: cell ("," cell){2}
cell: WORD | INT
WORD: /[a-z]{1,6}/
INT: /[0-9]{1,4}/
"""


def test_lark_outputs_match(model):
    csv_row = r"([a-z]{1,6}|[0-9]{1,4})(,([a-z]{1,6}|[0-9]{1,4})){2}"
    for seed in DECODINGS:
        r = run(model, constrain.grammar(ARITHMETIC, model.tokenizer), seed, max_tokens=60)
        if r.finish_reason == "stop":  # a balanced sum of numbers: Python computes it
            assert re.fullmatch(r"[0-9()+\-]+", r.text), r.text
            assert isinstance(eval(re.sub(r"\b0+(?=[0-9])", "", r.text), {}), int), r.text
        else:  # cut short: still a prefix of one, brackets never closed early
            assert re.fullmatch(r"[0-9()+\-]*", r.text) and _never_negative_depth(r.text), r.text
        r = run(model, constrain.grammar(CSV, model.tokenizer), seed, max_tokens=100)  # <= 62 characters
        assert r.finish_reason == "stop" and re.fullmatch(f"{csv_row}(\\n{csv_row}){{1,2}}", r.text), r.text


def _never_negative_depth(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return True


def test_gbnf_grammar(builtin):
    c = constrain.grammar('root ::= "x=" [0-9] [0-9]', builtin.tokenizer, syntax="gbnf")
    assert re.fullmatch(r"x=[0-9]{2}", run(builtin, c, 0, max_tokens=10).text)


# --- forced tool calls -------------------------------------------------------------------------

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                         "unit": {"enum": ["c", "f"]}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "search.web", "parameters": {
        "type": "object", "properties": {"query": {"type": "string", "maxLength": 10},
                                         "limit": {"type": "integer", "minimum": 1, "maximum": 5},
                                         "safe": {"type": "boolean"},
                                         "sites": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                                   "maxItems": 2}},
        "required": ["query", "safe"]}}},
    {"name": "ping", "parameters": {"type": "object", "properties": {}}},
]
SCHEMA_OF = {(t.get("function") or t)["name"]: (t.get("function") or t)["parameters"] for t in TOOLS}


def _check_calls(reply, names=None):
    assert reply.finish_reason == "stop" and reply.warnings == [] and reply.tool_calls, reply.raw
    assert reply.text == ""
    for call in reply.tool_calls:
        assert call.name in (names or SCHEMA_OF), call
        jsonschema.validate(call.arguments, SCHEMA_OF[call.name])  # names and types as declared


def test_tool_choice_required_always_parses(random_model):
    for seed in DECODINGS:
        conv = Conversation(random_model, tools=TOOLS, sampling=sampling(seed), max_tokens=600)
        reply = conv.send("What's the weather in Paris?", tool_choice="required")
        _check_calls(reply)
        assert 1 <= len(reply.tool_calls) <= constrain.MAX_CALLS
        # the call went into the transcript as written, and the next turn can run free
        assert conv.messages[-1]["content"].startswith("<|tool_call_start|>[")


def test_tool_choice_one_function(random_model):
    choice = {"type": "function", "function": {"name": "search.web"}}
    for seed in DECODINGS:
        reply = random_model.chat([{"role": "user", "content": "find cats"}], TOOLS, tool_choice=choice,
                                  max_tokens=200, **dataclasses.asdict(sampling(seed)))
        _check_calls(reply, names={"search.web"})
        assert len(reply.tool_calls) == 1 and {"query", "safe"} <= set(reply.tool_calls[0].arguments)


def test_tool_grammar_arguments_in_order_optional_ones_may_be_missing(random_model):
    c = constrain.tool_calls(TOOLS, random_model.tokenizer, names=["get_weather"])
    tok = random_model.tokenizer
    for body, ok in (('[get_weather(city="Oslo")]', True), ('[get_weather(city="Oslo", unit="f")]', True),
                     ('[get_weather(city="Oslo", days=3, unit="c"), get_weather(city="x")]', True),
                     ('[get_weather(days=3)]', False), ('[get_weather(city=3)]', False),
                     ('[get_weather(unit="c", city="Oslo")]', False), ('[ping()]', False)):
        guide = c.guide([tok.eos_id])
        ids = tok.encode("<|tool_call_start|>" + body + "<|tool_call_end|>", add_bos=False)
        accepted = all(guide.allowed()[i] and (guide.advance(i) or True) for i in ids)
        assert accepted == ok and (guide.finished if ok else True), body


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(json_schema={"type": "strnig"}), ["JSON schema", "strnig"]),
    (dict(json_schema={"type": "object", "not": {"required": ["a"]}}), ["not", "does not support"]),
    (dict(json_schema={"type": "integer", "minimum": 5, "maximum": 2}), ["minimum", "maximum"]),
    (dict(json_schema={"$ref": "#/$defs/missing"}), ["missing"]),
    (dict(json_schema="{not json"), ["not valid JSON"]),
    (dict(json_schema=[1, 2]), ["JSON object"]),
    (dict(regex="a(b"), ["unclosed group"]),
    (dict(regex=r"(?<=a)b"), ["look-around", "does not support"]),
    (dict(grammar="start: foo"), ["unknown name", "foo"]),
    (dict(grammar="start: ("), ["grammar"]),
    (dict(regex="a", grammar='start: "a"'), ["at most one"]),
])
def test_bad_constraint_is_one_line_before_any_token(builtin, kwargs, words):
    with pytest.raises(Lfm2qError) as e:
        builtin.generate(PROMPT, stream=True, **kwargs)  # raised by the call, not by iterating
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_response_format_and_tool_choice_shapes(builtin, random_model):
    tok = builtin.tokenizer
    assert constrain.from_response_format(None, tok) is None
    assert constrain.from_response_format({"type": "text"}, tok) is None
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMAS["person"], "strict": True}}
    assert constrain.from_response_format(fmt, tok).kind == "json_schema"
    for bad, words in (({"type": "xml"}, ["response_format"]), ("yaml", ["response_format"]),
                       ({"type": "json_schema"}, ["json_schema"]),
                       ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "nope"}}},
                        ["'p'", "nope"])):
        with pytest.raises(ConstraintError) as e:
            constrain.from_response_format(bad, tok)
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    rtok = random_model.tokenizer
    assert constrain.from_tool_choice("auto", TOOLS, rtok) is None
    assert constrain.from_tool_choice(None, TOOLS, rtok) is None
    assert constrain.from_tool_choice("required", TOOLS, rtok).kind == "grammar"
    for choice, tools, words in (("required", None, ["needs tools"]),
                                 ({"type": "function", "function": {"name": "nope"}}, TOOLS, ["'nope'"]),
                                 ("always", TOOLS, ["tool_choice"]),
                                 ("required", [{"name": "f", "parameters": {"properties": {"class": {}}}}],
                                  ["'class'", "Python name"]),
                                 ("required", [{"name": "bad-name"}], ["bad-name"])):
        with pytest.raises(ConstraintError) as e:
            constrain.from_tool_choice(choice, tools, rtok)
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_constraint_from_another_tokenizer_is_refused(builtin, random_model):
    c = constrain.regex("a", builtin.tokenizer)
    with pytest.raises(Lfm2qError, match="another model"):
        generate_stream(random_model.session(), random_model.tokenizer, [1], constraint=c)


# --- Conversation, CLI, REPL -------------------------------------------------------------------

def test_conversation_response_format(builtin):
    conv = Conversation(builtin, max_tokens=60, sampling=SamplingParams(temperature=1.0, seed=3))
    fmt = {"type": "json_schema", "json_schema": {"name": "sentiment", "schema": SCHEMAS["sentiment"]}}
    reply = conv.send("I loved it", response_format=fmt)
    jsonschema.validate(json.loads(reply.text), SCHEMAS["sentiment"])
    reply = conv.send("And this?", response_format="json")  # the cache is reused across turns
    assert reply.text.startswith("{")
    assert reply.finish_reason in ("length", "context") or isinstance(json.loads(reply.text), dict)
    with pytest.raises(ConstraintError):
        conv.send("x", response_format={"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}})
    assert conv.messages[-1]["role"] == "assistant"  # the refused message was never added


def test_cli_json_schema_and_errors(capsys, tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMAS["person"]))
    code = run_cli(["generate", "-p", "Bob is 42.", "--chat", "--json-schema", str(schema), "-n", "80", "-q",
                    "--ctx", "256"])
    out, _ = capsys.readouterr()
    assert code == 0
    jsonschema.validate(json.loads(out), SCHEMAS["person"])
    code = run_cli(["generate", "-p", "Day:", "--regex", "(mon|tues)day", "-q", "--temperature", "1", "--seed", "1",
                    "--ctx", "256"])
    assert code == 0 and capsys.readouterr()[0].strip() in ("monday", "tuesday")
    (tmp_path / "bad.json").write_text('{"type": "object", "not": {}}')
    (tmp_path / "g.lark").write_text("start: nothing_here\n")
    for args, words in ((["--json-schema", str(tmp_path / "bad.json")], ["bad.json", "not"]),
                        (["--json-schema", str(tmp_path / "missing.json")], ["missing.json"]),
                        (["--grammar", str(tmp_path / "g.lark")], ["g.lark", "nothing_here"]),
                        (["--regex", "(", "--json-schema", str(schema)], ["at most one"])):
        code = run_cli(["generate", "-p", "x", "--ctx", "256", *args])
        _, err = capsys.readouterr()
        assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and all(w in err for w in words), err


def test_repl_format_command(builtin, tmp_path):
    out = io.StringIO()
    repl = Repl(Conversation(builtin, max_tokens=100), Console(file=out, width=200))
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMAS["review"]))
    repl.command(f"/format {schema}")
    repl.turn("Review this phone")
    jsonschema.validate(json.loads(repl.conv.last_reply.text), SCHEMAS["review"])
    repl.command("/format off")
    assert repl.format is None
    with pytest.raises(Lfm2qError):
        repl.command("/format")
