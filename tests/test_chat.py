"""Chat template rendering: every shipped LFM2 template, compared with transformers' renderer."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lfm2q.chat import DEFAULT_TEMPLATE, ChatTemplateError, render_chat
from lfm2q.errors import Lfm2qError

TEMPLATES = Path(__file__).parent / "data" / "templates"
NAMES = ["LFM2.jinja", "LFM2.5-Instruct.jinja", "LFM2.5-8B-A1B.jinja", "LFM2-8B-A1B.jinja", "LFM2-1.2B-initial.jinja"]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city — «accents» & <html>",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>'

CONVERSATIONS = {
    "user": ([{"role": "user", "content": "Hi"}], None),
    "system_multi_turn": (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
        None,
    ),
    "tools": (
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": CALL},
            {"role": "tool", "content": '{"temp": 21}'},
            {"role": "user", "content": "Thanks"},
        ],
        [WEATHER, {"name": "second", "parameters": {}}],
    ),
    "tools_no_system": ([{"role": "user", "content": "Weather?"}], [WEATHER]),
    "past_thinking": (
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "<think>hidden reasoning</think>\n\nA1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "<think>r2</think>A2"},
        ],
        None,
    ),
    "non_string_content": (
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": CALL},
            {"role": "tool", "content": {"temp": 21, "sky": "clear ☀", "list": [1, 2.5, None, True]}},
        ],
        [WEATHER],
    ),
    "structured_tool_calls_and_thinking": (
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "thinking": "need the tool",
                "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}],
            },
            {"role": "tool", "content": "sunny"},
        ],
        [WEATHER],
    ),
    "content_parts": (
        [{"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"}, {"type": "text", "text": "?"}]}],
        None,
    ),
}


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def test_template_copies_are_the_recorded_bytes():
    assert hashlib.sha256((TEMPLATES / "LFM2.5-Instruct.jinja").read_bytes()).hexdigest() == (
        "f05bf4b967dc993bdc7a2fe6e43759ee218eb0eb340d68b063e1c4f8ad148176"
    )
    assert hashlib.sha256((TEMPLATES / "LFM2.jinja").read_bytes()).hexdigest() == (
        "cef187400d62a59507aab3a642ea9a8d2a2ef263562bc3430560e116945273cf"
    )


def test_rendering_reminder_example_exact():
    # reference/chat-templates.md, "Rendering reminders" (template A)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "<think>x</think>Sunny."},
        {"role": "tool", "content": '{"t":4}'},
        {"role": "user", "content": "Thanks"},
    ]
    tools = [{"name": "get_weather", "parameters": {"type": "object"}}]
    got = render_chat(_template("LFM2.5-Instruct.jinja"), messages, tools=tools)
    assert got == (
        "<|startoftext|><|im_start|>system\nBe brief.\nList of tools: [{\"name\": \"get_weather\", "
        "\"parameters\": {\"type\": \"object\"}}]<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n<think>x</think>Sunny.<|im_end|>\n<|im_start|>tool\n{\"t\":4}<|im_end|>\n"
        "<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n"
    )


def test_past_thinking_dropped_unless_kept():
    t = _template("LFM2.5-Instruct.jinja")
    messages, _ = CONVERSATIONS["past_thinking"]
    got = render_chat(t, messages, add_generation_prompt=False)
    assert "hidden reasoning" not in got and "<|im_start|>assistant\nA1<|im_end|>" in got
    assert "<think>r2</think>A2" in got  # the last assistant turn keeps it
    kept = render_chat(t, messages, add_generation_prompt=False, keep_past_thinking=True)
    assert "<think>hidden reasoning</think>" in kept


def test_generation_tag_rendered_as_content():
    got = render_chat("{% generation %}<{{ x }}>{% endgeneration %}", [], x=1)
    assert got == "<1>"
    messages, tools = CONVERSATIONS["structured_tool_calls_and_thinking"]
    got = render_chat(_template("LFM2.5-8B-A1B.jinja"), messages, tools=tools)
    assert "<|tool_call_start|>[get_weather(city='Paris', days=2)]<|tool_call_end|>" in got
    assert "<think>need the tool</think>" in got


def test_default_template_matches_lfm2():
    for key in ("user", "system_multi_turn", "tools", "tools_no_system", "non_string_content"):
        messages, tools = CONVERSATIONS[key]
        for gen in (True, False):
            assert render_chat(None, messages, tools=tools, add_generation_prompt=gen) == render_chat(
                _template("LFM2.jinja"), messages, tools=tools, add_generation_prompt=gen
            )
    assert render_chat("", [{"role": "user", "content": "x"}]).startswith("<|startoftext|><|im_start|>user\nx")


def test_string_tools_are_used_as_written():
    got = render_chat(_template("LFM2.jinja"), [{"role": "user", "content": "x"}], tools=['{"name":"f"}', {"name": "g"}])
    assert 'List of tools: <|tool_list_start|>[{"name":"f"}, {"name": "g"}]<|tool_list_end|>' in got


def test_tojson_keeps_unicode_and_html():
    got = render_chat("{{ x | tojson }}|{{ x | tojson(indent=2) }}", [], x={"b": "é<&>", "a": 1})
    assert got == '{"b": "é<&>", "a": 1}|{\n  "b": "é<&>",\n  "a": 1\n}'


def test_strftime_now_and_dict():
    import datetime

    got = render_chat("{{ strftime_now('%Y') }} {{ dict(a=1)['a'] }}", [])
    assert got == f"{datetime.datetime.now().year} 1"


def test_errors_are_one_line_lfm2q_errors():
    with pytest.raises(ChatTemplateError, match="does not compile: line 2") as e:
        render_chat("ok\n{% if %}", [])
    assert "\n" not in str(e.value) and isinstance(e.value, Lfm2qError)
    with pytest.raises(ChatTemplateError, match="Only user and assistant roles"):
        render_chat("{{ raise_exception('Only user and assistant roles\nare supported') }}", [])
    with pytest.raises(ChatTemplateError) as e:  # str + dict inside the template
        render_chat(_template("LFM2-1.2B-initial.jinja"), [{"role": "user", "content": {"a": 1}}])
    assert "\n" not in str(e.value)
    with pytest.raises(ChatTemplateError):  # sandbox: no CPython internals
        render_chat("{{ messages.__class__.__mro__ }}", [])
    with pytest.raises(ChatTemplateError):
        render_chat("{% set ns = namespace(_x=1) %}", [])
    with pytest.raises(ChatTemplateError, match="list of dicts"):
        render_chat(None, ["hi"])


def test_caller_data_is_not_touched():
    messages = [{"role": "user", "content": "x", "reasoning_content": "r"}]
    render_chat(_template("LFM2.5-8B-A1B.jinja"), messages)
    assert messages == [{"role": "user", "content": "x", "reasoning_content": "r"}]


# -- against transformers --------------------------------------------------------------------


def _hf_render(template, messages, tools, add_generation_prompt, **kw):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        **kw,
    )
    return rendered[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_matches_transformers(name, conv, gen):
    pytest.importorskip("transformers")
    template = _template(name)
    messages, tools = CONVERSATIONS[conv]
    try:
        want = _hf_render(template, messages, tools, gen)
    except TypeError:  # the template itself cannot take this conversation (the 2025-07 one and dicts)
        with pytest.raises(ChatTemplateError):
            render_chat(template, messages, tools=tools, add_generation_prompt=gen)
        return
    assert render_chat(template, messages, tools=tools, add_generation_prompt=gen) == want


def test_matches_transformers_with_extra_variables():
    pytest.importorskip("transformers")
    messages, _ = CONVERSATIONS["past_thinking"]
    for name in ("LFM2.5-Instruct.jinja", "LFM2.5-8B-A1B.jinja"):
        t = _template(name)
        for kw in ({"keep_past_thinking": True}, {"preserve_thinking": True}):
            assert render_chat(t, messages, **kw) == _hf_render(t, messages, None, True, **kw)
