"""The `lfm2q` command line. It only wires arguments to the Python API and renders results.

Every user-caused error (an `Lfm2qError`, a bad flag) becomes one line on stderr and a non-zero
exit code, never a traceback: 1 for bad input, 2 for bad usage, 130 for Ctrl-C.

Sampling defaults: `run` uses the LFM2 model card's chat settings (temperature 0.3, min_p 0.15,
repetition penalty 1.05); `generate` is for scripts and defaults to greedy decoding (temperature
0, every filter off) so the same input gives the same output — pass the card's values to get
its behaviour.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from .errors import Lfm2qError, read_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run LFM2 / LFM2.5 GGUF models on the CPU, and convert HF checkpoints to GGUF.",
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print a one-line error and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _user_errors():
    """Lfm2qError -> one line and status 1; Ctrl-C -> status 130, no traceback."""
    try:
        yield
    except Lfm2qError as e:
        raise fail(str(e))
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise typer.Exit(130)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1)


# --- shared options ------------------------------------------------------------------------

MODEL_ARG = typer.Argument(None, help="LFM2 .gguf file, or a Hub repo: OWNER/REPO[:QUANT] or hf://OWNER/REPO/FILE.gguf "
                           "(default: the built-in model, if installed).", show_default=False)
REVISION_OPT = typer.Option(None, "--revision", help="Hub branch, tag or commit (for Hub model names).",
                            show_default=False)
CTX_OPT = typer.Option(4096, "--ctx", "-c", help="Context size in tokens.")
THREADS_OPT = typer.Option(None, "--threads", "-t", help="CPU threads (default: all).", show_default=False)
TOOLS_OPT = typer.Option(None, "--tools", help="JSON file with tool definitions (a list of JSON schemas).",
                         show_default=False)
SEED_OPT = typer.Option(None, "--seed", help="Random seed (default: random).", show_default=False)
KV_OPT = typer.Option("f16", "--kv-cache", help="KV cache type: f16 (as llama.cpp's), f32 (twice the memory) "
                      "or q8_0 (0.56x f16's memory; faster at long contexts).")


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _first_run_note() -> None:
    """Say why the first run after installing or upgrading takes a minute (else it looks hung);
    to a person at a terminal, not to scripts reading stderr."""
    from .numba_cache import is_cold

    if _stderr_is_terminal() and is_cold():
        typer.echo("lfm2q: first run of this version here: compiling its kernels for this CPU "
                   "(about a minute, once; later runs start in about a second)", err=True)


def _waiting():
    """A status line on stderr (to a person at a terminal only) while kernels compile, until the
    first output: see progress.Waiting."""
    from rich.console import Console

    from .progress import Waiting

    return Waiting(Console(stderr=True), enabled=_stderr_is_terminal())


def _model_path(model: Optional[str], revision: Optional[str] = None) -> Path:
    if model is not None:  # a file, or a Hub name (downloaded, or found in the cache)
        from .hub import resolve_model

        return resolve_model(model, revision, announce=lambda line: typer.echo(f"lfm2q: {line}", err=True))
    if revision is not None:
        raise Lfm2qError("--revision needs a Hub model name (OWNER/REPO[:QUANT])")
    import lfm2q

    finder = getattr(lfm2q, "builtin_model_path", None)
    path = finder() if finder is not None else None
    if path is None or not Path(path).is_file():
        raise Lfm2qError("no model given and no built-in model installed: pass the path of an LFM2 .gguf file")
    return Path(path)


def _read_tools(path: Optional[Path]) -> Optional[list]:
    if path is None:
        return None
    data = read_json(path, unreadable="cannot read the tools file", invalid="the tools file is not valid JSON")
    if isinstance(data, dict):
        data = data.get("tools", [data])
    if not isinstance(data, list) or not data or not all(isinstance(t, (dict, str)) for t in data):
        raise Lfm2qError(f"{path}: the tools file must hold a non-empty JSON list of tool definitions")
    return data


def _sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed):
    from .sampling import SamplingParams

    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repetition_penalty=repeat_penalty, seed=seed)


def _max_tokens(n: Optional[int]) -> Optional[int]:
    if n is not None and n < 1:
        raise Lfm2qError(f"--max-tokens {n} is invalid; use a whole number ≥ 1")
    return n


# --- convert -------------------------------------------------------------------------------

TYPE_HELP = ("Weight types: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_k_s, q4_0 "
             "(mixes choose per tensor as llama-quantize does).")


@app.command()
def convert(
    hf_dir: str = typer.Argument(..., help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer "
                                 "files), or a Hub repo (OWNER/REPO: only the files convert reads are fetched)."),
    output: Path = typer.Option(..., "-o", "--output", help="GGUF file to write."),
    out_type: str = typer.Option("f16", "--type", "-t", help=TYPE_HELP),
    revision: Optional[str] = REVISION_OPT,
) -> None:
    """Convert an HF LFM2 checkpoint to a GGUF file that lfm2q and llama.cpp load."""
    from .convert import convert_hf
    from .hub import download_checkpoint, is_hub_name

    try:
        source = download_checkpoint(hf_dir, revision) if is_hub_name(hf_dir) else Path(hf_dir)
        convert_hf(source, output, out_type, progress=True)
    except Lfm2qError as e:
        raise fail(str(e))


@app.command()
def quantize(
    source: Path = typer.Argument(..., help="An F32, F16 or BF16 LFM2 GGUF file."),
    output: Path = typer.Argument(..., help="GGUF file to write."),
    out_type: str = typer.Option("q4_k_m", "--type", "-t", help=TYPE_HELP),
) -> None:
    """Re-quantize an F32/F16/BF16 LFM2 GGUF file to another type mix, as llama-quantize does."""
    from .convert.requantize import quantize_gguf

    try:
        quantize_gguf(source, output, out_type, progress=True)
    except Lfm2qError as e:
        raise fail(str(e))


# --- run -----------------------------------------------------------------------------------

@app.command()
def run(
    model: Optional[str] = MODEL_ARG,
    revision: Optional[str] = REVISION_OPT,
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt.", show_default=False),
    temperature: float = typer.Option(0.3, "--temperature", help="Sampling temperature (0 = greedy)."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    min_p: float = typer.Option(0.15, "--min-p", help="Drop tokens below min_p × the top probability (0 = off)."),
    repeat_penalty: float = typer.Option(1.05, "--repeat-penalty", help="Repetition penalty (1 = off)."),
    seed: Optional[int] = SEED_OPT,
    ctx: int = CTX_OPT,
    threads: Optional[int] = THREADS_OPT,
    kv_cache: str = KV_OPT,
    tools: Optional[Path] = TOOLS_OPT,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "-n",
                                             help="Longest reply in tokens (default: until the reply ends).",
                                             show_default=False),
) -> None:
    """Chat with a model in the terminal (streamed replies, /help for commands)."""
    from . import repl
    from .conversation import Conversation

    with _user_errors():
        sampling = _sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        tool_list = _read_tools(tools)
        _max_tokens(max_tokens)
        path = _model_path(model, revision)
        _first_run_note()
        m = repl.load_model(path, ctx, threads, kv_cache)
        conv = Conversation(m, system=system, tools=tool_list, sampling=sampling, max_tokens=max_tokens)
        code = repl.run(conv)
    raise typer.Exit(code)


# --- generate ------------------------------------------------------------------------------

@app.command()
def generate(
    model: Optional[str] = MODEL_ARG,
    revision: Optional[str] = REVISION_OPT,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt text (default: read stdin).",
                                         show_default=False),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template as a user message."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt (implies --chat).",
                                         show_default=False),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print one JSON object: text, tokens, tokens_per_s, finish_reason, tool_calls."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", help="Sampling temperature (0 = greedy, the default)."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens below min_p × the top probability (0 = off)."),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", help="Repetition penalty (1 = off)."),
    seed: Optional[int] = SEED_OPT,
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop at this text (repeatable).",
                                             show_default=False),
    tools: Optional[Path] = typer.Option(None, "--tools", help="JSON file with tool definitions (implies --chat).",
                                         show_default=False),
    ctx: int = CTX_OPT,
    threads: Optional[int] = THREADS_OPT,
    kv_cache: str = KV_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No stats line on stderr."),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="JSON schema file: the output is "
                                               "JSON valid under it.", show_default=False),
    regex: Optional[str] = typer.Option(None, "--regex", help="The output matches this regular expression.",
                                        show_default=False),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="Lark grammar file (.gbnf: llama.cpp GBNF): "
                                           "the output follows it.", show_default=False),
) -> None:
    """Generate text for a prompt: the text to stdout, logs to stderr (greedy by default)."""
    from .api import load
    from .conversation import Done, Reply, chat_stream
    from .generate import generate_stream
    from .progress import CompileSplit, rate

    with _user_errors(), _waiting() as waiting:
        sampling = _sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        _max_tokens(max_tokens)
        tool_list = _read_tools(tools)
        if prompt is None:
            if sys.stdin.isatty():
                raise Lfm2qError("no prompt: pass -p TEXT or pipe the prompt on stdin")
            try:
                raw = getattr(sys.stdin, "buffer", None)  # a text-only stdin (tests, IDEs) has none
                prompt = raw.read().decode("utf-8") if raw is not None else sys.stdin.read()
            except UnicodeDecodeError as e:
                raise Lfm2qError(f"stdin is not UTF-8 text (invalid byte at offset {e.start}) — "
                                 "pipe UTF-8 text or pass -p") from None
        if not prompt:
            raise Lfm2qError("the prompt is empty")
        shape = _read_shape(json_schema, regex, grammar)
        path = _model_path(model, revision)
        _first_run_note()
        m = load(path, n_ctx=ctx, n_threads=threads, kv_cache=kv_cache)
        constraint = shape(m) if shape else None
        chat = chat or system is not None or tool_list is not None
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            steps = chat_stream(m, messages, tool_list, sampling=sampling, max_tokens=max_tokens, stop=stop,
                                constraint=constraint)
        else:
            steps = generate_stream(m.session(), m.tokenizer, m.tokenize(prompt), max_tokens=max_tokens,
                                    sampling=sampling, stop=stop, constraint=constraint)
        out = sys.stdout
        result = reply = None
        timing = CompileSplit()
        for step in steps:
            if timing.first_token():
                waiting.end()  # no live line while text streams
            if step.text and not as_json:
                out.write(step.text)
                out.flush()
            if step.result is not None:
                result = step.result
                reply = step.reply if isinstance(step, Done) else None
        if reply is None:  # plain completion: the text as generated, no tool-call parsing
            reply = Reply(text=result.text, tool_calls=[], result=result, raw=result.text)
        compiled = timing.done()
        if as_json:
            out.write(json.dumps({
                "text": reply.text,
                "tokens": result.n_generated,
                "prompt_tokens": result.n_prompt,
                "tokens_per_s": round(result.tokens_per_s, 3),
                "prompt_tokens_per_s": round(result.prompt_tokens_per_s, 3),
                "finish_reason": result.finish_reason,
                "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
            }, ensure_ascii=False) + "\n")
        else:
            out.write("\n")
        out.flush()
    if not quiet:  # evaluation speeds; the first run's compile time is shown apart
        tps = rate(result.n_generated, result.decode_seconds, compiled.decode_s)
        pps = rate(result.n_prompt, result.prompt_seconds, compiled.prompt_s)
        note = f" · {compiled.note()}" if compiled.note() else ""
        typer.echo(f"{result.n_generated} tokens · {tps:.1f} tok/s · prompt {result.n_prompt} "
                   f"tokens at {pps:.0f} tok/s · finish: {result.finish_reason}{note}", err=True)


def _read_shape(json_schema: Optional[Path], regex: Optional[str], grammar: Optional[Path]):
    """The structured-output flags read and checked before the model loads: a function of the
    model that compiles them (constrain.py), or None."""
    from . import constrain

    given = [f for f, v in (("--json-schema", json_schema), ("--regex", regex), ("--grammar", grammar)) if v is not None]
    if len(given) > 1:
        raise Lfm2qError(f"{' and '.join(given)}: give at most one")
    if json_schema is not None:
        schema = read_json(json_schema, unreadable="cannot read the JSON schema",
                           invalid="the JSON schema is not valid JSON")
        return lambda m: constrain.json_schema(schema, m.tokenizer, what=str(json_schema))
    if regex is not None:
        return lambda m: constrain.regex(regex, m.tokenizer, what=f"--regex {regex!r}")
    if grammar is not None:
        try:
            text = grammar.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise Lfm2qError(f"{grammar}: cannot read the grammar ({getattr(e, 'strerror', None) or e})") from None
        syntax = "gbnf" if grammar.suffix.lower() == ".gbnf" else "lark"
        return lambda m: constrain.grammar(text, m.tokenizer, syntax, what=str(grammar))
    return None


# --- info ----------------------------------------------------------------------------------

def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


@app.command()
def info(
    model: Optional[str] = MODEL_ARG,
    revision: Optional[str] = REVISION_OPT,
    tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor: name, type, shape, size."),
) -> None:
    """Show a GGUF file's architecture, sizes, layer pattern, tensor types and chat template."""
    import math
    from collections import Counter

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .gguf_model import GGUFFile
    from .kernels import type_name

    with _user_errors():
        f = GGUFFile(_model_path(model, revision))
    c = f.config
    ts = list(f.reader.tensors.values())
    n_params = sum(math.prod(t.shape) for t in ts)
    # a token runs K of E experts: the expert tensors count K/E towards the active parameters
    n_active = sum(math.prod(t.shape) * (c.n_expert_used / c.n_expert if t.name.endswith("_exps.weight") else 1)
                   for t in ts) if c.n_expert else n_params
    pattern = "".join("A" if c.is_attention(i) else "C" for i in range(c.n_layer))
    types = Counter(type_name(t.qtype) for t in ts)
    tokens = f.get("tokenizer.ggml.tokens") or []
    template = f.get("tokenizer.chat_template")
    kvh = sorted({k for k in c.n_head_kv if k})
    rows = [
        ("file", f"{f.path} ({_size(f.reader.size)})"),
        ("name", str(f.get("general.name", "—"))),
        ("architecture", f"{f.get('general.architecture')} · {_count(n_params)} parameters"),
        ("embedding", f"{c.n_embd} · {c.n_head} heads × {c.head_dim} · KV heads {', '.join(map(str, kvh)) or '—'}"),
        ("feed-forward", str(c.n_ff) if not c.n_expert else
         f"{c.n_ff} (the {c.n_dense_lead} leading dense layers)"),
        *([("experts", f"{c.n_expert} per layer in layers {c.n_dense_lead}-{c.n_layer - 1}, "
                       f"{c.n_expert_used} used per token · width {c.n_ff_exp} · "
                       f"{_count(n_active)} parameters active per token")] if c.n_expert else []),
        ("layers", f"{c.n_layer}: {pattern.count('C')} short-conv (kernel {c.conv_l}), "
                   f"{pattern.count('A')} attention at {', '.join(map(str, c.attention_layers)) or '—'}"),
        ("layer pattern", f"{pattern}  (C conv, A attention)"),
        ("vocabulary", f"{c.n_vocab} ({len(tokens)} tokenizer entries)"),
        ("context", f"{c.n_ctx_train} tokens trained · rope base {c.rope_base:g}"
                    + (f" · sliding window {c.sliding_window}" if c.sliding_window else "")),
        ("tensor types", ", ".join(f"{k} ×{v}" for k, v in sorted(types.items(), key=lambda kv: -kv[1]))),
        ("chat template", ("yes" if template else "no (ChatML fallback)")
         + (" · tool calls (vocabulary has <|tool_call_start|>)" if "<|tool_call_start|>" in tokens else "")),
        *_kernel_rows({t.qtype for t in ts if len(t.shape) == 2}),
        *_tuned_rows(f),
    ]
    console = Console(highlight=False)
    for k, v in rows:
        console.print(Text(f"{k:<14}", style="bold") + Text(v), soft_wrap=True)
    if tensors:
        table = Table(show_edge=False, box=None, pad_edge=False)
        for col, justify in (("tensor", "left"), ("type", "left"), ("shape", "right"), ("size", "right")):
            table.add_column(col, justify=justify)
        for t in ts:
            table.add_row(t.name, type_name(t.qtype), " × ".join(map(str, t.shape)), _size(t.nbytes))
        console.print()
        console.print(table)


