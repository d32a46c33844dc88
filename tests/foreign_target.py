"""Compile lfm2q's kernels for another CPU than this one, without running them.

numba compiles for the host; llvmlite can emit code for any triple it was built with. Told
(before numba starts) that the process is an aarch64 one, numba lowers every kernel exactly as
it would on a Raspberry Pi, through lfm2q's own instruction-set selection (kernels/isa/), and
hands LLVM an aarch64 target machine. The compiled code is never called.

    python foreign_target.py record SIGS.pkl MODEL.gguf...
        on this host: run each model (prefill, decode; every KV cache type) and record every
        signature each lfm2q kernel was compiled for
    python foreign_target.py cross SIGS.pkl --cpu cortex-a76 --features +neon,+dotprod [--asm DIR] [--only RE]
        in a fresh process, as an aarch64 one: compile each recorded signature; print a JSON
        report (functions, signatures, intrinsics and instructions seen); exit 1 if an
        llvm.x86.* intrinsic survives or an instruction the features lack appears

Used by tests/test_foreign_target.py and benchmarks/ (the assembly for llvm-mca).
"""
from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

FOREIGN_TRIPLE = {"aarch64": "aarch64-unknown-linux-gnu"}


def _dispatchers():
    """(module, name, dispatcher) for every njit function of lfm2q loaded so far."""
    from numba.core.registry import CPUDispatcher

    for mod_name, mod in sorted(sys.modules.items()):
        if not mod_name.startswith("lfm2q") or mod is None:
            continue
        for name, obj in sorted(vars(mod).items()):
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == mod_name:
                yield mod_name, name, obj


def record(out: Path, models: list[str]) -> None:
    import lfm2q

    # The kernels' signatures depend on array types (the weights are always uint8 views; the
    # caches f16, f32 or int8), and which kernels run on the weight types and the mode: so
    # every cache type once, and each model once in each mode.
    for i, path in enumerate(models):
        for kv in (("f16", "f32", "q8_0") if i == 0 else ("f16",)):
            for exact in (False, True):
                try:
                    m = lfm2q.load(path, n_ctx=256, n_threads=2, exact=exact, kv_cache=kv)
                except lfm2q.Lfm2qError:
                    continue  # e.g. a q8_0 cache for a head size not in 32-blocks
                m.generate(list(range(1, 40)), max_tokens=3)  # a prompt chunk, then decode steps
                m.generate([1, 2], max_tokens=2)
    # With a warm cache a caller's code comes with its callees' inside, and the callees' own
    # dispatchers stay empty: call the F16 row kernels once so that they are recorded.
    import numpy as np

    from lfm2q.kernels import floats

    w16, x, row = np.zeros((1, 64), np.uint8), np.zeros(32, np.float32), np.zeros(32, np.float32)
    w16.flags.writeable = False  # typed as the file's read-only views
    floats.dot_f16(w16, 0, x)
    floats.dequant_f16(w16, 0, row)
    sigs = {(mod, name): list(d.signatures) for mod, name, d in _dispatchers() if d.signatures}
    # Packed Q4_0 and Q4_K in 8-byte chunks exist only on aarch64 (the backends' PACKS_Q4_0*,
    # PACKS_Q4_K_8X8): their prompt kernels, called from Python, never run here. They take the
    # arrays of the packed Q4_K one (packed weights, the activations, the output): its signatures.
    twin = sigs.get(("lfm2q.kernels.dispatch", "_imatmul_packed"), [])
    for name in ("_imatmul_q4_0_packed", "_imatmul_q4_0_4x8", "_imatmul_q4_k_8x8"):
        if twin:
            sigs.setdefault(("lfm2q.kernels.dispatch", name), [sig[:3] for sig in twin])  # (p, x, out)
    out.write_bytes(pickle.dumps(sigs))
    print(json.dumps({"functions": len(sigs), "signatures": sum(map(len, sigs.values()))}))


def _pretend(arch: str, cpu: str, features: str) -> None:
    """Make llvmlite (and so numba) believe this process runs on `arch`/`cpu`: before numba
    makes its code generator."""
    import os

    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    triple = FOREIGN_TRIPLE[arch]
    llvm.get_process_triple = lambda: triple
    llvm.get_default_triple = lambda: triple
    llvm.get_host_cpu_name = lambda: cpu
    on = {f[1:]: f[0] == "+" for f in features.split(",") if f}
    llvm.get_host_cpu_features = lambda: llvm.FeatureMap(on)
    os.environ["NUMBA_CPU_NAME"] = cpu
    os.environ["NUMBA_CPU_FEATURES"] = features


