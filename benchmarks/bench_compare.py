"""lfm2q against llama.cpp (llama-cpp-python) on the same GGUF files, in one run.

Random-weight checkpoints with the exact LFM2-350M and LFM2-1.2B shapes (built by
bench_350m.py, cached in ~/.cache/lfm2q-bench) are converted by lfm2q to Q4_K_M and Q8_0
(cached beside them). Both engines then run those very files with the same thread count:

  prefill  pp128, pp512     prompt tokens/s (one call with the whole prompt)
  decode   tg64 @128        64 greedy tokens after a 128-token prompt
  context  tg32 @1 / @4000  32 tokens after a 1-token prompt, and after a ~4000-token prompt
                            (n_ctx 4096 for both)
  CPUs     CPU time / wall time of the process during the tg64 loop
  memory   peak RSS of the process (n_ctx 4096, after the ~4000-token prompt), MB = 10^6 bytes

That is the first table (350M, both files); the sections after it:

  1.2B              pp128 and tg64@128 (and CPUs, peak RSS) on the 1.2B files
  threads           350M Q4_K_M, pp128 and tg64@128 and the CPUs used, at --thread-counts 1,2,4
                    (one round; more threads than cores oversubscribe, reported anyway)
  first token       wall time from starting a Python process to reading the line it prints
                    after loading the 350M Q4_K_M file (n_ctx 4096) and taking the argmax of a
                    7-token prompt's logits: median of 5, numba's cache warm; then one lfm2q run
                    with a cold numba cache (NUMBA_CACHE_DIR = a fresh folder: compiles every kernel)
  context           the context targets: lfm2q's decode steps at an empty context and at ~4000
                    tokens alternating in one process (350M files, F16 and Q8_0 caches, --rounds
                    rounds), then at --long - 64 tokens (350M Q4_K_M, one round per cache);
                    judged on the Q8_0 cache, as decided (docs/benchmarks.md §4), F16 reported; with the
                    attention layers timed alone on the long session's cache and the bound that
                    the cache's bytes set (file / (file + cache))
  long context      350M Q4_K_M, one round, n_ctx --long + 64: tg32 after a (--long - 64)-token
                    prompt against tg32@1 in the same process, each engine against itself
                    (both engines' pp16320 and tg32@16320 side by side)
  targets           each target of the issue with the measured value, met / not met

Each measurement runs in its own subprocess (so neither engine's idle threads or caches touch
the other's timings; one untimed lfm2q process per file first fills numba's cache, so no timed
process compiles), engines alternating, for --rounds rounds; the tables show medians and
the ratio lfm2q / llama.cpp. llama.cpp runs with its default context parameters (F16 KV cache,
flash attention "auto"), n_batch = n_ubatch = 512, like llama-cli. --kv-cache q8_0 gives both
engines 8-bit K and V caches instead (llama.cpp: type_k = type_v = Q8_0, flash attention on, as
-ctk q8_0 -ctv q8_0 -fa on; the first-token runs keep the default).

    .venv/bin/python benchmarks/bench_compare.py [--threads 2] [--rounds 3] [--types q4_k_m,q8_0]
        [--shapes 350m,1.2b] [--thread-counts 1,2,4] [--long 16384] [--no-cold] [--quick]
        [--kv-cache f16|q8_0] [--no-keep]

A full default run takes about 25 minutes on this 2-core AVX-512 machine: 350M table ~6 min,
1.2B ~2.5, context ~9 (two ~16k-token prompts ~4), threads ~1, first token ~1 plus ~1 for the
cold cache, long context ~4 (the ~16k-token prompts); building and converting the 1.2B
checkpoint the first time adds ~5 min. --quick (tiny prompts and decodes, 1 round, --long 1024,
no cold-cache run, at most 10 s waiting for a quiet machine per measurement) checks the script
itself in 2-4 minutes; its figures mean little.

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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_350m import CACHE, SHAPES, build_checkpoint, prompt_ids  # noqa: E402

N_CTX = 4096
N_BATCH = 512
FIRST_PROMPT = 7  # tokens of the first-token prompt
RSS_MARGIN_MB = 120  # target: peak RSS ≤ llama.cpp's + this
FIRST_TOKEN_S = 1.5  # target: first token (warm numba cache) within this many seconds
CONTEXT_KEEP = 0.8  # target: decode at a long context ≥ this share of decode at an empty one
KEEP_CACHES = ("f16", "q8_0")  # caches of the context measurement
KEEP_JUDGED = "q8_0"  # the cache the context targets are judged on (docs/benchmarks.md §4)
PREFILL_RATIO = 1.0  # bar applied to prefill (the issue states 1.0× for decode)


@dataclass(frozen=True)
class Sizes:
    """Prompt and decode lengths of the measurements (the full ones, or --quick's)."""
    short: int = 128  # prompt of pp128 and tg64@128
    mid: int = 512  # prompt of pp512
    gen: int = 64  # tokens of tg64@128
    gen_ctx: int = 32  # tokens of tg32@1, tg32@4000 and the long-context run
    ctx: int = 4000  # prompt of tg32@4000 (n_ctx N_CTX)
    keep_steps: int = 64  # decode steps of each session in keep_worker

    @property
    def pp_short(self) -> str:
        return f"pp{self.short}"

    @property
    def pp_mid(self) -> str:
        return f"pp{self.mid}"

    @property
    def tg(self) -> str:
        return f"tg{self.gen}@{self.short}"

    @property
    def tg_empty(self) -> str:
        return f"tg{self.gen_ctx}@1"

    @property
    def tg_ctx(self) -> str:
        return f"tg{self.gen_ctx}@{self.ctx}"

    def main(self) -> list[tuple[str, int, int]]:
        """(key, prompt length, tokens generated): "pp" keys time the prompt, "tg" the decode."""
        return [(self.pp_short, self.short, 0), (self.pp_mid, self.mid, 0), (self.tg, self.short, self.gen),
                (self.tg_empty, 1, self.gen_ctx), (self.tg_ctx, self.ctx, self.gen_ctx)]

    def short_pair(self) -> list[tuple[str, int, int]]:
        return [(self.pp_short, self.short, 0), (self.tg, self.short, self.gen)]

    def long(self, n: int) -> list[tuple[str, int, int]]:
        return [(self.tg_empty, 1, self.gen_ctx), (f"tg{self.gen_ctx}@{n - 64}", n - 64, self.gen_ctx)]


FULL = Sizes()
QUICK = Sizes(short=16, mid=48, gen=8, gen_ctx=8, ctx=256, keep_steps=8)


# --- the two engines, behind one interface: reset(), eval(ids) -> last logits ----------------

class Lfm2qEngine:
    def __init__(self, path: Path, threads: int, n_ctx: int = N_CTX, kv: str = "f16"):
        import lfm2q
        self.model = lfm2q.load(path, n_ctx=n_ctx, n_threads=threads, kv_cache=kv)
        self.session = self.model.session()

    def reset(self) -> None:
        self.session.reset()

    def eval(self, ids: list[int]) -> np.ndarray:
        return self.session.eval(ids)


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python's C bindings (no high-level wrapper in the timed path)."""

    def __init__(self, path: Path, threads: int, n_ctx: int = N_CTX, kv: str = "f16"):
        import llama_cpp as L
        self.L = L
        self._log_cb = L.llama_log_callback(lambda level, text, user: None)  # keep a reference
        L.llama_log_set(self._log_cb, None)
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, N_BATCH, N_BATCH
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        if kv == "q8_0":  # a quantized V cache needs flash attention
            cp.type_k = cp.type_v = L.GGML_TYPE_Q8_0
            cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
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


def cpu_seconds() -> float:
    """CPU time this process used so far (all threads, user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def warm_up(engine, ids: list[int]) -> None:
    """Both paths once, untimed (lfm2q compiles or loads its kernels here): lfm2q evaluates
    prompts of up to 20 tokens through decode (model.SHORT_PROMPT), so a 32-token prompt
    loads its prefill kernels; llama.cpp runs both prompts as batches. ids: 49 or more."""
    engine.eval(ids[:16])
    engine.eval(ids[16:48])
    engine.eval([ids[48]])


def worker(engine_name: str, path: Path, threads: int, spec: dict) -> dict:
    """spec: {"n_ctx": int, "measures": [(key, prompt length, tokens generated), …]}.
    Returns tokens/s per key, "<key> cpus" (CPU time / wall time of each decode loop),
    "<key> prompt" (the tokens/s of a decode measure's prompt), load_s and rss_mb."""
    measures = spec["measures"]
    t0 = time.perf_counter()
    engine = ENGINES[engine_name](path, threads, spec["n_ctx"], spec.get("kv", "f16"))
    ids = prompt_ids(max([n for _, n, _ in measures] + [48]) + 1)
    warm_up(engine, ids)
    out = {"load_s": time.perf_counter() - t0}
    for key, n_prompt, n_gen in measures:
        engine.reset()
        t = time.perf_counter()
        logits = engine.eval(ids[:n_prompt])
        prompt_s = time.perf_counter() - t
        if n_gen == 0:
            out[key] = n_prompt / prompt_s
            continue
        c = cpu_seconds()
        t = time.perf_counter()
        for _ in range(n_gen):
            logits = engine.eval([int(np.argmax(logits))])
        wall = time.perf_counter() - t
        out[key] = n_gen / wall
        out[f"{key} cpus"] = (cpu_seconds() - c) / wall
        out[f"{key} prompt"] = n_prompt / prompt_s
    out["rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM), MB. Not ru_maxrss: Linux carries the maximum over
    exec, so a worker forked from the script after it built checkpoints with torch reported
    that script's 5.7 GB in every row."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def keep_worker(path: Path, threads: int, spec: dict) -> dict:
    """spec: {"n_ctx", "kv", "ctx", "steps"}. lfm2q decodes in two sessions of one model, one at an
    empty context and one after a spec["ctx"]-token prompt, one step each in turn; returns the
    median step of each in ms. Alternating, both see the same state of the machine."""
    engine = Lfm2qEngine(path, threads, spec["n_ctx"], spec["kv"])
    ids = prompt_ids(max(spec["ctx"], 48) + 1)
    warm_up(engine, ids)
    engine.reset()
    empty, ctx = engine.session, engine.model.session()
    la, lb = empty.eval([ids[0]]), ctx.eval(ids[:spec["ctx"]])
    ta, tb = [], []
    for _ in range(spec["steps"]):
        t = time.perf_counter()
        la = empty.eval([int(np.argmax(la))])
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        lb = ctx.eval([int(np.argmax(lb))])
        tb.append(time.perf_counter() - t)
    return ({"empty_ms": 1e3 * statistics.median(ta), "ctx_ms": 1e3 * statistics.median(tb)}
            | attention_profile(engine.model, ctx, path))


def attention_profile(model, session, path: Path) -> dict:
    """Where a step at a long context goes: the attention layers alone on the session's cache
    (median of 10 passes of blocks.attend, one query), the cache's bytes, and the file's bytes
    that every step streams (the tied output matrix included)."""
    from lfm2q import blocks
    st, n = session.state, session.n_past
    layers = [il for il, k in enumerate(st.k) if k is not None]
    width = model.config.n_head * model.config.head_dim
    q = np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)
    out = np.empty_like(q)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        for il in layers:
            blocks.attend(q, st.k[il], st.k_scale[il], st.v[il], st.v_scale[il], n - 1, 0, out)
        times.append(time.perf_counter() - t)
    cache = sum(a[:, :n].nbytes for il in layers for a in (st.k[il], st.k_scale[il], st.v[il], st.v_scale[il]))
    return {"attn_ms": 1e3 * statistics.median(times), "cache_mb": cache / 1e6, "file_mb": path.stat().st_size / 1e6}


def first_token(engine_name: str, path: Path, threads: int) -> None:
    """The whole life of a process up to its first token: load (n_ctx 4096), a 7-token prompt,
    argmax; the parent times it from starting the process to reading this line."""
    engine = ENGINES[engine_name](path, threads, N_CTX)
    logits = engine.eval(prompt_ids(FIRST_PROMPT))
    print(f"first-token {int(np.argmax(logits))}", flush=True)


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
        time.sleep(min(15.0, max(deadline - time.monotonic(), 0.0)))


def child_env(threads: int, extra: dict | None = None) -> dict:
    """The environment of a measurement's process. numba starts one thread per core and lfm2q
    refuses more: for --threads above the core count, NUMBA_NUM_THREADS is raised to match."""
    env = dict(os.environ, **(extra or {}))
    if threads > (os.cpu_count() or 1) and int(env.get("NUMBA_NUM_THREADS") or 0) < threads:
        env["NUMBA_NUM_THREADS"] = str(threads)
    return env


def run_worker(engine: str, path: Path, threads: int, spec: dict, env: dict | None = None) -> dict:
    """One measurement in a subprocess; "others" in the result is the CPU time other processes
    used meanwhile, in CPUs (busy CPU time of the machine minus the worker's own, per second)."""
    hz = os.sysconf("SC_CLK_TCK")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    i0, t0 = cpu_sample()
    wall = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--worker", engine, str(path), "--threads", str(threads),
                        "--spec", json.dumps(spec)], capture_output=True, text=True, env=child_env(threads, env))
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


