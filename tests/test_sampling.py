"""The sampler against a plain reference computation of each step of the chain."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from lfm2q.errors import GenerationError
from lfm2q.sampling import REPEAT_LAST_N, Sampler, SamplingParams


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def reference(logits, recent, p: SamplingParams) -> dict[int, float]:
    """penalties → top_k → top_p → min_p → temperature, written out over the full vocabulary."""
    x = logits.copy()  # float32, as the sampler penalizes
    for i in set(int(t) for t in recent[-REPEAT_LAST_N:]):
        x[i] = x[i] / np.float32(p.repetition_penalty) if x[i] > 0 else x[i] * np.float32(p.repetition_penalty)
    x = x.astype(np.float64)
    if p.temperature == 0:
        return {int(np.argmax(x)): 1.0}
    keep = sorted(range(len(x)), key=lambda i: (-x[i], i))  # most likely first
    if p.top_k:
        keep = keep[: p.top_k]
    if p.top_p < 1.0:
        cum = np.cumsum(softmax(x[keep]))
        n = next((j + 1 for j, c in enumerate(cum) if c >= p.top_p), len(keep))
        keep = keep[:n]
    if p.min_p > 0.0:
        probs = softmax(x[keep])
        keep = [i for i, q in zip(keep, probs) if q >= p.min_p * probs.max()]
    probs = softmax(x[keep] / p.temperature)
    return dict(zip(keep, probs))


def logits_for(V, seed, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(V) * scale).astype(np.float32)


CASES = [
    SamplingParams(),  # greedy
    SamplingParams(repetition_penalty=1.3),  # greedy, penalized
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.5, repetition_penalty=0.8),  # < 1 rewards repeats
    SamplingParams(temperature=0.8, top_k=1),
    SamplingParams(temperature=0.8, top_k=17),
    SamplingParams(temperature=0.8, top_p=0.3),
    SamplingParams(temperature=0.8, top_p=0.97),
    SamplingParams(temperature=0.8, min_p=0.1),
    SamplingParams(temperature=0.8, min_p=1.0),
    SamplingParams(temperature=0.3, min_p=0.15, repetition_penalty=1.05),  # LFM2 card defaults
    SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1),
    SamplingParams(temperature=2.0, top_k=500, top_p=0.5),
    SamplingParams(temperature=1.0, top_p=0.6, min_p=0.02),
]


@pytest.mark.parametrize("V,scale", [(300, 3.0), (20000, 3.0), (20000, 0.2), (20000, 12.0)])
@pytest.mark.parametrize("p", CASES, ids=repr)
def test_distribution_matches_reference(p, V, scale):
    logits = logits_for(V, V, scale)
    recent = list(np.random.default_rng(1).integers(0, V, 100)) + [int(np.argmax(logits))]
    want = reference(logits, recent, p)
    ids, probs = Sampler(p).distribution(logits, recent)
    got = dict(zip(ids.tolist(), probs.tolist()))
    assert set(got) == set(want)
    np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-5, atol=1e-9)  # float32 weights when unfiltered


def test_repetition_penalty_window_and_signs():
    logits = np.array([2.0, -2.0, 1.0, 3.0, 0.0], dtype=np.float32)
    p = SamplingParams(temperature=1.0, repetition_penalty=2.0)
    ids, probs = Sampler(p).distribution(logits, [0, 1, 0, 0])  # id 0 counted once
    got = dict(zip(ids.tolist(), probs.tolist()))
    want = softmax(np.array([1.0, -4.0, 1.0, 3.0, 0.0]))
    np.testing.assert_allclose([got[i] for i in range(5)], want, rtol=1e-6)
    # only the last REPEAT_LAST_N ids count
    recent = [3] + [4] * REPEAT_LAST_N
    assert Sampler(SamplingParams(repetition_penalty=10.0)).sample(logits, recent) == 3
    assert Sampler(SamplingParams(repetition_penalty=10.0)).sample(logits, recent[1:] + [3]) == 0
    assert logits.tolist() == [2.0, -2.0, 1.0, 3.0, 0.0]  # the caller's logits are untouched


def test_greedy_is_argmax_and_first_of_ties():
    logits = np.array([0.0, 5.0, 5.0, 1.0], dtype=np.float32)
    assert Sampler(SamplingParams()).sample(logits, [9, 9]) == 1


def test_draws_follow_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    s = Sampler(SamplingParams(temperature=1.0, seed=123))
    draws = np.bincount([s.sample(logits, []) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(draws, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=5))  # keeps ids 0 and 1
    draws = np.bincount([s.sample(logits, []) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(draws, [0.625, 0.375, 0, 0], atol=0.015)


@pytest.mark.parametrize("p", [SamplingParams(temperature=0.9, seed=7), SamplingParams(temperature=0.9, top_p=0.9, min_p=0.01, seed=7)])
def test_seeded_reproducibility(p):
    V = 5000
    logits = [logits_for(V, i, 1.0) for i in range(50)]
    s1, s2 = Sampler(p), Sampler(p)
    a = [s1.sample(x, [1, 2]) for x in logits]
    b = [s2.sample(x, [1, 2]) for x in logits]
    assert a == b
    other = Sampler(SamplingParams(temperature=0.9, top_p=p.top_p, min_p=p.min_p, seed=8))
    assert [other.sample(x, [1, 2]) for x in logits] != a


def test_hot_path_allocates_little():
    V = 65536
    logits = logits_for(V, 0)
    recent = list(range(0, 6400, 100))
    for p in CASES:
        s = Sampler(p)
        s.sample(logits, recent)  # scratch buffers are made on the first call
        tracemalloc.start()
        s.sample(logits, recent)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= 5 * V * 4, (p, peak)


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"temperature": -0.1}, "temperature=-0.1"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"min_p": -0.1}, "min_p=-0.1"),
        ({"min_p": 1.1}, "min_p=1.1"),
        ({"top_k": -1}, "top_k=-1"),
        ({"top_k": 2.5}, "top_k=2.5"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0"),
        ({"repetition_penalty": -1.0}, "repetition_penalty=-1.0"),
        ({"seed": -3}, "seed=-3"),
    ],
)
def test_validation_names_the_value(kw, name):
    with pytest.raises(GenerationError, match=name.replace("(", r"\(")) as e:
        SamplingParams(**kw)
    assert "\n" not in str(e.value)
