"""lfm2q's GGUF reader reads what gguf-py's reader reads: every field, every tensor's bytes."""
import gguf
import numpy as np
import pytest

from lfm2q.gguf_reader import GGUFReader


@pytest.mark.parametrize("out_type", ["f32", "q8_0", "q4_k_m"])
def test_same_fields_and_tensors_as_gguf_py(tiny_gguf, out_type):
    path = tiny_gguf(out_type)
    ours, theirs = GGUFReader(path), gguf.GGUFReader(path)
    expected = {f.name: f.contents() for f in theirs.fields.values() if not f.name.startswith("GGUF.")}
    assert ours.fields == expected
    for key, field in theirs.fields.items():
        if not key.startswith("GGUF."):
            vt, item = ours.field_types[key]
            assert vt == field.types[0] and (item is None or item == field.types[-1]), key
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert mine.shape == tuple(reversed(t.shape.tolist())) and mine.qtype == t.tensor_type
        assert mine.offset == t.data_offset and mine.nbytes == t.n_bytes
        np.testing.assert_array_equal(ours.data(t.name).reshape(-1), t.data.view(np.uint8).reshape(-1))
