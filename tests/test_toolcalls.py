"""Parsing LFM2 tool calls out of model text."""
from __future__ import annotations

from lfm2q.toolcalls import ToolCall, parse_tool_calls

S, E = "<|tool_call_start|>", "<|tool_call_end|>"


def one(body: str, before: str = "", after: str = ""):
    return parse_tool_calls(before + S + body + E + after)


def test_simple_call_and_surrounding_text():
    text, calls, warnings = one('[get_weather(city="Paris", days=3)]', "Checking. ", " Done.")
    assert text == "Checking.  Done."
    assert calls == [ToolCall("get_weather", {"city": "Paris", "days": 3})]
    assert warnings == []


def test_no_block_is_plain_text():
    assert parse_tool_calls("just [f(a=1)] text") == ("just [f(a=1)] text", [], [])


def test_nested_literals():
    _, calls, w = one('[f(x=[1, {"a": 2, "b": [true, null, False]}], t=(1, -2.5), d={}, n=None, e=1e3)]')
    assert w == []
    assert calls[0].arguments == {"x": [1, {"a": 2, "b": [True, None, False]}], "t": [1, -2.5], "d": {}, "n": None, "e": 1000.0}


def test_strings_with_brackets_quotes_and_closers():
    body = r'''[search(q="a)] b", r='it\'s "quoted"', s="<|tool_call_start|>? no, [x(y=1)]", u="line\nbreak")]'''
    text, calls, w = one(body)
    assert w == [] and text == ""
    assert calls[0].arguments == {"q": "a)] b", "r": "it's \"quoted\"", "s": "<|tool_call_start|>? no, [x(y=1)]", "u": "line\nbreak"}


def test_several_calls_in_one_list_and_several_blocks():
    text, calls, w = parse_tool_calls(f"A{S}[f(a=1), g(b='x')]{E}B{S}[h()]{E}C")
    assert text == "ABC" and w == []
    assert [c.name for c in calls] == ["f", "g", "h"]
    assert calls[2].arguments == {}


def test_single_call_without_list():
    _, calls, w = one("f(a=1)")
    assert calls == [ToolCall("f", {"a": 1})] and w == []


def test_dotted_names():
    _, calls, w = one("[pkg.mod.fn(a=1), other.fn(x=[1, {'a': 2}])]")
    assert [c.name for c in calls] == ["pkg.mod.fn", "other.fn"] and w == []
    assert calls[1].arguments == {"x": [1, {"a": 2}]}


def test_junk_after_the_call_inside_the_block():
    text, calls, w = one("[f(a=1)] and then I said hi", "x ")
    assert calls == [ToolCall("f", {"a": 1})]
    assert text == "x  and then I said hi"
    assert len(w) == 1 and "kept as text" in w[0]
    text, calls, w = one('[f(a="])")]]')  # a stray closer
    assert calls == [ToolCall("f", {"a": "])"})] and text == "]"


def test_code_in_arguments_is_refused():
    for body in (
        "[f(x=__import__('os').system('ls'))]",
        "[f(x=open('/etc/passwd'))]",
        "[f(x=a.b)]",
        "[f(x=y)]",
        "[f(x=1+2)]",
        "[f(x=[i for i in range(3)])]",
        "[f(x=f'{1}')]",
        "[f(x={1, 2})]",
        "[f(x=b'raw')]",
        "[f(**{'a': 1})]",
        "[f('positional')]",
        "[__import__('os').system(x=1)]",
        "[f(a=1)(b=2)]",
        "[lambda: 1]",
        "not python at all (",
        "",
    ):
        raw = S + body + E
        text, calls, w = parse_tool_calls("pre " + raw)
        assert calls == [], body
        assert text == "pre " + raw, body  # kept verbatim
        assert len(w) == 1 and "refused" in w[0], body


def test_one_bad_call_refuses_the_block():
    text, calls, w = one("[f(a=1), g(x=os.system)]")
    assert calls == [] and len(w) == 1 and S in text


def test_json_form():
    _, calls, w = one('[{"name": "f", "arguments": {"a": true, "b": [1, null], "c": "x]"}}, {"name": "g.h", "arguments": "{\\"z\\": 1}"}]')
    assert w == []
    assert calls == [ToolCall("f", {"a": True, "b": [1, None], "c": "x]"}), ToolCall("g.h", {"z": 1})]
    _, calls, w = one('{"name": "f", "parameters": {"q": 1}}')
    assert calls == [ToolCall("f", {"q": 1})] and w == []
    _, calls, w = one('[{"name": "f", "arguments": {"a": true}}] trailing')  # JSON + junk
    assert calls == [ToolCall("f", {"a": True})] and len(w) == 1
    text, calls, w = one('[{"nom": "f"}]')
    assert calls == [] and len(w) == 1 and "refused" in w[0]


def test_unterminated_block():
    raw = "Sure. " + S + '[f(a="x")'
    text, calls, w = parse_tool_calls(raw)
    assert (text, calls) == (raw, [])
    assert len(w) == 1 and "no <|tool_call_end|>" in w[0]
    # a complete block first, then an unterminated one
    text, calls, w = parse_tool_calls(f"{S}[f()]{E} then {S}[g(")
    assert calls == [ToolCall("f", {})] and text == f" then {S}[g(" and len(w) == 1


def test_deep_nesting_is_refused_not_crashing():
    body = "[f(a=" + "[" * 3000 + "]" * 3000 + ")]"
    text, calls, w = one(body)
    assert calls == [] and len(w) == 1


def test_to_dict_shape_renders_back_through_a_template():
    from lfm2q.chat import render_chat
    from pathlib import Path

    call = ToolCall("get_weather", {"city": "Paris"})
    assert call.to_dict() == {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    t = (Path(__file__).parent / "data" / "templates" / "LFM2.5-8B-A1B.jinja").read_text()
    got = render_chat(t, [{"role": "user", "content": "?"}, {"role": "assistant", "content": "", "tool_calls": [call.to_dict()]}])
    assert "<|tool_call_start|>[get_weather(city='Paris')]<|tool_call_end|>" in got
    _, back, _ = parse_tool_calls(got.split("<|im_start|>assistant\n")[1])
    assert back == [call]


def test_python_warnings_about_the_text_stay_silent():
    # Model output is not code: ast.parse's SyntaxWarning ("invalid decimal literal") and the
    # invalid-escape warning (DeprecationWarning before 3.12) must not reach the terminal, and
    # under -W error (warnings as errors) must not turn a valid call into a refused one.
    import warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, calls, _ = one(r'[grep(pattern="\d+")]')
        _, odd, _ = one("[f(a=1if 1 else 2)]")
    assert seen == []
    assert calls == [ToolCall("grep", {"pattern": "\\d+"})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert one(r'[grep(pattern="\d+")]')[1] == calls
