"""The generation loop: prompt ids in, a stream of tokens and text out.

It works against two small contracts, so it does not depend on the model implementation:

    session.eval(ids) -> logits      [V] float32 for the last position; appends ids to the state
    session.n_past, session.n_ctx    positions used / available
    tokenizer.stream().step(id)      the newly completed text ("" while a character is split)
    tokenizer.eos_id, .token_to_id(str) -> int | None, .is_control(id) -> bool

Constrained generation (`constraint`, a constrain.Constraint): each step's grammar mask goes
to the sampler before every other filter; end tokens are allowed only where the grammar may end,
and when the grammar cannot go on the generation stops right there (finish "stop", stopped_by
None) without evaluating that last token. The next mask can be computed on a worker thread
while the model evaluates the current token (constrain.OVERLAP, off by default). max_tokens
still applies: a grammar the model has not finished by then ends with finish "length" and the
partial text.

Stop rules, checked after each sampled token:
- an end token: `tokenizer.eos_id`, `<|im_end|>` and `<|endoftext|>` when the vocabulary has
  them, and the caller's `stop_ids`; the token is recorded but writes no text;
- a stop string: the text before it is emitted, nothing from it on. Text that could be the
  start of a stop string is held back until the next token decides, so a stop string split
  across tokens never shows partly;
- `max_tokens` sampled tokens → finish "length";
- the context is full (the next token has no position left) → finish "context".
Control tokens write no text, except the markup the chat layer parses (`<|tool_call_start|>`,
`<|tool_call_end|>`, `<think>`, `</think>`; see `MARKUP_TOKENS`), which is written literally.

Session state afterwards: the prompt and every sampled token except the last one have been
evaluated (a token is evaluated only when another one is wanted after it), so the last token,
whether it is an end token or not, is not in the session.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Protocol, Sequence

import numpy as np

from .errors import GenerationError
from .sampling import REPEAT_LAST_N, Sampler, SamplingParams

END_TOKENS = ("<|im_end|>", "<|endoftext|>")
MARKUP_TOKENS = ("<|tool_call_start|>", "<|tool_call_end|>", "<think>", "</think>")


class Session(Protocol):
    n_past: int
    n_ctx: int

    def eval(self, ids: list[int]) -> np.ndarray: ...

    def reset(self) -> None: ...


class Tokenizer(Protocol):
    eos_id: int

    def encode(self, text: str, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def stream(self): ...

    def token_to_id(self, token: str) -> Optional[int]: ...

    def is_control(self, token_id: int) -> bool: ...


@dataclass
class GenerationResult:
    text: str  # everything the steps emitted, concatenated
    tokens: list[int]  # every sampled id, the end token included
    n_prompt: int
    n_generated: int  # == len(tokens)
    prompt_seconds: float  # evaluating the prompt
    decode_seconds: float  # sampling and evaluating after the prompt (consumer time excluded)
    tokens_per_s: float  # n_generated / decode_seconds
    prompt_tokens_per_s: float  # n_prompt / prompt_seconds
    finish_reason: str  # "stop" | "length" | "context"
    stopped_by: Optional[str] = None  # the stop string, or the end token's text, when "stop"
    # (None when a constraint's grammar finished)


@dataclass
class Step:
    """One sampled token and the text it completed ("" while held back, for control tokens and
    for the end token). After the last token comes one more step with token_id None, the text
    still held back (if any) and `result` set; all steps' text concatenated is `result.text`.
    """

    token_id: Optional[int]
    text: str
    result: Optional[GenerationResult] = field(default=None)


def generate_stream(
    session: Session,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    *,
    max_tokens: int = 256,
    sampling: Optional[SamplingParams] = None,
    stop: Optional[list[str]] = None,
    stop_ids: Optional[set[int]] = None,
    markup_tokens: Iterable[str] = MARKUP_TOKENS,
    context_ids: Optional[Sequence[int]] = None,
    constraint=None,
) -> Iterator[Step]:
    """Evaluate `prompt_ids` on top of the session's state and sample until a stop rule fires.

    `context_ids`: the tokens already in the session before `prompt_ids` (a chat that keeps its
    cache feeds only a turn's new tokens); they count for the repetition penalty as if the
    whole sequence had been given.

    `constraint`: a constrain.Constraint compiled for this tokenizer (see the module docstring).

    Arguments are checked here, before the first step is asked for.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0:
        raise GenerationError(f"max_tokens={max_tokens!r} is invalid; use an integer >= 0")
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise GenerationError("empty prompt: give at least one token (the rendered chat starts with BOS)")
    room = session.n_ctx - session.n_past
    if len(prompt_ids) > room:
        raise GenerationError(
            f"prompt is {len(prompt_ids)} tokens but the context has room for {room} "
            f"(n_ctx {session.n_ctx}, {session.n_past} in use); shorten the prompt or raise the context size"
        )
    if isinstance(stop, str):
        stop = [stop]
    if any(not isinstance(s, str) for s in (stop or [])):
        raise GenerationError(f"stop={stop!r} is invalid; use a list of strings")
    stop_strings = [s for s in (stop or []) if s]

    end_ids: dict[int, Optional[str]] = {int(i): None for i in (stop_ids or ())}  # id -> name
    if tokenizer.eos_id is not None:
        end_ids.setdefault(int(tokenizer.eos_id), None)
    for name in END_TOKENS:
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            end_ids[int(tid)] = name
    markup = {}
    for name in markup_tokens:
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            markup[int(tid)] = name

    guide = None
    if constraint is not None:
        if getattr(constraint, "tokenizer", None) is not tokenizer:
            raise GenerationError("the constraint was compiled for another model's tokenizer; "
                                  "compile it with this model's")
        guide = constraint.guide(end_ids)

    history = ([int(i) for i in context_ids or ()] + prompt_ids)[-REPEAT_LAST_N:]
    return _loop(session, tokenizer, prompt_ids, history, max_tokens,
                 Sampler(sampling or SamplingParams()), stop_strings, end_ids, markup, guide)


def generate_text(session: Session, tokenizer: Tokenizer, prompt_ids: list[int], **kwargs) -> GenerationResult:
    """`generate_stream` run to the end; the keyword arguments are the same."""
    result = None
    for step in generate_stream(session, tokenizer, prompt_ids, **kwargs):
        result = step.result
    assert result is not None
    return result


def _checked(logits: np.ndarray) -> np.ndarray:
    # Damaged weights (NaN/Inf in a file) surface here as NaN logits: say so, never sample them.
    if not np.isfinite(logits.max()):  # one pass; any NaN or +Inf makes the max non-finite
        raise GenerationError("the model produced NaN or infinite logits — the file's weights are "
                              "damaged (re-download or re-convert it)")
    return logits


def _loop(session, tokenizer, prompt_ids, history, max_tokens, sampler, stop_strings, end_ids,
          markup, guide=None) -> Iterator[Step]:
    t0 = time.perf_counter()
    logits = _checked(session.eval(prompt_ids))  # [V]
    t1 = time.perf_counter()
    paused = 0.0  # time spent in the consumer between steps, kept out of decode_seconds

    decoder = tokenizer.stream()
    held = _StopStrings(stop_strings)
    tokens: list[int] = []
    emitted: list[str] = []
    finish, stopped_by = "length", None
    string_stop = False

    while len(tokens) < max_tokens:
        allowed = None
        if guide is not None:
            allowed = guide.allowed()
            if not allowed.any():  # nothing may follow, not even an end token: the grammar is done
                finish = "stop"
                break
        tid = sampler.sample(logits, history, allowed)
        tokens.append(tid)
        history.append(tid)
        if len(history) > 4 * REPEAT_LAST_N:
            del history[:-REPEAT_LAST_N]

        hit = None
        if tid in end_ids:
            out = ""
            finish, stopped_by = "stop", end_ids[tid] or _token_text(tokenizer, tid)
        else:
            if tid in markup:
                piece = markup[tid]
            elif tokenizer.is_control(tid):
                piece = ""
            else:
                piece = decoder.step(tid)
            out, hit = held.feed(piece)
            if out:
                emitted.append(out)
            if hit is not None:
                finish, stopped_by, string_stop = "stop", hit, True
            if guide is not None:
                guide.advance(tid)
                if guide.finished and finish != "stop":
                    finish = "stop"
        ty = time.perf_counter()
        yield Step(tid, out)
        paused += time.perf_counter() - ty
        if finish == "stop" or len(tokens) >= max_tokens:
            break
        if session.n_past >= session.n_ctx:
            finish = "context"  # no position left to evaluate this token
            break
        if guide is not None:
            guide.prefetch()  # with constrain.OVERLAP: the next mask, on a worker thread while the model runs
        logits = _checked(session.eval([tid]))

    tail = ""
    if not string_stop and hasattr(decoder, "flush"):
        # generation ended inside a character: its bytes show as U+FFFD, as decode() shows them
        tail, _ = held.feed(decoder.flush())
    tail += held.flush()  # text held for a stop string that never came
    if tail:
        emitted.append(tail)
    decode = time.perf_counter() - t1 - paused
    prompt = t1 - t0
    result = GenerationResult(
        text="".join(emitted),
        tokens=tokens,
        n_prompt=len(prompt_ids),
        n_generated=len(tokens),
        prompt_seconds=prompt,
        decode_seconds=decode,
        tokens_per_s=len(tokens) / decode if decode > 0 else 0.0,
        prompt_tokens_per_s=len(prompt_ids) / prompt if prompt > 0 else 0.0,
        finish_reason=finish,
        stopped_by=stopped_by,
    )
    yield Step(None, tail, result)


def _token_text(tokenizer, tid: int) -> Optional[str]:
    try:
        return tokenizer.decode([tid]) or None
    except Exception:  # a name for the record only; never fail the reply over it
        return None


class _StopStrings:
    """Holds back text that could still become a stop string.

    Invariant: no suffix of the emitted text is a proper prefix of a stop string that the held
    text could complete, so a match always starts inside the held text.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, piece: str) -> tuple[str, Optional[str]]:
        """Add `piece`; return (text safe to emit, the stop string found or None)."""
        if not self.stops:
            return piece, None
        text = self.held + piece
        first = None  # (position, stop) of the earliest match
        for s in self.stops:
            i = text.find(s)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            self.held = ""
            return text[: first[0]], first[1]
        keep = 0  # longest suffix of text that is a proper prefix of some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], None

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out
