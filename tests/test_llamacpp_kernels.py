"""lfm2q's integer kernels against llama.cpp's own compiled ones (`make test-llamacpp`): the
vec_dot functions and activation quantizers of llama-cpp-python's libggml-cpu, called through
ctypes on the same bytes. Q5_0 x Q8_0, Q4_1 / Q5_1 x Q8_1: the activations (quants, scales,
Q8_1's fp16 block sums) byte for byte, the products bit for bit, where lfm2q's backend runs
these types in integers (x86)."""
import ctypes
from pathlib import Path

import numpy as np
import pytest

from lfm2q.kernels import dispatch
from lfm2q.kernels.formats import Q4_1, Q5_0, Q5_1
from test_intdot_b32 import TYPES, edge_vectors, edge_weights, q8

pytestmark = [pytest.mark.llamacpp,
              pytest.mark.skipif(not dispatch.Q4_1_Q5_INTEGER, reason="these types run float kernels here")]

VEC_DOT = {Q5_0: "ggml_vec_dot_q5_0_q8_0", Q4_1: "ggml_vec_dot_q4_1_q8_1", Q5_1: "ggml_vec_dot_q5_1_q8_1"}


@pytest.fixture(scope="module")
def ggml():
    try:
        import llama_cpp
    except ImportError:
        pytest.fail("llama-cpp-python is not installed — `make test-llamacpp` installs it")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
    lib.ggml_cpu_init()  # its fp16 tables
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in ("quantize_row_q8_0", "quantize_row_q8_1"):
        getattr(lib, name).argtypes = [p, p, i64]
    for name in VEC_DOT.values():
        getattr(lib, name).argtypes = [ctypes.c_int, p, ctypes.c_size_t, p, ctypes.c_size_t, p, ctypes.c_size_t, ctypes.c_int]
    return lib


def ggml_activations(lib, qtype, x):  # block_q8_0 (fp16 d, 32 int8) or block_q8_1 (fp16 d, fp16 s, 32 int8)
    q8_1 = qtype != Q5_0
    y = np.zeros(x.shape[0] // 32 * (36 if q8_1 else 34), np.uint8)
    (lib.quantize_row_q8_1 if q8_1 else lib.quantize_row_q8_0)(x.ctypes.data, y.ctypes.data, x.shape[0])
    return y


@pytest.mark.parametrize("qtype", TYPES, ids=TYPES.values())
def test_activations_and_products_equal_llamacpps(ggml, qtype):
    for cols in (128, 1024):
        for wname, w in edge_weights(qtype, 9, cols).items():
            for xname, x in edge_vectors(cols).items():
                y = ggml_activations(ggml, qtype, x)
                xq, xd, xs = q8(qtype, x)
                blocks = y.reshape(cols // 32, -1)
                q_at = 2 if qtype == Q5_0 else 4
                np.testing.assert_array_equal(blocks[:, q_at:].view(np.int8).reshape(-1), xq)
                np.testing.assert_array_equal(blocks[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32), xd)
                if qtype != Q5_0:
                    np.testing.assert_array_equal(blocks[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32), xs)
                s = np.zeros(1, np.float32)
                want = []
                for r in range(w.shape[0]):
                    row = np.ascontiguousarray(w[r])
                    getattr(ggml, VEC_DOT[qtype])(cols, s.ctypes.data, 0, row.ctypes.data, 0, y.ctypes.data, 0, 1)
                    want.append(s[0])
                got = np.full(w.shape[0], np.nan, np.float32)
                dispatch.matvec(w, qtype, x, got)
                np.testing.assert_array_equal(got, np.array(want, np.float32), err_msg=f"{cols} {wname} x {xname}")
                pre = np.full((1, w.shape[0]), np.nan, np.float32)
                dispatch.matmul(w, qtype, x[None], pre)
                np.testing.assert_array_equal(pre[0], got)
