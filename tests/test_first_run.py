"""The first minutes of `lfm2q run`: the progress line while numba compiles kernels, the stats
line that keeps compile time out of its rates, the built-in model's banner; and, in a real
terminal (tmux), a run whose cache lacks kernels, a cold first run (slow), and the REPL's speed
against `generate --json` (warm cache)."""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numba
import pytest
from numba.core import event
from rich.console import Console

import lfm2q
from lfm2q import progress
from lfm2q.conversation import Done, Notice, Reply
from lfm2q.generate import GenerationResult, Step
from lfm2q.progress import Compiled, CompileClock, Waiting
from lfm2q.repl import DEMO_NOTE, Repl, stats_line, stream_reply

QUESTION = "What is the capital of France?"
ENV = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}  # lfm2q's own cache folder


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def fake_time(monkeypatch):
    t = FakeTime()
    monkeypatch.setattr(progress, "now", t)
    return t


def compile_event(seconds: float, fake_time: FakeTime, nested: int = 1) -> None:
    """What numba broadcasts around a compilation that missed its cache (callees nest inside)."""
    for _ in range(nested):
        event.start_event("numba:compile")
    fake_time.now += seconds
    for _ in range(nested):
        event.end_event("numba:compile")


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system=None, highlight=False, width=160), out


# --- in-process: progress, stats, banner ---------------------------------------------------

def test_the_clock_counts_outermost_compilations_and_their_time(fake_time):
    clock = CompileClock()
    event.register("numba:compile", clock)
    try:
        compile_event(3.0, fake_time, nested=4)  # a kernel and three callees: one compilation
        compile_event(1.5, fake_time)
        event.start_event("numba:compile")
        fake_time.now += 2.0
        assert clock.count == 2 and clock.total() == pytest.approx(6.5)  # the running one counts
        event.end_event("numba:compile")
    finally:
        event.unregister("numba:compile", clock)
    assert clock.count == 3 and clock.seconds == pytest.approx(6.5)


def test_the_progress_line_counts_kernels_and_seconds_while_they_compile(fake_time):
    console, out = terminal()
    w = Waiting(console)
    with w:
        assert w._status is None and w.text() == ""          # nothing to say before a compile
        event.start_event("numba:compile")
        assert w._status is not None                          # the line appears at the first one
        fake_time.now += 12.4
        assert w.text() == "compiling kernels for this CPU (once): 0 compiled · 12 s"
        event.end_event("numba:compile")
        compile_event(30.0, fake_time)
        assert w.text() == "compiling kernels for this CPU (once): 2 compiled · 42 s"
        w.end()                                                # the reply's first token
        compile_event(1.0, fake_time)
        assert w._status is None                               # never back while text streams
    assert w._compiling not in progress.compile_clock().watchers


def test_the_progress_line_is_not_shown_off_a_terminal(fake_time):
    out = io.StringIO()
    with Waiting(Console(file=out, force_terminal=False), "loading x…") as w:
        compile_event(5.0, fake_time)
        assert w._status is None
    with Waiting(terminal()[0], enabled=False) as w:  # stderr not a terminal (cli's check)
        compile_event(5.0, fake_time)
        assert w._status is None
    assert out.getvalue() == ""


def test_the_progress_line_renders_on_a_terminal(fake_time):
    console, out = terminal()
    with Waiting(console, "loading model.gguf…"):
        compile_event(2.0, fake_time)
        console.print("between")  # printed above the live line
    assert "loading model.gguf…" in out.getvalue() and "between" in out.getvalue()


def result(n_prompt=16, prompt_s=40.08, n_gen=8, decode_s=0.2) -> GenerationResult:
    return GenerationResult(text="x", tokens=[1] * n_gen, n_prompt=n_prompt, n_generated=n_gen,
                            prompt_seconds=prompt_s, decode_seconds=decode_s,
                            tokens_per_s=n_gen / decode_s, prompt_tokens_per_s=n_prompt / prompt_s,
                            finish_reason="stop")


class Conv:
    class stats:
        n_past, n_ctx = 22, 4096


