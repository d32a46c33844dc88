"""The model shipped in the package: it loads, it scores the held-out text as recorded, greedy
generation repeats itself exactly, and its float file computes what transformers computes on
the checkpoint it was converted from (training/out/lfm2q-tiny)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lfm2q
from lfm2q.builtin import BUILTIN_TYPES, DATA
from lfm2q.perplexity import perplexity

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "training" / "out" / "lfm2q-tiny"
HELDOUT = Path(__file__).parent / "data" / "lfm2q-tiny-heldout.txt"  # a slice of the test split
RECORD = json.loads((DATA / "lfm2q-tiny.json").read_text())


@pytest.mark.parametrize("kind", BUILTIN_TYPES)
def test_shipped_file_loads(kind):
    path = lfm2q.builtin_model_path(kind)
    assert path is not None and path.is_file()
    model = lfm2q.load(path, n_ctx=512)
    c = model.config
    assert (c.n_layer, c.n_embd, c.attention_layers) == (8, 128, (2, 5, 7))
    assert model.chat_template and "<|im_start|>" in model.chat_template
    assert model.tokenizer.eos_id == 7 and model.tokenizer.bos_id == 1


@pytest.mark.parametrize("kind", BUILTIN_TYPES)
def test_heldout_perplexity_is_as_recorded(kind):
    model = lfm2q.load(lfm2q.builtin_model_path(kind), n_ctx=256)
    r = perplexity(model, HELDOUT.read_text(encoding="utf-8"), n_ctx=256)
    assert r.ppl == pytest.approx(RECORD["heldout_slice_ppl"][kind], rel=0.02)


def test_greedy_generation_is_deterministic():
    model = lfm2q.load(lfm2q.builtin_model_path(), n_ctx=256)
    first = model.generate("The meaning of", max_tokens=24)
    assert first and first == model.generate("The meaning of", max_tokens=24)
    reply = model.chat([{"role": "user", "content": "What does river mean?"}], temperature=0.0, max_tokens=40)
    assert reply.text == model.chat([{"role": "user", "content": "What does river mean?"}],
                                    temperature=0.0, max_tokens=40).text


def test_f32_file_equals_transformers_on_the_checkpoint(tmp_path):
    from transformers import Lfm2ForCausalLM

    from lfm2q.convert import convert_hf
    path = convert_hf(CHECKPOINT, tmp_path / "tiny-f32.gguf", "f32")
    model = lfm2q.load(path, n_ctx=256, exact=True)
    ids = model.tokenize(HELDOUT.read_text(encoding="utf-8")[:2000])[:200]
    ref_model = Lfm2ForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0].numpy()
    got = model.logits(ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    # the default mode's fp16 KV cache (as llama.cpp's): measured 2.4e-4 of the largest logit
    got = lfm2q.load(path, n_ctx=256).logits(ids)
    assert np.abs(got - ref).max() <= 5e-4 * np.abs(ref).max()