def measure(engine: str, path: Path, args, spec: dict, threads: int | None = None, env: dict | None = None) -> dict:
    """run_worker on a quiet machine: wait for --min-idle, and redo a run during which other
    processes used more than --max-others CPUs (at most --tries runs; keeps the quietest)."""
    threads = args.threads if threads is None else threads
    spec = {"kv": args.kv_cache, **spec}  # a spec's own "kv" (the context runs) wins
    best = None
    for attempt in range(args.tries):
        idle = wait_until_quiet(args.min_idle, args.max_wait)
        r = run_worker(engine, path, threads, spec, env)
        r["idle_before"] = idle
        print(f"    {engine} {path.name}: other processes used {r['others']:.2f} CPUs", file=sys.stderr)
        if best is None or r["others"] < best["others"]:
            best = r
        if r["others"] <= args.max_others:
            break
    return best


def time_first_token(engine: str, path: Path, threads: int, env: dict | None = None) -> float:
    """Seconds from starting a process (`--first-token`) to reading the line it prints."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, __file__, "--first-token", engine, str(path),
                              "--threads", str(threads)],
                             stdout=subprocess.PIPE, stderr=err, text=True, env=child_env(threads, env))
        line = p.stdout.readline()
        elapsed = time.perf_counter() - t0
        p.stdout.read()
        p.wait()
        if p.returncode != 0 or not line.startswith("first-token"):
            err.seek(0)
            sys.exit(f"first token: {engine} on {path.name} failed:\n{err.read()}")
    return elapsed


def system_line() -> str:
    import llama_cpp
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from lfm2q.kernels.dispatch import kernel_name
    from lfm2q.kernels.formats import Q4_0, Q4_K, Q6_K, Q8_0
    from lfm2q.kernels.isa import describe

    info = llama_cpp.llama_print_system_info().decode().strip()
    d = describe()
    kernels = "; ".join(f"{n} {kernel_name(q)}" for n, q in (("Q4_K", Q4_K), ("Q6_K", Q6_K), ("Q8_0", Q8_0), ("Q4_0", Q4_0)))
    return (f"{cpu}; Python {platform.python_version()}; llama-cpp-python {llama_cpp.__version__} "
            f"(llama.cpp: {info})\nlfm2q kernels: {d['arch']}, LLVM CPU {d['cpu']}; {kernels}")


def model_file(shape: str, t: str) -> Path:
    """The cached GGUF file of `shape` in type `t`, building and converting it if missing."""
    from lfm2q.convert import convert_hf
    name = SHAPES[shape][2]
    hf_dir = CACHE / name
    CACHE.mkdir(parents=True, exist_ok=True)
    build_checkpoint(hf_dir, shape)
    path = CACHE / f"{name}-{t}.gguf"
    if not path.exists():
        convert_hf(hf_dir, path, t, progress=True)
    return path


# --- output -----------------------------------------------------------------------------------

def med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def cell(kind: str, value: float) -> str:
    return {"rate": f"{value:.1f}", "cpus": f"{value:.2f}", "rss": f"{value:.0f}"}[kind]


def ratio_cell(kind: str, ours: float, theirs: float) -> str:
    if kind == "rss":
        return f"{ours - theirs:+.0f} MB"
    if kind == "cpus":
        return "—"
    return f"**{ours / theirs:.2f}×**"


def print_table(row_head: str, rows: list[tuple[str, str, list[dict], list[dict]]],
                cols: list[tuple[str, str, str]]) -> None:
    """rows: (label, label of the ratio row, lfm2q results, llama.cpp results);
    cols: (header, key, kind) with kind "rate" (tokens/s), "cpus" or "rss" (MB)."""
    print(f"\n| {row_head} | engine | " + " | ".join(h for h, _, _ in cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for label, ratio_label, ours, theirs in rows:
        for engine, rs in (("lfm2q", ours), ("llama.cpp", theirs)):
            print(f"| {label} | {engine} | " + " | ".join(cell(kind, med(rs, key)) for _, key, kind in cols) + " |")
        print(f"| {ratio_label} | lfm2q / llama.cpp | "
              + " | ".join(ratio_cell(kind, med(ours, key), med(theirs, key)) for _, key, kind in cols) + " |")


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


@dataclass
class Run:
    """What one invocation measures (from the options) and what it measured."""
    args: argparse.Namespace
    sizes: Sizes
    shapes: list[str]
    types: list[str]
    thread_counts: list[int]
    files: dict = field(default_factory=dict)  # (shape, type) -> GGUF path
    q4: Path | None = None  # 350M Q4_K_M: threads, first token, long context (None: skipped)
    tables: dict = field(default_factory=dict)  # (shape, engine, type) -> [worker result per round]
    threads: dict = field(default_factory=dict)  # (n_threads, engine) -> [worker result]
    first: dict = field(default_factory=dict)  # engine -> [seconds]
    cold: float | None = None  # lfm2q's first token with a cold numba cache, seconds
    long: dict = field(default_factory=dict)  # engine -> worker result
    keep: dict = field(default_factory=dict)  # (type, cache, context) -> [keep_worker result per round]
    phase_s: dict = field(default_factory=dict)  # section -> seconds taken
    # the targets, in its order: kind -> [(target, measured, met)]
    targets: dict = field(default_factory=lambda: {k: [] for k in
                                                   ("decode", "prefill", "context", "first", "rss", "threads")})


# --- the measurements -------------------------------------------------------------------------

def warm_kernels(run: Run) -> None:
    """One untimed lfm2q process per file, so no measured process compiles numba kernels (which
    would also inflate its peak RSS): after an lfm2q source change numba's cache starts empty."""
    t0 = time.monotonic()
    for path in sorted(set(run.files.values()) | ({run.q4} if run.q4 else set())):
        print(f"warming numba's cache: lfm2q {path.name} …", file=sys.stderr)
        run_worker("lfm2q", path, run.args.threads, {"n_ctx": 64, "measures": []})
    run.phase_s["warm-up"] = time.monotonic() - t0


