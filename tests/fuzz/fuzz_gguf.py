"""The GGUF loader fuzzer: mutated LFM2 files in, and every case must end in success or an
lfm2q error — never a crash (a signal, e.g. SIGSEGV in a numba kernel), a hang, or another
exception.

    python tests/fuzz/fuzz_gguf.py --cases 100000            # `make fuzz`
    python tests/fuzz/fuzz_gguf.py --replay 4242 -v          # one case, with its traceback

Cases run in worker processes (NUMBA_NUM_THREADS=1; kernels from lfm2q's own numba cache,
which is keyed by a hash of the sources). A worker reports each case before and
after running it, so the parent knows which case a dead worker was running: a worker killed
by a signal is a crash, one silent for `--hang-seconds` is a hang; either way the parent
records the case and starts a new worker after it. Inside the worker a per-case alarm turns a
Python-level hang into a `hang` result at once. A case that loads is also run: logits of two
tokens, two generated tokens, a tokenize/detokenize round.

Outcomes: ok (loaded and ran), error (an Lfm2qError with a one-line message), known (a
non-lfm2q exception matching an open, reported bug — see KNOWN), other, bad-message (an
Lfm2qError whose message is not one short line), hang, crash. The JSON record (`--out`) has
the counts and one example case per distinct problem.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests/: hf_fixtures

from gguf_mutate import case_rng, load_seed, mutate  # noqa: E402

SEED_CACHE = Path(os.environ.get("LFM2Q_FUZZ_SEEDS", Path.home() / ".cache" / "lfm2q-fuzz" / "seeds-v1"))
# (file name, make_checkpoint arguments, converter type): small files, every block format family
SEED_SPECS = [
    ("t64-f32.gguf", {}, "f32"),
    ("t64-q8_0.gguf", {}, "q8_0"),
    ("t64-bf16.gguf", {}, "bf16"),
    ("t256-q4_k_m.gguf", dict(hidden_size=256, num_hidden_layers=2, attn_layers=(1,), vocab_size=320), "q4_k_m"),
    ("t256-q4_0.gguf", dict(hidden_size=256, num_hidden_layers=2, attn_layers=(1,), vocab_size=320), "q4_0"),
]
MAX_MESSAGE = 400  # characters; an error message longer than this is not "one line" to a user

# Non-lfm2q exceptions from bugs that are reported and still open, each with a strict-xfail test,
# as (exception type, text in its message, text in the innermost frames, why). None are open:
# NaN/Inf weights (ZeroDivisionError in the kernels), merges naming unknown tokens (a bare
# Exception from tokenizers) and tokens outside the byte alphabet (KeyError on decode) were
# fixed, so a regression there counts as "other".
KNOWN: list[tuple[str, str, str, str]] = []


class CaseTimeout(BaseException):
    """Raised by the per-case alarm; a BaseException so no `except Exception` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CaseTimeout in the main thread after `seconds`; restores any alarm set before."""
    def on_alarm(signum, frame):
        raise CaseTimeout()

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:  # someone else's alarm (pytest-timeout): give it back what is left
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, old_delay - (time.monotonic() - started)))


def run_case(path: Path, deep: bool, seconds: float = 10.0) -> tuple[str, str]:
    """Open `path` as lfm2q would, and use it if it opens. Returns (outcome, detail)."""
    import lfm2q
    from lfm2q.errors import Lfm2qError

    try:
        with time_limit(seconds):
            try:
                model = lfm2q.load(path, n_ctx=8)
            except Lfm2qError as e:
                msg = str(e)
                if "\n" in msg or "\r" in msg or len(msg) > MAX_MESSAGE:
                    return "bad-message", f"{type(e).__name__}: {msg[:300]!r}"
                return "error", msg
            if deep:
                V = model.config.n_vocab
                ids = [0, min(1, V - 1)]
                model.logits(ids)
                model.generate(ids, max_tokens=2)
                model.detokenize(model.tokenize("Hello, wörld <|im_end|> 123"))
            return "ok", ""
    except CaseTimeout:
        return "hang", f"over {seconds:g} s in-process"
    except Lfm2qError as e:  # from using a model that loaded: still a clean, defined error
        return "error", str(e)
    except BaseException as e:  # noqa: BLE001 — the point of a fuzzer
        frames = traceback.extract_tb(e.__traceback__)
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-4:]))
        detail = f"{type(e).__name__}: {' '.join(str(e).split())[:200]} @ {where}"
        for name, text, frame_text, why in KNOWN:
            if type(e).__name__ == name and text in str(e) and frame_text in where:
                return "known", f"[{why.split(':')[0]}] {detail}"
        return "other", detail


def signature(outcome: str, detail: str) -> str:
    """Group problems: the exception type and where it was raised, not its exact values."""
    if outcome == "known":
        return "known: " + detail[1:].partition("]")[0]
    if outcome == "other":
        kind, _, rest = detail.partition(":")
        return f"{kind} @ {rest.rpartition('@ ')[2]}"
    return outcome


# --- seeds --------------------------------------------------------------------------------------

def build_seeds(folder: Path = SEED_CACHE) -> list[Path]:
    """The seed files, converted from seeded tiny checkpoints on first use (needs torch)."""
    paths = [folder / name for name, _, _ in SEED_SPECS]
    if all(p.is_file() for p in paths):
        return paths
    from hf_fixtures import make_checkpoint
    from lfm2q.convert import convert_hf

    folder.mkdir(parents=True, exist_ok=True)
    for name, kwargs, out_type in SEED_SPECS:
        if (folder / name).is_file():
            continue
        key = "hf-" + "-".join(f"{k}{v}" for k, v in sorted(kwargs.items())) if kwargs else "hf-default"
        hf_dir = folder / key
        if not (hf_dir / "config.json").is_file():
            make_checkpoint(hf_dir, **kwargs)
        convert_hf(hf_dir, folder / name, out_type)
    return paths


# --- the worker ---------------------------------------------------------------------------------

def worker(seed_paths: list[Path], run_seed: int, cases: list[int], deep: bool, seconds: float) -> None:
    """Run `cases`, printing one JSON line before ({"start"}) and after ({"case"}) each."""
    import warnings
    warnings.simplefilter("ignore", RuntimeWarning)  # overflow/NaN in BLAS on garbage weights
    seeds = [load_seed(p) for p in seed_paths]
    scratch = Path(tempfile.mkdtemp(prefix="lfm2q-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        for case in cases:
            seed = seeds[case % len(seeds)]
            data, what = mutate(seed, case_rng(run_seed, case))
            path = scratch / f"case-{case}.gguf"
            path.write_bytes(data)
            print(json.dumps({"start": case}), flush=True)
            outcome, detail = run_case(path, deep, seconds)
            path.unlink()
            print(json.dumps({"case": case, "seed": seed.name, "what": what, "outcome": outcome,
                              "detail": detail[:300]}), flush=True)
    finally:
        for p in scratch.glob("*"):
            p.unlink()
        scratch.rmdir()


def _spawn(args: argparse.Namespace, cases: list[int]) -> subprocess.Popen:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    fd, list_file = tempfile.mkstemp(prefix="lfm2q-fuzz-cases-", suffix=".txt")  # argv is too short for 10**5
    with os.fdopen(fd, "w") as f:
        f.write(",".join(map(str, cases)))
    cmd = [sys.executable, __file__, "--worker", "--seed", str(args.seed), "--case-seconds", str(args.case_seconds),
           "--cases-file", list_file]
    if args.shallow:
        cmd.append("--shallow")
    for p in args.seed_files:
        cmd += ["--seed-file", str(p)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def run_campaign(args: argparse.Namespace, cases: list[int], on_result=None) -> dict:
    """Run `cases` over args.jobs workers, restarting a worker after a crash or hang."""
    started = time.time()
    results: dict[int, dict] = {}
    shares = [cases[i::args.jobs] for i in range(args.jobs)]
    running = {}  # pid -> [proc, remaining cases, current case, last output time, first line seen]
    for share in shares:
        if share:
            p = _spawn(args, share)
            running[p.pid] = [p, list(share), None, time.monotonic(), False]
    while running:
        fds = {entry[0].stdout.fileno(): pid for pid, entry in running.items()}
        ready, _, _ = select.select(list(fds), [], [], 1.0)
        now = time.monotonic()
        for fd in ready:
            pid = fds[fd]
            entry = running[pid]
            line = entry[0].stdout.readline()
            if line:
                entry[3], entry[4] = now, True
                msg = json.loads(line)
                if "start" in msg:
                    entry[2] = msg["start"]
                else:
                    results[msg["case"]] = msg
                    entry[1].remove(msg["case"])
                    entry[2] = None
                    if on_result:
                        on_result(msg)
                continue
            proc = entry[0]  # EOF: the worker ended
            proc.wait()
            _, err = proc.communicate()
            del running[pid]
            if proc.returncode != 0 and entry[2] is not None:
                case = entry[2]
                outcome = "crash"
                detail = f"worker died with {'signal ' + str(-proc.returncode) if proc.returncode < 0 else 'status ' + str(proc.returncode)}: {err.strip().splitlines()[-1:] if err.strip() else ''}"
                results[case] = {"case": case, "outcome": outcome, "detail": detail, "what": _describe(args, case)}
                entry[1].remove(case)
                if on_result:
                    on_result(results[case])
            elif proc.returncode != 0:  # a harness bug between cases: report it, go on after it
                print(f"fuzz worker failed outside a case:\n{err[-3000:]}", file=sys.stderr)
                if entry[1]:
                    case = entry[1].pop(0)
                    results[case] = {"case": case, "outcome": "harness-error", "detail": err.strip()[-300:],
                                     "what": ""}
            if entry[1]:
                p = _spawn(args, entry[1])
                running[p.pid] = [p, entry[1], None, time.monotonic(), False]
        for pid, entry in list(running.items()):
            limit = args.hang_seconds + (120 if not entry[4] else 0)  # first line: imports + numba cache
            if now - entry[3] > limit:
                proc = entry[0]
                proc.kill()
                proc.wait()
                del running[pid]
                case = entry[2] if entry[2] is not None else entry[1][0]
                results[case] = {"case": case, "outcome": "hang", "detail": f"no progress for {limit:.0f} s (killed)",
                                 "what": _describe(args, case)}
                entry[1].remove(case)
                if on_result:
                    on_result(results[case])
                if entry[1]:
                    p = _spawn(args, entry[1])
                    running[p.pid] = [p, entry[1], None, time.monotonic(), False]
    return summarize(args, results, time.time() - started)


def _describe(args, case: int) -> str:
    seeds = [load_seed(p) for p in args.seed_files]
    seed = seeds[case % len(seeds)]
    return f"{seed.name}: {mutate(seed, case_rng(args.seed, case))[1]}"


def summarize(args, results: dict[int, dict], seconds: float) -> dict:
    counts = Counter(r["outcome"] for r in results.values())
    problems: dict[str, dict] = {}
    for r in sorted(results.values(), key=lambda r: r["case"]):
        if r["outcome"] in ("ok", "error"):
            continue
        sig = signature(r["outcome"], r.get("detail", ""))
        p = problems.setdefault(sig, {"outcome": r["outcome"], "count": 0, "example_case": r["case"],
                                      "example": r.get("what", ""), "detail": r.get("detail", "")})
        p["count"] += 1
    errors = Counter(_error_family(r["detail"]) for r in results.values() if r["outcome"] == "error")
    return {
        "cases": len(results),
        "run_seed": args.seed,
        "deep": not args.shallow,
        "seconds": round(seconds, 1),
        "outcomes": dict(sorted(counts.items())),
        "crashes": counts.get("crash", 0),
        "hangs": counts.get("hang", 0),
        "problems": problems,
        "top_error_messages": dict(errors.most_common(25)),
        "seeds": [Path(p).name for p in args.seed_files],
        "python": platform.python_version(),
    }


def _error_family(msg: str) -> str:
    """An error message with the file path and numbers taken out, to count kinds of error."""
    import re
    msg = msg.split(": ", 1)[1] if ": " in msg else msg
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", msg)
    return re.sub(r"(?<![\w-])-?\d+(\.\d+)?(e[+-]?\d+)?(?!\w)", "N", msg)[:120]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--first", type=int, default=0, help="first case number")
    ap.add_argument("--only", help="comma-separated case numbers to run instead of a range")
    ap.add_argument("--seed", type=int, default=1, help="run seed (cases are numbered within it)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--case-seconds", type=float, default=60.0,
                    help="in-process time limit per case (a new numba specialization compiles in ~5 s)")
    ap.add_argument("--hang-seconds", type=float, default=180.0, help="silence after which a worker is killed")
    ap.add_argument("--shallow", action="store_true", help="load only; do not run loaded models")
    ap.add_argument("--out", type=Path, help="write the JSON record here")
    ap.add_argument("--seed-file", type=Path, action="append", dest="seed_files")
    ap.add_argument("--replay", type=int, help="run one case in this process and show what happened")
    ap.add_argument("--save", type=Path, help="with --replay: also write the mutated file here")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.seed_files = args.seed_files or build_seeds()

    if args.worker:
        cases_file = Path(args.cases_file)
        cases = [int(c) for c in cases_file.read_text().split(",")]
        cases_file.unlink()
        worker(args.seed_files, args.seed, cases, not args.shallow, args.case_seconds)
        return 0
    if args.replay is not None:
        seeds = [load_seed(p) for p in args.seed_files]
        seed = seeds[args.replay % len(seeds)]
        data, what = mutate(seed, case_rng(args.seed, args.replay))
        path = args.save or Path(tempfile.mkdtemp()) / f"case-{args.replay}.gguf"
        path.write_bytes(data)
        print(f"case {args.replay} ({seed.name}): {what}\nfile: {path}")
        print(run_case(path, not args.shallow, args.case_seconds))
        return 0

    cases = ([int(c) for c in args.only.split(",")] if args.only
             else list(range(args.first, args.first + args.cases)))
    done = [0]
    t0 = time.time()

    def progress(r):
        done[0] += 1
        if r["outcome"] not in ("ok", "error") or args.verbose:
            print(f"case {r['case']}: {r['outcome']} {r.get('detail', '')[:160]} [{r.get('what', '')[:100]}]",
                  file=sys.stderr)
        if done[0] % 1000 == 0:
            print(f"{done[0]}/{len(cases)} cases, {time.time() - t0:.0f} s", file=sys.stderr)

    log = open(args.out.with_suffix(".jsonl"), "w") if args.out else None

    def logged(r):
        if log and r["outcome"] not in ("ok", "error"):
            log.write(json.dumps(r) + "\n")
            log.flush()
        progress(r)

    record = run_campaign(args, cases, logged)
    if log:
        log.close()
    text = json.dumps(record, indent=2, ensure_ascii=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    bad = sum(v for k, v in record["outcomes"].items()
              if k in ("crash", "hang", "other", "bad-message", "harness-error"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
