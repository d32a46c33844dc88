"""Hostile and broken input beyond the GGUF header (that is tests/test_fuzz_gguf.py): chat
templates that loop or grow, prompts and generation arguments, converter inputs, a memory cap,
and Ctrl-C. Each test asserts what the user sees — the one line and the exit code; the table in
docs/hostile-input.md lists them. Bugs found in modules owned elsewhere are strict xfails whose
reason says what is wrong.
"""
from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from sigint import default_sigint
from gguf import GGUFValueType as VT

import lfm2q
from lfm2q import chat
from lfm2q.chat import ChatTemplateError, render_chat
from lfm2q.cli import run_cli
from lfm2q.gguf_reader import GGUFReader

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
from gguf_mutate import load_seed, serialize  # noqa: E402

LFM2_TEMPLATE = (Path(__file__).parent / "data" / "lfm2_chat_template.jinja").read_text()
EXE = Path(sys.executable).with_name("lfm2q")
HI = [{"role": "user", "content": "hi"}]


def cli(capsys, *args) -> tuple[int, str, str]:
    code = run_cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def error_line(err: str) -> str:
    """The one error line after a progress bar (convert shows how far it got)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def gguf_path(tiny_gguf) -> Path:
    return tiny_gguf("f32")


@pytest.fixture(scope="module")
def model(gguf_path):
    return lfm2q.load(gguf_path, n_ctx=64)


def with_metadata(src: Path, dst: Path, key: str, vt: int, value) -> Path:
    seed = load_seed(src)
    doc = copy.deepcopy(seed.doc)
    for kv in doc.kvs:
        if kv[0] == key:
            kv[1:] = [vt, value, None]
            break
    else:
        doc.kvs.append([key, vt, value, None])
    dst.write_bytes(serialize(doc)[0])
    return dst


# --- chat templates ----------------------------------------------------------------------------

GROWING = {
    "doubling a string": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                         "{% endfor %}{{ ns.s }}",
    "string times a big number": "{{ 'a' * 10**10 }}",
    "list times a big number": "{{ ([1] * 10**9)|length }}",
    "squaring a number": "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
                         "{% endfor %}{{ ns.x > 0 }}",
    "center filter": "{{ 'a'|center(10**10) }}",
    "str.center": "{{ 'a'.center(10**10) }}",
    "% width": "{{ '%999999999999d' % 1 }}",
    "format width": "{{ '{:>99999999999}'.format(1) }}",
    "replace everywhere": "{% set s = 'a' * 5000000 %}{{ s.replace('', s) }}",
    "shared sub-lists printed": "{% set ns = namespace(l=['x' * 1000]) %}{% for i in range(40) %}"
                                "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
    "shared sub-lists to json": "{% set ns = namespace(l=['x' * 1000]) %}{% for i in range(40) %}"
                                "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l|tojson }}",
    "shared sub-lists joined with ~": "{% set ns = namespace(l=['x' * 1000]) %}{% for i in range(40) %}"
                                      "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l ~ '' }}",
    "batch filter": "{{ [1]|batch(10**10, 0)|list|length }}",
    "lipsum": "{{ lipsum(10**7) }}",
    "indent filter": "{{ ('a\n' * 1000)|indent(10**7) }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(10**8) }}",
    "big output": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
}


@pytest.mark.parametrize("name", list(GROWING))
def test_a_template_that_builds_something_huge_is_stopped(name):
    t = time.perf_counter()
    with pytest.raises(ChatTemplateError) as e:
        render_chat(GROWING[name], HI)
    assert time.perf_counter() - t < 3
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("chat template: ")
    assert ("would exceed 8,388,608 characters or items (TEMPLATE_SIZE_LIMIT)" in msg
            or "would make a number of more than 65536 bits" in msg)


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set a = range(100000)|list %}{% for x in a %}{% for y in a %}{{ '' }}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{{ range(100000)|list|sort|length }}{% endfor %}",
    "{% macro f(n) %}{% for i in range(100000) %}{{ i if n < 0 }}{% endfor %}{{ f(n) if n < 5 }}{% endmacro %}"
    "{% for j in range(100000) %}{{ f(0) }}{% endfor %}",
])
def test_a_template_that_loops_is_stopped_by_the_time_limit(monkeypatch, source):
    monkeypatch.setattr(chat, "TEMPLATE_TIME_LIMIT", 0.5)
    t = time.perf_counter()
    with pytest.raises(ChatTemplateError, match=r"^chat template: stopped after 0.5 s \(TEMPLATE_TIME_LIMIT\) — "
                                                r"the template loops too long"):
        render_chat(source, HI)
    assert time.perf_counter() - t < 2


def test_runaway_recursion_is_one_line():
    with pytest.raises(ChatTemplateError, match=r"^chat template failed on this conversation \(RecursionError: "
                                                r"maximum recursion depth exceeded"):
        render_chat("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", HI)


@pytest.mark.parametrize("source, words", [
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{{ raise_exception.__globals__['os'] }}", "unsafe"),
    ("{{ cycler.__init__.__globals__.os }}", "unsafe"),
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", "starts with an underscore"),
    ("{{ messages.append(1) }}", "access to attribute 'append' of 'list' object is unsafe"),
    ("{{ messages[0].update({'role': 'system'}) }}", "access to attribute 'update' of 'dict' object is unsafe"),
    ("{{ dict.__class__.__subclasses__() }}", "unsafe"),
])
def test_the_sandbox_stays_on(source, words):
    with pytest.raises(ChatTemplateError) as e:
        render_chat(source, HI)
    assert words in str(e.value) and str(e.value).startswith("chat template")


def test_real_templates_render_as_before_and_fast():
    messages = [{"role": "system", "content": "Be brief."}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "hello world " * 50} for i in range(300)]
    tools = [{"name": f"f{i}", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}
             for i in range(20)]
    t = time.perf_counter()
    out = render_chat(LFM2_TEMPLATE, messages, tools=tools)
    assert time.perf_counter() - t < 1.0
    unguarded = chat.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                   extensions=[chat._GenerationTag, "jinja2.ext.loopcontrols"])
    unguarded.filters["tojson"] = chat._tojson
    unguarded.globals.update(chat._ENV.globals)
    context = dict(messages=messages, tools=tools, add_generation_prompt=True, bos_token="<|startoftext|>",
                   eos_token="<|im_end|>")
    assert out == unguarded.from_string(LFM2_TEMPLATE).render(**context)


def test_a_model_file_with_a_hostile_template_fails_in_one_line(gguf_path, tmp_path, capsys):
    path = with_metadata(gguf_path, tmp_path / "evil.gguf", "tokenizer.chat_template", VT.STRING,
                         GROWING["doubling a string"])
    code, out, err = cli(capsys, "generate", path, "-p", "hi", "--chat", "-n", "2")
    assert code == 1 and out == ""
    assert "chat template: '+' would exceed 8,388,608 characters" in one_line(err)


def test_a_model_file_with_a_looping_template_stops_in_time(gguf_path, tmp_path, monkeypatch):
    monkeypatch.setattr(chat, "TEMPLATE_TIME_LIMIT", 0.5)
    path = with_metadata(gguf_path, tmp_path / "loop.gguf", "tokenizer.chat_template", VT.STRING,
                         "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="stopped after 0.5 s"):
        lfm2q.load(path, n_ctx=32).chat(HI, max_tokens=2)


# --- prompts and generation arguments ---------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(prompt=[]), "empty prompt: give at least one token"),
    (dict(prompt="hello world " * 40), "tokens but the context has room for 64 (n_ctx 64, 0 in use)"),
    (dict(prompt="hi", max_tokens=-1), "max_tokens=-1 is invalid; use an integer >= 0"),
    (dict(prompt="hi", max_tokens=1.5), "max_tokens=1.5 is invalid"),
    (dict(prompt="hi", temperature=-1), "sampling: temperature=-1 is invalid; use a number >= 0"),
    (dict(prompt="hi", temperature=float("nan")), "temperature=nan is invalid"),
    (dict(prompt="hi", temperature="hot"), "temperature='hot' is invalid"),
    (dict(prompt="hi", top_p=0), "top_p=0 is invalid; use a number in (0, 1]"),
    (dict(prompt="hi", top_p=1.5), "top_p=1.5 is invalid"),
    (dict(prompt="hi", top_k=-1), "top_k=-1 is invalid; use an integer >= 0"),
    (dict(prompt="hi", min_p=2), "min_p=2 is invalid; use a number in [0, 1]"),
    (dict(prompt="hi", repetition_penalty=0), "repetition_penalty=0 is invalid; use a number > 0"),
    (dict(prompt="hi", seed=-1), "seed=-1 is invalid"),
    (dict(prompt="hi", stop=[1]), "stop=[1] is invalid; use a list of strings"),
    (dict(prompt=[10**9]), "token id 1000000000 is outside the vocabulary (0..511)"),
    (dict(prompt=[-1]), "token id -1 is outside the vocabulary"),
])
def test_bad_generation_arguments_are_one_line_errors(model, kwargs, words):
    prompt = kwargs.pop("prompt")
    with pytest.raises(lfm2q.Lfm2qError) as e:
        model.generate(prompt, **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_defined_behaviour_at_the_edges(model):
    assert model.generate("hi", max_tokens=0) == ""               # nothing asked, nothing made
    assert model.tokenize("") == [1]                              # an empty text is just BOS...
    assert isinstance(model.generate("", max_tokens=2), str)       # ...which generation continues
    with pytest.raises(lfm2q.Lfm2qError, match="unknown sampling option 'temprature'"):
        model.chat(HI, max_tokens=2, temprature=0.5)
    with pytest.raises(lfm2q.Lfm2qError, match="messages must be a list of dicts"):
        model.chat("hello", max_tokens=2)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_threads=0), "n_threads must be a whole number ≥ 1, got 0"),
    (dict(n_threads=-2), "n_threads must be a whole number ≥ 1, got -2"),
    (dict(n_threads=10_000), "n_threads 10000 is more than the"),
    (dict(n_ctx=0), "n_ctx must be a whole number ≥ 1, got 0"),
    (dict(n_ctx=10**9), "n_ctx 1000000000 is larger than the 4096 tokens"),
])
def test_bad_load_arguments(gguf_path, kwargs, words):
    with pytest.raises(lfm2q.Lfm2qError) as e:
        lfm2q.load(gguf_path, **kwargs)
    assert words in str(e.value)


@pytest.mark.parametrize("args, code, words", [
    (["-p", ""], 1, "the prompt is empty"),
    (["-p", "hi", "-n", "0"], 1, "--max-tokens 0 is invalid; use a whole number ≥ 1"),
    (["-p", "hi", "-n", "-5"], 1, "--max-tokens -5 is invalid"),
    (["-p", "hello world " * 40, "-c", "16"], 1, "tokens but the context has room for 16"),
    (["-p", "hi", "--top-p", "0"], 1, "top_p=0.0 is invalid"),
    (["-p", "hi", "--min-p", "-1"], 1, "min_p=-1.0 is invalid"),
    (["-p", "hi", "--temperature", "warm"], 2, "Invalid value for '--temperature'"),
    (["-p", "hi", "--top-k", "many"], 2, "Invalid value for '--top-k'"),
    (["-p", "hi", "-t", "0"], 1, "n_threads must be a whole number ≥ 1, got 0"),
    (["-p", "hi", "-c", "0"], 1, "n_ctx must be a whole number ≥ 1, got 0"),
])
def test_bad_generate_command_lines(capsys, gguf_path, args, code, words):
    got, out, err = cli(capsys, "generate", gguf_path, *args)
    assert got == code and out == ""
    assert words in one_line(err)


def test_a_prompt_file_that_is_not_utf8(capsys, gguf_path, tmp_path):
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"\xff\xfe hello \xc3")
    got, _, err = cli(capsys, "perplexity", gguf_path, "-f", bad, "-c", "16")
    assert got == 1 and f"{bad}: not UTF-8 text" in one_line(err)


def _run(args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, env=env, timeout=300, **kw)


# (the next three were strict xfails — a TypeError traceback — fixed in cli.py / tokenizer.py)
def test_a_prompt_on_stdin_that_is_not_utf8(gguf_path):
    p = _run(["generate", gguf_path, "-n", "2", "-q"], input=b"\xff\xfe hello \xc3")
    assert p.returncode == 1
    assert one_line(p.stderr.decode()) == ("error: stdin is not UTF-8 text (invalid byte at offset 0) — "
                                           "pipe UTF-8 text or pass -p")


def test_a_prompt_argument_that_is_not_utf8(gguf_path):
    p = _run(["generate", gguf_path, "-n", "2", "-q", "-p", os.fsdecode(b"\xff\xfe hi")])
    assert p.returncode == 1
    assert one_line(p.stderr.decode()) == ("error: text is not UTF-8 (an undecodable character at position 0) "
                                           "— give UTF-8 text")


def test_tokenizing_text_with_lone_surrogates(model):
    with pytest.raises(lfm2q.Lfm2qError, match=r"^text is not UTF-8 \(an undecodable character at position 1\)"):
        model.tokenize("a\udcffb")


# --- damaged weights and vocabularies in GGUF files (found by the fuzzer) ----------------------

# (was a strict xfail: ZeroDivisionError from the kernels; fixed with numpy's error model)
def test_nan_weights_give_a_clear_error(gguf_path, tmp_path):
    path = tmp_path / "nan.gguf"
    shutil.copy(gguf_path, path)
    t = GGUFReader(path).tensors["blk.0.ffn_gate.weight"]
    with open(path, "r+b") as f:
        f.seek(t.offset)
        f.write(np.full(64, np.nan, np.float32).tobytes())
    model = lfm2q.load(path, n_ctx=16)
    assert np.isnan(model.logits([1, 2])).all()  # scoring gives NaN, as the arithmetic says
    with pytest.raises(lfm2q.Lfm2qError, match=r"^the model produced NaN or infinite logits — the file's "
                                                r"weights are damaged \(re-download or re-convert it\)"):
        model.generate("hi", max_tokens=2)


# (was a strict xfail: a bare Exception from tokenizers' BPE(); fixed in tokenizer.py)
def test_merges_outside_the_vocabulary_are_a_tokenizer_error(gguf_path, tmp_path):
    seed = load_seed(gguf_path)
    doc = copy.deepcopy(seed.doc)
    for kv in doc.kvs:
        if kv[0] == "tokenizer.ggml.merges":
            kv[2] = [m[::-1] for m in kv[2]]
    path = tmp_path / "merges.gguf"
    path.write_bytes(serialize(doc)[0])
    with pytest.raises(lfm2q.TokenizerError) as e:
        lfm2q.load(path, n_ctx=16)
    assert str(e.value).startswith(f"{path}: tokenizer.ggml.merges do not fit tokenizer.ggml.tokens (Error while "
                                   "initializing BPE: Token `")


def test_a_token_outside_the_byte_alphabet_is_refused(gguf_path, tmp_path):
    seed = load_seed(gguf_path)
    doc = copy.deepcopy(seed.doc)
    for kv in doc.kvs:
        if kv[0] == "tokenizer.ggml.tokens":
            kv[2][242] = "\0"  # a byte-level token no merge uses, type NORMAL
    path = tmp_path / "nul.gguf"
    path.write_bytes(serialize(doc)[0])
    with pytest.raises(lfm2q.Lfm2qError, match="tokenizer"):
        lfm2q.load(path, n_ctx=16).detokenize([242])


# --- the converter ------------------------------------------------------------------------------

def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def hf_copy(tiny_hf_dir, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_hf_dir, dst)
    return dst


def _rewrite_weights(folder: Path, change) -> None:
    from safetensors.numpy import load_file, save_file
    path = folder / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def _break(kind: str, folder: Path) -> None:
    st = folder / "model.safetensors"
    if kind == "missing safetensors":
        st.unlink()
    elif kind == "truncated safetensors":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    elif kind == "garbage safetensors":
        st.write_bytes(b"\xff" * 64)
    elif kind == "non-LFM2 config":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    elif kind == "config not JSON":
        (folder / "config.json").write_text("{model_type: lfm2")
    elif kind == "float64 weights":
        _rewrite_weights(folder, lambda t: t.update({"model.embed_tokens.weight": t["model.embed_tokens.weight"].astype(np.float64)}))
    elif kind == "int8 weights":
        _rewrite_weights(folder, lambda t: t.update({"model.embed_tokens.weight": t["model.embed_tokens.weight"].astype(np.int8)}))
    elif kind == "NaN weights":
        _rewrite_weights(folder, lambda t: t["model.layers.0.feed_forward.w1.weight"].__setitem__((3, 5), np.nan))
    elif kind == "Inf weights":
        _rewrite_weights(folder, lambda t: t["model.layers.2.self_attn.q_proj.weight"].__setitem__((0, 0), -np.inf))


CONVERT_CASES = {
    "missing safetensors": "no model.safetensors",
    "truncated safetensors": "not a valid safetensors file",
    "garbage safetensors": "not a valid safetensors file",
    "non-LFM2 config": "model_type 'llama' is not LFM2",
    "config not JSON": "config.json: not valid JSON",
    "float64 weights": "has dtype F64; supported: F32, F16, BF16",
    "int8 weights": "has dtype I8; supported: F32, F16, BF16",
    "NaN weights": "'model.layers.0.feed_forward.w1.weight' contains NaN or Inf",
    "Inf weights": "'model.layers.2.self_attn.q_proj.weight' contains NaN or Inf",
}


@pytest.mark.parametrize("kind", list(CONVERT_CASES))
def test_bad_checkpoints_are_one_line_and_leave_nothing(capsys, hf_copy, tmp_path, kind):
    _break(kind, hf_copy)
    before = _digest(hf_copy)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = cli(capsys, "convert", hf_copy, "-o", out_dir / "m.gguf", "-t", "q8_0")
    assert code == 1 and CONVERT_CASES[kind] in error_line(err)
    assert list(out_dir.iterdir()) == [] and _digest(hf_copy) == before


def test_output_in_a_missing_folder(capsys, tiny_hf_dir, tmp_path):
    before = _digest(tiny_hf_dir)
    code, _, err = cli(capsys, "convert", tiny_hf_dir, "-o", tmp_path / "no" / "such" / "m.gguf")
    assert code == 1 and "no/such: output folder does not exist — create it first" in one_line(err)
    assert not (tmp_path / "no").exists() and _digest(tiny_hf_dir) == before


def test_a_full_disk_patched_writer(capsys, tiny_hf_dir, tmp_path, monkeypatch):
    calls = []

    def full(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, *args, **kwargs)

    original = gguf.GGUFWriter.write_tensor_data
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    code, _, err = cli(capsys, "convert", tiny_hf_dir, "-o", tmp_path / "m.gguf", "-t", "f32")
    assert code == 1
    assert "m.gguf: cannot write it (No space left on device) — check the folder and free disk space" in error_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root / CAP_SYS_ADMIN; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_real_tmpfs(capsys, tiny_hf_dir, small_tmpfs):
    before = _digest(tiny_hf_dir)
    code, _, err = cli(capsys, "convert", tiny_hf_dir, "-o", small_tmpfs / "m.gguf", "-t", "f32")  # ~1 MB
    # a short write on tmpfs surfaces as "(8192 requested and 3744 written)" rather than ENOSPC
    assert code == 1 and "m.gguf: cannot write it (" in error_line(err)
    assert error_line(err).endswith("— check the folder and free disk space")
    assert list(small_tmpfs.iterdir()) == [] and _digest(tiny_hf_dir) == before


# (was a strict xfail: tempfile.mkstemp made converted files 0600; fixed in convert/writer.py)
def test_converted_files_follow_the_umask(tiny_gguf):
    umask = os.umask(0o022)
    os.umask(umask)
    assert tiny_gguf("f32").stat().st_mode & 0o777 == 0o666 & ~umask


# --- memory cap ---------------------------------------------------------------------------------

BENCH = Path.home() / ".cache" / "lfm2q-bench"
MEMORY_LIMIT = 512 * 1024 ** 2
_MEASURE = """
import json, os, sys, time
import numpy as np
import lfm2q
path = sys.argv[1]
m = lfm2q.load(path, n_ctx=128)
s = m.session()
logits = s.eval([1, 20, 30, 40])
for _ in range(64):  # decode 64 tokens whatever they are (a random model may pick an end token)
    logits = s.eval([int(np.argmax(logits))])
