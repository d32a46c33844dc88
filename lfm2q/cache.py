"""Decoding state: how far a sequence has got, and what its layers remember.

Attention layers keep K and V for every past position; short-conv layers keep only the last
L-1 values of B*x. The conv window cannot be rolled back by position the way a KV cache can,
so going back (regenerate, reuse a prefix, load a saved chat) means restoring a snapshot.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gguf_model import Lfm2Config


@dataclass
class Snapshot:
    n_past: int
    kv: dict[int, tuple[np.ndarray, np.ndarray]]  # layer -> K, V [KVH, n_past, HD] as stored
    conv: dict[int, np.ndarray]                    # layer -> f32[L-1, D]


# K and V are stored as fp16 by default (bits in uint16: numba has no float16), as llama.cpp's
# default cache stores them: half the memory of f32 (50 MB at 4096 tokens of the 350M shape).
# f32 with load(..., kv_cache="f32") and with exact=True (transformers keeps K/V in f32).
KV_F16, KV_F32 = np.uint16, np.float32


class State:
    """n_past plus a preallocated KV cache per attention layer and a conv window per conv layer."""

    def __init__(self, config: Lfm2Config, n_ctx: int, kv_dtype=KV_F16):
        self.n_ctx = n_ctx
        self.n_past = 0
        HD, D, L = config.head_dim, config.n_embd, config.conv_l
        # np.zeros maps untouched pages lazily: a long context costs memory only once used.
        self.k: list[np.ndarray | None] = [None] * config.n_layer  # kv_dtype[KVH, n_ctx, HD]
        self.v: list[np.ndarray | None] = [None] * config.n_layer
        self.conv: list[np.ndarray | None] = [None] * config.n_layer  # f32[L-1, D]
        for il, kvh in enumerate(config.n_head_kv):
            if kvh:
                self.k[il] = np.zeros((kvh, n_ctx, HD), kv_dtype)
                self.v[il] = np.zeros((kvh, n_ctx, HD), kv_dtype)
            else:
                self.conv[il] = np.zeros((L - 1, D), np.float32)

    def reset(self) -> None:
        # K/V beyond n_past are never read, so only the conv windows need clearing.
        self.n_past = 0
        for c in self.conv:
            if c is not None:
                c[:] = 0.0

    def snapshot(self) -> Snapshot:
        n = self.n_past
        kv = {il: (k[:, :n].copy(), self.v[il][:, :n].copy())
              for il, k in enumerate(self.k) if k is not None}
        conv = {il: c.copy() for il, c in enumerate(self.conv) if c is not None}
        return Snapshot(n, kv, conv)

    def restore(self, snap: Snapshot) -> None:
        if snap.n_past > self.n_ctx:
            raise ValueError(f"snapshot of {snap.n_past} tokens does not fit a {self.n_ctx}-token context")
        for il, (k, v) in snap.kv.items():
            self.k[il][:, :snap.n_past] = k
            self.v[il][:, :snap.n_past] = v
        for il, c in snap.conv.items():
            self.conv[il][:] = c
        self.n_past = snap.n_past
