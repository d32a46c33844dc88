"""One exception family for everything a user can cause.

Messages are one line: the file or value at fault, what is wrong, and what to do.
The CLI prints `error: <message>` and exits non-zero, without a traceback.
"""


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
