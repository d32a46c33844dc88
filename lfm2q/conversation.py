"""Multi-turn chat on one `Session` that is kept between turns.

A turn:
 1. The whole conversation (system prompt, tools, the messages in the context window and the
    generation prompt) is rendered with the file's template (`render_chat`; ChatML when the
    file has none) and tokenized WITHOUT adding BOS: the template writes it (docs/chat.md §1).
 2. The ids already in the cache are compared with the new rendering. When they are a prefix,
    only the new ids are evaluated. When they are not (the model sampled a tokenization of its
    reply that re-tokenizes differently; LFM2.5 templates drop past `<think>` blocks; the
    system prompt changed; old turns were dropped), the session goes back to the latest
    checkpoint at or before the first differing id (or to the start) and evaluates from there.
 3. The reply is sampled and appended to the transcript as the model wrote it (tool-call and
    think markup included), so re-rendering it reproduces what the model saw.

Checkpoints: the conv windows cannot be rolled back by position (cache.py), but KV rows below
n_past are never rewritten, so a checkpoint needs only n_past and the conv windows — a few
hundred KB however long the context. One is taken per turn, right after the prompt is
evaluated (before the reply, which is where the next rendering most often differs).

Context full (on_full="drop_oldest", like ollama): when the rendered prompt plus room for the
reply (max_tokens, at most a quarter of the context) does not fit, the oldest turns (a user
message and everything up to the next one) leave the context window, the system prompt stays,
and the stream yields a `Notice(kind="trimmed")` saying so. The transcript keeps every message
(`save` writes them all). If the latest turn alone does not fit, the turn is refused with a
one-line `GenerationError`. on_full="error" refuses instead of dropping. on_full="prompt" (a server,
whose clients send the whole conversation each time) keeps every message and refuses only a
prompt that leaves no position for the reply; the reply then ends when the context fills.

Interrupted replies (the consumer stops iterating, or Ctrl-C raises inside a kernel): the
partial reply stays in the transcript. A stop between steps leaves the session as it is; an
exception mid-step may leave it half-updated, so it goes back to the latest checkpoint.

    conv = Conversation(model, system="Be brief.")
    print(conv.send("Hi!").text)
    for step in conv.send_stream("And then?"):
        print(step.text, end="")
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from .cache import Snapshot
from .chat import render_chat
from .errors import GenerationError, Lfm2qError, read_json
from .generate import GenerationResult, Step, generate_stream
from .sampling import SamplingParams
from .toolcalls import ToolCall, parse_tool_calls

if TYPE_CHECKING:
    from .api import Model

# The LFM2 model cards' advice for chat.
CHAT_SAMPLING = SamplingParams(temperature=0.3, min_p=0.15, repetition_penalty=1.05)
MAX_CHECKPOINTS = 64   # per conversation; each is n_past + the conv windows
FILE_FORMAT = "lfm2q-chat"
FILE_VERSION = 1
ROLES = ("user", "assistant", "tool")
ON_FULL = ("drop_oldest", "error", "prompt")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ChatFileError(Lfm2qError):
    """A saved chat file cannot be read."""


# --- what a reply is -----------------------------------------------------------------------

@dataclass
class Reply:
    text: str                            # the answer: think and tool-call blocks taken out
    tool_calls: list[ToolCall]
    result: Optional[GenerationResult]   # None when the reply was interrupted
    raw: str = ""                        # as generated, markup included
    thinking: Optional[str] = None       # what was inside <think>…</think>
    warnings: list[str] = field(default_factory=list)  # tool-call blocks kept as text, and why
    interrupted: bool = False

    @property
    def finish_reason(self) -> str:
        """"stop" | "length" | "context" | "interrupted"."""
        return "interrupted" if self.interrupted or self.result is None else self.result.finish_reason

    @classmethod
    def from_text(cls, raw: str, result: Optional[GenerationResult] = None, interrupted: bool = False) -> "Reply":
        thinking, answer = split_thinking(raw)
        text, calls, warnings = parse_tool_calls(answer)
        return cls(text=text, tool_calls=calls, result=result, raw=raw, thinking=thinking,
                   warnings=warnings, interrupted=interrupted)


def split_thinking(text: str) -> tuple[Optional[str], str]:
    """(thinking, answer). A reply that opened <think> and never closed it is all thinking.

    A `</think>` without an opening tag counts too: some templates open the block in the prompt.
    """
    i = text.find(THINK_OPEN)
    if i < 0:
        j = text.find(THINK_CLOSE)
        if j < 0:
            return None, text
        return text[:j], text[j + len(THINK_CLOSE):].lstrip()
    j = text.find(THINK_CLOSE, i + len(THINK_OPEN))
    if j < 0:
        return text[i + len(THINK_OPEN):], text[:i]
    return text[i + len(THINK_OPEN):j], text[:i] + text[j + len(THINK_CLOSE):].lstrip()


@dataclass
class Notice(Step):
    """An event in a reply stream that is not a token (its `text` is always "").

    kind "prefill": `n_tokens` prompt ids are about to be evaluated (a UI may show a spinner);
    kind "trimmed": the context was full and old turns left it; `message` says which.
    """

    kind: str = ""
    message: str = ""
    n_tokens: int = 0


@dataclass
class Done(Step):
    """The last step of a reply stream: `result` as in generate, and the parsed `reply`."""

    reply: Optional[Reply] = None


@dataclass
class ChatStats:
    n_ctx: int
    n_past: int                  # ids in the cache now
    messages: int                # in the transcript
    messages_in_context: int     # in the context window (the rest were dropped when it filled)
    turns: int                   # replies generated
    tokens_generated: int        # over all turns
    last_prompt_new: int = 0     # ids the last turn evaluated for its prompt
    last_prompt_reused: int = 0  # ids of the last prompt found in the cache
    last: Optional[GenerationResult] = None


# --- rendering --------------------------------------------------------------------------------

def render_ids(model: "Model", messages: list[dict], tools: Optional[list] = None,
               add_generation_prompt: bool = True) -> list[int]:
    """The conversation as the model reads it: the file's template, tokenized without an extra BOS."""
    tok = model.tokenizer
    names = {}
    for key, tid in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id)):
        if tid is not None:
            names[key] = tok.id_to_token(tid)
    text = render_chat(model.chat_template, messages, tools=tools or None,
                       add_generation_prompt=add_generation_prompt, **names)
    return model.tokenize(text, add_bos=False)


