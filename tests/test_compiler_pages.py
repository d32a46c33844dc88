"""compiler_pages.release drops LLVM's code pages, and numba still compiles afterwards."""
import sys

import numpy as np
import pytest
from numba import njit

from lfm2q import compiler_pages


def _rss_of_llvm_code_kb() -> int:
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                inside = head[1] == "r-xp" and len(head) >= 6 and "libllvmlite" in head[5]
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only (a no-op elsewhere)")
def test_release_drops_llvm_code_and_numba_still_compiles():
    @njit
    def before(x):
        return x * 2 + 1

    assert before(3) == 7  # LLVM's code is resident after compiling
    assert _rss_of_llvm_code_kb() > 1024
    assert compiler_pages.release() > 0
    assert _rss_of_llvm_code_kb() < 1024

    @njit
    def after(x):  # compiling again reads the pages back in
        return np.sum(x * x)

    assert after(np.arange(4.0)) == 14.0
    assert _rss_of_llvm_code_kb() > 1024
