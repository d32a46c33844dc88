"""Turning one position's logits into the next token id.

The chain follows llama.cpp's default sampler order (`common/common.h`,
`common_params_sampling::samplers`: penalties → dry → top_n_sigma → top_k → typical → top_p →
min_p → xtc → temperature, then `dist` draws). lfm2q implements the subset

    [grammar mask] → repetition penalty → presence / frequency penalties → top_k → top_p → min_p → temperature → draw

with llama.cpp's semantics at each step:
- the grammar mask (constrain.py), when generation is constrained, comes first: ids it does
  not allow get logit -inf, so every later filter and the draw see only allowed ids, and
  greedy decoding stays deterministic;
- repetition penalty (the CTRL / HF / llama.cpp rule): each distinct id among the last
  `REPEAT_LAST_N` = 64 ids (llama.cpp's default `repeat_last_n`; prompt ids count too) has a
  positive logit divided by the penalty and a negative one multiplied by it — once per id,
  however often it occurred;
- presence / frequency penalties (OpenAI's, as llama.cpp's penalties sampler applies them over the
  same last 64 ids): each id seen there loses presence_penalty + frequency_penalty × its count;
- top_k keeps the k largest logits (0 = off);
- top_p softmaxes the surviving logits (temperature not applied yet) and keeps the smallest
  most-likely prefix whose probability mass reaches top_p (1.0 = off);
- min_p keeps ids whose probability is at least min_p times the most likely one's, i.e.
  logit >= max_logit + log(min_p) (0.0 = off);
- temperature divides the survivors' logits, which are then softmaxed and drawn from.
At temperature 0 the pick is the argmax of the penalized logits: llama.cpp and transformers both
apply the repetition penalty to greedy decoding too.

The vocabulary is large (V = 65,536) and this runs once per token, so V-sized work is limited to
a copy into a preallocated buffer plus one or two passes; everything after top_k / the min_p cut
works on the few surviving candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import GenerationError

# How many of the most recent ids the repetition penalty looks at (llama.cpp `repeat_last_n`).
REPEAT_LAST_N = 64

# Without top_k, top_p looks for its prefix among the largest logits first and widens the
# search only when these do not reach the mass yet; a full argsort of V costs milliseconds.
_TOP_P_SEARCH = (64, 1024, 8192)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. The defaults are greedy decoding with every filter off.

    LFM2 model cards suggest temperature=0.3, min_p=0.15, repetition_penalty=1.05.
    """

    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off; in (0, 1]
    min_p: float = 0.0  # 0.0 = off; in [0, 1]
    repetition_penalty: float = 1.0  # 1.0 = off; > 0
    seed: Optional[int] = None  # None = a fresh, unseeded generator
    presence_penalty: float = 0.0  # 0.0 = off; in [-2, 2] as OpenAI's
    frequency_penalty: float = 0.0  # 0.0 = off; in [-2, 2]

    def __post_init__(self) -> None:
        def bad(name: str, value: object, want: str) -> GenerationError:
            return GenerationError(f"sampling: {name}={value!r} is invalid; use {want}")

        if not _is_real(self.temperature) or not self.temperature >= 0:
            raise bad("temperature", self.temperature, "a number >= 0 (0 means greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise bad("top_k", self.top_k, "an integer >= 0 (0 turns it off)")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", self.top_p, "a number in (0, 1] (1 turns it off)")
        if not _is_real(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", self.min_p, "a number in [0, 1] (0 turns it off)")
        if not _is_real(self.repetition_penalty) or not self.repetition_penalty > 0:
            raise bad("repetition_penalty", self.repetition_penalty, "a number > 0 (1 turns it off)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_real(value) or not -2.0 <= value <= 2.0:
                raise bad(name, value, "a number in [-2, 2] (0 turns it off)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0):
            raise bad("seed", self.seed, "an integer >= 0, or None for a random seed")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


class Sampler:
    """Stateful sampler: owns the random generator and a scratch buffer reused across tokens."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._buf: Optional[np.ndarray] = None  # [V] float32: penalized logits
        self._scratch: Optional[np.ndarray] = None  # [V] float32: exp() weights over the whole vocabulary
        self._masked: Optional[np.ndarray] = None  # [V] float32: logits with the grammar mask applied

    def sample(self, logits: np.ndarray, recent_ids: Sequence[int] = (),
               allowed: Optional[np.ndarray] = None) -> int:
        """Pick the next id from `logits` ([V] float32); `recent_ids` feed the repetition penalty;
        `allowed` ([V] bool, at least one True) is the grammar's mask."""
        p = self.params
        x = self._penalized(self._mask(logits, allowed), recent_ids)  # [V]
        if p.greedy:
            return int(np.argmax(x))
        ids, w = self._candidates(x)
        # draw: inverse CDF over the unnormalized weights
        cdf = np.cumsum(w, dtype=np.float64)
        j = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), len(w) - 1)
        while w[j] == 0 and j > 0:  # the clamp above must not land on a masked-out id
            j -= 1
        return j if ids is None else int(ids[j])

    def distribution(self, logits: np.ndarray, recent_ids: Sequence[int] = (),
                     allowed: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """The candidate ids and their final probabilities (after every filter and temperature).

        What `sample` draws from; at temperature 0 it is the argmax with probability 1.
        """
        x = self._penalized(self._mask(logits, allowed), recent_ids)
        if self.params.greedy:
            return np.array([int(np.argmax(x))]), np.ones(1)
        ids, w = self._candidates(x)
        w = w.astype(np.float64)
        ids = np.arange(len(w)) if ids is None else ids
        if allowed is not None:  # ids the mask removed have weight exp(-inf) = 0
            keep = w > 0
            ids, w = ids[keep], w[keep]
        return ids, w / w.sum()

    # -- the chain -------------------------------------------------------------------------

    def _mask(self, logits: np.ndarray, allowed: Optional[np.ndarray]) -> np.ndarray:
        """Logits with the ids `allowed` refuses at -inf, in a reused buffer (or `logits` itself)."""
        if allowed is None:
            return logits
        V = logits.shape[0]
        if self._masked is None or self._masked.shape[0] != V:
            self._masked = np.empty(V, dtype=np.float32)
        np.copyto(self._masked, -np.inf)
        n = min(V, allowed.shape[0])  # rows past the tokenizer's vocabulary are never allowed
        np.copyto(self._masked[:n], logits[:n], where=allowed[:n])
        return self._masked

    def _penalized(self, logits: np.ndarray, recent_ids: Sequence[int]) -> np.ndarray:
        """Logits with the repetition penalty applied, in the reused buffer (or `logits` itself)."""
        p = self.params
        penalty = p.repetition_penalty
        additive = p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        if (penalty == 1.0 and not additive) or len(recent_ids) == 0:
            return logits  # read-only from here on
        V = logits.shape[0]
        if self._buf is None or self._buf.shape[0] != V:
            self._buf = np.empty(V, dtype=np.float32)
        buf = self._buf
        np.copyto(buf, logits)
        recent, counts = np.unique(np.asarray(recent_ids[-REPEAT_LAST_N:], dtype=np.int64), return_counts=True)
        inside = (recent >= 0) & (recent < V)
        recent, counts = recent[inside], counts[inside]  # [<=64]
        v = buf[recent]
        if penalty != 1.0:
            v = np.where(v > 0, v / penalty, v * penalty)
        if additive:
            v = v - (p.presence_penalty + p.frequency_penalty * counts).astype(np.float32)
        buf[recent] = v
        return buf

    def _candidates(self, x: np.ndarray) -> tuple[Optional[np.ndarray], np.ndarray]:
        """top_k → top_p → min_p → temperature on logits `x` [V].

        Returns (ids, w): the surviving ids (None = all V, in id order) and their unnormalized
        weights exp((logit - max) / temperature).
        """
        p = self.params
        V = x.shape[0]
        m = float(x.max())
        ids: Optional[np.ndarray] = None
        if p.top_k and p.top_k < V:
            ids = np.argpartition(x, V - p.top_k)[V - p.top_k:]  # [k]
            if p.top_p < 1.0:
                ids = _sorted_desc(x, ids)
                ids = ids[: _top_p_len(x[ids], m, None, p.top_p)]
        elif p.top_p < 1.0:
            # top_p over the whole vocabulary: the normalizer from one exp pass over V, the prefix
            # from a small head of the largest logits, widened only while it holds too little mass.
            e = self._scratch_for(V)
            np.subtract(x, m, out=e)
            np.exp(e, out=e)
            z = float(e.sum(dtype=np.float64))
            for n in _TOP_P_SEARCH:
                if n >= V:
                    break
                head = _sorted_desc(x, np.argpartition(x, V - n)[V - n:])  # [n]
                k = _top_p_len(x[head], m, z, p.top_p)
                if k <= n:  # the mass was reached inside the head
                    ids = head[:k]
                    break
            if ids is None:
                ids = _sorted_desc(x, np.arange(V))
                ids = ids[: min(_top_p_len(x[ids], m, None, p.top_p), V)]
        elif p.min_p > 0.0:
            ids = np.flatnonzero(x >= m + math.log(p.min_p))  # min_p's cut, done right here
        if ids is None:  # temperature alone: every id, weights computed in the scratch buffer
            w = self._scratch_for(V)
            np.subtract(x, m, out=w)
            np.multiply(w, 1.0 / p.temperature, out=w)
            np.exp(w, out=w)
            return None, w
        cand = x[ids].astype(np.float64)  # [n]
        if p.min_p > 0.0:
            # the top candidate always survives top_k/top_p, so min_p's bar is the global one
            keep = cand >= m + math.log(p.min_p)
            ids, cand = ids[keep], cand[keep]
        return ids, np.exp((cand - m) / p.temperature)

    def _scratch_for(self, V: int) -> np.ndarray:
        if self._scratch is None or self._scratch.shape[0] != V:
            self._scratch = np.empty(V, dtype=np.float32)
        return self._scratch


def _sorted_desc(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """`ids` ordered by descending x[ids]; ties by ascending id, so results are reproducible."""
    order = np.lexsort((ids, -x[ids].astype(np.float64)))
    return ids[order]


def _top_p_len(sorted_logits: np.ndarray, m: float, z: Optional[float], top_p: float) -> int:
    """Length of the shortest prefix of `sorted_logits` (descending) holding >= top_p of the mass.

    `z` is the softmax normalizer sum(exp(x - m)) over all candidates; None means the candidates
    are exactly `sorted_logits`. If they do not reach top_p, returns len(sorted_logits) + 1.
    """
    w = np.exp(sorted_logits.astype(np.float64) - m)
    total = w.sum() if z is None else z
    cum = np.cumsum(w) / total
    # first index whose cumulative mass reaches top_p (llama.cpp keeps that token too)
    return int(np.searchsorted(cum, top_p, side="left")) + 1
