"""`lfm2q run`: the interactive chat. All terminal UI is here; the chat itself is `Conversation`.

Input: one line is one message; a line ending in `\\` continues on the next; `\"\"\"` opens a
multi-line message that the next `\"\"\"` closes (as in ollama). Lines starting with `/` are
commands (`/help`). Ctrl-C during a reply stops it (the partial reply stays in the chat; a
second Ctrl-C also breaks out of a long prompt evaluation); Ctrl-C or Ctrl-D at the prompt leaves.

Streaming: `<think>` blocks are shown dim, tool-call blocks are hidden while they stream and
shown as calls afterwards; the user types each result, which goes back as a `tool` message.
"""
from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.markup import escape

from .conversation import Conversation, Done, Notice, Reply
from .errors import Lfm2qError
from .progress import Compiled, CompileSplit, Waiting, rate
from .toolcalls import TOOL_CALL_END, TOOL_CALL_START

PROMPT, MORE = ">>> ", "... "
SPINNER_MIN_TOKENS = 64  # prompts shorter than this evaluate too fast for a spinner to help
MAX_TOOL_ROUNDS = 8      # model -> tool results -> model, per user message

DEMO_NOTE = ("This is the built-in demo model (2.6M parameters): it shows lfm2q working but does not answer "
             "questions. For a real one: lfm2q run MODEL.gguf, or a Hub name such as LiquidAI/LFM2-1.2B-GGUF.")

HELP = """\
Commands:
  /help                 this list
  /clear                forget the conversation (the system prompt stays)
  /system [TEXT]        show, or set, the system prompt
  /set [NAME VALUE]     show settings, or change one: temperature, top_k, top_p, min_p,
                        repeat_penalty, seed (none = random), max_tokens (none = no limit)
  /stats                context use and the last reply's speed
  /format json|off|FILE replies as any JSON object, as JSON valid under the schema in FILE,
                        or free text again (off)
  /save FILE            write the chat to a JSON file
  /load FILE            continue a chat saved with /save
  /exit                 leave (also Ctrl-D)
Input: end a line with \\ to continue it; wrap several lines in \"\"\" … \"\"\".
Ctrl-C stops a reply and keeps the chat; at the prompt it leaves."""

# /set NAME -> (SamplingParams field or conversation attribute, parser)
SETTINGS: dict[str, tuple[str, Callable[[str], object]]] = {}


def _opt_int(s: str) -> Optional[int]:
    return None if s.lower() in ("none", "off", "-1") else int(s)


for _name, _parse in (("temperature", float), ("top_k", int), ("top_p", float), ("min_p", float),
                      ("repetition_penalty", float), ("seed", _opt_int)):
    SETTINGS[_name] = (_name, _parse)
SETTINGS["repeat_penalty"] = SETTINGS["repetition_penalty"]
SETTINGS["max_tokens"] = ("max_tokens", _opt_int)


# --- streaming display ---------------------------------------------------------------------

class MarkupSplitter:
    """Splits streamed text into ("text" | "think" | "call", piece), coping with a tag split
    across pieces: text that could be the start of a tag is held until the next piece decides."""

    TAGS = {"text": (("<think>", "think"), (TOOL_CALL_START, "call")),
            "think": (("</think>", "text"),),
            "call": ((TOOL_CALL_END, "text"),)}

    def __init__(self) -> None:
        self.mode = "text"
        self.held = ""

    def feed(self, piece: str) -> Iterator[tuple[str, str]]:
        text = self.held + piece
        self.held = ""
        while text:
            tags = self.TAGS[self.mode]
            hits = [(text.find(tag), tag, mode) for tag, mode in tags if tag in text]
            if hits:
                i, tag, mode = min(hits)
                if i:
                    yield self.mode, text[:i]
                self.mode = mode
                text = text[i + len(tag):]
                continue
            keep = max((n for tag, _ in tags for n in range(1, len(tag)) if text.endswith(tag[:n])), default=0)
            if keep < len(text):
                yield self.mode, text[:len(text) - keep]
            self.held = text[len(text) - keep:]
            return

    def flush(self) -> Iterator[tuple[str, str]]:
        if self.held:
            yield self.mode, self.held
        self.held = ""


class _CtrlC:
    """During a reply, the first Ctrl-C asks the stream to stop after the current token; the
    second raises KeyboardInterrupt (it breaks out of a long prompt evaluation)."""

    def __enter__(self) -> "_CtrlC":
        self.hits = 0
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.hits += 1
        if self.hits > 1:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._old)


