"""Structured output (`response_format`, `tool_choice="required"` or a named function): the one
place where a request's constraint is decided.

The grammar comes from lfm2q/constrain.py (llguidance): `{"type": "json_object"}` and
`{"type": "json_schema", "json_schema": {"schema": ...}}` constrain the reply to JSON (of that
schema); `tool_choice` "required" or {"type": "function", "function": {"name": N}} to LFM2's
tool-call syntax over the request's tools. A schema or choice that cannot be compiled is a 400
with OpenAI's error JSON, before anything is queued.
"""
from __future__ import annotations

from typing import Any, Optional

from .schema import APIError


def constraint_for(response_format: Optional[dict], tool_choice: Any, tools: Optional[list], tokenizer,
                   parallel_tool_calls: bool = True):
    """The constrain.Constraint a request asks for; None = free text. Raises APIError (400) for
    a schema, grammar or tool choice that cannot be applied, or both asked at once."""
    from .. import constrain

    try:
        fmt = constrain.from_response_format(response_format, tokenizer)
    except constrain.ConstraintError as e:
        raise APIError(f"Invalid 'response_format': {e}", param="response_format", code="invalid_value") from None
    try:
        calls = constrain.from_tool_choice(tool_choice, tools, tokenizer, parallel_tool_calls=parallel_tool_calls)
    except constrain.ConstraintError as e:
        raise APIError(f"Invalid 'tool_choice': {e}", param="tool_choice", code="invalid_value") from None
    if fmt is not None and calls is not None:
        raise APIError("response_format and a forced tool_choice cannot be combined: choose one",
                       param="response_format", code="invalid_value")
    return fmt if fmt is not None else calls
