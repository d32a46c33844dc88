"""Chat templates: render a conversation to the prompt text the model was trained on.

GGUF files carry the model's Jinja template (`tokenizer.chat_template`). It is rendered the way
transformers renders it (`utils/chat_template_utils.py`), so the text matches what the model saw
in training:
- a sandboxed, immutable Jinja environment with trim_blocks and lstrip_blocks, plus the
  loopcontrols extension (`{% break %}` / `{% continue %}`);
- `tojson` as `json.dumps` with its default separators and ensure_ascii=False (Jinja's own
  filter escapes HTML characters and sorts keys);
- the globals `raise_exception(msg)`, `strftime_now(fmt)`, `dict(...)` and a `namespace` that
  refuses underscore attributes;
- `{% generation %}…{% endgeneration %}` (a transformers extension that later LFM2.5 templates
  use to mark assistant text) rendered as its plain content;
- the data the template sees is rebuilt from plain JSON types, and a message's reasoning given
  as `reasoning_content`, `thinking` or `reasoning` is visible under the first two names.

Every LFM2 template writes the BOS token itself: tokenize the result without adding another.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Optional

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import GenerationError

# Used when a model file has no template: the LFM2 ChatML layout (same output as the LFM2
# template for text and tool conversations).
DEFAULT_TEMPLATE = """\
{{- bos_token -}}
{%- set ns = namespace(system="") -%}
{%- if messages and messages[0]["role"] == "system" -%}
    {%- set ns.system = messages[0]["content"] -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if tools -%}
    {%- set ns.system = ns.system + ("\\n" if ns.system else "") + "List of tools: <|tool_list_start|>[" -%}
    {%- for tool in tools -%}
        {%- set ns.system = ns.system + (tool if tool is string else tool | tojson) + ("" if loop.last else ", ") -%}
    {%- endfor -%}
    {%- set ns.system = ns.system + "]<|tool_list_end|>" -%}
{%- endif -%}
{%- if ns.system -%}
    {{- "<|im_start|>system\\n" + ns.system + "<|im_end|>\\n" -}}
{%- endif -%}
{%- for message in messages -%}
    {%- set content = message["content"] if message["content"] is string else message["content"] | tojson -%}
    {%- if message["role"] == "tool" -%}
        {%- set content = "<|tool_response_start|>" + content + "<|tool_response_end|>" -%}
    {%- endif -%}
    {{- "<|im_start|>" + message["role"] + "\\n" + content + "<|im_end|>\\n" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\\n" -}}
{%- endif -%}"""

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(GenerationError):
    """The chat template does not compile, or refused / failed on this conversation."""


def render_chat(
    template: Optional[str],
    messages: list[dict],
    *,
    tools: Optional[list] = None,
    add_generation_prompt: bool = True,
    bos_token: str = "<|startoftext|>",
    eos_token: str = "<|im_end|>",
    **extra: Any,
) -> str:
    """Render `messages` ([{"role", "content", …}]) with a Jinja chat template.

    `template` None or empty uses DEFAULT_TEMPLATE. `tools` are JSON-schema dicts (or strings);
    `extra` reaches the template as variables (e.g. keep_past_thinking=True).
    """
    compiled = _compile(template or DEFAULT_TEMPLATE)
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise ChatTemplateError("chat: messages must be a list of dicts with 'role' and 'content'")
    context = _plain(dict(extra))
    context.update(
        messages=_alias_reasoning(_plain(messages)),
        tools=_plain(tools),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    return _render(compiled, context)


def _render(compiled: jinja2.Template, context: dict) -> str:
    # A time / output-size guard for hostile templates belongs here (rendering is the only
    # place template code runs).
    try:
        return compiled.render(**context)
    except jinja2.TemplateError as e:  # raise_exception, undefined names, sandbox refusals
        raise ChatTemplateError(f"chat template: {_one_line(e)}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, RecursionError) as e:
        raise ChatTemplateError(
            f"chat template failed on this conversation ({type(e).__name__}: {_one_line(e)})"
        ) from None


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile: line {e.lineno}: {_one_line(e.message or e)}") from None


def _one_line(e: object) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}`: transformers marks assistant text with it; render the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        # a call block, as transformers builds it, so `set` inside the body scopes the same way
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore-prefixed attributes (no route to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: `self` may be a kwarg
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` in templates, without handing out the `dict` type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_TemplateNamespace,
    )
    return env


_ENV = _make_env()


def _plain(value: Any) -> Any:
    """A copy built from JSON types only, so the template cannot reach the caller's objects' methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value] if isinstance(value, list) else tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return _plain(value.item())  # numpy scalars
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def _alias_reasoning(messages: list) -> list:
    """A message's reasoning under any of its usual names is visible as `thinking` and `reasoning_content`."""
    out = []
    for m in messages:
        r = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if r is not None:
            m = {"thinking": r, **m, "reasoning_content": r}
        out.append(m)
    return out
