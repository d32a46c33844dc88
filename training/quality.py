"""What each GGUF type costs lfm2q-tiny: held-out perplexity per file type.

Builds the held-out text from the test split (text records as they are, dialogues rendered
with the model's chat template), converts the trained checkpoint with lfm2q to each type, and
scores every file with `lfm2q.perplexity` (llama-perplexity's method: back-to-back windows, BOS
first, second half of each window scored). transformers scores the HF checkpoint on the very
same windows; llama.cpp scores the same GGUF files when llama-cpp-python is installed.

    .venv/bin/python training/quality.py [--ckpt training/out/lfm2q-tiny] [--ctx 256] [--llamacpp]
    .venv/bin/python training/quality.py --only-llamacpp   # redo the llama.cpp column alone

Writes training/out/quality.json and prints a markdown table for docs/benchmarks.md §7.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TYPES = ["f32", "f16", "q8_0", "q6_k", "q4_k_m", "q4_0"]


def heldout_text(test_jsonl: Path, template: str) -> str:
    from lfm2q.chat import render_chat
    parts = []
    for line in test_jsonl.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "text" in rec:
            parts.append(rec["text"])
        else:  # the template writes BOS itself; inside a running text it is dropped
            parts.append(render_chat(template, rec["messages"], add_generation_prompt=False)
                         .removeprefix("<|startoftext|>"))
    return "\n".join(parts)


def windows(ids: list[int], n_ctx: int, bos: int) -> list[np.ndarray]:
    out = []
    for w in range((len(ids) - n_ctx) // n_ctx + 1):
        win = np.array(ids[w * n_ctx:(w + 1) * n_ctx], np.int64)
        win[0] = bos
        out.append(win)
    return out


def ppl_from_logits(window_logits) -> float:
    """window_logits: iterable of (logits f[n_ctx, V], window ids) -> PPL over second halves."""
    from lfm2q.perplexity import token_nll
    nll, n = 0.0, 0
    for logits, win in window_logits:
        first = win.shape[0] // 2
        x = token_nll(np.asarray(logits[first:-1], np.float64), win[first + 1:])
        nll += float(x.sum())
        n += x.shape[0]
    return math.exp(nll / n)


def transformers_ppl(ckpt: Path, wins) -> float:
    import torch
    from transformers import Lfm2ForCausalLM
    model = Lfm2ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        return ppl_from_logits((model(torch.tensor([w])).logits[0].numpy(), w) for w in wins)


def llamacpp_ppl(path: Path, wins, n_ctx: int) -> float | None:
    """PPL of the GGUF file at `path` under llama.cpp on `wins`, scored as `ppl_from_logits` does.

    Low-level llama-cpp-python: one model and one context per file (n_ctx = n_batch = n_ubatch =
    the window, one thread: it spins otherwise on a busy machine); per window the memory is
    cleared and the whole window decoded in one batch (positions 0..n_ctx-1, sequence 0). Logits
    are requested only for the scored positions n_ctx//2 .. n_ctx-2 — the same rows
    `ppl_from_logits` takes, each predicting the next token of the window — and read as a numpy
    view of llama_get_logits. None when llama-cpp-python is not installed.
    """
    try:
        import llama_cpp as lc
        from llama_cpp._logger import set_verbose
    except ImportError:
        return None
    from lfm2q.perplexity import token_nll
    set_verbose(False)  # importing llama_cpp routes llama.cpp's log through its logger: errors only
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    ctx = batch = None
    try:
        cp = lc.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = 1
        cp.no_perf = True
        ctx = lc.llama_init_from_model(model, cp)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a {n_ctx}-token context for {path}")
        n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
        mem = lc.llama_get_memory(ctx)
        first = n_ctx // 2
        n_out = n_ctx - 1 - first                       # scored rows: positions first .. n_ctx-2
        batch = lc.llama_batch_init(n_ctx, 0, 1)
        batch.n_tokens = n_ctx
        for i in range(n_ctx):
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = first <= i < n_ctx - 1
        tokens = np.ctypeslib.as_array(batch.token, shape=(n_ctx,))  # the batch's int32 token array
        nll, n = 0.0, 0
        for win in wins:
            if win.shape[0] != n_ctx:
                raise ValueError(f"window of {win.shape[0]} tokens, context {n_ctx}")
            lc.llama_memory_clear(mem, True)
            tokens[:] = win
            rc = lc.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}) on {path}")
            logits = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(n_out, n_vocab))  # [n_out, V] view
            x = token_nll(logits.astype(np.float64), win[first + 1:])
            nll += float(x.sum())
            n += x.shape[0]
        return math.exp(nll / n)
    finally:
        if batch is not None:
            lc.llama_batch_free(batch)
        if ctx:
            lc.llama_free(ctx)
        lc.llama_model_free(model)


def print_table(result: dict) -> None:
    hf = result["transformers_f32"]
    print(f"| file | size | lfm2q PPL | llama.cpp PPL | lfm2q `exact=True` | Δ lfm2q vs transformers f32 ({hf:.3f}) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        lc = "—" if r["llama.cpp"] is None else f"{r['llama.cpp']:.3f}"
        ex = f"{r['lfm2q_exact']:.3f}" if r.get("lfm2q_exact") is not None else "—"
        print(f"| {r['type'].upper()} | {r['bytes'] / 2**20:.2f} MiB | {r['lfm2q']:.3f} ± {r['lfm2q_stderr']:.3f} "
              f"| {lc} | {ex} | {100 * (r['lfm2q'] / hf - 1):+.2f}% |")


def rescore_llamacpp(out: Path) -> None:
    """Re-score only the llama.cpp column of `out`/../quality.json with the files already in `out`,
    on the windows of the saved held-out text; the lfm2q and transformers figures are kept."""
    import lfm2q
    qpath = out.parent / "quality.json"
    result = json.loads(qpath.read_text())
    n_ctx = result["ctx"]
    files = {r["type"]: out / f"lfm2q-tiny-{r['type']}.gguf" for r in result["rows"]}
    present = [t for t, f in files.items() if f.exists()]
    if not present:
        sys.exit(f"no GGUF files of {qpath} in {out}")
    text = (out / "heldout.txt").read_bytes().decode("utf-8")  # bytes: no newline translation
    model = lfm2q.load(files[present[0]], n_ctx=n_ctx)      # the tokenizer, as main() tokenized it
    wins = windows(model.tokenize(text), n_ctx, model.tokenizer.bos_id)
    if len(wins) != result["n_windows"]:
        sys.exit(f"{out / 'heldout.txt'} gives {len(wins)} windows of {n_ctx}, {qpath} has {result['n_windows']}")
    for r in result["rows"]:
        if r["type"] not in present:
            print(f"{r['type']}: {files[r['type']]} missing, llama.cpp figure kept", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        r["llama.cpp"] = llamacpp_ppl(files[r["type"]], wins, n_ctx)
        if r["llama.cpp"] is None:
            sys.exit("llama-cpp-python is not installed")
        print(f"{r['type']}: llama.cpp {r['llama.cpp']:.4f} (lfm2q {r['lfm2q']:.4f}) "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    qpath.write_text(json.dumps(result, indent=2))
    print_table(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=ROOT / "training/out/lfm2q-tiny")
    ap.add_argument("--data", type=Path, default=ROOT / "training/out/data/test.jsonl")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--llamacpp", action="store_true",
                    help="also score each file with llama.cpp (llama-cpp-python)")
    ap.add_argument("--only-llamacpp", action="store_true",
                    help="re-score only the llama.cpp column for the files already in --out and merge it into "
                         "quality.json (windows from the saved heldout.txt; lfm2q and transformers are not rerun)")
    ap.add_argument("--tokens", type=int, default=64_000, help="score the first N tokens of the held-out text")
    ap.add_argument("--out", type=Path, default=ROOT / "training/out/quality")
    args = ap.parse_args()
    if args.only_llamacpp:
        rescore_llamacpp(args.out)
        return

    import lfm2q
    from lfm2q.convert import convert_hf
    from lfm2q.perplexity import perplexity

    template = (args.ckpt / "chat_template.jinja").read_text() if (args.ckpt / "chat_template.jinja").exists() \
        else json.loads((args.ckpt / "tokenizer_config.json").read_text())["chat_template"]
    text = heldout_text(args.data, template)
    args.out.mkdir(parents=True, exist_ok=True)

    rows, wins = [], None
    for t in TYPES:
        path = args.out / f"lfm2q-tiny-{t}.gguf"
        if not path.exists():
            convert_hf(args.ckpt, path, t)
        model = lfm2q.load(path, n_ctx=args.ctx)
        if wins is None:
            ids = model.tokenize(text)[:args.tokens]
            text = model.detokenize(ids[1:])  # the scored text: whole records' worth of the first N tokens
            (args.out / "heldout.txt").write_text(text, encoding="utf-8")
            ids = model.tokenize(text)
            wins = windows(ids, args.ctx, model.tokenizer.bos_id)
            print(f"held-out text: {len(text):,} chars, {len(ids):,} tokens, {len(wins)} windows of {args.ctx}",
                  file=sys.stderr)
        r = perplexity(model, text, n_ctx=args.ctx)
        # exact=True: f32 activations; the default rounds them to 8 bits as llama.cpp does
        r_exact = perplexity(lfm2q.load(path, n_ctx=args.ctx, exact=True), text, n_ctx=args.ctx)
        rows.append({"type": t, "bytes": path.stat().st_size, "lfm2q": r.ppl, "lfm2q_stderr": r.ppl_stderr,
                     "lfm2q_exact": r_exact.ppl,
                     "llama.cpp": llamacpp_ppl(path, wins, args.ctx) if args.llamacpp else None})
        print(f"{t}: {r.ppl:.4f}", file=sys.stderr)
    hf = transformers_ppl(args.ckpt, wins)
    result = {"ctx": args.ctx, "n_windows": len(wins), "transformers_f32": hf, "rows": rows}
    (args.out.parent / "quality.json").write_text(json.dumps(result, indent=2))

    print_table(result)


if __name__ == "__main__":
    main()
