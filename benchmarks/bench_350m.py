"""Speed of lfm2q against transformers on the exact LFM2-350M shape, in one run.

Builds (once, cached under ~/.cache/lfm2q-bench) a random-weight checkpoint with the exact
LFM2-350M shape (354,483,968 parameters) and the real LFM2 tokenizer, converts it with lfm2q
to Q8_0, then measures prefill (128-token prompt) and decode (64 tokens) for lfm2q on that
file and for transformers on the same weights, in bf16 (the issue's baseline) and float32
(the faster one on a CPU without native bf16, such as an AVX2-only machine). Prints tokens/s
and the ratios.

build_checkpoint() also builds the LFM2-1.2B shape (1,170,340,608 parameters, for
bench_compare.py); this script itself measures the 350M one.

    .venv/bin/python benchmarks/bench_350m.py [--threads 2] [--type q8_0] [--skip-hf]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("LFM2Q_BENCH_CACHE", Path.home() / ".cache" / "lfm2q-bench"))
TOKENIZER_FILES = ROOT / "tests" / "data" / "lfm2-tokenizer"
N_PARAMS_350M = 354_483_968
N_PARAMS_1_2B = 1_170_340_608


def _lfm2_config(hidden: int, heads: int, intermediate: int):
    """An LFM2 config as the released checkpoints have it: 16 layers, attention at 2, 5, 8, 10,
    12, 14 (the rest short convolutions), 8 KV heads, feed-forward width auto-adjusted from
    `intermediate` (2/3 of it, rounded up to a multiple of 256), tied embeddings."""
    from transformers import Lfm2Config
    return Lfm2Config(
        vocab_size=65536, hidden_size=hidden, num_hidden_layers=16, num_attention_heads=heads,
        num_key_value_heads=8, intermediate_size=intermediate, block_auto_adjust_ff_dim=True,
        block_ffn_dim_multiplier=1.0, block_multiple_of=256, conv_L_cache=3, norm_eps=1e-5,
        max_position_embeddings=128000, tie_word_embeddings=True,
        layer_types=["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
        bos_token_id=1, eos_token_id=7, pad_token_id=0,
    )


def lfm2_350m_config():
    """LFM2-350M: hidden 1024, 16 heads, feed-forward 4608 (6656 auto-adjusted)."""
    return _lfm2_config(hidden=1024, heads=16, intermediate=6656)


def lfm2_1_2b_config():
    """LFM2-1.2B: hidden 2048, 32 heads, feed-forward 8192 (12288 auto-adjusted)."""
    return _lfm2_config(hidden=2048, heads=32, intermediate=12288)


# shape name -> (config builder, exact parameter count, cached checkpoint folder name)
SHAPES = {
    "350m": (lfm2_350m_config, N_PARAMS_350M, "lfm2-350m-random"),
    "1.2b": (lfm2_1_2b_config, N_PARAMS_1_2B, "lfm2-1.2b-random"),
}


def build_checkpoint(hf_dir: Path, shape: str = "350m") -> None:
    """Write (once) a random-weight bf16 checkpoint of `shape` ("350m" or "1.2b") to hf_dir."""
    import torch
    from transformers import Lfm2ForCausalLM
    if (hf_dir / "config.json").exists():
        return
    make_config, n_params, _ = SHAPES[shape]
    print(f"building random LFM2-{shape.upper()} checkpoint in {hf_dir} …", file=sys.stderr)
    torch.manual_seed(0)
    model = Lfm2ForCausalLM(make_config()).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    assert n == n_params, n
    tmp = hf_dir.parent / (hf_dir.name + ".tmp")  # not with_suffix: "lfm2-1.2b-random"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_FILES / name, tmp / name)
    tmp.rename(hf_dir)


def prompt_ids(n: int, vocab: int = 64000) -> list[int]:
    rng = np.random.default_rng(0)
    return [1] + rng.integers(14, vocab, n - 1).tolist()


def bench_lfm2q(path: Path, threads: int, n_prompt: int, n_gen: int) -> tuple[float, float]:
    import lfm2q
    t0 = time.perf_counter()
    model = lfm2q.load(path, n_ctx=1024, n_threads=threads)
    ids = prompt_ids(n_prompt)
    # Warm-up: compiles (or loads from numba's cache) every kernel on both paths: prompts of up
    # to 20 tokens (model.SHORT_PROMPT) go through decode, so a 32-token one loads prefill's.
    s = model.session()
    s.eval(ids[:8])
    s.eval(ids[8:40])
    s.eval([5])
    print(f"lfm2q load + warm-up: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    s.reset()
    t = time.perf_counter()
    logits = s.eval(ids)
    prefill = n_prompt / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n_gen):
        logits = s.eval([int(np.argmax(logits))])
    decode = n_gen / (time.perf_counter() - t)
    return prefill, decode


def bench_transformers(hf_dir: Path, threads: int, n_prompt: int, n_gen: int,
                       dtype: str) -> tuple[float, float]:
    import torch
    from transformers import Lfm2ForCausalLM
    torch.set_num_threads(threads)
    model = Lfm2ForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype)).eval()
    ids = torch.tensor([prompt_ids(n_prompt)])
    with torch.inference_mode():
        model(ids[:, :8])  # warm-up
        t = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill = n_prompt / (time.perf_counter() - t)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(n_gen):
            out = model(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        decode = n_gen / (time.perf_counter() - t)
    return prefill, decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--skip-hf", action="store_true", help="skip the transformers baseline")
    args = ap.parse_args()

    from lfm2q.convert import convert_hf
    hf_dir = CACHE / "lfm2-350m-random"
    CACHE.mkdir(parents=True, exist_ok=True)
    build_checkpoint(hf_dir)
    gguf_path = CACHE / f"lfm2-350m-random-{args.type}.gguf"
    if not gguf_path.exists():
        convert_hf(hf_dir, gguf_path, args.type, progress=True)

    rows = [("lfm2q " + args.type, *bench_lfm2q(gguf_path, args.threads, args.prompt, args.gen))]
    if not args.skip_hf:
        for dtype in ("bfloat16", "float32"):
            rows.append((f"transformers {dtype}",
                         *bench_transformers(hf_dir, args.threads, args.prompt, args.gen, dtype)))
    print(f"\nLFM2-350M shape, {args.threads} threads, prompt {args.prompt}, decode {args.gen} tokens")
    print(f"{'engine':<24}{'prefill tok/s':>15}{'decode tok/s':>15}")
    for name, p, d in rows:
        print(f"{name:<24}{p:>15.1f}{d:>15.1f}")
    for name, p, d in rows[1:]:
        label = "lfm2q / " + name.split()[-1]
        print(f"{label:<24}{rows[0][1] / p:>14.2f}x{rows[0][2] / d:>14.2f}x")


if __name__ == "__main__":
    main()
