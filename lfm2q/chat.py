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

Templates come inside downloaded files, so rendering is also limited (`_render`): a template
that runs longer than TEMPLATE_TIME_LIMIT seconds, or builds a string, list or output larger
than TEMPLATE_SIZE_LIMIT, stops with a one-line ChatTemplateError (see `_Limits`).

Every LFM2 template writes the BOS token itself: tokenize the result without adding another.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Optional

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import GenerationError, one_line

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

# Limits on rendering a chat template (templates come inside downloaded model files). Real LFM2
# templates render a long conversation in milliseconds into far fewer characters than any
# context holds (128k tokens is ~0.5M characters).
TEMPLATE_TIME_LIMIT = 5.0            # seconds of rendering
TEMPLATE_SIZE_LIMIT = 8 * 1024 ** 2  # characters of output, of any string, items of any list


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
    # Rendering is the only place template code runs, so the time and size limits live here:
    # the output is counted as it streams, and _Limits (active for this thread) is checked by
    # the guarded environment's loops, operators, calls and filters.
    limits = _Limits(TEMPLATE_TIME_LIMIT, TEMPLATE_SIZE_LIMIT)
    parts: list[str] = []
    size = 0
    try:
        with limits.active():
            for chunk in compiled.generate(**context):
                size += len(chunk)
                if size > limits.max_size:
                    raise limits.too_big("its output")
                parts.append(chunk)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:  # raise_exception, undefined names, sandbox refusals
        raise ChatTemplateError(f"chat template: {one_line(e)}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, RecursionError,
            OverflowError, MemoryError) as e:
        raise ChatTemplateError(
            f"chat template failed on this conversation ({type(e).__name__}: {one_line(e)})"
        ) from None
    return "".join(parts)


class _Limits:
    """Time and size limits of one render, active in the rendering thread.

    Time: the clock is read at every loop iteration of template code (the code generator
    wraps each `{% for %}` iterable) and at every call, filter, operator and attribute lookup,
    so a template stops within one step of the deadline. (One step is a C-level operation on
    values the size limits bound: milliseconds.)
    Size: what could build something huge in one step is checked *before* it runs — `*`, `+`,
    `**`, `%`, `~`, str methods such as center/replace/join/format, the amplifying filters, and
    every value printed or passed to a filter or call (its length once stringified, computed
    over shared sub-lists without expanding them); every call and filter result is checked after.
    """

    _current = threading.local()
    MAX_INT_BITS = 1 << 16  # a template has no use for numbers of 20,000 digits

    def __init__(self, seconds: float, max_size: int):
        self.seconds, self.max_size = seconds, max_size
        self.deadline = float("inf")
        self._sizes: dict[int, tuple[Any, int]] = {}  # id -> (object kept alive, stringified size)

    @classmethod
    def current(cls) -> "_Limits":
        # outside _render (a template rendered some other way): size limits, no clock, no memo kept
        return getattr(cls._current, "limits", None) or _Limits(float("inf"), TEMPLATE_SIZE_LIMIT)

    @contextlib.contextmanager
    def active(self):
        previous = getattr(self._current, "limits", None)
        self._current.limits = self
        self.deadline = time.monotonic() + self.seconds
        try:
            yield self
        finally:
            self._current.limits = previous
            self._sizes.clear()

    def too_slow(self) -> ChatTemplateError:
        return ChatTemplateError(f"chat template: stopped after {self.seconds:g} s (TEMPLATE_TIME_LIMIT) — "
                                 "the template loops too long; is the model file's template damaged or hostile?")

    def too_big(self, what: str) -> ChatTemplateError:
        return ChatTemplateError(f"chat template: {what} would exceed {self.max_size:,} characters or items "
                                 "(TEMPLATE_SIZE_LIMIT) — is the model file's template damaged or hostile?")

    def check(self, n: int, what: str) -> None:
        if n > self.max_size:
            raise self.too_big(what)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise self.too_slow()

    def str_size(self, value: Any) -> int:
        """len(str(value)), estimated without building it; shared sub-lists are measured once."""
        if isinstance(value, str):
            return len(value)
        if not isinstance(value, (list, tuple, dict, jinja2.utils.Namespace)):
            return value.bit_length() // 3 + 2 if type(value) is int else 32
        key = id(value)
        if key in self._sizes:
            return self._sizes[key][1]
        self._sizes[key] = (value, 0)  # a cycle (a namespace holding itself) counts as nothing
        if isinstance(value, dict):
            items = [x for kv in value.items() for x in kv]
        elif isinstance(value, jinja2.utils.Namespace):
            items = list(getattr(value, "_Namespace__attrs", {}).items())  # jinja's private store
        else:
            items = value
        total = 2
        for x in items:  # scalars inline: this loop runs over whole conversations
            if isinstance(x, str):
                total += len(x) + 4
            elif isinstance(x, (list, tuple, dict, jinja2.utils.Namespace)):
                total += self.str_size(x) + 2
            else:
                total += 24
            if total > self.max_size:
                break
        self._sizes[key] = (value, total)
        return total

    def check_args(self, args, kwargs, what: str) -> None:
        for a in (*args, *kwargs.values()):
            if isinstance(a, (list, tuple, dict, jinja2.utils.Namespace)):
                self.check(self.str_size(a), what)

    def check_result(self, value: Any, what: str) -> Any:
        if isinstance(value, (str, list, tuple, dict)):
            self.check(len(value), what)
        return value


