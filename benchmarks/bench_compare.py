"""lfm2q against llama.cpp (llama-cpp-python) on the same GGUF files, in one run.

The random-weight checkpoint with the exact LFM2-350M shape (built by bench_350m.py, cached in
~/.cache/lfm2q-bench) is converted by lfm2q to Q4_K_M and Q8_0 (cached beside it). Both engines
then run those very files with the same thread count:

  prefill  pp128, pp512     prompt tokens/s (one call with the whole prompt)
  decode   tg64 @128        64 greedy tokens after a 128-token prompt
  context  tg32 @1 / @4000  32 tokens after a 1-token prompt, and after a ~4000-token prompt
                            (n_ctx 4096 for both)

Each (engine, file) pair runs in its own subprocess (so neither engine's idle threads or
caches touch the other's timings), engines alternating, for --rounds rounds; the table shows
medians and the ratio lfm2q / llama.cpp. llama.cpp runs with its default context parameters
(F16 KV cache, flash attention "auto"), n_batch = n_ubatch = 512, like llama-cli.

    .venv/bin/python benchmarks/bench_compare.py [--threads 2] [--rounds 3] [--types q4_k_m,q8_0]

Time it on a quiet machine only: llama.cpp's worker threads spin-wait, and a competing process
distorts both engines unevenly. Before each measurement the script waits until the CPUs are
--min-idle (90%) idle, and redoes a run during which other processes used more than
--max-others CPUs (it prints how much they used). Needs the `llamacpp` extra (make bench-compare).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_350m import CACHE, build_checkpoint, prompt_ids  # noqa: E402

N_CTX = 4096
N_LONG = 4000
N_BATCH = 512
# (key, prompt length, tokens generated); "pp" keys time the prompt, "tg" keys the generation
MEASURES = [("pp128", 128, 0), ("pp512", 512, 0), ("tg64@128", 128, 64),
            ("tg32@1", 1, 32), ("tg32@4000", N_LONG, 32)]


# --- the two engines, behind one interface: reset(), eval(ids) -> last logits ----------------

class Lfm2qEngine:
    def __init__(self, path: Path, threads: int):
        import lfm2q
        self.model = lfm2q.load(path, n_ctx=N_CTX, n_threads=threads)
        self.session = self.model.session()

    def reset(self) -> None:
        self.session.reset()

    def eval(self, ids: list[int]) -> np.ndarray:
        return self.session.eval(ids)


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python's C bindings (no high-level wrapper in the timed path)."""

    def __init__(self, path: Path, threads: int):
        import llama_cpp as L
        self.L = L
        self._log_cb = L.llama_log_callback(lambda level, text, user: None)  # keep a reference
        L.llama_log_set(self._log_cb, None)
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = N_CTX, N_BATCH, N_BATCH
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(N_BATCH, 0, 1)
        self.n_past = 0

    def reset(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def eval(self, ids: list[int]) -> np.ndarray:
        b = self.batch
        for start in range(0, len(ids), N_BATCH):
            chunk = ids[start:start + N_BATCH]
            b.n_tokens = len(chunk)
            for j, t in enumerate(chunk):
                b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = t, self.n_past + j, 1, 0
                b.seq_id[j][0] = 0
            b.logits[len(chunk) - 1] = 1
            rc = self.L.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            self.n_past += len(chunk)
        return np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))


ENGINES = {"lfm2q": Lfm2qEngine, "llama.cpp": LlamaCppEngine}


def worker(engine_name: str, path: Path, threads: int) -> dict:
    t0 = time.perf_counter()
    engine = ENGINES[engine_name](path, threads)
    ids = prompt_ids(N_LONG + 1)
    engine.eval(ids[:16])  # warm-up: both paths (lfm2q compiles or loads its kernels here)
    engine.eval([ids[16]])
    out = {"load_s": time.perf_counter() - t0}
    for key, n_prompt, n_gen in MEASURES:
        engine.reset()
        t = time.perf_counter()
        logits = engine.eval(ids[:n_prompt])
        prompt_s = time.perf_counter() - t
        if n_gen == 0:
            out[key] = n_prompt / prompt_s
            continue
        t = time.perf_counter()
        for _ in range(n_gen):
            logits = engine.eval([int(np.argmax(logits))])
        out[key] = n_gen / (time.perf_counter() - t)
        if key == "tg32@4000":
            out["pp4000"] = n_prompt / prompt_s
    return out


def cpu_sample() -> tuple[int, int]:
    """(idle + iowait, total) jiffies over all CPUs, from /proc/stat ((0, 0) if unavailable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    return v[3] + v[4], sum(v)


def idle_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs idle over `seconds` (1.0 where /proc/stat is unavailable)."""
    i0, t0 = cpu_sample()
    time.sleep(seconds)
    i1, t1 = cpu_sample()
    return (i1 - i0) / (t1 - t0) if t1 > t0 else 1.0


