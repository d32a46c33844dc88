"""What a person at a terminal sees while numba compiles lfm2q's kernels.

The first run of a version compiles every kernel it uses (about a minute; later runs load
them from numba's cache, see numba_cache.py). numba broadcasts a "numba:compile" event around
each compilation that missed its cache (numba.core.event), so `CompileClock` can count them
and time them: the progress line shows the count and the elapsed time, and the REPL's stats
line keeps compile time out of its tokens per second.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from numba.core import event
from rich.console import Console
from rich.text import Text

COMPILING = "compiling kernels for this CPU (once)"
now = time.perf_counter  # (a name of its own, so tests can move the clock)


class CompileClock(event.Listener):
    """Counts numba compilations and their wall time. Only the outermost one counts: a kernel's
    callees compile inside it."""

    def __init__(self) -> None:
        self.depth = 0
        self.count = 0          # compilations finished
        self.seconds = 0.0      # their wall time
        self.started: Optional[float] = None  # perf_counter of the running one
        self.watchers: list[Callable[[], None]] = []  # called when a compilation starts

    def on_start(self, ev) -> None:
        self.depth += 1
        if self.depth == 1:
            self.started = now()
            for watch in list(self.watchers):
                watch()

    def on_end(self, ev) -> None:
        self.depth -= 1
        if self.depth == 0 and self.started is not None:
            self.count += 1
            self.seconds += now() - self.started
            self.started = None

    def total(self) -> float:
        """Seconds spent compiling so far, the running compilation included."""
        running = now() - self.started if self.started is not None else 0.0
        return self.seconds + running


_clock: Optional[CompileClock] = None


def compile_clock() -> CompileClock:
    """The process's clock, listening from the first call on."""
    global _clock
    if _clock is None:
        _clock = CompileClock()
        event.register("numba:compile", _clock)
    return _clock


class Waiting:
    """A transient status line while the user waits for the first output: an optional label
    ("loading …", "reading 300 tokens…") and, once numba compiles, how many kernels and for how
    long. Shown only when `console` is a terminal; it appears at the first compilation when
    there is no label, and is gone for good after `end()` (output is about to be printed: a
    live line under streaming text would garble it)."""

    def __init__(self, console: Console, label: Optional[str] = None,
                 clock: Optional[CompileClock] = None, enabled: Optional[bool] = None):
        self.console = console
        self.label = label
        self.clock = clock or compile_clock()
        self.enabled = console.is_terminal if enabled is None else enabled
        self._status = None
        self._ended = False
        self._count0 = self.clock.count
        self._first: Optional[float] = None  # when the first compilation of this wait began

    def __enter__(self) -> "Waiting":
        self.clock.watchers.append(self._compiling)
        if self.clock.started is not None:  # entered in the middle of one
            self._compiling()
        elif self.label:
            self.show()
        return self

    def __exit__(self, *exc) -> None:
        self.end()

    def _compiling(self) -> None:
        if self._first is None:
            self._first = now()
        self.show()

    def show(self) -> None:
        """Show the line now (a label was set); compilations show it by themselves."""
        if self.enabled and not self._ended and self._status is None:
            self._status = self.console.status(self, spinner="dots")
            self._status.start()

    def end(self) -> None:
        self._ended = True
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._compiling in self.clock.watchers:
            self.clock.watchers.remove(self._compiling)

    def text(self) -> str:
        parts = [self.label] if self.label else []
        if self._first is not None:
            n = self.clock.count - self._count0
            parts.append(f"{COMPILING}: {n} compiled · {now() - self._first:.0f} s")
        return " · ".join(parts)

    def __rich__(self) -> Text:  # rendered on every refresh, so the seconds count up
        return Text(self.text())


# --- compile time kept out of the speeds ---------------------------------------------------

@dataclass
class Compiled:
    """Seconds numba spent compiling during one generation: while the prompt was evaluated, and
    while tokens were generated (a prompt that went through prefill kernels meets the decode
    kernels at its first sampled token)."""
    prompt_s: float = 0.0
    decode_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.prompt_s + self.decode_s

    def note(self) -> str:
        """The stats line's words for it, "" when nothing compiled."""
        if self.seconds < 0.05:
            return ""
        secs = f"{self.seconds:.1f}" if self.seconds < 10 else f"{self.seconds:.0f}"
        return f"compiled kernels for this CPU in {secs} s (once; not in the rates)"


def rate(n: int, seconds: float, compiled: float) -> float:
    """Tokens per second of evaluation only: the compile time inside `seconds` is taken out."""
    evaluating = seconds - compiled
    return n / evaluating if evaluating > 0 else 0.0


class CompileSplit:
    """Reads the clock at the prompt's start, at the first token and at the end of a generation."""

    def __init__(self, clock: Optional[CompileClock] = None) -> None:
        self.clock = clock or compile_clock()
        self._start = self.clock.total()
        self._first: Optional[float] = None

    def start(self) -> None:
        self._start = self.clock.total()

    def first_token(self) -> bool:
        """Mark the first token; True the first time only."""
        if self._first is not None:
            return False
        self._first = self.clock.total()
        return True

    def done(self) -> Compiled:
        end = self.clock.total()
        if self._first is None:  # stopped during the prompt
            return Compiled(prompt_s=end - self._start)
        return Compiled(prompt_s=self._first - self._start, decode_s=end - self._first)
