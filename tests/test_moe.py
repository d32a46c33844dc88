"""LFM2-MoE (GGUF arch lfm2moe): the forward pass against transformers' Lfm2MoeForCausalLM,
the converter's layout against llama.cpp's LFM2MoeModel converter, the type mixes against
llama-quantize's rules for expert tensors, chat on a MoE file, the CLI, and the memory bound
(a long prompt never makes the whole file resident).

Checkpoints are random (seeded), built by tests/moe_fixtures.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

import lfm2q
from lfm2q.cli import run_cli
from lfm2q.convert import convert_hf, quantize as quantize_mod
from lfm2q.convert.mixes import plan_types, use_more_bits
from lfm2q.convert.requantize import quantize_gguf
from lfm2q.errors import ConvertError, GGUFError
from lfm2q.gguf_reader import GGUFReader
from lfm2q.kernels import dequantize, dispatch
from moe_fixtures import hf_moe_model, make_moe_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).parent / "data" / "templates"
N_PROMPT = 49

CONFIGS = {
    # tied, 6 experts, top-2, the first 2 of 5 layers dense, attention at 1 and 4
    "tied-e6-k2": dict(num_experts=6, num_experts_per_tok=2, num_dense_layers=2, seed=1),
    # untied LM head, 8 experts, top-4, one dense layer; experts stored fused (gate_up_proj)
    "untied-e8-k4-fused": dict(num_experts=8, num_experts_per_tok=4, num_dense_layers=1, tie=False,
                               fused=True, seed=2),
    # every layer MoE, top-3; weights not normalised and scaled (keys llama.cpp never writes)
    "e5-k3-no-norm-scaled": dict(num_experts=5, num_experts_per_tok=3, num_dense_layers=0,
                                 norm_topk_prob=False, routed_scaling_factor=1.5, seed=3),
}


def prompt(vocab: int, seed: int = 0, n: int = N_PROMPT) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(14, vocab, n - 1).tolist()


def reference_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def rel_err(got, ref) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request, tmp_path_factory):
    hf_dir = make_moe_checkpoint(tmp_path_factory.mktemp(request.param), **CONFIGS[request.param])
    return hf_dir, hf_moe_model(hf_dir)


# --- the forward pass ---------------------------------------------------------------------------

def test_f32_logits_equal_transformers(checkpoint, tmp_path):
    hf_dir, ref_model = checkpoint
    model = lfm2q.load(convert_hf(hf_dir, tmp_path / "m.gguf", "f32"), n_ctx=128, exact=True)
    ids = prompt(model.config.n_vocab)
    ref = reference_logits(ref_model, ids)
    assert rel_err(model.logits(ids), ref) < 1e-4                 # prefill: positions grouped by expert
    s = model.session()
    assert rel_err(np.stack([s.eval([t]) for t in ids]), ref) < 1e-4  # decode: the K experts' rows


def moe_weights_as_stored(path) -> dict[str, torch.Tensor]:
    """Transformers' state dict (in-memory names: fused gate_up_proj / down_proj) holding the
    values the GGUF file stores, dequantized."""
    reader = GGUFReader(path)

    def value(name):
        t = reader.tensors[name]
        return dequantize(reader.data(name), t.qtype).reshape(t.shape)

    names = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "token_embd_norm.weight": "model.embedding_norm.weight"}
    per_layer = {"attn_norm.weight": "operator_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
                 "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
                 "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.out_proj.weight",
                 "attn_q_norm.weight": "self_attn.q_layernorm.weight",
                 "attn_k_norm.weight": "self_attn.k_layernorm.weight",
                 "shortconv.in_proj.weight": "conv.in_proj.weight", "shortconv.out_proj.weight": "conv.out_proj.weight",
                 "ffn_gate.weight": "feed_forward.w1.weight", "ffn_up.weight": "feed_forward.w3.weight",
                 "ffn_down.weight": "feed_forward.w2.weight", "ffn_gate_inp.weight": "feed_forward.gate.weight",
                 "exp_probs_b.bias": "feed_forward.expert_bias",
                 "ffn_down_exps.weight": "feed_forward.experts.down_proj"}
    state = {}
    for name in reader.tensors:
        if name in names:
            state[names[name]] = value(name)
            continue
        _, i, rest = name.split(".", 2)
        p = f"model.layers.{i}."
        if rest == "shortconv.conv.weight":
            state[p + "conv.conv.weight"] = value(name)[:, None, :]
        elif rest == "ffn_gate_exps.weight":
            state[p + "feed_forward.experts.gate_up_proj"] = np.concatenate(
                [value(name), value(f"blk.{i}.ffn_up_exps.weight")], axis=1)
        elif rest != "ffn_up_exps.weight":
            state[p + per_layer[rest]] = value(name)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


@pytest.mark.parametrize("out_type", ["q8_0", "q4_k_m"])
def test_quantized_file_equals_transformers_on_its_weights(checkpoint, tmp_path, out_type):
    hf_dir, _ = checkpoint
    path = convert_hf(hf_dir, tmp_path / f"m-{out_type}.gguf", out_type)
    model = lfm2q.load(path, n_ctx=128, exact=True)  # f32 activations, as transformers runs
    ids = prompt(model.config.n_vocab, seed=1)
    stored = hf_moe_model(hf_dir)
    missing, unexpected = stored.load_state_dict(moe_weights_as_stored(path), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)
    assert rel_err(model.logits(ids), reference_logits(stored, ids)) < 1e-4


@pytest.mark.skipif(not dispatch.SIMD_PREFILL, reason="this backend prefills through BLAS")
@pytest.mark.parametrize("out_type", ["q8_0", "q4_k_m"])
def test_default_mode_prefill_and_decode_give_the_same_bits(tmp_path, out_type):
    # llama.cpp's arithmetic (8-bit activations, ggml's routing): grouping the prompt's positions
    # by expert sums every product and adds the K experts in the order decode does.
    hf_dir = make_moe_checkpoint(tmp_path / "hf", hidden_size=256, moe_intermediate_size=256,
                                 intermediate_size=512, num_experts=8, num_experts_per_tok=3,
                                 num_dense_layers=1, seed=4)
    model = lfm2q.load(convert_hf(hf_dir, tmp_path / "m.gguf", out_type), n_ctx=80)
    ids = prompt(model.config.n_vocab, seed=5, n=70)
    whole = model.logits(ids)
    s = model.session()
    np.testing.assert_array_equal(whole, np.stack([s.eval([t]).copy() for t in ids]))


def test_router_chooses_by_biased_scores_and_weighs_by_unbiased(tmp_path):
    from lfm2q import blocks
    logits = np.array([2.0, 0.0, 1.0, -1.0], np.float32)
    bias = np.array([0.0, 1.0, 0.0, 0.0], np.float32)  # lifts expert 1 (0.5 + 1) over 0 (0.88)
    sel, w = np.empty(2, np.int64), np.empty(2, np.float32)
    blocks.route(logits, bias, 2, True, 0.0, False, sel, w)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert sel.tolist() == [1, 0]  # best first; expert 2 (0.73) loses to 0 without a bias
    np.testing.assert_allclose(w, p[[1, 0]] / p[[1, 0]].sum(), rtol=1e-6)  # weights unbiased
    blocks.route(logits, bias, 2, False, 2.0, True, sel, w)  # no norm, scaled by 2
    np.testing.assert_allclose(w, 2 * p[[1, 0]], rtol=1e-6)


# --- the converter ------------------------------------------------------------------------------

def test_layout_keys_and_types_as_llamacpp_writes_them(tmp_path):
    """llama.cpp's LFM2MoeModel (conversion/lfm2.py): arch lfm2moe, its lfm2moe.* keys, the router
    and selection bias in F32, the experts stacked [E, rows, cols] in the file's type."""
    hf_dir = make_moe_checkpoint(tmp_path / "hf", **CONFIGS["tied-e6-k2"])
    r = GGUFReader(convert_hf(hf_dir, tmp_path / "m.gguf", "f16"))
    f = r.fields
    assert f["general.architecture"] == "lfm2moe"
    want = {"block_count": 5, "embedding_length": 64, "feed_forward_length": 96, "attention.head_count": 4,
            "attention.head_count_kv": [0, 2, 0, 0, 2], "expert_count": 6, "expert_used_count": 2,
            "expert_feed_forward_length": 32, "leading_dense_block_count": 2, "expert_gating_func": 2,
            "vocab_size": 512, "shortconv.l_cache": 3, "context_length": 4096}
    for key, value in want.items():
        assert f[f"lfm2moe.{key}"] == value, key
    assert "lfm2moe.expert_weights_norm" not in f and "lfm2moe.expert_weights_scale" not in f
    t = r.tensors
    for i in (0, 1):  # dense layers
        assert t[f"blk.{i}.ffn_gate.weight"].shape == (96, 64) and f"blk.{i}.ffn_gate_inp.weight" not in t
    for i in (2, 3, 4):
        b = f"blk.{i}."
        assert (t[b + "ffn_gate_inp.weight"].shape, t[b + "ffn_gate_inp.weight"].qtype) == ((6, 64), QT.F32)
        assert (t[b + "exp_probs_b.bias"].shape, t[b + "exp_probs_b.bias"].qtype) == ((6,), QT.F32)
        for name, shape in (("ffn_gate_exps", (6, 32, 64)), ("ffn_up_exps", (6, 32, 64)),
                            ("ffn_down_exps", (6, 64, 32))):
            assert (t[b + name + ".weight"].shape, t[b + name + ".weight"].qtype) == (shape, QT.F16)
        assert b + "ffn_gate.weight" not in t
    # expert e of ffn_gate_exps is the checkpoint's experts.e.w1, of ffn_down_exps its w2
    from safetensors.numpy import load_file
    hf = load_file(str(hf_dir / "model.safetensors"))
    gate = r.data("blk.3.ffn_gate_exps.weight").view(np.float16).reshape(6, 32, 64)
    down = r.data("blk.3.ffn_down_exps.weight").view(np.float16).reshape(6, 64, 32)
    for e in range(6):
        np.testing.assert_array_equal(gate[e], hf[f"model.layers.3.feed_forward.experts.{e}.w1.weight"].astype(np.float16))
        np.testing.assert_array_equal(down[e], hf[f"model.layers.3.feed_forward.experts.{e}.w2.weight"].astype(np.float16))
    np.testing.assert_array_equal(r.data("blk.3.exp_probs_b.bias").view(np.float32).reshape(-1),
                                  hf["model.layers.3.feed_forward.expert_bias"])