def _kernel_rows(qtypes: set) -> list[tuple[str, str]]:
    """What this CPU compiles for and the decode kernel of each weight type (info's last rows)."""
    from .cpu import machine
    from .kernels import type_name
    from .kernels.dispatch import kernel_name
    from .kernels.isa import describe

    d = describe()
    shown = [f for f in d["features"] if f in ("avx2", "fma", "f16c", "avx512f", "avx512vnni", "avxvnni",
                                                   "neon", "dotprod", "i8mm", "fullfp16", "sve")]
    rows = [("cpu", f"{machine()} · {d['arch']} · LLVM {d['cpu']} · {' '.join(shown) or 'baseline'}")]
    for q in sorted(qtypes, key=type_name):
        rows.append((f"kernel {type_name(q)}", kernel_name(q)))
    return rows


def _tuned_rows(f) -> list[tuple[str, str]]:
    """The kernel forms earlier loads picked on this CPU for this file's matrices (tuning.py)."""
    import numba

    from .kernels import type_name
    from .tuning import stored_picks

    shapes = dict.fromkeys((t.qtype, *t.shape) for t in f.reader.tensors.values() if len(t.shape) == 2)
    return [("tuned", f"{type_name(q)} {rows}x{cols}: "
             + " · ".join(f"{op} {pick}" for op, pick in sorted(picks.items())))
            for (q, rows, cols), picks in stored_picks(shapes, numba.get_num_threads()).items()]


