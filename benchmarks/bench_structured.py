"""Decode speed under a JSON-schema constraint against none, on the LFM2-350M shape.

Uses the random-weight LFM2-350M-shape checkpoint of bench_350m.py (built once, cached under
~/.cache/lfm2q-bench) with the real 65,536-token LFM2 tokenizer, converted to Q8_0. Prints:
- decode tokens/s with no constraint, with a JSON schema (mask on the main thread), and with
  the mask computed on a worker thread during the forward pass (constrain.OVERLAP), and the
  ratios: the three generations advance in lockstep, a step of each in turn, `--rounds` times
  `--gen` steps, and tokens/s is 1 / the median step time (robust to other work on the CPU);
- the time to build llguidance's view of the vocabulary (once per model), to compile a typical
  schema, and the mask's time per step (median, 99th percentile, max) over the main-thread runs.

A random-weight model writes garbage, so the constrained runs spend most steps inside strings,
where the most tokens are allowed: the mask's most expensive case.

    .venv/bin/python benchmarks/bench_structured.py [--threads 2] [--gen 64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_350m import CACHE, build_checkpoint  # noqa: E402

# A typical extraction schema: nested object, array with bounds, enum, bounded numbers, a pattern.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "pattern": "^[a-z0-9.]+@[a-z0-9.]+\\.[a-z]{2,}$"},
        "address": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5},
        "status": {"enum": ["active", "inactive", "banned"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["name", "age", "address", "tags", "status"],
    "additionalProperties": False,
}
PROMPT = ("<|startoftext|><|im_start|>user\nExtract the person as JSON: Ada Lovelace, 36, ada@example.com, "
          "lives in London, tags math and poetry.<|im_end|>\n<|im_start|>assistant\n")


class TimedGuide:
    """Wraps a Guide to time each mask computation."""

    def __init__(self, guide, times: list) -> None:
        self._g, self._times = guide, times

    def allowed(self):
        from lfm2q import constrain

        t = time.perf_counter()
        out = self._g.allowed()
        if not constrain.OVERLAP:  # with the worker, this would time the wait, not the mask
            self._times.append(time.perf_counter() - t)
        return out

    def __getattr__(self, name):
        return getattr(self._g, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import lfm2q
    from lfm2q import constrain
    from lfm2q.convert import convert_hf
    from lfm2q.generate import generate_stream, generate_text
    from lfm2q.sampling import SamplingParams

    hf_dir = CACHE / "lfm2-350m-random"
    CACHE.mkdir(parents=True, exist_ok=True)
    build_checkpoint(hf_dir)
    path = CACHE / f"lfm2-350m-random-{args.type}.gguf"
    if not path.exists():
        convert_hf(hf_dir, path, args.type, progress=True)
    model = lfm2q.load(path, n_ctx=1024, n_threads=args.threads)
    ids = model.tokenize(PROMPT, add_bos=False)

    t = time.perf_counter()
    constrain.ll_tokenizer(model.tokenizer)
    view_s = time.perf_counter() - t
    compile_ms = []
    for _ in range(5):
        t = time.perf_counter()
        c = constrain.json_schema(SCHEMA, model.tokenizer)
        compile_ms.append((time.perf_counter() - t) * 1e3)

    mask_times: list[float] = []
    real_guide = constrain.Constraint.guide

    def timed_guide(self, *a, **k):
        return TimedGuide(real_guide(self, *a, **k), mask_times)

    constrain.Constraint.guide = timed_guide
    sampling = SamplingParams(temperature=1.0, seed=0)  # sampled: the output wanders the structure
    modes = ("none", "json", "overlap")

    def start(mode: str):
        steps = generate_stream(model.session(), model.tokenizer, ids, max_tokens=args.gen + 1,
                                sampling=sampling, stop_ids=set(), constraint=None if mode == "none" else c)
        constrain.OVERLAP = mode == "overlap"
        next(steps)  # the prompt and the first token: not a decode step
        return steps

    generate_text(model.session(), model.tokenizer, ids, max_tokens=4)  # warm-up: kernels load
    # The three generations advance in lockstep, one step each in turn, and each step is timed:
    # on a machine shared with other work, the medians of interleaved steps compare fairly.
    step_s: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        gens = {m: start(m) for m in modes}
        while gens:
            for m in list(gens):
                constrain.OVERLAP = m == "overlap"
                t = time.perf_counter()
                step = next(gens[m])
                dt = time.perf_counter() - t
                if step.result is not None:  # the end: a grammar finished or max_tokens
                    del gens[m]
                else:
                    step_s[m].append(dt)
    med = {m: 1.0 / statistics.median(v) for m, v in step_s.items()}
    mt = np.array(mask_times) * 1e3

    print(f"\nLFM2-350M shape ({args.type}, vocabulary {model.config.n_vocab}), {args.threads} threads, "
          f"prompt {len(ids)} tokens, {args.rounds} x {args.gen} decode steps each, interleaved (median step)")
    print(f"{'constraint':<34}{'decode tok/s':>14}{'ratio':>8}")
    print(f"{'none':<34}{med['none']:>14.2f}{1.0:>7.2f}x")
    print(f"{'JSON schema (mask on main thread)':<34}{med['json']:>14.2f}{med['json'] / med['none']:>7.2f}x")
    print(f"{'JSON schema (mask on a worker)':<34}{med['overlap']:>14.2f}{med['overlap'] / med['none']:>7.2f}x")
    print(f"llguidance vocabulary view: {view_s:.2f} s once per model; schema compile: "
          f"{statistics.median(compile_ms):.1f} ms (median of 5)")
    print(f"mask per step: median {np.median(mt):.3f} ms, p99 {np.percentile(mt, 99):.3f} ms, "
          f"max {mt.max():.3f} ms over {len(mt)} steps")


if __name__ == "__main__":
    main()