def sampling_params(base: SamplingParams = CHAT_SAMPLING, **options: Any) -> SamplingParams:
    """`base` with some fields replaced; an unknown name is a one-line GenerationError."""
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise GenerationError(f"unknown sampling option {unknown[0]!r}; use {', '.join(sorted(names))}")
    return dataclasses.replace(base, **options)


def reply_constraint(model: "Model", response_format: Any = None, tool_choice: Any = None,
                     tools: Optional[list] = None):
    """The constrain.Constraint of an OpenAI-style response_format or tool_choice (None: free text).

    response_format: {"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema":
    ...}}, "json", or None / {"type": "text"}. tool_choice: "required" (a call to one of `tools`),
    {"type": "function", "function": {"name": ...}}, or None / "auto" / "none" (unconstrained).
    """
    from . import constrain

    fmt = constrain.from_response_format(response_format, model.tokenizer)
    calls = constrain.from_tool_choice(tool_choice, tools, model.tokenizer)
    if fmt is not None and calls is not None:
        raise GenerationError("give response_format or a forced tool_choice, not both: a reply is "
                              "either JSON or a tool call")
    return fmt or calls


def chat_stream(model: "Model", messages: Sequence[dict], tools: Optional[list] = None, *,
                sampling: SamplingParams = CHAT_SAMPLING, max_tokens: Optional[int] = None,
                stop: Optional[list[str]] = None, constraint=None) -> Iterator[Step]:
    """One reply to `messages` in a fresh session: Steps, then a `Done` holding the `Reply`.

    `constraint`: a constrain.Constraint the reply must follow (see `reply_constraint`)."""
    ids = render_ids(model, list(messages), tools)
    session = model.session()
    steps = generate_stream(session, model.tokenizer, ids, max_tokens=_max_tokens(max_tokens, session.n_ctx),
                            sampling=sampling, stop=stop, constraint=constraint)
    return _stateless(steps)


def _stateless(steps: Iterator[Step]) -> Iterator[Step]:
    pieces = []
    for step in steps:
        pieces.append(step.text)
        if step.result is None:
            yield step
        else:
            yield Done(None, step.text, step.result, reply=Reply.from_text("".join(pieces), step.result))


def _max_tokens(max_tokens: Optional[int], n_ctx: int) -> int:
    if max_tokens is None:
        return n_ctx  # no limit but the context
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise GenerationError(f"max_tokens={max_tokens!r} is invalid; use a whole number ≥ 1, or None for no limit")
    return max_tokens


# --- the conversation --------------------------------------------------------------------------