def test_fused_and_per_expert_checkpoints_give_identical_files(tmp_path):
    a = make_moe_checkpoint(tmp_path / "a", seed=7)
    b = make_moe_checkpoint(tmp_path / "b", seed=7, fused=True)
    ra = GGUFReader(convert_hf(a, tmp_path / "a.gguf", "q4_k_m"))
    rb = GGUFReader(convert_hf(b, tmp_path / "b.gguf", "q4_k_m"))
    assert {k: v for k, v in ra.fields.items() if k != "general.name"} == \
           {k: v for k, v in rb.fields.items() if k != "general.name"}
    assert list(ra.tensors) == list(rb.tensors)
    for name, t in ra.tensors.items():
        assert (rb.tensors[name].qtype, rb.tensors[name].shape) == (t.qtype, t.shape), name
        np.testing.assert_array_equal(ra.data(name), rb.data(name), err_msg=name)


def test_quantize_from_f32_equals_convert(tmp_path):
    hf_dir = make_moe_checkpoint(tmp_path / "hf", hidden_size=256, moe_intermediate_size=256,
                                 intermediate_size=512, seed=8)
    f32 = convert_hf(hf_dir, tmp_path / "m-f32.gguf", "f32")
    direct = GGUFReader(convert_hf(hf_dir, tmp_path / "direct.gguf", "q4_k_m"))
    via = GGUFReader(quantize_gguf(f32, tmp_path / "via.gguf", "q4_k_m"))
    assert via.fields["general.architecture"] == "lfm2moe"
    assert list(via.tensors) == list(direct.tensors)
    for name, t in direct.tensors.items():
        assert via.tensors[name].qtype == t.qtype, name
        np.testing.assert_array_equal(via.data(name), direct.data(name), err_msg=name)


