"""The Python API: `load` a GGUF file into a `Model`; tokenize, score, and generate with it."""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numba
import numpy as np

from .cache import KV_TYPES
from .errors import GenerationError, Lfm2qError
from .gguf_model import GGUFFile, Lfm2Config
from .kernels.actquant import QK8_0
from .model import Session, Weights
from .tokenizer import Tokenizer


class Model:
    """An LFM2 model whose weights stay in the memory-mapped GGUF file.

    exact: by default each matrix's input is rounded as llama.cpp rounds it for the weight's
    type (8-bit blocks for quantized weights, fp16 for F16), so lfm2q and llama.cpp compute
    the same logits on the same file and decode multiplies integers. exact=True keeps the
    activations in f32: the logits of the stored weights as transformers would compute them,
    at some speed cost on quantized files.

    kv_cache: how the attention layers keep K and V: "f16" (the default, as llama.cpp's cache),
    "f32" (the default with exact=True; twice the memory) or "q8_0" (8-bit blocks, as llama.cpp's
    -ctk/-ctv q8_0: 0.56x f16's memory, and faster decode at long contexts).

    experts_resident (LFM2-MoE files): how many experts of each layer keep their pages in the
    process, the most recently used; the others' are handed back to the OS (they stay in the page
    cache). Default: twice the experts a token uses (8 of 32 for LFM2-8B-A1B); None keeps all.
    """

    def __init__(self, path: str | os.PathLike, n_ctx: int = 4096, n_threads: int | None = None,
                 exact: bool = False, kv_cache: str | None = None, experts_resident: int | None = -1):
        _check_int("n_ctx", n_ctx, 1)
        if experts_resident not in (None, -1):
            _check_int("experts_resident", experts_resident, 1)
        if kv_cache not in (None, *KV_TYPES):
            raise Lfm2qError(f"kv_cache {kv_cache!r} is not a cache type — use one of {', '.join(KV_TYPES)}")
        set_threads(n_threads)
        self.file = GGUFFile(path)
        self.path = self.file.path
        self.config: Lfm2Config = self.file.config
        if n_ctx > self.config.n_ctx_train:
            raise Lfm2qError(f"n_ctx {n_ctx} is larger than the {self.config.n_ctx_train} tokens "
                             f"{self.path.name} was trained for — use at most that")
        self.n_ctx = n_ctx
        self.exact = bool(exact)
        self.kv_cache = kv_cache or ("f32" if self.exact else "f16")
        if self.kv_cache == "q8_0" and self.config.head_dim % QK8_0:
            raise Lfm2qError(f"kv_cache 'q8_0' stores {QK8_0}-element blocks; {self.path.name}'s head size is "
                             f"{self.config.head_dim} — use 'f16'")
        self.weights = Weights(self.file, exact=self.exact, experts_resident=experts_resident)
        try:
            self.tokenizer = Tokenizer.from_gguf_fields(self.file.tokenizer_fields())
        except Lfm2qError as e:
            raise type(e)(f"{self.path}: {e}") from None

    # --- text <-> ids -------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    # --- scoring --------------------------------------------------------------------------

    def session(self) -> Session:
        """A fresh sequence with its own caches."""
        return Session(self)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of every position of `ids` from a fresh state, f32[len(ids), V]."""
        return self.session().eval_all(ids)

    # --- generation -----------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | None = None, stream: bool = False, *,
                 json_schema: dict | str | None = None, regex: str | None = None,
                 grammar: str | None = None):
        """Continue `prompt` (text, or token ids). Greedy at temperature 0.

        Structured output (at most one): `json_schema` (a dict or its JSON text) makes the text
        one JSON value valid under it; `regex` one match of it; `grammar` a sentence of a Lark
        grammar. A bad one raises a one-line ConstraintError before anything is generated. The
        text may still be cut short by max_tokens or a stop string.

        Returns the generated text, or with stream=True an iterator of text pieces.
        """
        from .generate import generate_stream, generate_text
        from .sampling import SamplingParams

        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty, seed=seed)
        constraint = self.constraint(json_schema=json_schema, regex=regex, grammar=grammar)
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        kwargs = dict(max_tokens=max_tokens, sampling=sampling, stop=list(stop) if stop else None,
                      constraint=constraint)
        if stream:
            return _text_pieces(generate_stream(self.session(), self.tokenizer, ids, **kwargs))
        return generate_text(self.session(), self.tokenizer, ids, **kwargs).text

    def constraint(self, *, json_schema=None, regex: str | None = None, grammar: str | None = None):
        """A constrain.Constraint for this model's tokenizer from at most one of the three, or None."""
        from . import constrain

        given = [k for k, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar))
                 if v is not None]
        if len(given) > 1:
            raise GenerationError(f"give at most one of json_schema, regex and grammar, not {' and '.join(given)}")
        if json_schema is not None:
            return constrain.json_schema(json_schema, self.tokenizer)
        if regex is not None:
            return constrain.regex(regex, self.tokenizer)
        if grammar is not None:
            return constrain.grammar(grammar, self.tokenizer)
        return None

    # --- chat -----------------------------------------------------------------------------

    def chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None, *,
             max_tokens: int | None = None, stop: Sequence[str] | None = None,
             response_format: dict | str | None = None, tool_choice=None, **sampling):
        """One reply to `messages` ([{"role", "content"}], system first if any), in a fresh session.

        response_format / tool_choice: as OpenAI's (see Conversation.send).
        Rendered with the file's chat template. `sampling` overrides fields of SamplingParams;
        the defaults are the model card's (temperature 0.3, min_p 0.15, repetition_penalty 1.05).
        max_tokens None: until the reply ends or the context is full. Returns a `Reply`
        (`.text`, `.tool_calls`, `.result`). For a chat that keeps its cache, use `Conversation`.
        """
        from .conversation import Done

        for step in self.chat_stream(messages, tools, max_tokens=max_tokens, stop=stop,
                                     response_format=response_format, tool_choice=tool_choice, **sampling):
            if isinstance(step, Done):
                return step.reply
        raise AssertionError("chat stream ended without a Done step")

    def chat_stream(self, messages: Sequence[dict], tools: Sequence[dict] | None = None, *,
                    max_tokens: int | None = None, stop: Sequence[str] | None = None,
                    response_format: dict | str | None = None, tool_choice=None, **sampling):
        """`chat`, streamed: token Steps, then a `conversation.Done` step whose `.reply` is the Reply."""
        from .conversation import chat_stream, reply_constraint, sampling_params

        tools = list(tools) if tools else None
        return chat_stream(self, list(messages), tools,
                           sampling=sampling_params(**sampling), max_tokens=max_tokens,
                           stop=list(stop) if stop else None,
                           constraint=reply_constraint(self, response_format, tool_choice, tools))


