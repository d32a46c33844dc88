"""The HTTP routes (starlette): OpenAI's /v1/models, /v1/chat/completions, /v1/completions, and /health.

Every failure is an OpenAI error JSON (`schema.APIError`), never a traceback, and the server keeps
serving. One log line per request (`_LogRequests`), after its response has been sent.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import Engine, Job
from .schema import APIError, parse_body, parse_chat, parse_completion
from .structured import constraint_for
from .tools import message

log = logging.getLogger("lfm2q.server")
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def create_app(engine: Engine, api_key: Optional[str] = None) -> Starlette:
    template = engine.model.chat_template or ""
    renders_tool_calls = "tool_calls" in template

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        got = request.headers.get("authorization", "")
        return got.startswith("Bearer ") and hmac.compare_digest(got[len("Bearer "):].encode(), api_key.encode())

    def guarded(handler):
        async def route(request: Request) -> Response:
            try:
                if request.url.path.startswith("/v1/") and not authorized(request):
                    raise APIError("Incorrect API key provided: pass it as 'Authorization: Bearer KEY'.",
                                   status=401, code="invalid_api_key")
                return await handler(request)
            except APIError as e:
                request.state.note = e.message
                return error_response(e)
            except Exception as e:  # a bug must not kill the server or show a traceback to the client
                log.error("internal error on %s: %s: %s", request.url.path, type(e).__name__, e)
                return error_response(APIError(f"internal error: {type(e).__name__}", status=500,
                                               type="server_error"))
        return route

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": engine.name, "busy": engine.busy is not None,
                             "waiting": engine.waiting})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": engine.name, "object": "model", "created": engine.created, "owned_by": "lfm2q",
             "meta": {"n_ctx": engine.model.n_ctx, "path": str(engine.model.path)}}]})

    async def chat(request: Request) -> Response:
        req = parse_chat(parse_body(await request.body()), renders_tool_calls)
        req.constraint = constraint_for(req.response_format, req.tool_choice, req.tools, engine.model.tokenizer,
                                        req.parallel_tool_calls)
        return await _run(request, engine.submit(req), chat=True)

    async def completions(request: Request) -> Response:
        req = parse_completion(parse_body(await request.body()))
        return await _run(request, engine.submit(req), chat=False)

    async def _next(request: Request, job: Job) -> Optional[list]:
        """The job's next events; a client that leaves meanwhile (queued, or waiting for a
        non-streamed reply) cancels the job, and None is returned."""
        get = asyncio.ensure_future(job.next_events())
        try:
            while True:
                done, _ = await asyncio.wait({get}, timeout=DISCONNECT_POLL_S)
                if done:
                    return get.result()
                if await request.is_disconnected():
                    request.state.finish = "cancelled (client gone)"
                    return None
        finally:
            if not get.done():  # gone, or this request was cancelled: the job is not wanted
                get.cancel()
                job.cancel()

    async def _run(request: Request, job: Job, chat: bool) -> Response:
        batch = await _next(request, job)
        if batch is None:
            return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
        kind, start = batch.pop(0)
        if kind == "error":
            job.cancel()
            raise start
        request.state.usage = start
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": job.request.model or engine.name}
        if job.request.stream:
            return StreamingResponse(_sse(request, job, head, chat, batch), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        while not any(kind in ("done", "error") for kind, _ in batch):
            more = await _next(request, job)
            if more is None:
                return Response(status_code=499)
            batch += more
        kind, end = next((k, p) for k, p in batch if k in ("done", "error"))
        if kind == "error":
            raise end
        request.state.usage = end["usage"]
        request.state.finish = end["finish_reason"]
        if chat:
            choice = {"index": 0, "message": message(end["reply"]), "logprobs": None,
                      "finish_reason": end["finish_reason"]}
            return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": end["usage"]})
        choice = {"index": 0, "text": end["result"].text, "logprobs": None, "finish_reason": end["finish_reason"]}
        return JSONResponse({**head, "choices": [choice], "usage": end["usage"]})

    async def _sse(request: Request, job: Job, head: dict, chat: bool, items: list):
        def event(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def chunk(delta: Optional[dict], finish: Optional[str] = None) -> dict:
            if chat:
                return {**head, "choices": [{"index": 0, "delta": delta or {}, "logprobs": None,
                                             "finish_reason": finish}]}
            return {**head, "choices": [{"index": 0, "text": (delta or {}).get("text", ""), "logprobs": None,
                                         "finish_reason": finish}]}

        try:
            if chat:
                yield event(chunk({"role": "assistant", "content": ""}))
            while True:
                if not items:
                    items = await job.next_events()
                out, end = [], None
                for kind, payload in items:  # what piled up goes out in one write
                    if kind == "delta":
                        out.append(event(chunk(payload)))
                    elif kind == "error":
                        out.append(event(payload.body()))
                        end = "error"
                    elif kind == "done":
                        request.state.usage = payload["usage"]
                        request.state.finish = payload["finish_reason"]
                        out.append(event(chunk(None, payload["finish_reason"])))
                        if job.request.include_usage:
                            out.append(event({**head, "choices": [], "usage": payload["usage"]}))
                        end = "done"
                items = []
                if end is not None:
                    out.append("data: [DONE]\n\n")
                    yield "".join(out)
                    return
                yield "".join(out)
        finally:  # the client went away (or we are done): stop the generation at the next token
            if job.finish == "" or job.finish == "cancelled":
                job.cancel()
                request.state.finish = "cancelled (client gone)"

    routes = [
        Route("/health", guarded(health), methods=["GET"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
        Route("/v1/completions", guarded(completions), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    return _LogRequests(app)


class _LogRequests:
    """ASGI middleware: one line per request — client, method, path, status, tokens, seconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 0}
        scope.setdefault("state", {})

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            st = scope["state"]
            usage, finish, note = st.get("usage"), st.get("finish"), st.get("note")
            parts = [f'{(scope.get("client") or ("-",))[0]} "{scope["method"]} {scope["path"]}" {status["code"]}']
            if usage:
                parts.append(f"prompt {usage['prompt_tokens']} (cached "
                             f"{usage.get('prompt_tokens_details', {}).get('cached_tokens', usage.get('cached_tokens', 0))})"
                             + (f" · completion {usage['completion_tokens']}" if "completion_tokens" in usage else ""))
            if finish:
                parts.append(f"finish {finish}")
            if note:
                parts.append(note)
            parts.append(f"{time.perf_counter() - t0:.2f} s")
            log.info(" · ".join(parts))