def stream_reply(console: Console, stream: Iterator) -> tuple[Optional[Reply], Compiled]:
    """Print a reply as it streams; return it (None when it was interrupted) and the compile
    time it included. Until the first text, a status line shows the prompt being read (long
    prompts) or the kernels compiling."""
    split = MarkupSplitter()
    styles = {"text": "", "think": "dim italic"}
    waiting = Waiting(console)
    timing = CompileSplit()
    reply = None
    wrote = ""

    def show(kind: str, piece: str) -> None:
        nonlocal wrote
        if kind in styles and piece:
            console.print(piece, style=styles[kind], end="", markup=False, highlight=False, soft_wrap=True)
            wrote = piece

    try:
        with _CtrlC() as ctrl_c, waiting:
            for step in stream:
                if isinstance(step, Notice):
                    if step.kind == "trimmed":
                        console.print(f"[yellow]{escape(step.message)}[/]")
                    elif step.kind == "prefill":
                        timing.start()  # the prompt's evaluation starts now
                        if step.n_tokens >= SPINNER_MIN_TOKENS:
                            waiting.label = f"reading {step.n_tokens} tokens…"
                            waiting.show()
                    continue
                if timing.first_token():
                    waiting.end()
                for kind, piece in split.feed(step.text):
                    show(kind, piece)
                if isinstance(step, Done):
                    reply = step.reply
                if ctrl_c.hits:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    compiled = timing.done()
    for kind, piece in split.flush():
        show(kind, piece)
    if wrote and not wrote.endswith("\n"):
        console.print()
    if reply is None:
        console.print("[dim]^C — reply stopped; it stays in the chat[/]")
    return reply, compiled


def stats_line(conv: Conversation, reply: Optional[Reply], compiled: Optional[Compiled] = None) -> str:
    s = conv.stats
    compiled = compiled or Compiled()
    parts = []
    if reply is not None and reply.result is not None:
        r = reply.result
        parts.append(f"{r.n_generated} tokens · {rate(r.n_generated, r.decode_seconds, compiled.decode_s):.1f} tok/s")
        if r.n_prompt:
            parts.append(f"prompt {r.n_prompt} tokens at "
                         f"{rate(r.n_prompt, r.prompt_seconds, compiled.prompt_s):.0f} tok/s")
        if r.finish_reason != "stop":
            parts.append(f"stopped: {'max tokens' if r.finish_reason == 'length' else 'context full'}")
    parts.append(f"context {s.n_past}/{s.n_ctx}")
    if compiled.note():
        parts.append(compiled.note())
    return " · ".join(parts)


# --- input ---------------------------------------------------------------------------------

def read_message(read: Callable[[str], str]) -> str:
    """One message from the user (see the module docstring). EOFError / KeyboardInterrupt pass through."""
    line = read(PROMPT)
    if line.lstrip().startswith('"""'):
        first = line.lstrip()[3:]
        if first.rstrip().endswith('"""'):
            return first.rstrip()[:-3]
        lines = [first] if first else []
        while True:
            more = read(MORE)
            if more.rstrip().endswith('"""'):
                end = more.rstrip()[:-3]
                if end:
                    lines.append(end)
                return "\n".join(lines)
            lines.append(more)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read(MORE)
    lines.append(line)
    return "\n".join(lines)


def _is_builtin(path) -> bool:
    from .builtin import DATA

    try:
        return Path(path).resolve().parent == DATA.resolve()
    except OSError:
        return False


# --- the loop ------------------------------------------------------------------------------

