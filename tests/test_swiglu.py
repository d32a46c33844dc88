"""SwiGLU's exp (ggml_expf, one lane of ggml_v_expf) and silu_mul against NumPy's float64 exp,
and silu_mul's fast path (every |x| <= 87) against the full function, bit for bit."""
import numpy as np
from numba import njit

from lfm2q import blocks


@njit
def _expf_all(xs, out):
    for i in range(xs.shape[0]):
        out[i] = blocks.ggml_expf(xs[i])


def _ulps(a, b):  # distance in units in the last place between f32 arrays of one sign
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def test_ggml_expf_is_within_2_ulp_of_exp_and_saturates_outside_the_f32_range():
    xs = np.concatenate([np.linspace(-87.3, 88.7, 400_001), np.linspace(-1, 1, 10_001)]).astype(np.float32)
    got = np.empty_like(xs)
    _expf_all(xs, got)
    want = np.exp(xs.astype(np.float64)).astype(np.float32)
    assert _ulps(got, want).max() <= 2
    edges = np.array([89.0, 100.0, 300.0, np.inf, -104.0, -300.0, -np.inf], np.float32)
    out = np.empty_like(edges)
    _expf_all(edges, out)
    np.testing.assert_array_equal(out, [np.inf] * 4 + [0.0] * 3)


def test_silu_mul_matches_numpy_and_its_fast_path_gives_the_full_paths_bits():
    rng = np.random.default_rng(0)
    g = (rng.standard_normal((3, 4096)) * 20).clip(-87, 87).astype(np.float32)
    u = rng.standard_normal((3, 4096)).astype(np.float32)
    g[1, 7] = 90.0    # row 1 takes the full path (some |x| > 87), rows 0 and 2 the fast one
    g[2, 9] = -87.0   # the edge of the fast path
    out = g.copy()
    blocks.silu_mul_rows(out, u)
    x = g.astype(np.float64)
    want = x / (1 + np.exp(-x)) * u
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-30)
    # The same values through the full path: row 0 again with one |x| > 87 appended.
    row = np.append(g[0], np.float32(-95.0))
    full = row.copy()
    blocks.silu_mul(full, np.append(u[0], np.float32(1.0)))
    np.testing.assert_array_equal(full[:-1].view(np.uint32), out[0].view(np.uint32))
    nan_row = g[0].copy()
    nan_row[3] = np.nan
    blocks.silu_mul(nan_row, u[0].copy())
    assert np.isnan(nan_row[3]) and np.array_equal(np.delete(nan_row, 3), np.delete(out[0], 3))
