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
