"""Type mixes against llama-quantize's choices (llama_tensor_get_type) for LFM2 shapes."""
from collections import Counter

import pytest
from gguf import GGMLQuantizationType as QT

from lfm2q.convert.mixes import MIXES, choose_type, plan_types, use_more_bits


def lfm2_tensors(n_layer=16, attn=(2, 5, 8, 10, 12, 14), D=1024, FF=4608, V=65536, H=16, KVH=8, HD=64,
                 tied=True):
    """(GGUF name, NumPy shape) of every tensor of an LFM2 model, in file order."""
    t = [("token_embd.weight", (V, D))]
    for i in range(n_layer):
        b = f"blk.{i}."
        t.append((b + "attn_norm.weight", (D,)))
        if i in attn:
            t += [(b + "attn_q.weight", (H * HD, D)), (b + "attn_k.weight", (KVH * HD, D)),
                  (b + "attn_v.weight", (KVH * HD, D)), (b + "attn_output.weight", (D, H * HD)),
                  (b + "attn_q_norm.weight", (HD,)), (b + "attn_k_norm.weight", (HD,))]
        else:
            t += [(b + "shortconv.in_proj.weight", (3 * D, D)), (b + "shortconv.conv.weight", (D, 3)),
                  (b + "shortconv.out_proj.weight", (D, D))]
        t += [(b + "ffn_norm.weight", (D,)), (b + "ffn_gate.weight", (FF, D)),
              (b + "ffn_up.weight", (FF, D)), (b + "ffn_down.weight", (D, FF))]
    t.append(("token_embd_norm.weight", (D,)))
    if not tied:
        t.append(("output.weight", (V, D)))
    return t


def types_of(plan, part):
    return {n: q for n, q in plan.items() if part in n}


def test_use_more_bits_matches_llamacpp_for_16_layers():
    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(6) if use_more_bits(i, 6)] == [2, 5]


def test_q4_k_m_on_lfm2_350m():
    plan = plan_types(lfm2_tensors(), "q4_k_m", 16)
    assert plan["token_embd.weight"] == QT.Q6_K
    attn_v = types_of(plan, "attn_v")
    assert sorted(n for n, q in attn_v.items() if q == QT.Q6_K) == ["blk.14.attn_v.weight", "blk.8.attn_v.weight"]
    assert Counter(attn_v.values()) == {QT.Q6_K: 2, QT.Q4_K: 4}
    ffn_down = types_of(plan, "ffn_down")
    assert sorted(int(n.split(".")[1]) for n, q in ffn_down.items() if q == QT.Q6_K) == [0, 1, 4, 7, 10, 13, 14, 15]
    assert Counter(ffn_down.values()) == {QT.Q6_K: 8, QT.Q4_K: 8}
    for name, q in plan.items():
        if name.endswith("_norm.weight") or "shortconv.conv" in name:
            assert q == QT.F32, name
        elif name != "token_embd.weight" and "attn_v" not in name and "ffn_down" not in name:
            assert q == QT.Q4_K, name


def test_other_mixes_on_lfm2_350m():
    tensors = lfm2_tensors()
    q5 = plan_types(tensors, "q5_k_m", 16)
    assert Counter(types_of(q5, "attn_v").values()) == {QT.Q6_K: 2, QT.Q5_K: 4}
    assert Counter(types_of(q5, "ffn_down").values()) == {QT.Q6_K: 8, QT.Q5_K: 8}
    assert q5["blk.0.ffn_gate.weight"] == QT.Q5_K and q5["token_embd.weight"] == QT.Q6_K

    q4s = plan_types(tensors, "q4_k_s", 16)
    assert [q4s[f"blk.{i}.attn_v.weight"] for i in (2, 5, 8, 10, 12, 14)] == [QT.Q5_K] * 4 + [QT.Q4_K] * 2
    assert [q4s[f"blk.{i}.ffn_down.weight"] for i in range(4)] == [QT.Q5_K, QT.Q5_K, QT.Q4_K, QT.Q4_K]

    q40 = plan_types(tensors, "q4_0", 16)
    assert q40["token_embd.weight"] == QT.Q6_K
    assert {q for n, q in q40.items() if n != "token_embd.weight" and q != QT.F32} == {QT.Q4_0}

    for mix, base in [("q6_k", QT.Q6_K), ("q8_0", QT.Q8_0), ("f16", QT.F16), ("bf16", QT.BF16), ("f32", QT.F32)]:
        plan = plan_types(tensors, mix, 16)
        assert set(plan.values()) == {base, QT.F32}, mix
        assert plan["token_embd.weight"] == base and plan["blk.0.shortconv.conv.weight"] == QT.F32