status = {}
for line in open("/proc/self/status"):
    key, _, value = line.partition(":")
    if key in ("VmPeak", "VmHWM", "RssAnon", "RssFile"):
        status[key] = int(value.split()[0]) * 1024
print(json.dumps({**status, "file": os.path.getsize(path), "n_past": s.n_past}))
"""


def _q4_k_m_350m() -> Path:
    out = BENCH / "lfm2-350m-random-q4_k_m.gguf"
    if not out.is_file():
        hf = BENCH / "lfm2-350m-random"
        if not (hf / "config.json").is_file():
            pytest.skip("run benchmarks/bench_350m.py first: it builds the LFM2-350M-shaped checkpoint")
        from lfm2q.convert import convert_hf
        convert_hf(hf, out, "q4_k_m")
    return out


def _limited(cmd: list[str]) -> tuple[list[str], str]:
    """Run `cmd` under a 512 MiB memory limit: cgroup v2 memory.max when there is one, else
    prlimit. RLIMIT_AS would count the mapped file and numba's ~0.5 GB of reserved address
    space, so prlimit sets RLIMIT_DATA: private writable memory, what an anonymous cap counts."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").is_file() and os.access(root, os.W_OK):
        group = root / f"lfm2q-test-{os.getpid()}"
        group.mkdir()
        (group / "memory.max").write_text(str(MEMORY_LIMIT))
        (group / "memory.swap.max").write_text("0")
        wrapped = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *cmd]
        return wrapped, f"cgroup v2 memory.max ({group})"
    return ["prlimit", f"--data={MEMORY_LIMIT}", *cmd], "prlimit --data (RLIMIT_DATA)"


