"""Fuzzing the tool-call parser with random and adversarial model output (hypothesis).

The parser reads text a model wrote, which a prompt injection can steer: it must never raise,
never evaluate anything, keep every byte of text it does not turn into calls, and stay fast on
deep nesting and long blocks. `make fuzz` runs these with many more examples
(HYPOTHESIS_PROFILE=fuzz).
"""
from __future__ import annotations

import json
import keyword
import math
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfm2q.toolcalls import TOOL_CALL_END, TOOL_CALL_START, ToolCall, parse_tool_calls

settings.register_profile("default", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(PROFILE)
ROUND_TRIPS = 5_000 if PROFILE == "fuzz" else 60  # each builds and parses up to 4 calls

S, E = TOOL_CALL_START, TOOL_CALL_END
FRAGMENTS = [
    S, E, S, E, "[", "]", "(", ")", "{", "}", ",", "=", ":", '"', "'", '"""', "\\", " ", "\n", "\0",
    "f", "get_weather", "pkg.mod.fn", "x", "city", "1", "-2.5e3", "1e999", "0x1F", "True", "null",
    "None", "__import__", "('os')", ".system", "lambda: 0", "**kw", "*a", "f'{x}'", "b'x'", "{1, 2}",
    "1j", "...", "#", '"name": "f"', '"arguments": {}', '"arguments": "{\\"a\\": 1}"', "🦙", "\u202e",
    "<|im_end|>", "<think>", "</think>", "\ud7ff",
]
adversarial = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=300), adversarial,
                     st.builds(lambda a, b, c: a + S + b + E + c, st.text(max_size=20), adversarial, st.text(max_size=20)))


def _json_ok(value) -> bool:
    """Plain JSON data (what a tool receives): no tuples, sets, bytes, objects."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return True  # inf/nan are written as Infinity/NaN by json.dumps; still data
    if isinstance(value, list):
        return all(_json_ok(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int, float, bool)) or k is None for k in value) and all(
            _json_ok(v) for v in value.values())
    return False


@given(any_text)
def test_never_raises_and_returns_plain_data(text):
    out, calls, warnings = parse_tool_calls(text)
    assert isinstance(out, str) and all(isinstance(w, str) for w in warnings)
    for call in calls:
        assert isinstance(call, ToolCall) and isinstance(call.name, str) and call.name
        assert isinstance(call.arguments, dict) and _json_ok(call.arguments)
        json.dumps(call.to_dict())


@given(any_text)
def test_text_is_kept_when_nothing_is_called(text):
    out, calls, warnings = parse_tool_calls(text)
    if not calls:
        assert out == text
    if S not in text:
        assert (out, calls, warnings) == (text, [], [])


@given(any_text)
def test_output_text_comes_from_the_input(text):
    # nothing is invented: every character of the returned text was in the input, in order
    out, _, _ = parse_tool_calls(text)
    it = iter(text)
    assert all(ch in it for ch in out)


IDENT_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
ident = st.builds(lambda a, b: a + b, st.sampled_from(IDENT_START),
                  st.text(alphabet=IDENT_START + "0123456789", max_size=10)).filter(
    lambda n: not keyword.iskeyword(n) and n not in ("True", "False", "None", "true", "false", "null"))
names = st.lists(ident, min_size=1, max_size=3).map(".".join)
keys = ident
# A string holding a marker cannot round-trip: the block ends at the first end marker, by design
# (the model writes markers as single special tokens); such blocks are covered by the tests above.
plain_text = st.text(max_size=30).filter(lambda t: S not in t and E not in t)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=False, allow_infinity=False), plain_text)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(plain_text, inner, max_size=4)),
                      max_leaves=12)
calls = st.lists(st.tuples(names, st.dictionaries(keys, values, max_size=4)), min_size=1, max_size=4)


@settings(max_examples=ROUND_TRIPS)
@given(calls, plain_text, st.booleans())
def test_pythonic_and_json_calls_round_trip(expected, before, as_json):
    if as_json:
        body = json.dumps([{"name": n, "arguments": a} for n, a in expected])
    else:
        body = "[" + ", ".join(f"{n}(" + ", ".join(f"{k}={v!r}" for k, v in a.items()) + ")"
                               for n, a in expected) + "]"
    out, got, warnings = parse_tool_calls(before + S + body + E + " done")
    assert out == before + " done" and warnings == []
    assert [(c.name, c.arguments) for c in got] == [(n, a) for n, a in expected]


def test_nothing_is_evaluated(tmp_path):
    canary = tmp_path / "canary"
    attacks = [
        f"[f(x=open({str(canary)!r}, 'w'))]",
        f"[f(x=__import__('pathlib').Path({str(canary)!r}).touch())]",
        f"__import__('pathlib').Path({str(canary)!r}).touch()",
        f"[f(x=[c for c in ().__class__.__base__.__subclasses__()])]",
        f"[f(x=(lambda: open({str(canary)!r}, 'w'))())]",
        f"[f(x=f'{{open({str(canary)!r}, \"w\")}}')]",
        f"[f(**{{'x': open({str(canary)!r}, 'w')}})]",
        f"[open({str(canary)!r}, 'w').write(x='1')]",
    ]
    for attack in attacks:
        out, got, warnings = parse_tool_calls(S + attack + E)
        assert out == S + attack + E and got == [] and warnings and "refused" in warnings[0], attack
    assert not canary.exists()


def _timed(text: str):
    t = time.perf_counter()
    result = parse_tool_calls(text)
    return result, time.perf_counter() - t


def test_adversarial_blocks_are_refused_quickly():
    cases = {
        "deep brackets": "[" * 100_000,
        "deep calls": "f(x=" * 20_000 + ")" * 20_000,
        "deep json": "[" * 50_000 + "]" * 50_000,
        "huge int": "[f(x=" + "9" * 100_000 + ")]",
        "huge float": "[f(x=1e99999)]",
        "long string": "[f(x='" + "a" * 1_000_000 + "')]",
        "many closers": "[f(x=1)" + " ]" * 50_000,
        "many quotes": "[f(x='" + "]' ]" * 20_000,
        "many calls": "[" + ", ".join(f"f{i}(a={i})" for i in range(5_000)) + "]",
    }
    for name, body in cases.items():
        (out, got, warnings), seconds = _timed(S + body + E)
        assert seconds < 5, f"{name}: {seconds:.1f} s"
        assert isinstance(out, str)
        if not got:
            assert out == S + body + E
    (_, got, _), _ = _timed(S + cases["many calls"] + E)
    assert len(got) == 5_000
    (_, got, _), _ = _timed(S + cases["huge float"] + E)
    assert got[0].arguments["x"] == math.inf


def test_a_block_whose_closers_all_fail_is_refused_quickly():
    # what a prompt-injected model could write: an opener, then hundreds of closers that never match
    body = "(" + "a, " * 1_500 + "]" * 300
    (out, got, warnings), seconds = _timed(S + body + E)
    assert got == [] and out == S + body + E
    assert seconds < 0.3, f"{seconds:.1f} s for a {len(body) // 1000} KB block"


def test_unterminated_and_nested_markers():
    # a block runs to the first end marker: the call list parses, the rest of the block (with
    # the second start marker) is kept as text, and the unterminated last block too
    text = f"a {S}[f(x=1)] b {S}[g(y=2)]{E} c {S}[h()]"
    out, got, warnings = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in got] == [("f", {"x": 1})]
    assert out == f"a  b {S}[g(y=2)] c {S}[h()]"
    assert len(warnings) == 2 and "text after the tool call list" in warnings[0] and E in warnings[1]
