"""LFM2-8B-A1B-shaped decode and prefill against LFM2-1.2B-shaped dense on this machine, with RSS.

Builds two Q4_K_M files with random quantized weights straight as GGUF (benchmarks/synth_gguf.py:
an 8.3B-parameter fp32 checkpoint does not fit in memory, and speed does not depend on the
values): the LFM2-8B-A1B shape (~5 GB; 32 experts, 4 per token, 1.5B parameters active) and the
LFM2-1.2B shape (~0.7 GB). Each model then runs in a process of its own: a 128-token prompt
(prefill tok/s), 128 greedy decoded tokens (decode tok/s), and the process's RSS after them
(VmRSS) and at its peak (VmHWM), against the file's size. With llama-cpp-python importable, the
same for llama.cpp on the same files (mmap on, 2 threads).

    .venv/bin/python benchmarks/bench_moe.py [--threads 2] [--dir DIR] [--keep] [--resident N]

The 8B file is deleted at the end unless --keep (the 1.2B one is kept in --dir).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_gguf import SHAPES, build, n_params  # noqa: E402

CACHE = Path(os.environ.get("LFM2Q_BENCH_CACHE", Path.home() / ".cache" / "lfm2q-bench"))
N_PROMPT, N_DECODE = 128, 128

_STATUS = """
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
"""

LFM2Q_RUN = _STATUS + textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import lfm2q
    path, threads, resident = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    m = lfm2q.load(path, n_ctx=1024, n_threads=threads, experts_resident=resident)
    ids = [1] + np.random.default_rng(0).integers(500, 60000, %(n_prompt)d - 1).tolist()
    s = m.session()
    s.eval(ids[:40]); s.eval([5]); s.reset()          # kernels loaded (numba cache)
    t = time.perf_counter(); logits = s.eval(ids); prefill = time.perf_counter() - t
    tok = int(np.argmax(logits))
    t = time.perf_counter()
    for _ in range(%(n_decode)d):
        tok = int(np.argmax(s.eval([tok])))
    decode = time.perf_counter() - t
    print(json.dumps({"prefill_tps": len(ids) / prefill, "decode_tps": %(n_decode)d / decode,
                      "rss": status("VmRSS"), "peak": status("VmHWM")}))
""") % {"n_prompt": N_PROMPT, "n_decode": N_DECODE}

LLAMA_RUN = _STATUS + textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from llama_cpp import Llama
    path, threads = sys.argv[1], int(sys.argv[2])
    m = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512,
              use_mmap=True, verbose=False)
    ids = [1] + np.random.default_rng(0).integers(500, 60000, %(n_prompt)d - 1).tolist()
    m.eval(ids[:40]); m.reset()
    t = time.perf_counter(); m.eval(ids); prefill = time.perf_counter() - t
    tok = int(np.argmax(m.scores[m.n_tokens - 1]))
    t = time.perf_counter()
    for _ in range(%(n_decode)d):
        m.eval([tok]); tok = int(np.argmax(m.scores[m.n_tokens - 1]))
    decode = time.perf_counter() - t
    print(json.dumps({"prefill_tps": len(ids) / prefill, "decode_tps": %(n_decode)d / decode,
                      "rss": status("VmRSS"), "peak": status("VmHWM")}))
""") % {"n_prompt": N_PROMPT, "n_decode": N_DECODE}


def run(script: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"benchmark process failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=CACHE)
    ap.add_argument("--keep", action="store_true", help="keep the 8B-A1B file")
    ap.add_argument("--resident", type=int, default=-1,
                    help="experts_resident for lfm2q (default: its default, 2 x experts used)")
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    try:
        import llama_cpp  # noqa: F401
        have_llama = True
    except ImportError:
        have_llama = False
    files = {}
    for key in ("8b-a1b", "1.2b"):
        path = a.dir / f"{SHAPES[key].name}-random-q4_k_m.gguf"
        if not path.exists():
            print(f"building {path.name} ...", flush=True)
            build(SHAPES[key], path, "q4_k_m", progress=True)
        files[key] = path
    print(f"CPU: {cpu_name()} · {a.threads} threads · prompt {N_PROMPT} tokens, {N_DECODE} decoded")
    results = {}
    try:
        for key, path in files.items():
            total, active = n_params(SHAPES[key])
            size = path.stat().st_size
            r = run(LFM2Q_RUN, path, a.threads, json.dumps(None if a.resident == 0 else a.resident))
            results[("lfm2q", key)] = r
            print(f"lfm2q     {key:7s} {total / 1e9:.2f}B ({active / 1e9:.2f}B active) file {gib(size)}: "
                  f"prefill {r['prefill_tps']:6.1f} tok/s · decode {r['decode_tps']:5.2f} tok/s · "
                  f"RSS after decode {gib(r['rss'])} ({r['rss'] / size:.0%} of the file), peak {gib(r['peak'])}",
                  flush=True)
            if have_llama:
                r = run(LLAMA_RUN, path, a.threads)
                results[("llama.cpp", key)] = r
                print(f"llama.cpp {key:7s}: prefill {r['prefill_tps']:6.1f} tok/s · decode "
                      f"{r['decode_tps']:5.2f} tok/s · RSS after decode {gib(r['rss'])}, peak {gib(r['peak'])}",
                      flush=True)
        moe, dense = results[("lfm2q", "8b-a1b")], results[("lfm2q", "1.2b")]
        print(f"lfm2q 8B-A1B decode is {moe['decode_tps'] / dense['decode_tps']:.2f}x the 1.2B's "
              f"(goal: >= {1 / 1.5:.2f}x)")
        if have_llama:
            for key in files:
                ours, theirs = results[("lfm2q", key)], results[("llama.cpp", key)]
                print(f"{key}: lfm2q / llama.cpp decode {ours['decode_tps'] / theirs['decode_tps']:.2f}x, "
                      f"prefill {ours['prefill_tps'] / theirs['prefill_tps']:.2f}x")
        else:
            print("llama.cpp: llama_cpp is not importable (make llamacpp) — not compared")
    finally:
        if not a.keep:
            files["8b-a1b"].unlink(missing_ok=True)


if __name__ == "__main__":
    main()
