"""LFM2-MoE interop with llama.cpp, through llama-cpp-python (`make test-llamacpp`), as
tests/test_llamacpp.py does for dense LFM2 (whose helpers and reasoning this reuses):

  1. llama.cpp's `llama_model_quantize` of lfm2q's F32 lfm2moe file equals lfm2q's Q8_0 /
     Q4_K_M files (convert_hf and quantize_gguf): same tensors, types, bytes (expert tensors
     included), and metadata;
  2. F32 files: both engines' logits agree to 1e-4 (routing included);
  3. lfm2q reads llama.cpp's quantized MoE files exactly (exact=True against transformers on
     the weights stored in them, 1e-4);
  4. on quantized files (conditioned variants: the residual branches' output projections, the
     experts' w2 included, scaled by 1/16), llama.cpp's logits agree with lfm2q's default mode.

Configs: 6 experts (top 2) and 8 experts (top 4: llama-quantize's n_expert == 8 rule, attn_v
and attn_k Q8_0, attn_output Q5_K under Q4_K_M), width 256 so the K-quants really apply.
"""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import lfm2q
from hf_fixtures import tokenizer_size
from lfm2q.convert import convert_hf
from lfm2q.convert.requantize import quantize_gguf
from lfm2q.gguf_reader import GGUFReader
from moe_fixtures import hf_moe_model, make_moe_checkpoint
from test_llamacpp import (BRANCH_SCALE, LLAMA_FTYPE, N_THREADS, check_agreement, llama_cpp,  # noqa: F401
                           llama_logits, llama_quantize, tensor_mismatches)
from test_moe import moe_weights_as_stored, reference_logits

pytestmark = pytest.mark.llamacpp

N_PROMPT = 128
CONFIGS = {
    "e6-k2-h256": dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                       num_experts=6, num_experts_per_tok=2, num_dense_layers=2, vocab_size=1024, seed=21),
    "e8-k4-h256-untied": dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                              num_experts=8, num_experts_per_tok=4, num_dense_layers=1, vocab_size=1024,
                              tie=False, seed=22),
}


def condition(hf_dir):
    path = hf_dir / "model.safetensors"
    w = load_file(path)
    for k in w:
        if k.endswith(("out_proj.weight", "w2.weight")):
            w[k] = (w[k] * np.float32(BRANCH_SCALE)).astype(np.float32)
    save_file(w, path, metadata={"format": "pt"})
    return hf_dir


@pytest.fixture(scope="module", params=list(CONFIGS))
def files(request, tmp_path_factory, llama_cpp):  # noqa: F811
    d = tmp_path_factory.mktemp(request.param)
    out = {}
    for conditioned in (False, True):
        hf_dir = make_moe_checkpoint(d / f"hf-{conditioned}", **CONFIGS[request.param])
        if conditioned:
            condition(hf_dir)
        f32 = convert_hf(hf_dir, d / f"f32-{conditioned}.gguf", "f32")
        out[conditioned, "hf"], out[conditioned, "f32"] = hf_dir, f32
        for mix in LLAMA_FTYPE:
            out[conditioned, "llama", mix] = llama_quantize(llama_cpp, f32, d / f"llama-{mix}-{conditioned}.gguf", mix)
            out[conditioned, "lfm2q", mix] = convert_hf(hf_dir, d / f"lfm2q-{mix}-{conditioned}.gguf", mix)
            out[conditioned, "requant", mix] = quantize_gguf(f32, d / f"requant-{mix}-{conditioned}.gguf", mix)
    out["vocab"] = tokenizer_size(CONFIGS[request.param]["vocab_size"])
    return out


def prompt(n: int, seed: int = 0) -> list[int]:
    return [1] + np.random.default_rng(seed).integers(14, n, N_PROMPT - 1).tolist()


@pytest.mark.parametrize("mix", list(LLAMA_FTYPE))
@pytest.mark.parametrize("ours", ["lfm2q", "requant"])
def test_quantized_tensors_identical_to_llama_quantize(files, mix, ours):
    problems = tensor_mismatches(files[False, ours, mix], files[False, "llama", mix])
    assert not problems, "\n".join(problems)


def test_metadata_matches_llama_quantize(files):
    for mix in LLAMA_FTYPE:
        a, b = GGUFReader(files[False, "requant", mix]), GGUFReader(files[False, "llama", mix])
        assert a.fields == b.fields and a.field_types == b.field_types


def test_f32_file_same_logits(llama_cpp, files):  # noqa: F811
    path = files[False, "f32"]
    ids = prompt(files["vocab"])
    got = lfm2q.load(path, n_ctx=512, n_threads=N_THREADS, kv_cache="f32").logits(ids)
    check_agreement(got, llama_logits(llama_cpp, path, ids), rel=1e-4)


@pytest.mark.parametrize("mix", list(LLAMA_FTYPE))
def test_lfm2q_computes_llamacpp_files_exactly(files, mix):
    path = files[False, "llama", mix]
    ids = prompt(files["vocab"], seed=2)
    got = lfm2q.load(path, n_ctx=512, exact=True).logits(ids)
    stored = hf_moe_model(files[False, "hf"])
    missing, unexpected = stored.load_state_dict(moe_weights_as_stored(path), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)
    ref = reference_logits(stored, ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("mix", list(LLAMA_FTYPE))
def test_quantized_file_same_logits(llama_cpp, files, mix):  # noqa: F811
    path = files[True, "llama", mix]
    ids = prompt(files["vocab"], seed=3)
    model = lfm2q.load(path, n_ctx=512, n_threads=N_THREADS, kv_cache="f32")
    check_agreement(model.logits(ids), llama_logits(llama_cpp, path, ids))
    start = N_PROMPT - 16  # and token by token
    s = model.session()
    got = np.concatenate([s.eval_all(ids[:start])] + [s.eval([t])[None] for t in ids[start:]])
    check_agreement(got, llama_logits(llama_cpp, path, ids, decode_from=start))