class Conversation:
    """A chat whose session (caches) lives from turn to turn. See the module docstring."""

    def __init__(self, model: "Model", system: Optional[str] = None, tools: Optional[list] = None,
                 sampling: SamplingParams = CHAT_SAMPLING, max_tokens: Optional[int] = None,
                 stop: Optional[list[str]] = None, on_full: str = "drop_oldest"):
        if on_full not in ON_FULL:
            raise GenerationError(f"on_full={on_full!r} is invalid; use 'drop_oldest', 'error' or 'prompt'")
        if not isinstance(sampling, SamplingParams):
            raise GenerationError("sampling must be a SamplingParams")
        self.model = model
        self.system: Optional[str] = system or None
        self.tools: Optional[list] = list(tools) if tools else None
        self.sampling = sampling
        _max_tokens(max_tokens, 1)
        self.max_tokens = max_tokens
        self.stop = list(stop) if stop else None
        self.on_full = on_full
        self.messages: list[dict] = []   # the transcript: user / assistant / tool messages
        self.last_reply: Optional[Reply] = None
        self.session = model.session()
        self._start = 0                  # first message inside the context window
        self._cached: list[int] = []     # the ids evaluated into self.session, in order
        self._marks: list[Snapshot] = []  # checkpoints, n_past ascending
        self._turns = 0
        self._generated = 0
        self._last_new = self._last_reused = 0

    # --- state --------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self.session.n_ctx

    @property
    def cached_tokens(self) -> list[int]:
        """The ids the session has evaluated (a copy)."""
        return list(self._cached)

    def window(self) -> list[dict]:
        """The messages the model sees next turn: the system prompt and the context window."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages[self._start:]

    @property
    def stats(self) -> ChatStats:
        return ChatStats(n_ctx=self.n_ctx, n_past=self.session.n_past, messages=len(self.messages),
                         messages_in_context=len(self.messages) - self._start, turns=self._turns,
                         tokens_generated=self._generated, last_prompt_new=self._last_new,
                         last_prompt_reused=self._last_reused,
                         last=self.last_reply.result if self.last_reply else None)

    def clear(self) -> None:
        """Forget every message (the system prompt and tools stay) and empty the cache."""
        self.messages.clear()
        self.last_reply = None
        self._start = 0
        self._reset_cache()

    def set_system(self, text: Optional[str]) -> None:
        """Replace the system prompt (None or "" removes it); takes effect next turn."""
        self.system = text or None

    def add_tool_result(self, content: Any, name: Optional[str] = None) -> None:
        """Append a tool's result as a `tool` message; `send()` with no text then lets the model answer."""
        if not isinstance(content, str):
            try:
                content = json.dumps(content, ensure_ascii=False)
            except (TypeError, ValueError) as e:
                raise GenerationError(f"tool result is not JSON-serializable: {e}") from None
        msg = {"role": "tool", "content": content}
        if name:
            msg["name"] = name
        self.messages.append(msg)

    # --- turns --------------------------------------------------------------------------

    def send(self, text: Optional[str] = None, *, response_format: Any = None, tool_choice: Any = None,
             constraint=None) -> Reply:
        """Add a user message (None: answer what is there, e.g. after tool results); return the reply.

        Structured replies, for this turn: response_format={"type": "json_schema", "json_schema":
        {"name": ..., "schema": {...}}} (or {"type": "json_object"}, or "json") makes the reply one
        JSON value valid under the schema; tool_choice="required" makes it a call to one or more
        of the conversation's tools ({"type": "function", "function": {"name": N}}: to N), which
        then always parses into `reply.tool_calls`; `constraint` takes a compiled
        constrain.Constraint instead. A bad schema raises a one-line error before anything runs.
        """
        reply = None
        for step in self.send_stream(text, response_format=response_format, tool_choice=tool_choice,
                                     constraint=constraint):
            if isinstance(step, Done):
                reply = step.reply
        assert reply is not None
        return reply

    def send_stream(self, text: Optional[str] = None, *, response_format: Any = None,
                    tool_choice: Any = None, constraint=None) -> Iterator[Step]:
        """Like `send`, streamed: `Notice`s, token `Step`s, then a `Done` with the `Reply`.

        The message is added and checked now; nothing is evaluated until you iterate. Stop
        iterating (or close the iterator) to interrupt: the partial reply stays in the transcript.
        """
        if constraint is None:
            constraint = reply_constraint(self.model, response_format, tool_choice, self.tools)
        elif response_format is not None or tool_choice not in (None, "auto"):
            raise GenerationError("give a constraint or response_format / tool_choice, not both")
        if text is not None:
            if not isinstance(text, str):
                raise GenerationError(f"a message must be a string, got {type(text).__name__}")
            self.messages.append({"role": "user", "content": text})
        elif not self.messages or self.messages[-1]["role"] == "assistant":
            raise GenerationError("nothing to answer: send a message (or add a tool result) first")
        try:
            ids, notice = self._fit_window()
            suffix = self._reuse(ids)
            steps = generate_stream(self.session, self.model.tokenizer, suffix,
                                    max_tokens=_max_tokens(self.max_tokens, self.n_ctx),
                                    sampling=self.sampling, stop=self.stop,
                                    context_ids=ids[:len(ids) - len(suffix)], constraint=constraint)
        except BaseException:
            if text is not None:
                self.messages.pop()
            raise
        self._last_new, self._last_reused = len(suffix), len(ids) - len(suffix)
        return self._turn(ids, suffix, steps, notice)

    def _turn(self, ids: list[int], suffix: list[int], steps: Iterator[Step],
              notice: Optional[Notice]) -> Iterator[Step]:
        if notice is not None:
            yield notice
        yield Notice(None, "", kind="prefill", n_tokens=len(suffix))
        pieces: list[str] = []
        tokens: list[int] = []
        prompt_done = False
        final = None
        try:
            for step in steps:
                if not prompt_done:  # the prompt is in, nothing sampled is: the next turn's checkpoint
                    prompt_done = True
                    self._cached = list(ids)
                    self._checkpoint()
                pieces.append(step.text)
                if step.result is not None:
                    final = step
                    break
                tokens.append(step.token_id)
                yield step
        except GeneratorExit:  # the consumer stopped between steps: the session is consistent
            self._settle(ids, tokens, prompt_done)
            self._record("".join(pieces), None, len(tokens))
            raise
        except BaseException:  # Ctrl-C or an error inside a step: trust only the checkpoint
            self._rollback(len(self._cached))
            self._record("".join(pieces), None, len(tokens))
            raise
        result = final.result
        self._settle(ids, result.tokens, True)
        reply = self._record("".join(pieces), result, result.n_generated)
        yield Done(None, final.text, result, reply=reply)

    def _record(self, raw: str, result: Optional[GenerationResult], n_sampled: int) -> Reply:
        reply = Reply.from_text(raw, result, interrupted=result is None)
        if raw:
            self.messages.append({"role": "assistant", "content": raw})
        self.last_reply = reply
        self._turns += 1
        self._generated += n_sampled
        return reply

    # --- the context window --------------------------------------------------------------

    def _fit_window(self) -> tuple[list[int], Optional[Notice]]:
        """Render the window, dropping the oldest turns while the prompt and the reply's room don't fit."""
        n_ctx = self.n_ctx
        if self.on_full == "prompt":
            ids = render_ids(self.model, self.window(), self.tools)
            if len(ids) >= n_ctx:
                raise GenerationError(f"the prompt is {len(ids)} tokens but the context holds {n_ctx}; "
                                      "shorten the conversation or raise the context size (--ctx)")
            return ids, None
        room = min(self.max_tokens or n_ctx, n_ctx // 4)  # kept free for the reply
        start0 = self._start
        ids = render_ids(self.model, self.window(), self.tools)
        n0 = len(ids)
        while len(ids) + room > n_ctx:
            nxt = self._next_turn(self._start)
            if nxt is None:
                break
            if self.on_full == "error":
                raise GenerationError(f"the conversation is {len(ids)} tokens and the context holds {n_ctx} "
                                      "with room for the reply; clear it or raise the context size")
            self._start = nxt
            ids = render_ids(self.model, self.window(), self.tools)
        if len(ids) >= n_ctx:
            self._start = start0
            raise GenerationError(f"the latest message makes a {len(ids)}-token prompt but the context holds "
                                  f"{n_ctx}; shorten it or raise the context size (--ctx)")
        if self._start == start0:
            return ids, None
        dropped = self._start - start0
        return ids, Notice(None, "", kind="trimmed", n_tokens=n0 - len(ids),
                           message=f"context full: the {dropped} oldest message{'s' * (dropped > 1)} "
                                   f"({n0 - len(ids)} tokens) left the context; the system prompt stays")

    def _next_turn(self, start: int) -> Optional[int]:
        for j in range(start + 1, len(self.messages)):
            if self.messages[j]["role"] == "user":
                return j
        return None

    # --- the cache -----------------------------------------------------------------------

    def _reuse(self, ids: list[int]) -> list[int]:
        """Bring the session to the longest cached prefix of `ids` it can reach; the ids left to evaluate."""
        if self.session.n_past != len(self._cached):  # someone else used the session
            self._reset_cache()
        p = 0
        for a, b in zip(self._cached, ids):
            if a != b:
                break
            p += 1
        # At least one id must be evaluated: the reply starts from the last position's logits.
        keep = min(p, len(ids) - 1)
        if keep < len(self._cached):
            self._rollback(keep)
        return ids[len(self._cached):]

    def _checkpoint(self) -> None:
        s = self.session.state
        snap = Snapshot(s.n_past, {}, {il: c.copy() for il, c in enumerate(s.conv) if c is not None})
        while self._marks and self._marks[-1].n_past >= snap.n_past:
            self._marks.pop()
        self._marks.append(snap)
        if len(self._marks) > MAX_CHECKPOINTS:
            del self._marks[0]

    def _rollback(self, limit: int) -> None:
        """Go back to the latest checkpoint at or before `limit` ids (or to the start)."""
        while self._marks and self._marks[-1].n_past > limit:
            self._marks.pop()
        if self._marks:
            self.session.restore(self._marks[-1])
        else:
            self.session.reset()
        self._cached = self._cached[:self.session.n_past]

    def _settle(self, ids: list[int], sampled: list[int], prompt_done: bool) -> None:
        """After a turn: record which sampled ids the session evaluated (all but the last)."""
        if not prompt_done:
            if self.session.n_past != len(self._cached):
                self._rollback(len(self._cached))
            return
        n = self.session.n_past - len(ids)
        if not 0 <= n <= len(sampled):
            self._rollback(len(ids))
            return
        self._cached = list(ids) + [int(t) for t in sampled[:n]]

    def _reset_cache(self) -> None:
        self.session.reset()
        self._cached = []
        self._marks = []

    # --- files --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the transcript and settings as JSON."""
        data = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "model": self.model.path.name,
            "system": self.system,
            "tools": self.tools,
            "settings": {**dataclasses.asdict(self.sampling), "max_tokens": self.max_tokens,
                         "stop": self.stop, "on_full": self.on_full},
            "messages": self.messages,
        }
        try:
            Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            raise ChatFileError(f"{path}: cannot write ({e.strerror})") from None

    def load(self, path: str | os.PathLike) -> None:
        """Replace the transcript and settings with a saved chat's. The cache is reused where it matches."""
        data = read_json(path, ChatFileError, invalid="not a saved chat, invalid JSON")
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise ChatFileError(f"{path}: not a saved lfm2q chat (no \"format\": \"{FILE_FORMAT}\")")
        if data.get("version") != FILE_VERSION:
            raise ChatFileError(f"{path}: chat file version {data.get('version')!r} is not supported "
                                f"(this lfm2q reads {FILE_VERSION})")
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise ChatFileError(f"{path}: \"messages\" must be a list")
        for i, m in enumerate(messages):
            if (not isinstance(m, dict) or m.get("role") not in ROLES
                    or not isinstance(m.get("content"), str)):
                raise ChatFileError(f"{path}: message {i} must be an object with a role "
                                    f"({', '.join(ROLES)}) and a string content")
        system, tools = data.get("system"), data.get("tools")
        if system is not None and not isinstance(system, str):
            raise ChatFileError(f"{path}: \"system\" must be a string or null")
        if tools is not None and not isinstance(tools, list):
            raise ChatFileError(f"{path}: \"tools\" must be a list or null")
        settings = data.get("settings") or {}
        if not isinstance(settings, dict):
            raise ChatFileError(f"{path}: \"settings\" must be an object")
        fields = {f.name for f in dataclasses.fields(SamplingParams)}
        try:
            sampling = SamplingParams(**{k: v for k, v in settings.items() if k in fields})
            max_tokens = settings.get("max_tokens")
            _max_tokens(max_tokens, 1)
        except GenerationError as e:
            raise ChatFileError(f"{path}: {e}") from None
        stop = settings.get("stop")
        if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise ChatFileError(f"{path}: settings.stop must be a list of strings")
        on_full = settings.get("on_full", self.on_full)
        if on_full not in ON_FULL:
            raise ChatFileError(f"{path}: settings.on_full must be 'drop_oldest', 'error' or 'prompt'")
        self.messages = [dict(m) for m in messages]
        self.system, self.tools = system or None, tools or None
        self.sampling, self.max_tokens, self.stop, self.on_full = sampling, max_tokens, stop or None, on_full
        self.last_reply = None
        self._start = 0

    @classmethod
    def from_file(cls, model: "Model", path: str | os.PathLike) -> "Conversation":
        conv = cls(model)
        conv.load(path)
        return conv
