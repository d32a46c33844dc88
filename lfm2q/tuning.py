"""Kernel variants chosen by measuring them on this CPU, on the opened model's own matrices.

Feature flags alone pick badly across CPUs: on an AMD Zen 4 (double-pumped 512-bit units) the
512-bit Q8_0 decode pairs ran at 0.6x the AVX2 rows, while on a Xeon and a Zen 5 they win. So
where a backend has two forms of a kernel, both compiled anyway, the first load of a model
times each on every distinct matrix shape and type the model has, and keeps the faster:

    decode   "groups": rows in the backend's pairs / quads (512-bit with AVX-512 VNNI)
             "rows":   row by row (the AVX2 kernels)           -> kernel flag DECODE_ROWS
    prefill  "groups": 512-bit row pairs / quads / packed group pairs
             "rows":   row by row, group by group              -> kernel flag PREFILL_ROWS

Every variant gives the same bits (tests/test_tuning.py): only the time differs. A choice is
stored in `tuning.json` next to numba's cache (whose folder is named by lfm2q's sources, so an
upgrade measures again), keyed by CPU name, features, thread count, type and shape; later loads
read it and measure nothing. Measuring costs ~0.1-1 s on the first load (a few shapes, a few
ms each). `LFM2Q_KERNELS=decode=rows,prefill=groups` forces a choice (benchmarks, tests);
`lfm2q tune MODEL` measures again and prints the table.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import Lfm2qError
from .kernels import dispatch
from .kernels.formats import Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q6_K, Q8_0, type_name
from .kernels.isa import describe

OPS = {"decode": dispatch.DECODE_ROWS, "prefill": dispatch.PREFILL_ROWS}
CHOICES = ("groups", "rows")
PREFILL_POSITIONS = 32  # a prompt chunk's worth: every prefill form runs at least once
BUDGET_S = 0.02  # time per variant and shape, at most (after one warm-up call)
MARGIN = 0.95  # rows must take under this share of the groups' time to be picked


def variants(code: int) -> list[str]:
    """The ops whose two forms differ for a matrix of this kernel code on this backend."""
    qtype, out = code & 255, []
    if not (dispatch.simd.WIDE_FORMS and dispatch.integer_decode(code)):
        return out  # (elsewhere the grouped forms are the row kernels in a loop: nothing to choose)
    if ((dispatch.Q8_0_DECODE_PAIRS and qtype == Q8_0)
            or (dispatch.B32_DECODE_QUADS and qtype in (Q4_0, Q5_0)
                and not code & (dispatch.PACKED4 | dispatch.PACKED4X8))):
        out.append("decode")
    if dispatch.integer_prefill(code) and (
            code & dispatch.PACKED8 or qtype in (Q8_0, Q6_K, Q5_0, Q4_1, Q5_1)
            or (qtype == Q4_0 and not code & (dispatch.PACKED4 | dispatch.PACKED4X8))):
        out.append("prefill")
    return out


@dataclass
class Choice:
    """One matrix shape's measurement: seconds per call of each form, per op."""
    key: str
    times: dict = field(default_factory=dict)  # op -> {choice: seconds}

    def pick(self, op: str) -> str:
        """The faster form; "rows" only when clearly faster (MARGIN): forms within noise of
        each other keep the default, the backend's groups."""
        t = self.times[op]
        return "rows" if t["rows"] < MARGIN * t["groups"] else "groups"

    def flags(self) -> int:
        return sum(OPS[op] for op in self.times if self.pick(op) == "rows")


def forced() -> dict[str, str]:
    """LFM2Q_KERNELS, parsed: op -> choice. A bad value is a one-line error."""
    text = os.environ.get("LFM2Q_KERNELS", "").strip()
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        op, _, choice = part.partition("=")
        if op not in OPS or choice not in CHOICES:
            raise Lfm2qError(f"LFM2Q_KERNELS: bad entry {part!r}; use decode=groups|rows and/or "
                             "prefill=groups|rows, comma-separated")
        out[op] = choice
    return out


def _shape_key(qtype: int, rows: int, cols: int, threads: int) -> str:  # a store key, but its code
    d = describe()
    return f"{d['cpu']}|{','.join(d['features'])}|threads={threads}|{type_name(qtype)}|{rows}x{cols}|"


def _key(w, threads: int) -> str:
    return _shape_key(w.qtype, w.rows, w.cols, threads) + f"code={w.kernel}"


def store_path() -> Path:
    import numba

    return Path(numba.config.CACHE_DIR) / "tuning.json"


def _read_store() -> dict:
    try:
        return json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_store(data: dict) -> None:
    path = store_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the choice is measured again next time, nothing breaks


