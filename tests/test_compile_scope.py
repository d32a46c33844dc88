"""A first run compiles only the kernels the opened file needs (issue: a Pi user's first run
compiled for minutes): a model whose every matrix decode multiplies in integers never compiles
the float rows of the eleven weight types, and a model with 64-wide heads compiles one copy of
the attention job. Checked in a fresh process, where a kernel's `signatures` lists what that
process compiled or loaded from numba's cache."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hf_fixtures import make_checkpoint
from lfm2q.kernels import dispatch
from lfm2q.kernels.formats import F16, Q4_K, Q5_0, Q6_K, Q8_0

PROBE = r"""
import json, sys
import lfm2q
from lfm2q import blocks
m = lfm2q.load(sys.argv[1])
text = m.generate("The meaning of", max_tokens=4, temperature=0)
print(json.dumps({"kinds": m.weights.kinds, "text": text,
                  "job_signatures": [str(s[-1]) for s in blocks._attend_job.signatures]}))
"""


@pytest.fixture(scope="module")
def hd64_q8_0(tmp_path_factory):
    """An all-Q8_0 GGUF with LFM2's 64-wide heads."""
    from lfm2q.convert import convert_hf

    d = tmp_path_factory.mktemp("scope")
    hf = make_checkpoint(d / "hf", hidden_size=128, num_attention_heads=2, num_key_value_heads=1, seed=7)
    return convert_hf(hf, d / "hd64-q8_0.gguf", "q8_0")


def test_a_first_run_compiles_only_what_the_file_needs(hd64_q8_0, tmp_path):
    # a cold cache of its own: what the run compiled is what its folder holds
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    p = subprocess.run([sys.executable, "-c", PROBE, str(hd64_q8_0)], capture_output=True, text=True,
                       timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    compiled = {f.name.split("-")[0] for f in (tmp_path / "numba").rglob("*.nbi")}
    assert got["kinds"] == [None, True, None, None] and got["text"]  # the Q8_0 rows alone
    assert "dispatch.matvec" in compiled and "dispatch._imatvec_b32_parallel" in compiled
    assert not compiled & {"dispatch._float_matvec", "dispatch.row_dot", "dispatch._matvec_parallel"}
    assert got["job_signatures"] == ["bool"]  # head64=True alone: no copy for other head sizes


def test_kinds_name_the_kernels_the_file_needs(tiny_gguf):
    import lfm2q
    from lfm2q.builtin import builtin_model_path

    assert lfm2q.load(tiny_gguf("f16")).weights.kinds == (None, None, None, True)
    assert lfm2q.load(tiny_gguf("q8_0")).weights.kinds == (None, True, None, None)
    # the built-in model: Q4_K and Q6_K rows, and Q5_0 for its 128-wide rows (integer rows
    # where the backend has them, else float rows)
    m = lfm2q.load(builtin_model_path())
    kernels = {L.kernel for layer in m.weights.layers for L in vars(layer).values() if hasattr(L, "kernel")}
    assert Q5_0 in kernels and Q4_K | dispatch.PACKED8 in kernels or Q4_K in kernels
    assert m.weights.kinds[0] is True
    assert m.weights.kinds[3] is (None if dispatch.integer_decode(Q5_0) else True)


@pytest.mark.parametrize("code, integer", [(Q4_K, True), (Q6_K, True), (Q8_0, True), (F16, False),
                                           (Q5_0, dispatch.Q4_1_Q5_INTEGER), (Q4_K | dispatch.EXACT, False)])
def test_integer_decode_names_the_codes_matvec_multiplies_in_integers(code, integer):
    assert dispatch.integer_decode(code) is integer


def test_a_kernel_left_out_of_kinds_writes_nan_instead_of_compiling():
    w = np.zeros((4, 2 * 64), np.uint8)  # 4 F16 rows of 64 zeros
    out = np.zeros(4, np.float32)
    dispatch.matvec(w, F16, np.ones(64, np.float32), out, (True, True, True, None))
    assert np.isnan(out).all()
    dispatch.matvec(w, F16, np.ones(64, np.float32), out)  # kinds=None: every kernel
    assert (out == 0).all()
    dispatch.matvec(w, F16, np.ones(64, np.float32), out, dispatch.kinds_for([F16]))
    assert (out == 0).all()