def run_tables(run: Run) -> None:
    """The per-shape tables: --rounds rounds of every (type, engine), engines alternating."""
    args, sizes = run.args, run.sizes
    specs = {"350m": {"n_ctx": N_CTX, "measures": sizes.main()},
             "1.2b": {"n_ctx": N_CTX, "measures": sizes.short_pair()}}
    for s in run.shapes:
        t0 = time.monotonic()
        for rnd in range(args.rounds):
            for t in run.types:
                for engine in (ENGINES if rnd % 2 == 0 else reversed(list(ENGINES))):
                    print(f"{s} round {rnd + 1}/{args.rounds}: {engine} {t} …", file=sys.stderr)
                    run.tables.setdefault((s, engine, t), []).append(
                        measure(engine, run.files[s, t], args, specs[s]))
        run.phase_s[s] = time.monotonic() - t0


def run_threads(run: Run) -> None:
    t0 = time.monotonic()
    spec = {"n_ctx": N_CTX, "measures": run.sizes.short_pair()}
    for n in run.thread_counts:
        for engine in ENGINES:
            print(f"threads {n}: {engine} {run.q4.name} …", file=sys.stderr)
            run.threads[n, engine] = [measure(engine, run.q4, run.args, spec, threads=n)]
    run.phase_s["threads"] = time.monotonic() - t0


