"""HF checkpoint folder -> one GGUF file, tensor by tensor.

Order of work, so that bad input fails before anything is written and memory stays at about one
tensor:
  1. read config.json and the safetensors headers; check that every tensor the GGUF needs is there
     with the right dtype and shape, and that nothing unexpected is;
  2. fill a GGUFWriter with metadata, the vocabulary (vocab.add_vocab) and every tensor's info
     (name, shape, GGML type, byte size) without touching tensor data;
  3. write header, key/values and tensor infos to a temp file beside the output, then convert and
     append each tensor's data in turn (load memory-mapped -> check finite -> quantize -> write);
     a 3-D expert tensor (LFM2-MoE) is converted and written expert by expert, so memory stays
     about one expert's matrix, not the stacked tensor;
  4. os.replace the temp file onto the output. On any failure the temp file is deleted, so there
     is never a partial output.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace
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

    writer = gguf.GGUFWriter(path=None, arch=gguf_layout.arch_of(cfg))
    gguf_layout.add_model_metadata(writer, cfg, name=hf_dir.resolve().name, file_type=quantize.file_type(key))
    add_vocab(writer, hf_dir, cfg.vocab_size)
    qtypes = quantize.plan_types([(p.gguf_name, p.gguf_shape) for p in plans], key,
                                 cfg.num_hidden_layers, n_expert=cfg.num_experts)
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

    fused = any(n.endswith(".experts.gate_up_proj") for n in stored)
    plans = gguf_layout.plan_tensors(cfg, fused_experts=fused)
    expected = {name: shape for p in plans for name, shape in p.sources().items()}
    for norm, name in stored.items():
        if norm not in expected:
            e = ckpt.entries[name]
            raise ConvertError(
                f"{e.file}: unexpected tensor {name!r} for the LFM2 text model described by config.json "
                f"— is config.json from the same checkpoint?")
    for hf_name, shape in expected.items():
        name = stored.get(hf_name)
        if name is None:
            hint = " (config.json says the LM head is untied)" if hf_name == "lm_head.weight" else ""
            raise ConvertError(f"{hf_dir}: tensor {hf_name!r} is missing from the safetensors files{hint}")
        e = ckpt.entries[name]
        ckpt.check_dtype(name)
        if tuple(e.shape) != shape:
            raise ConvertError(
                f"{e.file}: tensor {name!r} has shape {list(e.shape)}, config.json implies {list(shape)}")
    # the plans with the names as stored (an "lfm." prefix kept)
    return [replace(p, hf_name=stored.get(p.hf_name, p.hf_name),
                    parts=tuple(replace(q, hf_name=stored[q.hf_name]) for q in p.parts))
            for p in plans]


def _convert_one(ckpt: Checkpoint, plan: gguf_layout.TensorPlan, qtype: gguf.GGMLQuantizationType):
    """The tensor's stored bytes: an array, or for stacked experts a `Chunked` that converts
    and writes them one expert at a time."""
    if plan.zeros:
        return quantize.quantize(np.zeros(plan.gguf_shape, np.float32), qtype, plan.gguf_name)
    if plan.parts:
        return Chunked(quantize.tensor_nbytes(plan.gguf_shape, qtype),
                       (_convert_part(ckpt, plan, part, qtype) for part in plan.parts))
    x = ckpt.load(plan.hf_name).reshape(plan.gguf_shape)  # memory-mapped (BF16: one float32 copy)
    return _quantized(ckpt, plan.hf_name, x, qtype, plan.gguf_name, plan.gguf_shape)


def _convert_part(ckpt: Checkpoint, plan: gguf_layout.TensorPlan, part: gguf_layout.Part,
                  qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    x = ckpt.load(part.hf_name)  # memory-mapped; a fused 3-D tensor is sliced, not copied (F32/F16)
    if part.index is not None:
        x = x[part.index]
    if part.rows is not None:
        x = x[part.rows[0]:part.rows[1]]
    return _quantized(ckpt, part.hf_name, x, qtype, plan.gguf_name, plan.gguf_shape[1:])


def _quantized(ckpt: Checkpoint, hf_name: str, x: np.ndarray, qtype, gguf_name: str, shape) -> np.ndarray:
    flat = x.reshape(-1)
    for i in range(0, flat.size, _FINITE_CHUNK):
        if not np.isfinite(flat[i:i + _FINITE_CHUNK]).all():
            e = ckpt.entries[hf_name]
            raise ConvertError(f"{e.file}: tensor {hf_name!r} contains NaN or Inf — the checkpoint is damaged")
    data = quantize.quantize(x, qtype, gguf_name)
    expected = quantize.tensor_nbytes(tuple(shape), qtype)
    if data.nbytes != expected:  # an internal error, not a user's: fail loudly
        raise AssertionError(f"{gguf_name}: {qtype.name} data is {data.nbytes} bytes, expected {expected}")
    return data


class Chunked:
    """A tensor's data as a sequence of arrays made one at a time (a 3-D tensor's experts), in
    the two attributes GGUFWriter.write_tensor_data uses: `nbytes`, and `tofile`, which makes
    and writes each chunk in turn so only one is ever in memory."""

    def __init__(self, nbytes: int, chunks: Iterator[np.ndarray]):
        self.nbytes = nbytes
        self._chunks = chunks

    def tofile(self, fout) -> None:
        written = 0
        for chunk in self._chunks:
            chunk.tofile(fout)
            written += chunk.nbytes
            del chunk
        if written != self.nbytes:  # an internal error: fail loudly
            raise AssertionError(f"chunked tensor wrote {written} bytes, expected {self.nbytes}")


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
