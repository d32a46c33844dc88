"""Structured output (`response_format`, `tool_choice="required"` or a named function): the one
place where a request's constraint is decided.

This build generates free text: `{"type": "text"}` (OpenAI's default) and `tool_choice` "auto" /
"none" are accepted; anything that needs constrained decoding is refused with HTTP 400 until a
grammar-constrained sampler is wired in here (the engine passes the returned constraint along).
"""
from __future__ import annotations

from typing import Any, Optional

from .schema import APIError


def constraint_for(response_format: Optional[dict], tool_choice: Any, tools: Optional[list]) -> None:
    """The decoding constraint a request asks for; None = free text. Raises APIError (400) when
    the request needs one this build cannot apply."""
    kind = (response_format or {}).get("type", "text")
    if kind != "text":
        raise APIError(f"response_format {kind} is not supported by this build", param="response_format",
                       code="unsupported_response_format")
    if tool_choice == "required" or isinstance(tool_choice, dict):
        shown = "required" if tool_choice == "required" else "a named function"
        raise APIError(f"tool_choice {shown} is not supported by this build (use \"auto\" or \"none\")",
                       param="tool_choice", code="unsupported_tool_choice")
    return None
