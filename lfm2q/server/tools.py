"""Between lfm2q's replies and OpenAI's message shape: tool calls, reasoning, and stream deltas.

- `pythonic_block(calls)`: an assistant's earlier calls written back as LFM2 writes them
  (`<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>`), for templates that print
  only `content`; written as the model writes them, so the next request finds them in the cache.
- `openai_calls(calls)`: `ToolCall`s as OpenAI `tool_calls` (id, function.name, arguments JSON).
- `DeltaStream`: streamed text pieces in, OpenAI deltas out (`content`, `reasoning_content`,
  `tool_calls`). Each delta extends what the same text parsed whole gives (`Reply.from_text`),
  and `finish(reply)` sends the rest, so a streamed reply adds up to the non-streamed one.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Iterable, Optional

from ..conversation import THINK_CLOSE, THINK_OPEN, Reply, split_thinking
from ..toolcalls import TOOL_CALL_END, TOOL_CALL_START, ToolCall, parse_tool_calls

_TAGS = (THINK_OPEN, THINK_CLOSE, TOOL_CALL_START, TOOL_CALL_END)


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if v is None:
        return "None"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(x)}" for k, x in v.items()) + "}"
    return json.dumps(v, ensure_ascii=False)


def pythonic_block(calls: Iterable[tuple[str, dict]]) -> str:
    body = ", ".join(f"{name}(" + ", ".join(f"{k}={_literal(v)}" for k, v in args.items()) + ")"
                     for name, args in calls)
    return f"{TOOL_CALL_START}[{body}]{TOOL_CALL_END}"


def openai_calls(calls: list[ToolCall], start: int = 0) -> list[dict]:
    return [{"index": start + i, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
            for i, c in enumerate(calls)]


def message(reply: Reply) -> dict:
    """The non-streamed assistant message."""
    msg: dict = {"role": "assistant", "content": reply.text}
    if reply.thinking is not None:
        msg["reasoning_content"] = reply.thinking
    if reply.tool_calls:
        msg["content"] = reply.text or None
        msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in openai_calls(reply.tool_calls)]
    return msg


def finish_reason(reply: Reply) -> str:
    if reply.tool_calls:
        return "tool_calls"
    return "length" if reply.finish_reason in ("length", "context") else "stop"


class DeltaStream:
    """Streamed reply text in, OpenAI deltas out (see the module docstring)."""

    def __init__(self) -> None:
        self.raw = ""
        self.content = ""     # sent so far
        self.reasoning = ""
        self.calls = 0
        self._plain = True    # no tag seen yet: content is the raw text (the fast path)

    def feed(self, piece: str) -> list[dict]:
        if not piece:
            return []
        self.raw += piece
        if self._plain and "<" not in piece:
            return self._send(self._view_plain())
        self._plain = False
        return self._send(self._view())

    def finish(self, reply: Reply) -> list[dict]:
        """The rest of the reply (its parse of the whole text is the truth)."""
        return self._send((reply.thinking or "", reply.text, reply.tool_calls))

    def _view_plain(self):
        return "", self.raw, []

    def _view(self):
        raw = self.raw
        hold = max((n for tag in _TAGS for n in range(1, len(tag)) if raw.endswith(tag[:n])), default=0)
        raw = raw[:len(raw) - hold]  # a tag may be arriving: wait for it
        thinking, answer = split_thinking(raw)
        open_at = answer.rfind(TOOL_CALL_START)
        if open_at >= 0 and answer.find(TOOL_CALL_END, open_at) < 0:
            answer = answer[:open_at]  # a call still being written
        text, calls, _ = parse_tool_calls(answer)
        return thinking or "", text, calls

    def _send(self, view) -> list[dict]:
        thinking, text, calls = view
        out = []
        if len(thinking) > len(self.reasoning) and thinking.startswith(self.reasoning):
            out.append({"reasoning_content": thinking[len(self.reasoning):]})
            self.reasoning = thinking
        if len(text) > len(self.content) and text.startswith(self.content):
            out.append({"content": text[len(self.content):]})
            self.content = text
        if len(calls) > self.calls:
            out.append({"tool_calls": openai_calls(calls[self.calls:], self.calls)})
            self.calls = len(calls)
        return out


def streamed_text(deltas: Iterable[dict], key: str) -> Optional[str]:
    """A delta field concatenated (tests and clients)."""
    parts = [d[key] for d in deltas if d.get(key)]
    return "".join(parts) if parts else None
