"""The `lfm2q` commands: help texts, one-line errors and exit codes, generate (--json, --chat,
stdin) against the API, info, bench, perplexity."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sigint import default_sigint

import lfm2q
from lfm2q.cli import run_cli
from lfm2q.gguf_reader import GGUFReader
from lfm2q.kernels import F32

COMMANDS = {
    "convert": "Convert an HF LFM2 checkpoint",
    "run": "Chat with a model in the terminal",
    "generate": "Generate text for a prompt",
    "info": "architecture, sizes, layer pattern",
    "bench": "Time prompt processing",
    "perplexity": "Perplexity of a text",
}
END_IDS = (2, 7)  # <|endoftext|>, <|im_end|> in the fixture vocabulary


def make_endless(src: Path, dst: Path) -> Path:
    """A copy of an F32 tiny model that never picks an end token under greedy decoding: their
    (tied) embedding rows are zero, so their logits are 0 while the largest logit is positive."""
    shutil.copy(src, dst)
    t = GGUFReader(dst).tensors["token_embd.weight"]
    assert t.qtype == F32
    row = t.nbytes // t.shape[0]
    with open(dst, "r+b") as f:
        for tid in END_IDS:
            f.seek(t.offset + tid * row)
            f.write(b"\0" * row)
    return dst


@pytest.fixture(scope="module")
def gguf(tiny_gguf) -> Path:
    return tiny_gguf("f32")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = run_cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_says_what_each_command_does(capsys, command):
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0
    assert COMMANDS[command] in " ".join(out.replace("│", " ").split())


def test_top_level_help_lists_commands(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and all(c in out for c in COMMANDS)


@pytest.mark.parametrize("args, code, words", [
    (["run", "--bogus"], 2, "No such option: --bogus"),
    (["generate", "x.gguf", "--temperature", "warm"], 2, "--temperature"),
    (["bench", "x.gguf", "-p", "1,two"], 1, "whole numbers"),
    (["generate", "/no/such/model.gguf", "-p", "hi"], 1, "no such file"),
    (["info", "/no/such/model.gguf"], 1, "no such file"),
    (["perplexity", "/no/such/model.gguf", "-f", "/no/such/text.txt"], 1, "cannot read"),
])
def test_bad_input_is_one_line(capsys, args, code, words):
    got, _, err = cli(capsys, *args)
    assert got == code
    assert words in one_line_error(err)


def test_bad_values_and_files_are_one_line(capsys, gguf, tmp_path):
    got, _, err = cli(capsys, "generate", gguf, "-p", "hi", "--top-p", "0")
    assert got == 1 and "top_p" in one_line_error(err)
    bad = tmp_path / "tools.json"
    bad.write_text("{not json")
    got, _, err = cli(capsys, "generate", gguf, "-p", "hi", "--tools", bad)
    assert got == 1 and "not valid JSON" in one_line_error(err)
    got, _, err = cli(capsys, "run", gguf, "--tools", tmp_path / "none.json")
    assert got == 1 and "cannot read" in one_line_error(err)


def test_run_without_model_and_without_builtin(capsys, monkeypatch):
    monkeypatch.setattr(lfm2q, "builtin_model_path", lambda: None, raising=False)
    got, _, err = cli(capsys, "run")
    assert got == 1 and "pass the path of an LFM2 .gguf file" in one_line_error(err)


def test_generate_json_equals_model_generate(capsys, gguf):
    code, out, err = cli(capsys, "generate", gguf, "-p", "The weather", "--json", "-n", "12",
                         "--temperature", "0.9", "--top-k", "40", "--seed", "7")
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"text", "tokens", "tokens_per_s", "finish_reason", "tool_calls"}
    model = lfm2q.load(gguf)
    expected = model.generate("The weather", max_tokens=12, temperature=0.9, top_k=40, seed=7)
    assert data["text"] == expected
    assert data["tokens"] == 12 and data["finish_reason"] == "length" and data["tool_calls"] == []
    assert "tok/s" in err  # the stats line goes to stderr


def test_kv_cache_option_reaches_the_model(capsys, gguf, hd64_gguf):
    # f32, f16 and q8_0 caches through --kv-cache equal the API's; a cache type that does not
    # exist, or q8_0 on heads that do not split into 32-element blocks, is a one-line error.
    for path, kind in ((gguf, "f32"), (gguf, "f16"), (hd64_gguf, "q8_0")):
        code, out, _ = cli(capsys, "generate", path, "-p", "The weather", "--json", "-n", "8",
                           "--kv-cache", kind)
        assert code == 0
        assert json.loads(out)["text"] == lfm2q.load(path, kv_cache=kind).generate("The weather", max_tokens=8)
    code, _, err = cli(capsys, "generate", gguf, "-p", "hi", "--kv-cache", "q8")
    assert code == 1 and "kv_cache 'q8' is not a cache type — use one of f16, f32, q8_0" in one_line_error(err)
    code, _, err = cli(capsys, "generate", gguf, "-p", "hi", "--kv-cache", "q8_0")
    assert code == 1 and "head size is 16 — use 'f16'" in one_line_error(err)


def test_generate_streams_text_and_reads_stdin(capsys, gguf, monkeypatch):
    model = lfm2q.load(gguf)
    expected = model.generate("Once upon", max_tokens=8)  # greedy: the command's default
    code, out, _ = cli(capsys, "generate", gguf, "-p", "Once upon", "-n", "8", "-q")
    assert code == 0 and out == expected + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon"))
    code, out, err = cli(capsys, "generate", gguf, "-n", "8", "-q")
    assert code == 0 and out == expected + "\n" and err == ""


def test_generate_chat_uses_the_template(capsys, gguf):
    code, out, _ = cli(capsys, "generate", gguf, "-p", "hi", "--chat", "-s", "Be brief.", "--json", "-n", "6")
    assert code == 0
    model = lfm2q.load(gguf)
    reply = model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                       max_tokens=6, temperature=0.0, min_p=0.0, repetition_penalty=1.0)
    assert json.loads(out)["text"] == reply.text


def test_info(capsys, gguf):
    code, out, _ = cli(capsys, "info", gguf)
    assert code == 0
    assert "CCACCA" in out and "F32 ×" in out and "4096" in out and "chat template yes" in " ".join(out.split())
    assert "token_embd.weight" not in out
    code, out, _ = cli(capsys, "info", gguf, "--tensors")
    assert code == 0 and "blk.2.attn_q.weight" in out and "512 × 64" in out


def test_bench_table(capsys, gguf):
    code, out, _ = cli(capsys, "bench", gguf, "-p", "16", "-n", "4", "-r", "1", "-t", "1")
    assert code == 0
    rows = [l for l in out.splitlines() if l.startswith("| ")]
    assert rows[0].split("|")[1:-1] == [" model ", " size ", " params ", " type ", " threads ", " test ", " t/s "]
    assert "pp16" in rows[1] and "tg4" in rows[2] and "±" in rows[2]


def test_perplexity_command_matches_api(capsys, gguf, tmp_path):
    from lfm2q.perplexity import perplexity

    text = "The quick brown fox jumps over the lazy dog. Hello world, a small model. " * 6
    path = tmp_path / "text.txt"
    path.write_text(text)
    code, out, err = cli(capsys, "perplexity", gguf, "-f", path, "-c", "32")
    assert code == 0 and "[1/" in err
    r = perplexity(lfm2q.load(gguf, n_ctx=32), text, n_ctx=32)
    assert f"Final estimate: PPL = {r.ppl:.4f} +/- {r.ppl_stderr:.5f}" in out


def test_real_process_errors_and_ctrl_c(gguf, tmp_path):
    """Through the installed entry point: a missing file and Ctrl-C, with no traceback."""
    exe = Path(sys.executable).with_name("lfm2q")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([exe, "info", tmp_path / "missing.gguf"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and p.stdout == ""
    one_line_error(p.stderr)

    endless = make_endless(gguf, tmp_path / "endless.gguf")
    p = subprocess.Popen([exe, "generate", endless, "-p", "go", "-n", "100000"], preexec_fn=default_sigint,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    try:
        assert p.stdout.read(1)  # generating
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and b"Traceback" not in err


def test_a_cold_kernel_cache_is_detected(tmp_path, monkeypatch):
    import numba

    from lfm2q.numba_cache import is_cold
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "cache"))
    assert is_cold()                                         # no folder yet
    (tmp_path / "cache" / "lfm2q_x").mkdir(parents=True)
    assert is_cold()                                         # a folder, no index
    (tmp_path / "cache" / "lfm2q_x" / "blocks.ffn_decode-342.py311.nbi").write_bytes(b"")
    assert not is_cold()


@pytest.mark.parametrize("cold, terminal", [(True, True), (False, True), (True, False)])
def test_the_first_run_says_why_it_takes_a_minute(capsys, gguf, monkeypatch, cold, terminal):
    # To a person at a terminal, on stderr (stdout stays the generated text); never to a script.
    from lfm2q import cli as cli_module, numba_cache
    monkeypatch.setattr(numba_cache, "is_cold", lambda: cold)
    monkeypatch.setattr(cli_module, "_stderr_is_terminal", lambda: terminal)
    code, out, err = cli(capsys, "generate", gguf, "-p", "hello", "-n", "2", "-q")
    assert code == 0 and "compiling" not in out
    assert ("first run of this version here: compiling its kernels" in err) == (cold and terminal)
