"""Perplexity of a text, computed the way llama.cpp's `llama-perplexity` does.

The text is tokenized once (with BOS, when the model adds one). Windows of `n_ctx` tokens start
every `stride` tokens (default `n_ctx`: back-to-back windows, as llama-perplexity); each window
is evaluated from a fresh state with its first token replaced by BOS, and only its second half
is scored — positions n_ctx//2 … n_ctx-2 predicting the next token — so every scored token has
at least n_ctx//2 tokens of context. With stride = n_ctx//2 the scored spans tile the text.

    PPL = exp(mean NLL);  ± = PPL · std(NLL) / sqrt(N - 1)   (llama.cpp's estimate)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from .errors import GenerationError

if TYPE_CHECKING:
    from .api import Model

SCORE_CHUNK = 128  # positions whose logits are held at once: [128, V] f32 is 32 MB at V = 65,536


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float                # the ± of PPL
    nll: float                       # mean negative log-likelihood (nats per token)
    n_scored: int                    # tokens scored
    n_windows: int
    n_tokens: int                    # the text's length in tokens
    window_ppl: list[float] = field(default_factory=list)  # running PPL after each window


def perplexity(model: "Model", text: str | Sequence[int], n_ctx: int = 512, stride: Optional[int] = None,
               on_window: Optional[Callable[[int, int, float], None]] = None) -> PerplexityResult:
    """PPL of `text` (a string, or token ids that already start with BOS if the model uses one).

    `on_window(i, n_windows, running_ppl)` is called after each window.
    """
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 4:
        raise GenerationError(f"perplexity: context {n_ctx!r} is too small; use at least 4 tokens")
    if n_ctx > model.n_ctx:
        raise GenerationError(f"perplexity: windows of {n_ctx} tokens do not fit the model's context of "
                              f"{model.n_ctx}; load it with n_ctx >= {n_ctx}")
    stride = n_ctx if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= n_ctx:
        raise GenerationError(f"perplexity: stride {stride!r} must be between 1 and the context ({n_ctx})")
    ids = model.tokenize(text) if isinstance(text, str) else [int(i) for i in text]
    if len(ids) < n_ctx:
        raise GenerationError(f"perplexity: the text is {len(ids)} tokens, shorter than one {n_ctx}-token "
                              "window; use a longer text or a smaller context")
    tok = model.tokenizer
    bos = tok.bos_id if tok.add_bos else None
    n_windows = (len(ids) - n_ctx) // stride + 1
    first = n_ctx // 2
    session = model.session()
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    for w in range(n_windows):
        window = np.array(ids[w * stride: w * stride + n_ctx], dtype=np.int64)  # [n_ctx]
        if bos is not None:
            window[0] = bos
        session.reset()
        session.eval(window[:first])
        for a in range(first, n_ctx - 1, SCORE_CHUNK):
            b = min(a + SCORE_CHUNK, n_ctx - 1)
            logits = session.eval_all(window[a:b]).astype(np.float64)  # [b-a, V] for positions a..b-1
            nll = token_nll(logits, window[a + 1:b + 1])               # [b-a]
            nll_sum += float(nll.sum())
            nll2_sum += float((nll * nll).sum())
            count += nll.shape[0]
        running.append(math.exp(nll_sum / count))
        if on_window is not None:
            on_window(w, n_windows, running[-1])
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    std = math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
    ppl = math.exp(mean)
    return PerplexityResult(ppl=ppl, ppl_stderr=ppl * std, nll=mean, n_scored=count,
                            n_windows=n_windows, n_tokens=len(ids), window_ppl=running)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row: logits f64[n, V], targets int[n] -> f64[n]."""
    m = logits.max(axis=1, keepdims=True)                                  # [n, 1]
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]                 # [n]
    return lse - logits[np.arange(logits.shape[0]), targets]
