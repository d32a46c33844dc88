"""Activation rounding (kernels/actquant.py): the numba quantizers against the NumPy oracle,
bit for bit, on ordinary and hard blocks, and the integer form against the float form."""
import numpy as np
import pytest

from lfm2q.kernels.actquant import (ACT_F32, ACT_Q8_0, ACT_Q8_K, act_of, quantize_q8_0,
                                    quantize_q8_k, round_activation_rows, round_activations,
                                    round_activations_np)
from lfm2q.kernels.formats import F16, F32, BF16, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0


def hard_vectors(n: int) -> list[np.ndarray]:
    """Blocks that stress the rounding: zeros, constants, one outlier, tiny values, exact .5
    ties after scaling, negative and positive extremes, mixed magnitudes."""
    rng = np.random.default_rng(n)
    ties = (np.arange(n) % 255 - 127).astype(np.float32) / 2  # k/2 steps: many exact .5 ties
    out = [rng.standard_normal(n).astype(np.float32),
           (rng.standard_normal(n) * np.exp(3 * rng.standard_normal(n))).astype(np.float32),
           np.zeros(n, np.float32), np.full(n, -0.75, np.float32), ties, -ties,
           np.float32(1e-30) * rng.standard_normal(n).astype(np.float32)]
    spike = rng.standard_normal(n).astype(np.float32) * 1e-3
    spike[n // 3] = 1e4
    out.append(spike)
    return out


@pytest.mark.parametrize("act", [ACT_Q8_0, ACT_Q8_K], ids=["q8_0", "q8_K"])
@pytest.mark.parametrize("n", [256, 1024, 4608])
def test_float_form_equals_numpy_oracle(act, n):
    for x in hard_vectors(n):
        got = np.empty_like(x)
        round_activations(x, act, got)
        np.testing.assert_array_equal(got, round_activations_np(x, act))


def test_integer_forms_are_the_float_form():
    for x in hard_vectors(1024):
        xq, xd = np.empty(1024, np.int8), np.empty(32, np.float32)
        quantize_q8_0(x, xq, xd)
        assert np.abs(xq.astype(int)).max() <= 127
        np.testing.assert_array_equal(np.repeat(xd, 32) * xq, round_activations_np(x, ACT_Q8_0))
        xq, xd, bsum = np.empty(1024, np.int8), np.empty(4, np.float32), np.empty(64, np.int16)
        quantize_q8_k(x, xq, xd, bsum)
        assert np.abs(xq.astype(int)).max() <= 127
        np.testing.assert_array_equal(np.repeat(xd, 256) * xq, round_activations_np(x, ACT_Q8_K))
        np.testing.assert_array_equal(bsum, xq.astype(np.int32).reshape(-1, 16).sum(1))


def test_q8_k_follows_the_signed_extreme_and_q8_0_rounds_half_to_even():
    x = np.zeros(256, np.float32)
    x[:3] = [-2.0, 1.0, 0.5]                     # extreme is negative: iscale = -127 / -2
    xq, xd, bsum = np.empty(256, np.int8), np.empty(1, np.float32), np.empty(16, np.int16)
    quantize_q8_k(x, xq, xd, bsum)
    assert xq[:3].tolist() == [-127, 64, 32]     # 63.5 and 31.75: half to even, then nearest
    assert xd[0] == np.float32(1) / np.float32(63.5)
    x = np.zeros(32, np.float32)
    x[:4] = [127.0, 0.5, 1.5, -2.5]              # id = 1: exact ties
    xq, xd = np.empty(32, np.int8), np.empty(1, np.float32)
    quantize_q8_0(x, xq, xd)
    assert xq[:4].tolist() == [127, 0, 2, -2] and xd[0] == 1.0


def test_nan_or_inf_makes_the_block_scale_nan():
    for bad in (np.nan, np.inf):
        x = np.ones(512, np.float32)
        x[300] = bad
        out = np.empty_like(x)
        for act, block in ((ACT_Q8_0, slice(288, 320)), (ACT_Q8_K, slice(256, 512))):
            round_activations(x, act, out)
            nan = np.zeros(512, bool)
            nan[block] = True
            assert np.isnan(out[nan]).all() and np.isfinite(out[~nan]).all()


def test_rows_are_rounded_independently():
    x = (np.random.default_rng(3).standard_normal((5, 512)) * np.arange(1, 6)[:, None]).astype(np.float32)
    out = np.empty_like(x)
    round_activation_rows(x, ACT_Q8_K, out)
    np.testing.assert_array_equal(out, round_activations_np(x, ACT_Q8_K))


def test_each_weight_type_gets_llama_cpps_vec_dot_type():
    assert all(act_of(t) == ACT_Q8_K for t in (Q4_K, Q5_K, Q6_K))
    assert all(act_of(t) == ACT_Q8_0 for t in (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1))
    assert all(act_of(t) == ACT_F32 for t in (F32, F16, BF16))


def test_nan_activation_reaches_the_output_through_every_matvec_path():
    # The integer paths quantize x inside matvec, which is compiled with fastmath: the NaN
    # check must survive there too (a fresh process compiles matvec before anything else).
    import subprocess
    import sys
    code = """
import numpy as np
from gguf import GGMLQuantizationType as T
from lfm2q.convert.quantize import quantize
from lfm2q.kernels import matvec
x = np.ones(512, np.float32); x[5] = np.nan
for t in (T.Q4_K, T.Q6_K, T.Q8_0, T.Q4_0):
    w = quantize(np.ones((4, 512), np.float32), t).view(np.uint8).reshape(4, -1)
    out = np.zeros(4, np.float32)
    matvec(w, int(t), x, out)
    assert np.isnan(out).all(), (t, out)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]