def test_experts_are_quantized_one_at_a_time(tmp_path, monkeypatch):
    """Memory stays about one expert's matrix: the converter never holds a stacked 3-D tensor."""
    hf_dir = make_moe_checkpoint(tmp_path / "hf", num_experts=7, seed=9)
    seen = []
    real = quantize_mod.quantize
    monkeypatch.setattr(quantize_mod, "quantize", lambda x, q, name="t": seen.append((name, x.shape)) or real(x, q, name))
    convert_hf(hf_dir, tmp_path / "m.gguf", "q8_0")
    expert_calls = [s for n, s in seen if "_exps" in n]
    assert len(expert_calls) == 3 * 7 * 3 and all(len(s) == 2 for s in expert_calls)


def test_bad_moe_configs_are_one_line_errors(tmp_path):
    hf_dir = make_moe_checkpoint(tmp_path / "hf", seed=10)
    cfg = json.loads((hf_dir / "config.json").read_text())
    for change, words in (({"num_experts_per_tok": 9}, "num_experts_per_tok"),
                          ({"num_dense_layers": 7}, "num_dense_layers"),
                          ({"norm_topk_prob": "yes"}, "norm_topk_prob")):
        (hf_dir / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ConvertError, match=words):
            convert_hf(hf_dir, tmp_path / "x.gguf", "f32")
        assert not (tmp_path / "x.gguf").exists()
    (hf_dir / "config.json").write_text(json.dumps({**cfg, "num_experts": 5}))  # 6 experts stored
    with pytest.raises(ConvertError, match="experts.5"):
        convert_hf(hf_dir, tmp_path / "x.gguf", "f32")


