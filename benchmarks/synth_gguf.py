"""LFM2 / LFM2-MoE GGUF files of a given shape with random quantized weights, built directly.

An 8.3B-parameter checkpoint does not fit this machine in fp32, and speed and memory do not
depend on the weights' values: so the file is written as GGUF straight away. Each tensor gets
the type llama-quantize's mix gives it (convert/mixes.py); its bytes are a few random rows
(N(0, 1/cols) weights through lfm2q's own quantizers, so every block is valid) repeated to the
tensor's size; norms are ones, the router and the conv kernels small random F32. The
tokenizer is the real LFM2 one (tests/data/lfm2-tokenizer), so `lfm2q run` works on the file.

    from synth_gguf import SHAPES, build
    build(SHAPES["8b-a1b"], "lfm2-8b-a1b-random-q4_k_m.gguf", "q4_k_m")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from lfm2q.convert import quantize
from lfm2q.convert.vocab import add_vocab
from lfm2q.convert.writer import Chunked, write_atomically

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "tests" / "data" / "lfm2-tokenizer"
_SAMPLE_ROWS = 64          # distinct random rows per tensor, repeated
_CHUNK_BYTES = 64 << 20    # written in pieces of about this size


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    n_layer: int
    attn_layers: tuple[int, ...]
    n_head: int
    n_head_kv: int
    ff: int                       # dense feed-forward width
    vocab: int = 65536
    n_expert: int = 0             # 0: a dense lfm2 file
    n_expert_used: int = 0
    ff_exp: int = 0
    n_dense_lead: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return "lfm2moe" if self.n_expert else "lfm2"


SHAPES = {
    # LFM2-8B-A1B: 24 layers (6 attention), hidden 2048, 32 experts of width 1792, 4 per token,
    # the first 2 layers dense (width 7168); 8.3B parameters, 1.5B active per token
    "8b-a1b": Shape("lfm2-8b-a1b", hidden=2048, n_layer=24, attn_layers=(2, 6, 10, 14, 18, 21),
                    n_head=32, n_head_kv=8, ff=7168, n_expert=32, n_expert_used=4, ff_exp=1792,
                    n_dense_lead=2),
    # LFM2-1.2B: 16 layers (6 attention), hidden 2048, feed-forward 8192
    "1.2b": Shape("lfm2-1.2b", hidden=2048, n_layer=16, attn_layers=(2, 5, 8, 10, 12, 14),
                  n_head=32, n_head_kv=8, ff=8192),
}


def tensor_shapes(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, NumPy shape) of every tensor, in file order."""
    D, HD = s.hidden, s.hidden // s.n_head
    t = [("token_embd.weight", (s.vocab, D))]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        t.append((b + "attn_norm.weight", (D,)))
        if i in s.attn_layers:
            t += [(b + "attn_q.weight", (s.n_head * HD, D)), (b + "attn_k.weight", (s.n_head_kv * HD, D)),
                  (b + "attn_v.weight", (s.n_head_kv * HD, D)), (b + "attn_output.weight", (D, s.n_head * HD)),
                  (b + "attn_q_norm.weight", (HD,)), (b + "attn_k_norm.weight", (HD,))]
        else:
            t += [(b + "shortconv.in_proj.weight", (3 * D, D)), (b + "shortconv.conv.weight", (D, 3)),
                  (b + "shortconv.out_proj.weight", (D, D))]
        t.append((b + "ffn_norm.weight", (D,)))
        if s.n_expert and i >= s.n_dense_lead:
            E, F = s.n_expert, s.ff_exp
            t += [(b + "ffn_gate_inp.weight", (E, D)), (b + "exp_probs_b.bias", (E,)),
                  (b + "ffn_gate_exps.weight", (E, F, D)), (b + "ffn_up_exps.weight", (E, F, D)),
                  (b + "ffn_down_exps.weight", (E, D, F))]
        else:
            t += [(b + "ffn_gate.weight", (s.ff, D)), (b + "ffn_up.weight", (s.ff, D)),
                  (b + "ffn_down.weight", (D, s.ff))]
    t.append(("token_embd_norm.weight", (D,)))
    return t


def _metadata(w: gguf.GGUFWriter, s: Shape, mix: str) -> None:
    w.add_name(f"{s.name}-random")
    w.add_file_type(quantize.file_type(mix))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_block_count(s.n_layer)
    w.add_context_length(128000)
    w.add_embedding_length(s.hidden)
    w.add_feed_forward_length(s.ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv([s.n_head_kv if i in s.attn_layers else 0 for i in range(s.n_layer)])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(1e6)
    w.add_vocab_size(s.vocab)
    w.add_shortconv_l_cache(3)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.ff_exp)
        w.add_leading_dense_block_count(s.n_dense_lead)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)


def _data(name: str, shape: tuple[int, ...], qtype, rng: np.random.Generator):
    if len(shape) == 1 or qtype == gguf.GGMLQuantizationType.F32:
        if name.endswith("norm.weight"):
            return np.ones(shape, np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    cols = shape[-1]
    sample = rng.standard_normal((_SAMPLE_ROWS, cols)).astype(np.float32) / np.sqrt(cols)
    rows = quantize.quantize(sample, qtype, name).view(np.uint8).reshape(_SAMPLE_ROWS, -1)
    n_rows = int(np.prod(shape[:-1]))
    per_chunk = max(_SAMPLE_ROWS, _CHUNK_BYTES // rows.shape[1] // _SAMPLE_ROWS * _SAMPLE_ROWS)

    def chunks():
        for r0 in range(0, n_rows, per_chunk):
            n = min(per_chunk, n_rows - r0)
            yield np.tile(rows, (-(-n // _SAMPLE_ROWS), 1))[:n]
    return Chunked(n_rows * rows.shape[1], chunks())


def build(s: Shape, out: str | Path, mix: str = "q4_k_m", seed: int = 0, progress: bool = False) -> Path:
    """Write shape `s` as a GGUF file at `out` with the `mix` type mix; return its path."""
    out = Path(out)
    tensors = tensor_shapes(s)
    qtypes = quantize.plan_types(tensors, mix, s.n_layer, n_expert=s.n_expert)
    w = gguf.GGUFWriter(path=None, arch=s.arch)
    _metadata(w, s, mix)
    add_vocab(w, TOKENIZER_DIR, s.vocab)
    for (name, shape), qtype in zip(tensors, qtypes):
        w.add_tensor_info(name, shape, np.dtype(np.float32), quantize.tensor_nbytes(shape, qtype),
                          raw_dtype=qtype)
    rng = np.random.default_rng(seed)
    write_atomically(w, out, [n for n, _ in tensors],
                     (_data(n, shape, q, rng) for (n, shape), q in zip(tensors, qtypes)), progress)
    return out


def n_params(s: Shape) -> tuple[int, int]:
    """(all parameters, parameters a token uses)."""
    total = active = 0
    for name, shape in tensor_shapes(s):
        n = int(np.prod(shape))
        total += n
        active += n * s.n_expert_used // s.n_expert if name.endswith("_exps.weight") else n
    return total, active
