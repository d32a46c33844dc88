"""HF checkpoint folder -> one GGUF file, tensor by tensor.

Order of work, so that bad input fails before anything is written and memory stays at about one
tensor:
  1. read config.json and the safetensors headers; check that every tensor the GGUF needs is there
     with the right dtype and shape, and that nothing unexpected is;
  2. fill a GGUFWriter with metadata, the vocabulary (vocab.add_vocab) and every tensor's info
     (name, shape, GGML type, byte size) without touching tensor data;
  3. write header, key/values and tensor infos to a temp file beside the output, then convert and
     append each tensor's data in turn (load memory-mapped -> check finite -> quantize -> write);
  4. os.replace the temp file onto the output. On any failure the temp file is deleted, so there
     is never a partial output.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np

from lfm2q.errors import ConvertError

from . import gguf_layout, quantize
from .hf import Checkpoint, HFConfig, read_config
from .vocab import add_vocab

_FINITE_CHUNK = 1 << 20  # elements per isfinite() pass: a bounded temporary, not one per tensor


def convert_hf(hf_dir, out_path, out_type: str = "f16", progress: bool = False) -> Path:
    """Convert the HF LFM2 checkpoint in `hf_dir` to a GGUF file; return the path written.

    out_type: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_k_s or q4_0 (case-insensitive),
    with per-tensor types as llama-quantize chooses them. Norms, 1-D tensors and the short-conv
    kernel are always F32; a matrix whose rows don't split into its type's blocks falls back
    (Q4_K -> Q5_0, Q6_K -> Q8_0, then F16) as llama.cpp does.
    `out_path` may be an existing folder: the file is then named "<checkpoint folder>-<type>.gguf".
    Raises ConvertError (one line naming the file, tensor or value) on bad input; never leaves a
    partial file behind.
    """
    key = quantize.parse_out_type(out_type)
    hf_dir = Path(hf_dir)
    cfg = read_config(hf_dir)
    out = _output_path(Path(out_path), hf_dir, key)

    ckpt = Checkpoint(hf_dir)
    plans = _check_tensors(ckpt, cfg, hf_dir)

    writer = gguf.GGUFWriter(path=None, arch=gguf_layout.ARCH)
    gguf_layout.add_model_metadata(writer, cfg, name=hf_dir.resolve().name, file_type=quantize.file_type(key))
    add_vocab(writer, hf_dir, cfg.vocab_size)
    qtypes = quantize.plan_types([(p.gguf_name, p.gguf_shape) for p in plans], key,
                                 cfg.num_hidden_layers)
    for plan, qtype in zip(plans, qtypes):
        # A placeholder dtype: with raw_dtype given, gguf-py only needs the logical shape and size.
        writer.add_tensor_info(plan.gguf_name, plan.gguf_shape, np.dtype(np.float32),
                               quantize.tensor_nbytes(plan.gguf_shape, qtype), raw_dtype=qtype)

    write_atomically(writer, out, [p.gguf_name for p in plans],
                     (_convert_one(ckpt, plan, qtype) for plan, qtype in zip(plans, qtypes)),
                     progress)
    return out


def _output_path(out: Path, hf_dir: Path, key: str) -> Path:
    if out.is_dir():
        out = out / f"{hf_dir.resolve().name}-{key}.gguf"
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: output folder does not exist — create it first")
    return out


def _check_tensors(ckpt: Checkpoint, cfg: HFConfig, hf_dir: Path) -> list[gguf_layout.TensorPlan]:
    """Match the checkpoint's tensors to the plan; return the plan with hf_name set to the name as
    stored. Raises ConvertError for a missing, unexpected, wrongly-shaped or wrongly-typed tensor."""
    stored: dict[str, str] = {}  # normalised name -> name in the file
    for name in ckpt.names():
        norm = gguf_layout.normalize_hf_name(name)
        if norm is not None and not gguf_layout.is_skipped_when_tied(norm, cfg):
            stored[norm] = name

    plans = gguf_layout.plan_tensors(cfg)
    expected = {p.hf_name for p in plans}
    for norm, name in stored.items():
        if norm not in expected:
            e = ckpt.entries[name]
            raise ConvertError(
                f"{e.file}: unexpected tensor {name!r} for the LFM2 text model described by config.json "
                f"— is config.json from the same checkpoint?")
    out = []
    for p in plans:
        name = stored.get(p.hf_name)
        if name is None:
            hint = " (config.json says the LM head is untied)" if p.hf_name == "lm_head.weight" else ""
            raise ConvertError(f"{hf_dir}: tensor {p.hf_name!r} is missing from the safetensors files{hint}")
        e = ckpt.entries[name]
        ckpt.check_dtype(name)
        if tuple(e.shape) != p.hf_shape:
            raise ConvertError(
                f"{e.file}: tensor {name!r} has shape {list(e.shape)}, config.json implies {list(p.hf_shape)}")
        out.append(gguf_layout.TensorPlan(name, p.gguf_name, p.hf_shape, p.gguf_shape))
    return out


def _convert_one(ckpt: Checkpoint, plan: gguf_layout.TensorPlan, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    x = ckpt.load(plan.hf_name).reshape(plan.gguf_shape)  # memory-mapped (BF16: one float32 copy)
    flat = x.reshape(-1)
    for i in range(0, flat.size, _FINITE_CHUNK):
        if not np.isfinite(flat[i:i + _FINITE_CHUNK]).all():
            e = ckpt.entries[plan.hf_name]
            raise ConvertError(f"{e.file}: tensor {plan.hf_name!r} contains NaN or Inf — the checkpoint is damaged")
    data = quantize.quantize(x, qtype, plan.gguf_name)
    expected = quantize.tensor_nbytes(plan.gguf_shape, qtype)
    if data.nbytes != expected:  # an internal error, not a user's: fail loudly
        raise AssertionError(f"{plan.gguf_name}: {qtype.name} data is {data.nbytes} bytes, expected {expected}")
    return data


def write_atomically(writer: gguf.GGUFWriter, out: Path, names: list[str],
                     tensors: Iterator[np.ndarray], progress: bool) -> None:
    """Write `writer`'s header, metadata and tensor infos, then each tensor's data as `tensors`
    yields it (one at a time), into a temp file beside `out`; rename it onto `out` at the end.
    On any failure, Ctrl-C included, the temp file is deleted: there is never a partial output."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise ConvertError(f"{out.parent}: cannot create a file there ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with _progress_bar(progress, len(names), out.name) as advance:
            for name, data in zip(names, tensors):
                writer.write_tensor_data(data)
                del data  # release before the next tensor is made
                advance(name)
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600; a model file is for everyone to read
        os.replace(tmp, out)
    except OSError as e:
        _discard(writer, tmp)
        raise ConvertError(f"{out}: cannot write it ({e.strerror or e}) — check the folder and free disk space") from None
    except BaseException:
        _discard(writer, tmp)
        raise


def _discard(writer: gguf.GGUFWriter, tmp: Path) -> None:
    try:
        writer.close()
    finally:
        tmp.unlink(missing_ok=True)


class _progress_bar:
    """A rich progress bar over tensors on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda name: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[tensor]}"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._progress.start()
        task = self._progress.add_task(f"writing {self.label}", total=self.total, tensor="")
        return lambda name: self._progress.update(task, advance=1, tensor=name)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False