def _text_pieces(steps) -> Iterator[str]:
    for step in steps:
        text = getattr(step, "text", "")
        if text:
            yield text


def load(path: str | os.PathLike, n_ctx: int = 4096, n_threads: int | None = None,
         exact: bool = False, kv_cache: str | None = None, experts_resident: int | None = -1) -> Model:
    """Open an LFM2 GGUF file. Weights are memory-mapped, not read into RAM (see Model).

    `path` may also name a GGUF on the Hugging Face Hub (`OWNER/REPO[:QUANT]`, `hf://OWNER/REPO/FILE`):
    it is downloaded into, or found in, huggingface_hub's cache (lfm2q.hub).
    """
    from .hub import is_hub_name, resolve_model

    if is_hub_name(path):
        path = resolve_model(path)
    return Model(path, n_ctx=n_ctx, n_threads=n_threads, exact=exact, kv_cache=kv_cache,
                 experts_resident=experts_resident)


def set_threads(n_threads: int | None) -> None:
    """Use n_threads cores for the kernels (None: all numba was started with)."""
    if n_threads is None:
        return
    available = numba.config.NUMBA_NUM_THREADS
    _check_int("n_threads", n_threads, 1)
    if n_threads > available:
        raise GenerationError(f"n_threads {n_threads} is more than the {available} threads available "
                              "(set NUMBA_NUM_THREADS before starting to raise the limit)")
    numba.set_num_threads(n_threads)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise GenerationError(f"{name} must be a whole number ≥ {minimum}, got {value!r}")
