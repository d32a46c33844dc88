"""Constrained generation: JSON schemas, regexes, Lark grammars and tool calls, through llguidance.

llguidance (https://github.com/guidance-ai/llguidance) compiles the grammar and, at each step,
says which token ids may come next (a bitmask over the vocabulary); lfm2q only wires it in:

- `Constraint` is a compiled grammar for one tokenizer. Build it with `json_schema`, `regex`,
  `grammar` (Lark, or GBNF), `tool_calls`, or the OpenAI-shaped `from_response_format` /
  `from_tool_choice`. Compiling checks the grammar, so a bad one is a one-line `ConstraintError`
  before any token is generated. A Constraint is reusable and shareable across threads: each
  generation gets its own `Guide` (matcher state).
- `Guide.allowed()` is the next token's mask ([V] bool) that the sampler applies first, before
  the penalties, top-k/p, min-p and temperature (sampling.py). The end tokens (EOS, <|im_end|>,
  <|endoftext|>, stop ids) are allowed exactly where the grammar may end; when it cannot go
  on at all the generation stops there (finish "stop") without asking the model again.
- The next mask can be computed on a worker thread while the model evaluates the token just
  sampled (`Guide.prefetch`; llguidance drops the GIL), but that is off (OVERLAP): a step's
  mask costs 0.02-0.3 ms on LFM2's 65,536-token vocabulary, well under 1% of a 350M decode
  step, and on a small CPU whose cores all run the model's kernels the extra thread costs
  more than it hides (benchmarks/bench_structured.py measures both).

JSON output is written as Python's json.dumps writes it (", " and ": " between items, no other
whitespace), as models mostly write JSON, so a model cannot loop on whitespace; a schema's own
"x-guidance" options (llguidance's JSON compile options) override that.

Tool calls use LFM2's syntax, `<|tool_call_start|>[name(arg=value, ...)]<|tool_call_end|>`:
keyword arguments in the order the tool's JSON schema lists them (required ones always, optional
ones may be left out), each value a JSON value of the argument's schema (JSON literals are
Python literals that toolcalls.py reads; true/false/null included).
"""
from __future__ import annotations

import json
import keyword
import re
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .errors import GenerationError, one_line

TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"
# Any JSON object: OpenAI's {"type": "json_object"}.
ANY_OBJECT = {"type": "object"}
# JSON compiler options (llguidance's JsonCompileOptions), as defaults a schema's "x-guidance"
# may override: json.dumps's separators, no free whitespace.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(GenerationError):
    """A JSON schema, regex, grammar or tool list that cannot constrain generation."""


def _llguidance():
    try:
        import llguidance
    except ImportError:  # a core dependency; only a broken install lacks it
        raise ConstraintError("structured output needs the llguidance package: pip install llguidance") from None
    return llguidance


# --- the tokenizer as llguidance sees it ---------------------------------------------------------

_LL_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


class _TokenizerView:
    """What llguidance.TokenizerWrapper reads: every id's bytes, the special ids, encode()."""

    def __init__(self, tokenizer) -> None:
        n = tokenizer.vocab_size
        self.tokens = [tokenizer.token_bytes(i) for i in range(n)]
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.token_to_id("<|im_end|>")
        self.bos_token_id = tokenizer.bos_id
        # Control tokens are never text: llguidance lets a grammar emit them only by name
        # (<|tool_call_start|> in Lark), so JSON or a regex can never produce one.
        self.special_token_ids = [i for i in range(n) if tokenizer.is_control(i)]
        self._tokenizer = tokenizer

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_bos=False)


def ll_tokenizer(tokenizer):
    """llguidance's LLTokenizer for an lfm2q Tokenizer, built once per tokenizer (~0.3 s at 65k)."""
    with _LL_LOCK:
        ll = _LL_TOKENIZERS.get(tokenizer)
        if ll is None:
            llg = _llguidance()
            ll = llg.LLTokenizer(llg.TokenizerWrapper(_TokenizerView(tokenizer)))
            _LL_TOKENIZERS[tokenizer] = ll
        return ll