def test_the_stats_line_keeps_compile_time_out_of_the_rates():
    reply = Reply(text="x", tool_calls=[], result=result(), raw="x")
    line = stats_line(Conv(), reply, Compiled(prompt_s=40.0, decode_s=0.0))
    assert line == ("8 tokens · 40.0 tok/s · prompt 16 tokens at 200 tok/s · context 22/4096 · "
                    "compiled kernels for this CPU in 40 s (once; not in the rates)")
    line = stats_line(Conv(), reply, Compiled(prompt_s=4.0, decode_s=0.04))
    assert "8 tokens · 50.0 tok/s" in line and "in 4.0 s (once" in line
    # a warm cache: the engine's own numbers, no note
    assert stats_line(Conv(), reply) == "8 tokens · 40.0 tok/s · prompt 16 tokens at 0 tok/s · context 22/4096"


def test_a_reply_splits_its_compile_time_between_prompt_and_generation(fake_time):
    def stream():
        yield Notice(None, "", kind="prefill", n_tokens=30)
        compile_event(25.0, fake_time, nested=3)  # the prompt's kernels
        yield Step(5, "Hello")
        compile_event(4.0, fake_time)             # the decode kernels, at the first sampled token
        yield Step(6, " there")
        yield Done(None, "", None, reply=Reply.from_text("Hello there"))

    console, out = terminal()
    reply, compiled = stream_reply(console, stream())
    assert reply.text == "Hello there" and "Hello there" in out.getvalue()
    assert compiled == Compiled(prompt_s=25.0, decode_s=4.0)


def test_the_banner_names_the_builtin_model_a_demo():
    class Model:
        path = lfm2q.builtin_model_path()

    class C(Conv):
        model, n_ctx = Model, 4096

    def eof(prompt):
        raise EOFError

    console, out = terminal()
    assert Repl(C(), console, read=eof).run() == 0
    text = " ".join(out.getvalue().split())
    assert "built-in demo model (2.6M parameters)" in text and "LiquidAI/LFM2-1.2B-GGUF" in text
    assert DEMO_NOTE.split()[-1] in text

    Model.path = Path("/models/LFM2-350M-Q4_K_M.gguf")
    console, out = terminal()
    Repl(C(), console, read=eof).run()
    assert "demo" not in out.getvalue()


# --- in a terminal -------------------------------------------------------------------------