def wait_until_quiet(min_idle: float, max_wait: float) -> float:
    """Block until the machine is at least `min_idle` idle (or max_wait seconds pass)."""
    deadline = time.monotonic() + max_wait
    while True:
        idle = idle_fraction()
        if idle >= min_idle or time.monotonic() > deadline:
            return idle
        print(f"  machine busy ({100 * (1 - idle):.0f}% CPU used by others), waiting …", file=sys.stderr)
        time.sleep(15)


def run_worker(engine: str, path: Path, threads: int) -> dict:
    """One measurement in a subprocess; "others" in the result is the CPU time other processes
    used meanwhile, in CPUs (busy CPU time of the machine minus the worker's own, per second)."""
    hz = os.sysconf("SC_CLK_TCK")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    i0, t0 = cpu_sample()
    wall = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--worker", engine, str(path), "--threads", str(threads)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - wall
    i1, t1 = cpu_sample()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"{engine} on {path.name} failed:\n{r.stderr}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    busy = ((t1 - t0) - (i1 - i0)) / hz
    own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    out["others"] = max(busy - own, 0.0) / wall
    return out


def measure(engine: str, path: Path, args) -> dict:
    """run_worker on a quiet machine: wait for --min-idle, and redo a run during which other
    processes used more than --max-others CPUs (at most --tries runs; keeps the quietest)."""
    best = None
    for attempt in range(args.tries):
        idle = wait_until_quiet(args.min_idle, args.max_wait)
        r = run_worker(engine, path, args.threads)
        r["idle_before"] = idle
        print(f"    {engine} {path.name}: other processes used {r['others']:.2f} CPUs", file=sys.stderr)
        if best is None or r["others"] < best["others"]:
            best = r
        if r["others"] <= args.max_others:
            break
    return best


def system_line() -> str:
    import llama_cpp
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = llama_cpp.llama_print_system_info().decode().strip()
    return (f"{cpu}; Python {platform.python_version()}; llama-cpp-python {llama_cpp.__version__} "
            f"(llama.cpp: {info})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--types", default="q4_k_m,q8_0")
    ap.add_argument("--min-idle", type=float, default=0.9,
                    help="before each measurement wait until this share of the CPUs is idle")
    ap.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for that, at most")
    ap.add_argument("--max-others", type=float, default=0.05,
                    help="redo a measurement during which other processes used more CPUs than this")
    ap.add_argument("--tries", type=int, default=4, help="runs per measurement, at most")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "GGUF"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.threads)))
        return

    from lfm2q.convert import convert_hf
    hf_dir = CACHE / "lfm2-350m-random"
    CACHE.mkdir(parents=True, exist_ok=True)
    build_checkpoint(hf_dir)
    types = args.types.split(",")
    files = {}
    for t in types:
        files[t] = CACHE / f"lfm2-350m-random-{t}.gguf"
        if not files[t].exists():
            convert_hf(hf_dir, files[t], t, progress=True)

    load = os.getloadavg()[0]
    if load >= 1.0:
        print(f"warning: load average {load:.2f} >= 1 — timings are unreliable on a busy machine",
              file=sys.stderr)
    results: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for t in types:
            for engine in (ENGINES if rnd % 2 == 0 else reversed(list(ENGINES))):
                print(f"round {rnd + 1}/{args.rounds}: {engine} {t} …", file=sys.stderr)
                results.setdefault((engine, t), []).append(measure(engine, files[t], args))

    def med(engine: str, t: str, key: str) -> float:
        return statistics.median(r[key] for r in results[engine, t])

    print(f"\nLFM2-350M shape (random weights), {args.threads} threads, median of {args.rounds} rounds, "
          f"tokens/s; load average at start {load:.2f}")
    print(system_line())
    cols = ["pp128", "pp512", "tg64@128", "tg32@1", "tg32@4000"]
    print("\n| file | engine | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for t in types:
        size = files[t].stat().st_size / 2**20
        for engine in ENGINES:
            vals = " | ".join(f"{med(engine, t, c):.1f}" for c in cols)
            print(f"| {t.upper()} ({size:.0f} MiB) | {engine} | {vals} |")
        ratios = " | ".join(f"**{med('lfm2q', t, c) / med('llama.cpp', t, c):.2f}×**" for c in cols)
        print(f"| {t.upper()} | lfm2q / llama.cpp | {ratios} |")
    print("\npp = prefill (prompt of N tokens in one call); tgN@P = N greedy decode steps after a "
          "P-token prompt; the @4000 prompt itself ran at (tok/s): "
          + ", ".join(f"{e} {t.upper()} {med(e, t, 'pp4000'):.0f}" for t in types for e in ENGINES))
    others = [r["others"] for rs in results.values() for r in rs]
    print(f"other processes during the kept runs: {max(others):.2f} CPUs at most, "
          f"{statistics.median(others):.2f} median (of {args.threads} used here)")
    print("load + warm-up (s): " + ", ".join(f"{e} {t.upper()} {med(e, t, 'load_s'):.1f}"
                                             for t in types for e in ENGINES))


if __name__ == "__main__":
    main()