def test_untied_output_gets_q6_k_and_token_embd_the_base_type():
    plan = plan_types(lfm2_tensors(tied=False), "q4_k_m", 16)
    assert plan["output.weight"] == QT.Q6_K
    assert plan["token_embd.weight"] == QT.Q4_K


def test_rows_that_do_not_fit_256_fall_back_like_llamacpp():
    # A tiny test model: D = 64 fits only 32-blocks, FF = 176 fits neither 256 nor 32.
    plan = plan_types(lfm2_tensors(n_layer=6, attn=(2, 5), D=64, FF=176, V=512, H=4, KVH=2, HD=16), "q4_k_m", 6)
    assert plan["token_embd.weight"] == QT.Q8_0           # output rule: 64 % 256 -> Q8_0
    assert plan["blk.0.ffn_gate.weight"] == QT.Q5_0       # Q4_K -> Q5_0
    assert plan["blk.0.ffn_down.weight"] == QT.F16        # Q6_K -> Q8_0 -> 176 % 32 -> F16
    assert plan["blk.1.ffn_down.weight"] == QT.F16
    assert plan["blk.5.attn_v.weight"] == QT.Q8_0         # use_more_bits(1, 2): Q6_K -> Q8_0
    assert plan["blk.2.attn_v.weight"] == QT.Q5_0
    assert choose_type("blk.0.ffn_up.weight", (64, 96), "q5_k_m", 6, [2, 5]) == QT.Q5_1
    assert choose_type("blk.0.ffn_up.weight", (64, 100), "q4_0", 6, [2, 5]) == QT.F16
    assert choose_type("blk.0.ffn_up.weight", (64, 100), "q8_0", 6, [2, 5]) == QT.F16


def test_choose_type_agrees_with_plan_types():
    tensors = lfm2_tensors()
    for mix in MIXES:
        plan = plan_types(tensors, mix, 16)
        for name, shape in tensors:
            assert choose_type(name, shape, mix, 16, [2, 5, 8, 10, 12, 14]) == plan[name]


def test_unknown_mix_is_refused():
    with pytest.raises(ValueError, match="q4_k_m"):
        choose_type("blk.0.ffn_up.weight", (4608, 1024), "q3_k_m", 16, [])


def test_same_rules_as_llamacpp_snapshot_for_a_dense_untied_model():
    # llama.cpp's tests/snapshots/qwen3-0.6b.schema (28 layers, all attention, untied output):
    # Q4_K_M / Q5_K_M raise attn_v and ffn_down of layers 0-2, 5, 8, ..., 23, 24-27 to Q6_K;
    # Q4_K_S raises attn_v of layers 0-3 and ffn_down of layers 0-2 to Q5_K; Q4_0 only the output.
    tensors = [("token_embd.weight", (151936, 1024)), ("output.weight", (151936, 1024))]
    for i in range(28):
        tensors += [(f"blk.{i}.attn_q.weight", (2048, 1024)), (f"blk.{i}.attn_k.weight", (1024, 1024)),
                    (f"blk.{i}.attn_v.weight", (1024, 1024)), (f"blk.{i}.attn_output.weight", (1024, 2048)),
                    (f"blk.{i}.ffn_gate.weight", (3072, 1024)), (f"blk.{i}.ffn_up.weight", (3072, 1024)),
                    (f"blk.{i}.ffn_down.weight", (1024, 3072)), (f"blk.{i}.attn_norm.weight", (1024,))]

    def raised(mix, base):
        return {n: q.name for n, q in plan_types(tensors, mix, 28).items() if q not in (base, QT.F32)}

    more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
    expected = {"output.weight": "Q6_K"} | {f"blk.{i}.{t}.weight": "Q6_K" for i in more for t in ("attn_v", "ffn_down")}
    assert raised("q4_k_m", QT.Q4_K) == expected
    assert raised("q5_k_m", QT.Q5_K) == expected
    assert raised("q4_k_s", QT.Q4_K) == ({"output.weight": "Q6_K"} | {f"blk.{i}.attn_v.weight": "Q5_K" for i in range(4)}
                                         | {f"blk.{i}.ffn_down.weight": "Q5_K" for i in range(3)})
    assert raised("q4_0", QT.Q4_0) == {"output.weight": "Q6_K"}
    assert raised("q6_k", QT.Q6_K) == {}
