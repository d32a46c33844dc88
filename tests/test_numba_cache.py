"""Compiled kernels are cached in a folder named by a hash of lfm2q's sources, so an upgrade
(or any edit) can never run a stale kernel that numba's per-file check would keep."""
import numba

from lfm2q import numba_cache


def test_cache_dir_is_keyed_by_the_sources(monkeypatch, tmp_path):
    assert numba.config.CACHE_DIR.endswith(numba_cache.source_hash()) or "NUMBA_CACHE_DIR" in __import__("os").environ
    files = numba_cache._sources()
    assert numba_cache.PACKAGE / "blocks.py" in files and any(p.name == "kquants.py" for p in files)
    before = numba_cache.source_hash()
    extra = tmp_path / "extra.py"
    extra.write_text("x = 1\n")
    monkeypatch.setattr(numba_cache, "_sources", lambda: files + [extra])
    changed = numba_cache.source_hash()
    extra.write_text("x = 2\n")
    assert before != changed != numba_cache.source_hash()
