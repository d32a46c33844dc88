"""One model, one engine: a worker thread runs the requests one at a time, in the order they came.

The HTTP side (asyncio) never computes: it queues a `Job` and reads its events, so `/health` and
`/v1/models` answer while a generation runs. A job's events are taken in batches
(`await job.next_events()`): the worker wakes the event loop once per batch, not once per token,
which keeps the cost of streaming small next to a token's compute. The events:

    ("start", {"prompt_tokens", "cached_tokens"})   the prompt was rendered and fits
    ("delta", {...})                               an OpenAI delta (streamed jobs only)
    ("done", {"reply" | "result", "usage", ...})   the end
    ("error", APIError)                            refused (before "start") or failed

Chat requests share one `Conversation` (on_full="prompt"): its session keeps the last request's
ids and checkpoints, so a request whose messages extend the previous conversation evaluates only
the new tokens (`cached_tokens` in usage). Completions use a session of their own.

Cancelling (a client gone): the worker checks the job's flag after every token and stops there,
so at most one more token is computed after the flag is set (`tokens_after_cancel`).
"""
from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..conversation import Conversation, Done, Notice
from ..errors import Lfm2qError
from ..generate import generate_stream
from .schema import APIError, ChatRequest, CompletionRequest
from .tools import DeltaStream


@dataclass
class Job:
    request: Any  # ChatRequest | CompletionRequest
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event = field(default_factory=threading.Event)
    produced: int = 0                     # tokens sampled so far
    produced_at_cancel: Optional[int] = None
    finish: str = ""                      # after the end: the finish reason, or "cancelled" / "error"
    _items: collections.deque = field(default_factory=collections.deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake_pending: bool = False
    _ready: asyncio.Event = field(default_factory=asyncio.Event)  # made in the loop's thread (submit)

    def emit(self, kind: str, payload: Any) -> None:
        """From the worker: queue an event; wake the loop unless a wake-up is already on its way."""
        self._items.append((kind, payload))
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    async def next_events(self) -> list:
        """In the loop: every event queued so far, waiting for at least one."""
        while not self._items:
            self._ready.clear()
            if self._items:
                break
            await self._ready.wait()
        out = []
        while self._items:
            out.append(self._items.popleft())
        return out

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.produced_at_cancel = self.produced
            self.cancelled.set()

    @property
    def tokens_after_cancel(self) -> Optional[int]:
        return None if self.produced_at_cancel is None else self.produced - self.produced_at_cancel


class Engine:
    def __init__(self, model, name: str):
        self.model = model
        self.name = name
        self.created = int(time.time())
        self.conversation = Conversation(model, on_full="prompt")
        self._completion_session = None
        self._jobs: "queue.Queue[Optional[Job]]" = queue.Queue()
        self.busy: Optional[Job] = None
        self.finished: list[Job] = []   # the latest jobs, newest last (tests, health)
        self._thread = threading.Thread(target=self._work, name="lfm2q-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(self, request) -> Job:
        job = Job(request, asyncio.get_running_loop())
        self._jobs.put(job)
        return job

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    # --- the worker ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():  # its client left while it waited
                job.finish = "cancelled"
                self.finished = (self.finished + [job])[-32:]
                continue
            self.busy = job
            try:
                if isinstance(job.request, ChatRequest):
                    self._chat(job)
                else:
                    self._completion(job)
            except APIError as e:
                job.finish = "error"
                job.emit("error", e)
            except Lfm2qError as e:  # the prompt does not fit, the template refused…
                job.finish = "error"
                code = "context_length_exceeded" if "context" in str(e) else None
                job.emit("error", APIError(str(e), code=code))
            except Exception as e:  # a bug: answer 500 and keep serving
                job.finish = "error"
                job.emit("error", APIError(f"internal error: {type(e).__name__}: {e}", status=500,
                                           type="server_error"))
            finally:
                self.busy = None
                self.finished = (self.finished + [job])[-32:]

    def _chat(self, job: Job) -> None:
        req: ChatRequest = job.request
        conv = self.conversation
        conv.messages = [dict(m) for m in req.messages]
        conv.system, conv.tools = None, req.tools
        conv.sampling, conv.max_tokens, conv.stop = req.sampling, req.max_tokens, req.stop
        # renders and checks now: errors surface before "start"
        steps = conv.send_stream(None, constraint=req.constraint)
        stats = conv.stats
        prompt, cached = stats.last_prompt_new + stats.last_prompt_reused, stats.last_prompt_reused
        job.emit("start", {"prompt_tokens": prompt, "cached_tokens": cached})
        deltas = DeltaStream() if req.stream else None
        reply = None
        try:
            for step in steps:
                if isinstance(step, Notice):
                    continue
                if isinstance(step, Done):
                    reply = step.reply
                    break
                job.produced += 1
                if deltas is not None:
                    for d in deltas.feed(step.text):
                        job.emit("delta", d)
                if job.cancelled.is_set():
                    break
        finally:
            steps.close()  # an interrupted reply leaves the session consistent (Conversation)
        if reply is None:
            job.finish = "cancelled"
            return
        if deltas is not None:
            for d in deltas.finish(reply):
                job.emit("delta", d)
        from .tools import finish_reason

        job.finish = finish_reason(reply)
        job.emit("done", {"reply": reply, "finish_reason": job.finish,
                          "usage": _usage(prompt, reply.result.n_generated, cached)})

    def _completion(self, job: Job) -> None:
        req: CompletionRequest = job.request
        m = self.model
        if self._completion_session is None:
            self._completion_session = m.session()
        session = self._completion_session
        session.reset()
        ids = m.tokenize(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
        bad = [t for t in ids if not 0 <= t < m.config.n_vocab]
        if bad:
            raise APIError(f"Invalid 'prompt': token id {bad[0]} is outside the vocabulary (0-{m.config.n_vocab - 1})",
                           param="prompt", code="invalid_value")
        if len(ids) >= session.n_ctx:
            raise APIError(f"the prompt is {len(ids)} tokens but the context holds {session.n_ctx}; shorten it "
                           "or raise the context size (--ctx)", param="prompt", code="context_length_exceeded")
        steps = generate_stream(session, m.tokenizer, ids, max_tokens=req.max_tokens or session.n_ctx,
                                sampling=req.sampling, stop=req.stop)
        job.emit("start", {"prompt_tokens": len(ids), "cached_tokens": 0})
        result = None
        try:
            for step in steps:
                if step.result is not None:
                    result = step.result
                    if req.stream and step.text:
                        job.emit("delta", {"text": step.text})
                    break
                job.produced += 1
                if req.stream and step.text:
                    job.emit("delta", {"text": step.text})
                if job.cancelled.is_set():
                    break
        finally:
            steps.close()
        if result is None:
            job.finish = "cancelled"
            return
        job.finish = "length" if result.finish_reason in ("length", "context") else "stop"
        job.emit("done", {"result": result, "finish_reason": job.finish,
                          "usage": _usage(len(ids), result.n_generated, 0)})


def _usage(prompt: int, completion: int, cached: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
