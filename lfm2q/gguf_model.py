"""Open an LFM2 GGUF file, check it completely, and hand out its weights as views of the map.

`gguf_reader.GGUFReader` checks the header and memory-maps the file; weights stay there and the
kernels read their bytes in place. Everything the model needs is checked here, up front, so a kernel never sees a tensor
of the wrong shape or type, and every problem is one `GGUFError` naming the file and the key
or tensor.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GGUFError
from .gguf_reader import VT, GGUFReader, shown_name
from .kernels import F32, SUPPORTED_TYPES, dequantize, row_nbytes, type_name

ARCH = "lfm2"
MOE_ARCH = "lfm2moe"  # LFM2-MoE (LFM2-8B-A1B, LFM2.5-8B-A1B, LFM2-24B-A2B): same blocks, routed experts
ARCHES = (ARCH, MOE_ARCH)
SIGMOID_GATING = 2  # gguf ExpertGatingFuncType.SIGMOID, the only router LFM2-MoE has


INTEGER_TYPES = (VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64)


@dataclass(frozen=True)
class Lfm2Config:
    """Hyperparameters of an LFM2 file, read once from its `lfm2.*` metadata.

    Dimension legend for shape comments across the package:
      V vocabulary, D embedding width, N layers, H query heads, KVH key/value heads of an
      attention layer, HD head width (D / H), FF feed-forward width, L conv kernel length;
      MoE files: E experts, K experts used per token, FFE an expert's feed-forward width.
    """
    n_vocab: int                 # V
    n_embd: int                  # D
    n_layer: int                 # N
    n_head: int                  # H
    n_head_kv: tuple[int, ...]   # KVH per layer; 0 marks a short-conv layer
    n_ff: int                    # FF
    conv_l: int                  # L
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    sliding_window: int          # 0: attention layers see the whole context
    tied_embeddings: bool        # no output.weight: the LM head is token_embd
    # LFM2-MoE: layers from n_dense_lead on replace the dense SwiGLU by E routed experts
    arch: str = ARCH
    n_expert: int = 0            # E (0: a dense file)
    n_expert_used: int = 0       # K
    n_ff_exp: int = 0            # FFE
    n_dense_lead: int = 0        # leading layers that keep the dense SwiGLU
    expert_weights_norm: bool = True   # the K weights divided by their sum
    expert_weights_scale: float = 1.0  # then multiplied by this

    def is_moe(self, il: int) -> bool:
        return self.n_expert > 0 and il >= self.n_dense_lead

    @property
    def head_dim(self) -> int:   # HD
        return self.n_embd // self.n_head

    def is_attention(self, il: int) -> bool:
        return self.n_head_kv[il] > 0

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, kv in enumerate(self.n_head_kv) if kv > 0)


@dataclass(frozen=True)
class Weight:
    """A weight matrix as its raw GGUF bytes: row r of W is `raw[r]`, in ggml type `qtype`."""
    name: str
    qtype: int
    rows: int
    cols: int
    raw: np.ndarray  # uint8[rows, row_bytes], a view of the memory map (or a packed copy: kernel)
    kernel: int = -1  # the code matvec/matmul take: qtype, + kernels.EXACT for f32 activations

    def __post_init__(self):
        if self.kernel < 0:
            object.__setattr__(self, "kernel", self.qtype)


@dataclass(frozen=True)
class Experts:
    """A 3-D expert tensor as raw GGUF bytes: expert e's matrix is `raw[e]`, a 2-D view of the
    map in the layout `Weight.raw` has, so the matrix kernels run on it and touch only that
    expert's pages."""
    name: str
    qtype: int
    n_expert: int
    rows: int
    cols: int
    raw: np.ndarray  # uint8[E, rows, row_bytes], a view of the memory map
    kernel: int = -1

    def __post_init__(self):
        if self.kernel < 0:
            object.__setattr__(self, "kernel", self.qtype)

    def expert(self, e: int) -> Weight:
        return Weight(f"{self.name}[{e}]", self.qtype, self.rows, self.cols, self.raw[e], self.kernel)