def run_first_token(run: Run) -> None:
    args = run.args
    t0 = time.monotonic()
    for engine in ENGINES:  # one discarded run each: numba's cache and the page cache warm
        wait_until_quiet(args.min_idle, args.max_wait)
        time_first_token(engine, run.q4, args.threads)
    for i in range(args.first_token_runs):
        for engine in ENGINES:
            wait_until_quiet(args.min_idle, args.max_wait)
            run.first.setdefault(engine, []).append(time_first_token(engine, run.q4, args.threads))
            print(f"first token {i + 1}/{args.first_token_runs}: {engine} {run.first[engine][-1]:.2f} s",
                  file=sys.stderr)
    run.phase_s["first token"] = time.monotonic() - t0
    if args.no_cold:
        return
    t0 = time.monotonic()
    cache_dir = tempfile.mkdtemp(prefix="lfm2q-numba-cold-")
    try:
        wait_until_quiet(args.min_idle, args.max_wait)
        print("first token, lfm2q with a cold numba cache (compiles every kernel) …", file=sys.stderr)
        run.cold = time_first_token("lfm2q", run.q4, args.threads, {"NUMBA_CACHE_DIR": cache_dir})
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    run.phase_s["cold cache"] = time.monotonic() - t0


def run_keep(run: Run) -> None:
    """The context targets: lfm2q's decode steps at an empty context and at sizes.ctx tokens,
    alternating in one process (keep_worker), on the 350M files with the F16 and the Q8_0
    cache, --rounds rounds; then at --long tokens on the Q4_K_M file, one round per cache."""
    t0 = time.monotonic()
    for rnd in range(run.args.rounds):
        for t in run.types:
            for kv in KEEP_CACHES:
                print(f"context round {rnd + 1}/{run.args.rounds}: lfm2q {t} {kv} cache …", file=sys.stderr)
                spec = {"n_ctx": N_CTX, "kv": kv, "ctx": run.sizes.ctx, "steps": run.sizes.keep_steps}
                run.keep.setdefault((t, kv, run.sizes.ctx), []).append(
                    measure("lfm2q", run.files["350m", t], run.args, spec))
    if run.q4 and run.args.long:
        n = run.args.long - 64
        for kv in KEEP_CACHES:
            print(f"context {n}: lfm2q q4_k_m {kv} cache …", file=sys.stderr)
            spec = {"n_ctx": run.args.long + 64, "kv": kv, "ctx": n, "steps": run.sizes.keep_steps}
            run.keep.setdefault(("q4_k_m", kv, n), []).append(measure("lfm2q", run.q4, run.args, spec))
    run.phase_s["context"] = time.monotonic() - t0


