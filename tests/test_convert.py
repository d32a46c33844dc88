"""lfm2q.convert: HF LFM2 checkpoint -> GGUF.

Checked against the spec (docs/lfm2-facts.md §5-§6) written out literally here, against
the HF weights byte for byte, and against a plain transcription of ggml's quantize_row_q8_0_ref.
"""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from hf_fixtures import make_checkpoint
from lfm2q.convert import convert_hf, plan_types
from lfm2q.convert.hf import effective_ff_dim, read_config
from lfm2q.errors import ConvertError

QT = gguf.GGMLQuantizationType
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# helpers


def read_gguf(path: Path) -> tuple[dict, dict]:
    """(fields: key -> (value, [types]), tensors: name -> ReaderTensor)"""
    r = gguf.GGUFReader(path)
    fields = {k: (f.contents(), f.types) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in r.tensors}


def hf_weights(hf_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as float32 NumPy (through torch, which reads BF16)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        for k, v in load_file(f).items():
            out[k] = v.float().numpy()
    return out


def tensor_bytes(t) -> bytes:
    return np.asarray(t.data).tobytes()


def expected_tensors(n_layers: int, attn: tuple[int, ...], tied: bool, D: int, FF: int, V: int,
                     H: int, KVH: int, L: int = 3) -> dict[str, tuple[list[int], str]]:
    """The spec's tensor table (docs/lfm2-facts.md §5), literally: GGUF name -> (ne in ggml order, kind).
    kind: "f32" = always F32, "mat" = in the requested type."""
    HD = D // H
    t = {"token_embd.weight": ([D, V], "mat"), "token_embd_norm.weight": ([D], "f32")}
    if not tied:
        t["output.weight"] = ([D, V], "mat")
    for i in range(n_layers):
        b = f"blk.{i}."
        t[b + "attn_norm.weight"] = ([D], "f32")
        t[b + "ffn_norm.weight"] = ([D], "f32")
        t[b + "ffn_gate.weight"] = ([D, FF], "mat")
        t[b + "ffn_up.weight"] = ([D, FF], "mat")
        t[b + "ffn_down.weight"] = ([FF, D], "mat")
        if i in attn:
            t[b + "attn_q.weight"] = ([D, H * HD], "mat")
            t[b + "attn_k.weight"] = ([D, KVH * HD], "mat")
            t[b + "attn_v.weight"] = ([D, KVH * HD], "mat")
            t[b + "attn_output.weight"] = ([H * HD, D], "mat")
            t[b + "attn_q_norm.weight"] = ([HD], "f32")
            t[b + "attn_k_norm.weight"] = ([HD], "f32")
        else:
            t[b + "shortconv.conv.weight"] = ([L, D], "f32")
            t[b + "shortconv.in_proj.weight"] = ([D, 3 * D], "mat")
            t[b + "shortconv.out_proj.weight"] = ([D, D], "mat")
    return t


def gguf_to_hf_name(name: str) -> str:
    """The spec's name table, inverted by hand (independent of convert/gguf_layout.py)."""
    glob = {"token_embd.weight": "model.embed_tokens.weight",
            "token_embd_norm.weight": "model.embedding_norm.weight",
            "output.weight": "lm_head.weight"}
    if name in glob:
        return glob[name]
    _, i, rest = name.split(".", 2)
    per_layer = {
        "attn_norm.weight": "operator_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
        "ffn_gate.weight": "feed_forward.w1.weight", "ffn_up.weight": "feed_forward.w3.weight",
        "ffn_down.weight": "feed_forward.w2.weight",
        "shortconv.conv.weight": "conv.conv.weight", "shortconv.in_proj.weight": "conv.in_proj.weight",
        "shortconv.out_proj.weight": "conv.out_proj.weight",
        "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.out_proj.weight",
        "attn_q_norm.weight": "self_attn.q_layernorm.weight", "attn_k_norm.weight": "self_attn.k_layernorm.weight",
    }
    return f"model.layers.{i}.{per_layer[rest]}"


def q8_0_reference(x: np.ndarray) -> bytes:
    """ggml-quants.c quantize_row_q8_0_ref, transcribed plainly, row by row, block by block:

        for each block of 32:  amax = max |x[j]|            (fp32)
                               d = amax / ((1 << 7) - 1)    (fp32)
                               id = d ? 1.0f/d : 0.0f
                               y.d = GGML_FP32_TO_FP16(d)   (round to nearest even)
                               y.qs[j] = roundf(x[j]*id)    (half away from zero)
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    out = bytearray()
    for block in x:
        amax = np.float32(0.0)
        for v in block:
            amax = max(amax, np.float32(abs(v)))
        d = np.float32(amax / np.float32(127))
        inv = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
        out += np.float16(d).tobytes()  # numpy's float32->float16 rounds to nearest even
        for v in block:
            p = float(np.float32(v * inv))  # the fp32 product, exactly representable as a double
            q = math.floor(p + 0.5) if p >= 0 else -math.floor(-p + 0.5)  # C roundf
            out += struct.pack("<b", q)
    return bytes(out)


def listdir(p: Path) -> set[str]:
    return {c.name for c in p.iterdir()}


# ---------------------------------------------------------------------------------------------
# fixtures: a few checkpoints shared by the tests of this module


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert_ckpts")
    return {
        "new_tied": make_checkpoint(root / "new_tied"),
        "old_untied": make_checkpoint(root / "old_untied", config_style="old", tie=False, seed=1),
        "sharded_bf16": make_checkpoint(root / "sharded_bf16", shards=3, tie=False, dtype="bfloat16", seed=2),
        "f16_old_sharded": make_checkpoint(root / "f16_old_sharded", shards=2, config_style="old",
                                           dtype="float16", seed=3),
    }


@pytest.fixture(scope="module")
def converted(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("convert_out")
    cache = {}

    def get(name: str, out_type: str) -> Path:
        if (name, out_type) not in cache:
            cache[name, out_type] = convert_hf(ckpts[name], out / f"{name}-{out_type}.gguf", out_type)
        return cache[name, out_type]

    return get


# ---------------------------------------------------------------------------------------------
# layout: keys, names, shapes, types


@pytest.mark.parametrize("name, tied", [("new_tied", True), ("old_untied", False),
                                        ("sharded_bf16", False), ("f16_old_sharded", True)])
@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16", "q8_0"])
def test_layout_matches_spec(converted, ckpts, name, tied, out_type):
    path = converted(name, out_type)
    fields, tensors = read_gguf(path)
    V = gguf.GGUFValueType

    expect_kv = {
        "general.architecture": ("lfm2", [V.STRING]),
        "general.name": (name, [V.STRING]),
        "general.file_type": ({"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}[out_type], [V.UINT32]),
        "general.quantization_version": (2, [V.UINT32]),
        "lfm2.block_count": (6, [V.UINT32]),
        "lfm2.context_length": (4096, [V.UINT32]),
        "lfm2.embedding_length": (64, [V.UINT32]),
        "lfm2.feed_forward_length": (128, [V.UINT32]),
        "lfm2.attention.head_count": (4, [V.UINT32]),
        "lfm2.attention.head_count_kv": ([0, 0, 2, 0, 0, 2], [V.ARRAY, V.INT32]),
        "lfm2.attention.layer_norm_rms_epsilon": (pytest.approx(1e-5), [V.FLOAT32]),
        "lfm2.rope.freq_base": (1e6, [V.FLOAT32]),
        "lfm2.vocab_size": (512, [V.UINT32]),
        "lfm2.shortconv.l_cache": (3, [V.UINT32]),
    }
    for key, want in expect_kv.items():
        assert fields[key] == want, key
    tokenizer_keys = {k for k in fields if k.startswith("tokenizer.")}
    assert {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
            "tokenizer.chat_template"} <= tokenizer_keys
    assert len(fields["tokenizer.ggml.tokens"][0]) == 512
    assert set(fields) == set(expect_kv) | tokenizer_keys  # nothing else

    spec = expected_tensors(6, (2, 5), tied, D=64, FF=128, V=512, H=4, KVH=2)
    assert set(tensors) == set(spec)
    mat_type = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0}[out_type]
    for tname, (ne, kind) in spec.items():
        t = tensors[tname]
        assert [int(n) for n in t.shape] == ne, tname
        assert t.tensor_type == (QT.F32 if kind == "f32" else mat_type), tname
    # file order: embedding, blocks in order, final norm, then the untied head
    order = list(tensors)
    assert order[0] == "token_embd.weight"
    assert order[-1] == ("token_embd_norm.weight" if tied else "output.weight")
    blocks = [int(n.split(".")[1]) for n in order if n.startswith("blk.")]
    assert blocks == sorted(blocks)


def test_old_and_new_config_give_identical_files(tmp_path):
    a = make_checkpoint(tmp_path / "a", config_style="new", seed=5)
    b = make_checkpoint(tmp_path / "a_old", config_style="old", seed=5)
    fa = convert_hf(a, tmp_path / "a.gguf", "q8_0")
    fb = convert_hf(b, tmp_path / "b.gguf", "q8_0")
    fa_fields, fa_t = read_gguf(fa)
    fb_fields, fb_t = read_gguf(fb)
    fa_fields.pop("general.name"), fb_fields.pop("general.name")
    assert fa_fields == fb_fields
    assert all(tensor_bytes(fa_t[n]) == tensor_bytes(fb_t[n]) for n in fa_t)


# ---------------------------------------------------------------------------------------------
# tensor data


@pytest.mark.parametrize("name", ["new_tied", "old_untied", "sharded_bf16", "f16_old_sharded"])
def test_f32_bytes_equal_hf_weights(converted, ckpts, name):
    _, tensors = read_gguf(converted(name, "f32"))
    hf = hf_weights(ckpts[name])
    for tname, t in tensors.items():
        w = hf[gguf_to_hf_name(tname)]
        if tname.endswith("shortconv.conv.weight"):
            assert w.shape[1] == 1
            w = w[:, 0, :]
        assert tensor_bytes(t) == np.ascontiguousarray(w, dtype=np.float32).tobytes(), tname


@pytest.mark.parametrize("name", ["new_tied", "sharded_bf16", "f16_old_sharded"])
def test_f16_and_bf16_bytes(converted, ckpts, name):
    hf = hf_weights(ckpts[name])
    _, f16 = read_gguf(converted(name, "f16"))
    _, bf16 = read_gguf(converted(name, "bf16"))
    for tname in f16:
        w = hf[gguf_to_hf_name(tname)].reshape([int(n) for n in reversed(f16[tname].shape)])
        if f16[tname].tensor_type == QT.F32:
            assert tensor_bytes(f16[tname]) == w.astype(np.float32).tobytes()
            assert tensor_bytes(bf16[tname]) == w.astype(np.float32).tobytes()
            continue
        assert tensor_bytes(f16[tname]) == w.astype(np.float16).tobytes(), tname
        assert tensor_bytes(bf16[tname]) == gguf.quants.quantize(w, QT.BF16).tobytes(), tname


def test_bf16_checkpoint_round_trips_to_bf16_bit_exact(converted, ckpts):
    """bf16 -> float32 -> bf16 must give back the stored bits (independent of gguf-py)."""
    from safetensors import safe_open

    _, tensors = read_gguf(converted("sharded_bf16", "bf16"))
    stored = {}
    for f in sorted(ckpts["sharded_bf16"].glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                stored[k] = st.get_tensor(k).view(__import__("torch").int16).numpy().tobytes()
    for tname, t in tensors.items():
        if t.tensor_type == QT.BF16:
            assert tensor_bytes(t) == stored[gguf_to_hf_name(tname)], tname


@pytest.mark.parametrize("name", ["new_tied", "sharded_bf16"])
def test_q8_0_bytes_equal_c_reference(converted, ckpts, name):
    hf = hf_weights(ckpts[name])
    _, tensors = read_gguf(converted(name, "q8_0"))
    n_q8 = 0
    for tname, t in tensors.items():
        if t.tensor_type == QT.Q8_0:
            n_q8 += 1
            assert tensor_bytes(t) == q8_0_reference(hf[gguf_to_hf_name(tname)]), tname
    assert n_q8 > 20


def _hard_rows() -> np.ndarray:
    rng = np.random.default_rng(7)
    halves = np.array([0.5, 1.5, -0.5, -1.5, 2.5, -2.5, 126.5, -126.5] * 4, dtype=np.float32)
    halves[0] = 127.0  # amax 127 -> d = 1, id = 1: every x*id is exactly k + 0.5
    rows = [
        np.zeros(64),                                        # d = 0, id = 0
        np.full(64, 0.37),                                   # constant
        np.full(64, -3.0),                                   # constant, negative
        np.concatenate([rng.standard_normal(31) * 1e-3, [1e4]] * 2),  # a huge outlier per block
        rng.standard_normal(64) * 1e-30,                     # tiny (not subnormal: 1/d must stay finite)
        rng.standard_normal(64) * 1e-7,
        np.concatenate([halves, -halves]),                   # exact .5 ties: roundf goes away from zero
        np.concatenate([halves * 0.25, halves * 4.0]),       # ties at other scales
        rng.standard_normal(64).astype(np.float16).astype(np.float32),
        rng.standard_normal(64) * 300,
    ]
    return np.stack(rows).astype(np.float32)


def test_gguf_py_q8_0_equals_c_reference_on_hard_rows():
    rows = _hard_rows()
    got = gguf.quants.quantize(rows, QT.Q8_0)
    assert got.tobytes() == q8_0_reference(rows)
    # the tie row really tests half-away-from-zero (round-half-even would differ)
    tie_row = rows[6, :32]
    qs = np.frombuffer(q8_0_reference(tie_row), dtype=np.int8)[2:]
    assert list(qs[1:8]) == [2, -1, -2, 3, -3, 127, -127]


def test_q8_0_falls_back_to_f16_when_rows_do_not_fit_blocks(tmp_path):
    # hidden 48: rows of length 48 are not whole Q8_0 blocks; ffn_down rows (FF = 96) are.
    hf = make_checkpoint(tmp_path / "h48", hidden_size=48, num_attention_heads=4, num_key_value_heads=2)
    _, tensors = read_gguf(convert_hf(hf, tmp_path / "h48.gguf", "q8_0"))
    for tname, t in tensors.items():
        row = int(t.shape[0])
        if t.tensor_type == QT.F32:
            assert len(t.shape) == 1 or "shortconv.conv" in tname
        elif row % 32 == 0:
            assert t.tensor_type == QT.Q8_0, tname
        else:
            assert t.tensor_type == QT.F16, tname
    assert tensors["blk.0.ffn_down.weight"].tensor_type == QT.Q8_0
    assert tensors["blk.0.ffn_gate.weight"].tensor_type == QT.F16
    assert tensors["token_embd.weight"].tensor_type == QT.F16


def choose_type(name, shape, out_type):
    return plan_types([(name, shape)], out_type, n_layer=6)[0]


def test_choose_type_rules():
    assert choose_type("blk.0.attn_norm.weight", (64,), "q8_0") == QT.F32
    assert choose_type("blk.2.attn_q_norm.weight", (16,), "bf16") == QT.F32
    assert choose_type("blk.0.shortconv.conv.weight", (64, 3), "f16") == QT.F32
    assert choose_type("blk.0.ffn_up.weight", (128, 64), "Q8_0") == QT.Q8_0
    assert choose_type("blk.0.ffn_up.weight", (128, 48), "q8_0") == QT.F16
    assert choose_type("token_embd.weight", (512, 64), "F32") == QT.F32
    assert choose_type("token_embd.weight", (512, 64), "bf16") == QT.BF16


# ---------------------------------------------------------------------------------------------
# config reading


def test_effective_ff_dim_matches_released_models():
    assert effective_ff_dim(6656, True, 1.0, 256) == 4608    # LFM2-350M
    assert effective_ff_dim(12288, True, 1.0, 256) == 8192   # LFM2-1.2B / LFM2.5-1.2B
    assert effective_ff_dim(2560, False, 1.0, 256) == 2560   # auto-adjust off


REAL_CONFIG = Path("/work/shared/lfm2-tokenizer/config.json")  # LiquidAI/LFM2-1.2B, old key style


@pytest.mark.skipif(not REAL_CONFIG.exists(), reason="real LFM2 config.json not available")
def test_reads_real_lfm2_config(tmp_path):
    (tmp_path / "config.json").write_text(REAL_CONFIG.read_text())
    cfg = read_config(tmp_path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.ff_dim, cfg.vocab_size) == (2048, 16, 8192, 65536)
    assert [i for i, a in enumerate(cfg.attention_layers) if a] == [2, 5, 8, 10, 12, 14]
    assert cfg.tie_embeddings and cfg.rope_theta == 1e6 and cfg.norm_eps == 1e-5 and cfg.conv_L_cache == 3
    assert cfg.context_length == 128000 and cfg.head_dim == 64


def test_no_layer_types_means_every_layer_is_attention(tmp_path):
    hf = make_checkpoint(tmp_path / "all_attn", num_hidden_layers=3, attn_layers=(0, 1, 2))
    cfg_path = hf / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["layer_types"]
    cfg.pop("full_attn_idxs", None)
    cfg_path.write_text(json.dumps(cfg))
    fields, tensors = read_gguf(convert_hf(hf, tmp_path / "a.gguf", "f32"))
    assert fields["lfm2.attention.head_count_kv"][0] == [2, 2, 2]
    assert not any("shortconv" in n for n in tensors)


def test_lfm_prefix_renamed_and_vision_audio_tensors_skipped(tmp_path, converted):
    hf = make_checkpoint(tmp_path / "mm", seed=0)  # same weights as ckpts["new_tied"]
    st = hf / "model.safetensors"
    w = {k: v.copy() for k, v in _load_np(st).items()}
    w = {("lfm." + k[len("model."):] if k.startswith("model.") else k): v for k, v in w.items()}
    w["audio_tower.layers.0.weight"] = np.ones((4, 4), np.float32)
    w["model.vision_tower.patch.weight"] = np.ones((4, 4), np.int64)  # skipped before any dtype check
    save_file(w, str(st))
    got = convert_hf(hf, tmp_path / "mm.gguf", "q8_0")
    _, a = read_gguf(got)
    _, b = read_gguf(converted("new_tied", "q8_0"))
    assert list(a) == list(b) and all(tensor_bytes(a[n]) == tensor_bytes(b[n]) for n in a)


def test_output_folder_gets_a_default_name(tmp_path, ckpts):
    out = convert_hf(ckpts["new_tied"], tmp_path, "F16")
    assert out == tmp_path / "new_tied-f16.gguf" and out.is_file()


def test_progress_bar_goes_to_stderr(tmp_path, ckpts, capfd):
    convert_hf(ckpts["new_tied"], tmp_path / "p.gguf", "f16", progress=True)
    cap = capfd.readouterr()
    assert cap.out == "" and "p.gguf" in cap.err


# ---------------------------------------------------------------------------------------------
# errors: one line naming the culprit, and no output or temp file left behind


def _load_np(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(path))


def _rewrite(hf: Path, edit) -> None:
    st = hf / "model.safetensors"
    w = _load_np(st)
    edit(w)
    save_file(w, str(st))


def _edit_config(hf: Path, edit) -> None:
    p = hf / "config.json"
    cfg = json.loads(p.read_text())
    edit(cfg)
    p.write_text(json.dumps(cfg))


def _set(w, k, v):
    w[k] = v


def _case_int64(w):
    w["model.layers.0.operator_norm.weight"] = w["model.layers.0.operator_norm.weight"].astype(np.int64)


def _case_nan(w):  # the last tensor written: the temp file is well under way when it fails
    w["model.embedding_norm.weight"][3] = np.nan


def _case_inf(w):
    w["model.layers.4.feed_forward.w2.weight"][1, 2] = -np.inf


ERROR_CASES = {
    # name: (how to break a fresh checkpoint, substrings the message must contain)
    "no_config": (lambda hf: (hf / "config.json").unlink(), ["no config.json", "Hugging Face"]),
    "not_lfm2": (lambda hf: _edit_config(hf, lambda c: _set(c, "model_type", "llama")),
                 ["config.json", "model_type 'llama' is not LFM2"]),
    "int64": (lambda hf: _rewrite(hf, _case_int64),
              ["model.safetensors", "model.layers.0.operator_norm.weight", "I64"]),
    "nan": (lambda hf: _rewrite(hf, _case_nan), ["model.safetensors", "model.embedding_norm.weight", "NaN"]),
    "inf": (lambda hf: _rewrite(hf, _case_inf), ["model.layers.4.feed_forward.w2.weight", "Inf"]),
    "missing": (lambda hf: _rewrite(hf, lambda w: w.pop("model.layers.3.conv.in_proj.weight")),
                ["model.layers.3.conv.in_proj.weight", "missing"]),
    "unexpected": (lambda hf: _rewrite(hf, lambda w: _set(w, "model.extra.weight", np.ones(3, np.float32))),
                   ["model.safetensors", "model.extra.weight", "unexpected"]),
    "wrong_shape": (lambda hf: _edit_config(hf, lambda c: _set(c, "intermediate_size", 384)),
                    ["model.safetensors", "feed_forward.w1.weight", "[128, 64]", "[256, 64]"]),
    "truncated": (lambda hf: _truncate(hf / "model.safetensors"), ["model.safetensors", "not a valid safetensors"]),
    "corrupt_header": (lambda hf: _corrupt_header(hf / "model.safetensors"),
                       ["model.safetensors", "not a valid safetensors"]),
    "no_weights": (lambda hf: (hf / "model.safetensors").unlink(), ["no model.safetensors"]),
    "bad_layer_type": (lambda hf: _edit_config(hf, lambda c: c["layer_types"].__setitem__(0, "sliding_attention")),
                       ["config.json", "layer_types[0]", "sliding_attention"]),
}


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _corrupt_header(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[8:40] = b"#" * 32  # the JSON header starts at byte 8
    p.write_bytes(bytes(data))


def _assert_one_line_error(excinfo, must_contain):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    for s in must_contain:
        assert s in msg, (s, msg)


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_raises_convert_error_and_leaves_nothing(tmp_path, case):
    hf = make_checkpoint(tmp_path / "hf")
    breaker, must_contain = ERROR_CASES[case]
    breaker(hf)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConvertError) as excinfo:
        convert_hf(hf, out_dir / "m.gguf", "q8_0")
    _assert_one_line_error(excinfo, must_contain)
    assert listdir(out_dir) == set()


def test_missing_shard_file(tmp_path):
    hf = make_checkpoint(tmp_path / "hf", shards=2)
    shard = sorted(hf.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ConvertError) as excinfo:
        convert_hf(hf, tmp_path / "m.gguf")
    _assert_one_line_error(excinfo, [shard.name, "missing"])
    assert not (tmp_path / "m.gguf").exists()


def test_untied_config_without_lm_head(tmp_path):
    hf = make_checkpoint(tmp_path / "hf", tie=True)
    _edit_config(hf, lambda c: _set(c, "tie_word_embeddings", False))
    with pytest.raises(ConvertError) as excinfo:
        convert_hf(hf, tmp_path / "m.gguf")
    _assert_one_line_error(excinfo, ["lm_head.weight", "missing", "untied"])


def test_bad_type_and_missing_output_folder(tmp_path, ckpts):
    with pytest.raises(ConvertError) as excinfo:
        convert_hf(ckpts["new_tied"], tmp_path / "m.gguf", "q4_k_x")
    _assert_one_line_error(excinfo, ["'q4_k_x'", "f32", "f16", "bf16", "q8_0"])
    with pytest.raises(ConvertError) as excinfo:
        convert_hf(ckpts["new_tied"], tmp_path / "nope" / "m.gguf", "f16")
    _assert_one_line_error(excinfo, [str(tmp_path / "nope"), "does not exist"])
    assert listdir(tmp_path) == set()


def test_interrupt_mid_write_leaves_nothing(tmp_path, ckpts, monkeypatch):
    """Any exception (here a KeyboardInterrupt after a few tensors) removes the temp file."""
    from lfm2q.convert import writer

    calls = {"n": 0}
    real = writer._convert_one

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(writer, "_convert_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        convert_hf(ckpts["new_tied"], tmp_path / "m.gguf", "f16")
    assert listdir(tmp_path) == set()


def test_existing_output_is_replaced_only_on_success(tmp_path, ckpts):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    with pytest.raises(ConvertError):
        convert_hf(ckpts["new_tied"], out, "nope")
    assert out.read_bytes() == b"old"
    convert_hf(ckpts["new_tied"], out, "f16")
    assert out.read_bytes()[:4] == b"GGUF"


# ---------------------------------------------------------------------------------------------
# CLI


def convert_args(*args: str) -> list[str]:
    """`lfm2q convert ARGS`. While the typer app has a single command, typer runs it without its
    name; once it has several, the name is needed."""
    from lfm2q.cli import app

    return (["convert"] if len(app.registered_commands) + len(app.registered_groups) > 1 else []) + list(args)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    from lfm2q.cli import app

    (tmp_path / "hf").mkdir()
    result = CliRunner().invoke(app, convert_args(str(tmp_path / "hf"), "-o", str(tmp_path / "m.gguf")))
    assert result.exit_code != 0
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no config.json" in err[0]
    assert "Traceback" not in result.output
    assert listdir(tmp_path) == {"hf"}


def test_cli_subprocess_bad_type(tmp_path, ckpts):
    proc = subprocess.run(
        [sys.executable, "-m", "lfm2q",
         *convert_args(str(ckpts["new_tied"]), "-o", str(tmp_path / "m.gguf"), "--type", "q3_z")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "q3_z" in lines[0] and "q8_0" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert listdir(tmp_path) == set()


def test_cli_converts(tmp_path, ckpts):
    from lfm2q.cli import app

    result = CliRunner().invoke(app, convert_args(str(ckpts["new_tied"]), "-o", str(tmp_path / "m.gguf"), "-t", "Q8_0"))
    assert result.exit_code == 0, result.output
    fields, _ = read_gguf(tmp_path / "m.gguf")
    assert fields["general.file_type"][0] == 7


# ---------------------------------------------------------------------------------------------
# memory: about one tensor at a time


@pytest.mark.parametrize("dtype, out_type", [("float32", "q8_0"), ("bfloat16", "f16"), ("float16", "bf16")])
def test_peak_memory_is_about_one_tensor(tmp_path, dtype, out_type):
    """Convert a model whose tensors total far more than the largest one, and check with
    tracemalloc (NumPy reports its buffers to it; memory-mapped file pages are not allocations)
    that the peak stays near one tensor's float32 copy plus its converted bytes. Keeping every
    converted tensor alive (or loading them all) would cost several times more."""
    hf = make_checkpoint(tmp_path / "big", hidden_size=256, num_hidden_layers=6, attn_layers=(2, 5),
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, dtype=dtype)
    from safetensors import safe_open
    with safe_open(str(hf / "model.safetensors"), framework="numpy") as f:
        sizes = [4 * math.prod(f.get_slice(k).get_shape()) for k in f.keys()]  # as float32
    largest, total = max(sizes), sum(sizes)
    assert total > 12 * largest

    convert_hf(hf, tmp_path / "warmup.gguf", out_type)  # first-call caches outside the measurement
    tracemalloc.start()
    try:
        convert_hf(hf, tmp_path / "m.gguf", out_type)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # at most one float32 copy + the converted tensor + the vocabulary/metadata
    assert peak < 2.5 * largest, (peak, largest, total)
