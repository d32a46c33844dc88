"""The server's overhead: decode tokens/s streamed through `lfm2q serve` against `Model.generate`, in one run.

`lfm2q serve` runs as users run it (a subprocess on a free loopback port); this process streams
/v1/completions from it with httpx. The same greedy generation through the Python API runs in a
subprocess of its own, in a worker thread as the server's engine runs the model
(lfm2q/server/engine.py). Both time the decode only: from the first token to the last, over the
tokens after the first (the prompt is evaluated before either clock starts). Each round starts
both processes anew, alternating which goes first: on the virtual machines here the same code's
decode speed differs by up to 40% from one process to the next (where its weights landed in
memory), so one long-lived process per side measured that luck, not the server. Median of
--rounds rounds.

    .venv/bin/python benchmarks/bench_server.py [--model PATH] [--350m] [--tokens 256] [--rounds 5] [--threads N]

--350m builds (once, cached) the LFM2-350M-shape random checkpoint of bench_350m.py and converts
it to Q4_K_M.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time, in a small town by the river,"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_350m() -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_350m import CACHE, build_checkpoint

    from lfm2q.convert import convert_hf

    hf_dir = CACHE / "lfm2-350m-random"
    build_checkpoint(hf_dir)
    path = CACHE / "lfm2-350m-random-q4_k_m.gguf"
    if not path.exists():
        convert_hf(hf_dir, path, "q4_k_m", progress=True)
    return path


def through_server(base: str, n: int) -> tuple[float, int]:
    body = {"prompt": PROMPT, "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    first = last = None
    tokens = 0
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                now = time.perf_counter()
                first = first or now
                last = now
    return (tokens - 1) / (last - first), tokens


def through_api(model, n: int) -> tuple[float, int]:
    from lfm2q.conversation import CHAT_SAMPLING
    from lfm2q.generate import generate_stream
    import dataclasses

    sampling = dataclasses.replace(CHAT_SAMPLING, temperature=0.0)  # what the server uses for temperature 0
    first = last = None
    result = None
    for step in generate_stream(model.session(), model.tokenizer, model.tokenize(PROMPT), max_tokens=n,
                                sampling=sampling):
        if step.result is not None:
            result = step.result
        elif step.text:
            now = time.perf_counter()
            first = first or now
            last = now
    return (result.n_generated - 1) / (last - first), result.n_generated


def in_thread(fn, *args):
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join()
    return out[0]


def api_worker(path: Path, n: int, threads: int | None) -> None:
    """One API measurement in this (fresh) process: prints tok/s and the tokens generated."""
    import lfm2q

    model = lfm2q.load(path, n_ctx=2048, n_threads=threads)
    in_thread(through_api, model, 8)  # warm-up: kernels compiled or loaded
    rate, tokens = in_thread(through_api, model, n)
    print(json.dumps([rate, tokens]))


def through_api_process(path: Path, n: int, threads: int | None) -> tuple[float, int]:
    cmd = [sys.executable, __file__, "--api-worker", str(path), "--tokens", str(n)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rate, tokens = json.loads(out.strip().splitlines()[-1])
    return rate, tokens


def through_server_process(path: Path, n: int, threads: int | None) -> tuple[float, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "lfm2q", "serve", str(path), "--port", str(port), "--ctx", "2048"]
    if threads:
        cmd += ["--threads", str(threads)]
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        through_server(base, 8)  # warm-up
        return through_server(base, n)
    finally:
        server.terminate()
        server.wait(timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: the built-in model)")
    ap.add_argument("--350m", dest="m350", action="store_true", help="the LFM2-350M-shape Q4_K_M file")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--api-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.api_worker:
        api_worker(args.api_worker, args.tokens, args.threads)
        return

    import lfm2q

    path = model_350m() if args.m350 else (args.model or lfm2q.builtin_model_path())
    srv, api = [], []
    for r in range(args.rounds):
        sides = [("srv", through_server_process), ("api", through_api_process)]
        for name, fn in (sides if r % 2 == 0 else sides[::-1]):
            rate, tokens = fn(path, args.tokens, args.threads)
            (srv if name == "srv" else api).append((rate, tokens))
        assert srv[-1][1] == api[-1][1], (srv[-1], api[-1])  # greedy: the same tokens both ways
        print(f"round {r + 1}: serve {srv[-1][0]:.1f} tok/s, Model.generate {api[-1][0]:.1f} tok/s", flush=True)
    s, a = statistics.median(x for x, _ in srv), statistics.median(x for x, _ in api)
    ratios = sorted(x / y for (x, _), (y, _) in zip(srv, api))
    print(f"model: {Path(path).name} · {srv[-1][1]} tokens per run · median of {args.rounds} rounds · "
          f"threads {args.threads or 'default'} · {os.cpu_count()} CPUs · load average {os.getloadavg()[0]:.1f}")
    print(f"Model.generate                 {a:8.1f} tok/s")
    print(f"lfm2q serve (stream, httpx)    {s:8.1f} tok/s")
    print(f"ratio of the medians           {s / a:8.3f}x  (goal >= 0.95x)")
    print("ratio per round                " + " ".join(f"{x:.3f}" for x in ratios))


if __name__ == "__main__":
    main()