# --- bench ---------------------------------------------------------------------------------

def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise Lfm2qError(f"{flag} {text!r}: use whole numbers separated by commas") from None
    if not values or any(v < 0 for v in values):
        raise Lfm2qError(f"{flag} {text!r}: use whole numbers ≥ 0 separated by commas")
    return values


@app.command()
def bench(
    model: Optional[str] = MODEL_ARG,
    revision: Optional[str] = REVISION_OPT,
    n_prompt: str = typer.Option("512", "--n-prompt", "-p", help="Prompt lengths to time (comma-separated; 0 skips)."),
    n_gen: str = typer.Option("128", "--n-gen", "-n", help="Tokens to generate (comma-separated; 0 skips)."),
    threads: Optional[str] = typer.Option(None, "--threads", "-t", help="Thread counts (comma-separated; default: all).",
                                          show_default=False),
    reps: int = typer.Option(3, "--repetitions", "-r", help="Runs per test (mean ± std reported)."),
    kv_cache: str = KV_OPT,
) -> None:
    """Time prompt processing (pp) and generation (tg) in tokens/s, as a table like llama-bench's."""
    import numba
    import numpy as np

    from .api import load, set_threads

    with _user_errors():
        pp, tg = _int_list(n_prompt, "-p"), _int_list(n_gen, "-n")
        ths = _int_list(threads, "-t") if threads else [numba.config.NUMBA_NUM_THREADS]
        if reps < 1:
            raise Lfm2qError(f"-r {reps}: use at least 1 repetition")
        path = _model_path(model, revision)
        n_ctx = max(max(pp), max(tg) + 1, 2)
        _first_run_note()
        with _waiting():
            m = load(path, n_ctx=n_ctx, kv_cache=kv_cache)
        rng = np.random.default_rng(0)
        V = m.config.n_vocab
        session = m.session()
        bos = m.tokenizer.bos_id if m.tokenizer.bos_id is not None else 0

        def time_pp(n: int) -> float:
            ids = rng.integers(0, V, n)
            session.reset()
            t = time.perf_counter()
            session.eval(ids)
            return n / (time.perf_counter() - t)

        def time_tg(n: int) -> float:
            session.reset()
            ids = rng.integers(0, V, n)
            t = time.perf_counter()
            session.eval([bos])
            for i in range(n - 1):
                session.eval([int(ids[i])])
            return n / (time.perf_counter() - t)

        n_params = sum(int(np.prod(t.shape)) for t in m.file.reader.tensors.values())
        types = sorted({k for k in m.file.tensor_types().values()})
        header = ["model", "size", "params", "type", "threads", "test", "t/s"]
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("-" * (len(h) + 2) for h in header) + "|")
        for th in ths:
            set_threads(th)
            tests = [("pp", n, time_pp) for n in pp if n] + [("tg", n, time_tg) for n in tg if n]
            for kind, n, fn in tests:
                with _waiting():
                    fn(min(n, 8))  # warm-up: numba compiles or loads its cache on the first call
                speeds = np.array([fn(n) for _ in range(reps)])
                row = [path.name, _size(m.file.reader.size), _count(n_params), "/".join(types), str(th),
                       f"{kind}{n}", f"{speeds.mean():.2f} ± {speeds.std():.2f}"]
                print("| " + " | ".join(row) + " |", flush=True)


