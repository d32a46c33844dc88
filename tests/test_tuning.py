"""Kernel variants (lfm2q/tuning.py): every form gives the same bits; the tuner keeps the form it
measured faster, stores it per CPU and shape, reads it back without measuring, and obeys
LFM2Q_KERNELS."""
import numpy as np
import pytest

import lfm2q
from lfm2q import tuning
from lfm2q.errors import Lfm2qError
from lfm2q.gguf_model import Weight
from lfm2q.kernels import dispatch
from lfm2q.kernels.formats import Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0
from lfm2q.kernels.repack import packed_q4_k8
from test_intdot import weights as intdot_weights
from test_intdot_b32 import weights as b32_weights

VARIANT_FLAGS = dispatch.DECODE_ROWS | dispatch.PREFILL_ROWS


def _matrix(qtype, rows, cols, seed):
    return (b32_weights if qtype in (Q5_0, Q4_1) else intdot_weights)(qtype, rows, cols, seed=seed)


@pytest.mark.parametrize("qtype", [Q8_0, Q4_0, Q5_0, Q4_1, Q6_K, Q4_K])
def test_every_kernel_form_gives_the_same_bits(qtype):
    # 43 rows: quads, pairs and a lone row; 21 positions: quad and single calls and a tail
    rows, cols, n = (40, 512, 21) if qtype == Q4_K else (43, 512, 21)
    w = _matrix(qtype, rows, cols, seed=qtype)
    code = qtype
    if qtype == Q4_K and dispatch.SIMD_PACKS_Q4_K:
        w, code = packed_q4_k8(w), Q4_K | dispatch.PACKED8
    x = np.random.default_rng(qtype).standard_normal((n, cols)).astype(np.float32)
    outs = []
    for flags in (0, dispatch.DECODE_ROWS, dispatch.PREFILL_ROWS, VARIANT_FLAGS):
        one = np.full(rows, np.nan, np.float32)
        dispatch.matvec(w, code | flags, x[0], one)
        many = np.full((n, rows), np.nan, np.float32)
        dispatch.matmul(w, code | flags, x, many)
        outs.append((one, many))
    for one, many in outs[1:]:
        np.testing.assert_array_equal(one, outs[0][0])
        np.testing.assert_array_equal(many, outs[0][1])
    np.testing.assert_array_equal(outs[0][1][0], outs[0][0])  # prefill's first position is decode's


def _weight(qtype=Q8_0, rows=1024, cols=256):  # 272 KiB: over PARALLEL_MIN_BYTES, so it is tuned
    raw = _matrix(qtype, rows, cols, seed=1)
    return Weight("blk.0.ffn_up.weight", qtype, rows, cols, raw)


@pytest.fixture
def store(tmp_path, monkeypatch):
    import numba

    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LFM2Q_KERNELS", raising=False)
    monkeypatch.setattr(tuning, "variants", lambda code: ["decode", "prefill"])  # on any CPU
    calls = []

    def fake_measure(w, ops, kinds, peers=()):  # decode: rows faster; prefill: groups faster
        calls.append((w.rows, tuple(ops)))
        t = {"decode": {"groups": 2e-6, "rows": 1e-6}, "prefill": {"groups": 1e-4, "rows": 3e-4}}
        return {op: t[op] for op in ops}

    monkeypatch.setattr(tuning, "measure", fake_measure)
    return tmp_path, calls


def test_the_tuner_keeps_the_faster_form_and_stores_it(store):
    path, calls = store
    w = _weight()
    t = tuning.Tuner(threads=2)
    got = t.apply(w)
    assert got.kernel == Q8_0 | dispatch.DECODE_ROWS  # rows for decode, groups for prefill
    assert calls == [(1024, ("decode", "prefill"))] and t.measured == 1
    assert t.apply(_weight()).kernel == got.kernel and len(calls) == 1  # the same shape: no second measure
    t.save()
    assert (path / "tuning.json").is_file()
    again = tuning.Tuner(threads=2)
    assert again.apply(w).kernel == got.kernel and again.measured == 0 and len(calls) == 1  # read back
    assert tuning.Tuner(threads=1).apply(w).kernel == got.kernel and len(calls) == 2  # per thread count
    assert tuning.Tuner(threads=2, retune=True).apply(w).kernel == got.kernel and len(calls) == 3
    only_decode = tuning.Tuner(threads=3).apply(w, ops=("decode",))  # the LM head decodes only
    assert only_decode.kernel == Q8_0 | dispatch.DECODE_ROWS and calls[-1] == (1024, ("decode",))
    # a flagged weight is tuned from its base code
    assert tuning.Tuner(threads=2).apply(got).kernel == got.kernel


def test_forms_within_noise_keep_the_default(store):
    c = tuning.Choice("k", {"decode": {"groups": 1.00e-6, "rows": 0.97e-6}})
    assert c.pick("decode") == "groups" and c.flags() == 0
    c = tuning.Choice("k", {"decode": {"groups": 1.00e-6, "rows": 0.90e-6}})
    assert c.pick("decode") == "rows" and c.flags() == dispatch.DECODE_ROWS


def test_lfm2q_kernels_forces_a_form_and_rejects_a_bad_one(store, monkeypatch):
    _, calls = store
    monkeypatch.setenv("LFM2Q_KERNELS", "decode=groups, prefill=rows")
    assert tuning.Tuner(threads=2).apply(_weight()).kernel == Q8_0 | dispatch.PREFILL_ROWS
    assert calls == []  # both forced: nothing measured
    monkeypatch.setenv("LFM2Q_KERNELS", "prefill=rows")
    assert tuning.Tuner(threads=2).apply(_weight()).kernel == Q8_0 | dispatch.DECODE_ROWS | dispatch.PREFILL_ROWS
    assert calls == [(1024, ("decode",))]
    monkeypatch.setenv("LFM2Q_KERNELS", "decode=fast")
    with pytest.raises(Lfm2qError, match="LFM2Q_KERNELS: bad entry 'decode=fast'"):
        tuning.Tuner(threads=2)


def test_a_model_gives_the_same_logits_with_every_form_forced(monkeypatch):
    prompt = list(range(1, 30))
    logits = []
    for forced in ("decode=groups,prefill=groups", "decode=rows,prefill=rows"):
        monkeypatch.setenv("LFM2Q_KERNELS", forced)
        m = lfm2q.load(lfm2q.builtin_model_path(), n_ctx=128, n_threads=2)
        s = m.session()
        first = s.eval(prompt)  # a prompt chunk: prefill
        logits.append((first, s.eval([5])))  # then a decode step
    np.testing.assert_array_equal(logits[0][0], logits[1][0])
    np.testing.assert_array_equal(logits[0][1], logits[1][1])


def test_lfm2q_tune_prints_the_picks(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lfm2q.cli import app

    monkeypatch.delenv("LFM2Q_KERNELS", raising=False)
    r = CliRunner().invoke(app, ["tune"])
    assert r.exit_code == 0, r.output
    if dispatch.simd.WIDE_FORMS:  # a CPU with two forms: one row per matrix and op, with its pick
        lines = [ln for ln in r.output.splitlines() if ln.split()[:1] in (["Q5_0"], ["Q8_0"], ["Q4_K"], ["Q6_K"])]
        assert lines and all(ln.split()[-1] in ("groups", "rows") for ln in lines), r.output
        info = CliRunner().invoke(app, ["info"])
        assert "tuned" in info.output  # info shows the stored picks
    else:
        assert "nothing to choose" in r.output
