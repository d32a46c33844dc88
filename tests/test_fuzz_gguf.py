"""The GGUF loader fuzzer's share of `make test` (~20 s; `make fuzz` runs 100,000+ cases).

Every mutated file must end in success or one short line of lfm2q error — no crash, no hang,
no other exception. In-process cases are loaded under a per-case alarm; the files that load are
then run (logits of two tokens, two generated tokens) in a subprocess, where a segfault in a
numba kernel would show as a dead worker instead of taking pytest down. The harness and the
mutators live in tests/fuzz/; replay a failing case with
`python tests/fuzz/fuzz_gguf.py --seed-file F --seed RUN_SEED --replay CASE`.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from gguf import GGUFValueType as VT

import lfm2q

FUZZ_DIR = Path(__file__).parent / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))
from fuzz_gguf import run_case  # noqa: E402
from gguf_mutate import case_rng, load_seed, mutate, serialize  # noqa: E402

RUN_SEED = int(os.environ.get("LFM2Q_FUZZ_SEED", "7"))
IN_PROCESS_SECONDS = 8.0   # the time box; at least MIN_CASES run whatever the machine's speed
MIN_CASES = 300
SUBPROCESS_OK_CASES = 12   # loaded files run in the subprocess sample
SUBPROCESS_ERROR_CASES = 4


@pytest.fixture(scope="module")
def seed_files(tiny_gguf) -> list[Path]:
    return [tiny_gguf("f32"), tiny_gguf("q8_0")]


@pytest.fixture(scope="module")
def in_process(seed_files, tmp_path_factory) -> dict:
    """The time-boxed in-process run: outcome counts, problems, and case numbers by outcome."""
    seeds = [load_seed(p) for p in seed_files]
    scratch = tmp_path_factory.mktemp("fuzz")
    counts, problems, by_outcome = Counter(), [], {}
    deadline = time.monotonic() + IN_PROCESS_SECONDS
    case = 0
    while case < MIN_CASES or time.monotonic() < deadline:
        seed = seeds[case % len(seeds)]
        data, what = mutate(seed, case_rng(RUN_SEED, case))
        path = scratch / f"case-{case}.gguf"
        path.write_bytes(data)
        outcome, detail = run_case(path, deep=False, seconds=5.0)
        path.unlink()
        counts[outcome] += 1
        by_outcome.setdefault(outcome, []).append(case)
        if outcome not in ("ok", "error", "known"):
            problems.append(f"case {case} ({seed.name}: {what}): {outcome} {detail}")
        case += 1
    return {"counts": counts, "problems": problems, "cases": by_outcome, "n": case}


def test_in_process_share_has_no_crash_hang_or_stray_exception(in_process):
    print(f"{in_process['n']} cases: {dict(in_process['counts'])}")
    assert not in_process["problems"], "\n".join(in_process["problems"][:10])
    # the mutators reach both sides: files that still load, and every kind of refusal
    assert in_process["counts"]["ok"] > 0 and in_process["counts"]["error"] > in_process["n"] // 2


def test_loaded_files_run_in_a_subprocess(in_process, seed_files):
    """A sample run for real (logits + 2 generated tokens) in a separate process: a kernel reading
    out of bounds would kill that process, which the harness reports as a crash."""
    cases = (in_process["cases"].get("ok", [])[:SUBPROCESS_OK_CASES]
             + in_process["cases"].get("error", [])[:SUBPROCESS_ERROR_CASES])
    cmd = [sys.executable, str(FUZZ_DIR / "fuzz_gguf.py"), "--seed", str(RUN_SEED), "--only",
           ",".join(map(str, cases)), "--case-seconds", "60", "--hang-seconds", "90"]
    for p in seed_files:
        cmd += ["--seed-file", str(p)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    record = json.loads(p.stdout)
    assert record["cases"] == len(cases)
    assert record["crashes"] == 0 and record["hangs"] == 0, p.stderr[-2000:]
    unexplained = {k: v for k, v in record["problems"].items() if v["outcome"] != "known"}
    assert not unexplained, json.dumps(unexplained, indent=1)
    assert record["outcomes"].get("ok", 0) + record["outcomes"].get("known", 0) >= min(
        SUBPROCESS_OK_CASES, len(in_process["cases"].get("ok", []))) // 2


# --- named structure-aware cases: each bad field and the one line the user sees ---------------

@pytest.fixture(scope="module")
def seed(seed_files):
    return load_seed(seed_files[0])


def _variant(seed, tmp_path, change) -> Path:
    doc = copy.deepcopy(seed.doc)
    change(doc)
    path = tmp_path / "variant.gguf"
    path.write_bytes(serialize(doc)[0])
    return path


def _set(doc, key, vt, value, item=None):
    for kv in doc.kvs:
        if kv[0] == key:
            kv[1:] = [vt, value, item]
            return
    doc.kvs.append([key, vt, value, item])


def _tensor(doc, name):
    return next(t for t in doc.tensors if t[0] == name)


def _error(path: Path) -> str:
    with pytest.raises(lfm2q.Lfm2qError) as e:
        lfm2q.load(path, n_ctx=8)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400 and str(path) in msg
    return msg


def _bytes_at_slot(seed, kind, index, value) -> bytes:
    data = bytearray(seed.raw)
    slot = [s for s in seed.slots if s.kind == kind][index]
    data[slot.pos:slot.pos + slot.width] = value.to_bytes(slot.width, "little")
    return bytes(data)


@pytest.mark.parametrize("key, vt, value, item, words", [
    ("lfm2.attention.head_count_kv", VT.STRING, "2", None, "head_count_kv should be a number, found '2'"),
    ("lfm2.attention.head_count_kv", VT.ARRAY, [0, 2], VT.INT32, "has 2 entries for 6 layers"),
    ("lfm2.attention.head_count_kv", VT.ARRAY, ["0"] * 6, VT.STRING, "should be a number, found '0'"),
    ("lfm2.attention.head_count_kv", VT.INT32, -1, None, "head_count_kv = -1 is out of range"),
    ("lfm2.block_count", VT.UINT32, 2**32 - 1, None, "block_count = 4294967295 is out of range"),
    ("lfm2.block_count", VT.FLOAT32, 6.5, None, "block_count should be a whole number, found 6.5"),
    ("lfm2.block_count", VT.BOOL, True, None, "block_count should be a number, found True"),
    ("lfm2.context_length", VT.STRING, "4k", None, "context_length should be a number, found '4k'"),
    ("lfm2.context_length", VT.INT32, 0, None, "context_length = 0 is out of range"),
    ("lfm2.rope.freq_base", VT.FLOAT32, float("nan"), None, "freq_base should be a number, found nan"),
    ("lfm2.rope.freq_base", VT.ARRAY, [1, 2], VT.INT32, "freq_base should be a number, found [1, 2]"),
    ("lfm2.attention.layer_norm_rms_epsilon", VT.FLOAT32, 0.0, None, "epsilon = 0.0 is out of range"),
    ("lfm2.attention.layer_norm_rms_epsilon", VT.FLOAT32, float("inf"), None, "should be a number, found inf"),
    ("lfm2.attention.sliding_window", VT.STRING, "none", None, "sliding_window should be a number"),
    ("lfm2.attention.sliding_window", VT.UINT64, 2**64 - 1, None, "sliding_window = 18446744073709551615 is out of range"),
    ("lfm2.vocab_size", VT.ARRAY, [-1] * 6, VT.INT32, "vocab_size should be a number"),
    ("lfm2.embedding_length", VT.UINT64, 2**64 - 1, None, "is not a multiple of 4 heads"),
    ("general.alignment", VT.UINT32, 3, None, "general.alignment 3 is not a power of two"),
    ("general.architecture", VT.UINT32, 7, None, "general.architecture is 7, not 'lfm2'"),
    ("general.architecture", VT.STRING, "llama\n\x1b[31m" + "x" * 200, None, "general.architecture is 'llama\\n\\x1b[31mxxx"),
    ("tokenizer.ggml.bos_token_id", VT.UINT32, 10**9, None, "bos_token_id 1000000000 is outside the vocabulary"),
    ("tokenizer.ggml.eos_token_id", VT.INT32, -1, None, "eos_token_id -1 is outside the vocabulary"),
    ("tokenizer.ggml.eos_token_id", VT.ARRAY, [1, 2], VT.INT32, "eos_token_id should be an integer, found [1, 2]"),
    ("tokenizer.ggml.tokens", VT.ARRAY, list(range(512)), VT.INT32, "tokens should be an array of strings"),
    ("tokenizer.ggml.token_type", VT.ARRAY, ["1"] * 512, VT.STRING, "token_type should be an array of integers"),
    ("tokenizer.chat_template", VT.UINT8, 1, None, "chat_template should be a string, found 1"),
    ("tokenizer.ggml.model", VT.STRING, "llama", None, "tokenizer.ggml.model is 'llama'"),
])
def test_wrong_metadata_value(seed, tmp_path, key, vt, value, item, words):
    assert words in _error(_variant(seed, tmp_path, lambda d: _set(d, key, vt, value, item)))


def test_vocabulary_one_token_short(seed, tmp_path):
    def cut(doc):
        for kv in doc.kvs:
            if kv[0] in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
                kv[2] = kv[2][:-1]
    assert "tokenizer.ggml.tokens has 511 tokens for 512 embedding rows" in _error(_variant(seed, tmp_path, cut))


@pytest.mark.parametrize("change, words", [
    (lambda t: t[1].__setitem__(0, 2**64 - 64), "has shape"),          # a negative dim as u64
    (lambda t: t[1].__setitem__(1, 0), "has shape"),
    (lambda t: t.__setitem__(1, [2**62, 4]), "has shape"),
    (lambda t: t.__setitem__(1, list(reversed(t[1]))), "has shape [64, 128], expected [128, 64]"),
    (lambda t: t.__setitem__(2, 99), "unknown type 99"),
    (lambda t: t.__setitem__(2, 12), "rows of 64 are not whole 256-blocks"),   # Q4_K
    (lambda t: t.__setitem__(2, 24), "is I8, which lfm2q cannot run"),
    (lambda t: t.__setitem__(3, t[3] + 4), "lies outside the file"),        # unaligned
    (lambda t: t.__setitem__(3, 2**63), "lies outside the file"),
    (lambda t: (t.__setitem__(0, "blk.0.ffn_up.weight\n\x1b[2J"), t.__setitem__(2, 99)),
     "tensor blk.0.ffn_up.weight\\n\\x1b[2J has unknown type 99"),
])
def test_bad_tensor_info(seed, tmp_path, change, words):
    path = _variant(seed, tmp_path, lambda d: change(_tensor(d, "blk.0.ffn_gate.weight")))
    assert words in _error(path)


@pytest.mark.parametrize("kind, index, value, words", [
    ("version", 0, 1, "GGUF version 1 is not supported"),
    ("n_kv", 0, 2**63, "claims"),
    ("n_tensors", 0, 2**64 - 1, "claims"),
    ("keylen", 3, 2**64 - 1, "claims"),
    ("strlen", 0, 2**40, "past the end"),
    ("count", 1, 2**62, "claims"),        # tokenizer.ggml.tokens
    ("count", 2, 2**31, "claims"),        # token_type: int32 items
    ("vtype", 0, 13, "unknown value type 13"),
    ("itemtype", 0, 9, "claims"),          # an array of 6 arrays, read from the bytes after it
    ("ndims", 0, 5, "has 5 dimensions"),
    ("ndims", 0, 0, "has 0 dimensions"),
    ("namelen", 0, 70000, "tensor name claims 70000 bytes"),
])
def test_lying_header_field(seed, tmp_path, kind, index, value, words):
    path = tmp_path / "slot.gguf"
    path.write_bytes(_bytes_at_slot(seed, kind, index, value))
    assert words in _error(path)


def test_a_key_with_control_characters_is_shown_escaped(seed, tmp_path):
    doc = copy.deepcopy(seed.doc)
    doc.kvs.insert(0, ["evil\n\x1b[31mkey", VT.UINT32, 1, None])
    doc.kvs.insert(1, ["evil\n\x1b[31mkey", VT.UINT32, 1, None])
    path = tmp_path / "keys.gguf"
    path.write_bytes(serialize(doc)[0])
    assert "metadata key evil\\n\\x1b[31mkey appears twice" in _error(path)


def test_random_bytes_and_headers(tmp_path):
    import random
    rng = random.Random(3)
    for i in range(200):
        path = tmp_path / f"r{i}.gguf"
        head = b"GGUF\x03\x00\x00\x00" if i % 2 else b""
        path.write_bytes(head + bytes(rng.randrange(256) for _ in range(rng.choice([0, 5, 24, 100, 2000]))))
        _error(path)