# --- compiled grammars ------------------------------------------------------------------------

class Constraint:
    """A grammar compiled for one tokenizer; `guide()` starts one generation under it."""

    def __init__(self, grammar: str, tokenizer, kind: str, what: str) -> None:
        llg = _llguidance()
        self.kind = kind  # "json_schema" | "regex" | "grammar" | "tool_calls"
        self.tokenizer = tokenizer
        self._ll = ll_tokenizer(tokenizer)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self._ll)
        if is_error:
            raise ConstraintError(f"{what}: {_explain(messages[0] if messages else 'invalid')}")
        self._matcher = llg.LLMatcher(self._ll, grammar, log_level=0)
        if self._matcher.is_error():
            raise ConstraintError(f"{what}: {_explain(self._matcher.get_error())}")
        self.grammar = grammar

    def guide(self, end_ids: Iterable[int] = (), n_vocab: Optional[int] = None) -> "Guide":
        """A fresh matcher state for one generation; `end_ids` are its end tokens."""
        if n_vocab is None:
            n_vocab = self.tokenizer.vocab_size
        return Guide(self._matcher.deep_copy(), n_vocab, self._ll.vocab_size, end_ids)


def _explain(message: str) -> str:
    """llguidance's message on one line: regex carets and grammar excerpts dropped, an
    unsupported schema feature called so."""
    lines = [ln for ln in str(message).splitlines() if ln.strip() and not set(ln.strip()) <= {"^"}
             and not re.match(r"\s*\d+ \|", ln)]
    text = re.sub(r"^at \d+\(\d+\): ", "", one_line(" ".join(lines)))
    if "Unimplemented keys" in text or "not supported" in text or "Unknown format" in text:
        text += " (a feature llguidance, lfm2q's grammar engine, does not support: leave it out)"
    return text


def json_schema(schema: Any, tokenizer, what: str = "JSON schema") -> Constraint:
    """Output that is one JSON value valid under `schema` (a dict, True, or its JSON text)."""
    llg = _llguidance()
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"{what}: not valid JSON ({one_line(e)})") from None
    if not isinstance(schema, (dict, bool)):
        raise ConstraintError(f"{what}: must be a JSON object (a schema), got {type(schema).__name__}")
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise ConstraintError(f"{what}: {_explain(e)}") from None
    return Constraint(grammar, tokenizer, "json_schema", what)


def regex(pattern: str, tokenizer, what: Optional[str] = None) -> Constraint:
    """Output that matches `pattern` whole (Rust regex syntax; no look-around or backreferences)."""
    if not isinstance(pattern, str) or not pattern:
        raise ConstraintError(f"regex {pattern!r}: give a non-empty regular expression")
    grammar = _llguidance().LLMatcher.grammar_from_regex(pattern)
    return Constraint(grammar, tokenizer, "regex", what or f"regex {pattern!r}")


def grammar(text: str, tokenizer, syntax: str = "lark", what: str = "grammar") -> Constraint:
    """Output in the language of a Lark grammar (llguidance's dialect, `start` rule first), or
    with syntax="gbnf" of a llama.cpp GBNF grammar (converted by llguidance)."""
    if syntax not in ("lark", "gbnf"):
        raise ConstraintError(f"grammar syntax {syntax!r}: use 'lark' or 'gbnf'")
    if not isinstance(text, str) or not text.strip():
        raise ConstraintError(f"{what}: the grammar is empty")
    try:
        g = _llguidance().grammar_from(syntax, text)
    except ValueError as e:
        raise ConstraintError(f"{what}: {_explain(e)}") from None
    return Constraint(g, tokenizer, "grammar", what)


# --- tool calls -------------------------------------------------------------------------------