# --- the type mixes -----------------------------------------------------------------------------

def moe_tensors(n_layer=24, attn=(2, 6, 10, 14, 18, 21), dense=2, D=2048, FF=7168, E=32, FFE=1792,
                V=65536, H=32, KVH=8):
    HD = D // H
    t = [("token_embd.weight", (V, D))]
    for i in range(n_layer):
        b = f"blk.{i}."
        t.append((b + "attn_norm.weight", (D,)))
        if i in attn:
            t += [(b + "attn_q.weight", (D, D)), (b + "attn_k.weight", (KVH * HD, D)),
                  (b + "attn_v.weight", (KVH * HD, D)), (b + "attn_output.weight", (D, D))]
        else:
            t += [(b + "shortconv.in_proj.weight", (3 * D, D)), (b + "shortconv.conv.weight", (D, 3)),
                  (b + "shortconv.out_proj.weight", (D, D))]
        t.append((b + "ffn_norm.weight", (D,)))
        if i < dense:
            t += [(b + "ffn_gate.weight", (FF, D)), (b + "ffn_up.weight", (FF, D)), (b + "ffn_down.weight", (D, FF))]
        else:
            t += [(b + "ffn_gate_inp.weight", (E, D)), (b + "exp_probs_b.bias", (E,)),
                  (b + "ffn_gate_exps.weight", (E, FFE, D)), (b + "ffn_up_exps.weight", (E, FFE, D)),
                  (b + "ffn_down_exps.weight", (E, D, FFE))]
    t.append(("token_embd_norm.weight", (D,)))
    return t


