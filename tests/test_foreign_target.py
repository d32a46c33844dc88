"""Every kernel the engine compiles, compiled for a Raspberry Pi's CPU on this machine.

The signatures come from running the engine here on models of every weight type the mixes
produce (and every KV cache type); tests/foreign_target.py then compiles each of them in a
process that numba believes is an aarch64 one (the code is never run). This keeps the fix for
"x86 intrinsics compiled on aarch64" (LLVM aborts the process there) from rotting: a kernel
that reaches an llvm.x86.* intrinsic on aarch64, or an instruction the target lacks (sdot on a
Pi 4's Cortex-A72, which has no dotprod: SIGILL on the board; smmla without i8mm), fails here
on x86 too. Three targets: a Pi 5, a Pi 4 and a Neoverse V2 (i8mm: the smmla Q4_0 and Q4_K
prompts).
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lfm2q.builtin import builtin_model_path

HERE = Path(__file__).parent
SCRIPT = HERE / "foreign_target.py"
TINY_HF = HERE.parent / "training" / "out" / "lfm2q-tiny"

# qemu's / LLVM's names: Pi 5 (NEON + dotprod), Pi 4 (NEON only), a Neoverse with i8mm
TARGETS = {
    "cortex-a76": "+neon,+dotprod,+fullfp16,-i8mm",
    "cortex-a72": "+neon,-dotprod,-fullfp16,-i8mm",
    "neoverse-v2": "+neon,+dotprod,+fullfp16,+i8mm",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The built-in model (Q4_K, Q6_K, Q5_0 for its 128-wide rows) and its checkpoint in the
    mixes that reach the other kernels: F16, BF16 (BLAS prefill), Q8_0, Q5_K (+ Q5_1), Q4_0;
    exact mode runs every file in F32 activations."""
    from lfm2q.convert import convert_hf

    d = tmp_path_factory.mktemp("foreign_models")
    out = [builtin_model_path()]
    for mix in ("f16", "bf16", "q8_0", "q5_k_m", "q4_0"):
        out.append(convert_hf(TINY_HF, d / f"tiny-{mix}.gguf", mix))
    return out


@pytest.fixture(scope="module")
def signatures(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("sigs") / "sigs.pkl"
    subprocess.run([sys.executable, str(SCRIPT), "record", str(path), *map(str, models)],
                   check=True, capture_output=True, text=True, timeout=2400, cwd=HERE)
    return path


# The Pi builds compile every recorded kernel; the i8mm build only what differs there (the Q4_0
# and Q4_K 8x8 kernels and decode's entry points, where the packed branches sit): a third full
# build made this test half as long again on 2 cores.
ONLY = {"neoverse-v2": r"q4_0|q4_k_8x8|dispatch\.(_?matvec|matmul)$"}
PI = ["cortex-a76", "cortex-a72"]


def _cross(sigs: Path, cpu: str, tmp: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp / f"cache-{cpu}"))
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    p = subprocess.run([sys.executable, str(SCRIPT), "cross", str(sigs), "--cpu", cpu,
                        "--features", TARGETS[cpu], *(["--only", ONLY[cpu]] if cpu in ONLY else [])],
                       capture_output=True, text=True, timeout=2400,
                       env=env, cwd=HERE)
    assert p.stdout.strip(), f"{cpu}: no report (exit {p.returncode}):\n{p.stderr[-3000:]}"
    report = json.loads(p.stdout)
    report["returncode"] = p.returncode
    return report