def run_long(run: Run) -> None:
    t0 = time.monotonic()
    n = run.args.long
    spec = {"n_ctx": n + 64, "measures": run.sizes.long(n)}
    for engine in ENGINES:
        print(f"long context {n}: {engine} {run.q4.name} …", file=sys.stderr)
        run.long[engine] = measure(engine, run.q4, run.args, spec)
    run.phase_s["long context"] = time.monotonic() - t0


# --- the report -------------------------------------------------------------------------------

def report_tables(run: Run, load: float) -> None:
    args, sizes, res = run.args, run.sizes, run.tables
    cpus_col = (f"CPUs in tg{sizes.gen}", f"{sizes.tg} cpus", "cpus")
    rss_col = ("peak RSS (MB)", "rss_mb", "rss")

    def keep(rs: list[dict]) -> float:  # decode at sizes.ctx tokens of context / at an empty one
        return med(rs, sizes.tg_ctx) / med(rs, sizes.tg_empty)

    def vs(s: str, t: str, key: str) -> tuple[float, float, float]:
        a, b = med(res[s, "lfm2q", t], key), med(res[s, "llama.cpp", t], key)
        return a, b, a / b

    for s in run.shapes:
        name = f"LFM2-{s.upper()}"
        title = (f"{name} shape (random weights), {args.threads} threads, {args.kv_cache.upper()} KV cache, "
                 f"median of {args.rounds} rounds, tokens/s")
        if s == "350m":
            print(f"\n{title}; load average at start {load:.2f}")
            print(system_line())
            keys = [k for k, _, _ in sizes.main()]
        else:
            print(f"\n### {title}")
            keys = [k for k, _, _ in sizes.short_pair()]
        rows = [(f"{t.upper()} ({run.files[s, t].stat().st_size / 2**20:.0f} MiB)", t.upper(),
                 res[s, "lfm2q", t], res[s, "llama.cpp", t]) for t in run.types]
        print_table("file", rows, [(k, k, "rate") for k in keys] + [cpus_col, rss_col])
        if s == "350m":
            print(f"\npp = prefill (prompt of N tokens in one call); tgN@P = N greedy decode steps after a "
                  f"P-token prompt; the @{sizes.ctx} prompt itself ran at (tok/s): "
                  + ", ".join(f"{e} {t.upper()} {med(res[s, e, t], sizes.tg_ctx + ' prompt'):.0f}"
                              for t in run.types for e in ENGINES))
            print(f"CPUs = process CPU time / wall time during the tg{sizes.gen} loop; peak RSS = the process's "
                  f"VmHWM of the measuring process (n_ctx {N_CTX}, after the {sizes.ctx}-token prompt), MB = 10^6 bytes")
            print(f"decode at {sizes.ctx} tokens of context against an empty one, each engine against itself "
                  f"({sizes.tg_ctx} / {sizes.tg_empty}): "
                  + ", ".join(f"{e} {t.upper()} {keep(res[s, e, t]):.2f}" for t in run.types for e in ENGINES))
        else:
            print(f"\npeak RSS at n_ctx {N_CTX} after a {sizes.short}-token prompt and {sizes.gen} decoded tokens")

        for t in run.types:
            a, b, r = vs(s, t, sizes.tg)
            run.targets["decode"].append((f"decode {name} {t.upper()} {sizes.tg} ≥ 1.0× llama.cpp",
                                          f"{a:.1f} vs {b:.1f} tok/s = {r:.2f}×", met(r >= 1.0)))
            for k in ([sizes.pp_short, sizes.pp_mid] if s == "350m" else [sizes.pp_short]):
                a, b, r = vs(s, t, k)
                run.targets["prefill"].append(
                    (f"prefill {name} {t.upper()} {k} ≥ {PREFILL_RATIO:.1f}× llama.cpp (bar assumed)",
                     f"{a:.1f} vs {b:.1f} tok/s = {r:.2f}×", met(r >= PREFILL_RATIO)))
            if s != "350m":
                continue
            rs = res[s, "lfm2q", t]
            a, b = med(rs, "rss_mb"), med(res[s, "llama.cpp", t], "rss_mb")
            run.targets["rss"].append(
                (f"peak RSS ≤ llama.cpp + {RSS_MARGIN_MB} MB, {name} {t.upper()}, n_ctx {N_CTX}",
                 f"{a:.0f} vs {b:.0f} MB ({a - b:+.0f} MB)", met(a - b <= RSS_MARGIN_MB)))


