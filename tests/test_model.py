"""The forward pass against transformers' Lfm2ForCausalLM, the numerical reference.

Checkpoints are random (seeded) and built by the test; lfm2q's own converter writes the GGUF.
transformers' first decode step after a 1-token prompt is wrong in some versions, so every
prompt here is long (BOS + 80 tokens).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lfm2q
from lfm2q.kernels import dispatch
from hf_fixtures import hf_model, make_checkpoint
from lfm2q.convert import convert_hf
from lfm2q.convert.gguf_layout import plan_tensors
from lfm2q.convert.hf import read_config
from lfm2q.gguf_reader import GGUFReader
from lfm2q.kernels import dequantize
from lfm2q.gguf_model import GGUFFile, Weight
from lfm2q.kernels.repack import packed_q4_k8

N_PROMPT = 81

CONFIGS = {
    # the real LFM2-350M layer pattern (16 layers, attention at 2,5,8,10,12,14), small width
    "lfm2-350m-pattern": dict(num_hidden_layers=16, attn_layers=(2, 5, 8, 10, 12, 14),
                              num_attention_heads=4, num_key_value_heads=2, seed=1),
    # no grouping: as many KV heads as query heads
    "mha": dict(num_hidden_layers=4, attn_layers=(1, 3), num_attention_heads=4,
                num_key_value_heads=4, seed=2),
    # an untied LM head (output.weight), old-style config.json
    "untied-old-config": dict(num_hidden_layers=6, attn_layers=(2, 5), tie=False,
                              config_style="old", seed=3),
}


def prompt(vocab: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(14, vocab, N_PROMPT - 1).tolist()


def reference_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request, tmp_path_factory):
    hf_dir = make_checkpoint(tmp_path_factory.mktemp(request.param), **CONFIGS[request.param])
    return hf_dir, hf_model(hf_dir)


def test_f32_logits_equal_transformers(checkpoint, tmp_path):
    hf_dir, ref_model = checkpoint
    path = convert_hf(hf_dir, tmp_path / "m.gguf", "f32")
    model = lfm2q.load(path, n_ctx=256, exact=True)
    ids = prompt(model.config.n_vocab)
    got = model.logits(ids)
    ref = reference_logits(ref_model, ids)
    assert got.shape == ref.shape == (N_PROMPT, model.config.n_vocab)
    assert got.dtype == np.float32
    assert rel_err(got, ref) < 1e-4
    # The default mode keeps K and V in fp16, as llama.cpp's cache does (nothing else is
    # rounded for F32 weights): ~5e-4 here.
    assert rel_err(lfm2q.load(path, n_ctx=256).logits(ids), ref) < 2e-3


def weights_as_stored(gguf_path, hf_dir) -> dict[str, torch.Tensor]:
    """The HF state dict holding exactly the values the GGUF file stores (dequantized)."""
    reader = GGUFReader(gguf_path)
    state = {}
    for plan in plan_tensors(read_config(hf_dir)):
        t = reader.tensors[plan.gguf_name]
        values = dequantize(reader.data(plan.gguf_name), t.qtype).reshape(plan.hf_shape)
        state[plan.hf_name] = torch.from_numpy(values.copy())
    return state


# Per-weight rounding of each storage type, relative to the weight (F16, BF16: half an ulp of an
# 11- and 8-bit significand) or to the largest weight of its 32-block (Q8_0: half a step of
# 2*max/254, plus the fp16 rounding of the block scale). F16 values below 2^-14 are subnormal,
# with a fixed step of 2^-24: half of it is the absolute part of the bound.
WEIGHT_STEP = {"f16": 2**-11, "bf16": 2**-8, "q8_0": 1 / 254 + 2**-11}
WEIGHT_STEP_ABS = {"f16": 2**-25, "bf16": 0.0, "q8_0": 0.0}


@pytest.mark.parametrize("out_type", ["f16", "bf16", "q8_0"])
def test_quantized_file_equals_transformers_on_its_weights(checkpoint, tmp_path, out_type):
    hf_dir, ref_model = checkpoint
    path = convert_hf(hf_dir, tmp_path / f"m-{out_type}.gguf", out_type)
    model = lfm2q.load(path, n_ctx=256, exact=True)  # f32 activations, as transformers runs
    ids = prompt(model.config.n_vocab, seed=1)
    got = model.logits(ids)

    # 1. The weights the file holds are the float weights rounded by at most the type's step.
    stored_weights = weights_as_stored(path, hf_dir)
    float_weights = ref_model.state_dict()
    for name, w in stored_weights.items():
        ref_w = float_weights[name].numpy()
        err = np.abs(w.numpy() - ref_w)
        if w.ndim == 2 and "conv.conv" not in name:
            scale = (np.abs(ref_w) if out_type != "q8_0"
                     else np.abs(ref_w).reshape(ref_w.shape[0], -1, 32).max(-1, keepdims=True)
                     .repeat(32, -1).reshape(ref_w.shape))
            assert np.all(err <= WEIGHT_STEP[out_type] * scale + WEIGHT_STEP_ABS[out_type]), name
        else:  # norms and the conv kernel stay F32
            assert err.max() == 0, name

    # 2. Exact arithmetic: transformers fed the very weights the file holds agrees to 1e-4.
    stored = hf_model(hf_dir)
    missing, unexpected = stored.load_state_dict(stored_weights, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)
    if stored.config.tie_word_embeddings:
        stored.tie_weights()
    on_stored = reference_logits(stored, ids)
    assert rel_err(got, on_stored) < 1e-4

    # 3. So against the float model, lfm2q may differ by the quantization error (as the
    # reference itself measures it on these weights) plus the engine's 1e-4, and no more.
    ref = reference_logits(ref_model, ids)
    allowed = np.abs(on_stored - ref).max() + 1e-4 * np.abs(on_stored).max()
    assert np.abs(got - ref).max() <= allowed


def test_session_in_pieces_equals_whole_sequence(tmp_path):
    hf_dir = make_checkpoint(tmp_path / "hf", num_hidden_layers=6, attn_layers=(1, 4), seed=5)
    # exact=True: f32 activations. With llama.cpp's 8-bit activation rounding, decode (integer
    # kernels) and prefill (BLAS) sum in different orders, and on this untrained net a one-ulp
    # difference that flips one quant grows to ~1% of the logits; the bookkeeping under test
    # (KV cache and conv state across mixed pieces) is the same in both modes.
    model = lfm2q.load(convert_hf(hf_dir, tmp_path / "m.gguf", "q8_0"), n_ctx=128, exact=True)
    ids = prompt(model.config.n_vocab, seed=2)
    whole = model.logits(ids)
    session = model.session()
    fed = 0
    for piece in (1, 7, 33, 1, 1, 21, 17):  # decode steps and prefill chunks (> SHORT_PROMPT), mixed
        last = session.eval(ids[fed:fed + piece])
        fed += piece
        assert session.n_past == fed
        np.testing.assert_allclose(last, whole[fed - 1], rtol=0,
                                   atol=1e-5 * np.abs(whole[fed - 1]).max())
    assert fed == N_PROMPT


@pytest.mark.skipif(not dispatch.SIMD_PREFILL, reason="this backend prefills through BLAS")
@pytest.mark.parametrize("out_type, kv_cache", [("q8_0", "f16"), ("q4_k_m", "f16"), ("q4_k_m", "q8_0")])
def test_prefill_and_decode_give_the_same_bits(tmp_path, out_type, kv_cache):
    # With the AVX2 integer kernels both paths sum every product in the same order, so a
    # prompt gives the same logits whether it is prefilled or decoded token by token.
    # n_ctx 70: the Q8_0 cache's last block of keys reaches past the cache's end (its rows
    # go through a copy, kernels/kscores.py).
    hf_dir = make_checkpoint(tmp_path / "hf", hidden_size=256, num_hidden_layers=4,
                             attn_layers=(1,), seed=3)
    model = lfm2q.load(convert_hf(hf_dir, tmp_path / "m.gguf", out_type), n_ctx=70, kv_cache=kv_cache)
    assert model.config.head_dim == 64
    ids = prompt(model.config.n_vocab, seed=4)[:70]  # > TOKEN_BLOCK, not a multiple of TOKENS
    whole = model.logits(ids)
    session = model.session()
    one_by_one = np.stack([session.eval([t]).copy() for t in ids])
    np.testing.assert_array_equal(whole, one_by_one)


@pytest.mark.skipif(not dispatch.SIMD_PACKS_Q4_K, reason="this backend keeps Q4_K matrices unpacked")
def test_packed_and_file_matrices_have_one_numba_type(tmp_path):
    # Q4_K matrices are packed into new arrays at load, the other types stay read-only views of
    # the file. Typed alike, each decode block is one compiled kernel: a writable packed array
    # made numba load (and once compile) a second copy of ffn_decode and attention_decode.
    import numba
    hf_dir = make_checkpoint(tmp_path / "hf", hidden_size=256, num_hidden_layers=4,
                             attn_layers=(1,), seed=3)
    model = lfm2q.load(convert_hf(hf_dir, tmp_path / "m.gguf", "q4_k_m"), n_ctx=64)
    mats = [m for L in model.weights.layers for m in vars(L).values() if isinstance(m, Weight)]
    assert any(m.kernel & dispatch.PACKED8 for m in mats) and not all(m.kernel & dispatch.PACKED8 for m in mats)
    assert {numba.typeof(m.raw) for m in mats} == {numba.typeof(mats[0].raw)}
    assert not mats[0].raw.flags.writeable

    # The packed copies share one buffer (hugepages.anonymous), one after another on cache
    # lines, none overlapping another, each the file's matrix packed (repack.packed_q4_k8).
    packed = sorted((m for m in mats if m.kernel & dispatch.PACKED8), key=lambda m: m.raw.ctypes.data)
    spans = [(m.raw.ctypes.data, m.raw.ctypes.data + m.raw.nbytes) for m in packed]
    assert all(start % 64 == 0 for start, _ in spans)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert spans[-1][1] - spans[0][0] < sum(m.raw.nbytes for m in packed) + 64 * len(packed)
    reopened = GGUFFile(tmp_path / "m.gguf")
    for m in packed:
        np.testing.assert_array_equal(m.raw, packed_q4_k8(reopened.weight(m.name).raw))


def test_short_prompts_go_through_decode_until_prefill_has_run(tiny_gguf, monkeypatch):
    from lfm2q import model as model_module
    monkeypatch.setattr(model_module, "_first_run_done", set())  # as in a new process
    prefilled = []
    prefill = model_module.Forward.prefill
    monkeypatch.setattr(model_module.Forward, "prefill",
                        lambda self, ids, all_logits: prefilled.append(len(ids)) or prefill(self, ids, all_logits))
    m = lfm2q.load(tiny_gguf("q8_0"), n_ctx=64)
    ids = prompt(m.config.n_vocab)
    s = m.session()
    s.eval(ids[:5])                                  # a process's first short prompt: decode
    s.eval(ids[5:30])                                # longer than SHORT_PROMPT: prefill
    s.eval(ids[30:35])                               # short again: prefill where it is the
    s.eval(ids[35:36])                               # integer one (same bits); 1 token: decode
    assert prefilled == ([25, 5] if m.weights.integer_prefill else [25])
    assert m.weights.integer_prefill == dispatch.SIMD_PREFILL  # Q8_0 weights throughout


@pytest.mark.parametrize("kv_cache", ["f16", "q8_0"])
def test_snapshot_restore_and_reset_replay_exactly(tiny_gguf, hd64_gguf, kv_cache):
    model = lfm2q.load(tiny_gguf("f32") if kv_cache == "f16" else hd64_gguf, n_ctx=64, kv_cache=kv_cache)
    ids = prompt(model.config.n_vocab)[:20]
    s = model.session()
    s.eval(ids[:10])
    snap = s.snapshot()
    first = s.eval(ids[10:])
    s.restore(snap)
    assert s.n_past == 10
    np.testing.assert_array_equal(s.eval(ids[10:]), first)
    s.reset()
    assert s.n_past == 0
    # 20 tokens go through decode, logits() through prefill: for F32 weights the two sum in
    # different orders, and the fp16 KV cache can round such a 1-ulp difference a whole fp16
    # step apart (measured 1.9e-5 of the largest logit), the Q8_0 cache a whole 8-bit step
    # (measured 1.9e-4)
    tol = 1e-4 if kv_cache == "f16" else 1e-3
    np.testing.assert_allclose(s.eval(ids)[None], model.logits(ids)[-1:], rtol=0, atol=tol * np.abs(first).max())


def test_context_overflow_is_a_clear_error(tiny_gguf):
    model = lfm2q.load(tiny_gguf("f32"), n_ctx=16)
    s = model.session()
    s.eval(list(range(1, 15)))
    with pytest.raises(lfm2q.GenerationError, match="exceed the context of 16"):
        s.eval([5, 6, 7])
    assert s.n_past == 14  # nothing was half-applied


def test_bad_token_ids_and_empty_input_are_rejected(tiny_gguf):
    model = lfm2q.load(tiny_gguf("f32"), n_ctx=16)
    with pytest.raises(lfm2q.GenerationError, match="outside the vocabulary"):
        model.logits([1, model.config.n_vocab])
    with pytest.raises(lfm2q.GenerationError, match="empty"):
        model.session().eval([])


def test_config_comes_from_metadata(tiny_gguf):
    c = lfm2q.load(tiny_gguf("f32"), n_ctx=16).config
    assert (c.n_embd, c.n_layer, c.n_head, c.head_dim, c.n_vocab, c.conv_l) == (64, 6, 4, 16, 512, 3)
    assert c.attention_layers == (2, 5)
    assert c.n_head_kv == (0, 0, 2, 0, 0, 2)
    assert c.rms_eps == pytest.approx(1e-5) and c.rope_base == 1e6 and c.tied_embeddings


def test_greedy_generation_is_deterministic_and_matches_argmax(tiny_gguf):
    model = lfm2q.load(tiny_gguf("f32"), n_ctx=64)
    ids = prompt(model.config.n_vocab)[:12]
    text = model.generate(ids, max_tokens=8)
    assert text == model.generate(ids, max_tokens=8)
    assert "".join(model.generate(ids, max_tokens=8, stream=True)) == text
    # greedy = argmax of the logits, fed back one token at a time
    seq = list(ids)
    for _ in range(8):
        nxt = int(np.argmax(model.logits(seq)[-1]))
        if nxt in (model.tokenizer.eos_id, 2, 7):
            break
        seq.append(nxt)
    assert model.detokenize(seq[len(ids):]) == text


def test_kv_cache_type_is_fp16_by_default_and_f32_on_request(tiny_gguf):
    path = tiny_gguf("q8_0")
    ids = prompt(lfm2q.load(path, n_ctx=64).config.n_vocab)[:12]
    for kwargs, dtype in (({}, np.uint16), ({"kv_cache": "f32"}, np.float32), ({"exact": True}, np.float32)):
        model = lfm2q.load(path, n_ctx=64, **kwargs)
        s = model.session()
        s.eval(ids)
        k = next(k for k in s.state.k if k is not None)
        assert k.dtype == dtype, kwargs
        if dtype == np.uint16:  # fp16 bits of the f32 cache's values, rounded to nearest
            f32 = lfm2q.load(path, n_ctx=64, kv_cache="f32").session()
            f32.eval(ids)
            k32 = next(k for k in f32.state.k if k is not None)[:, :12]
            assert np.abs(k[:, :12].view(np.float16).astype(np.float32) - k32).max() <= 1e-3 * np.abs(k32).max()
    with pytest.raises(lfm2q.Lfm2qError, match="kv_cache 'q8' is not a cache type"):
        lfm2q.load(path, n_ctx=64, kv_cache="q8")
    with pytest.raises(lfm2q.Lfm2qError, match="kv_cache 'q8_0' stores 32-element blocks; tiny-q8_0.gguf's "
                                               "head size is 16"):
        lfm2q.load(path, n_ctx=64, kv_cache="q8_0")


def test_q8_0_kv_cache_holds_8_bit_blocks_close_to_the_f32_cache(hd64_gguf):
    model = lfm2q.load(hd64_gguf, n_ctx=128, kv_cache="q8_0")
    ids = prompt(model.config.n_vocab)
    s = model.session()
    s.eval(ids)
    il = next(il for il, k in enumerate(s.state.k) if k is not None)
    k, d = s.state.k[il][:, :N_PROMPT], s.state.k_scale[il][:, :N_PROMPT]
    assert k.dtype == np.int8 and d.shape == (1, N_PROMPT, 2)
    assert np.abs(k).max(axis=-1).min() == 127  # every block's largest element maps to +-127
    f32 = lfm2q.load(hd64_gguf, n_ctx=128, kv_cache="f32").session()
    f32.eval(ids)
    k32 = f32.state.k[il][:, :N_PROMPT]
    dequantized = k.astype(np.float32) * np.repeat(d, 32, axis=-1)
    assert np.abs(dequantized - k32).max() <= np.abs(k32).max() / 254 * 1.01  # half a quant step
    exact = lfm2q.load(hd64_gguf, n_ctx=128, exact=True).logits(ids)  # f32 cache, f32 activations
    # measured: 6.2e-3 (the fp16 cache: 2.6e-4; an element's rounding error is ~1/500 of its
    # block's largest against fp16's 1/4096 of itself)
    assert rel_err(model.logits(ids), exact) < 1e-2