class Repl:
    def __init__(self, conv: Conversation, console: Optional[Console] = None,
                 read: Callable[[str], str] = input):
        self.conv = conv
        self.console = console or Console(highlight=False)
        self.read = read
        self.compiled = Compiled()  # the last reply's compile time, kept out of /stats' rates
        self.format = None  # /format: the Constraint every reply follows, or None

    def run(self) -> int:
        c = self.console
        c.print(f"[bold]{escape(self.conv.model.path.name)}[/] · context {self.conv.n_ctx} · "
                "[dim]/help for commands, Ctrl-D to leave[/]")
        if _is_builtin(self.conv.model.path):
            c.print(f"[yellow]{escape(DEMO_NOTE)}[/]")
        while True:
            try:
                text = read_message(self.read)
            except EOFError:
                c.print()
                return 0
            except KeyboardInterrupt:
                c.print()
                return 0
            if not text.strip():
                continue
            if text.startswith("/"):
                try:
                    if self.command(text) == "exit":
                        return 0
                except Lfm2qError as e:
                    c.print(f"[red]error:[/] {escape(str(e))}")
                continue
            self.turn(text)

    def turn(self, text: Optional[str]) -> None:
        c = self.console
        for _ in range(MAX_TOOL_ROUNDS):
            try:
                shape = {} if self.format is None else {"constraint": self.format}
                reply, self.compiled = stream_reply(c, self.conv.send_stream(text, **shape))
            except Lfm2qError as e:
                c.print(f"[red]error:[/] {escape(str(e))}")
                return
            c.print(f"[dim]{escape(stats_line(self.conv, reply, self.compiled))}[/]")
            if reply is None:
                return
            for w in reply.warnings:
                c.print(f"[yellow]{escape(w)}[/]")
            if not reply.tool_calls or not self.tool_results(reply):
                return
            text = None  # the model answers the tool results

    def tool_results(self, reply: Reply) -> bool:
        """Show each call and read its result; False when the user skips (empty line / Ctrl-C)."""
        c = self.console
        for call in reply.tool_calls:
            args = ", ".join(f"{k}={v!r}" for k, v in call.arguments.items())
            c.print(f"[bold cyan]tool call[/] {escape(call.name)}({escape(args)})")
        results = []
        for call in reply.tool_calls:
            try:
                result = self.read(f"result of {call.name} (empty to skip)> ")
            except (EOFError, KeyboardInterrupt):
                c.print()
                return False
            if not result.strip():
                return False
            results.append(result)
        for result in results:
            self.conv.add_tool_result(result)
        return True

    def command(self, line: str) -> Optional[str]:
        c, conv = self.console, self.conv
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        name = name.lower()
        if name in ("/exit", "/bye", "/quit"):
            return "exit"
        if name in ("/help", "/?"):
            c.print(HELP, markup=False)
        elif name == "/clear":
            conv.clear()
            c.print("[dim]cleared[/]")
        elif name == "/system":
            if arg:
                conv.set_system(arg)
                c.print("[dim]system prompt set[/]")
            else:
                c.print(escape(conv.system) if conv.system else "[dim](no system prompt)[/]")
        elif name == "/set":
            self.set(arg)
        elif name == "/stats":
            s = conv.stats
            c.print(f"context {s.n_past}/{s.n_ctx} tokens · {s.messages} messages "
                    f"({s.messages_in_context} in context) · {s.turns} replies, {s.tokens_generated} tokens")
            if s.last is not None:
                r, k = s.last, self.compiled
                c.print(f"last reply: {r.n_generated} tokens at {rate(r.n_generated, r.decode_seconds, k.decode_s):.1f} "
                        f"tok/s; prompt {s.last_prompt_new} new + {s.last_prompt_reused} cached tokens "
                        f"({rate(r.n_prompt, r.prompt_seconds, k.prompt_s):.0f} tok/s)")
        elif name == "/format":
            self.set_format(arg)
        elif name == "/save":
            if not arg:
                raise Lfm2qError("/save needs a file name: /save chat.json")
            conv.save(arg)
            c.print(f"[dim]saved {len(conv.messages)} messages to {escape(arg)}[/]")
        elif name == "/load":
            if not arg:
                raise Lfm2qError("/load needs a file name: /load chat.json")
            conv.load(arg)
            c.print(f"[dim]loaded {len(conv.messages)} messages from {escape(arg)}[/]")
        else:
            raise Lfm2qError(f"unknown command {name} — /help lists them")
        return None

    def set_format(self, arg: str) -> None:
        """/format json | off | FILE (a JSON schema)."""
        from . import constrain
        from .errors import read_json

        tok = self.conv.model.tokenizer
        if arg.lower() in ("off", "text", "none"):
            self.format = None
        elif arg.lower() == "json":
            self.format = constrain.from_response_format("json", tok)
        elif arg:
            schema = read_json(arg, unreadable="cannot read the JSON schema", invalid="the JSON schema is not valid JSON")
            self.format = constrain.json_schema(schema, tok, what=arg)
        else:
            raise Lfm2qError("/format json, /format off, or /format FILE with a JSON schema")
        self.console.print(f"[dim]replies: {'free text' if self.format is None else escape(arg) + ' (JSON)'}[/]")

    def set(self, arg: str) -> None:
        c, conv = self.console, self.conv
        if not arg:
            s = dataclasses.asdict(conv.sampling)
            shown = {k: s[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")}
            shown["max_tokens"] = conv.max_tokens
            c.print("  ".join(f"{k}={v}" for k, v in shown.items()), markup=False)
            return
        name, _, value = arg.partition(" ")
        key = name.lower().replace("-", "_")
        if key not in SETTINGS or not value.strip():
            raise Lfm2qError(f"/set NAME VALUE with NAME one of {', '.join(SETTINGS)}")
        target, parse = SETTINGS[key]
        try:
            parsed = parse(value.strip())
        except ValueError:
            raise Lfm2qError(f"/set {key}: {value.strip()!r} is not a valid value") from None
        if target == "max_tokens":
            if parsed is not None and parsed < 1:
                raise Lfm2qError("/set max_tokens: use a whole number ≥ 1, or none")
            conv.max_tokens = parsed
        else:
            conv.sampling = dataclasses.replace(conv.sampling, **{target: parsed})
        c.print(f"[dim]{key} = {parsed}[/]")


def load_model(path, n_ctx: int, n_threads: Optional[int], kv_cache: str = "f16",
               console: Optional[Console] = None):
    """`lfm2q.load` behind a status line (on a terminal), which also counts kernels compiling."""
    from .api import load

    console = console or Console(stderr=True)
    with Waiting(console, f"loading {path}…"):
        return load(path, n_ctx=n_ctx, n_threads=n_threads, kv_cache=kv_cache)


def run(conv: Conversation, console: Optional[Console] = None) -> int:
    """The REPL on a ready conversation; returns the exit status."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    return Repl(conv, console).run()