def _seconds(fn) -> float:
    """Seconds per call of fn: the median of the fastest half of the calls within BUDGET_S
    after a warm-up call (a call that met another process's burst, or a thread descheduled at a
    barrier, is not the kernel's speed)."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < BUDGET_S and len(times) < 50):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times[:max(1, len(times) // 2)])


def measure(w, ops: list[str], kinds, peers=()) -> dict:
    """Seconds per call of each form of each op on matrix w (its real bytes, random input).
    Decode is timed over w and its peers (the model's other matrices of its type and shape),
    one after another, as a decode step streams them: one matrix alone stays in the cache, where
    the 512-bit Q8_0 pairs won, while a whole model's step from memory ran faster in rows
    (350M Q8_0 on an AMD Zen 5: 63 against 84 tok/s)."""
    raws = [w.raw] + [p for p in peers if p is not w.raw]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(w.cols).astype(np.float32)
    out = np.empty(w.rows, np.float32)
    xs = rng.standard_normal((PREFILL_POSITIONS, w.cols)).astype(np.float32)
    outs = np.empty((PREFILL_POSITIONS, w.rows), np.float32)

    def form(op: str, choice: str):  # one call of op in this form: seconds are per matrix
        code = w.kernel | (OPS[op] if choice == "rows" else 0)
        if op == "decode":
            return lambda: [dispatch.matvec(raw, code, x, out, kinds) for raw in raws]
        return lambda: dispatch.matmul(w.raw, code, xs, outs)

    times = {}
    for op in ops:
        per_call = len(raws) if op == "decode" else 1
        t = {c: [] for c in CHOICES}
        for _ in range(2):  # alternate the forms, twice, so that a burst of other load hits both
            for c in CHOICES:
                t[c].append(_seconds(form(op, c)) / per_call)
        times[op] = {c: min(v) for c, v in t.items()}
    return times


@dataclass
class Tuner:
    """Chooses the variant flags of a model's matrices (Weights calls `apply` on each)."""
    threads: int
    kinds: tuple = dispatch.ALL_KINDS
    retune: bool = False  # measure even where a stored choice exists (`lfm2q tune`)
    choices: dict = field(default_factory=dict)  # key -> Choice, for the table
    measured: int = 0  # shapes measured by this tuner (0 when every choice came from the store)

    def __post_init__(self):
        self.force = forced()
        self.store = _read_store()
        self._dirty = False

    def apply(self, w, ops=("decode", "prefill"), peers=()):
        """w with its kernel code's variant flags set (w itself where nothing varies); `ops`:
        the ops the model runs it in (the LM head only decodes: one position a prompt)."""
        base = w.kernel & ~(dispatch.DECODE_ROWS | dispatch.PREFILL_ROWS)
        if base != w.kernel:
            w = replace(w, kernel=base)
        ops = [op for op in variants(w.kernel) if op in ops]
        if not ops or w.raw.nbytes < dispatch.PARALLEL_MIN_BYTES:
            return w  # a small matrix decodes on one thread, row by row, whatever the flags
        todo = [op for op in ops if op not in self.force]
        key = _key(w, self.threads)
        choice = self.choices.get(key)
        if choice is None and todo:
            saved = None if self.retune else self.store.get(key)
            if saved is not None and set(todo) <= set(saved):
                choice = Choice(key, {op: saved[op] for op in todo})
            else:
                with dispatch.single_threaded_blas():
                    choice = Choice(key, measure(w, todo, self.kinds, peers))
                self.store[key] = choice.times
                self._dirty = True
                self.measured += 1
            self.choices[key] = choice
        flags = choice.flags() if choice is not None else 0
        for op, c in self.force.items():
            if op in ops:
                flags = (flags & ~OPS[op]) | (OPS[op] if c == "rows" else 0)
        return w if flags == 0 else replace(w, kernel=w.kernel | flags)

    def save(self) -> None:
        if self._dirty:
            _write_store(self.store)
            self._dirty = False

    def table(self) -> list[tuple[str, str, float, float, str]]:
        """(shape, op, groups seconds, rows seconds, pick) per measured or stored choice."""
        rows = []
        for key, ch in self.choices.items():
            shape = "|".join(key.split("|")[3:5])
            for op in ch.times:
                rows.append((shape, op, ch.times[op]["groups"], ch.times[op]["rows"], ch.pick(op)))
        return rows


def stored_picks(shapes, threads: int) -> dict:
    """(qtype, rows, cols) -> the stored choice (op -> pick) on this CPU from any earlier load
    (`lfm2q info`), for each of these shapes that has one."""
    store, out = _read_store(), {}
    for shape in shapes:
        head = _shape_key(*shape, threads)
        for key, times in store.items():
            if key.startswith(head):
                out[shape] = {op: Choice(key, times).pick(op) for op in times}
                break
    return out
