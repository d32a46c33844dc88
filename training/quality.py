"""What each GGUF type costs lfm2q-tiny: held-out perplexity per file type.

Builds the held-out text from the test split (text records as they are, dialogues rendered
with the model's chat template), converts the trained checkpoint with lfm2q to each type, and
scores every file with `lfm2q.perplexity` (llama-perplexity's method: back-to-back windows, BOS
first, second half of each window scored). transformers scores the HF checkpoint on the very
same windows; llama.cpp scores the same GGUF files when llama-cpp-python is installed.

    .venv/bin/python training/quality.py [--ckpt training/out/lfm2q-tiny] [--ctx 256]

Writes training/out/quality.json and prints a markdown table for the README.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
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
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1)  # spins otherwise on a busy machine

    def logits(w):
        llm.reset()
        llm.eval(w.tolist())
        return np.array(llm.scores[:len(w)])
    return ppl_from_logits((logits(w), w) for w in wins)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=ROOT / "training/out/lfm2q-tiny")
    ap.add_argument("--data", type=Path, default=ROOT / "training/out/data/test.jsonl")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--llamacpp", action="store_true",
                    help="also score each file with llama.cpp (llama-cpp-python; slow through its Python API)")
    ap.add_argument("--tokens", type=int, default=64_000, help="score the first N tokens of the held-out text")
    ap.add_argument("--out", type=Path, default=ROOT / "training/out/quality")
    args = ap.parse_args()

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
        rows.append({"type": t, "bytes": path.stat().st_size, "lfm2q": r.ppl, "lfm2q_stderr": r.ppl_stderr,
                     "llama.cpp": llamacpp_ppl(path, wins, args.ctx) if args.llamacpp else None})
        print(f"{t}: {r.ppl:.4f}", file=sys.stderr)
    hf = transformers_ppl(args.ckpt, wins)
    result = {"ctx": args.ctx, "n_windows": len(wins), "transformers_f32": hf, "rows": rows}
    (args.out.parent / "quality.json").write_text(json.dumps(result, indent=2))

    print(f"| file | size | lfm2q PPL | llama.cpp PPL | Δ vs transformers f32 ({hf:.3f}) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        lc = "—" if r["llama.cpp"] is None else f"{r['llama.cpp']:.3f}"
        print(f"| {r['type'].upper()} | {r['bytes'] / 2**20:.2f} MiB | {r['lfm2q']:.3f} ± {r['lfm2q_stderr']:.3f} "
              f"| {lc} | {100 * (r['lfm2q'] / hf - 1):+.2f}% |")


if __name__ == "__main__":
    main()