# --- perplexity ----------------------------------------------------------------------------

@app.command()
def perplexity(
    model: Optional[str] = MODEL_ARG,
    revision: Optional[str] = REVISION_OPT,
    file: Path = typer.Option(..., "--file", "-f", help="Text file to score."),
    ctx: int = typer.Option(512, "--ctx", "-c", help="Window size in tokens; the second half of each is scored."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Tokens between window starts (default: --ctx, "
                                         "as llama-perplexity; --ctx/2 scores every token after the first half-window).",
                                         show_default=False),
    threads: Optional[int] = THREADS_OPT,
    kv_cache: str = KV_OPT,
) -> None:
    """Perplexity of a text with sliding windows, like llama-perplexity (PPL ± its standard error)."""
    from .api import load
    from .perplexity import perplexity as compute

    with _user_errors(), _waiting() as waiting:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as e:
            raise Lfm2qError(f"{file}: cannot read ({e.strerror})") from None
        except UnicodeDecodeError:
            raise Lfm2qError(f"{file}: not UTF-8 text") from None
        path = _model_path(model, revision)
        _first_run_note()
        m = load(path, n_ctx=ctx, n_threads=threads, kv_cache=kv_cache)

        def show(i: int, n: int, ppl: float) -> None:
            waiting.end()
            typer.echo(f"[{i + 1}/{n}] {ppl:.4f}", err=True)

        r = compute(m, text, n_ctx=ctx, stride=stride, on_window=show)
    typer.echo(f"{r.n_tokens} tokens, {r.n_windows} windows of {ctx}, {r.n_scored} scored")
    typer.echo(f"Final estimate: PPL = {r.ppl:.4f} +/- {r.ppl_stderr:.5f}")


# --- tune ----------------------------------------------------------------------------------

@app.command()
def tune(
    model: Optional[str] = MODEL_ARG,
    revision: Optional[str] = REVISION_OPT,
    threads: Optional[int] = THREADS_OPT,
) -> None:
    """Measure again which form of each kernel is faster on this CPU for this model's matrices
    (done once at a model's first load), store the picks and print them."""
    import numba
    from rich.console import Console
    from rich.table import Table

    from .api import load
    from .kernels.isa import describe

    with _user_errors(), _waiting():
        path = _model_path(model, revision)
        _first_run_note()
        m = load(path, n_ctx=256, n_threads=threads)
        t = m.weights._tune(retune=True)
    d = describe()
    console = Console(highlight=False)
    console.print(f"{d['kernels']} · LLVM {d['cpu']} · {numba.get_num_threads()} threads")
    rows = t.table()
    if not rows:
        console.print("nothing to choose: on this CPU no matrix of this model has two kernel forms worth timing")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    for col, justify in (("matrix", "left"), ("op", "left"), ("groups µs", "right"), ("rows µs", "right"),
                         ("pick", "left")):
        table.add_column(col, justify=justify)
    for shape, op, g, r, pick in sorted(rows):
        table.add_row(shape.replace("|", " "), op, f"{g * 1e6:.1f}", f"{r * 1e6:.1f}", pick)
    console.print(table)
    console.print("groups: 512-bit row pairs / quads; rows: row by row (AVX2). Both give the same numbers.")


# --- serve, list, rm -----------------------------------------------------------------------

@app.command()
def serve(
    model: Optional[str] = MODEL_ARG,
    revision: Optional[str] = REVISION_OPT,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LFM2Q_API_KEY", show_default=False,
                                          help="Require 'Authorization: Bearer KEY' on /v1 (or set LFM2Q_API_KEY)."),
    ctx: int = CTX_OPT,
    threads: Optional[int] = THREADS_OPT,
    kv_cache: str = KV_OPT,
) -> None:
    """Serve a model over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /health)."""
    import socket

    from .api import load
    from .server import require_extra, serve as run_server

    with _user_errors():
        require_extra()
        try:  # a busy port is a one-line error, before the model loads
            with socket.create_server((host, port)):
                pass
        except OSError as e:
            raise Lfm2qError(f"cannot listen on {host}:{port} ({e.strerror}) — pick another --port") from None
        path = _model_path(model, revision)
        _first_run_note()
        m = load(path, n_ctx=ctx, n_threads=threads, kv_cache=kv_cache)
        run_server(m, name=model or path.stem, host=host, port=port, api_key=api_key)


