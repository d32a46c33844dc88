"""One exception family for everything a user can cause.

Messages are one line: the file or value at fault, what is wrong, and what to do.
The CLI prints `error: <message>` and exits non-zero, without a traceback.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Lfm2qError(Exception):
    """Base class of every error lfm2q raises on bad input."""


class GGUFError(Lfm2qError):
    """A GGUF file is unreadable, not LFM2, or inconsistent."""


class ConvertError(Lfm2qError):
    """An HF checkpoint cannot be converted."""


class TokenizerError(Lfm2qError):
    """The vocabulary in a file cannot be turned into a tokenizer."""


class GenerationError(Lfm2qError):
    """Bad arguments to generation (prompt, sampling values, context)."""


def one_line(e: object) -> str:
    """An exception's message on one line (messages from jinja2, json, safetensors… may span several)."""
    return " ".join(str(e).split()) or type(e).__name__


def read_json(path: str | os.PathLike, error: type[Lfm2qError] = Lfm2qError, *,
              unreadable: str = "cannot read", invalid: str = "not valid JSON") -> Any:
    """The decoded JSON in a UTF-8 file. A file that cannot be read or decoded raises `error` as
    `<path>: <unreadable|invalid> (<reason>)`; callers word `unreadable`/`invalid` for their file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{path}: {unreadable} ({e.strerror or one_line(e)})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: {invalid} ({one_line(e)})") from None
