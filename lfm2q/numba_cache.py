"""Where numba keeps lfm2q's compiled kernels.

numba invalidates a cached function only when its own source file changes, not when a
function it calls (in another file) does: after an upgrade, a cached block kernel would keep
running the old matvec inside it. So the cache lives in a folder named by a hash of all of
lfm2q's sources — any change starts a fresh cache — under the user's cache folder, which also
makes a read-only installation work. A NUMBA_CACHE_DIR set by the user wins.

Must run before any module defining `@njit(cache=True)` kernels is imported.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from . import cpu

PACKAGE = Path(__file__).resolve().parent


def _sources() -> list[Path]:
    roots = [PACKAGE]
    # an editable install maps lfm2q.convert to the repository's convert/ folder
    sibling = PACKAGE.parent / "convert"
    if not (PACKAGE / "convert").is_dir() and sibling.is_dir():
        roots.append(sibling)
    return sorted(p for root in roots for p in root.rglob("*.py"))


def source_hash() -> str:
    h = hashlib.sha256()
    for p in _sources():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def is_cold() -> bool:
    """Whether numba's cache holds no compiled kernel yet: the first run of this lfm2q version
    here, whose first evaluation compiles every kernel it uses (about a minute)."""
    import numba

    root = Path(numba.config.CACHE_DIR)
    return not (root.is_dir() and any(root.rglob("*.nbi")))


def configure() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    import numba

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    numba.config.CACHE_DIR = str(base / "lfm2q" / "numba" / source_hash())


cpu.configure()  # numba's target CPU, before any kernel module is compiled (lfm2q/cpu.py)
configure()
