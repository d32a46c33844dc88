"""`lfm2q quantize`: re-quantizing an F32 GGUF equals converting the HF checkpoint directly."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lfm2q.convert import convert_hf
from lfm2q.convert.requantize import quantize_gguf
from lfm2q.errors import ConvertError
from lfm2q.gguf_reader import GGUFReader


@pytest.mark.parametrize("mix", ["q4_k_m", "q8_0", "q6_k"])
def test_requantized_file_equals_direct_conversion(tiny_hf_dir, tiny_gguf, tmp_path, mix):
    via_gguf = quantize_gguf(tiny_gguf("f32"), tmp_path / "a.gguf", mix)
    direct = convert_hf(tiny_hf_dir, tmp_path / "b.gguf", mix)
    a, b = GGUFReader(via_gguf), GGUFReader(direct)
    assert a.fields == b.fields and a.field_types == b.field_types
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        assert a.tensors[name].qtype == b.tensors[name].qtype, name
        assert a.data(name).tobytes() == b.data(name).tobytes(), name


def test_refuses_an_already_quantized_source(tiny_gguf, tmp_path):
    with pytest.raises(ConvertError, match="already Q8_0"):
        quantize_gguf(tiny_gguf("q8_0"), tmp_path / "x.gguf", "q4_k_m")
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(tiny_gguf, tmp_path):
    out = tmp_path / "x.gguf"
    r = subprocess.run([sys.executable, "-m", "lfm2q", "quantize", str(tiny_gguf("f32")), str(out),
                        "--type", "q3_xl"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "q3_xl" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