tmux_missing = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    """`lfm2q run` in a detached tmux session on a private server; the screen is read with
    capture-pane, as a person would see it."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.server = f"lfm2q-test-{uuid.uuid4().hex[:8]}"
        cmd = " ".join(shlex.quote(a) for a in
                       ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "lfm2q", "run", *args])
        # `; sleep` keeps the pane (and its last screen) when lfm2q exits
        self.tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "50", cmd + "; sleep 600")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], check=True, capture_output=True,
                              text=True).stdout

    def screen(self) -> str:
        """The visible text, lines joined (the terminal wraps long ones)."""
        return re.sub(r"\s+", " ", self.tmux("capture-pane", "-p", "-J", "-t", "t"))

    def send(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)
        self.tmux("send-keys", "-t", "t", "Enter")

    def wait_for(self, pattern: str, timeout: float, seen: list[str] | None = None) -> re.Match:
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.screen()
            if seen is not None:
                seen.append(s)
            m = re.search(pattern, s)
            if m:
                return m
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} on the screen after {timeout} s:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True)


STATS = r"(\d+) tokens · ([\d.]+) tok/s · prompt (\d+) tokens at (\d+) tok/s · .*?context \d+/\d+(.*?)>>>"


def first_turn(cache_dir: Path, timeout: float) -> tuple[list[str], re.Match]:
    """Ask the built-in model a question in a terminal with this numba cache; the screens seen
    while waiting, and the stats line."""
    env = {"NUMBA_CACHE_DIR": str(cache_dir), "TERM": "xterm-256color"}
    t = Tmux(["--temperature", "0", "--max-tokens", "12", "--threads", "1"], env)
    try:
        t.wait_for(r">>> ", timeout)
        t.send(QUESTION)
        seen: list[str] = []
        stats = t.wait_for(STATS, timeout, seen)
        return seen, stats
    finally:
        t.close()


def warm_cache() -> Path:
    """numba's cache for this source tree, holding the built-in model's kernels."""
    subprocess.run([sys.executable, "-m", "lfm2q", "generate", "-p", QUESTION, "--chat", "-n", "4", "-t", "1",
                    "-q"], check=True, capture_output=True, env=ENV)
    from lfm2q.numba_cache import source_hash

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "lfm2q" / "numba" / source_hash()
    assert path.is_dir(), path
    return path


@tmux_missing
def test_a_run_that_compiles_shows_progress_and_says_so(tmp_path):
    # The cache of a warm install minus one kernel (the short-conv layers' decode step): the
    # first turn compiles it for real, seconds instead of the minute of a cold cache.
    cache = tmp_path / "numba"
    shutil.copytree(warm_cache(), cache)
    gone = [p for p in cache.rglob("*") if p.is_file() and ".shortconv_decode-" in p.name]
    assert gone
    for p in gone:
        p.unlink()
    seen, stats = first_turn(cache, timeout=120)
    assert any("compiling kernels for this CPU (once):" in s for s in seen), seen[-1]
    assert re.search(r"compiled kernels for this CPU in [\d.]+ s \(once; not in the rates\)", stats.group(5))
    assert int(stats.group(4)) > 0  # the prompt's rate is its evaluation's
    assert any(p.name.startswith(gone[0].name.split("-")[0]) for p in cache.rglob("*.nbi"))  # cached again


@tmux_missing
@pytest.mark.slow
def test_the_first_run_with_a_cold_cache(tmp_path):
    seen, stats = first_turn(tmp_path / "numba", timeout=600)  # a busy 2-core machine: minutes
    shown = [re.search(r"compiling kernels for this CPU \(once\): (\d+) compiled · (\d+) s", s) for s in seen]
    shown = [m for m in shown if m]
    assert shown and int(shown[-1].group(2)) > int(shown[0].group(2))  # the seconds count up on screen
    assert "compiled kernels for this CPU in" in stats.group(5) and int(stats.group(4)) > 0


def test_the_repl_speed_matches_generate_json():
    # Warm cache, one thread each (the machine is shared), greedy: the same model, prompt and
    # sampling, each the first reply of its process. Rounds alternate the two and the best of
    # each side is compared: interference (other jobs on the machine) only slows a run down,
    # so more rounds, up to 6, are run while the two bests are apart.
    pexpect = pytest.importorskip("pexpect")
    warm_cache()
    n, args = "256", ["--temperature", "0", "--min-p", "0", "--repeat-penalty", "1", "-t", "1"]
    gen, repl = [], []

    def apart() -> float:
        best_repl, best_gen = max(r for _, r in repl), max(g["tokens_per_s"] for g in gen)
        return abs(best_repl - best_gen) / best_gen

    for _ in range(6):
        out = subprocess.run([sys.executable, "-m", "lfm2q", "generate", "--chat", "-p", QUESTION, "-n", n,
                              "--json", *args], check=True, capture_output=True, text=True, env=ENV).stdout
        gen.append(json.loads(out))
        c = pexpect.spawn(sys.executable, ["-m", "lfm2q", "run", "--max-tokens", n, *args], encoding="utf-8",
                          timeout=90, dimensions=(40, 200), env=ENV)
        try:
            c.expect_exact(">>> ")
            c.sendline(QUESTION)
            c.expect(r"(\d+) tokens · ([\d.]+) tok/s")
            repl.append((int(c.match.group(1)), float(c.match.group(2))))
            c.expect_exact(">>> ")
            c.sendeof()
            c.expect(pexpect.EOF)
        finally:
            c.close(force=True)
        if len(gen) >= 2 and apart() <= 0.2:
            break
    assert {k for k, _ in repl} == {g["tokens"] for g in gen}
    if apart() > 0.2 and os.getloadavg()[0] > (os.cpu_count() or 1):
        # More runnable processes than cores: each process's speed is its share of the CPUs,
        # which no number of rounds makes comparable between two processes.
        pytest.skip(f"the machine is oversubscribed (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
                    f"CPUs): REPL {repl}, generate {[g['tokens_per_s'] for g in gen]} tok/s")
    assert apart() <= 0.2, (repl, [g["tokens_per_s"] for g in gen])
