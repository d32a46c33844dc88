"""Tool calls in LFM2 output: `<|tool_call_start|>[fn(a="v", n=1), pkg.other(x=[1])]<|tool_call_end|>`.

LFM2 writes calls as a Python list of calls (sometimes a JSON list of {"name", "arguments"}
objects instead). The block is parsed with `ast` and never evaluated:

- accepted: a list / tuple of calls or one bare call; a call's function is a name or a dotted
  name (`a.b.c`); its arguments are keyword arguments whose values are literals — strings,
  numbers, True/False/None, the JSON spellings true/false/null, and lists, tuples (→ lists) and
  dicts of those, negative numbers included;
- refused: positional arguments (without the tool's schema there is no name to give them),
  `**kwargs`, calls / attribute access / names / operators / f-strings inside values (so
  `f(x=__import__('os'))` is refused), sets, bytes and complex numbers (no JSON form);
- JSON form: a list (or one object) of {"name": str, "arguments": dict | JSON string}
  ("parameters" is accepted for "arguments").

A refused or unparsable block stays in the text, markers and all, and a warning says why; so
does a block with no `<|tool_call_end|>`. Text after the call list inside a block (junk the
model wrote before closing it) is kept as plain text, with a warning.
"""
from __future__ import annotations

import ast
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"

_MAX_CUTS = 256  # closers tried when a block has junk after its call list (each try parses)
_JSON_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


@dataclass
class ToolCall:
    name: str  # dotted names kept as written: "pkg.fn"
    arguments: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The OpenAI / transformers shape, which LFM2.5 templates render back from `tool_calls`."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class _Refused(ValueError):
    """The block is not a plain list of literal-argument calls; the message says why."""


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[str]]:
    """Split model output into (text without the call blocks, calls, warnings)."""
    out: list[str] = []
    calls: list[ToolCall] = []
    warnings: list[str] = []
    pos = 0
    while True:
        start = text.find(TOOL_CALL_START, pos)
        if start < 0:
            out.append(text[pos:])
            break
        end = text.find(TOOL_CALL_END, start + len(TOOL_CALL_START))
        if end < 0:
            warnings.append(f"tool call block has no {TOOL_CALL_END}; kept as text")
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        body = text[start + len(TOOL_CALL_START):end]
        try:
            found, rest = _parse_block(body)
        except (RecursionError, MemoryError):
            found, rest, e = None, "", _Refused("nested too deeply")
        except _Refused as err:
            found, rest, e = None, "", err
        if found is None:
            warnings.append(f"tool call refused ({e}); kept as text: {_clip(body)}")
            out.append(text[start:end + len(TOOL_CALL_END)])
        else:
            calls.extend(found)
            if rest.strip():
                warnings.append(f"text after the tool call list kept as text: {_clip(rest)}")
                out.append(rest)
        pos = end + len(TOOL_CALL_END)
    return "".join(out), calls, warnings


def _clip(s: str, n: int = 80) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _parse_block(body: str) -> tuple[list[ToolCall], str]:
    """Calls in one block, and whatever text followed them inside it."""
    src = body.strip()
    if not src:
        raise _Refused("empty block")
    json_error = None
    if src[0] in "[{":
        try:
            return _from_json(json.loads(src)), ""
        except json.JSONDecodeError as e:
            json_error = e  # maybe pythonic, or JSON followed by junk
        except _Refused:
            pass  # valid JSON of another shape: let the pythonic reading have its say
    try:
        tree = _parse(src)
        rest = ""
    except (SyntaxError, ValueError):  # ValueError: NUL bytes on Python < 3.12
        tree, rest = _first_parsable_prefix(src)
        if tree is None:
            raise _Refused("not a Python list of calls" + (" nor JSON" if json_error else "")) from None
    return _from_ast(tree), rest


def _parse(src: str) -> ast.AST:
    """The expression in src. Model output is not code: Python's SyntaxWarnings about it
    ("invalid decimal literal"; "invalid escape sequence", a DeprecationWarning before Python
    3.12) would reach the user's terminal, or stop the parse under -W error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(src, mode="eval").body


def _first_parsable_prefix(src: str) -> tuple[Any, str]:
    """Cut at the first `]` / `)` / `}` that ends a parsable expression.

    `[f(a=1)] junk` → (the list, " junk"). Only closers that bring the bracket depth back to
    zero, outside string literals, are tried (at most _MAX_CUTS of them): a block of hundreds
    of stray closers costs one parse, not hundreds.
    """
    tries = 0
    for i in _balanced_closers(src):
        try:
            return _parse(src[: i + 1]), src[i + 1:]
        except (SyntaxError, ValueError):
            tries += 1
            if tries >= _MAX_CUTS:
                break
    return None, src


def _balanced_closers(src: str):
    """Indices of the closers at which the bracket depth returns to zero, strings skipped."""
    depth, i, n = 0, 0, len(src)
    while i < n:
        ch = src[i]
        if ch in "'\"":
            quote = src[i:i + 3] if src[i:i + 3] in ('"""', "'''") else ch
            i += len(quote)
            while i < n and not src.startswith(quote, i):
                i += 2 if src[i] == "\\" else 1
            i += len(quote)
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                yield i
            elif depth < 0:
                return
        i += 1


def _from_ast(node: ast.AST) -> list[ToolCall]:
    if isinstance(node, (ast.List, ast.Tuple)):
        items = node.elts
    else:
        items = [node]
    if not items:
        raise _Refused("empty call list")
    if all(isinstance(n, ast.Dict) for n in items):
        return _from_json([_literal(n) for n in items])  # JSON objects written Python-style
    return [_call(n) for n in items]


def _call(node: ast.AST) -> ToolCall:
    if not isinstance(node, ast.Call):
        raise _Refused(f"expected a call, got {type(node).__name__}")
    name = _dotted(node.func)
    if node.args:
        raise _Refused(f"{name}: positional arguments are not accepted, only name=value")
    args: dict = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise _Refused(f"{name}: **kwargs is not accepted")
        args[kw.arg] = _literal(kw.value)
    return ToolCall(name, args)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise _Refused("the function must be a name or a dotted name")
    parts.append(node.id)
    return ".".join(reversed(parts))


def _literal(node: ast.AST) -> Any:
    """What `ast.literal_eval` accepts, minus sets/bytes/complex, plus true/false/null."""
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        raise _Refused(f"{type(v).__name__} values are not accepted")
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _Refused("** inside a dict is not accepted")
        keys = [_literal(k) for k in node.keys]
        if any(isinstance(k, (list, dict)) for k in keys):
            raise _Refused("dict keys must be strings or numbers")
        return dict(zip(keys, (_literal(v) for v in node.values)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    raise _Refused(f"argument values must be literals, got {_describe(node)}")


def _describe(node: ast.AST) -> str:
    try:
        return repr(_clip(ast.unparse(node), 40))
    except Exception:  # unparse handles every expression node; stay safe regardless
        return type(node).__name__


def _from_json(obj: Any) -> list[ToolCall]:
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise _Refused("empty call list")
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _Refused('JSON tool calls must be objects with a string "name"')
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):  # OpenAI style: arguments as a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise _Refused(f"{item['name']}: arguments string is not JSON") from None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise _Refused(f"{item['name']}: arguments must be an object")
        calls.append(ToolCall(item["name"], args))
    return calls
