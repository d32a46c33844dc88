"""OpenAI request checks: a JSON body in, a `ChatRequest` / `CompletionRequest` out, or an `APIError`.

Errors carry OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and its wording
("Invalid type for 'temperature': expected a number, but got a string instead."), so clients
that parse them keep working. Fields OpenAI has that lfm2q does not implement get a 400 saying
so when set to anything but their default; unknown fields are ignored, as llama-server and vLLM do.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ..conversation import CHAT_SAMPLING
from ..sampling import SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_JSON_TYPES = ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a number"),
               (list, "an array"), (dict, "an object"))  # bool first: it is an int too


def _got(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for t, name in _JSON_TYPES if isinstance(value, t)), type(value).__name__)


def wrong_type(param: str, want: str, value: Any) -> APIError:
    return APIError(f"Invalid type for '{param}': expected {want}, but got {_got(value)} instead.",
                    param=param, code="invalid_type")


def invalid_value(param: str, message: str) -> APIError:
    return APIError(message, param=param, code="invalid_value")


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(f"We could not parse the JSON body of your request ({e}). The request body must be a "
                       "JSON object.") from None
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.")
    return body


# --- typed getters -------------------------------------------------------------------------

def _number(body: dict, name: str, lo: float, hi: float) -> Optional[float]:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise wrong_type(name, "a number", v)
    if not lo <= v <= hi:
        raise invalid_value(name, f"Invalid value for '{name}': {v} is outside [{lo:g}, {hi:g}].")
    return float(v)


def _int(body: dict, name: str, lo: int) -> Optional[int]:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise wrong_type(name, "an integer", v)
    if v < lo:
        raise invalid_value(name, f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, "
                                  f"but got {v} instead.")
    return v


def _bool(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise wrong_type(name, "a boolean", v)
    return v


def _stop(body: dict) -> Optional[list[str]]:
    v = body.get("stop")
    if v is None:
        return None
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise wrong_type("stop", "a string or an array of strings", v)
    return list(v) or None


# --- the parts both endpoints share ----------------------------------------------------------

@dataclass
class Common:
    model: Optional[str]
    sampling: SamplingParams
    max_tokens: Optional[int]
    stop: Optional[list[str]]
    stream: bool
    include_usage: bool


def _common(body: dict) -> Common:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise wrong_type("model", "a string", model)
    n = _int(body, "n", 1)
    if n is not None and n != 1:
        raise invalid_value("n", f"n={n} is not supported: lfm2q returns one choice per request (n=1)")
    for name in ("logprobs", "echo"):
        if body.get(name) not in (None, False, 0):
            raise invalid_value(name, f"'{name}' is not supported by lfm2q's server")
    if body.get("best_of") not in (None, 1):
        raise invalid_value("best_of", "'best_of' is not supported by lfm2q's server (use 1)")
    if body.get("logit_bias"):
        raise invalid_value("logit_bias", "'logit_bias' is not supported by lfm2q's server")
    max_tokens = _int(body, "max_tokens", 1)
    mct = _int(body, "max_completion_tokens", 1)
    # the model card's chat settings where a field is missing (conversation.CHAT_SAMPLING)
    base = CHAT_SAMPLING
    fields = {
        "temperature": _number(body, "temperature", 0.0, 2.0),
        "top_p": _number(body, "top_p", 0.0, 1.0),
        "min_p": _number(body, "min_p", 0.0, 1.0),
        "top_k": _int(body, "top_k", 0),
        "repetition_penalty": _number(body, "repetition_penalty", 0.0, 10.0),
        "presence_penalty": _number(body, "presence_penalty", -2.0, 2.0),
        "frequency_penalty": _number(body, "frequency_penalty", -2.0, 2.0),
        "seed": _int(body, "seed", 0),
    }
    if fields["top_p"] == 0.0:
        fields["top_p"] = None  # OpenAI accepts 0; lfm2q's top_p wants (0, 1]: keep the top token via greedy
        fields["temperature"] = 0.0
    if fields["repetition_penalty"] == 0.0:
        raise invalid_value("repetition_penalty", "Invalid value for 'repetition_penalty': use a number > 0 "
                                                  "(1 turns it off).")
    sampling = SamplingParams(**{**_asdict(base), **{k: v for k, v in fields.items() if v is not None}})
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise wrong_type("stream_options", "an object", opts)
    include_usage = bool(opts and opts.get("include_usage"))
    return Common(model, sampling, mct if mct is not None else max_tokens, _stop(body), stream, include_usage)


def _asdict(p: SamplingParams) -> dict:
    return dataclasses.asdict(p)


# --- chat ----------------------------------------------------------------------------------

@dataclass
class ChatRequest(Common):
    messages: list[dict] = field(default_factory=list)   # as the chat template reads them
    tools: Optional[list[dict]] = None
    tool_choice: Any = None
    response_format: Optional[dict] = None
    parallel_tool_calls: bool = True
    constraint: Any = None  # the constrain.Constraint of response_format / tool_choice (structured.py)


def parse_chat(body: dict, template_renders_tool_calls: bool) -> ChatRequest:
    common = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise wrong_type("messages", "an array", messages) if messages is not None else \
            APIError("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not messages:
        raise invalid_value("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1.")
    out = [_message(m, i, template_renders_tool_calls) for i, m in enumerate(messages)]
    if out[-1]["role"] == "assistant":
        raise invalid_value(f"messages[{len(out) - 1}].role", "The last message is the assistant's: end with a "
                                                               "user or tool message for the model to answer.")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise wrong_type("tools", "an array", tools)
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict) \
                    or not isinstance(fn.get("name"), str):
                raise invalid_value(f"tools[{i}]", f"Invalid 'tools[{i}]': expected {{\"type\": \"function\", "
                                                   "\"function\": {\"name\": ..., \"parameters\": ...}}.")
        tools = tools or None
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, (str, dict)):
        raise wrong_type("tool_choice", "a string or an object", tool_choice)
    if isinstance(tool_choice, str) and tool_choice not in ("none", "auto", "required"):
        raise invalid_value("tool_choice", f"Invalid value: '{tool_choice}'. Supported values are: 'none', "
                                           "'auto' and 'required'.")
    if tool_choice == "none":
        tools = None  # the model is not shown the tools, so it cannot call them
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str)):
        raise wrong_type("response_format", "an object with a string 'type'", fmt)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise wrong_type("parallel_tool_calls", "a boolean", parallel)
    return ChatRequest(**vars(common), messages=out, tools=tools, tool_choice=tool_choice, response_format=fmt,
                       parallel_tool_calls=parallel)


def _text(content: Any, param: str) -> str:
    """A message's content: a string, or an array of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else None
                raise invalid_value(f"{param}[{j}]", f"Invalid content part {param}[{j}]"
                                    + (f" of type '{kind}': lfm2q models read text only." if kind else
                                       ": expected {\"type\": \"text\", \"text\": ...}."))
            parts.append(part["text"])
        return "".join(parts)
    raise wrong_type(param, "a string or an array of content parts", content)


