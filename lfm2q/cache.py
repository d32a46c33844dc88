"""Decoding state: how far a sequence has got, and what its layers remember.

Attention layers keep K and V for every past position; short-conv layers keep only the last
L-1 values of B*x. The conv window cannot be rolled back by position the way a KV cache can,
so going back (regenerate, reuse a prefix, load a saved chat) means restoring a snapshot.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gguf_model import Lfm2Config
from .kernels.actquant import QK8_0


@dataclass
class Snapshot:
    n_past: int
    kv: dict[int, tuple[np.ndarray, ...]]  # layer -> K, K scales, V, V scales [KVH, n_past, ..] as stored
    conv: dict[int, np.ndarray]                    # layer -> f32[L-1, D]


# K and V are stored as fp16 by default (bits in uint16: numba has no float16), as llama.cpp's
# default cache stores them: half the memory of f32 (50 MB at 4096 tokens of the 350M shape).
# f32 with load(..., kv_cache="f32") and with exact=True (transformers keeps K/V in f32);
# q8_0 (llama.cpp's -ctk/-ctv q8_0) with kv_cache="q8_0": 0.56x fp16's memory and reading.
# The element dtype of each type; only q8_0 has block scales (kernels/kvrows.py).
KV_TYPES = {"f16": np.uint16, "f32": np.float32, "q8_0": np.int8}
_NO_SCALES = np.zeros((0, 0, 0), np.float32)


class State:
    """n_past plus a preallocated KV cache per attention layer and a conv window per conv layer."""

    def __init__(self, config: Lfm2Config, n_ctx: int, kv_type: str = "f16"):
        self.n_ctx = n_ctx
        self.n_past = 0
        HD, D, L = config.head_dim, config.n_embd, config.conv_l
        dtype = KV_TYPES[kv_type]
        # np.zeros maps untouched pages lazily: a long context costs memory only once used.
        self.k: list[np.ndarray | None] = [None] * config.n_layer  # dtype[KVH, n_ctx, HD]
        self.v: list[np.ndarray | None] = [None] * config.n_layer
        self.k_scale: list[np.ndarray | None] = [None] * config.n_layer  # f32[KVH, n_ctx, HD/32]
        self.v_scale: list[np.ndarray | None] = [None] * config.n_layer  # (empty but for q8_0)
        self.conv: list[np.ndarray | None] = [None] * config.n_layer  # f32[L-1, D]
        for il, kvh in enumerate(config.n_head_kv):
            if kvh:
                self.k[il] = np.zeros((kvh, n_ctx, HD), dtype)
                self.v[il] = np.zeros((kvh, n_ctx, HD), dtype)
                if kv_type == "q8_0":  # head sizes are multiples of QK8_0 (checked when loading)
                    self.k_scale[il] = np.zeros((kvh, n_ctx, HD // QK8_0), np.float32)
                    self.v_scale[il] = np.zeros((kvh, n_ctx, HD // QK8_0), np.float32)
                else:
                    self.k_scale[il] = self.v_scale[il] = _NO_SCALES
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
        kv = {il: tuple(a[il][:, :n].copy() for a in (self.k, self.k_scale, self.v, self.v_scale))
              for il, k in enumerate(self.k) if k is not None}
        conv = {il: c.copy() for il, c in enumerate(self.conv) if c is not None}
        return Snapshot(n, kv, conv)

    def restore(self, snap: Snapshot) -> None:
        if snap.n_past > self.n_ctx:
            raise ValueError(f"snapshot of {snap.n_past} tokens does not fit a {self.n_ctx}-token context")
        for il, saved in snap.kv.items():
            for a, part in zip((self.k, self.k_scale, self.v, self.v_scale), saved):
                a[il][:, :snap.n_past] = part
        for il, c in snap.conv.items():
            self.conv[il][:] = c
        self.n_past = snap.n_past