def test_q4_k_m_on_lfm2_8b_a1b_as_llama_quantize():
    plan = plan_types(moe_tensors(), "q4_k_m", 24, n_expert=32)
    more = [i for i in range(24) if use_more_bits(i, 24)]
    for i in range(24):
        down = plan.get(f"blk.{i}.ffn_down_exps.weight", plan.get(f"blk.{i}.ffn_down.weight"))
        assert down == (QT.Q6_K if i in more else QT.Q4_K), i  # by layer index, out of n_layer
        if i >= 2:
            assert plan[f"blk.{i}.ffn_gate_exps.weight"] == plan[f"blk.{i}.ffn_up_exps.weight"] == QT.Q4_K
            assert plan[f"blk.{i}.ffn_gate_inp.weight"] == plan[f"blk.{i}.exp_probs_b.bias"] == QT.F32
    assert plan["token_embd.weight"] == QT.Q6_K
    attn_v = [plan[f"blk.{i}.attn_v.weight"] for i in (2, 6, 10, 14, 18, 21)]
    assert attn_v == [QT.Q6_K if use_more_bits(j, 6) else QT.Q4_K for j in range(6)]
    assert plan["blk.2.attn_k.weight"] == plan["blk.2.attn_output.weight"] == QT.Q4_K
    f16 = plan_types(moe_tensors(), "f16", 24, n_expert=32)
    assert f16["blk.5.ffn_gate_inp.weight"] == QT.F32 and f16["blk.5.ffn_up_exps.weight"] == QT.F16


def test_eight_experts_take_llama_quantizes_mixtral_rule():
    tensors = moe_tensors(E=8)
    q4 = plan_types(tensors, "q4_k_m", 24, n_expert=8)
    assert {q4[f"blk.{i}.attn_v.weight"] for i in (2, 6, 10, 14, 18, 21)} == {QT.Q8_0}
    assert q4["blk.6.attn_k.weight"] == QT.Q8_0 and q4["blk.6.attn_output.weight"] == QT.Q5_K
    q5 = plan_types(tensors, "q5_k_m", 24, n_expert=8)
    assert q5["blk.6.attn_v.weight"] == q5["blk.6.attn_k.weight"] == QT.Q8_0
    assert q5["blk.6.attn_output.weight"] == QT.Q5_K  # the base type: the rule is q4_k_* / q3 / iq only
    assert plan_types(tensors, "q4_k_m", 24, n_expert=32)["blk.6.attn_k.weight"] == QT.Q4_K


# --- files, errors, chat, CLI -------------------------------------------------------------------

@pytest.fixture(scope="module")
def moe_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("moe")
    hf_dir = make_moe_checkpoint(d / "hf", seed=11)
    return convert_hf(hf_dir, d / "m-q8_0.gguf", "q8_0"), hf_dir