def report_threads(run: Run) -> None:
    sizes, cores = run.sizes, os.cpu_count() or 1
    cpus_key = f"{sizes.tg} cpus"
    print(f"\n### Threads: LFM2-350M Q4_K_M, n_threads {', '.join(map(str, run.thread_counts))}, "
          f"one round, tokens/s ({cores} cores here)")
    rows = [(f"{n}", f"{n}", run.threads[n, "lfm2q"], run.threads[n, "llama.cpp"]) for n in run.thread_counts]
    print_table("threads", rows, [(sizes.pp_short, sizes.pp_short, "rate"), (sizes.tg, sizes.tg, "rate"),
                                  (f"CPUs in tg{sizes.gen}", cpus_key, "cpus"), ("peak RSS (MB)", "rss_mb", "rss")])
    print(f"\nCPUs = CPU time / wall time of the process during the tg{sizes.gen} loop: at most n_threads if "
          f"n_threads is honoured (and at most {cores} here). Above {cores} threads the run oversubscribes the "
          f"cores; lfm2q gets NUMBA_NUM_THREADS = n_threads there (numba's default is one thread per core).")
    for n in run.thread_counts:
        c = med(run.threads[n, "lfm2q"], cpus_key)
        want = min(n, cores)
        lo, hi = want - 0.9, n + 0.1  # uses more than n - 1 cores (where there are n), at most n
        run.targets["threads"].append(
            (f"n_threads {n} honoured (lfm2q CPUs in tg{sizes.gen} within {lo:.1f}–{hi:.1f})",
             f"{c:.2f} CPUs (llama.cpp {med(run.threads[n, 'llama.cpp'], cpus_key):.2f})",
             met(lo <= c <= hi)))


def report_first_token(run: Run) -> None:
    first = run.first
    a, b = statistics.median(first["lfm2q"]), statistics.median(first["llama.cpp"])
    print(f"\n### First token: LFM2-350M Q4_K_M, from process start, {run.args.threads} threads, "
          f"n_ctx {N_CTX}, {FIRST_PROMPT}-token prompt, seconds")
    print("\n| measurement | lfm2q | llama.cpp | lfm2q / llama.cpp |")
    print("|---|---:|---:|---:|")
    print(f"| warm numba cache, median of {len(first['lfm2q'])} | {a:.2f} | {b:.2f} | **{a / b:.2f}×** |")
    if run.cold is not None:
        print(f"| cold numba cache (fresh NUMBA_CACHE_DIR), 1 run | {run.cold:.2f} | — | {run.cold / b:.2f}× |")
    print("\nWall time from starting `python bench_compare.py --first-token …` (Python start-up and imports "
          "included) to reading the line it prints after the argmax of the prompt's last logits. All runs: "
          + "; ".join(f"{e} " + ", ".join(f"{x:.2f}" for x in first[e]) for e in ENGINES))
    run.targets["first"].append((f"first token ≤ {FIRST_TOKEN_S} s from process start, 350M Q4_K_M, "
                                 "warm numba cache", f"{a:.2f} s (llama.cpp {b:.2f} s)", met(a <= FIRST_TOKEN_S)))
    if run.cold is not None:
        run.targets["first"].append(("first token with a cold numba cache (reported, no target)",
                                     f"{run.cold:.1f} s", "—"))


