"""Damaged, foreign and incomplete GGUF files: each is one GGUFError naming the file and what
is wrong, raised before any kernel could read out of bounds."""
from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

import lfm2q
from lfm2q.gguf_reader import GGUFReader


def rewrite(src: Path, dst: Path, *, arch: str = "lfm2", drop: str | None = None,
            retype: str | None = None, kv: dict | None = None) -> Path:
    """Copy an LFM2 GGUF through gguf-py's writer, changing one thing."""
    r = GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch)
    for key, value in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if kv and key in kv:
            value = kv.pop(key)
            if value is None:
                continue
        key_arch = key.replace("lfm2.", f"{arch}.", 1)
        if isinstance(value, list):
            vt = gguf.GGUFValueType.STRING if value and isinstance(value[0], str) else gguf.GGUFValueType.INT32
            w.add_array(key_arch, value) if vt == gguf.GGUFValueType.STRING else w.add_key_value(
                key_arch, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
        elif isinstance(value, str):
            w.add_string(key_arch, value)
        elif isinstance(value, bool):
            w.add_bool(key_arch, value)
        elif isinstance(value, float):
            w.add_float32(key_arch, value)
        else:
            w.add_uint32(key_arch, value)
    for name, t in r.tensors.items():
        if name == drop:
            continue
        data = r.data(name)
        if name == retype:  # store an F32 matrix as I8: a type the engine cannot run
            w.add_tensor(name, np.zeros(t.shape, np.int8), raw_dtype=gguf.GGMLQuantizationType.I8)
            continue
        if t.qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data.view(np.float32).reshape(t.shape))
        else:
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(t.qtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def load_error(path: Path) -> str:
    with pytest.raises(lfm2q.GGUFError) as e:
        lfm2q.load(path, n_ctx=16)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


def test_the_rewrite_helper_round_trips(tiny_gguf, tmp_path):
    model = lfm2q.load(rewrite(tiny_gguf("f32"), tmp_path / "same.gguf"), n_ctx=16)
    np.testing.assert_array_equal(model.logits([1, 20, 30]), lfm2q.load(tiny_gguf("f32"), n_ctx=16).logits([1, 20, 30]))


def test_missing_file(tmp_path):
    assert "no such file" in load_error(tmp_path / "nope.gguf")


def test_empty_file(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "empty" in load_error(tmp_path / "empty.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("this is a text file, not a model\n" * 10)
    assert "not a GGUF file" in load_error(path)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.2, 0.5, 0.999])
def test_truncated_file(tiny_gguf, tmp_path, fraction):
    data = tiny_gguf("f32").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:max(24, int(len(data) * fraction))])
    message = load_error(path)
    assert "damaged" in message or "outside the file" in message or "past the end" in message


def test_a_llama_file_is_refused(tiny_gguf, tmp_path):
    message = load_error(rewrite(tiny_gguf("f32"), tmp_path / "llama.gguf", arch="llama"))
    assert "general.architecture is 'llama'" in message


def test_missing_tensor(tiny_gguf, tmp_path):
    message = load_error(rewrite(tiny_gguf("f32"), tmp_path / "m.gguf", drop="blk.3.ffn_up.weight"))
    assert "tensor blk.3.ffn_up.weight is missing" in message


def test_missing_final_norm(tiny_gguf, tmp_path):
    message = load_error(rewrite(tiny_gguf("f32"), tmp_path / "m.gguf", drop="token_embd_norm.weight"))
    assert "token_embd_norm.weight is missing" in message


def test_missing_metadata_key(tiny_gguf, tmp_path):
    message = load_error(rewrite(tiny_gguf("f32"), tmp_path / "m.gguf", kv={"lfm2.block_count": None}))
    assert "lfm2.block_count is missing" in message


def test_metadata_contradicting_the_tensors(tiny_gguf, tmp_path):
    message = load_error(rewrite(tiny_gguf("f32"), tmp_path / "m.gguf", kv={"lfm2.feed_forward_length": 96}))
    assert "ffn_gate.weight has shape" in message and "expected" in message


def test_unsupported_tensor_type(tiny_gguf, tmp_path):
    message = load_error(rewrite(tiny_gguf("f32"), tmp_path / "m.gguf", retype="blk.0.ffn_up.weight"))
    assert "blk.0.ffn_up.weight is I8" in message


def header(n_tensors: int, n_kv: int) -> bytes:
    return struct.pack("<IIQQ", gguf.GGUF_MAGIC, 3, n_tensors, n_kv)


@pytest.mark.parametrize("n_tensors,n_kv", [(2**60, 0), (0, 2**60), (2**63, 2**63)])
def test_absurd_counts_fail_fast(tmp_path, n_tensors, n_kv):
    path = tmp_path / "huge.gguf"
    path.write_bytes(header(n_tensors, n_kv) + b"\0" * 64)
    assert "claims" in load_error(path)


def test_absurd_string_length_fails_without_allocating(tmp_path):
    path = tmp_path / "str.gguf"
    path.write_bytes(header(0, 1) + struct.pack("<Q", 2**40) + b"general.architecture")
    assert "past the end" in load_error(path) or "claims" in load_error(path)


def test_absurd_array_count_fails_fast(tmp_path):
    key = b"tokenizer.ggml.tokens"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", gguf.GGUFValueType.ARRAY,
                                                            gguf.GGUFValueType.STRING, 2**62)
    path = tmp_path / "arr.gguf"
    path.write_bytes(header(0, 1) + body + b"\0" * 32)
    assert "claims" in load_error(path)


def test_tensor_data_outside_the_file(tiny_gguf, tmp_path):
    # Point the last tensor's offset far past the end: caught at open, not in a kernel.
    src = tiny_gguf("f32")
    r = GGUFReader(src)
    data = bytearray(src.read_bytes())
    last = max(r.tensors.values(), key=lambda t: t.offset)
    name = last.name.encode()
    at = data.index(struct.pack("<Q", len(name)) + name)
    off_at = at + 8 + len(name) + 4 + 8 * len(last.shape) + 4
    data[off_at:off_at + 8] = struct.pack("<Q", 2**40)
    path = tmp_path / "offset.gguf"
    path.write_bytes(bytes(data))
    assert "lies outside the file" in load_error(path)