def rewrite(src, dst, drop=None, **values):
    """A copy of GGUF `src` with metadata keys changed (key=value) or dropped."""
    import gguf
    r = GGUFReader(src)
    w = gguf.GGUFWriter(dst, "lfm2moe")
    for k, v in r.fields.items():
        if k in ("general.architecture", drop):
            continue
        vt, item = r.field_types[k]
        v = values.get(k.split(".", 1)[1].replace(".", "_"), v) if k.startswith("lfm2moe.") else v
        w.add_key_value(k, v, vt, sub_type=item)
    for name, t in r.tensors.items():
        w.add_tensor_info(name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=QT(t.qtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name in r.tensors:
        w.write_tensor_data(r.data(name))
    w.close()
    return dst


def test_damaged_moe_metadata_is_a_one_line_error(moe_gguf, tmp_path):
    path, _ = moe_gguf
    for kwargs, words in (({"expert_gating_func": 1}, "sigmoid"),
                          ({"expert_used_count": 7}, "expert_used_count"),
                          ({"expert_feed_forward_length": 33}, "ffn_gate_exps.weight has shape"),
                          ({"drop": "lfm2moe.expert_count"}, "expert_count is missing")):
        with pytest.raises(GGUFError, match=words):
            lfm2q.load(rewrite(path, tmp_path / "bad.gguf", **kwargs))


def test_chat_on_a_moe_file_with_the_8b_a1b_template(tmp_path):
    """The checkpoint's chat template (LFM2.5-8B-A1B's) travels into the GGUF; lfm2q renders a
    chat with tools to the ids transformers' tokenizer gives, and parses the model's tool call."""
    from transformers import AutoTokenizer
    from lfm2q.conversation import Reply, render_ids

    template = (TEMPLATES / "LFM2.5-8B-A1B.jinja").read_text()
    hf_dir = make_moe_checkpoint(tmp_path / "hf", seed=12)
    cfg_path = hf_dir / "tokenizer_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "chat_template": template}))
    model = lfm2q.load(convert_hf(hf_dir, tmp_path / "m.gguf", "q8_0"))
    assert model.chat_template == template
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    want = hf_tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert render_ids(model, messages, tools) == list(want)
    reply = Reply.from_text('<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>')
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    out = model.chat(messages, tools, max_tokens=4, temperature=0.0)
    assert out.result.n_generated >= 1


def test_cli_commands_on_a_moe_file(moe_gguf, tmp_path, capsys):
    path, hf_dir = moe_gguf

    def cli(*args):
        code = run_cli([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out, err

    out, _ = cli("info", path)
    assert "lfm2moe" in out and "6 per layer in layers 2-4, 2 used per token · width 32" in " ".join(out.split())
    out, _ = cli("generate", path, "-p", "hello", "-n", "4", "--json")
    assert json.loads(out)["tokens"] >= 1
    out, _ = cli("bench", path, "-p", "16", "-n", "4", "-r", "1", "-t", "1")
    assert "pp16" in out and "tg4" in out
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    out, _ = cli("perplexity", path, "-f", text, "-c", "32")
    assert "Final estimate: PPL" in out
    cli("convert", hf_dir, "-o", tmp_path / "c.gguf", "--type", "q4_k_m")
    cli("quantize", convert_hf(hf_dir, tmp_path / "f.gguf", "f32"), tmp_path / "q.gguf", "--type", "q8_0")
    assert GGUFReader(tmp_path / "q.gguf").fields["general.architecture"] == "lfm2moe"


# --- memory -------------------------------------------------------------------------------------

RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import lfm2q

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    m = lfm2q.load(sys.argv[1], n_ctx=600)
    s = m.session()
    s.eval(m.tokenize("warm up the decode and prefill kernels, " * 4))  # kernels loaded
    s.eval([5])
    ids = [1] + np.random.default_rng(0).integers(500, 60000, 511).tolist()
    out = {}
    for budget in ("default", None):  # the default bound, then none
        if budget is None:
            m.weights.expert_pages.budget = None
        m.weights.expert_pages.release_all()
        s.reset()
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
            f.write("5")
        s.eval(ids)
        out[str(budget)] = status("VmHWM") - base
    print(json.dumps(out))
""")


def test_a_512_token_prompt_never_makes_the_file_resident(tmp_path):
    """A file whose experts are most of its bytes (64 experts, 4 used; 280 MB); a 512-token
    prompt, which runs every expert of every layer. Peak RSS above the warmed-up process (VmHWM
    reset through clear_refs) stays under half the experts' bytes with the default bound
    (8 experts of a layer resident, plus the one layer running); without a bound the same
    prompt makes nearly all of them resident, which shows the measure sees them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from synth_gguf import Shape, build

    shape = Shape("many-experts", hidden=512, n_layer=5, attn_layers=(1, 4), n_head=8, n_head_kv=2,
                  ff=1024, n_expert=64, n_expert_used=4, ff_exp=1024, n_dense_lead=1)
    path = build(shape, tmp_path / "many-experts.gguf", "q4_k_m")
    experts = sum(t.nbytes for t in GGUFReader(path).tensors.values() if "_exps" in t.name)
    assert experts > 0.75 * path.stat().st_size
    run = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    peak = json.loads(run.stdout.strip().splitlines()[-1])
    assert peak["default"] < 0.5 * experts, (peak, experts)
    assert peak["None"] > 0.8 * experts, (peak, experts)