@pytest.mark.slow
def test_350m_q4_k_m_decodes_under_512_mib():
    path = _q4_k_m_350m()
    cmd, how = _limited([sys.executable, "-c", _MEASURE, str(path)])
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    finally:
        if cmd[0] == "sh":
            Path(cmd[2].split(" > ")[1].split("/cgroup.procs")[0]).rmdir()
    assert p.returncode == 0, f"{how}: {p.stderr[-2000:]}"
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["n_past"] == 4 + 64
    mib = {k: round(v / 1024 ** 2) for k, v in r.items() if k != "n_past"}
    print(f"\nunder {how}: anonymous RSS {mib['RssAnon']} MiB, file-backed RSS {mib['RssFile']} MiB, "
          f"file {mib['file']} MiB, peak RSS {mib['VmHWM']} MiB, address space {mib['VmPeak']} MiB")
    assert r["RssAnon"] < MEMORY_LIMIT


# --- Ctrl-C -------------------------------------------------------------------------------------

_INTERRUPT_PREFILL = """
import os, signal, sys
import lfm2q.model as model
prefill = model.Forward.prefill
def interrupted(self, ids, all_logits):
    if len(ids) > 1:  # the prompt: Ctrl-C arrives while it is being evaluated
        os.kill(os.getpid(), signal.SIGINT)
    return prefill(self, ids, all_logits)
model.Forward.prefill = interrupted
from lfm2q.cli import main
sys.argv = ["lfm2q", *sys.argv[1:]]
main()
"""


