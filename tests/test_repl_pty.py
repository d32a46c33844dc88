"""`lfm2q run` in a real pseudo-terminal (pexpect), plus the REPL's parts in-process: input
reading, the split-tag-safe markup splitter, and the tool-call round trip."""
from __future__ import annotations

import io
import sys
import time

import pytest
from rich.console import Console

from lfm2q.conversation import Done, Notice, Reply
from lfm2q.generate import Step
from lfm2q.repl import MarkupSplitter, Repl, read_message
from sigint import default_sigint
from test_cli import make_endless

pexpect = pytest.importorskip("pexpect")


@pytest.fixture(scope="module")
def endless(tiny_gguf, tmp_path_factory):
    return make_endless(tiny_gguf("f32"), tmp_path_factory.mktemp("pty") / "endless.gguf")


def spawn(*args: str):
    child = pexpect.spawn(sys.executable, ["-m", "lfm2q", "run", *map(str, args)], encoding="utf-8",
                          timeout=90, dimensions=(40, 160), preexec_fn=default_sigint)
    child.logfile_read = io.StringIO()
    child.expect_exact(">>> ")
    return child


def test_chat_in_a_terminal(endless):
    c = spawn(endless, "--max-tokens", "12", "--seed", "1")
    try:
        c.sendline("What is a small language model?")
        c.expect(r"12 tokens · [\d.]+ tok/s .*context \d+/4096")  # a whole reply, then its stats line
        c.expect_exact(">>> ")

        c.sendline("/clear")
        c.expect_exact("cleared")
        c.expect_exact(">>> ")
        c.sendline("/set temperature 0")
        c.expect_exact("temperature = 0.0")
        c.expect_exact(">>> ")
        c.sendline("/set max_tokens 100000")
        c.expect_exact(">>> ")

        c.sendline("Tell me a very long story.")
        c.expect_exact("Tell me a very long story.")
        seen = ""
        deadline = time.time() + 60
        while len(seen) < 40 and time.time() < deadline:  # tokens arrive while the reply goes on
            seen += c.read_nonblocking(4096, timeout=60)
        assert len(seen) >= 40 and ">>> " not in seen
        c.sendintr()
        c.expect_exact("reply stopped")
        c.expect_exact(">>> ")

        c.sendline("/set max_tokens 8")
        c.expect_exact(">>> ")
        c.sendline('"""')  # a multi-line message
        c.expect_exact("... ")
        c.sendline("and now,")
        c.sendline('briefly?"""')
        c.expect(r"8 tokens · [\d.]+ tok/s")
        c.expect_exact(">>> ")
        c.sendline("/stats")
        c.expect_exact("4 messages")  # question, the stopped reply, question, reply
        c.expect_exact(">>> ")

        c.sendeof()
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 0, c.logfile_read.getvalue()[-2000:]
    assert "Traceback" not in c.logfile_read.getvalue()


def test_ctrl_c_at_the_prompt_leaves(endless):
    c = spawn(endless)
    try:
        c.sendintr()
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 0 and "Traceback" not in c.logfile_read.getvalue()


# --- in-process ----------------------------------------------------------------------------

def reader(lines):
    it = iter(lines)

    def read(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_read_message_multiline_forms():
    assert read_message(reader(["hello"])) == "hello"
    assert read_message(reader(["one \\", "two \\", "three"])) == "one \ntwo \nthree"
    assert read_message(reader(['"""', "a", "", "b", '"""'])) == "a\n\nb"
    assert read_message(reader(['"""first', 'last"""'])) == "first\nlast"
    assert read_message(reader(['"""inline"""'])) == "inline"


def test_markup_splitter_copes_with_split_tags():
    s = MarkupSplitter()
    pieces = ["Hi <th", "ink>pon", "der</", "think>ok <|tool_call", "_start|>[f(x=1)]<|tool_call_end|>", " end<"]
    out = [kv for p in pieces for kv in s.feed(p)] + list(s.flush())
    merged = []
    for kind, text in out:
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    assert merged == [("text", "Hi "), ("think", "ponder"), ("text", "ok "), ("call", "[f(x=1)]"),
                      ("text", " end<")]


class FakeConversation:
    """Replies with a tool call first, then with text; records what the REPL sends."""

    def __init__(self):
        self.sent, self.tool_results = [], []
        self.replies = ['Let me check. <|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>',
                        "It is 21 degrees."]

    def send_stream(self, text):
        self.sent.append(text)
        raw = self.replies.pop(0)
        yield Notice(None, "", kind="prefill", n_tokens=3)
        for ch in raw:
            yield Step(1, ch)
        yield Done(None, "", None, reply=Reply.from_text(raw))

    def add_tool_result(self, content):
        self.tool_results.append(content)

    @property
    def stats(self):
        class S:
            n_past, n_ctx = 10, 100
        return S()


def test_tool_call_is_shown_and_its_result_goes_back():
    conv = FakeConversation()
    out = io.StringIO()
    repl = Repl(conv, Console(file=out, width=120), read=reader(["21 degrees, sunny"]))
    repl.turn("weather in Paris?")
    text = out.getvalue()
    assert "tool call get_weather(city='Paris')" in text
    assert "<|tool_call_start|>" not in text and "Let me check." in text and "It is 21 degrees." in text
    assert conv.sent == ["weather in Paris?", None] and conv.tool_results == ["21 degrees, sunny"]