def _number(x: Any) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) else 0


_FORMAT_WIDTHS = re.compile(r"%[-#0 +]*(\d*|\*)(?:\.(\d+|\*))?|\{[^{}]*:[^{}]*?(\d+)(?:\.(\d+))?[^{}]*\}")


def _format_size(fmt: str, args: Any) -> int:
    """An upper bound of len(fmt % args) or fmt.format(*args): widths and precisions count."""
    limits = _Limits.current()
    values = list(args.values()) if isinstance(args, dict) else list(args) if isinstance(args, (list, tuple)) else [args]
    total = len(fmt) + sum(limits.str_size(v) for v in values)
    for m in _FORMAT_WIDTHS.finditer(fmt):
        for g in m.groups():
            if g and g.isdigit():
                total += int(g)
            elif g == "*":
                total += sum(_number(v) for v in values)
    return total


def _binop_size(op: str, left: Any, right: Any) -> int:
    """The size of `left op right` when it can be huge (strings, lists, big integers), else 0."""
    seqs = (str, list, tuple)
    if op == "*":
        if isinstance(left, seqs) and isinstance(right, int):
            return len(left) * max(right, 0)
        if isinstance(right, seqs) and isinstance(left, int):
            return len(right) * max(left, 0)
    if op == "+" and isinstance(left, seqs) and isinstance(right, seqs):
        return len(left) + len(right)
    if op == "%" and isinstance(left, str):
        return _format_size(left, right)
    return 0


def _int_bits(op: str, left: Any, right: Any) -> int:
    """Bits of an integer `left op right` for * and **: squaring in a loop makes huge numbers."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return 0
    if op == "*":
        return left.bit_length() + right.bit_length()
    if op == "**" and right > 0 and abs(left) > 1:
        return abs(left).bit_length() * min(right, 1 << 40)
    return 0


def _str_method_size(obj: str, name: str, args: tuple, kwargs: dict) -> int:
    """An upper bound of the result of str methods that can grow a string a lot; else 0."""
    a = list(args) + list(kwargs.values())
    if name in ("center", "ljust", "rjust", "zfill") and a:
        return max(len(obj), _number(a[0]))
    if name == "expandtabs":
        return len(obj) + obj.count("\t") * _number(a[0] if a else 8)
    if name == "replace" and len(a) >= 2 and isinstance(a[0], str) and isinstance(a[1], str):
        hits = len(obj) + 1 if not a[0] else obj.count(a[0])
        return len(obj) + hits * len(a[1])
    if name == "join" and a:
        items = a[0] if isinstance(a[0], (list, tuple)) else []
        return sum(_Limits.current().str_size(x) for x in items) + len(obj) * len(items)
    if name in ("format", "format_map"):
        return _format_size(obj, list(args) + list(kwargs.values()))
    return 0


def _filter_size(name: str, args: tuple, kwargs: dict) -> int:
    """An upper bound of the result size of Jinja's amplifying filters; else 0."""
    a = list(args) + list(kwargs.values())
    value = a[0] if a else None
    size = _Limits.current().str_size(value)
    if name == "center" and len(a) > 1:
        return max(size, _number(a[1]))
    if name == "indent":
        width = a[1] if len(a) > 1 else 4
        width = len(width) if isinstance(width, str) else _number(width)
        return size + width * (str(value).count("\n") + 1 if isinstance(value, str) else size)
    if name in ("batch", "slice") and len(a) > 1:
        return _number(a[1])
    if name == "replace" and len(a) > 2 and isinstance(value, str):
        return _str_method_size(value, "replace", (str(a[1]), str(a[2])), {})
    if name == "join":
        items = value if isinstance(value, (list, tuple)) else []
        sep = a[1] if len(a) > 1 and isinstance(a[1], str) else ""
        return size + len(sep) * len(items)
    if name == "format" and isinstance(value, str):
        return _format_size(value, a[1:])
    if name == "tojson" and len(a) > 1:
        indent = a[1] if not isinstance(a[1], str) else len(a[1])
        return size * (1 + _number(indent))
    if name == "wordwrap":
        return 2 * size
    return 0