# Calls in one forced block at most: a small model decoding greedily may repeat a call forever.
MAX_CALLS = 8
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def _tool_spec(tool: Any) -> tuple[str, dict]:
    """(name, parameters schema) of an OpenAI-style tool or a bare function definition."""
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise ConstraintError("tools: each tool must be an object with a \"name\" (and JSON-schema "
                              "\"parameters\") to constrain calls to it")
    name = tool["name"]
    if not _NAME.match(name) or any(keyword.iskeyword(p) for p in name.split(".")):
        raise ConstraintError(f"tool {name!r}: LFM2 writes calls as Python, so the name must be a "
                              "Python name or dotted name")
    params = tool.get("parameters", tool.get("input_schema")) or {}
    if not isinstance(params, dict):
        raise ConstraintError(f"tool {name!r}: \"parameters\" must be a JSON schema object")
    return name, params


def _call_rules(i: int, name: str, params: dict) -> list[str]:
    """Lark rules for one tool's call `name(a=..., b=...)`: rule `call{i}` and its value rules."""
    props = params.get("properties") or {}
    if not isinstance(props, dict):
        raise ConstraintError(f"tool {name!r}: \"properties\" must be an object")
    required = params.get("required") or []
    defs = {k: params[k] for k in ("$defs", "definitions") if k in params}
    rules, items = [], []  # items: (Lark for "arg=value", required?)
    for j, (arg, schema) in enumerate(props.items()):
        if not arg.isidentifier() or keyword.iskeyword(arg):
            raise ConstraintError(f"tool {name!r}: argument {arg!r} is not a Python name, and LFM2's "
                                  "tool-call syntax is name=value")
        if not isinstance(schema, (dict, bool)):
            raise ConstraintError(f"tool {name!r}: argument {arg!r} must have a JSON schema")
        if isinstance(schema, dict) and defs:  # refs like #/$defs/X resolve against this root
            schema = {**defs, **schema}
        rules.append(f"v{i}_{j}: %json {json.dumps(schema)}")
        items.append((f'"{arg}=" v{i}_{j}', arg in required))
    # Arguments in schema order, ", " between them; optional ones may be missing. The first
    # one written is any argument up to and including the first required one.
    def rest(k: int) -> str:
        return " ".join(f'", " {it}' if req else f'(", " {it})?' for it, req in items[k:])

    alternatives = []
    for k, (it, req) in enumerate(items):
        alternatives.append(f"{it} {rest(k + 1)}".strip())
        if req:
            break
    else:
        alternatives.append('""')  # every argument optional: none at all is a call too
    head = json.dumps(f"{name}(")
    rules.insert(0, f"call{i}: {head} ({' | '.join(alternatives)}) \")\"")
    return rules


def tool_calls(tools: Sequence[Any], tokenizer, names: Optional[Sequence[str]] = None,
               max_calls: int = MAX_CALLS) -> Constraint:
    """Output that is one LFM2 tool-call block calling the given tools (only `names` when given):
    `<|tool_call_start|>[f(a=1), g(b="x")]<|tool_call_end|>`, 1 to `max_calls` calls."""
    for marker in (TOOL_CALL_START, TOOL_CALL_END):
        tid = tokenizer.token_to_id(marker)
        if tid is None or not tokenizer.is_control(tid):
            raise ConstraintError(f"tool calls: this model's vocabulary has no {marker} token")
    if not tools:
        raise ConstraintError("tool_choice needs tools: give the tool definitions")
    specs = [_tool_spec(t) for t in tools]
    if names is not None:
        known = {n for n, _ in specs}
        for n in names:
            if n not in known:
                raise ConstraintError(f"tool_choice names {n!r}, which is not among the tools "
                                      f"({', '.join(sorted(known))})")
        specs = [s for s in specs if s[0] in set(names)]
    rules = []
    for i, (name, params) in enumerate(specs):
        rules += _call_rules(i, name, params)
    calls = " | ".join(f"call{i}" for i in range(len(specs)))
    more = f' ("," " "? call){{0,{max_calls - 1}}}' if max_calls > 1 else ""
    top = [f'start: {TOOL_CALL_START} "[" call{more} "]" {TOOL_CALL_END}', f"call: {calls}"]
    what = "tools" if names is None else f"tool {names[0]!r}" if len(names) == 1 else "tools"
    return grammar("\n".join(top + rules), tokenizer, what=what)