def report_keep(run: Run) -> None:
    sizes = run.sizes
    print(f"\n### Decode at a long context against an empty one: LFM2-350M, lfm2q, {run.args.threads} threads, "
          f"median of {run.args.rounds} rounds at {sizes.ctx} (n_ctx {N_CTX}), one round at {run.args.long - 64} "
          f"(n_ctx {run.args.long + 64})")
    print("\n| file | KV cache | context | step, empty (ms) | step at the context (ms) | empty / context "
          "| attention alone (ms) | cache (MB) | file (MB) | bound |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (t, kv, n), rs in run.keep.items():
        keeps = [r["empty_ms"] / r["ctx_ms"] for r in rs]
        keep = statistics.median(keeps)
        cache, file = med(rs, "cache_mb"), med(rs, "file_mb")
        bound = file / (file + cache)
        print(f"| {t.upper()} | {kv.upper()} | {n} | {med(rs, 'empty_ms'):.2f} | {med(rs, 'ctx_ms'):.2f} | "
              f"**{keep:.2f}** | {med(rs, 'attn_ms'):.2f} | {cache:.0f} | {file:.0f} | {bound:.2f} |")
        judged = kv == KEEP_JUDGED
        run.targets["context"].append(
            (f"decode at {n} context ≥ {CONTEXT_KEEP}× empty, lfm2q LFM2-350M {t.upper()}, {kv.upper()} KV cache"
             + (" (the target as decided: the long-context setting)" if judged else " (reported)"),
             f"steps {med(rs, 'empty_ms'):.2f} / {med(rs, 'ctx_ms'):.2f} ms = {keep:.2f}× "
             + (f"(rounds: {', '.join(f'{k:.2f}' for k in keeps)})" if len(rs) > 1 else "(one round)")
             + f"; bound by bytes {bound:.2f}×",
             met(keep >= CONTEXT_KEEP) if judged else ("met" if keep >= CONTEXT_KEEP else "not met")))
    print(f"\nOne process per row: two sessions, one after a prompt of the context's length, decode "
          f"{sizes.keep_steps} greedy steps each, alternating, so both see the same machine (this VM's "
          "speed drifts 20–30% between processes); medians of the steps. The first table's "
          f"{sizes.tg_empty} and {sizes.tg_ctx} come from separate processes minutes apart. Attention alone: "
          "the attention layers of one decode step on that session's cache (blocks.attend, median of 10). "
          "Bound: file / (file + cache), the share of an empty step's speed left when a step reads the "
          "cache besides the weights at the same bandwidth.")


def report_long(run: Run) -> None:
    sizes, n = run.sizes, run.args.long - 64
    key = f"tg{sizes.gen_ctx}@{n}"
    ours, theirs = run.long["lfm2q"], run.long["llama.cpp"]
    print(f"\n### Long context: LFM2-350M Q4_K_M, n_ctx {run.args.long + 64}, {run.args.threads} threads, "
          f"{run.args.kv_cache.upper()} KV cache, one round, tokens/s")
    print("\n| measurement | lfm2q | llama.cpp | lfm2q / llama.cpp |")
    print("|---|---:|---:|---:|")
    for label, k in ((f"prompt of {n} tokens (pp{n})", f"{key} prompt"), (sizes.tg_empty, sizes.tg_empty),
                     (key, key)):
        print(f"| {label} | {ours[k]:.1f} | {theirs[k]:.1f} | **{ours[k] / theirs[k]:.2f}×** |")
    keep_a, keep_b = ours[key] / ours[sizes.tg_empty], theirs[key] / theirs[sizes.tg_empty]
    print(f"| {key} / {sizes.tg_empty}, each engine against itself | {keep_a:.2f} | {keep_b:.2f} | — |")
    print(f"| peak RSS (MB) | {ours['rss_mb']:.0f} | {theirs['rss_mb']:.0f} | "
          f"{ours['rss_mb'] - theirs['rss_mb']:+.0f} MB |")
    print(f"\nThe {n}-token prompt runs in one call, as for {sizes.tg_ctx}; {sizes.tg_empty} runs in the same "
          f"process (n_ctx {run.args.long + 64}).")
    if not run.keep:  # otherwise the context targets come from report_keep
        run.targets["context"].append(
            (f"decode at {run.args.long} context ({key}) ≥ {CONTEXT_KEEP}× empty ({sizes.tg_empty}), "
             "lfm2q 350M Q4_K_M", f"{ours[key]:.1f} / {ours[sizes.tg_empty]:.1f} tok/s = {keep_a:.2f}× "
             f"(llama.cpp {keep_b:.2f}×)", met(keep_a >= CONTEXT_KEEP)))


def report(run: Run, load: float, total_s: float) -> None:
    args = run.args
    report_tables(run, load)
    if run.threads:
        report_threads(run)
    if run.first:
        report_first_token(run)
    if run.keep:
        report_keep(run)
    if run.long:
        report_long(run)

    kept = [r for rs in run.tables.values() for r in rs] + [r for rs in run.threads.values() for r in rs] \
        + list(run.long.values()) + [r for rs in run.keep.values() for r in rs]
    others = [r["others"] for r in kept]
    print(f"\nother processes during the kept runs: {max(others):.2f} CPUs at most, "
          f"{statistics.median(others):.2f} median (of {args.threads} used here)")
    print("load + warm-up (s): " + ", ".join(f"{e} {s.upper()} {t.upper()} {med(rs, 'load_s'):.1f}"
                                             for (s, e, t), rs in run.tables.items()))
    print(f"time taken: {total_s / 60:.1f} min ("
          + ", ".join(f"{k} {v / 60:.1f}" for k, v in run.phase_s.items()) + ")")

    print("\n### Targets\n")
    print("| target | measured | |")
    print("|---|---|---|")
    for target, value, verdict in (x for kind in run.targets.values() for x in kind):
        print(f"| {target} | {value} | {verdict} |")
    if args.quick:
        print("\n(--quick: tiny prompts and decodes, one round — a check of the script, not a benchmark)")


# --variants: lfm2q alone, every kernel form forced in turn (lfm2q/tuning.py), beside its own pick
VARIANTS = {"groups": "decode=groups,prefill=groups", "rows": "decode=rows,prefill=rows", "tuned": None}


def run_variants(run: Run) -> None:
    """Per file: pp and tg with each form forced (LFM2Q_KERNELS) and with the tuner's picks,
    engines' rounds alternating as in the tables; then whether the pick is the fastest."""
    sz, args = run.sizes, run.args
    spec = {"n_ctx": N_CTX, "measures": sz.short_pair()}
    print(system_line())
    print()
    print(f"### lfm2q's kernel forms, {args.threads} threads, median of {args.rounds} rounds, tokens/s")
    print("groups: 512-bit row pairs / quads (decode and prefill); rows: row by row (AVX2); tuned: what "
          "lfm2q picks per matrix shape at a model's first load (the default). The same numbers either way.")
    print()
    print(f"| file | form | {sz.pp_short} | {sz.tg} |")
    print("|---|---|---:|---:|")
    verdicts = []
    for (shape, t), path in run.files.items():
        rs = {v: [] for v in VARIANTS}
        for rnd in range(args.rounds):
            for v, forced in VARIANTS.items():
                print(f"{shape} {t} round {rnd + 1}/{args.rounds}: {v} …", file=sys.stderr)
                rs[v].append(measure("lfm2q", path, args, spec, env={"LFM2Q_KERNELS": forced or ""}))
        best = {key: {v: med(r, key) for v, r in rs.items()} for key in (sz.pp_short, sz.tg)}
        for v in VARIANTS:
            print(f"| {shape.upper()} {t.upper()} | {v} | {best[sz.pp_short][v]:.1f} | {best[sz.tg][v]:.1f} |")
        for key, vals in best.items():
            top = max(vals["groups"], vals["rows"])
            verdicts.append((f"{shape.upper()} {t.upper()} {key}", vals["tuned"] / top))
    print()
    print("tuned / the faster forced form (1.00 = the pick is the fastest; within ±3% is run-to-run noise):")
    for name, r in verdicts:
        print(f"- {name}: {r:.2f}" + ("" if r >= 0.97 else "  (the pick is slower)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--types", default="q4_k_m,q8_0,q4_0,q6_k")
    ap.add_argument("--shapes", default="350m,1.2b",
                    help="model shapes (350m, 1.2b); threads, first token and long context need 350m")
    ap.add_argument("--thread-counts", default="1,2,4",
                    help="n_threads of the threads section (350M Q4_K_M); empty skips it")
    ap.add_argument("--long", type=int, default=16384,
                    help="context of the long-context run (350M Q4_K_M, n_ctx this + 64); 0 skips it")
    ap.add_argument("--first-token-runs", type=int, default=5, help="runs per engine of the first-token time")
    ap.add_argument("--no-cold", action="store_true", help="skip the first-token run with a cold numba cache")
    ap.add_argument("--quick", action="store_true",
                    help="check the script: tiny prompts and decodes, 1 round, --long 1024, no cold-cache "
                         "run, 1 try per measurement, at most 10 s waiting for a quiet machine")
    ap.add_argument("--min-idle", type=float, default=0.9,
                    help="before each measurement wait until this share of the CPUs is idle")
    ap.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for that, at most")
    ap.add_argument("--max-others", type=float, default=0.05,
                    help="redo a measurement during which other processes used more CPUs than this")
    ap.add_argument("--tries", type=int, default=4, help="runs per measurement, at most")
    ap.add_argument("--kv-cache", choices=("f16", "q8_0"), default="f16",
                    help="both engines' K and V cache type (first-token runs keep f16)")
    ap.add_argument("--no-keep", action="store_true",
                    help="skip the context targets' measurement (lfm2q's alternating steps, 350M files)")
    ap.add_argument("--variants", action="store_true",
                    help="lfm2q only: each kernel form forced in turn beside the tuner's pick, per file")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "GGUF"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--first-token", nargs=2, metavar=("ENGINE", "GGUF"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.first_token:
        first_token(args.first_token[0], Path(args.first_token[1]), args.threads)
        return
    if args.worker:
        spec = json.loads(args.spec)
        if "steps" in spec:  # the context measurement
            print(json.dumps(keep_worker(Path(args.worker[1]), args.threads, spec)))
        else:
            print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.threads, spec)))
        return

    if args.quick:
        args.rounds, args.tries, args.no_cold, args.first_token_runs = 1, 1, True, 1
        args.max_wait = min(args.max_wait, 10.0)
        args.long = 1024 if args.long else 0
    shapes = [s.strip().lower() for s in args.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"--shapes: unknown shape {s!r} (known: {', '.join(SHAPES)})")
    if args.long and args.long <= 65:
        ap.error("--long must be more than 65 (or 0)")
    run = Run(args=args, sizes=QUICK if args.quick else FULL, shapes=shapes,
              types=[t.strip().lower() for t in args.types.split(",") if t.strip()],
              thread_counts=[int(n) for n in args.thread_counts.split(",") if n.strip()])
    run.files = {(s, t): model_file(s, t) for s in run.shapes for t in run.types}
    if "350m" in shapes and (run.thread_counts or args.first_token_runs or args.long):
        run.q4 = run.files.get(("350m", "q4_k_m")) or model_file("350m", "q4_k_m")

    load = os.getloadavg()[0]
    if load >= 1.0:
        print(f"warning: load average {load:.2f} >= 1 — timings are unreliable on a busy machine",
              file=sys.stderr)
    t0 = time.monotonic()
    if args.variants:
        run_variants(run)
        return
    warm_kernels(run)
    run_tables(run)
    if "350m" in shapes and not args.no_keep:
        run_keep(run)
    if run.q4 and run.thread_counts:
        run_threads(run)
    if run.q4 and args.first_token_runs:
        run_first_token(run)
    if run.q4 and args.long:
        run_long(run)
    report(run, load, time.monotonic() - t0)


if __name__ == "__main__":
    main()