@pytest.fixture(scope="module")
def reports(signatures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cross")
    cpus = list(TARGETS)
    with ThreadPoolExecutor(len(cpus)) as pool:
        return dict(zip(cpus, pool.map(lambda c: _cross(signatures, c, tmp), cpus)))


@pytest.mark.parametrize("cpu", PI)
def test_every_engine_kernel_compiles_for_aarch64_without_x86_intrinsics(reports, cpu):
    r = reports[cpu]
    assert r["target"]["arch"] == "aarch64" and r["target"]["cpu"] == cpu
    assert r["errors"] == []
    assert r["x86_intrinsics"] == []
    assert r["forbidden"] == []  # no instruction the CPU lacks (sdot without dotprod...)
    # The engine's entry points were all there (with a warm cache the record lists the kernels
    # Python calls; compiling them compiles every kernel they call): prefill, the blocks,
    # attention, the embedding lookup.
    names = set(r["names"])
    assert "lfm2q.kernels.dispatch._imatmul" in names and "lfm2q.kernels.dispatch._imatmul_packed" in names
    assert {"lfm2q.kernels.dispatch._imatmul_q4_0_packed", "lfm2q.kernels.dispatch._imatmul_q4_0_4x8",
            "lfm2q.kernels.dispatch._imatmul_q4_k_8x8"} <= names
    assert sum(n.startswith("lfm2q.blocks.") for n in names) >= 5
    assert any(n.startswith("lfm2q.kernels.lookup.") for n in names)
    assert r["signatures"] >= r["functions"] >= 15
    assert r["returncode"] == 0


def test_the_pi_4_build_has_no_dotprod_and_the_pi_5_build_uses_it_where_neon_kernels_do(reports):
    a72, a76 = reports["cortex-a72"], reports["cortex-a76"]
    assert "sdot" not in a72["instructions"]
    if any("sdot" in name for name in a76["aarch64_intrinsics"]):
        assert a76["instructions"].get("sdot", 0) > 0


def test_smmla_only_in_the_i8mm_build(reports):
    # The Neoverse V2 build multiplies Q4_0 and Q4_K prompts with smmla (and decodes with sdot);
    # the Pi builds have none (SIGILL there): not the instruction, not the intrinsic.
    v2 = reports["neoverse-v2"]
    assert v2["errors"] == [] and v2["x86_intrinsics"] == [] and v2["forbidden"] == [] and v2["returncode"] == 0
    assert {"lfm2q.kernels.dispatch._imatmul_q4_0_4x8", "lfm2q.kernels.dispatch._imatmul_q4_k_8x8"} <= set(v2["names"])
    assert v2["instructions"].get("smmla", 0) > 0 and v2["instructions"].get("sdot", 0) > 0
    assert "llvm.aarch64.neon.smmla.v4i32.v16i8" in v2["aarch64_intrinsics"]
    assert v2["target"]["kernels"] == "aarch64 NEON + dotprod + i8mm"
    for cpu in ("cortex-a76", "cortex-a72"):
        assert "smmla" not in reports[cpu]["instructions"], cpu
        assert not any("smmla" in name for name in reports[cpu]["aarch64_intrinsics"]), cpu


@pytest.mark.parametrize("cpu", PI)
def test_f16_weights_and_the_fp16_cache_widen_with_neon_vector_converts(reports, cpu):
    # fcvtl: 4 fp16 lanes to 4 f32 in one instruction (baseline NEON, so the Pi 4 too), not a
    # table lookup or a scalar convert per element
    counted = reports[cpu]["counted"]
    for fn in ("lfm2q.kernels.floats.dot_f16", "lfm2q.kernels.floats.dequant_f16"):
        assert sum(counted.get(fn, {}).values()) > 0, (fn, counted)
    assert any(name.startswith("lfm2q.blocks.") or name.startswith("lfm2q.kernels.kvrows.")
               for name in counted), counted  # attention over the fp16 cache


def test_an_x86_intrinsic_requested_for_aarch64_is_a_python_error_not_an_abort(tmp_path):
    # The second line of defence (isa/llvm_ir.IR.fn): compile the AVX2 row kernel directly
    # for aarch64. LLVM would abort the process; lfm2q refuses it at lowering time instead.
    code = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from foreign_target import _pretend
_pretend("aarch64", "cortex-a76", "+neon,+dotprod")
import numpy as np
from numba import njit
from lfm2q.kernels.isa import x86_avx2

@njit
def f(row, xq, xd):
    return x86_avx2.q8_0_row(row, xq, xd)
try:
    f.compile("float32(uint8[::1], int8[::1], float32[::1])")
except Exception as e:
    print("refused:", "llvm.x86" in str(e) and "aarch64" in str(e))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "refused: True" in p.stdout, p.stdout + p.stderr[-2000:]