def _message(m: Any, i: int, template_renders_tool_calls: bool) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise wrong_type(where, "an object", m)
    role = m.get("role")
    if not isinstance(role, str):
        raise wrong_type(f"{where}.role", "a string", role) if role is not None else \
            APIError(f"Missing required parameter: '{where}.role'.", param=f"{where}.role",
                     code="missing_required_parameter")
    if role not in ROLES:
        raise invalid_value(f"{where}.role", f"Invalid value: '{role}'. Supported values are: 'system', "
                                              "'developer', 'user', 'assistant' and 'tool'.")
    content = m.get("content")
    calls = m.get("tool_calls") if role == "assistant" else None
    if content is None and not (role == "assistant" and calls):
        raise APIError(f"Missing required parameter: '{where}.content'.", param=f"{where}.content",
                       code="missing_required_parameter")
    text = "" if content is None else _text(content, f"{where}.content")
    out: dict = {"role": "system" if role == "developer" else role, "content": text}
    if role == "tool":
        tcid = m.get("tool_call_id")
        if tcid is not None and not isinstance(tcid, str):
            raise wrong_type(f"{where}.tool_call_id", "a string", tcid)
        if tcid:
            out["tool_call_id"] = tcid
        if isinstance(m.get("name"), str):
            out["name"] = m["name"]
    if role == "assistant":
        for key in ("reasoning_content", "reasoning", "thinking"):
            if isinstance(m.get(key), str):
                out["reasoning_content"] = m[key]
                break
        if calls:
            parsed = _tool_calls(calls, f"{where}.tool_calls")
            if template_renders_tool_calls:
                out["tool_calls"] = [{"id": c[0], "type": "function", "function": {"name": c[1], "arguments": c[2]}}
                                     for c in parsed]
            else:  # LFM2 templates print content only: the calls go back as the model wrote them
                from .tools import pythonic_block

                out["content"] = pythonic_block([(name, args) for _, name, args in parsed]) + text
    return out


def _tool_calls(calls: Any, where: str) -> list[tuple[str, str, dict]]:
    if not isinstance(calls, list):
        raise wrong_type(where, "an array", calls)
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid_value(f"{where}[{j}]", f"Invalid '{where}[{j}]': expected {{\"id\", \"type\": "
                                                 "\"function\", \"function\": {\"name\", \"arguments\"}}.")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise invalid_value(f"{where}[{j}].function.arguments",
                                    f"'{where}[{j}].function.arguments' is not a JSON string") from None
        if not isinstance(args, dict):
            raise wrong_type(f"{where}[{j}].function.arguments", "a JSON object", args)
        out.append((str(c.get("id") or ""), fn["name"], args))
    return out


# --- completions ---------------------------------------------------------------------------

@dataclass
class CompletionRequest(Common):
    prompt: Any = ""   # a string, or a list of token ids


def parse_completion(body: dict) -> CompletionRequest:
    common = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise invalid_value("prompt", "Invalid 'prompt': use a string, or one array of token ids "
                                          "(lfm2q answers one prompt per request).")
    elif not isinstance(prompt, str):
        raise wrong_type("prompt", "a string or an array of token ids", prompt) if prompt is not None else \
            APIError("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    elif not prompt:
        raise invalid_value("prompt", "Invalid 'prompt': empty string.")
    if body.get("suffix"):
        raise invalid_value("suffix", "'suffix' is not supported by lfm2q's server")
    return CompletionRequest(**vars(common), prompt=prompt)