# aarch64 instructions that need a feature beyond baseline NEON (mnemonic -> feature)
NEEDS_FEATURE = {"sdot": "dotprod", "udot": "dotprod", "smmla": "i8mm", "ummla": "i8mm",
                 "usmmla": "i8mm", "usdot": "i8mm"}
# baseline instructions counted per function: the vector fp16 widening (F16 weights, fp16 KV)
COUNTED = ("fcvtl", "fcvtl2")


def cross(sigs_path: Path, cpu: str, features: str, asm_dir: Path | None, arch: str = "aarch64",
          only: str | None = None) -> int:
    _pretend(arch, cpu, features)
    import numba  # noqa: F401  (after _pretend: its codegen is made for the foreign target)
    import importlib

    import lfm2q  # noqa: F401
    from lfm2q.kernels.isa import describe

    sigs = pickle.loads(sigs_path.read_bytes())
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    report = {"target": describe(), "functions": 0, "signatures": 0, "x86_intrinsics": [],
              "aarch64_intrinsics": {}, "instructions": {}, "counted": {}, "forbidden": [], "errors": []}
    if asm_dir:
        asm_dir.mkdir(parents=True, exist_ok=True)
    for (mod_name, name), sig_list in sorted(sigs.items()):
        if only and not re.search(only, f"{mod_name}.{name}"):
            continue
        try:
            disp = getattr(importlib.import_module(mod_name), name)
        except (ImportError, AttributeError) as e:
            report["errors"].append(f"{mod_name}.{name}: {e}")
            continue
        report["functions"] += 1
        report.setdefault("names", []).append(f"{mod_name}.{name}")
        for i, sig in enumerate(sig_list):
            try:
                disp.compile(sig)
            except Exception as e:  # a kernel that cannot compile for this target is the finding
                report["errors"].append(f"{mod_name}.{name}{sig}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                continue
            report["signatures"] += 1
            ir_text = disp.inspect_llvm(sig)
            for hit in sorted(set(re.findall(r"@(llvm\.x86\.[\w.]+)", ir_text))):
                report["x86_intrinsics"].append(f"{mod_name}.{name}: {hit}")
            for hit in re.findall(r"@(llvm\.aarch64\.[\w.]+)", ir_text):
                report["aarch64_intrinsics"][hit] = report["aarch64_intrinsics"].get(hit, 0) + 1
            asm = disp.inspect_asm(sig)
            for mnemonic in re.findall(r"^\s+([a-z][a-z0-9.]*)\s", asm, re.M):
                base = mnemonic.split(".")[0]
                if base in COUNTED:
                    per = report["counted"].setdefault(f"{mod_name}.{name}", {})
                    per[base] = per.get(base, 0) + 1
                if base in NEEDS_FEATURE:
                    report["instructions"][base] = report["instructions"].get(base, 0) + 1
                    if NEEDS_FEATURE[base] not in enabled:
                        report["forbidden"].append(f"{mod_name}.{name}: {base} without +{NEEDS_FEATURE[base]}")
            if asm_dir:
                (asm_dir / f"{mod_name}.{name}.{i}.s").write_text(asm)
    report["forbidden"] = sorted(set(report["forbidden"]))
    print(json.dumps(report, indent=1))
    bad = report["x86_intrinsics"] or report["forbidden"] or report["errors"]
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["record"]:
        record(Path(argv[1]), argv[2:])
        return 0
    if argv[:1] == ["cross"]:
        import argparse

        ap = argparse.ArgumentParser(prog="foreign_target.py cross")
        ap.add_argument("sigs", type=Path)
        ap.add_argument("--cpu", required=True)
        ap.add_argument("--features", required=True)
        ap.add_argument("--asm", type=Path)
        ap.add_argument("--only", help="compile only the functions whose module.name this regex finds")
        a = ap.parse_args(argv[1:])
        return cross(a.sigs, a.cpu, a.features, a.asm, only=a.only)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