class _GuardedFilters(dict):
    """env.filters: each filter, looked up by compiled templates, wrapped in the size checks."""

    def __getitem__(self, name: str):
        return _guard_filter(name, dict.__getitem__(self, name))

    def get(self, name: str, default=None):
        return self[name] if name in self else default


@functools.lru_cache(maxsize=None)
def _guard_filter(name: str, fn):
    @functools.wraps(fn)  # keeps jinja's pass_context / pass_environment marks
    def guarded(*args, **kwargs):
        limits = _Limits.current()
        limits.check_time()
        plain = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.Environment,
                                                       jinja2.nodes.EvalContext))]
        limits.check_args(plain, kwargs, f"the input of the {name} filter")
        limits.check(_filter_size(name, tuple(plain), kwargs), f"the {name} filter")
        return limits.check_result(fn(*args, **kwargs), f"the {name} filter")
    return guarded


def _call_node(fn: jinja2.nodes.Expr, args: list) -> jinja2.nodes.Call:
    return jinja2.nodes.Call(fn, args, [], None, None)


class _GuardedCodeGenerator(CodeGenerator):
    """Every `{% for %}` iterable goes through `environment.guarded_iter` (the clock is read each
    iteration), and `a ~ b` through `environment.guarded_concat` (Jinja compiles it to a str join)."""

    def visit_For(self, node, frame) -> None:
        guarded = _call_node(jinja2.nodes.EnvironmentAttribute("guarded_iter"), [node.iter])
        super().visit_For(node.__class__(node.target, guarded, node.body, node.else_, node.test,
                                         node.recursive, lineno=node.lineno), frame)

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus the size checks of `_Limits` on operators, calls, filters and output."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset(["*", "+", "**", "%"])

    def __init__(self, **options: Any):
        super().__init__(finalize=self._finalize, **options)
        self.filters = _GuardedFilters(self.filters)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        limits = _Limits.current()
        limits.check_time()
        limits.check(_binop_size(operator, left, right), f"'{operator}'")
        if _int_bits(operator, left, right) > limits.MAX_INT_BITS:
            raise ChatTemplateError(f"chat template: '{operator}' would make a number of more than "
                                    f"{limits.MAX_INT_BITS} bits — is the model file's template damaged or hostile?")
        return limits.check_result(super().call_binop(context, operator, left, right), f"'{operator}'")

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's signature)
        limits = _Limits.current()
        limits.check_time()
        what = f"calling {getattr(__obj, '__name__', type(__obj).__name__)}"
        limits.check_args(args, kwargs, what)
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format at lookup
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            limits.check(_str_method_size(owner, method.__name__, args, kwargs), what)
        if __obj is _lipsum:
            limits.check(_number(args[0] if args else kwargs.get("n", 5)) * 1000, what)
        return limits.check_result(
            ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs), what)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _Limits.current().check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _Limits.current().check_time()
        return super().getitem(obj, argument)

    @staticmethod
    def guarded_iter(iterable: Any):
        limits = _Limits.current()
        for i, item in enumerate(iterable):
            if not i & 255:
                limits.check_time()
            yield item

    def guarded_concat(self, items: tuple) -> str:
        limits = _Limits.current()
        limits.check(sum(limits.str_size(x) for x in items), "'~'")
        return "".join(map(str, items))

    @staticmethod
    def _finalize(value: Any) -> Any:  # every {{ value }} before it is turned into text
        if isinstance(value, (list, tuple, dict, jinja2.utils.Namespace)):
            limits = _Limits.current()
            limits.check(limits.str_size(value), "a printed value")
        return value


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile: line {e.lineno}: {one_line(e.message or e)}") from None


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


_lipsum = jinja2.utils.generate_lorem_ipsum  # a default global; bound by _GuardedEnvironment.call


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` in templates, without handing out the `dict` type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = _GuardedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_TemplateNamespace,
        lipsum=_lipsum,
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
