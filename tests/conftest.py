"""Shared fixtures: one tiny HF LFM2 checkpoint per test session, and its GGUF conversions.

Build your own variants with `hf_fixtures.make_checkpoint(tmp_path, ...)`.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from hf_fixtures import make_checkpoint


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """The default fixture checkpoint (hidden 64, 6 layers, attention at 2 and 5, vocab 512,
    tied, float32, new-style config). Treat it as read-only."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf_dir, tmp_path_factory):
    """tiny_gguf(out_type="f32") -> Path of `tiny_hf_dir` converted to GGUF (cached per type)."""
    from lfm2q.convert import convert_hf

    cache: dict[str, Path] = {}
    out_dir = tmp_path_factory.mktemp("tiny_gguf")

    def get(out_type: str = "f32") -> Path:
        if out_type not in cache:
            cache[out_type] = convert_hf(tiny_hf_dir, out_dir / f"tiny-{out_type}.gguf", out_type)
        return cache[out_type]

    return get


@pytest.fixture(scope="session")
def hd64_gguf(tmp_path_factory) -> Path:
    """An F32 GGUF whose attention heads are 64 wide, as every LFM2's (the default fixture's
    are 16): hidden 128, 2 query heads sharing 1 KV head, 6 layers, attention at 2 and 5.
    Q8_0 KV caches need head sizes in 32-element blocks."""
    from lfm2q.convert import convert_hf

    d = tmp_path_factory.mktemp("hd64")
    hf = make_checkpoint(d / "hf", hidden_size=128, num_attention_heads=2, num_key_value_heads=1, seed=7)
    return convert_hf(hf, d / "hd64-f32.gguf", "f32")