def test_ctrl_c_during_prefill_exits_130_without_traceback(gguf_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-c", _INTERRUPT_PREFILL, "generate", str(gguf_path), "-p",
                        "a long prompt " * 50, "-n", "5"], capture_output=True, text=True, env=env, timeout=300,
                       preexec_fn=default_sigint)
    assert p.returncode == 130, p.stderr
    assert p.stdout == "" and "Traceback" not in p.stderr and p.stderr.strip() == ""


def _endless(src: Path, dst: Path) -> Path:
    """A copy that never picks an end token greedily: their tied embedding rows are zeroed."""
    shutil.copy(src, dst)
    t = GGUFReader(dst).tensors["token_embd.weight"]
    row = t.nbytes // t.shape[0]
    with open(dst, "r+b") as f:
        for tid in (2, 7):  # <|endoftext|>, <|im_end|>
            f.seek(t.offset + tid * row)
            f.write(b"\0" * row)
    return dst


def test_ctrl_c_during_decode_exits_130_without_traceback(gguf_path, tmp_path):
    path = _endless(gguf_path, tmp_path / "endless.gguf")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([str(EXE), "generate", str(path), "-p", "go", "-n", "100000"], preexec_fn=default_sigint,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    try:
        assert p.stdout.read(1)  # decoding
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and b"Traceback" not in err and err.strip() == b""