class GGUFFile:
    """A validated LFM2 GGUF: `config`, `fields` (key -> value) and weights by GGUF name."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"{self.path}: no such file — give the path of an LFM2 .gguf file")
        self.reader = GGUFReader(self.path)
        self.fields = self.reader.fields
        self._tensors = self.reader.tensors
        arch = self.get("general.architecture")
        if arch not in ARCHES:
            shown = f"'{shown_name(arch)}'" if isinstance(arch, str) else f"{arch!r:.40}"
            raise GGUFError(f"{self.path}: general.architecture is {shown}, not 'lfm2' or 'lfm2moe' — "
                            "lfm2q runs LFM2 / LFM2.5 models (dense and MoE) only")
        self.arch = arch
        self.config = self._read_config()
        self._check_tensors()
        self._check_tokenizer_fields()

    # --- metadata -----------------------------------------------------------------------

    def get(self, key: str, default=None):
        return self.fields.get(key, default)

    def _require(self, key: str, kind: type, minimum: float | None = None, default=None,
                 maximum: float | None = None, value=None):
        """A number from the metadata, of `kind` (an int must be whole, a float finite), within
        [minimum, maximum]. Files are fuzzed: strings, lists, bools, NaN and 2**64-1 all arrive."""
        value = self.get(key, default) if value is None else value
        if value is None:
            raise GGUFError(f"{self.path}: metadata key {key} is missing — not a complete LFM2 file")
        if isinstance(value, (list, bool)) or not isinstance(value, (int, float)):
            raise GGUFError(f"{self.path}: metadata key {key} should be a number, found {value!r:.60}")
        if not math.isfinite(value) or (kind is int and value != int(value)):
            raise GGUFError(f"{self.path}: metadata key {key} should be a{' whole' if kind is int else ''} "
                            f"number, found {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise GGUFError(f"{self.path}: metadata key {key} = {value} is out of range")
        return kind(value)

    def _read_config(self) -> Lfm2Config:
        a = self.arch
        # every layer has at least 8 tensors: a larger count is a damaged file, and without this
        # bound block_count = 2**32-1 built a 4-billion-entry tuple below (found by the fuzzer)
        n_layer = self._require(f"{a}.block_count", int, 1, maximum=len(self._tensors))
        n_embd = self._require(f"{a}.embedding_length", int, 1)
        n_head = self._require(f"{a}.attention.head_count", int, 1)
        key_kv = f"{a}.attention.head_count_kv"
        kv = self.get(key_kv)
        if kv is None:
            raise GGUFError(f"{self.path}: metadata key {key_kv} is missing — "
                            "it marks which layers are attention and which are short-conv")
        if isinstance(kv, list):
            n_head_kv = tuple(self._require(key_kv, int, 0, value=v) for v in kv)
        else:
            n_head_kv = (self._require(key_kv, int, 0),) * n_layer
        if len(n_head_kv) != n_layer:
            raise GGUFError(f"{self.path}: {a}.attention.head_count_kv has {len(n_head_kv)} entries "
                            f"for {n_layer} layers")
        for kvh in n_head_kv:
            if kvh < 0 or (kvh and n_head % kvh):
                raise GGUFError(f"{self.path}: {a}.attention.head_count_kv entry {kvh} does not divide "
                                f"{n_head} heads")
        if n_embd % n_head:
            raise GGUFError(f"{self.path}: {a}.embedding_length {n_embd} is not a multiple of "
                            f"{n_head} heads")
        if n_embd // n_head % 2:
            raise GGUFError(f"{self.path}: head width {n_embd // n_head} is odd; rotary embedding needs "
                            "an even width")
        embd = self._tensors.get("token_embd.weight")
        n_vocab = self.get(f"{a}.vocab_size")
        if n_vocab is None:  # older files: the vocabulary is the embedding's row count
            n_vocab = embd.shape[0] if embd is not None and len(embd.shape) == 2 else None
        return Lfm2Config(
            n_vocab=self._require(f"{a}.vocab_size", int, 1, value=n_vocab),
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ff=self._require(f"{a}.feed_forward_length", int, 1),
            conv_l=self._require(f"{a}.shortconv.l_cache", int, 1),
            n_ctx_train=self._require(f"{a}.context_length", int, 1, default=32768),
            # eps > 0: rmsnorm of an all-zero row divides by sqrt(eps)
            rms_eps=self._require(f"{a}.attention.layer_norm_rms_epsilon", float, 1e-30),
            rope_base=self._require(f"{a}.rope.freq_base", float, 1e-30, default=1_000_000.0),
            # the kernels take it as int64: 2**64-1 raised OverflowError there (found by the fuzzer)
            sliding_window=self._require(f"{a}.attention.sliding_window", int, 0, default=0,
                                         maximum=2**31 - 1),
            tied_embeddings="output.weight" not in self._tensors,
            arch=a,
            **(self._read_moe(n_layer) if a == MOE_ARCH else {}),
        )

    def _read_moe(self, n_layer: int) -> dict:
        """The lfm2moe.* expert keys, as llama.cpp's lfm2moe loader reads them; expert_weights_norm
        and _scale are optional (llama.cpp's graph always normalises and never scales; lfm2q
        honours them where a file has them)."""
        a = self.arch
        n_expert = self._require(f"{a}.expert_count", int, 1, maximum=1 << 16)
        gating = self._require(f"{a}.expert_gating_func", int, 0)
        if gating != SIGMOID_GATING:
            raise GGUFError(f"{self.path}: {a}.expert_gating_func is {gating}; LFM2-MoE routes with "
                            f"sigmoid ({SIGMOID_GATING}) — the file is not an LFM2-MoE model")
        norm = self.get(f"{a}.expert_weights_norm", True)
        if not isinstance(norm, (bool, int)) or isinstance(norm, float):
            raise GGUFError(f"{self.path}: metadata key {a}.expert_weights_norm should be a boolean, "
                            f"found {norm!r:.60}")
        scale = self._require(f"{a}.expert_weights_scale", float, 0.0, default=1.0)
        return dict(
            n_expert=n_expert,
            n_expert_used=self._require(f"{a}.expert_used_count", int, 1, maximum=n_expert),
            n_ff_exp=self._require(f"{a}.expert_feed_forward_length", int, 1),
            n_dense_lead=self._require(f"{a}.leading_dense_block_count", int, 0, default=0,
                                       maximum=n_layer),
            expert_weights_norm=bool(norm),
            expert_weights_scale=scale,
        )

    # --- tensors ------------------------------------------------------------------------

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """GGUF name -> numpy shape (rows, cols) of every tensor the model reads."""
        c = self.config
        D, FF, L, HD = c.n_embd, c.n_ff, c.conv_l, c.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (c.n_vocab, D),
            self.final_norm_name: (D,),
        }
        if not c.tied_embeddings:
            shapes["output.weight"] = (c.n_vocab, D)
        for il in range(c.n_layer):
            p = f"blk.{il}."
            shapes.update({p + "attn_norm.weight": (D,), p + "ffn_norm.weight": (D,)})
            if c.is_moe(il):
                E, FFE = c.n_expert, c.n_ff_exp
                shapes.update({p + "ffn_gate_inp.weight": (E, D), p + "exp_probs_b.bias": (E,),
                               p + "ffn_gate_exps.weight": (E, FFE, D),
                               p + "ffn_up_exps.weight": (E, FFE, D),
                               p + "ffn_down_exps.weight": (E, D, FFE)})
            else:
                shapes.update({p + "ffn_gate.weight": (FF, D), p + "ffn_up.weight": (FF, D),
                               p + "ffn_down.weight": (D, FF)})
            if c.is_attention(il):
                KVH = c.n_head_kv[il]
                shapes.update({p + "attn_q.weight": (c.n_head * HD, D),
                               p + "attn_k.weight": (KVH * HD, D),
                               p + "attn_v.weight": (KVH * HD, D),
                               p + "attn_output.weight": (D, c.n_head * HD),
                               p + "attn_q_norm.weight": (HD,), p + "attn_k_norm.weight": (HD,)})
            else:
                shapes.update({p + "shortconv.in_proj.weight": (3 * D, D),
                               p + "shortconv.conv.weight": (D, L),
                               p + "shortconv.out_proj.weight": (D, D)})
        return shapes

    @property
    def final_norm_name(self) -> str:
        # The final norm is stored as token_embd_norm for historical reasons; some older
        # converters wrote output_norm.
        if "token_embd_norm.weight" not in self._tensors and "output_norm.weight" in self._tensors:
            return "output_norm.weight"
        return "token_embd_norm.weight"

    def _check_tensors(self) -> None:
        for name, shape in self.expected_tensors().items():
            t = self._tensors.get(name)
            if t is None:
                raise GGUFError(f"{self.path}: tensor {name} is missing — the file is incomplete "
                                "or not an LFM2 model")
            found = t.shape
            if found != shape:
                raise GGUFError(f"{self.path}: tensor {name} has shape {list(found)}, "
                                f"expected {list(shape)} from the metadata")
            if t.qtype not in SUPPORTED_TYPES:
                raise GGUFError(f"{self.path}: tensor {name} is {type_name(t.qtype)}, which lfm2q "
                                f"cannot run yet (supported: "
                                f"{', '.join(sorted(type_name(q) for q in SUPPORTED_TYPES))})")
            if len(shape) >= 2:
                try:
                    row_nbytes(t.qtype, shape[-1])
                except ValueError as e:
                    raise GGUFError(f"{self.path}: tensor {name}: {e}") from None

    def _check_tokenizer_fields(self) -> None:
        """Types of the tokenizer.* metadata, and one token per embedding row.

        tokenizer.py builds on these; the fuzzer reached it with integer tokens, a list as
        eos_token_id and a vocabulary one token short (a sampled id without a token)."""
        def bad(key: str, want: str, value) -> GGUFError:
            return GGUFError(f"{self.path}: metadata key {key} should be {want}, found {value!r:.60}")

        f = self.fields
        # Arrays by their declared item type (the reader built every item from it): checking
        # 130,000 items one by one took a tenth of a second of every start.
        item = {k: t[1] for k, t in self.reader.field_types.items()}
        for key, want, ok in (
            ("tokenizer.ggml.model", "a string", lambda v: isinstance(v, str)),
            ("tokenizer.ggml.pre", "a string", lambda v: isinstance(v, str)),
            ("tokenizer.chat_template", "a string", lambda v: isinstance(v, str)),
            ("tokenizer.ggml.tokens", "an array of strings",
             lambda v: isinstance(v, list) and (not v or item[key] == VT.STRING)),
            ("tokenizer.ggml.merges", "an array of strings",
             lambda v: isinstance(v, list) and (not v or item[key] == VT.STRING)),
            ("tokenizer.ggml.token_type", "an array of integers",
             lambda v: isinstance(v, list) and (not v or item[key] in INTEGER_TYPES)),
            ("tokenizer.ggml.add_bos_token", "a boolean", lambda v: isinstance(v, (bool, int))),
            ("tokenizer.ggml.add_eos_token", "a boolean", lambda v: isinstance(v, (bool, int))),
        ):
            if key in f and not ok(f[key]):
                raise bad(key, want, f[key])
        for name in ("bos", "eos", "padding"):
            key = f"tokenizer.ggml.{name}_token_id"
            if key in f and type(f[key]) is not int:
                raise bad(key, "an integer", f[key])
        tokens = f.get("tokenizer.ggml.tokens")
        if tokens is not None and len(tokens) != self.config.n_vocab:
            raise GGUFError(f"{self.path}: tokenizer.ggml.tokens has {len(tokens)} tokens for "
                            f"{self.config.n_vocab} embedding rows — the file is damaged; reconvert it")

    def weight(self, name: str) -> Weight:
        """A matrix as raw bytes, never copied."""
        t = self._tensors[name]
        rows, cols = t.shape
        return Weight(name, t.qtype, rows, cols, self.reader.data(name))

    def experts(self, name: str) -> Experts:
        """A 3-D expert tensor as raw bytes [E, rows, row_bytes], never copied."""
        t = self._tensors[name]
        E, rows, cols = t.shape
        return Experts(name, t.qtype, E, rows, cols, self.reader.data(name).reshape(E, rows, -1))

    def release(self, name: str) -> None:
        """Give the pages of a tensor copied elsewhere back to the OS (GGUFReader.release)."""
        self.reader.release(name)

    def vector(self, name: str) -> np.ndarray:
        """A small tensor (norm or conv kernel) as float32, in its numpy shape."""
        t = self._tensors[name]
        raw = self.reader.data(name)
        if t.qtype == F32:
            return raw.view(np.float32).reshape(t.shape)
        return dequantize(raw, t.qtype).reshape(t.shape)

    def tensor_types(self) -> dict[str, str]:
        return {t.name: type_name(t.qtype) for t in self._tensors.values()}

    def tokenizer_fields(self) -> dict:
        return self.reader.tokenizer_fields()
