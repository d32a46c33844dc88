"""hugepages.anonymous: the buffer the packed weight copies live in."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from lfm2q import hugepages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_a_new_buffer_is_zeroed_writable_and_of_the_size_asked():
    for n in (0, 1, 4096, hugepages.HUGE_PAGE + 3):
        buf = hugepages.anonymous(n)
        assert buf.dtype == np.uint8 and buf.shape == (n,) and buf.flags.writeable
        assert not buf.any()
        buf[:] = 7  # private: writing it touches nothing else
    a, b = hugepages.anonymous(100), hugepages.anonymous(100)
    a[:] = 1
    assert not b.any()


def _smaps_entry(address: int) -> str:
    text = Path("/proc/self/smaps").read_text()
    for m in re.finditer(r"^([0-9a-f]+)-([0-9a-f]+) .*?(?=^[0-9a-f]+-|\Z)", text, re.M | re.S):
        if int(m[1], 16) <= address < int(m[2], 16):
            return m[0]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists()
                    or "[never]" in THP.read_text(), reason="Linux with transparent huge pages only")
def test_the_buffer_may_take_2mb_pages_on_linux():
    buf = hugepages.anonymous(3 * hugepages.HUGE_PAGE)
    entry = _smaps_entry(buf.ctypes.data)
    assert "hg" in re.search(r"^VmFlags:(.*)$", entry, re.M)[1].split()  # madvise(MADV_HUGEPAGE) took
    assert re.search(r"^THPeligible:\s+1", entry, re.M)
