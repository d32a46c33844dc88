"""`lfm2q serve`: an OpenAI-compatible HTTP server for one model (needs the `serve` extra).

    engine = Engine(lfm2q.load(path), name="my-model")
    app = create_app(engine, api_key=None)      # an ASGI app (starlette)
    serve(model, host="127.0.0.1", port=8080)   # the same, run by uvicorn

Modules: schema (request checks, OpenAI errors), engine (the one worker and its queue),
tools (tool calls, reasoning, stream deltas), structured (response_format), app (routes).
"""
from __future__ import annotations

import logging
import sys
from typing import Optional

from ..errors import Lfm2qError


def require_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise Lfm2qError("lfm2q serve needs the serve extra: pip install 'lfm2q[serve]' "
                         "(starlette and uvicorn)") from None


def serve(model, name: str, host: str = "127.0.0.1", port: int = 8080, api_key: Optional[str] = None,
          on_ready=None) -> None:
    """Serve `model` (a loaded lfm2q Model) until Ctrl-C."""
    require_extra()
    import uvicorn

    from .app import create_app
    from .engine import Engine

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("lfm2q.server")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    engine = Engine(model, name)
    config = uvicorn.Config(create_app(engine, api_key), host=host, port=port, access_log=False,
                            log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    log.info("serving %s on http://%s:%d/v1 (OpenAI API%s) — Ctrl-C stops", name, host, port,
             ", API key required" if api_key else "")
    try:
        server.run()
    finally:
        engine.stop()