@app.command("list")
def list_models() -> None:
    """List the GGUF models in the Hugging Face cache: repo, file, size, type."""
    from rich.console import Console
    from rich.table import Table

    from .hub import cached_models

    with _user_errors():
        found = cached_models()
    if not found:
        typer.echo("no GGUF models in the Hugging Face cache (fetch one: lfm2q run OWNER/REPO)")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    for col, justify in (("repo", "left"), ("file", "left"), ("size", "right"), ("type", "left"),
                         ("revision", "left")):
        table.add_column(col, justify=justify)
    for f in found:
        table.add_row(f.repo, f.filename, _size(f.size), f.qtype, ", ".join(f.revisions))
    Console(highlight=False, width=200).print(table)


@app.command("rm")
def remove(
    model: str = typer.Argument(..., help="OWNER/REPO (every file of it), OWNER/REPO:QUANT or hf://OWNER/REPO/FILE.gguf."),
) -> None:
    """Remove a model from the Hugging Face cache."""
    from .hub import remove as remove_cached

    with _user_errors():
        gone, freed = remove_cached(model)
    typer.echo(f"removed {', '.join(gone)} ({_size(freed)} freed)")


# --- entry point ---------------------------------------------------------------------------

def _click_errors(name: str) -> tuple:
    """The click exception class `name`, from typer's vendored click and/or click itself."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def run_cli(argv: Optional[list[str]] = None) -> int:
    """Run the app on `argv`; returns the exit status. Usage errors become one line too."""
    try:
        rv = app(args=argv, prog_name="lfm2q", standalone_mode=False)
    except _click_errors("NoArgsIsHelpError") as e:
        help_text = e.format_message()  # rich help is printed while the error is built
        if help_text.strip():
            typer.echo(help_text)
        return 0
    except _click_errors("UsageError") as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
        return 2
    except _click_errors("ClickException") as e:
        typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        return e.exit_code
    except _click_errors("Abort") + (KeyboardInterrupt,):
        typer.echo("", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def main() -> None:
    sys.exit(run_cli())


if __name__ == "__main__":
    main()