# --- OpenAI-shaped requests (the server, Conversation) --------------------------------------

def from_response_format(fmt: Any, tokenizer) -> Optional[Constraint]:
    """The constraint of an OpenAI `response_format` (None: unconstrained text).

    {"type": "text"} or None -> None; {"type": "json_object"} -> any JSON object;
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}} -> that schema.
    The string "json" is short for json_object. Bad input raises a one-line ConstraintError.
    """
    if fmt is None:
        return None
    if fmt == "json":
        fmt = {"type": "json_object"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise ConstraintError("response_format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                              "{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {...}}}")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return json_schema(ANY_OBJECT, tokenizer)
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise ConstraintError("response_format json_schema: \"json_schema\" must be an object holding \"schema\"")
    schema = spec.get("schema", ANY_OBJECT)
    label = f"response_format json_schema {spec['name']!r}" if isinstance(spec.get("name"), str) else \
        "response_format json_schema"
    return json_schema(schema, tokenizer, what=label)


def from_tool_choice(tool_choice: Any, tools: Optional[Sequence[Any]], tokenizer,
                     parallel_tool_calls: bool = True) -> Optional[Constraint]:
    """The constraint of an OpenAI `tool_choice` (None: the model chooses, as with "auto").

    "auto", "none" or None -> None (a server drops the tools for "none"); "required" -> calls
    to `tools`, up to MAX_CALLS of them (one with parallel_tool_calls=False);
    {"type": "function", "function": {"name": N}} -> one call to N.
    """
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        return tool_calls(tools or [], tokenizer, max_calls=MAX_CALLS if parallel_tool_calls else 1)
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if (isinstance(tool_choice, dict) and tool_choice.get("type") == "function" and isinstance(fn, dict)
            and isinstance(fn.get("name"), str)):
        return tool_calls(tools or [], tokenizer, names=[fn["name"]], max_calls=1)
    raise ConstraintError("tool_choice must be \"auto\", \"none\", \"required\" or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}")


# --- one generation ------------------------------------------------------------------------------

_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lfm2q-mask")
# Compute the next mask on _WORKER while the model evaluates (see the module docstring).
OVERLAP = False


class Guide:
    """The matcher state of one generation. Per step: `allowed()`, then `advance(token)`."""

    def __init__(self, matcher, n_vocab: int, ll_vocab: int, end_ids: Iterable[int]) -> None:
        self._m = matcher
        self._bits = np.zeros((ll_vocab + 31) // 32, dtype=np.int32)  # llguidance's bitmask
        self._n_vocab = n_vocab
        self._n = min(n_vocab, ll_vocab)
        self._allowed = np.zeros(n_vocab, dtype=bool)  # [V], ids past the tokenizer never allowed
        self._end = np.array(sorted({int(i) for i in end_ids if 0 <= int(i) < n_vocab}), dtype=np.int64)
        self._pending: Optional[Future] = None

    @property
    def finished(self) -> bool:
        """The grammar cannot go on: the generation ends here."""
        return self._m.is_stopped()

    def _fill(self) -> None:
        self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)

    def prefetch(self) -> None:
        """Start computing the next mask on the worker thread (after `advance`), if OVERLAP."""
        if OVERLAP and self._pending is None and not self.finished:
            self._pending = _WORKER.submit(self._fill)

    def allowed(self) -> np.ndarray:
        """[V] bool: the ids that may come next. End tokens only where the grammar may end."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        else:
            self._fill()
        err = self._m.get_error()
        if err:
            raise GenerationError(f"constrained generation failed: {one_line(err)[:200]}")
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")  # [32 * words]
        out = self._allowed
        out[: self._n] = bits[: self._n].view(bool)
        if len(self._end):
            out[self._end] = self._m.is_accepting()
        return out

    def advance(self, token_id: int) -> None:
        """Feed the sampled (allowed, non-end) token to the matcher."""
        if not self._m.consume_token(int(token_id)):
            raise GenerationError(f"constrained generation failed: token {token_id} was refused "
                                  f"({one_line(self._m.get_error())[:200]})")
